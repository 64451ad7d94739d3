//! Storage keys and server routing.
//!
//! A state key is `<namespace>:v<version>:<key>:<strategy>`. The throttle key is already
//! percent-encoded by the core; the strategy name is user-chosen, so a name outside
//! `[A-Za-z0-9._-]` is replaced by `~` and the hex SHA-256 of the name. When the result would
//! break memcached's rules anyway (over 250 bytes, or a byte outside printable ASCII, or a `#`)
//! everything after the version is replaced by a readable prefix of the key, `#` and the
//! SHA-256 of what it replaces; `#` never appears in a plain key, so the two forms cannot
//! collide.
//!
//! Routing ignores the `v<version>` part, so a key stays on its server across resets, and the
//! per-server version key `<namespace>:version@<server hash>` is routed to the server it
//! names. The hash is a fixed FNV-1a with a SplitMix64 finalizer, identical in every process
//! and every build (the client library's default hasher is not guaranteed stable across Rust
//! releases, which would split one key's state between application versions).

use std::fmt::Write as _;

use memcache::exp::Router;
use sha2::{Digest, Sha256};

/// Memcached's limit on key length.
pub(crate) const MAX_KEY: usize = 250;

/// Longest namespace accepted.
pub(crate) const MAX_NAMESPACE: usize = 64;

/// Readable bytes kept in front of a digest.
const READABLE_PREFIX: usize = 48;

/// Whether `ns` is a valid namespace: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub(crate) fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= MAX_NAMESPACE && ns.bytes().all(is_plain)
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Printable ASCII without space, and not the digest marker.
fn is_key_safe(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'#'
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Longest `<namespace>:v<version>:` head: the namespace, `:v`, 20 digits and `:`.
pub(crate) fn max_head(ns: &str) -> usize {
    ns.len() + 23
}

/// The version-independent part of a storage key: `<key>:<strategy>`, or its hashed form when
/// the whole key could exceed [`MAX_KEY`] or contains a byte memcached refuses.
pub(crate) fn key_tail(ns: &str, key: &str, strategy: &str) -> String {
    let mut out = String::with_capacity(key.len() + strategy.len() + 1);
    out.push_str(key);
    out.push(':');
    if !strategy.is_empty() && strategy.bytes().all(is_plain) {
        out.push_str(strategy);
    } else {
        out.push('~');
        push_hex(&mut out, &Sha256::digest(strategy.as_bytes()));
    }
    if max_head(ns) + out.len() <= MAX_KEY && out.bytes().all(is_key_safe) {
        return out;
    }
    let digest = Sha256::digest(out.as_bytes());
    let mut hashed: String = key.bytes().filter(|&b| is_key_safe(b)).take(READABLE_PREFIX).map(char::from).collect();
    hashed.push('#');
    push_hex(&mut hashed, &digest);
    hashed
}

/// The storage key for a tail at namespace version `version`.
pub(crate) fn state_key(ns: &str, version: u64, tail: &str) -> String {
    let mut out = String::with_capacity(ns.len() + tail.len() + 24);
    out.push_str(ns);
    out.push_str(":v");
    let _ = write!(out, "{version}");
    out.push(':');
    out.push_str(tail);
    out
}

/// The version key of the server whose identity is `server`.
pub(crate) fn version_key(ns: &str, server: &str) -> String {
    format!("{ns}:version@{:016x}", hash(server.as_bytes()))
}

/// FNV-1a 64, stable everywhere.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64 finalizer.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Routes keys as described in the [module docs](self).
#[derive(Debug)]
pub(crate) struct NamespaceRouter {
    /// `<namespace>:`
    prefix: Vec<u8>,
    /// Hash of each server identity, in configuration order.
    server_hashes: Vec<u64>,
}

impl NamespaceRouter {
    pub(crate) fn new(ns: &str, servers: &[String]) -> Self {
        let mut prefix = ns.as_bytes().to_vec();
        prefix.push(b':');
        NamespaceRouter { prefix, server_hashes: servers.iter().map(|s| hash(s.as_bytes())).collect() }
    }

    /// The part of a key that decides its server.
    fn routing_part<'k>(&self, key: &'k [u8]) -> Routing<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_slice()) else {
            return Routing::Hash(key);
        };
        if let Some(hex) = rest.strip_prefix(b"version@") {
            if let Some(h) = std::str::from_utf8(hex).ok().and_then(|h| u64::from_str_radix(h, 16).ok()) {
                return Routing::Server(h);
            }
            return Routing::Hash(key);
        }
        if let Some(after_v) = rest.strip_prefix(b"v") {
            let digits = after_v.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && after_v.get(digits) == Some(&b':') {
                return Routing::Hash(&after_v[digits + 1..]);
            }
        }
        Routing::Hash(key)
    }

    /// The index of the server for `key` among `n` servers.
    pub(crate) fn index(&self, key: &[u8]) -> usize {
        match self.routing_part(key) {
            Routing::Server(h) => match self.server_hashes.iter().position(|&s| s == h) {
                Some(i) => i,
                None => self.rendezvous(hash(key)),
            },
            Routing::Hash(part) => self.rendezvous(hash(part)),
        }
    }

    /// The index of the server that stores every version of `tail`.
    pub(crate) fn index_of_tail(&self, tail: &[u8]) -> usize {
        self.rendezvous(hash(tail))
    }

    fn rendezvous(&self, key_hash: u64) -> usize {
        let mut best = (0usize, 0u64);
        for (i, &s) in self.server_hashes.iter().enumerate() {
            let score = mix(key_hash ^ s);
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

enum Routing<'k> {
    Server(u64),
    Hash(&'k [u8]),
}

impl Router for NamespaceRouter {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        let i = self.index(key);
        if i < servers.len() { i } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn assert_valid(k: &str) {
        assert!(k.len() <= MAX_KEY, "{} bytes: {k}", k.len());
        assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{k:?}");
    }

    fn full(ns: &str, version: u64, key: &str, strategy: &str) -> String {
        state_key(ns, version, &key_tail(ns, key, strategy))
    }

    #[test]
    fn plain_keys_are_kept_readable() {
        assert_eq!(full("ns", 7, "api:ip!1.2.3.4", "gcra"), "ns:v7:api:ip!1.2.3.4:gcra");
    }

    #[test]
    fn odd_strategy_names_are_digested() {
        let k = full("ns", 1, "api:x", "my strategy:v2");
        assert_valid(&k);
        assert!(k.starts_with("ns:v1:api:x:~"), "{k}");
        assert_ne!(k, full("ns", 1, "api:x", "my strategy:v3"));
    }

    #[test]
    fn long_or_unsafe_keys_are_hashed_within_limits() {
        let long = "x".repeat(10_000);
        let ns = "n".repeat(MAX_NAMESPACE);
        let k = full(&ns, u64::MAX, &long, "fw");
        assert_valid(&k);
        assert!(k.contains('#'));
        assert_ne!(k, full(&ns, u64::MAX, &long[1..], "fw"));
        // The longest key that stays plain is valid at every version.
        let edge = "y".repeat(MAX_KEY - max_head(&ns) - 3);
        let k = full(&ns, u64::MAX, &edge, "fw");
        assert!(!k.contains('#'));
        assert_eq!(k.len(), MAX_KEY);
        assert!(full(&ns, 1, &format!("{edge}y"), "fw").contains('#'));
        for bad in ["a b", "a\nb", "a\u{0}b", "é", "a#b"] {
            let k = full("ns", 3, bad, "fw");
            assert_valid(&k);
            assert!(k.contains('#'), "{k}");
        }
        // Same input, same key; strategy is part of the digest.
        assert_eq!(full("ns", 3, "a b", "fw"), full("ns", 3, "a b", "fw"));
        assert_ne!(full("ns", 3, "a b", "fw"), full("ns", 3, "a b", "gcra"));
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(valid_namespace("traffik"));
        assert!(valid_namespace("a.b-c_d"));
        for bad in ["", "a:b", "a b", "a#", &"n".repeat(65)] {
            assert!(!valid_namespace(bad), "{bad:?}");
        }
    }

    #[test]
    fn routing_ignores_the_version_and_honours_version_keys() {
        let servers: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 11211 + i)).collect();
        let r = NamespaceRouter::new("ns", &servers);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let key = format!("api:user{i}");
            let a = r.index(full("ns", 1, &key, "fw").as_bytes());
            let b = r.index(full("ns", 99_999, &key, "fw").as_bytes());
            assert_eq!(a, b);
            assert_eq!(a, r.index_of_tail(key_tail("ns", &key, "fw").as_bytes()));
            seen[a] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        for (i, s) in servers.iter().enumerate() {
            assert_eq!(r.index(version_key("ns", s).as_bytes()), i);
        }
    }
}
