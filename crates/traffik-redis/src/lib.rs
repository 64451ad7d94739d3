//! # traffik-redis
//!
//! A Redis backend for [`traffik`]: every decision of a built-in strategy is **one Lua script,
//! one round trip**, atomic on the server, with the state's time to live set in the same
//! script. Works with a standalone server (one shared multiplexed connection by default, or a
//! bb8 pool) and with Redis Cluster.
//!
//! ```no_run
//! use traffik::{rate, RequestView, Throttle, strategy::Gcra};
//! use traffik_redis::RedisBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = RedisBackend::builder()
//!     .url("redis://127.0.0.1:6379/")
//!     .namespace("api")
//!     .build()?;
//! backend.ready_check().await?;
//! let throttle = Throttle::builder()
//!     .uid("quick-start")
//!     .rate(rate!("100/min"))
//!     .backend(backend)
//!     .strategy(Gcra::new())
//!     .build()?;
//! let decision = throttle.hit(&RequestView::empty()).await?;
//! # let _ = decision;
//! # Ok(()) }
//! ```
//!
//! # How it stores state
//!
//! The storage key of a decision is `<namespace>:{<key>}:<strategy name>`. Throttle keys never
//! contain braces, so the `{...}` hash tag puts every key of one decision (and every strategy of
//! one client) in one cluster slot. Built-in strategies store a short string of integers
//! (microseconds and costs) written with `SET ... PX <ttl>`: no key is ever left without a
//! time to live. Custom strategies (those whose [`StrategyHandle::builtin`] is `None`) store
//! their serialized state through a generic compare-and-swap path: one round trip to read, one
//! Lua compare-and-swap to write, retried with jitter up to
//! [`RedisBackendBuilder::cas_attempts`] times before [`BackendError::Contention`].
//!
//! A group of throttles ([`traffik::ThrottleGroup`]) is one script too, on keys of its own:
//! `<namespace>:{<group uid>}:<key>:<strategy name>`, all in the hash slot of the group's uid.
//! A deferred [`Scope`](traffik::Scope) is applied by the same script on the throttles' own
//! keys (an empty group tag), so that the scope and the throttles' hits share state; on a
//! Cluster those keys are in one slot only when the scope has one key, and a scope across slots
//! is refused by the server (a `BackendError`, nothing charged).
//!
//! # Time
//!
//! By default the scripts read the server's `TIME`, so application instances with skewed
//! clocks still agree. [`RedisBackendBuilder::use_client_clock`] passes the throttle's `now`
//! instead (deterministic tests, servers that forbid `TIME`). In that mode the key's time to
//! live still runs on the server's clock; [`RedisBackendBuilder::min_ttl`] keeps state longer
//! when the application's clock is not wall time (extra lifetime never changes a decision:
//! strategies treat state older than its time to live as absent).
//!
//! # Connections
//!
//! | source | builder method | reconnects |
//! |---|---|---|
//! | URL, one shared multiplexed connection (default, fastest) | [`url`](RedisBackendBuilder::url) | yes |
//! | URL, bb8 pool (`test_on_check_out(false)`) | [`url`](RedisBackendBuilder::url) + [`pooled`](RedisBackendBuilder::pooled) | yes |
//! | your bb8 pool | [`pool`](RedisBackendBuilder::pool) | broken connections are replaced |
//! | your `MultiplexedConnection` | [`connection`](RedisBackendBuilder::connection) | no |
//! | your `ConnectionManager` | [`connection_manager`](RedisBackendBuilder::connection_manager) | by itself |
//! | an async factory | [`factory`](RedisBackendBuilder::factory) | yes, by calling it again |
//! | Redis Cluster | [`cluster`](RedisBackendBuilder::cluster) / [`RedisBackend::cluster`] | yes |
//!
//! Prefer the default shared multiplexed connection: every task pipelines on it, with no
//! checkout to wait for. bb8 alone is not fair when more tasks than connections wait: it hands
//! a returned connection to a new caller before a woken waiter, so some waiters starve (measured
//! earlier: 256 tasks on `pooled(16)`, about 1.5% of decisions waited past a 1 s checkout while
//! the server answered every command in microseconds). So a pool this crate sizes
//! ([`pooled`](RedisBackendBuilder::pooled)) serves waiters in arrival order (a fair semaphore
//! with one permit per connection in front of bb8): `cargo run --release -p traffik-redis
//! --example pool_fairness` (256 tasks, `pooled(16)`, 20,480 decisions) measured the slowest
//! decision at 8 to 12 ms, p99 6 to 11 ms, against 340 to 490 ms and 64 to 94 ms without it
//! (p50 rose from 0.3 to 5.5 ms: everyone waits their turn). Your own pool
//! ([`pool`](RedisBackendBuilder::pool)) is used as it is. Waiting for a turn longer than
//! the connection timeout is [`BackendError::PoolExhausted`]; a connection that cannot be
//! opened in what is left of it is a [`BackendError::Timeout`] (for your own pool, whose size
//! is unknown, both are `PoolExhausted`). The whole checkout stays within the connection
//! timeout.
//!
//! # Timeouts
//!
//! Three bounds, from the outside in:
//!
//! | bound | set with | default | covers |
//! |---|---|---|---|
//! | the decision | the throttle's `timeout` | 1 s | everything one hit waits for, whatever the backend does; what the error policy sees as [`BackendError::Timeout`] |
//! | a connection | [`connection_timeout`](RedisBackendBuilder::connection_timeout) | 1 s | opening a connection (first use, after a restart) and a pool checkout |
//! | a command | [`command_timeout`](RedisBackendBuilder::command_timeout) | 1 s | waiting for one reply on a connection this crate opened |
//!
//! Keep the inner two at or below the throttle's: a reconnect and a resend after a restart then
//! fit in one decision, and a stalled server is reported by the bound that names it. Retry
//! policies add their own deadline ([`Retry::deadline`](traffik::Retry::deadline)).
//!
//! # Metrics
//!
//! With the crate feature `metrics` (on by default), through the `metrics` facade:
//! `traffik_redis_script_reloads_total` (scripts sent in full after `NOSCRIPT`, a server's first
//! call of each script included), `traffik_redis_reconnects_total` (connections opened to
//! replace a broken or silent one) and `traffik_cas_retries_total{backend="redis"}` (lost
//! compare-and-swaps of custom strategies tried again). Call latency and errors are counted by
//! the throttle (see the README, "Metrics and logs").
//!
//! # TLS
//!
//! With the crate feature `tls`, `rediss://` URLs connect through rustls and verify the server
//! against the platform's root certificates. For a private certificate authority, open the
//! connection yourself in a [`factory`](RedisBackendBuilder::factory) with
//! `redis::Client::build_with_tls(url, redis::TlsCertificates { root_cert: Some(ca_pem), .. })`.
//! A certificate that does not verify is a [`BackendError::Connection`]; without the feature a
//! `rediss://` URL is one too.
//!
//! Connections open on first use, inside the caller's Tokio runtime (which must have its timer
//! enabled); multiplexed connections live on the runtime that opened them.

mod amend;
mod builder;
mod conn;
mod decide;
mod reset;
mod scripts;
mod state;
mod telemetry;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::Value;
use traffik::backend::{Amend, Backend, BoxFuture, GroupOperation, Operation};
use traffik::strategy::{Builtin, Input, Metadata, Verdict};
use traffik::{BackendError, OnError, StrategyHandle};

pub use crate::builder::{BuildError, RedisBackendBuilder};
use crate::conn::{Call, Conn, Timeouts};
use crate::scripts::SCRIPTS;

pub use bb8;
pub use bb8_redis;
pub use redis;

/// The Lua script that runs a built-in strategy, e.g. to `SCRIPT LOAD` it ahead of time or to
/// benchmark it raw. Its arguments are described in the crate's source (`scripts.rs`):
/// `KEYS[1]` = storage key; `ARGV` = mode (`c`/`p`/`s`, or `r` to refund), now (empty =
/// server `TIME`), min TTL in ms, cost, then `limit, period_us` or, for meters, `interval_us,
/// capacity_us, queue_us, period_us` (quota with rollover: `limit, period_us, cap`; cost-aware
/// token bucket: `interval_us, capacity_us, period_us, "reference_milli max_slowdown_milli
/// window"`), and in refund mode the admission's time last. A decision replies
/// `{kind, remaining, wait_us, reset_us, 0, at}` (`at`: the server's time when it read `TIME`,
/// else 0), a refund `{changed}`.
#[derive(Clone, Copy, Debug)]
pub struct LuaScript {
    /// SHA1 digest, for `EVALSHA`.
    pub sha1: &'static str,
    /// Source, for `EVAL` / `SCRIPT LOAD`.
    pub source: &'static str,
}

/// The script of a built-in strategy (`None` for built-ins this version does not know).
pub fn lua_script(builtin: &Builtin) -> Option<LuaScript> {
    let s = &*SCRIPTS;
    let lua = match builtin {
        Builtin::FixedWindow => &s.fixed_window,
        Builtin::SlidingWindowCounter => &s.sliding_counter,
        Builtin::SlidingWindowLog => &s.sliding_log,
        Builtin::Meter(_) => &s.meter,
        Builtin::QuotaRollover(_) => &s.quota_rollover,
        Builtin::CostAware(_) => &s.cost_aware,
        _ => return None,
    };
    Some(LuaScript { sha1: &lua.hash, source: &lua.source })
}

/// The backend's name in errors and logs.
pub const KIND: &str = "redis";

/// Largest cost sent to a script (any larger cost can never fit: limits are 32-bit and meter
/// capacities at most 2^50 µs), and bound on client timestamps: every number stays exact in
/// Lua's doubles.
const MAX_COST: u64 = 1 << 53;

/// Longest time to live set on a key, in milliseconds (about 31,700 years).
const MAX_TTL_MS: u64 = 1_000_000_000_000_000;

struct Inner {
    namespace: String,
    conn: Conn,
    client_clock: bool,
    timeouts: Timeouts,
    min_ttl_ms: u64,
    cas_attempts: u32,
    on_error: Option<OnError>,
    closed: AtomicBool,
}

/// Throttle state in Redis; see the [crate docs](crate). Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flavour = match &self.inner.conn {
            Conn::Multiplexed(_) => "multiplexed",
            Conn::Manager(_) => "connection-manager",
            Conn::Pool(_) => "bb8-pool",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisBackend")
            .field("namespace", &self.inner.namespace)
            .field("connection", &flavour)
            .field("client_clock", &self.inner.client_clock)
            .finish_non_exhaustive()
    }
}

/// What a script call is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ScriptMode {
    Consume,
    Peek,
    Stat,
    /// Give back the cost of the admission charged at `charged_at_us` (below 2^53).
    Refund {
        charged_at_us: u64,
    },
}

impl ScriptMode {
    fn arg(self) -> &'static str {
        match self {
            ScriptMode::Consume => "c",
            ScriptMode::Peek => "p",
            ScriptMode::Stat => "s",
            ScriptMode::Refund { .. } => "r",
        }
    }
}

impl RedisBackend {
    /// A builder with the defaults: namespace `traffik`, server time, one shared multiplexed
    /// connection, 1 s timeouts.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    /// A backend on the server at `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Result<Self, BuildError> {
        Self::builder().url(url).build()
    }

    /// A backend on the Redis Cluster reachable through `urls`, with the defaults.
    pub fn cluster<I, S>(urls: I) -> Result<Self, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().cluster(urls).build()
    }

    /// The storage key of `key` for `strategy`: `<namespace>:{<key>}:<strategy name>`.
    pub fn storage_key(&self, key: &traffik::Key, strategy: &StrategyHandle) -> String {
        let (ns, k, s) = (&self.inner.namespace, key.as_str(), strategy.name());
        let mut out = String::with_capacity(ns.len() + k.len() + s.len() + 4);
        out.push_str(ns);
        out.push_str(":{");
        out.push_str(k);
        out.push_str("}:");
        out.push_str(s);
        out
    }

    /// Connects if needed and pings the server (same as [`Backend::ready`]).
    pub async fn ready_check(&self) -> Result<(), BackendError> {
        self.check_open()?;
        let reply = self.inner.conn.run(&Call::Plain(redis::cmd("PING")), self.inner.timeouts).await?;
        match reply {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(BackendError::command(KIND, format!("unexpected PING reply {other:?}"))),
        }
    }

    fn check_open(&self) -> Result<(), BackendError> {
        if self.inner.closed.load(Ordering::Acquire) { Err(BackendError::Closed { backend: KIND }) } else { Ok(()) }
    }

    /// The `now` argument: the client's time, or empty for the server's `TIME`.
    fn now_arg(&self, input: &Input) -> NowArg {
        if self.inner.client_clock { NowArg(Some(input.now_us)) } else { NowArg(None) }
    }

    fn ttl_ms(&self, ttl_us: u64) -> u64 {
        ttl_us.div_ceil(1000).clamp(self.inner.min_ttl_ms.max(1), MAX_TTL_MS)
    }
}

/// A script's `now` argument, written without allocating.
struct NowArg(Option<u64>);

impl redis::ToRedisArgs for NowArg {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self.0 {
            Some(now) => now.write_redis_args(out),
            None => out.write_arg(b""),
        }
    }
}

impl redis::ToSingleRedisArg for NowArg {}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(self.decide_impl(op))
    }

    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        Box::pin(self.decide_group_impl(group))
    }

    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(self.amend_impl(op, amend, tag))
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(self.stat_impl(op, None))
    }

    /// Group members are stored under their group's tag: the snapshot reads them there.
    fn stat_member<'a>(
        &'a self,
        op: Operation<'a>,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(self.stat_impl(op, Some(tag)))
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.reset_impl())
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.ready_check())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.conn.close();
        Box::pin(async { Ok(()) })
    }

    fn on_error(&self) -> Option<OnError> {
        self.inner.on_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_that_break_keys_are_refused() {
        for bad in ["", "a{b", "a}b", "a b", "a\nb"] {
            let r = RedisBackend::builder().url("redis://127.0.0.1:1/").namespace(bad).build();
            assert!(matches!(r, Err(BuildError::Namespace(_))), "{bad:?}");
        }
        assert!(matches!(RedisBackend::builder().build(), Err(BuildError::NoSource)));
    }
}
