//! Trusted proxies: CIDR ranges ([`IpNet`]) and the walk back through `Forwarded` and
//! `X-Forwarded-For` hops, which ends at the first hop that is malformed or not a trusted proxy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;

use crate::error::{ConfigError, Error};
use crate::identity::request::RequestView;

/// An IP network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `"10.0.0.0/8"`, `"::1"`, `"2001:db8::/32"`; a bare address is a /32 or /128.
    pub fn parse(text: &str) -> Result<IpNet, Error> {
        let text = text.trim();
        let bad = || Error::Config(ConfigError::Network { text: text.to_owned() });
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| bad())?, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr: mask(addr, prefix), prefix })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Clears host bits beyond `prefix`.
pub(crate) fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The proxies whose forwarding headers are believed. Empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub(super) nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trust nobody (the default).
    pub fn none() -> Self {
        TrustedProxies::default()
    }

    /// Trust these addresses and CIDR networks.
    pub fn new<I, S>(nets: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = nets.into_iter().map(|s| IpNet::parse(s.as_ref())).collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Loopback and private networks: for apps that only ever sit behind their own proxy.
    pub fn private_networks() -> Self {
        let nets = ["127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
            .iter()
            .filter_map(|s| IpNet::parse(s).ok())
            .collect();
        TrustedProxies { nets }
    }

    /// Whether `ip` is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The client address of `req`: the peer, or, when the peer is trusted, the first untrusted
    /// hop of the forwarding chain walked right to left.
    #[inline]
    pub fn client_ip(&self, req: &RequestView<'_>) -> Option<IpAddr> {
        let peer = canonical(req.peer_ip()?);
        if self.nets.is_empty() || !self.contains(peer) {
            return Some(peer);
        }
        let headers = req.headers();
        let chain: Vec<Hop> = if headers.contains_key(http::header::FORWARDED) {
            forwarded_hops(headers)
        } else if headers.contains_key("x-forwarded-for") {
            list_hops(headers, "x-forwarded-for")
        } else if headers.contains_key("x-real-ip") {
            list_hops(headers, "x-real-ip")
        } else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Hop::Addr(ip) => {
                    client = *ip;
                    if !self.contains(*ip) {
                        return Some(*ip);
                    }
                }
                // An obfuscated or malformed hop: nothing before it can be believed.
                Hop::Unknown => return Some(client),
            }
        }
        Some(client)
    }
}

pub(super) enum Hop {
    Addr(IpAddr),
    Unknown,
}

/// One hop of a forwarding header: an address, optionally quoted, optionally with a port
/// (`192.0.2.60`, `"192.0.2.60:8080"`, `"[2001:db8::1]:4711"`, a bare IPv6 address in
/// `X-Forwarded-For`). Anything else (an obfuscated or unknown node, an unclosed quote or
/// bracket, a stray character) is [`Hop::Unknown`], which ends the walk.
pub(super) fn parse_hop(raw: &str) -> Hop {
    let v = raw.trim();
    let v = match v.strip_prefix('"') {
        Some(quoted) => match quoted.strip_suffix('"') {
            Some(inner) => inner,
            None => return Hop::Unknown,
        },
        None => v,
    };
    if v.contains('"') {
        return Hop::Unknown;
    }
    let host = if let Some(rest) = v.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Hop::Unknown;
        };
        match after.strip_prefix(':') {
            None if after.is_empty() => host,
            Some(port) if valid_port(port) => host,
            _ => return Hop::Unknown,
        }
    } else {
        match v.split_once(':') {
            // `address:port`, one colon (IPv4 or a name).
            Some((host, port)) if !port.contains(':') => {
                if !valid_port(port) {
                    return Hop::Unknown;
                }
                host
            }
            // No colon, or a bare IPv6 address.
            _ => v,
        }
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => Hop::Addr(canonical(ip)),
        Err(_) => Hop::Unknown,
    }
}

/// A port as RFC 7239 writes it: digits, or an obfuscated `_name`.
pub(super) fn valid_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    digits || obfuscated
}

pub(super) fn list_hops(headers: &HeaderMap, name: &str) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in headers.get_all(name) {
        match value.to_str() {
            Ok(s) => hops.extend(s.split(',').filter(|p| !p.trim().is_empty()).map(parse_hop)),
            Err(_) => hops.push(Hop::Unknown),
        }
    }
    hops
}

pub(super) fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(s) = value.to_str() else {
            hops.push(Hop::Unknown);
            continue;
        };
        for element in s.split(',') {
            let hop = element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .map_or(Hop::Unknown, |(_, v)| parse_hop(v));
            hops.push(hop);
        }
    }
    hops
}
