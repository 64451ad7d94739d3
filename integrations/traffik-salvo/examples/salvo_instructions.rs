//! What the Salvo hoop costs, counted in instructions under callgrind (counts do not depend on
//! how busy or fast the machine is), on the same router as the load bench's rows:
//!
//! ```sh
//! cargo build --release -p traffik-salvo --example salvo_instructions
//! valgrind --tool=callgrind --toggle-collect='*served*' target/release/examples/salvo_instructions plain
//! ```
//!
//! Modes: `plain` (a handler answering "hello"), `throttled` (the same behind the hoop, a rate
//! never reached), `rejected` (a hoop that refuses every request: the 429 path) and `same429`
//! (an unthrottled handler answering the very 429 the hoop sends: the rejection path's
//! like-with-like baseline). Instructions per request = the reported `refs` / 20,000.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Throttle};
use traffik_salvo::ThrottleExt;

const OPS: u32 = 20_000;

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory request waited"),
    }
}

#[handler]
async fn hello() -> &'static str {
    "hello"
}

fn throttle(uid: &str, rate: &str) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).backend(InMemoryBackend::new()).strategy(FixedWindow).build().unwrap()
}

/// The 429 the hoop sends, replayed by a plain handler.
struct Same429 {
    headers: salvo::http::HeaderMap,
    body: String,
}

#[async_trait]
impl Handler for Same429 {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        res.status_code(StatusCode::TOO_MANY_REQUESTS);
        *res.headers_mut() = self.headers.clone();
        res.body(self.body.clone());
    }
}

fn request(path: &str) -> Request {
    TestClient::get(format!("http://127.0.0.1/{path}")).build()
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "throttled".into());
    let sample = Service::new(Router::with_path("x").hoop(throttle("sample", "1/h").hoop()).get(hello));
    let _ = now_or_never(sample.handle(request("x")));
    let mut refused = now_or_never(sample.handle(request("x")));
    assert_eq!(refused.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    let same = Same429 { headers: refused.headers().clone(), body: now_or_never(refused.take_string()).unwrap() };
    let service = Service::new(
        Router::new()
            .push(Router::with_path("plain").get(hello))
            .push(Router::with_path("throttled").hoop(throttle("open", "1000000000/h").hoop()).get(hello))
            .push(Router::with_path("rejected").hoop(throttle("closed", "1/h").hoop()).get(hello))
            .push(Router::with_path("same429").get(same)),
    );
    let path = match what.as_str() {
        "plain" | "throttled" | "rejected" | "same429" => what.as_str(),
        other => panic!("unknown mode {other:?}: use plain, throttled, rejected or same429"),
    };
    for _ in 0..1_000 {
        black_box(now_or_never(service.handle(request(path))));
    }
    served(&service, path);
}

#[inline(never)]
fn served(service: &Service, path: &str) {
    for _ in 0..OPS {
        black_box(now_or_never(service.handle(request(path))));
    }
}
