//! # traffik-poem
//!
//! [Poem](https://docs.rs/poem) integration for [`traffik`]: throttles as per-route middleware,
//! app-wide middleware with path/method/predicate rules, helpers for calling a throttle inside
//! a handler, and per-message throttling for WebSockets.
//!
//! ```
//! use poem::{EndpointExt, Route, get, handler, test::TestClient};
//! use traffik::{rate, Headers, InMemoryBackend, Throttle, When, strategy::FixedWindow};
//! use traffik_poem::ThrottleExt;
//!
//! #[handler]
//! fn hello() -> &'static str { "hello" }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), traffik::Error> {
//! let throttle = Throttle::builder()
//!     .uid("crate-doc")
//!     .rate(rate!("2/min"))
//!     .backend(InMemoryBackend::new())
//!     .strategy(FixedWindow)
//!     .headers(Headers::x_ratelimit(When::Always))
//!     
//!     .build()?;
//! let app = Route::new().at("/hello", get(hello).with(throttle.middleware()));
//! let cli = TestClient::new(app);
//! cli.get("/hello").send().await.assert_status_is_ok();
//! cli.get("/hello").send().await.assert_header("x-ratelimit-remaining", "0");
//! let third = cli.get("/hello").send().await;
//! third.assert_status(poem::http::StatusCode::TOO_MANY_REQUESTS);
//! third.assert_header_exist("retry-after");
//! # Ok(())
//! # }
//! ```
//!
//! | need | use |
//! |---|---|
//! | limit a route (stackable) | [`PoemThrottle`] / [`ThrottleExt::middleware`] with `.with(..)` |
//! | stacked limits decided as one (burst + sustained) | [`PoemGroup`] / [`GroupExt::middleware`] of a [`ThrottleGroup`](traffik::ThrottleGroup) |
//! | limit the whole app by rules | [`ThrottleMiddleware`] of [`MiddlewareThrottle`]s |
//! | limit inside a handler (cost by upload size, ...) | [`enforce`], [`hit`], [`request_view`] |
//! | read the decision in a handler | `Data<&Decision>`, [`decisions`], [`is_throttled`] |
//! | watch a limit before enforcing it | shadow mode: the throttle's `shadow`, or [`PoemThrottle::shadow`] |
//! | shape the 429 | [`ThrottledHandler`] (stored in the throttle), [`Throttle::headers`] |
//! | refund failures, charge by response size | [`PoemThrottle::settle`] with a [`Settle`](traffik::Settle) rule |
//! | WebSocket messages | [`WsThrottle`] |
//!
//! [`Throttle::headers`]: traffik::Throttle::headers
//!
//! # Responses
//!
//! * **Throttled**: `429 Too Many Requests`, `Retry-After` (whole seconds, rounded up), the
//!   throttle's configured headers, and
//!   `{"error":"rate_limited","message":"Too many requests. Retry in 2 seconds.","retry_after_ms":1500}`.
//! * **Never** (the cost can never fit the rate): 429 with
//!   `{"error":"cost_exceeds_limit","message":..,"cost":..,"limit":..,"retry_after_ms":null}` and no `Retry-After`.
//! * **Delayed** (`LeakyBucketWithQueue` shaping): the request waits its slot, then proceeds.
//! * **Backend failure** that the throttle's error policy raised:
//!   `503 Service Unavailable` with `{"error":"rate_limiter_unavailable",..}`.
//! * **Allowed**: the endpoint's response plus the throttle's headers that apply
//!   ([`traffik::When::Always`]) and that the response does not set already: a header set by the
//!   application or an inner throttle (its 429) is never replaced. `Retry-After` is sent on
//!   throttled responses only.
//!
//! * **Shadow mode** ([`Throttle::set_shadow`](traffik::Throttle::set_shadow), the builder's
//!   `shadow`, or [`PoemThrottle::shadow`] for one middleware): nothing is refused or delayed.
//!   A request the throttle would refuse gets the endpoint's response with the headers an
//!   allowed request gets (the limit headers with their true values, `X-RateLimit-Remaining: 0`
//!   included), never `Retry-After` or a header configured `When::Throttled`; the endpoint sees
//!   the throttled [`Decision`](traffik::Decision) with `shadow` set.
//!
//! A [`ThrottledHandler`] set on the throttle replaces the 429 response.
//!
//! # Refunds after the response
//!
//! [`PoemThrottle::settle`] (also [`PoemGroup::settle`], [`MiddlewareThrottle::settle`]) takes
//! a [`Settle`](traffik::Settle) rule, the core's, shared with `traffik-salvo`: once the
//! endpoint has answered, the rule reads the response's status and body length and says what
//! the request really cost, and the admission's charge is brought to it
//! ([`Throttle::settle`](traffik::Throttle::settle)).
//!
//! | rule | actual cost |
//! |---|---|
//! | [`Settle::refund_server_errors`](traffik::Settle::refund_server_errors) | 0 for a 5xx, else the charge |
//! | [`Settle::refund_when`](traffik::Settle::refund_when) | 0 when the predicate on the status holds, else the charge |
//! | [`Settle::by_body_size`](traffik::Settle::by_body_size) | the body's length in units, rounded up; the charge when unknown |
//! | [`Settle::new`](traffik::Settle::new) | any function of the response |
//!
//! * **Status**: the response's; an `Err` the endpoint returned counts with its status.
//! * **Body length**: `Content-Length`, else the body's exact size (a streamed body's is
//!   unknown).
//! * **The response** is never changed (its limit headers describe the admission); a backend
//!   failure while settling is logged at `warn` and the charge stands.
//! * **Groups** are settled by refunds only; **concurrency limits** are not settled (the permit
//!   is given back when the request ends anyway).
//!
//! # Identity and proxies
//!
//! The client is the socket peer ([`peer_addr`]; `None` for non-IP transports). Forwarding
//! headers and Poem's `RealIp` are never used here: configure
//! [`traffik::ClientIp::trusted_proxies`] on the throttle's identifier to believe a proxy.
//! Keys hold the identity, not the path, so a route with path parameters is limited per client
//! as a whole; [`PoemThrottle::per_path`] opts into one quota per concrete path.
//!
//! # Load test
//!
//! `cargo bench -p traffik-poem --bench load` (release build, about 36 s, traffic to 127.0.0.1
//! only) serves one endpoint unthrottled, throttled in memory with a limit it never reaches,
//! and throttled on its rejection path, and prints requests per second, the server's CPU time
//! per request and their ratios to the unthrottled baseline. It drives the servers with `wrk`
//! when it is installed (`apt-get install -y wrk`; `TRAFFIK_BENCH_CLIENT=builtin` forces the
//! in-process client) and `TRAFFIK_BENCH_SECS` sets the seconds per run (default 3; each
//! configuration runs three times, interleaved, after a 1 s warm-up).

mod global;
mod group;
mod load;
mod middleware;
mod quotas;
mod response;
mod settle;
mod view;
#[cfg(feature = "websocket")]
mod ws;

pub use global::{MiddlewareThrottle, ThrottleMiddleware, ThrottleMiddlewareEndpoint};
pub use group::{GroupEndpoint, GroupExt, PoemGroup};
pub use load::{ObserveLoad, ObserveLoadEndpoint};
pub use middleware::{
    HeldPermit, PoemThrottle, ThrottleDecisions, ThrottleEndpoint, ThrottleExt, apply_headers, decision, decisions,
    enforce, hit, is_throttled, record, take_permit,
};
pub use quotas::QuotasEndpoint;
pub use response::{ThrottledHandler, default_throttled_response, error_response, throttled_response};
#[cfg(feature = "websocket")]
pub use traffik::reply::WsVerdict;
pub use view::{client_ip, full_uri, peer_addr, request_view};
#[cfg(feature = "websocket")]
pub use ws::{WsReaction, WsThrottle, notice};
