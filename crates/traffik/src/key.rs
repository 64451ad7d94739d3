//! Storage keys that no input can break.
//!
//! A key is `uid:identity[:scope]...`. Every part is percent-encoded to `[A-Za-z0-9._-]` plus
//! `%XX`, so user input cannot add separators, spaces, control characters or Redis hash-tag
//! braces. Identity kinds carry a tag (`ip!`, `id!`, ...) so an IP address and a user name that
//! spell the same never share a bucket. Parts longer than [`MAX_PART`] bytes once encoded are
//! replaced by `~` and 32 hex digits of their SHA-256, so keys stay short (Memcached allows 250
//! bytes) whatever the input; `~` never appears otherwise, so hashed and plain parts cannot
//! collide.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// Longest encoded key part kept verbatim.
pub(crate) const MAX_PART: usize = 96;

/// A storage key built by a throttle; backends prefix their namespace and strategy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Starts a key for the throttle `uid`.
    pub fn builder(uid: &str) -> KeyBuilder {
        let mut b = KeyBuilder { text: String::with_capacity(uid.len() + 48) };
        push_part(&mut b.text, uid.as_bytes());
        b
    }

    /// Continues from an already encoded prefix (a throttle encodes its uid once).
    pub(crate) fn from_encoded(prefix: &Key) -> KeyBuilder {
        let mut text = String::with_capacity(prefix.0.len() + 48);
        text.push_str(&prefix.0);
        KeyBuilder { text }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    /// Accepts only text a key builder could have produced (encoded parts, `:` separators and
    /// the tag characters `%`, `~`, `!`), so a deserialized key cannot break a backend's key
    /// structure.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let valid = !text.is_empty()
            && text.len() <= 1024
            && text.bytes().all(|b| is_plain(b) || matches!(b, b'%' | b'~' | b'!' | b':'));
        if valid {
            Ok(Key(text))
        } else {
            Err(serde::de::Error::custom("not a traffik key: unexpected characters or length"))
        }
    }
}

/// Appends parts to a [`Key`].
#[derive(Debug)]
pub struct KeyBuilder {
    text: String,
}

impl KeyBuilder {
    /// Appends a raw part (encoded).
    pub fn part(mut self, raw: &[u8]) -> Self {
        self.text.push(':');
        push_part(&mut self.text, raw);
        self
    }

    /// Appends an already-safe tagged part written by `f` (used for identities).
    pub(crate) fn tagged(mut self, f: impl FnOnce(&mut String)) -> Self {
        self.text.push(':');
        f(&mut self.text);
        self
    }

    /// Finishes the key.
    pub fn build(self) -> Key {
        Key(self.text)
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Encoded length of `raw`.
fn encoded_len(raw: &[u8]) -> usize {
    raw.iter().map(|&b| if is_plain(b) { 1 } else { 3 }).sum()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes `raw` into `out`, or writes its digest if it would be too long.
pub(crate) fn push_part(out: &mut String, raw: &[u8]) {
    if encoded_len(raw) > MAX_PART {
        push_digest(out, raw);
        return;
    }
    // Runs of plain bytes are appended in one go.
    let mut start = 0;
    for (i, &b) in raw.iter().enumerate() {
        if is_plain(b) {
            continue;
        }
        out.push_str(std::str::from_utf8(&raw[start..i]).unwrap_or_default());
        out.push('%');
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
        start = i + 1;
    }
    out.push_str(std::str::from_utf8(&raw[start..]).unwrap_or_default());
}

/// Writes `~` and the first 128 bits of SHA-256 of `raw` in hex.
pub(crate) fn push_digest(out: &mut String, raw: &[u8]) {
    let digest = Sha256::digest(raw);
    out.push('~');
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
}

/// Appends `v` in decimal.
fn push_u8(out: &mut String, v: u8) {
    if v >= 100 {
        out.push(char::from(b'0' + v / 100));
    }
    if v >= 10 {
        out.push(char::from(b'0' + (v / 10) % 10));
    }
    out.push(char::from(b'0' + v % 10));
}

/// Writes an IP address in key form (IPv6 colons become '-'). Runs on every hit, so it avoids
/// the formatting machinery.
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.reserve(15);
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u8(out, o);
            }
        }
        IpAddr::V6(v6) => {
            out.reserve(39);
            for (i, g) in v6.segments().into_iter().enumerate() {
                if i > 0 {
                    out.push('-');
                }
                let mut started = false;
                for shift in [12u16, 8, 4, 0] {
                    let nibble = usize::from((g >> shift) & 15);
                    if nibble != 0 || started || shift == 0 {
                        started = true;
                        out.push(char::from(HEX_LOWER[nibble]));
                    }
                }
            }
        }
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, part: &[u8]) -> String {
        Key::builder(uid).part(part).build().0
    }

    #[test]
    fn parts_cannot_forge_structure_or_braces() {
        assert_eq!(key("api", b"a:b"), "api:a%3Ab");
        assert_ne!(key("a:b", b"c"), key("a", b"b:c"));
        let k = key("api", b"{tag} x\n\r\0\xff");
        assert!(k.bytes().all(|b| is_plain(b) || b == b'%' || b == b':'), "{k}");
        assert!(!k.contains('{') && !k.contains(' '));
    }

    #[test]
    fn long_parts_are_hashed_and_cannot_collide_with_plain_ones() {
        let long = vec![b'x'; 10_000];
        let k = key("api", &long);
        assert!(k.len() < 64, "{k}");
        assert!(k.contains('~'));
        assert_ne!(k, key("api", &[b'x'; 9_999]));
        assert!(!key("api", b"~abc").contains('~'));
    }

    #[test]
    fn deserialized_keys_are_validated() {
        let ok: Key = serde_json::from_str("\"api:ip!1.2.3.4:room%201\"").unwrap();
        assert_eq!(ok.as_str(), "api:ip!1.2.3.4:room%201");
        for bad in ["\"a}b\"", "\"a b\"", "\"\"", "\"a\\nb\""] {
            assert!(serde_json::from_str::<Key>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv4_is_dotted_decimal() {
        for ip in ["0.0.0.0", "1.20.255.100", "192.168.0.9"] {
            let mut s = String::new();
            push_ip(&mut s, ip.parse().unwrap());
            assert_eq!(s, ip);
        }
    }

    #[test]
    fn ipv6_has_no_colons() {
        let mut s = String::new();
        push_ip(&mut s, "2001:db8::1".parse().unwrap());
        assert_eq!(s, "2001-db8-0-0-0-0-0-1");
        let mut s = String::new();
        push_ip(&mut s, "ffff:a0b:c00d:1::".parse().unwrap());
        assert_eq!(s, "ffff-a0b-c00d-1-0-0-0-0");
    }

    #[test]
    fn plain_runs_and_escapes_mix() {
        assert_eq!(key("u", b"ab c/d"), "u:ab%20c%2Fd");
        assert_eq!(key("u", b"%"), "u:%25");
    }
}
