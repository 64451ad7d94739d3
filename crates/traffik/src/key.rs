//! Storage keys that no input can break.
//!
//! A key is `uid:identity[:scope]...`. Every part is percent-encoded to `[A-Za-z0-9._-]` plus
//! `%XX`, so user input cannot add separators, spaces, control characters or Redis hash-tag
//! braces. Identity kinds carry a tag (`ip!`, `id!`, ...) so an IP address and a user name that
//! spell the same never share a bucket. Parts longer than 96 bytes once encoded are
//! replaced by `~` and 32 hex digits of their SHA-256, so keys stay short (Memcached allows 250
//! bytes) whatever the input; `~` never appears otherwise, so hashed and plain parts cannot
//! collide.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// Longest encoded key part kept verbatim.
pub(crate) const MAX_PART: usize = 96;

/// Key text up to this many bytes is stored inline (no allocation per hit).
const INLINE: usize = 63;

/// Inline key text: bytes `0..INLINE` hold the text, the last byte its length.
///
/// One aligned array rather than a length field beside a byte array: the compiler moves a key
/// (into a `Decision`, out of a hit) as whole aligned 16-byte chunks. With separate fields it
/// copied the array alone, 63 bytes from an odd offset, so every load straddled two earlier
/// stores and store-to-load forwarding failed (measured: several nanoseconds per hit).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct Inline([u8; INLINE + 1]);

impl Inline {
    const EMPTY: Inline = Inline([0; INLINE + 1]);

    fn len(&self) -> usize {
        usize::from(self.0[INLINE]).min(INLINE)
    }

    fn set_len(&mut self, len: usize) {
        self.0[INLINE] = len.min(INLINE) as u8;
    }

    fn text(&self) -> &[u8] {
        &self.0[..self.len()]
    }
}

/// The text of a key: ASCII only (every writer below pushes ASCII), inline when short.
#[derive(Clone)]
pub(crate) enum KeyText {
    Inline(Inline),
    Heap(String),
}

impl KeyText {
    pub(crate) const fn new() -> Self {
        KeyText::Inline(Inline::EMPTY)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            KeyText::Inline(inline) => inline.text(),
            KeyText::Heap(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Only ASCII is ever written, so this cannot fail.
            KeyText::Inline(inline) => std::str::from_utf8(inline.text()).unwrap_or_default(),
            KeyText::Heap(s) => s,
        }
    }

    /// Appends ASCII text.
    pub(crate) fn push_str(&mut self, s: &str) {
        self.push_ascii(s.as_bytes());
    }

    /// Appends bytes that the caller guarantees are ASCII (such as part of another key).
    #[inline]
    pub(crate) fn push_ascii(&mut self, s: &[u8]) {
        debug_assert!(s.is_ascii());
        match self {
            KeyText::Inline(inline) => {
                let start = inline.len();
                let end = start + s.len();
                if end <= INLINE {
                    inline.0[start..end].copy_from_slice(s);
                    inline.set_len(end);
                } else {
                    let mut heap = String::with_capacity(end + 32);
                    heap.push_str(std::str::from_utf8(inline.text()).unwrap_or_default());
                    heap.push_str(std::str::from_utf8(s).unwrap_or_default());
                    *self = KeyText::Heap(heap);
                }
            }
            KeyText::Heap(h) => h.push_str(std::str::from_utf8(s).unwrap_or_default()),
        }
    }

    /// Lets `f` write ASCII straight into the inline buffer when at least `ROOM` bytes are free
    /// there (`f` gets exactly `ROOM` bytes and returns how many it wrote); otherwise writes
    /// through a scratch buffer on the stack.
    #[inline]
    fn write_with<const ROOM: usize>(&mut self, f: impl FnOnce(&mut [u8]) -> usize) {
        if let KeyText::Inline(inline) = self {
            let start = inline.len();
            if start + ROOM <= INLINE {
                let n = f(&mut inline.0[start..start + ROOM]).min(ROOM);
                inline.set_len(start + n);
                return;
            }
        }
        let mut scratch = [0u8; ROOM];
        let n = f(&mut scratch).min(ROOM);
        self.push_ascii(&scratch[..n]);
    }

    /// Appends one ASCII byte.
    #[inline]
    pub(crate) fn push(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        match self {
            KeyText::Inline(inline) if inline.len() < INLINE => {
                let len = inline.len();
                inline.0[len] = b;
                inline.set_len(len + 1);
            }
            _ => self.push_ascii(&[b]),
        }
    }
}

impl From<String> for KeyText {
    fn from(s: String) -> Self {
        let mut t = KeyText::new();
        if s.len() <= INLINE {
            t.push_str(&s);
            t
        } else {
            KeyText::Heap(s)
        }
    }
}

/// A storage key built by a throttle; backends prefix their namespace and strategy.
#[derive(Clone)]
pub struct Key(KeyText);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl Key {
    /// The key text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The key text as bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Starts a key for the throttle `uid`.
    pub fn builder(uid: &str) -> KeyBuilder {
        let mut b = KeyBuilder { text: KeyText::new() };
        push_part(&mut b.text, uid.as_bytes());
        b
    }

    /// The text, for appending in place.
    #[inline]
    pub(crate) fn text_mut(&mut self) -> &mut KeyText {
        &mut self.0
    }

    /// Continues from an already encoded prefix (a throttle encodes its uid once).
    #[inline]
    pub(crate) fn from_encoded(prefix: &Key) -> KeyBuilder {
        KeyBuilder { text: prefix.0.clone() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.as_str())
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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
            Ok(Key(KeyText::from(text)))
        } else {
            Err(serde::de::Error::custom("not a traffik key: unexpected characters or length"))
        }
    }
}

/// Appends parts to a [`Key`].
pub struct KeyBuilder {
    text: KeyText,
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder").field("text", &self.text.as_str()).finish()
    }
}

impl KeyBuilder {
    /// Appends a raw part (encoded).
    pub fn part(mut self, raw: &[u8]) -> Self {
        self.text.push(b':');
        push_part(&mut self.text, raw);
        self
    }

    /// Appends an already-safe tagged part written by `f` (used for identities).
    #[inline]
    pub(crate) fn tagged(mut self, f: impl FnOnce(&mut KeyText)) -> Self {
        self.text.push(b':');
        f(&mut self.text);
        self
    }

    /// Finishes the key.
    #[inline]
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
pub(crate) fn push_part(out: &mut KeyText, raw: &[u8]) {
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
        out.push_ascii(&raw[start..i]);
        out.push(b'%');
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
        start = i + 1;
    }
    out.push_ascii(&raw[start..]);
}

/// Writes `~` and the first 128 bits of SHA-256 of `raw` in hex.
pub(crate) fn push_digest(out: &mut KeyText, raw: &[u8]) {
    let digest = Sha256::digest(raw);
    out.push(b'~');
    for b in &digest[..16] {
        out.push(HEX_LOWER[usize::from(b >> 4)]);
        out.push(HEX_LOWER[usize::from(b & 15)]);
    }
}

/// Decimal digits of every byte value, padded to 4 bytes, and their count.
static DECIMAL: [([u8; 4], u8); 256] = {
    let mut table = [([0u8; 4], 0u8); 256];
    let mut v = 0;
    while v < 256 {
        let (h, t, o) = ((v / 100) as u8, ((v / 10) % 10) as u8, (v % 10) as u8);
        table[v] = if v >= 100 {
            ([b'0' + h, b'0' + t, b'0' + o, 0], 3)
        } else if v >= 10 {
            ([b'0' + t, b'0' + o, 0, 0], 2)
        } else {
            ([b'0' + o, 0, 0, 0], 1)
        };
        v += 1;
    }
    table
};

/// Writes `v` in decimal at `buf[at..]` (which must have 4 bytes of room); returns the index
/// after it.
#[inline]
fn put_u8(buf: &mut [u8], at: usize, v: u8) -> usize {
    let (digits, n) = DECIMAL[usize::from(v)];
    if let Some(dst) = buf.get_mut(at..at + 4) {
        dst.copy_from_slice(&digits);
    }
    at + usize::from(n)
}

/// Appends `v` in decimal.
pub(crate) fn push_u8(out: &mut KeyText, v: u8) {
    out.write_with::<4>(|dst| put_u8(dst, 0, v));
}

/// An identity tag of at most 4 bytes (`ip!`, `net!`), copied as one word.
#[derive(Clone, Copy)]
pub(crate) struct Tag([u8; 4], usize);

impl Tag {
    pub(crate) const IP: Tag = Tag(*b"ip!\0", 3);
    pub(crate) const NET: Tag = Tag(*b"net!", 4);
    #[cfg(test)]
    const NONE: Tag = Tag([0; 4], 0);
}

/// Writes an IP address in key form (IPv6 colons become '-') after `tag`. Runs on every hit,
/// so it avoids the formatting machinery.
#[inline]
pub(crate) fn push_ip(out: &mut KeyText, tag: Tag, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Tag (4) + "255.255.255.255" (15) + slack for the last 4-byte digit store (1).
            out.write_with::<20>(|dst| {
                let [a, b, c, d] = v4.octets();
                if let Some(t) = dst.get_mut(..4) {
                    t.copy_from_slice(&tag.0);
                }
                let mut n = put_u8(dst, tag.1, a);
                dst[n] = b'.';
                n = put_u8(dst, n + 1, b);
                dst[n] = b'.';
                n = put_u8(dst, n + 1, c);
                dst[n] = b'.';
                put_u8(dst, n + 1, d)
            });
        }
        IpAddr::V6(v6) => {
            out.push_ascii(&tag.0[..tag.1]);
            for (i, g) in v6.segments().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'-');
                }
                let mut started = false;
                for shift in [12u16, 8, 4, 0] {
                    let nibble = usize::from((g >> shift) & 15);
                    if nibble != 0 || started || shift == 0 {
                        started = true;
                        out.push(HEX_LOWER[nibble]);
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
        Key::builder(uid).part(part).build().as_str().to_owned()
    }

    fn ip_text(ip: &str) -> String {
        let mut t = KeyText::new();
        push_ip(&mut t, Tag::NONE, ip.parse().unwrap());
        t.as_str().to_owned()
    }

    #[test]
    fn long_keys_spill_to_the_heap_unchanged() {
        let short = Key::builder("api").part(b"abc").build();
        assert!(matches!(short.0, KeyText::Inline(_)));
        for n in [INLINE - 6, INLINE - 5, INLINE - 4, INLINE, 200] {
            let part = vec![b'z'; n];
            let k = Key::builder("api").part(&part).part(b"tail").build();
            let expected = format!("api:{}:tail", "z".repeat(n.min(MAX_PART)));
            if n <= MAX_PART {
                assert_eq!(k.as_str(), expected);
            }
            assert_eq!(k.as_bytes(), k.as_str().as_bytes());
            let rebuilt: Key = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
            assert_eq!(rebuilt, k, "equal whether inline or not");
            assert_eq!(rebuilt.cmp(&k), Ordering::Equal);
        }
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
        for ip in ["0.0.0.0", "1.20.255.100", "192.168.0.9", "255.255.255.255", "9.99.100.199"] {
            assert_eq!(ip_text(ip), ip);
        }
    }

    #[test]
    fn every_octet_is_written_in_decimal() {
        for v in 0..=255u8 {
            let mut t = KeyText::new();
            push_u8(&mut t, v);
            assert_eq!(t.as_str(), v.to_string());
        }
        let mut t = KeyText::new();
        push_ip(&mut t, Tag::IP, "10.200.3.45".parse().unwrap());
        push_ip(&mut t, Tag::NET, "::1".parse().unwrap());
        push_ip(&mut t, Tag::NET, "255.255.255.255".parse().unwrap());
        assert_eq!(t.as_str(), "ip!10.200.3.45net!0-0-0-0-0-0-0-1net!255.255.255.255");
        // Near the end of the inline buffer the text goes through a scratch buffer, and to
        // the heap once it no longer fits.
        for (uid_len, inline) in [(50, true), (55, false)] {
            let mut t = Key::builder(&"u".repeat(uid_len)).build().0;
            push_ip(&mut t, Tag::IP, "1.2.3.4".parse().unwrap());
            assert_eq!(matches!(t, KeyText::Inline(_)), inline);
            assert_eq!(t.as_str(), format!("{}ip!1.2.3.4", "u".repeat(uid_len)));
        }
    }

    #[test]
    fn inline_text_is_one_aligned_array() {
        // See `Inline`: the text and its length move as one aligned 64-byte value.
        assert_eq!(std::mem::size_of::<Inline>(), 64);
        assert_eq!(std::mem::align_of::<Inline>(), 8);
        let mut t = KeyText::new();
        for _ in 0..INLINE {
            t.push(b'a');
        }
        assert!(matches!(t, KeyText::Inline(_)));
        t.push(b'b');
        assert!(matches!(t, KeyText::Heap(_)));
        assert_eq!(t.as_str(), format!("{}b", "a".repeat(INLINE)));
    }

    #[test]
    fn ipv6_has_no_colons() {
        assert_eq!(ip_text("2001:db8::1"), "2001-db8-0-0-0-0-0-1");
        assert_eq!(ip_text("ffff:a0b:c00d:1::"), "ffff-a0b-c00d-1-0-0-0-0");
    }

    #[test]
    fn plain_runs_and_escapes_mix() {
        assert_eq!(key("u", b"ab c/d"), "u:ab%20c%2Fd");
        assert_eq!(key("u", b"%"), "u:%25");
    }
}
