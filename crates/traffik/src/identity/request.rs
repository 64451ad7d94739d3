//! What a throttle sees of a request: [`RequestView`] and the peer it came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::LazyLock;

use http::{Extensions, HeaderMap, Method, Uri};

pub(super) static EMPTY_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);

pub(super) static ROOT: LazyLock<Uri> = LazyLock::new(|| Uri::from_static("/"));

/// A socket peer address kept as plain integers.
///
/// A `RequestView` is built per request by value (`empty().peer(..)`); an `Option<SocketAddr>`
/// field made the compiler copy the address through overlapping 16-byte moves whose reloads
/// straddled two stores, stalling each hit for several nanoseconds (store-to-load forwarding
/// fails). Integers are written and read whole.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Peer {
    /// IPv6 address bits, or an IPv4 address in the low 32 bits.
    pub(super) ip: u128,
    pub(super) flowinfo: u32,
    pub(super) scope_id: u32,
    pub(super) port: u16,
    /// 0: none; 4: IPv4; 6: IPv6.
    pub(super) family: u8,
}

impl Peer {
    pub(super) const NONE: Peer = Peer { ip: 0, flowinfo: 0, scope_id: 0, port: 0, family: 0 };

    #[inline]
    pub(super) fn new(addr: Option<SocketAddr>) -> Peer {
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
    pub(super) fn canonical_v4(self) -> Option<Ipv4Addr> {
        match self.family {
            4 => Some(Ipv4Addr::from(self.ip as u32)),
            6 if self.ip >> 32 == 0xffff => Some(Ipv4Addr::from(self.ip as u32)),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn ip(self) -> Option<IpAddr> {
        match self.family {
            4 => Some(IpAddr::V4(Ipv4Addr::from(self.ip as u32))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(self.ip))),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn addr(self) -> Option<SocketAddr> {
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
    pub(super) peer: Peer,
    method: &'a Method,
    uri: &'a Uri,
    pub(super) headers: &'a HeaderMap,
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
