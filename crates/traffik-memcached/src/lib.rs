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

mod keys;
mod ttl;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memcache::exp::{AsyncMemcache, Get, Meta};
use traffik::OnError;
use traffik::backend::{Backend, BoxFuture, GroupOperation, Mode, Operation};
use traffik::strategy::{Metadata, Verdict};
use traffik::{BackendError, StrategyHandle};

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

/// A configuration error from [`MemcachedBackendBuilder::build`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No server was given.
    #[error("no memcached server was configured (call server, servers or url)")]
    NoServers,
    /// The namespace would break keys.
    #[error("invalid namespace {0:?}: use 1 to 64 characters from [A-Za-z0-9._-]")]
    Namespace(String),
    /// A server address is not `host:port`.
    #[error("invalid memcached server address {0:?}: expected host:port")]
    Server(String),
    /// A URL is not `memcache://host:port[,host:port...]`.
    #[error("invalid memcached URL {0:?}: expected memcache://host:port[,host:port...]")]
    Url(String),
}

/// Configures a [`MemcachedBackend`]; start with [`MemcachedBackend::builder`].
#[must_use]
#[derive(Clone)]
pub struct MemcachedBackendBuilder {
    servers: Vec<String>,
    bad_input: Option<BuildError>,
    namespace: String,
    pool_size: usize,
    max_connections: Option<usize>,
    connect_timeout: Duration,
    command_timeout: Duration,
    cas_attempts: u32,
    min_ttl_secs: u64,
    on_error: Option<OnError>,
}

impl fmt::Debug for MemcachedBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedBackendBuilder")
            .field("servers", &self.servers)
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("cas_attempts", &self.cas_attempts)
            .finish_non_exhaustive()
    }
}

impl Default for MemcachedBackendBuilder {
    fn default() -> Self {
        MemcachedBackendBuilder {
            servers: Vec::new(),
            bad_input: None,
            namespace: "traffik".to_owned(),
            pool_size: 16,
            max_connections: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            cas_attempts: 64,
            min_ttl_secs: 0,
            on_error: None,
        }
    }
}

/// Checks `host:port` (IPv6 hosts in brackets).
fn valid_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok()
        && !addr.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
}

/// Parses `memcache://host:port[,host:port...][/]` (also `memcached://`).
fn parse_url(url: &str) -> Result<Vec<String>, BuildError> {
    let rest = url
        .strip_prefix("memcache://")
        .or_else(|| url.strip_prefix("memcached://"))
        .ok_or_else(|| BuildError::Url(url.to_owned()))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let servers: Vec<String> = rest.split(',').map(str::to_owned).collect();
    if servers.iter().all(|s| valid_address(s)) { Ok(servers) } else { Err(BuildError::Url(url.to_owned())) }
}

impl MemcachedBackendBuilder {
    /// Adds a server, `host:port`.
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        if !valid_address(&addr) && self.bad_input.is_none() {
            self.bad_input = Some(BuildError::Server(addr.clone()));
        }
        self.servers.push(addr);
        self
    }

    /// Adds several servers, `host:port` each.
    pub fn servers<I, S>(self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        addrs.into_iter().fold(self, |b, a| b.server(a))
    }

    /// Adds the servers of a `memcache://host:port[,host:port...]` URL.
    pub fn url(mut self, url: impl AsRef<str>) -> Self {
        match parse_url(url.as_ref()) {
            Ok(servers) => self.servers.extend(servers),
            Err(e) => {
                if self.bad_input.is_none() {
                    self.bad_input = Some(e);
                }
            }
        }
        self
    }

    /// Prefix of every key (default `traffik`; 1 to 64 characters from `[A-Za-z0-9._-]`).
    /// Backends with different namespaces never see each other's state, and
    /// [`Backend::reset`] resets only this namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Idle connections kept per server (default 16). More concurrent calls open extra
    /// connections, closed when returned.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Cap on connections in use per server (default none). At the cap a call waits up to the
    /// connect timeout for a connection.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.max(1));
        self
    }

    /// Bound on opening a connection (default 1 s). Past it the call fails with
    /// [`BackendError::Connection`]. The client library reports both kinds of expiry alike,
    /// so the backend tells them apart by how long the call took: keep this below
    /// [`command_timeout`](Self::command_timeout), or a connect timeout is reported as
    /// [`BackendError::Timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one exchange with a server (default 1 s). Past it the call fails with
    /// [`BackendError::Timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Compare-and-swap attempts per decision before [`BackendError::Contention`] (default 64).
    pub fn cas_attempts(mut self, attempts: u32) -> Self {
        self.cas_attempts = attempts.max(1);
        self
    }

    /// State lives at least this long in memcached (rounded up to seconds; default 0). Useful
    /// when the application clock is not wall time.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        self
    }

    /// What throttles on this backend do when it fails, if they set no error policy of their
    /// own (default: fail closed). Richer policies (fallback, breaker, retry) belong to the
    /// throttle: [`ThrottleBuilder::on_error`](traffik::ThrottleBuilder::on_error).
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = Some(on_error);
        self
    }

    /// Builds the backend. Does no I/O: connections open on first use (see
    /// [`MemcachedBackend::ready_check`]).
    pub fn build(self) -> Result<MemcachedBackend, BuildError> {
        if let Some(e) = self.bad_input {
            return Err(e);
        }
        if self.servers.is_empty() {
            return Err(BuildError::NoServers);
        }
        if !keys::valid_namespace(&self.namespace) {
            return Err(BuildError::Namespace(self.namespace));
        }
        let mut servers = Vec::with_capacity(self.servers.len());
        for s in self.servers {
            if !servers.contains(&s) {
                servers.push(s);
            }
        }
        let version_keys = servers.iter().map(|s| keys::version_key(&self.namespace, s)).collect();
        let versions = servers.iter().map(|_| AtomicU64::new(0)).collect();
        let router = keys::NamespaceRouter::new(&self.namespace, &servers);
        Ok(MemcachedBackend {
            inner: Arc::new(Inner {
                namespace: self.namespace,
                servers,
                version_keys,
                versions,
                router,
                pool_size: self.pool_size,
                max_connections: self.max_connections,
                connect_timeout: self.connect_timeout,
                command_timeout: self.command_timeout,
                cas_attempts: self.cas_attempts,
                min_ttl_secs: self.min_ttl_secs,
                on_error: self.on_error,
                client: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                refunds: AtomicU64::new(0),
                retry_queues: (0..RETRY_QUEUES).map(|_| tokio::sync::Mutex::new(())).collect(),
            }),
        })
    }
}

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

/// A state read: the server's namespace version and the state with its CAS token.
struct Read {
    version: Option<u64>,
    state: Option<(Vec<u8>, u64)>,
}

/// What one decision computed.
struct Outcome {
    verdict: Verdict,
    state: Option<Vec<u8>>,
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

    /// Group members given back their cost so far, because another member of the group
    /// refused after they had been written (see the crate docs, "Groups").
    pub fn group_refunds(&self) -> u64 {
        self.inner.refunds.load(Ordering::Relaxed)
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

    /// One pipelined read of server `i`'s version and the state under `key`.
    async fn read(&self, client: &AsyncMemcache, i: usize, key: &str) -> Result<Read, BackendError> {
        let started = Instant::now();
        let mut results = client
            .meta()
            .run_many([Get::new(&self.inner.version_keys[i]), Get::new(key).meta(Meta::NONE.cas())])
            .await
            .map_err(|e| self.map_err(e, started))?
            .into_iter();
        let (Some(version), Some(state)) = (results.next(), results.next()) else {
            return Err(BackendError::command(KIND, "a pipelined read returned too few answers"));
        };
        let version = version.map_err(|e| self.map_err(e, started))?;
        let state = state.map_err(|e| self.map_err(e, started))?;
        let version = match version.value {
            Some(v) if version.hit() => Some(parse_version(&v)?),
            _ => None,
        };
        let state = match (state.hit(), state.value, state.item.cas) {
            (true, Some(v), Some(cas)) => Some((v, cas)),
            (true, _, _) => return Err(BackendError::command(KIND, "a state read returned no value or CAS token")),
            _ => None,
        };
        Ok(Read { version, state })
    }

    /// Stores `bytes` under `key` if the state is still the one read (`cas`), or still absent.
    async fn store(
        &self,
        client: &AsyncMemcache,
        key: &str,
        bytes: &[u8],
        exptime: u32,
        cas: Option<u64>,
    ) -> Result<bool, BackendError> {
        let request = client.meta().set(key, bytes).ttl_raw(exptime);
        let request = match cas {
            Some(cas) => request.compare_cas(cas),
            None => request.add(),
        };
        let started = Instant::now();
        let result = request.send().await.map_err(|e| self.map_err(e, started))?;
        Ok(result.applied())
    }

    /// Reads the current state of `op`'s key, following the namespace version of its server:
    /// the storage key and what it holds (value and CAS token).
    async fn load(
        &self,
        client: &AsyncMemcache,
        op: &Operation<'_>,
        attempts: &mut u32,
    ) -> Result<(String, Read), BackendError> {
        let inner = &self.inner;
        let tail = keys::key_tail(&inner.namespace, op.key.as_str(), op.strategy.name());
        let server = inner.router.index_of_tail(tail.as_bytes());
        loop {
            *attempts += 1;
            let version = self.version(client, server).await?;
            let key = keys::state_key(&inner.namespace, version, &tail);
            let read = self.read(client, server, &key).await?;
            if read.version == Some(version) {
                return Ok((key, read));
            }
            // A reset (or a lost version key): follow the server's version.
            match read.version {
                Some(v) => inner.versions[server].store(v, Ordering::Release),
                None => {
                    self.refresh_version(client, server).await?;
                }
            }
            if *attempts >= inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts: *attempts });
            }
        }
    }

    /// Decides a group (see the crate docs, "Groups"): reads and decides every member; if all
    /// admit, writes them one by one with compare-and-swap; a member that now refuses (its
    /// state changed since it was read) gets the members already written refunded.
    async fn run_group(&self, ops: &[Operation<'_>]) -> Result<Vec<Verdict>, BackendError> {
        let client = self.client().await?;
        let write = ops.first().is_some_and(|op| op.mode == Mode::Consume);
        let mut attempts = 0u32;
        let mut members = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, read) = self.load(&client, op, &mut attempts).await?;
            let step = op.strategy.decide_bytes(read.state.as_ref().map(|(b, _)| b.as_slice()), &op.input)?;
            members.push((key, read, step));
        }
        let mut verdicts: Vec<Verdict> = members.iter().map(|m| m.2.verdict).collect();
        if !write || !verdicts.iter().all(Verdict::is_admitted) {
            return Ok(verdicts);
        }
        let mut applied: Vec<usize> = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let mut tries = 0u32;
            loop {
                let (key, read, step) = &members[i];
                let Some((bytes, ttl_us)) = &step.write else {
                    break;
                };
                let exptime = memcached_exptime(*ttl_us, self.inner.min_ttl_secs, wall_clock_secs());
                let cas = read.state.as_ref().map(|(_, cas)| *cas);
                match self.store(&client, key, bytes, exptime, cas).await {
                    Ok(true) => {
                        applied.push(i);
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.refund_all(&client, ops, &applied).await;
                        return Err(e);
                    }
                }
                // Someone wrote the member since it was read: decide it again.
                tries += 1;
                if tries >= self.inner.cas_attempts {
                    self.refund_all(&client, ops, &applied).await;
                    return Err(BackendError::Contention { backend: KIND, attempts: tries });
                }
                backoff(tries).await;
                let again = match self.load(&client, op, &mut attempts).await {
                    Ok((key, read)) => {
                        let current = read.state.as_ref().map(|(b, _)| b.as_slice());
                        match op.strategy.decide_bytes(current, &op.input) {
                            Ok(step) => Ok((key, read, step)),
                            Err(e) => Err(BackendError::from(e)),
                        }
                    }
                    Err(e) => Err(e),
                };
                match again {
                    Ok(member) => members[i] = member,
                    Err(e) => {
                        self.refund_all(&client, ops, &applied).await;
                        return Err(e);
                    }
                }
                verdicts[i] = members[i].2.verdict;
                if !verdicts[i].is_admitted() {
                    // The group is refused after all: give back what was charged.
                    self.refund_all(&client, ops, &applied).await;
                    return Ok(verdicts);
                }
            }
        }
        Ok(verdicts)
    }

    /// Gives back each applied member's cost, by compare-and-swap ([`StrategyHandle::refund_bytes`]);
    /// best effort: a member that cannot be refunded (a custom strategy without refunds, a
    /// server that fails) stays charged, which never admits more than the limits.
    async fn refund_all(&self, client: &AsyncMemcache, ops: &[Operation<'_>], applied: &[usize]) {
        for &i in applied {
            let op = &ops[i];
            let mut attempts = 0u32;
            while attempts < self.inner.cas_attempts {
                let Ok((key, read)) = self.load(client, op, &mut attempts).await else {
                    break;
                };
                let Some((current, cas)) = &read.state else {
                    break;
                };
                let refund = match op.strategy.refund_bytes(current, op.input.now_us, &op.input) {
                    Ok(Some(r)) => r,
                    _ => break,
                };
                let exptime = memcached_exptime(refund.1, self.inner.min_ttl_secs, wall_clock_secs());
                match self.store(client, &key, &refund.0, exptime, Some(*cas)).await {
                    Ok(false) => backoff(attempts).await,
                    Ok(true) => {
                        self.inner.refunds.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// The retry queue of `op`'s key.
    fn retry_queue(&self, op: &Operation<'_>) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((op.key.as_str(), op.strategy.name()));
        let i = usize::try_from(hash % RETRY_QUEUES as u64).unwrap_or(0);
        &self.inner.retry_queues[i]
    }

    /// The compare-and-swap loop shared by decide, peek and stat. The first attempt goes
    /// straight to the server; after a lost race the task retries in its key's queue (see the
    /// crate docs, "Contention").
    async fn run(&self, op: &Operation<'_>, write: bool) -> Result<Outcome, BackendError> {
        let inner = &self.inner;
        let client = self.client().await?;
        let mut attempts = 0u32;
        let mut turn = None;
        loop {
            let (key, read) = self.load(&client, op, &mut attempts).await?;
            let current = read.state.as_ref().map(|(bytes, _)| bytes.as_slice());
            let step = op.strategy.decide_bytes(current, &op.input)?;
            let Some((bytes, ttl_us)) = step.write.filter(|_| write) else {
                return Ok(Outcome { verdict: step.verdict, state: read.state.map(|(b, _)| b) });
            };
            let exptime = memcached_exptime(ttl_us, inner.min_ttl_secs, wall_clock_secs());
            let cas = read.state.as_ref().map(|(_, cas)| *cas);
            if self.store(&client, &key, &bytes, exptime, cas).await? {
                return Ok(Outcome { verdict: step.verdict, state: Some(bytes) });
            }
            if attempts >= inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts });
            }
            if turn.is_none() {
                // Waiting in the queue spaces the retries of this process; the state has
                // changed by the time our turn comes, so read it again at once.
                turn = Some(self.retry_queue(op).lock().await);
            } else {
                // Lost to another process while holding the turn: back off.
                backoff(attempts).await;
            }
        }
    }
}

/// Full jitter over an exponentially growing cap.
async fn backoff(attempt: u32) {
    let cap = BASE_BACKOFF_US.saturating_mul(1 << attempt.min(10)).min(MAX_BACKOFF_US);
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=cap))).await;
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
    fn addresses_and_urls_are_checked() {
        assert!(valid_address("127.0.0.1:11211"));
        assert!(valid_address("[::1]:11211"));
        assert!(valid_address("cache.internal:11211"));
        for bad in ["127.0.0.1", "host:", ":11211", "host:99999", "a b:1", "memcache://h:1"] {
            assert!(!valid_address(bad), "{bad}");
        }
        assert_eq!(parse_url("memcache://a:1").unwrap(), ["a:1"]);
        assert_eq!(parse_url("memcached://a:1,b:2/").unwrap(), ["a:1", "b:2"]);
        for bad in ["redis://a:1", "memcache://", "memcache://a", "memcache://a:1/db"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_reports_configuration_errors() {
        assert!(matches!(MemcachedBackend::builder().build(), Err(BuildError::NoServers)));
        assert!(matches!(MemcachedBackend::new("nope"), Err(BuildError::Server(_))));
        assert!(matches!(MemcachedBackend::builder().url("http://x:1").build(), Err(BuildError::Url(_))));
        assert!(matches!(
            MemcachedBackend::builder().server("a:1").namespace("a b").build(),
            Err(BuildError::Namespace(_))
        ));
        let b = MemcachedBackend::builder().url("memcache://a:1,b:2").server("a:1").build().unwrap();
        assert_eq!(b.servers(), ["a:1", "b:2"]);
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(parse_version(b"42").unwrap(), 42);
        assert!(parse_version(b"0").is_err());
        assert!(parse_version(b"x").is_err());
    }
}
