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

mod conn;
mod scripts;
mod state;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use traffik::backend::{Backend, BoxFuture, GroupOperation, Mode, Operation};
use traffik::policy::ErrorPolicy;
use traffik::strategy::{Builtin, Input, Metadata, Verdict};
use traffik::{BackendError, StrategyHandle};

use crate::conn::{Call, Conn, ConnectFuture, Factory, LazyPool, PoolConfig, Reconnecting, Timeouts};
use crate::scripts::{Lua, SCRIPTS};

pub use bb8;
pub use bb8_redis;
pub use redis;

/// The Lua script that runs a built-in strategy, e.g. to `SCRIPT LOAD` it ahead of time or to
/// benchmark it raw. Its arguments are described in the crate's source (`scripts.rs`):
/// `KEYS[1]` = storage key; `ARGV` = mode (`c`/`p`/`s`), now (empty = server `TIME`),
/// min TTL in ms, cost, then `limit, period_us` or, for meters, `interval_us, capacity_us,
/// queue_us, period_us` (quota with rollover: `limit, period_us, cap`; cost-aware token bucket:
/// `interval_us, capacity_us, period_us, "reference_milli max_slowdown_milli window"`).
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

/// A configuration error from [`RedisBackendBuilder::build`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No connection source (URL, pool, connection, factory or cluster) was given.
    #[error(
        "no Redis connection source was configured (call url, cluster, pool, connection, connection_manager or factory)"
    )]
    NoSource,
    /// The namespace contains a character that would break keys or hash tags.
    #[error("invalid namespace {0:?}: use a non-empty string without braces, spaces or control characters")]
    Namespace(String),
    /// The client library rejected the connection information.
    #[error("invalid Redis connection information: {0}")]
    Client(#[from] redis::RedisError),
}

enum Source {
    Url(String),
    Cluster(Vec<String>),
    Pool(bb8::Pool<RedisConnectionManager>),
    Connection(MultiplexedConnection),
    Manager(ConnectionManager),
    Factory(Factory<MultiplexedConnection>),
    ClusterConnection(ClusterConnection),
}

/// Configures a [`RedisBackend`]; start with [`RedisBackend::builder`].
#[must_use]
pub struct RedisBackendBuilder {
    source: Option<Source>,
    pool: Option<PoolConfig>,
    namespace: String,
    client_clock: bool,
    timeouts: Timeouts,
    min_ttl_ms: u64,
    cas_attempts: u32,
    error_policy: Option<ErrorPolicy>,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("namespace", &self.namespace)
            .field("pooled", &self.pool)
            .field("client_clock", &self.client_clock)
            .finish_non_exhaustive()
    }
}

impl Default for RedisBackendBuilder {
    fn default() -> Self {
        RedisBackendBuilder {
            source: None,
            pool: None,
            namespace: "traffik".to_owned(),
            client_clock: false,
            timeouts: Timeouts { connect: Duration::from_secs(1), command: Duration::from_secs(1) },
            min_ttl_ms: 1,
            cas_attempts: 64,
            error_policy: None,
        }
    }
}

impl RedisBackendBuilder {
    /// Connects to the server at `url` (`redis://[user:password@]host:port/[db]`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(Source::Url(url.into()));
        self
    }

    /// Connects to a Redis Cluster through any of these nodes.
    pub fn cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source = Some(Source::Cluster(urls.into_iter().map(Into::into).collect()));
        self
    }

    /// Uses a bb8 pool of up to `max_size` connections instead of one shared multiplexed
    /// connection (only with [`url`](Self::url)). Ping on checkout is off: a broken
    /// connection is replaced after the command that found it broken; waiters are served in
    /// arrival order. Prefer the default multiplexed connection, which is faster (see the crate
    /// docs, "Connections").
    pub fn pooled(mut self, max_size: u32) -> Self {
        self.pool = Some(PoolConfig { max_size });
        self
    }

    /// Uses your bb8 pool. Turn `test_on_check_out` off for one round trip per decision; the
    /// backend replaces connections it finds broken.
    pub fn pool(mut self, pool: bb8::Pool<RedisConnectionManager>) -> Self {
        self.source = Some(Source::Pool(pool));
        self
    }

    /// Shares your multiplexed connection (it is not reopened if it breaks; prefer
    /// [`factory`](Self::factory) or [`url`](Self::url) for that).
    pub fn connection(mut self, conn: MultiplexedConnection) -> Self {
        self.source = Some(Source::Connection(conn));
        self
    }

    /// Shares your `ConnectionManager`, which reconnects by itself.
    pub fn connection_manager(mut self, manager: ConnectionManager) -> Self {
        self.source = Some(Source::Manager(manager));
        self
    }

    /// Shares your cluster connection.
    pub fn cluster_connection(mut self, conn: ClusterConnection) -> Self {
        self.source = Some(Source::ClusterConnection(conn));
        self
    }

    /// Opens the shared multiplexed connection with `factory`, on first use and again
    /// whenever it breaks.
    pub fn factory<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RedisResult<MultiplexedConnection>> + Send + 'static,
    {
        let f: Factory<MultiplexedConnection> =
            Arc::new(move || Box::pin(factory()) as ConnectFuture<MultiplexedConnection>);
        self.source = Some(Source::Factory(f));
        self
    }

    /// Prefix of every key (default `traffik`); backends with different namespaces never see
    /// each other's state, and [`Backend::reset`] deletes only this namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Uses the throttle's `now` instead of the server's `TIME` (default `false`).
    pub fn use_client_clock(mut self, yes: bool) -> Self {
        self.client_clock = yes;
        self
    }

    /// Bound on opening a connection and on a pool checkout (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// Response timeout of the connections this crate opens from a URL (shared multiplexed and
    /// cluster; default 1 s). Pooled connections (opened by bb8-redis) use the redis client's
    /// default of 500 ms, and connections you pass in keep their own. Timeouts surface as
    /// [`BackendError::Timeout`]; the throttle also applies its own.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.command = timeout;
        self
    }

    /// Keys live at least this long (default 1 ms). Useful with
    /// [`use_client_clock`](Self::use_client_clock) when the application's clock is not wall
    /// time.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(MAX_TTL_MS).clamp(1, MAX_TTL_MS);
        self
    }

    /// Compare-and-swap attempts of the generic path before [`BackendError::Contention`]
    /// (default 64).
    pub fn cas_attempts(mut self, attempts: u32) -> Self {
        self.cas_attempts = attempts.max(1);
        self
    }

    /// The error policy for throttles on this backend that set none themselves.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = Some(policy);
        self
    }

    /// Builds the backend. Does no I/O: connections open on first use (see
    /// [`RedisBackend::ready_check`]).
    pub fn build(self) -> Result<RedisBackend, BuildError> {
        let ns = &self.namespace;
        if ns.is_empty() || ns.chars().any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control()) {
            return Err(BuildError::Namespace(ns.clone()));
        }
        let t = self.timeouts;
        let conn = match self.source.ok_or(BuildError::NoSource)? {
            Source::Url(url) => match self.pool {
                Some(cfg) => Conn::Pool(LazyPool::lazy(RedisConnectionManager::new(url)?, cfg)),
                None => {
                    let client = redis::Client::open(url)?;
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(t.connect))
                        .set_response_timeout(Some(t.command));
                    let f: Factory<MultiplexedConnection> = Arc::new(move || {
                        let client = client.clone();
                        let config = config.clone();
                        Box::pin(async move { client.get_multiplexed_async_connection_with_config(&config).await })
                    });
                    Conn::Multiplexed(Reconnecting::new(f))
                }
            },
            Source::Cluster(urls) => {
                let client = redis::cluster::ClusterClient::builder(urls)
                    .connection_timeout(t.connect)
                    .response_timeout(t.command)
                    .retries(2)
                    .build()?;
                let f: Factory<ClusterConnection> = Arc::new(move || {
                    let client = client.clone();
                    Box::pin(async move { client.get_async_connection().await })
                });
                Conn::Cluster(Reconnecting::new(f))
            }
            Source::Pool(pool) => Conn::Pool(LazyPool::ready(pool)),
            Source::Connection(c) => {
                let again = c.clone();
                let f: Factory<MultiplexedConnection> = Arc::new(move || {
                    let c = again.clone();
                    Box::pin(async move { Ok(c) })
                });
                Conn::Multiplexed(Reconnecting::with_connection(f, c))
            }
            Source::Manager(m) => Conn::Manager(m),
            Source::Factory(f) => Conn::Multiplexed(Reconnecting::new(f)),
            Source::ClusterConnection(c) => {
                let again = c.clone();
                let f: Factory<ClusterConnection> = Arc::new(move || {
                    let c = again.clone();
                    Box::pin(async move { Ok(c) })
                });
                Conn::Cluster(Reconnecting::with_connection(f, c))
            }
        };
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                namespace: self.namespace,
                conn,
                client_clock: self.client_clock,
                timeouts: t,
                min_ttl_ms: self.min_ttl_ms,
                cas_attempts: self.cas_attempts,
                error_policy: self.error_policy,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

struct Inner {
    namespace: String,
    conn: Conn,
    client_clock: bool,
    timeouts: Timeouts,
    min_ttl_ms: u64,
    cas_attempts: u32,
    error_policy: Option<ErrorPolicy>,
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
}

impl ScriptMode {
    fn arg(self) -> &'static str {
        match self {
            ScriptMode::Consume => "c",
            ScriptMode::Peek => "p",
            ScriptMode::Stat => "s",
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

    /// One strategy script: returns the raw reply items.
    async fn run_builtin(
        &self,
        builtin: Builtin,
        op: &Operation<'_>,
        mode: ScriptMode,
    ) -> Result<Vec<Value>, BackendError> {
        let s = &*SCRIPTS;
        let input = &op.input;
        let key = self.storage_key(op.key, op.strategy);
        let cost = input.cost.min(MAX_COST);
        let lua: &'static Lua = match builtin {
            Builtin::FixedWindow => &s.fixed_window,
            Builtin::SlidingWindowCounter => &s.sliding_counter,
            Builtin::SlidingWindowLog => &s.sliding_log,
            Builtin::Meter(_) => &s.meter,
            Builtin::QuotaRollover(_) => &s.quota_rollover,
            Builtin::CostAware(_) => &s.cost_aware,
            _ => {
                return Err(BackendError::command(KIND, "unknown built-in strategy (no Lua script)"));
            }
        };
        if self.inner.client_clock && input.now_us >= MAX_COST {
            // Lua numbers are doubles: later timestamps (after the year 2255) are not exact.
            return Err(BackendError::command(KIND, "client timestamp beyond 2^53 microseconds"));
        }
        let mut call = Call::script(lua, &key);
        call.arg(mode.arg()).arg(self.now_arg(input)).arg(self.inner.min_ttl_ms).arg(cost);
        match builtin {
            Builtin::Meter(spec) => {
                let p = spec.params(&input.rate);
                call.arg(p.interval_us).arg(p.capacity_us).arg(p.queue_us).arg(p.period_us);
            }
            Builtin::QuotaRollover(spec) => {
                let limit = input.rate.limit();
                call.arg(limit).arg(input.rate.period_us()).arg(spec.cap(limit));
            }
            Builtin::CostAware(spec) => {
                let p = spec.plain().params(&input.rate);
                call.arg(p.interval_us).arg(p.capacity_us).arg(p.period_us).arg(state::cost_aware_arg(&spec));
            }
            _ => {
                call.arg(input.rate.limit()).arg(input.rate.period_us());
            }
        }
        match self.inner.conn.run(&call, self.inner.timeouts).await? {
            Value::Array(items) => Ok(items),
            other => Err(BackendError::command(KIND, format!("unexpected script reply {other:?}"))),
        }
    }

    /// Generic path, read: `(now, state)`.
    async fn read(&self, key: &str, input: &Input) -> Result<(u64, Option<Vec<u8>>), BackendError> {
        let mut call = Call::script(&SCRIPTS.read, key);
        call.arg(self.now_arg(input));
        let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
        let items = state::items(&reply)?;
        let [now, value, ..] = items else {
            return Err(BackendError::command(KIND, "short read reply"));
        };
        Ok((state::int(now)?, state::bytes(value)?))
    }

    fn ttl_ms(&self, ttl_us: u64) -> u64 {
        ttl_us.div_ceil(1000).clamp(self.inner.min_ttl_ms.max(1), MAX_TTL_MS)
    }

    /// Generic compare-and-swap path for custom strategies.
    async fn decide_generic(&self, op: &Operation<'_>) -> Result<Verdict, BackendError> {
        let key = self.storage_key(op.key, op.strategy);
        let (mut now, mut current) = self.read(&key, &op.input).await?;
        let mut attempt = 0u32;
        loop {
            let input = Input { now_us: now, ..op.input };
            let step = op.strategy.decide_bytes(current.as_deref(), &input)?;
            let (bytes, ttl_us) = match (op.mode, step.write) {
                (Mode::Consume, Some(w)) => w,
                _ => return Ok(step.verdict),
            };
            let mut call = Call::script(&SCRIPTS.cas, &key);
            call.arg(self.now_arg(&op.input));
            match &current {
                Some(c) => call.arg("1").arg(c.as_slice()),
                None => call.arg("0").arg(""),
            };
            call.arg(bytes).arg(self.ttl_ms(ttl_us));
            let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
            let items = state::items(&reply)?;
            match items {
                [ok] if state::int(ok)? == 1 => return Ok(step.verdict),
                [_, n, cur, ..] => {
                    now = state::int(n)?;
                    current = state::bytes(cur)?;
                }
                [_, n] => {
                    // A nil at the end of a Lua table is dropped: the key is absent.
                    now = state::int(n)?;
                    current = None;
                }
                _ => return Err(BackendError::command(KIND, "bad compare-and-swap reply")),
            }
            attempt += 1;
            if attempt >= self.inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts: attempt });
            }
            backoff(attempt).await;
        }
    }

    async fn decide_impl(&self, op: Operation<'_>) -> Result<Verdict, BackendError> {
        self.check_open()?;
        match op.strategy.builtin() {
            Some(b) => {
                let mode = match op.mode {
                    Mode::Consume => ScriptMode::Consume,
                    Mode::Peek => ScriptMode::Peek,
                };
                let items = self.run_builtin(b, &op, mode).await?;
                state::verdict(&items)
            }
            None => self.decide_generic(&op).await,
        }
    }

    /// The storage key of a group member: `<namespace>:{<tag>}:<key>:<strategy name>`, so that
    /// every key of a group shares its hash slot.
    pub fn group_storage_key(&self, tag: &str, key: &traffik::Key, strategy: &StrategyHandle) -> String {
        format!("{}:{{{tag}}}:{}:{}", self.inner.namespace, key.as_str(), strategy.name())
    }

    /// A group: one script, one round trip (see `scripts.rs`, the group script).
    async fn decide_group_impl(&self, group: GroupOperation<'_>) -> Result<Vec<Verdict>, BackendError> {
        self.check_open()?;
        let Some(first) = group.ops.first() else {
            return Ok(Vec::new());
        };
        if self.inner.client_clock && first.input.now_us >= MAX_COST {
            return Err(BackendError::command(KIND, "client timestamp beyond 2^53 microseconds"));
        }
        let keys: Vec<String> =
            group.ops.iter().map(|op| self.group_storage_key(group.tag, op.key, op.strategy)).collect();
        let mut call = Call::script_keys(&SCRIPTS.group, &keys);
        let mode = if first.mode == Mode::Consume { ScriptMode::Consume } else { ScriptMode::Peek };
        call.arg(mode.arg()).arg(self.now_arg(&first.input)).arg(self.inner.min_ttl_ms);
        for op in group.ops {
            let input = &op.input;
            let cost = input.cost.min(MAX_COST);
            match op.strategy.builtin() {
                Some(Builtin::Meter(spec)) => {
                    let p = spec.params(&input.rate);
                    call.arg("m").arg(cost).arg(p.interval_us).arg(p.capacity_us).arg(p.queue_us).arg(p.period_us);
                }
                Some(Builtin::QuotaRollover(spec)) => {
                    let (limit, w) = (input.rate.limit(), input.rate.period_us());
                    call.arg("qr").arg(cost).arg(limit).arg(w).arg(spec.cap(limit)).arg(0);
                }
                Some(Builtin::CostAware(spec)) => {
                    let p = spec.plain().params(&input.rate);
                    call.arg("ca").arg(cost).arg(p.interval_us).arg(p.capacity_us).arg(p.period_us);
                    call.arg(state::cost_aware_arg(&spec));
                }
                Some(b) => {
                    let which = match b {
                        Builtin::FixedWindow => "fw",
                        Builtin::SlidingWindowCounter => "swc",
                        Builtin::SlidingWindowLog => "swl",
                        _ => return Err(BackendError::command(KIND, "unknown built-in strategy (no Lua script)")),
                    };
                    call.arg(which).arg(cost).arg(input.rate.limit()).arg(input.rate.period_us()).arg(0).arg(0);
                }
                None => {
                    return Err(BackendError::Unsupported {
                        backend: KIND,
                        what: "groups with custom strategies (every member must be a built-in strategy)",
                    });
                }
            }
        }
        let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
        let items = state::items(&reply)?;
        if items.len() != 4 * group.ops.len() {
            return Err(BackendError::command(KIND, format!("a group reply of {} fields", items.len())));
        }
        items.chunks_exact(4).map(state::verdict).collect()
    }

    async fn stat_impl(&self, op: Operation<'_>) -> Result<(Verdict, Metadata), BackendError> {
        self.check_open()?;
        match op.strategy.builtin() {
            Some(b) => {
                let items = self.run_builtin(b, &op, ScriptMode::Stat).await?;
                let verdict = state::verdict(&items)?;
                let now = match items.get(4) {
                    Some(v) => state::int(v)?,
                    None => return Err(BackendError::command(KIND, "short stat reply")),
                };
                let raw = match items.get(5) {
                    Some(v) => state::bytes(v)?,
                    None => None,
                };
                let json = state::state_json(b, raw.as_deref());
                let input = Input { now_us: now, ..op.input };
                let meta = op.strategy.metadata_bytes(json.as_deref(), &input)?;
                Ok((verdict, meta))
            }
            None => {
                let key = self.storage_key(op.key, op.strategy);
                let (now, current) = self.read(&key, &op.input).await?;
                let input = Input { now_us: now, ..op.input };
                let step = op.strategy.decide_bytes(current.as_deref(), &input)?;
                let meta = op.strategy.metadata_bytes(current.as_deref(), &input)?;
                Ok((step.verdict, meta))
            }
        }
    }

    /// The masters of the cluster as `(host, port)`, or `None` for a standalone server.
    async fn masters(&self) -> Result<Option<Vec<(String, u16)>>, BackendError> {
        if !self.inner.conn.is_cluster() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let reply = self.inner.conn.run(&Call::Plain(cmd), self.inner.timeouts).await?;
        let text = match &reply {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            Value::SimpleString(s) => s.clone(),
            other => {
                return Err(BackendError::command(KIND, format!("unexpected CLUSTER NODES reply {other:?}")));
            }
        };
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let addr = addr.split(['@', ',']).next().unwrap_or_default();
            if let Some((host, port)) = addr.rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                masters.push((host.to_owned(), port));
            }
        }
        Ok(Some(masters))
    }

    async fn reset_node(&self, node: Option<(&str, u16)>) -> Result<(), BackendError> {
        let pattern = format!("{}:*", glob_escape(&self.inner.namespace));
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let reply = self.on_node(scan, node).await?;
            let items = state::items(&reply)?;
            let [next, keys, ..] = items else {
                return Err(BackendError::command(KIND, "short SCAN reply"));
            };
            cursor = state::int(next)?;
            let keys = state::items(keys)?.iter().map(state::bytes).collect::<Result<Vec<_>, _>>()?;
            let keys: Vec<Vec<u8>> = keys.into_iter().flatten().collect();
            if !keys.is_empty() {
                if node.is_some() {
                    // Keys in a cluster sit in many slots; unlink one by one.
                    for k in keys {
                        let mut unlink = redis::cmd("UNLINK");
                        unlink.arg(k);
                        self.on_node(unlink, node).await?;
                    }
                } else {
                    let mut unlink = redis::cmd("UNLINK");
                    for k in keys {
                        unlink.arg(k);
                    }
                    self.on_node(unlink, None).await?;
                }
            }
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    async fn on_node(&self, cmd: redis::Cmd, node: Option<(&str, u16)>) -> Result<Value, BackendError> {
        match node {
            Some((host, port)) => self.inner.conn.run_on_node(cmd, host, port, self.inner.timeouts).await,
            None => self.inner.conn.run(&Call::Plain(cmd), self.inner.timeouts).await,
        }
    }

    async fn reset_impl(&self) -> Result<(), BackendError> {
        self.check_open()?;
        match self.masters().await? {
            None => self.reset_node(None).await,
            Some(masters) => {
                for (host, port) in &masters {
                    self.reset_node(Some((host, *port))).await?;
                }
                Ok(())
            }
        }
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

/// Escapes glob characters for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Waits a little before retrying a lost compare-and-swap: a yield for the first retries, then
/// a random sleep of up to 2^attempt ms (at most 16 ms).
async fn backoff(attempt: u32) {
    if attempt <= 2 {
        tokio::task::yield_now().await;
        return;
    }
    let cap_us = 1000u64 << attempt.min(4);
    let us = fastrand::u64(0..=cap_us);
    tokio::time::sleep(Duration::from_micros(us)).await;
}

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

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(self.stat_impl(op))
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

    fn error_policy(&self) -> Option<ErrorPolicy> {
        self.inner.error_policy.clone()
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

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
