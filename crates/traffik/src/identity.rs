//! Who is making a request: the neutral request view, identities, trusted proxies and
//! identifiers.
//!
//! # Security
//!
//! The default identity is the socket peer address. `Forwarded`, `X-Forwarded-For` and
//! `X-Real-IP` are consulted only when the peer is one of the configured [`TrustedProxies`]; by
//! default none is trusted, so a client cannot pick its bucket by sending a header. The
//! forwarding chain is walked right to left, skipping trusted hops: the first untrusted address
//! is the client.

use std::any::Any;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, LazyLock};

use http::{Extensions, HeaderMap, Method, Uri};

use crate::context::Context;
use crate::error::Error;
use crate::key::{self, Key, KeyBuilder};
use futures_core::future::BoxFuture;

static EMPTY_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);
static ROOT: LazyLock<Uri> = LazyLock::new(|| Uri::from_static("/"));

/// A socket peer address kept as plain integers.
///
/// A `RequestView` is built per request by value (`empty().peer(..)`); an `Option<SocketAddr>`
/// field made the compiler copy the address through overlapping 16-byte moves whose reloads
/// straddled two stores, stalling each hit for several nanoseconds (store-to-load forwarding
/// fails). Integers are written and read whole.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Peer {
    /// IPv6 address bits, or an IPv4 address in the low 32 bits.
    ip: u128,
    flowinfo: u32,
    scope_id: u32,
    port: u16,
    /// 0: none; 4: IPv4; 6: IPv6.
    family: u8,
}

impl Peer {
    const NONE: Peer = Peer { ip: 0, flowinfo: 0, scope_id: 0, port: 0, family: 0 };

    #[inline]
    fn new(addr: Option<SocketAddr>) -> Peer {
        match addr {
            None => Peer::NONE,
            Some(SocketAddr::V4(a)) => {
                Peer { ip: u128::from(u32::from(*a.ip())), port: a.port(), family: 4, ..Peer::NONE }
            }
            Some(SocketAddr::V6(a)) => Peer {
                ip: u128::from(*a.ip()),
                flowinfo: a.flowinfo(),
                scope_id: a.scope_id(),
                port: a.port(),
                family: 6,
            },
        }
    }

    /// The peer as an IPv4 address (plain or IPv4-mapped IPv6), if it is one.
    #[inline]
    fn canonical_v4(self) -> Option<Ipv4Addr> {
        match self.family {
            4 => Some(Ipv4Addr::from(self.ip as u32)),
            6 if self.ip >> 32 == 0xffff => Some(Ipv4Addr::from(self.ip as u32)),
            _ => None,
        }
    }

    #[inline]
    fn ip(self) -> Option<IpAddr> {
        match self.family {
            4 => Some(IpAddr::V4(Ipv4Addr::from(self.ip as u32))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(self.ip))),
            _ => None,
        }
    }

    #[inline]
    fn addr(self) -> Option<SocketAddr> {
        Some(match self.ip()? {
            IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, self.port)),
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, self.port, self.flowinfo, self.scope_id)),
        })
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

/// A framework-neutral view of a request (or WebSocket connection), built by integrations.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    peer: Peer,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    route: Option<&'a str>,
    extensions: Option<&'a Extensions>,
}

impl Default for RequestView<'_> {
    fn default() -> Self {
        RequestView::empty()
    }
}

impl<'a> RequestView<'a> {
    /// A view of a request.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        RequestView { peer: Peer::NONE, method, uri, headers, route: None, extensions: None }
    }

    /// A `GET /` with no headers and no peer (for direct use outside HTTP, and tests).
    #[inline]
    pub fn empty() -> RequestView<'static> {
        RequestView {
            peer: Peer::NONE,
            method: &Method::GET,
            uri: &ROOT,
            headers: &EMPTY_HEADERS,
            route: None,
            extensions: None,
        }
    }

    /// A view of `http::request::Parts`.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        RequestView::new(&parts.method, &parts.uri, &parts.headers).extensions(&parts.extensions)
    }

    /// Sets the socket peer address.
    #[must_use]
    #[inline]
    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = Peer::new(peer);
        self
    }

    /// Sets the matched route pattern (e.g. `/users/:id`).
    #[must_use]
    pub fn route(mut self, route: Option<&'a str>) -> Self {
        self.route = route;
        self
    }

    /// Sets the request extensions.
    #[must_use]
    pub fn extensions(mut self, extensions: &'a Extensions) -> Self {
        self.extensions = Some(extensions);
        self
    }

    /// The socket peer address, if known.
    #[inline]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr()
    }

    /// The socket peer's IP address, if known.
    #[inline]
    pub fn peer_ip(&self) -> Option<IpAddr> {
        self.peer.ip()
    }

    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The path.
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The matched route pattern, if the integration knows it.
    pub fn route_pattern(&self) -> Option<&'a str> {
        self.route
    }

    /// The request extensions, if any.
    pub fn request_extensions(&self) -> Option<&'a Extensions> {
        self.extensions
    }
}

/// Who a hit is charged to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// Skip throttling entirely: no quota consumed, no backend call (the seed's `EXEMPTED`).
    Exempted,
    /// No peer address is known; all such requests share this one bucket.
    Anonymous,
    /// A client IP address.
    Ip(IpAddr),
    /// A network: the address with host bits cleared, and the prefix length.
    Network(IpAddr, u8),
    /// An application-chosen name (user id, API key, tenant).
    Named(String),
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
}

impl Identity {
    /// A named identity.
    pub fn named(name: impl Into<String>) -> Self {
        Identity::Named(name.into())
    }

    /// Whether this identity skips throttling.
    pub fn is_exempted(&self) -> bool {
        matches!(self, Identity::Exempted)
    }

    /// Appends this identity to a key; `hashed` replaces it by a digest.
    #[inline]
    pub(crate) fn write_key(&self, b: KeyBuilder, hashed: bool) -> KeyBuilder {
        b.tagged(|out| self.write_part(out, hashed))
    }

    /// Appends `:` and this identity's key part to `key`, in place: the shortcut for plain
    /// hits builds its key this way, since moving a key whose bytes were just written costs
    /// stalled loads (the bytes are still in flight as single-byte stores).
    #[inline]
    pub(crate) fn append_to(&self, key: &mut Key, hashed: bool) {
        let out = key.text_mut();
        out.push(b':');
        self.write_part(out, hashed);
    }

    #[inline]
    fn write_part(&self, out: &mut key::KeyText, hashed: bool) {
        if hashed && !matches!(self, Identity::Anonymous | Identity::Exempted) {
            out.push_str("h!");
            let mut raw = key::KeyText::new();
            self.write_plain(&mut raw);
            key::push_digest(out, raw.as_bytes());
        } else {
            self.write_plain(out);
        }
    }

    #[inline]
    fn write_plain(&self, out: &mut key::KeyText) {
        match self {
            Identity::Exempted => out.push_str("exempt"),
            Identity::Anonymous => out.push_str("anon"),
            Identity::Ip(ip) => key::push_ip(out, key::Tag::IP, *ip),
            Identity::Network(ip, len) => {
                key::push_ip(out, key::Tag::NET, *ip);
                out.push(b'!');
                key::push_u8(out, *len);
            }
            Identity::Named(name) => {
                out.push_str("id!");
                key::push_part(out, name.as_bytes());
            }
            Identity::Bytes(bytes) => {
                out.push_str("b!");
                key::push_part(out, bytes);
            }
        }
    }
}

impl From<&str> for Identity {
    fn from(s: &str) -> Self {
        Identity::Named(s.to_owned())
    }
}

impl From<String> for Identity {
    fn from(s: String) -> Self {
        Identity::Named(s)
    }
}

impl From<IpAddr> for Identity {
    fn from(ip: IpAddr) -> Self {
        Identity::Ip(ip)
    }
}

/// Maps a request to an [`Identity`].
///
/// Implemented by [`ClientIp`] (the default), by sync closures
/// `Fn(&RequestView<'_>) -> Identity`, by [`AsyncIdentifier`], and by
/// [`SyncFn`](crate::SyncFn)/[`AsyncFn`](crate::AsyncFn) around closures that also read the hit's
/// [`Context`] (where an integration puts what earlier middleware stored: a user from Salvo's
/// `Depot`, a tenant from Poem's extensions):
///
/// ```
/// use traffik::{Context, Identity, RequestView, SyncFn};
/// #[derive(Clone)]
/// struct User(String);
/// let by_user = SyncFn(|_req: &RequestView<'_>, ctx: &Context| match ctx.get::<User>() {
///     Some(user) => Identity::Named(user.0.clone()),
///     None => Identity::Anonymous,
/// });
/// # let _ = traffik::Throttle::builder().identifier(by_user);
/// ```
pub trait Identifier: Any + Send + Sync {
    /// The identity of `req`, with the hit's context.
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, Identity>;

    /// The identity without awaiting, when the identifier never needs to (skips a boxed future).
    fn identify_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        None
    }
}

impl<F> Identifier for F
where
    F: Fn(&RequestView<'_>) -> Identity + Send + Sync + 'static,
{
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        let id = self(req);
        Box::pin(async move { id })
    }

    #[inline]
    fn identify_now(&self, req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        Some(self(req))
    }
}

/// An identifier that must await (a database or cache lookup). The closure reads what it needs
/// from the request and returns a `'static` future.
///
/// ```
/// use traffik::{AsyncIdentifier, Identity, RequestView};
/// let by_token = AsyncIdentifier(|req: &RequestView<'_>| {
///     let token = req.headers().get("x-api-key").map(|v| v.as_bytes().to_vec());
///     async move {
///         match token {
///             Some(t) => Identity::Bytes(t), // look the tenant up here
///             None => Identity::Anonymous,
///         }
///     }
/// });
/// # let _ = by_token;
/// ```
pub struct AsyncIdentifier<F>(pub F);

impl<F, Fut> Identifier for AsyncIdentifier<F>
where
    F: Fn(&RequestView<'_>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Identity> + Send + 'static,
{
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        Box::pin((self.0)(req))
    }
}

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
        let bad = || Error::Config(format!("`{text}` is not an IP address or CIDR network"));
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
    nets: Vec<IpNet>,
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

enum Hop {
    Addr(IpAddr),
    Unknown,
}

/// One hop of a forwarding header: an address, optionally quoted, optionally with a port
/// (`192.0.2.60`, `"192.0.2.60:8080"`, `"[2001:db8::1]:4711"`, a bare IPv6 address in
/// `X-Forwarded-For`). Anything else (an obfuscated or unknown node, an unclosed quote or
/// bracket, a stray character) is [`Hop::Unknown`], which ends the walk.
fn parse_hop(raw: &str) -> Hop {
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
fn valid_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    digits || obfuscated
}

fn list_hops(headers: &HeaderMap, name: &str) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in headers.get_all(name) {
        match value.to_str() {
            Ok(s) => hops.extend(s.split(',').filter(|p| !p.trim().is_empty()).map(parse_hop)),
            Err(_) => hops.push(Hop::Unknown),
        }
    }
    hops
}

fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
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

/// The default identifier: the client IP address (see [`Identity`] for the key forms).
///
/// IPv6 clients are grouped by a prefix (default /64, since one subscriber usually holds a whole
/// /64); IPv4 addresses are used whole. Requests with no peer address share
/// [`Identity::Anonymous`].
#[derive(Clone, Debug)]
pub struct ClientIp {
    proxies: Arc<TrustedProxies>,
    ipv6_prefix: u8,
    ipv4_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp { proxies: Arc::new(TrustedProxies::none()), ipv6_prefix: 64, ipv4_prefix: 32 }
    }
}

impl ClientIp {
    /// Peer address only, IPv6 grouped by /64.
    pub fn new() -> Self {
        ClientIp::default()
    }

    /// Believes forwarding headers from these proxies.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// Groups IPv6 clients by this prefix length (1..=128; 128 = per address).
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix.clamp(1, 128);
        self
    }

    /// Groups IPv4 clients by this prefix length (1..=32; default 32 = per address).
    #[must_use]
    pub fn ipv4_prefix(mut self, prefix: u8) -> Self {
        self.ipv4_prefix = prefix.clamp(1, 32);
        self
    }

    /// Whether `other` identifies every request as this does (same proxies, same prefixes).
    pub(crate) fn same_as(&self, other: &ClientIp) -> bool {
        self.ipv4_prefix == other.ipv4_prefix
            && self.ipv6_prefix == other.ipv6_prefix
            && (Arc::ptr_eq(&self.proxies, &other.proxies) || self.proxies == other.proxies)
    }

    /// The identity of a request.
    #[inline]
    pub fn identity(&self, req: &RequestView<'_>) -> Identity {
        // The common case, an IPv4 peer (or IPv4-mapped IPv6 peer) with no proxy trusted and
        // IPv4 clients not grouped, straight from the request's integers: the general route
        // returns the address as an `IpAddr` through memory, and reloading it stalled each hit
        // for several nanoseconds.
        if self.ipv4_prefix == 32
            && self.proxies.nets.is_empty()
            && let Some(v4) = req.peer.canonical_v4()
        {
            return Identity::Ip(IpAddr::V4(v4));
        }
        self.identity_of(self.proxies.client_ip(req))
    }

    /// The identity of a client address found by [`TrustedProxies::client_ip`].
    #[inline]
    fn identity_of(&self, client: Option<IpAddr>) -> Identity {
        match client {
            None => Identity::Anonymous,
            Some(ip @ IpAddr::V4(_)) if self.ipv4_prefix == 32 => Identity::Ip(ip),
            Some(ip @ IpAddr::V6(_)) if self.ipv6_prefix == 128 => Identity::Ip(ip),
            Some(ip) => {
                let prefix = if ip.is_ipv4() { self.ipv4_prefix } else { self.ipv6_prefix };
                Identity::Network(mask(ip, prefix), prefix)
            }
        }
    }
}

impl Identifier for ClientIp {
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        let id = self.identity(req);
        Box::pin(async move { id })
    }

    #[inline]
    fn identify_now(&self, req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        Some(self.identity(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_peer_address_round_trips() {
        let addrs: [SocketAddr; 5] = [
            "10.1.2.3:8080".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::7]:443".parse().unwrap(),
            "[::ffff:1.2.3.4]:9".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 65535, 0x000f_ffff, 7)),
        ];
        for addr in addrs {
            let view = RequestView::empty().peer(Some(addr));
            assert_eq!(view.peer_addr(), Some(addr));
            assert_eq!(view.peer_ip(), Some(addr.ip()));
            assert!(format!("{view:?}").contains(&format!("{addr:?}")), "{view:?}");
        }
        let none = RequestView::empty().peer(Some(addrs[0])).peer(None);
        assert_eq!((none.peer_addr(), none.peer_ip()), (None, None));
    }

    #[test]
    fn the_direct_peer_identity_matches_the_general_route() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let identifiers = [
            ClientIp::new(),
            ClientIp::new().ipv4_prefix(24),
            ClientIp::new().ipv6_prefix(128),
            ClientIp::new().trusted_proxies(proxies),
        ];
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let peers = ["10.1.2.3:1", "198.51.100.7:2", "[::ffff:10.9.8.7]:3", "[2001:db8:1:2::5]:4", "[::1]:5"];
        for id in &identifiers {
            for peer in peers {
                for headers in [&*EMPTY_HEADERS, &forwarded] {
                    let view = view_with(peer, headers);
                    let prefix = Key::builder("u").build();
                    let mut direct = prefix.clone();
                    id.identity(&view).append_to(&mut direct, false);
                    let mut general = prefix.clone();
                    id.identity_of(id.proxies.client_ip(&view)).append_to(&mut general, false);
                    assert_eq!(direct, general, "{id:?} {peer}");
                }
            }
            let mut direct = Key::builder("u").build();
            id.identity(&RequestView::empty()).append_to(&mut direct, false);
            assert_eq!(direct.as_str(), "u:anon");
        }
    }

    fn view_with<'a>(peer: &str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView::empty().peer(Some(peer.parse().unwrap())).with_headers(headers)
    }

    impl<'a> RequestView<'a> {
        fn with_headers(mut self, headers: &'a HeaderMap) -> Self {
            self.headers = headers;
            self
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_keeps_its_own_bucket_whatever_it_sends() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("x-real-ip", "8.8.8.8"), ("forwarded", "for=7.7.7.7")]);
        let id = ClientIp::new().identity(&view_with("203.0.113.5:1234", &h));
        assert_eq!(id, Identity::Ip("203.0.113.5".parse().unwrap()));
    }

    #[test]
    fn trusted_proxy_chain_is_walked_right_to_left() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let ip = ClientIp::new().trusted_proxies(proxies);
        // The client forged the leftmost entry; the first untrusted hop from the right wins.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("198.51.100.7".parse().unwrap()));
        let h = headers(&[("forwarded", "for=6.6.6.6, for=\"[2001:db8::5]:4711\";proto=https, for=10.2.2.2")]);
        assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Network("2001:db8::".parse().unwrap(), 64));
        let h = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("198.51.100.9".parse().unwrap()));
        let h = headers(&[("forwarded", "for=_hidden, for=10.3.3.3")]);
        assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("10.3.3.3".parse().unwrap()));
    }

    /// The observed defect: `for="[::1` (an unclosed quote and bracket) from a trusted proxy
    /// was believed as `::1`. A malformed hop ends the walk: the client is the last hop believed.
    #[test]
    fn a_malformed_hop_ends_the_walk() {
        let ip = ClientIp::new().trusted_proxies(TrustedProxies::private_networks());
        let peer = "10.0.0.2:80";
        let last_believed = Identity::Ip("10.0.0.2".parse().unwrap());
        for bad in [
            "for=\"[::1",
            "for=\"[::1]",
            "for=[::1",
            "for=\"[::1]:80",
            "for=[::1]:80\"",
            "for=\"[::1]x\"",
            "for=\"[::1]:\"",
            "for=\"192.0.2.60:\"",
            "for=\"192.0.2.60:80:90\"",
            "for=\"\"",
            "for=\"",
            "for=\"1.2.3.4, for=5.6.7.8\"",
        ] {
            let h = headers(&[("forwarded", &format!("for=198.51.100.1, {bad}"))]);
            assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "{bad} was believed");
        }
        // Well-formed hops still parse, quoted or not, with or without ports.
        for (good, want) in [
            ("for=\"[::1]\"", "::1"),
            ("for=\"[::1]:4711\"", "::1"),
            ("for=\"[::1]:_hidden\"", "::1"),
            ("for=192.0.2.60", "192.0.2.60"),
            ("for=\"192.0.2.60:8080\"", "192.0.2.60"),
            ("FOR=192.0.2.61;proto=http", "192.0.2.61"),
        ] {
            let h = headers(&[("forwarded", &format!("for=198.51.100.1, {good}"))]);
            let want: IpAddr = want.parse().unwrap();
            let got = ip.identity(&view_with(peer, &h));
            // ::1 is trusted (a private network): the walk goes on to the next hop.
            let expect = if TrustedProxies::private_networks().contains(want) {
                Identity::Ip("198.51.100.1".parse().unwrap())
            } else {
                Identity::Ip(want)
            };
            assert_eq!(got, expect, "{good}");
        }
        let h = headers(&[("x-forwarded-for", "198.51.100.1, [::1")]);
        assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "x-forwarded-for `[::1`");
        let h = headers(&[("x-forwarded-for", "198.51.100.1, \"10.1.1.1")]);
        assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "x-forwarded-for with a stray quote");
    }

    #[test]
    fn ipv6_grouping_and_mapped_ipv4() {
        let h = HeaderMap::new();
        let a = ClientIp::new().identity(&view_with("[2001:db8:1:2:aaaa::1]:1", &h));
        let b = ClientIp::new().identity(&view_with("[2001:db8:1:2:bbbb::9]:1", &h));
        assert_eq!(a, b);
        let m = ClientIp::new().identity(&view_with("[::ffff:192.0.2.1]:1", &h));
        assert_eq!(m, Identity::Ip("192.0.2.1".parse().unwrap()));
        assert_eq!(ClientIp::new().identity(&RequestView::empty()), Identity::Anonymous);
    }

    #[test]
    fn cidr_parsing() {
        assert!(IpNet::parse("10.0.0.0/8").unwrap().contains("10.200.1.1".parse().unwrap()));
        assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }
}
