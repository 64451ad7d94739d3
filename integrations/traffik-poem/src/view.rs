//! Turning a Poem [`Request`] into a framework-neutral [`RequestView`].

use std::net::{IpAddr, SocketAddr};

use poem::PathPattern;
use poem::Request;
use poem::http::Uri;
use traffik::{RequestView, TrustedProxies};

/// The socket peer of `req`, when Poem accepted it over TCP (IPv4 or IPv6).
///
/// Unix-socket and custom transports give `None`; throttles then charge such requests to
/// [`Identity::Anonymous`](traffik::Identity::Anonymous) unless their identifier says
/// otherwise. Poem's `RealIp` extractor and forwarding headers are never consulted here.
pub fn peer_addr(req: &Request) -> Option<SocketAddr> {
    req.remote_addr().as_socket_addr().copied()
}

/// A [`RequestView`] of `req`: method, original URI (the full path, even inside
/// `Route::nest`), headers, extensions, the socket peer (only when it is an IP socket address)
/// and the matched route pattern (Poem's [`PathPattern`], e.g. `/users/:id`, once a `Route`
/// has matched).
///
/// The view carries the request's headers, but no forwarding header (`Forwarded`,
/// `X-Forwarded-For`, `X-Real-IP`) is believed unless the throttle's identifier was given
/// [`TrustedProxies`] (see [`traffik::ClientIp::trusted_proxies`]): by default the identity is
/// the socket peer and nothing a client sends can change it.
///
/// ```
/// use poem::Request;
/// use traffik_poem::request_view;
///
/// let req = Request::builder().uri_str("/items/7").finish();
/// let view = request_view(&req);
/// assert_eq!(view.path(), "/items/7");
/// assert_eq!(view.peer_addr(), None);
/// ```
pub fn request_view(req: &Request) -> RequestView<'_> {
    RequestView::new(req.method(), full_uri(req), req.headers())
        .peer(peer_addr(req))
        .route(req.data::<PathPattern>().map(|p| &*p.0))
        .extensions(req.extensions())
}

/// The request's URI before any `Route::nest` stripped a prefix.
///
/// Poem's server records it; requests built by hand (`Request::builder()`, `TestClient`) leave
/// the original URI at its default `/`, and then the current URI is the full one (nesting only
/// ever shortens a path, so an original `/` with a different current URI means "not recorded").
pub fn full_uri(req: &Request) -> &Uri {
    let original = req.original_uri();
    if original.path() == "/" && original.query().is_none() && req.uri() != original { req.uri() } else { original }
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
    use poem::http::HeaderValue;
    use poem::web::{LocalAddr, RemoteAddr};
    use poem::{Addr, Body, RequestParts};

    /// A request as Poem's server would build it for a TCP peer.
    fn with_peer(peer: &str, forwarded_for: &str) -> Request {
        let Ok(peer) = peer.parse::<SocketAddr>() else { unreachable!("test addresses are valid") };
        let Ok(http_req) = poem::http::Request::builder().uri("/a/b").header("x-forwarded-for", forwarded_for).body(())
        else {
            unreachable!("test requests are valid")
        };
        let (parts, ()) = http_req.into_parts();
        let parts = RequestParts::from((
            parts,
            LocalAddr(Addr::custom("test", "local")),
            RemoteAddr(Addr::socket(peer)),
            poem::http::uri::Scheme::HTTP,
        ));
        Request::from_parts(parts, Body::empty())
    }

    #[test]
    fn no_peer_without_a_socket() {
        let mut req = Request::builder().uri_str("/x").finish();
        req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(peer_addr(&req), None);
        assert_eq!(request_view(&req).route_pattern(), None);
        assert_eq!(client_ip(&req, &TrustedProxies::private_networks()), None);
    }

    #[test]
    fn forwarding_headers_need_a_trusted_peer() {
        let req = with_peer("10.0.0.5:1234", "203.0.113.9");
        assert_eq!(peer_addr(&req), "10.0.0.5:1234".parse().ok());
        assert_eq!(client_ip(&req, &TrustedProxies::none()), "10.0.0.5".parse().ok(), "headers are ignored by default");
        assert_eq!(
            client_ip(&req, &TrustedProxies::private_networks()),
            "203.0.113.9".parse().ok(),
            "a trusted proxy's header names the client"
        );
    }
}
