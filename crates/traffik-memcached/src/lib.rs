//! # traffik-memcached
//!
//! A Memcached backend for [`traffik`]. Every strategy, built-in or your own, decides
//! atomically through compare-and-swap: read the state with its CAS token, run
//! [`StrategyHandle::decide_bytes`], write the new state with `cas` (or `add` when there was
//! none); a lost race is retried with jittered exponential backoff, up to
//! [`MemcachedBackendBuilder::cas_attempts`] times, then reported as
//! [`BackendError::Contention`]. No distributed locks; a denied hit writes nothing, and
//! [`Mode::Peek`] never writes.
//!
//! # Contention
//!
//! Every first attempt goes straight to the server. A task that lost a race retries in a
//! first-come, first-served queue of its own process for that key (a process-local async lock,
//! one of [`RETRY_QUEUES`] picked by the key's hash), so each process has at most one retry per
//! key in flight: the tasks of one process no longer race each other, only the other
//! processes. Without it, with 4 processes x 64 tasks admitting on one key, the slowest
//! decision took 0.59 to 1.42 s (p99 0.52 to 1.35 s) and up to 159 of 2,048 decisions ran out
//! of compare-and-swap attempts; see the README's "Measured" table for the figures with it
//! (`cargo bench -p traffik-memcached --bench contention`).
//!
//! ```no_run
//! use traffik::{rate, RequestView, Throttle, strategy::Gcra};
//! use traffik_memcached::MemcachedBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = MemcachedBackend::builder()
//!     .url("memcache://127.0.0.1:11211")
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
//! # Metrics
//!
//! With the crate feature `metrics` (on by default), through the `metrics` facade:
//! `traffik_cas_retries_total{backend="memcached"}`, every lost compare-and-swap tried again
//! (decisions, group members and refunds). Call latency and errors are counted by the throttle
//! (see the README, "Metrics and logs").
//!
//! # Round trips
//!
//! | call | round trips (no contention) |
//! |---|---|
//! | a hit that changes state (admit, delay) | 2: one pipelined read (version + state), one `cas`/`add` |
//! | a hit that is denied, a peek, a stat | 1 |
//! | first call per server of a backend | +1 (reads the namespace version) |
//!
//! # Keys
//!
//! The storage key is `<namespace>:v<version>:<key>:<strategy name>`. Throttle keys are already
//! percent-encoded by the core; strategy names outside `[A-Za-z0-9._-]` are replaced by a
//! digest; a key that could exceed memcached's 250 bytes or contain a byte it refuses is
//! replaced by a readable prefix, `#` and a SHA-256 digest. So any identity (10 kB, spaces,
//! newlines, non-UTF-8 bytes) gives a valid key, and two different keys never share state.
//!
//! # Reset: namespace versioning
//!
//! Memcached cannot list or delete keys by prefix, so [`Backend::reset`] works by
//! **namespace versioning**: each server holds a version key `<namespace>:version@<server>`
//! (a random 64-bit number, no expiry), and every state key embeds the version of the server
//! it lives on. `reset` writes a fresh random version on every server; state under older
//! versions is orphaned and expires with its time to live. The version is read on **every**
//! call, pipelined with the state read on the same connection (state keys are routed by the
//! part after the version, and a server's version key is routed to that server), so a reset by
//! any process takes effect everywhere at once and costs no extra round trip. Tracking keys
//! instead would need a growing key list in memcached and an extra write per new key.
//! Each server's version key is a few bytes read by every decision on that server, served
//! from memory. If a version key is evicted (it is read on every call, so it stays at the head of the LRU)
//! or the server restarts, a new random version is created: that is a reset of that server's
//! keys, which an eviction of the state itself would be anyway.
//!
//! # Servers
//!
//! Keys are spread over the configured servers by rendezvous hashing with a fixed hash, so
//! every process that lists the same servers (spelled the same way) routes every key the same
//! way, whatever the build. One key lives on one server, so limits stay exact per key. A
//! server that is down fails the decisions of its own keys only.
//!
//! # No native fast path
//!
//! A fixed window could count with `incr`, but an `incr` that overshoots the limit has
//! consumed quota for a denied hit, and undoing it with `decr` is a second, non-atomic step
//! that other clients can observe. Every strategy therefore takes the compare-and-swap path:
//! a denied hit costs one round trip and writes nothing.
//!
//! # Groups
//!
//! Memcached has no multi-key transaction, so a group of throttles
//! ([`Backend::decide_group`]) is decided in two steps. First every member's state is read and
//! decided; if any member refuses, nothing is written (the common refusal costs reads only).
//! Then the members are written one by one with compare-and-swap. What is atomic: each member's
//! own write (its `cas`). What is compensated: a member whose state changed since it was read
//! is decided again; if it now refuses, the members already written are given their cost back
//! ([`Strategy::refund`](traffik::strategy::Strategy::refund), again by compare-and-swap), and
//! the group is refused. So a group never admits more than any member allows, but between a
//! write and its refund other clients can see a member charged for a hit the group then
//! refused (they may be refused in that moment: never the other way). Built-in strategies
//! refund exactly; a custom strategy without [`refund`](traffik::strategy::Strategy::refund)
//! stays charged. Tested with 64 tasks and with 4 processes x 64 tasks on one group: exactly
//! the tightest member's capacity is admitted, and every refusal is refunded
//! ([`MemcachedBackend::group_refunds`] counts them).
//!
//! A deferred [`Scope`](traffik::Scope) is applied the same way, on the throttles' own keys
//! (the group's tag is empty: keys are stored as single decisions store them, so the scope
//! and the throttles' hits share state).
//!
//! # Time
//!
//! Memcached has no server time a client can use, so decisions use the throttle's `now`
//! (`Operation.input.now_us`): the application clock. Instances whose clocks disagree by up
//! to `δ` share state safely: strategies treat state written "in the future" (by a client
//! ahead of them) conservatively, as still in force; a client whose clock runs ahead opens
//! new windows or refills early by at most `δ`. So each strategy's bound holds with its time
//! intervals widened by the skew (a token bucket admits at most `B + r·(t + δ)` in any `t`).
//! Keep application clocks synchronized (NTP) to well under the shortest period you enforce.
//!
//! Expiry runs on the server's clock in whole seconds: the strategy's time to live is rounded
//! up, padded by [`CLOCK_SLACK_SECS`] and sent relative up to 30 days, as an absolute unix
//! time beyond (see [`memcached_exptime`]). Extra lifetime never changes a decision.
//!
//! # Errors
//!
//! | failure | error |
//! |---|---|
//! | no server listening, connection refused or reset, no connection within the connect timeout | [`BackendError::Connection`] |
//! | no answer within the command timeout | [`BackendError::Timeout`] |
//! | compare-and-swap lost `cas_attempts` times | [`BackendError::Contention`] |
//! | an error reply (e.g. a state above memcached's item size limit), a corrupt version key | [`BackendError::Command`] |
//! | stored state that does not decode | [`BackendError::State`] |
//! | after [`Backend::close`] | [`BackendError::Closed`] |

mod amend;
mod builder;
mod cas;
mod keys;
mod telemetry;
mod ttl;

pub use crate::builder::BuildError;
pub use crate::builder::MemcachedBackendBuilder;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memcache::exp::AsyncMemcache;
use traffik::backend::{Amend, Backend, BoxFuture, GroupOperation, Mode, Operation};
use traffik::strategy::{Metadata, Verdict};
use traffik::{BackendError, OnError, StrategyHandle};

pub use memcache;
pub use ttl::{CLOCK_SLACK_SECS, MAX_RELATIVE_SECS, memcached_exptime};

/// The backend's name in errors and logs.
pub const KIND: &str = "memcached";

/// Longest backoff between two compare-and-swap attempts, in microseconds.
const MAX_BACKOFF_US: u64 = 5_000;

/// Shortest backoff cap (first retry), in microseconds.
const BASE_BACKOFF_US: u64 = 50;

/// Process-local retry queues (see the crate docs, "Contention"); keys share them by hash.
pub const RETRY_QUEUES: usize = 256;

struct Inner {
    namespace: String,
    servers: Vec<String>,
    /// The version key of each server.
    version_keys: Vec<String>,
    /// The last version seen on each server; 0 = not read yet.
    versions: Vec<AtomicU64>,
    router: keys::NamespaceRouter,
    pool_size: usize,
    max_connections: Option<usize>,
    connect_timeout: Duration,
    command_timeout: Duration,
    cas_attempts: u32,
    min_ttl_secs: u64,
    on_error: Option<OnError>,
    client: Mutex<Option<AsyncMemcache>>,
    connecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Group members refunded because another member refused after they were written.
    refunds: AtomicU64,
    /// Where tasks that lost a compare-and-swap race wait their turn to retry.
    retry_queues: Box<[tokio::sync::Mutex<()>]>,
}

/// Throttle state in memcached; see the [crate docs](crate). Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct MemcachedBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("servers", &self.inner.servers)
            .field("namespace", &self.inner.namespace)
            .field("cas_attempts", &self.inner.cas_attempts)
            .finish_non_exhaustive()
    }
}

fn wall_clock_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn new_version() -> u64 {
    fastrand::u64(1..)
}

fn parse_version(bytes: &[u8]) -> Result<u64, BackendError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&v| v != 0)
        .ok_or_else(|| BackendError::command(KIND, "the namespace version key holds something other than a version"))
}

impl MemcachedBackend {
    /// A builder with the defaults: namespace `traffik`, 16 idle connections per server, 1 s
    /// timeouts, 64 compare-and-swap attempts.
    pub fn builder() -> MemcachedBackendBuilder {
        MemcachedBackendBuilder::default()
    }

    /// A backend on one server (`host:port`) with the defaults.
    pub fn new(server: impl Into<String>) -> Result<Self, BuildError> {
        Self::builder().server(server).build()
    }

    /// The configured servers, deduplicated, in configuration order.
    pub fn servers(&self) -> &[String] {
        &self.inner.servers
    }

    /// The server (as configured) that stores the state of `key` for `strategy`.
    pub fn server_for(&self, key: &traffik::Key, strategy: &StrategyHandle) -> &str {
        let tail = keys::key_tail(&self.inner.namespace, key.as_str(), strategy.name());
        let i = self.inner.router.index_of_tail(tail.as_bytes());
        self.inner.servers.get(i).map_or("", String::as_str)
    }

    /// The key under which the state of `key` for `strategy` lives now (it embeds the
    /// server's current namespace version, so it changes with every reset). For debugging
    /// and tests; reads the version from the server.
    pub async fn current_storage_key(
        &self,
        key: &traffik::Key,
        strategy: &StrategyHandle,
    ) -> Result<String, BackendError> {
        let client = self.client().await?;
        let tail = keys::key_tail(&self.inner.namespace, key.as_str(), strategy.name());
        let server = self.inner.router.index_of_tail(tail.as_bytes());
        let version = self.refresh_version(&client, server).await?;
        Ok(keys::state_key(&self.inner.namespace, version, &tail))
    }

    /// Connects if needed and checks that every server answers (same as [`Backend::ready`]).
    pub async fn ready_check(&self) -> Result<(), BackendError> {
        let client = self.client().await?;
        let started = Instant::now();
        client.meta().noop().await.map_err(|e| self.map_err(e, started))
    }

    async fn client(&self) -> Result<AsyncMemcache, BackendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: KIND });
        }
        if let Some(c) = self.cached_client() {
            return Ok(c);
        }
        let _guard = inner.connecting.lock().await;
        if let Some(c) = self.cached_client() {
            return Ok(c);
        }
        let mut builder = AsyncMemcache::builder()
            .timeout(inner.command_timeout)
            .connect_timeout(inner.connect_timeout)
            .max_idle(inner.pool_size)
            .router(keys::NamespaceRouter::new(&inner.namespace, &inner.servers));
        if let Some(max) = inner.max_connections {
            builder = builder.max_connections(max);
        }
        // Resolving names is the only I/O here; connections are dialed on first use.
        let connect = builder.connect_async(inner.servers.iter().cloned());
        let client = match tokio::time::timeout(inner.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(BackendError::connection(KIND, e)),
            Err(_) => {
                return Err(BackendError::Connection {
                    backend: KIND,
                    message: format!("could not resolve the servers within {:?}", inner.connect_timeout),
                    source: None,
                });
            }
        };
        if inner.closed.load(Ordering::Acquire) {
            return Err(BackendError::Closed { backend: KIND });
        }
        let mut slot = inner.client.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(client.clone());
        Ok(client)
    }

    fn cached_client(&self) -> Option<AsyncMemcache> {
        self.inner.client.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Maps a client error; `started` tells a connect timeout (before the exchange deadline
    /// could pass) from a slow answer.
    fn map_err(&self, e: memcache::exp::Error, started: Instant) -> BackendError {
        use memcache::exp::Error as E;
        let timed_out = |e: &E| match e {
            E::Timeout { .. } => true,
            E::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        };
        match e {
            E::Ambiguous { ref source, .. } if timed_out(source) => {
                BackendError::Timeout { backend: KIND, after: self.inner.command_timeout }
            }
            ref t if timed_out(t) => {
                if started.elapsed() < self.inner.command_timeout {
                    BackendError::Connection {
                        backend: KIND,
                        message: format!("no connection within {:?}: {e}", self.inner.connect_timeout),
                        source: Some(Box::new(e)),
                    }
                } else {
                    BackendError::Timeout { backend: KIND, after: self.inner.command_timeout }
                }
            }
            E::Io(_) | E::Ambiguous { .. } => BackendError::connection(KIND, e),
            other => BackendError::Command { backend: KIND, message: other.to_string(), source: Some(Box::new(other)) },
        }
    }

    /// The namespace version of server `i`, reading (and creating) it when not known yet.
    async fn version(&self, client: &AsyncMemcache, i: usize) -> Result<u64, BackendError> {
        let known = self.inner.versions[i].load(Ordering::Acquire);
        if known != 0 {
            return Ok(known);
        }
        self.refresh_version(client, i).await
    }

    /// Reads server `i`'s version, creating a random one if it has none.
    async fn refresh_version(&self, client: &AsyncMemcache, i: usize) -> Result<u64, BackendError> {
        let key = &self.inner.version_keys[i];
        for _ in 0..3 {
            let started = Instant::now();
            let read = client.meta().get(key).send().await.map_err(|e| self.map_err(e, started))?;
            let version = match read.value {
                Some(v) if read.hit() => parse_version(&v)?,
                _ => {
                    let fresh = new_version();
                    let started = Instant::now();
                    let added = client
                        .meta()
                        .set(key, fresh.to_string())
                        .add()
                        .ttl_raw(0)
                        .send()
                        .await
                        .map_err(|e| self.map_err(e, started))?;
                    if !added.applied() {
                        // Someone else created it first: read theirs.
                        continue;
                    }
                    fresh
                }
            };
            self.inner.versions[i].store(version, Ordering::Release);
            return Ok(version);
        }
        Err(BackendError::command(KIND, "the namespace version key keeps disappearing"))
    }
}

impl Backend for MemcachedBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(async move {
            let write = op.mode == Mode::Consume;
            self.run(&op, write).await.map(|o| o.verdict)
        })
    }

    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        Box::pin(self.run_group(group.ops))
    }

    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        _tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.amend_impl(&op, amend).await })
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(async move {
            let outcome = self.run(&op, false).await?;
            let metadata = op.strategy.metadata_bytes(outcome.state.as_deref(), &op.input)?;
            Ok((outcome.verdict, metadata))
        })
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut first_error = None;
            for (i, key) in self.inner.version_keys.iter().enumerate() {
                let version = new_version();
                let started = Instant::now();
                let result = client.meta().set(key, version.to_string()).ttl_raw(0).send().await;
                match result {
                    Ok(r) if r.applied() => self.inner.versions[i].store(version, Ordering::Release),
                    Ok(r) => {
                        first_error.get_or_insert(BackendError::command(
                            KIND,
                            format!("writing the namespace version was refused ({:?})", r.status),
                        ));
                    }
                    Err(e) => {
                        // Unknown now: read again on next use.
                        self.inner.versions[i].store(0, Ordering::Release);
                        first_error.get_or_insert(self.map_err(e, started));
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.ready_check())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.inner.closed.store(true, Ordering::Release);
            let client = self.inner.client.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(client);
            Ok(())
        })
    }

    fn on_error(&self) -> Option<OnError> {
        self.inner.on_error
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(parse_version(b"42").unwrap(), 42);
        assert!(parse_version(b"0").is_err());
        assert!(parse_version(b"x").is_err());
    }
}
