//! # traffik-salvo
//!
//! [Salvo](https://salvo.rs) integration for [`traffik`]: throttles as hoops, global throttling
//! with filters, direct calls inside handlers, and per-message throttling for WebSockets.
//!
//! ## Hoops
//!
//! [`SalvoThrottle`] wraps a [`traffik::Throttle`] (which cannot implement Salvo's
//! [`Handler`](salvo::Handler) itself) and is a `Handler`: put it on any router level, stack as
//! many as you like (they run in order; the first denial stops the request).
//! [`ThrottleExt::hoop`] does the wrapping for you.
//!
//! ```
//! use salvo::prelude::*;
//! use traffik::{rate, InMemoryBackend, Throttle, strategy::{FixedWindow, TokenBucket}};
//! use traffik_salvo::ThrottleExt;
//!
//! #[handler]
//! async fn item() -> &'static str {
//!     "item"
//! }
//!
//! let burst = Throttle::builder()
//!     .uid("salvo-doc-burst")
//!     .rate(rate!("10/s"))
//!     .backend(InMemoryBackend::new())
//!     .strategy(TokenBucket::new())
//!     .build()?;
//! let sustained = Throttle::builder()
//!     .uid("salvo-doc-sustained")
//!     .rate(rate!("1000/h"))
//!     .backend(InMemoryBackend::new())
//!     .strategy(FixedWindow)
//!     .build()?;
//! let router = Router::with_path("api")
//!     .hoop(burst.hoop())
//!     .hoop(sustained.hoop())
//!     .push(Router::with_path("items/{id}").get(item));
//! # let _ = router;
//! # Ok::<(), traffik::Error>(())
//! ```
//!
//! A throttle on a route with path parameters (`items/{id}` above) limits each client on the
//! route as a whole, not each concrete path: keys are built from the throttle's uid and the
//! client's identity, never from the path. Use [`SalvoThrottle::per_route`] to give each route
//! pattern its own quota, or a [`Context`](traffik::Context) scope for finer splits.
//!
//! ## Responses
//!
//! | decision | response |
//! |---|---|
//! | allowed | the handler's, plus headers the throttle sends `When::Always` (a header the handler sets wins; never `Retry-After`) |
//! | delayed (queueing strategies) | the request waits `Decision::wait`, then proceeds |
//! | throttled | `429`, `Retry-After` in whole seconds (rounded up), the throttle's headers, and `{"error":"rate_limited","message":...,"retry_after_ms":...}` |
//! | cost can never fit | `429`, `{"error":"cost_exceeds_limit",...,"retry_after_ms":null}`, no `Retry-After` |
//! | backend failure the error policy raises | `503`, `{"error":"rate_limiter_unavailable",...}` (nothing internal named) |
//!
//! The statuses, `Retry-After` and bodies are the core's [`traffik::reply::Reply`], the same as in
//! `traffik-poem`.
//!
//! In shadow mode ([`Throttle::set_shadow`](traffik::Throttle::set_shadow), the builder's
//! `shadow`, or [`SalvoThrottle::shadow`] for one hoop) nothing is refused or delayed: a request
//! the throttle would refuse goes on with the headers an allowed request gets (true values,
//! `X-RateLimit-Remaining: 0` included), never `Retry-After` or a header configured
//! `When::Throttled`, and the depot holds the throttled decision with `shadow` set. The same
//! holds for groups ([`ThrottleGroup::set_shadow`](traffik::ThrottleGroup::set_shadow)) and
//! WebSocket messages (never refused in shadow mode).
//!
//! Replace the 429 body with a [`ThrottledHandler`] stored on the throttle. Downstream
//! handlers (and the throttled handler) read the decisions from the depot through
//! [`DepotExt`]; [`SalvoThrottle::with_stat`] adds a [`Stat`](traffik::Stat) snapshot at the
//! price of one more backend call.
//!
//! ## Refunds after the response
//!
//! [`SalvoThrottle::settle`] (also [`SalvoGroup::settle`], [`MiddlewareThrottle::settle`]) takes
//! a [`Settle`](traffik::Settle) rule, the core's, shared with `traffik-poem`: once the rest of
//! the chain has answered, the rule reads the response's status and body length and says what
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
//! * **Status**: the response's (`200` when none was set); a status a handler set counts with
//!   it.
//! * **Body length**: `Content-Length`, else the body's exact size (a streamed body's is
//!   unknown, as is a body left for Salvo's catcher to write).
//! * **The response** is never changed (its limit headers describe the admission); a backend
//!   failure while settling is logged at `warn` and the charge stands.
//! * **Groups** are settled by refunds only; **concurrency limits** are not settled (the permit
//!   is given back when the request ends anyway).
//!
//! ## Global throttling
//!
//! [`ThrottleMiddleware`] applies a list of [`MiddlewareThrottle`]s, each with optional method,
//! path-glob and predicate filters (checked in that order) and an optional cost, in the order
//! given.
//!
//! ## Direct calls
//!
//! [`SalvoThrottle::apply`] runs the whole flow inside a handler and tells you whether to go on;
//! [`ThrottleExt::hit_request`] returns the bare [`Decision`](traffik::Decision);
//! [`request_view`] turns a Salvo request into a [`traffik::RequestView`] for any other core
//! call ([`Throttle::check`](traffik::Throttle::check), [`Throttle::stat`](traffik::Throttle::stat)).
//!
//! ## Client identity and proxies
//!
//! The default identity is the TCP peer. Forwarding headers are believed only from proxies
//! you list: build the throttle with
//! `.identifier(ClientIp::new().trusted_proxies(TrustedProxies::new(["10.0.0.0/8"])?))`.
//! Requests over Unix sockets have no IP peer and share one anonymous bucket unless your
//! identifier says otherwise.
//!
//! ## WebSockets
//!
//! Throttle the upgrade with a hoop (a denied client gets a 429 before the handshake) and each
//! message with [`WsThrottle`]. A denied message gets a JSON text reply and the socket stays
//! open, or the socket is closed with 1008 ([`WsThrottle::close_on_throttle`]).
//!
//! ## Coming from `salvo-rate-limiter`
//!
//! The ideas map one to one; the names differ:
//!
//! | salvo-rate-limiter | traffik |
//! |---|---|
//! | issuer (who is limited) | identifier: [`traffik::ClientIp`] by default, or any closure returning an [`Identity`](traffik::Identity) |
//! | quota getter | rate: a fixed [`Rate`](traffik::Rate) (`rate!("100/min")`) or a rate function (`.rate_fn(...)`) |
//! | guard (the algorithm) | strategy: fixed window, sliding log and counter, token bucket (with debt), leaky bucket (with queue), GCRA |
//! | store | backend: [`traffik::InMemoryBackend`], or Redis and Memcached for several app instances |
//! | `RateLimiter` hoop | [`SalvoThrottle`] (or [`ThrottleMiddleware`] for filtered, global limits) |
//! | skipper | [`SalvoThrottle::skipper`] (any Salvo `Skipper`) |
//! | several limits on one route | a [`ThrottleGroup`](traffik::ThrottleGroup) as one hoop ([`SalvoGroup`]), decided as one |
//!
//! What you gain: shared state across instances (Redis, Memcached) with error policies for
//! outages, weighted requests (cost), `Retry-After` and rate-limit headers out of the box,
//! queueing strategies that delay instead of reject, gating and bypass rules, exemptions,
//! runtime reconfiguration and WebSocket message limits.

mod depot;
mod group;
mod hoop;
mod load;
mod middleware;
mod permit;
mod quotas;
mod settle;
mod view;
#[cfg(feature = "websocket")]
mod ws;

pub use depot::{DepotExt, ThrottleRecord, ThrottleRecords};
pub use group::{GroupExt, SalvoGroup};
pub use hoop::{SalvoThrottle, ThrottleExt, ThrottledHandler, throttled_body, write_throttled};
pub use load::ObserveLoad;
pub use middleware::{MiddlewareThrottle, ThrottleMiddleware};
pub use permit::{HeldPermit, take_permit};
pub use quotas::QuotasHandler;
#[cfg(feature = "websocket")]
pub use traffik::reply::WsVerdict;
pub use view::{client_ip, peer_addr, request_view};
#[cfg(feature = "websocket")]
pub use ws::{INTERNAL_ERROR, POLICY_VIOLATION, WsConnection, WsThrottle, ws_throttled_message};
