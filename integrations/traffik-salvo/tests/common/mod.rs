//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use salvo::http::Method;
use salvo::test::{RequestBuilder, ResponseExt};
use salvo::{Response, Router, Server, Service};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A uid no other test uses.
pub fn uid(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A throttle builder with a fresh uid, the rate, an in-memory backend, a fixed window, a clock
/// that stands still at 0 (so no window boundary can fall inside a test, however slow the
/// machine) and no registry; chain more options (another clock, too), then `.build()`.
#[macro_export]
macro_rules! throttle {
    ($rate:expr) => {
        traffik::Throttle::builder()
            .uid($crate::common::uid("salvo-test"))
            .rate($rate)
            .backend(traffik::InMemoryBackend::new())
            .strategy(traffik::strategy::FixedWindow)
            .clock(traffik::ManualClock::new(0))
    };
}

/// Sends a request through `service` as if it came from `peer`.
pub async fn send(service: &Service, method: Method, path: &str, peer: &str, headers: &[(&str, &str)]) -> Response {
    let mut builder = RequestBuilder::new(format!("http://example.test{path}"), method);
    for (name, value) in headers {
        let name = salvo::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        builder = builder.add_header(name, *value, false);
    }
    let mut req = builder.build();
    let peer: SocketAddr = peer.parse().unwrap();
    *req.remote_addr_mut() = peer.into();
    service.handle(req).await
}

/// `GET path` from `peer`.
pub async fn get(service: &Service, path: &str, peer: &str) -> Response {
    send(service, Method::GET, path, peer, &[]).await
}

/// The response header `name` as a string.
pub fn header(res: &Response, name: &str) -> Option<String> {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// The body as JSON.
pub async fn json(res: &mut Response) -> serde_json::Value {
    let text = res.take_string().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A real server on 127.0.0.1 (port 0) serving `router`; returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
    tokio::spawn(Server::new(acceptor).serve(router));
    addr
}

/// A backend that is always down (kind `"down"`).
pub fn broken() -> traffik_property_tests::failing::Failing {
    traffik_property_tests::failing::Failing::down()
}
