//! What the Poem middleware costs beyond the throttle itself, counted in instructions under
//! callgrind (counts do not depend on how busy or fast the machine is):
//!
//! ```sh
//! cargo build --release -p traffik-poem --example poem_instructions
//! valgrind --tool=callgrind --toggle-collect='*plain_calls*' target/release/examples/poem_instructions plain
//! valgrind --tool=callgrind --toggle-collect='*throttled_calls*' target/release/examples/poem_instructions throttled
//! valgrind --tool=callgrind --toggle-collect='*bare_hits*' target/release/examples/poem_instructions hit
//! valgrind --tool=callgrind --toggle-collect='*requests_only*' target/release/examples/poem_instructions requests
//! ```
//!
//! Instructions per request = the reported `refs` / 100,000. `plain` calls a route to a handler
//! with a fresh request each time; `throttled` the same endpoint behind `PoemThrottle` (in
//! memory, fixed window, a rate never reached, no headers: the default); `headers` the same
//! with the `X-RateLimit-*` headers on every response (`--toggle-collect='*throttled_calls*'`
//! too); `refused` a throttle that answers every request with its 429; `hit` only the
//! `Throttle::hit` that middleware makes, on the same request view. The middleware's own cost
//! is `throttled - plain - (hit - requests)`. (Poem requests built in-process have no peer address, so every
//! request here is the anonymous client; identity costs are in the core's own count.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use poem::{Endpoint, EndpointExt, IntoResponse, Request, Route, get, handler};
use traffik::strategy::FixedWindow;
use traffik::{Headers, InMemoryBackend, Throttle, When};
use traffik_poem::{ThrottleExt, request_view};

const OPS: u32 = 100_000;

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory request waited"),
    }
}

#[handler]
fn ok() -> &'static str {
    "ok"
}

fn request() -> Request {
    Request::builder().uri_str("/data").header("user-agent", "instructions").finish()
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "throttled".into());
    let build = |uid: &str| {
        Throttle::builder().uid(uid).rate("1000000000/min").backend(InMemoryBackend::new()).strategy(FixedWindow)
    };
    // No headers (the default, as in the load bench), and the limit headers on every response.
    let throttle = build("instructions").build().unwrap();
    let with_headers = build("instructions-headers").headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    // Refuses everything after the first request: the 429 path.
    let closed = Throttle::builder()
        .uid("instructions-closed")
        .rate("1/h")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    // Every mode routes alike, as an application does (the route also gives every request
    // its extensions map, as it would in a server).
    let plain = Route::new().at("/data", get(ok));
    let throttled = Route::new().at("/data", get(ok).with(throttle.middleware()));
    let headed = Route::new().at("/data", get(ok).with(with_headers.middleware()));
    let refused = Route::new().at("/data", get(ok).with(closed.middleware()));
    // Warm up: the key exists and every cache is filled before counting starts.
    for _ in 0..1_000 {
        black_box(now_or_never(plain.call(request())).unwrap().into_response());
        black_box(now_or_never(throttled.call(request())).unwrap().into_response());
        black_box(now_or_never(headed.call(request())).unwrap().into_response());
        black_box(now_or_never(refused.call(request())).unwrap().into_response());
    }
    match what.as_str() {
        "plain" => plain_calls(&plain),
        "throttled" => throttled_calls(&throttled),
        "headers" => throttled_calls(&headed),
        "refused" => throttled_calls(&refused),
        "hit" => bare_hits(&throttle),
        "requests" => requests_only(),
        other => panic!("unknown mode {other:?}: use plain, throttled, headers, refused, hit or requests"),
    }
}

#[inline(never)]
fn plain_calls(ep: &impl Endpoint) {
    for _ in 0..OPS {
        black_box(now_or_never(ep.call(request())).unwrap().into_response());
    }
}

#[inline(never)]
fn throttled_calls(ep: &impl Endpoint) {
    for _ in 0..OPS {
        black_box(now_or_never(ep.call(request())).unwrap().into_response());
    }
}

/// The hit alone, with the request built and dropped as in the other modes.
#[inline(never)]
fn bare_hits(throttle: &Throttle) {
    for _ in 0..OPS {
        let req = request();
        let _ = black_box(now_or_never(throttle.hit(&request_view(&req))).unwrap());
        black_box(req);
    }
}

/// Building and dropping the requests alone (subtract from `hit`).
#[inline(never)]
fn requests_only() {
    for _ in 0..OPS {
        black_box(request());
    }
}
