//! # traffik
//!
//! Asynchronous, distributed rate limiting for Rust web services. This is the
//! framework-neutral core: rates, strategies, backends, throttles, identity, rules, headers and
//! error policies. `traffik-poem` and `traffik-salvo` plug it into those frameworks;
//! `traffik-redis` and `traffik-memcached` add shared backends.
//!
//! ```
//! use traffik::{rate, InMemoryBackend, RequestView, Throttle, strategy::Gcra};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), traffik::Error> {
//! let throttle = Throttle::builder()
//!     .uid("quick-start")
//!     .rate(rate!("100/min"))
//!     .backend(InMemoryBackend::new())
//!     .strategy(Gcra::new())
//!     .build()?;
//!
//! let request = RequestView::empty().peer(Some(([198, 51, 100, 4], 40000).into()));
//! let decision = throttle.hit(&request).await?;
//! assert!(decision.is_allowed());
//! # Ok(())
//! # }
//! ```
//!
//! | concept | type |
//! |---|---|
//! | how much, how often | [`Rate`], [`rate!`] |
//! | the algorithm | [`strategy::Strategy`] and the eight built-ins in [`strategy`] |
//! | where state lives | [`Backend`], [`InMemoryBackend`] |
//! | who is limited | [`Identity`], [`ClientIp`], [`TrustedProxies`], [`Identifier`] |
//! | the limiter | [`Throttle`], built by [`Throttle::builder`] |
//! | stacked limits, decided as one | [`ThrottleGroup`], [`GroupDecision`] |
//! | deferred quota: charge a job once, at the end | [`Scope`], [`ScopeDecision`], [`ScopeError`] |
//! | what a request really cost, once answered (refunds) | [`Throttle::refund`], [`Throttle::settle`], [`Settle`], [`Served`] |
//! | when it applies | [`Rule`], [`ThrottleRegistry`] |
//! | what the client sees | [`Decision`], [`Headers`], [`Reply`](reply::Reply) (429 and 503, for every integration) |
//! | when the backend fails | [`ErrorPolicy`], [`CircuitBreaker`] |
//! | dashboards | [`Snapshot`], [`Stat`], [`BreakerInfo`](policy::BreakerInfo), [`IncidentCounts`](policy::IncidentCounts) |
//!
//! # Rate strings
//!
//! `"<limit>/<unit>"` (`"5/m"`), `"<limit>/<n><unit>"` (`"2/5s"`, `"1000/500ms"`),
//! `"<limit>/<n> <unit>"` (`"10/30 seconds"`), `"<limit> per <n> <unit>"` (`"20 per 2 mins"`),
//! `"<limit> per<unit>"` (`"2 persecond"`), and `"0/0"` for unlimited. Units: `ms`,
//! `millisecond(s)`, `s`, `sec(s)`, `second(s)`, `m`, `min(s)`, `minute(s)`, `h`, `hr(s)`,
//! `hour(s)`, `d`, `day(s)`; case-insensitive; surrounding spaces allowed. Errors say what is
//! wrong and at which byte ([`RateError`]).
//!
//! # Decisions are values
//!
//! [`Throttle::hit`] returns `Ok(Decision)` whether or not the client is throttled; `Err` means
//! the backend failed *and* the error policy chose to raise. A cost that can never fit the rate
//! is [`Outcome::Never`], which integrations answer with a 429 that says so and no
//! `Retry-After`.
//!
//! # When the rate changes
//!
//! A throttle's rate may change at any time ([`Throttle::update_rate`], a rate function whose
//! answer changes). Strategies store absolute times and costs, with the period they were
//! counted under where it matters, so every strategy reads state written under another rate:
//! no wait is longer than the new rate can require, and no state outlives what the new rate
//! needs. What carries over, per strategy: a fixed window keeps its usage when only the limit
//! changed and starts fresh under another period; a sliding window counter likewise (both
//! counts); a sliding log keeps the admissions within the shorter of the two periods; the
//! meters (token and leaky buckets, GCRA) keep the moment they drain, and forgive a level more
//! than one period beyond their new capacity. The README's "When the rate changes" has the
//! table with each strategy's longest wait.
//!
//! # Stacked limits
//!
//! A [`ThrottleGroup`] decides several throttles (burst + sustained, per user + per tenant) as
//! one: no member consumes quota unless every member admits, and the [`GroupDecision`] carries
//! every member's decision and names the binding one. The in-memory backend locks the
//! members' shards in index order; Redis runs one script in one round trip; Memcached writes
//! member by member and refunds the earlier members when a later one refuses (see
//! `traffik-memcached`, "Groups").

//!
//! # Metrics
//!
//! With the `metrics` feature (on by default), decisions are counted through the
//! [`metrics`](https://docs.rs/metrics) facade, for any exporter installed as its recorder:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `traffik_decisions_total` | counter | `throttle` (uid), `outcome`, `source` |
//! | `traffik_shadow_refusals_total` | counter | `throttle` (uid) |
//! | `traffik_backend_errors_total` | counter | `throttle` (uid), `backend`, `kind`, `action` |
//!
//! `outcome` is `allowed`, `delayed`, `throttled`, `never` or `skipped`; `source` is `backend`,
//! `fallback`, `error_policy` or `none`. Hits are counted (not checks); a group counts under
//! its own uid. A backend error is counted by backend (`memory`, `redis`, ...), `kind`
//! (`connection`, `timeout`, `pool_exhausted`, `command`, `contention`, `full`, `state`,
//! `closed`, `unsupported`) and what the error policy did (`action`: `failed_open`,
//! `failed_closed`, `fallback`, `raised`); decisions a fallback served have
//! `source="fallback"`. No label holds an identity or a key. Handles are registered once per
//! configuration and again after another recorder takes over, so a recorder installed after
//! the throttles were built sees every later hit; with no recorder a hit pays a look-up of the
//! recorder in force, a comparison and a no-op increment.

pub mod backend;
mod clock;
mod context;
mod decision;
mod error;
pub mod functions;
mod group;
pub mod headers;
pub mod identity;
pub mod key;
pub mod lease;
pub mod policy;
pub mod priority;
mod rate;
mod registry;
pub mod reply;
pub mod rules;
pub mod scope;
pub mod settle;
pub mod sources;
pub mod stat;
pub mod strategy;
#[cfg(feature = "metrics")]
mod telemetry;
mod throttle;

/// The throttle builder's states (`NoUid`, `Uid`, ...), the sealed traits that mark a complete
/// builder (see [`ThrottleBuilder`]), and what `rate(..)` and `backend(..)` accept.
///
/// # Which builders are generated
///
/// Plain option structs whose every field has a default and no value needs checking get a
/// generated builder (`typed-builder`): [`policy::BreakerConfig::builder`]. The others are
/// written by hand, each for a reason a generated builder cannot serve:
///
/// - the throttle's builder: alternative setters for one slot (`rate` or `rate_source`,
///   `backend`, `shared_backend` or `context_backend`), and a message naming the missing part
///   when `build` is called too early (`#[diagnostic::on_unimplemented]` on its sealed
///   traits), which generated builders do not give;
/// - [`Retry`], [`sources::AdaptiveBuilder`], [`sources::ScheduleBuilder`],
///   [`sources::TiersBuilder`], the priorities' builder and the Redis, Memcached and in-memory
///   backend builders: setters that check or clamp their value (a NaN, a zone name, a URL, a
///   pool size) and a `build` that can fail with a typed error;
/// - the Poem and Salvo middleware options: methods on the middleware value itself
///   (`PoemThrottle::cost`, `SalvoThrottle::per_route`), with no options struct to build.
pub mod builder {
    pub use crate::throttle::BackendChoice;
    pub use crate::throttle::builder::{
        HasBackend, HasRate, HasStrategy, HasUid, IntoRate, NoBackend, NoRate, NoStrategy, NoUid, RateSet,
        ThrottleBuilder, Uid,
    };
}

pub use backend::{Backend, InMemoryBackend, SharedBackend};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::Context;
pub use decision::{Decision, Outcome, Skip, Source};
pub use error::{BackendError, ConfigError, Error, OnError};
pub use functions::{Cost, RateSource};
pub use group::{GroupDecision, ThrottleGroup};
pub use headers::{Headers, When};
pub use identity::{ClientIp, Identifier, Identity, RequestView, TrustedProxies};
pub use key::Key;
pub use policy::{CircuitBreaker, ErrorPolicy, Failover, Retry};
pub use rate::{Rate, RateError, RateErrorKind};
pub use registry::{GLOBAL_REGISTRY, Quotas, ThrottleRegistry};
pub use rules::Rule;
pub use scope::{Scope, ScopeDecision, ScopeError};
pub use settle::{Served, Settle};
pub use stat::{Snapshot, Stat};
pub use strategy::StrategyHandle;
pub use throttle::{Hit, Settlement, Throttle, ThrottleBuilder, context_backend, with_backend};
