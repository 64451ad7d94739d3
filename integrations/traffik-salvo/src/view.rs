//! Turning a Salvo [`Request`] into a framework-neutral [`RequestView`].

use std::net::{IpAddr, SocketAddr};

use salvo::Request;
use traffik::{RequestView, TrustedProxies};

/// The socket peer of `req`, when Salvo accepted it over TCP (IPv4 or IPv6).
///
/// Unix-socket and unknown peers give `None`; throttles then charge such requests to
/// [`Identity::Anonymous`](traffik::Identity::Anonymous) unless their identifier says otherwise.
pub fn peer_addr(req: &Request) -> Option<SocketAddr> {
    req.remote_addr().clone().into_std()
}

/// A [`RequestView`] of `req`: method, URI, headers, extensions, the socket peer (only when it
/// is an IP socket address) and the matched route pattern (Salvo's matched path, e.g.
/// `users/{id}`).
///
/// The view carries the request's headers, but no forwarding header (`Forwarded`,
/// `X-Forwarded-For`, `X-Real-IP`) is believed unless the throttle's identifier was given
/// [`TrustedProxies`] (see [`traffik::ClientIp::trusted_proxies`]): by default the identity is
/// the socket peer and nothing a client sends can change it.
///
/// ```
/// use salvo::Request;
/// use traffik_salvo::request_view;
///
/// let mut req = Request::default();
/// let addr = std::net::SocketAddr::from(([192, 0, 2, 7], 4000));
/// *req.remote_addr_mut() = addr.into();
/// let view = request_view(&req);
/// assert_eq!(view.peer_addr(), Some(addr));
/// ```
pub fn request_view(req: &Request) -> RequestView<'_> {
    let matched = req.matched_path();
    RequestView::new(req.method(), req.uri(), req.headers())
        .peer(peer_addr(req))
        .route((!matched.is_empty()).then_some(matched))
        .extensions(req.extensions())
}

/// The client address of `req` as `proxies` see it: the socket peer, or, when the peer is a
/// trusted proxy, the first untrusted hop of its forwarding headers (walked right to left).
///
/// Useful for logging the same address a throttle charges. `None` when the peer is not an IP
/// socket address.
pub fn client_ip(req: &Request, proxies: &TrustedProxies) -> Option<IpAddr> {
    proxies.client_ip(&request_view(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_only_for_ip_sockets() {
        let req = Request::default();
        assert_eq!(peer_addr(&req), None);
        let mut req = Request::default();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap_or_else(|_| unreachable!());
        *req.remote_addr_mut() = v6.into();
        assert_eq!(peer_addr(&req), Some(v6));
        assert_eq!(request_view(&req).route_pattern(), None);
    }

    #[test]
    fn forwarding_headers_need_a_trusted_peer() {
        let mut req = Request::default();
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap_or_else(|_| unreachable!());
        *req.remote_addr_mut() = peer.into();
        req.headers_mut().insert("x-forwarded-for", salvo::http::HeaderValue::from_static("203.0.113.9"));
        assert_eq!(client_ip(&req, &TrustedProxies::none()), Some(peer.ip()), "headers are ignored by default");
        let trusted = TrustedProxies::new(["10.0.0.0/8"]).unwrap_or_default();
        assert_eq!(client_ip(&req, &trusted), "203.0.113.9".parse().ok(), "a trusted proxy's header names the client");
    }
}
