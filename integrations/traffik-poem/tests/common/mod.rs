//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use poem::listener::TcpAcceptor;
use poem::test::TestResponse;
use poem::{Endpoint, Server};

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
            .uid($crate::common::uid("poem-test"))
            .rate($rate)
            .backend(traffik::InMemoryBackend::new())
            .strategy(traffik::strategy::FixedWindow)
            .clock(traffik::ManualClock::new(0))
    };
}

/// Serves `app` on 127.0.0.1 (a free port) in the background; returns its address.
pub async fn serve<E>(app: E) -> SocketAddr
where
    E: Endpoint + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    addr
}

/// A reqwest client that never uses a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A response header as a string.
pub fn header(resp: &TestResponse, name: &str) -> Option<String> {
    resp.0.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// The body as JSON.
pub async fn json(resp: TestResponse) -> serde_json::Value {
    let text = resp.0.into_body().into_string().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A backend that is always down (kind `"down"`).
pub fn broken() -> traffik_property_tests::failing::Failing {
    traffik_property_tests::failing::Failing::down()
}
