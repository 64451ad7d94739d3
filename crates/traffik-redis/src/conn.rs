//! Connections: one shared multiplexed connection (reconnecting), a `ConnectionManager`, a bb8
//! pool, or a cluster connection; and the one function that sends a command over any of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use traffik::BackendError;

use crate::KIND;
use crate::scripts::Lua;

/// A future that opens a connection.
pub(crate) type ConnectFuture<C> = Pin<Box<dyn Future<Output = RedisResult<C>> + Send>>;

/// Opens connections (a URL's client or the user's factory).
pub(crate) type Factory<C> = Arc<dyn Fn() -> ConnectFuture<C> + Send + Sync>;

/// One command to send: a script (`EVALSHA`, falling back to `EVAL` after `NOSCRIPT`) or a
/// plain command.
pub(crate) enum Call {
    Script { lua: &'static Lua, cmd: Cmd },
    Plain(Cmd),
}

impl Call {
    /// Starts a script call on one key; add `ARGV` with [`Call::arg`].
    pub(crate) fn script(lua: &'static Lua, key: &str) -> Call {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(lua.hash.as_str()).arg(1).arg(key);
        Call::Script { lua, cmd }
    }

    /// Starts a script call on several keys.
    pub(crate) fn script_keys(lua: &'static Lua, keys: &[String]) -> Call {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(lua.hash.as_str()).arg(keys.len());
        for k in keys {
            cmd.arg(k);
        }
        Call::Script { lua, cmd }
    }

    /// Appends an argument.
    pub(crate) fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        match self {
            Call::Script { cmd, .. } | Call::Plain(cmd) => {
                cmd.arg(arg);
            }
        }
        self
    }

    /// The same call as `EVAL` with the full source (after `NOSCRIPT`).
    fn eval(lua: &Lua, cmd: &Cmd) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(lua.source.as_str());
        for a in cmd.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = a {
                eval.arg(bytes);
            }
        }
        eval
    }

    async fn send<C: ConnectionLike + Send>(&self, conn: &mut C) -> RedisResult<Value> {
        match self {
            Call::Plain(cmd) => cmd.query_async(conn).await,
            Call::Script { lua, cmd } => match cmd.query_async(conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    crate::telemetry::count_script_reload();
                    Self::eval(lua, cmd).query_async(conn).await
                }
                other => other,
            },
        }
    }
}

/// Timeouts applied to connecting and to each command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) command: Duration,
}

/// Where a failure happened, to name the right timeout.
#[derive(Clone, Copy)]
enum Phase {
    Connect,
    Command,
}

fn map_err(e: RedisError, phase: Phase, t: Timeouts) -> BackendError {
    if e.is_timeout() {
        return BackendError::Timeout {
            backend: KIND,
            after: match phase {
                Phase::Connect => t.connect,
                Phase::Command => t.command,
            },
        };
    }
    let transient = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
        );
    let message = e.to_string();
    if transient || matches!(phase, Phase::Connect) {
        BackendError::Connection { backend: KIND, message, source: Some(Box::new(e)) }
    } else {
        BackendError::Command { backend: KIND, message, source: Some(Box::new(e)) }
    }
}

/// Whether the connection that returned `e` must be replaced.
fn breaks(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_io_error())
}

/// Whether a call that failed with `e` is sent once more on a fresh connection: the connection
/// was found dead (closed, reset, a broken pipe: what a server restart leaves behind), so the
/// call almost surely never reached a server that could run it. A call whose reply was lost
/// after the server ran it would be counted twice; that needs the connection to drop in the
/// middle of one round trip, and costs one extra unit of quota at most.
fn resend(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a shared connection still answers, as seen by the requests sent on it.
///
/// A peer that vanished without closing the connection (a half-open connection: the host
/// died, a firewall or NAT dropped the flow) is never reported by the socket until TCP gives up
/// retransmitting, which takes many minutes; every request on it just goes unanswered. A
/// request also stops waiting when its caller gives up first (the throttle's timeout is often
/// shorter than the command timeout), and then no error is ever seen here. So each request
/// leaves a mark when it stops waiting without an answer, any answer clears the marks, and a
/// connection on which a request has waited in vain for longer than the command timeout, with
/// no answer since, is replaced before it is used again.
pub(crate) struct Health {
    origin: Instant,
    /// When the oldest request that stopped waiting without an answer was sent, in
    /// microseconds after `origin` plus one; 0 when every request since the last answer got one.
    unanswered: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Health { origin: Instant::now(), unanswered: AtomicU64::new(0) }
    }

    fn mark(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    /// Whether a request has waited in vain for at least `limit`, with no answer since.
    fn stalled(&self, limit: Duration) -> bool {
        let since = self.unanswered.load(Ordering::Acquire);
        let limit = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
        since != 0 && self.mark().saturating_sub(since) >= limit
    }

    /// Sends on the connection this health belongs to, keeping track of answers.
    async fn watch(&self, send: impl Future<Output = RedisResult<Value>>) -> RedisResult<Value> {
        let mut pending = Pending { health: self, sent: self.mark(), settled: false };
        let res = send.await;
        match &res {
            // No answer: leave the mark (the guard does it on drop).
            Err(e) if e.is_timeout() => {}
            // The connection is replaced anyway.
            Err(e) if breaks(e) => pending.settled = true,
            // An answer, even an error reply: the connection is alive.
            _ => {
                self.unanswered.store(0, Ordering::Release);
                pending.settled = true;
            }
        }
        res
    }
}

/// A request in flight; if it stops waiting without an answer (timed out, or its caller gave
/// up), it marks the connection's [`Health`].
struct Pending<'a> {
    health: &'a Health,
    sent: u64,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let sent = self.sent;
            let _ = self
                .health
                .unanswered
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur == 0 || cur > sent).then_some(sent));
        }
    }
}

/// A shared connection opened on first use and reopened after it breaks.
pub(crate) struct Reconnecting<C> {
    factory: Factory<C>,
    current: Mutex<Option<(u64, C, Arc<Health>)>>,
    /// Serializes reconnects; holds the last generation number.
    connecting: tokio::sync::Mutex<u64>,
    /// When the last connect attempt failed, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl<C: Clone + Send + 'static> Reconnecting<C> {
    pub(crate) fn new(factory: Factory<C>) -> Self {
        Reconnecting {
            factory,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// Starts with an open connection (which cannot be reopened if there is no factory).
    pub(crate) fn with_connection(factory: Factory<C>, conn: C) -> Self {
        let r = Self::new(factory);
        *lock(&r.current) = Some((0, conn, Arc::new(Health::new())));
        r
    }

    fn peek(&self) -> Option<(u64, C, Arc<Health>)> {
        lock(&self.current).clone()
    }

    async fn get(&self, t: Timeouts) -> Result<(u64, C, Arc<Health>), BackendError> {
        if let Some(c) = self.peek() {
            return Ok(c);
        }
        let asked = Instant::now();
        let mut generation = self.connecting.lock().await;
        if let Some(c) = self.peek() {
            return Ok(c);
        }
        // Someone else just failed to connect while we waited: share their answer rather than
        // queueing one more connect attempt behind it.
        if let Some((at, why)) = lock(&self.last_failure).clone()
            && at >= asked
        {
            return Err(BackendError::Connection { backend: KIND, message: why, source: None });
        }
        let result = match tokio::time::timeout(t.connect, (self.factory)()).await {
            Err(_) => Err(BackendError::Timeout { backend: KIND, after: t.connect }),
            Ok(Err(e)) => Err(map_err(e, Phase::Connect, t)),
            Ok(Ok(conn)) => Ok(conn),
        };
        match result {
            Ok(conn) => {
                if *generation > 0 {
                    crate::telemetry::count_reconnect();
                }
                *generation += 1;
                let health = Arc::new(Health::new());
                *lock(&self.current) = Some((*generation, conn.clone(), Arc::clone(&health)));
                *lock(&self.last_failure) = None;
                Ok((*generation, conn, health))
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis connect failed");
                *lock(&self.last_failure) = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    fn invalidate(&self, generation: u64) {
        let mut cur = lock(&self.current);
        if matches!(&*cur, Some((g, _, _)) if *g == generation) {
            tracing::debug!(generation, "redis connection broken; reconnecting on next use");
            *cur = None;
        }
    }

    pub(crate) fn clear(&self) {
        *lock(&self.current) = None;
    }
}

/// How a URL-built pool is configured.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_size: u32,
}

/// A bb8 pool, built on first use (bb8 spawns its reaper, which needs a runtime).
pub(crate) struct LazyPool {
    pool: OnceLock<bb8::Pool<RedisConnectionManager>>,
    init: Option<(RedisConnectionManager, PoolConfig)>,
    /// One permit per connection of a pool this crate sized, taken in arrival order before a
    /// checkout: bb8 hands a returned connection to whoever asks next, ahead of the callers
    /// already waiting, so without it some waiters starve under more tasks than connections.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl LazyPool {
    pub(crate) fn ready(pool: bb8::Pool<RedisConnectionManager>) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(pool);
        LazyPool { pool: cell, init: None, gate: None }
    }

    pub(crate) fn lazy(manager: RedisConnectionManager, config: PoolConfig) -> Self {
        let gate = Some(Arc::new(tokio::sync::Semaphore::new(config.max_size.max(1) as usize)));
        LazyPool { pool: OnceLock::new(), init: Some((manager, config)), gate }
    }

    fn get(&self, t: Timeouts) -> Result<&bb8::Pool<RedisConnectionManager>, BackendError> {
        if let Some(p) = self.pool.get() {
            return Ok(p);
        }
        let Some((manager, config)) = &self.init else {
            return Err(BackendError::command(KIND, "the pool is not configured"));
        };
        Ok(self.pool.get_or_init(|| {
            bb8::Pool::builder()
                .max_size(config.max_size.max(1))
                .test_on_check_out(false)
                .connection_timeout(t.connect)
                .build_unchecked(manager.clone())
        }))
    }
}

/// The connection flavours.
pub(crate) enum Conn {
    /// One multiplexed connection shared by every task (default).
    Multiplexed(Reconnecting<MultiplexedConnection>),
    /// The user's `ConnectionManager` (it reconnects by itself).
    Manager(ConnectionManager),
    /// A bb8 pool of multiplexed connections, ping-on-checkout off.
    Pool(LazyPool),
    /// Redis Cluster.
    Cluster(Reconnecting<ClusterConnection>),
}

impl Conn {
    /// Sends one call and returns the reply. Commands are bounded by the connections'
    /// response timeout (set from the command timeout on connections this crate opens), a
    /// connect or pool checkout by the connection timeout.
    pub(crate) async fn run(&self, call: &Call, t: Timeouts) -> Result<Value, BackendError> {
        match self {
            Conn::Multiplexed(r) => {
                let (mut generation, mut c, mut health) = r.get(t).await?;
                if health.stalled(t.command) {
                    tracing::debug!(generation, "redis connection stopped answering; reconnecting");
                    r.invalidate(generation);
                    (generation, c, health) = r.get(t).await?;
                }
                let mut res = health.watch(call.send(&mut c)).await;
                if let Err(e) = &res
                    && breaks(e)
                {
                    r.invalidate(generation);
                    if resend(e) {
                        let (generation, mut fresh, health) = r.get(t).await?;
                        res = health.watch(call.send(&mut fresh)).await;
                        if let Err(e) = &res
                            && breaks(e)
                        {
                            r.invalidate(generation);
                        }
                    }
                }
                res.map_err(|e| map_err(e, Phase::Command, t))
            }
            Conn::Manager(m) => {
                let mut c = m.clone();
                call.send(&mut c).await.map_err(|e| map_err(e, Phase::Command, t))
            }
            Conn::Pool(p) => {
                let pool = p.get(t)?.clone();
                // Waiters are served in arrival order (the semaphore is fair), within the
                // connection timeout.
                let asked = Instant::now();
                let turn = match &p.gate {
                    Some(gate) => match tokio::time::timeout(t.connect, Arc::clone(gate).acquire_owned()).await {
                        Ok(Ok(permit)) => Some(permit),
                        Ok(Err(_)) => return Err(BackendError::Closed { backend: KIND }),
                        Err(_) => return Err(BackendError::PoolExhausted { backend: KIND, after: t.connect }),
                    },
                    None => None,
                };
                // The checkout gets what is left of the connection timeout. Behind the gate a
                // connection is free or being opened, so running out means it could not be
                // opened (the server is unreachable); without the gate (your pool) it may also
                // mean every connection was busy.
                let left = t.connect.saturating_sub(asked.elapsed());
                let gated = p.gate.is_some();
                let out_of_time = || {
                    if gated {
                        BackendError::Timeout { backend: KIND, after: t.connect }
                    } else {
                        BackendError::PoolExhausted { backend: KIND, after: t.connect }
                    }
                };
                let pooled = match tokio::time::timeout(left, pool.get_owned()).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(bb8::RunError::TimedOut)) | Err(_) => return Err(out_of_time()),
                    Ok(Err(bb8::RunError::User(e))) => return Err(map_err(e, Phase::Connect, t)),
                };
                let mut exchange = PooledExchange { pool, pooled: Some(pooled), t, _turn: turn };
                let res = exchange.run(call).await;
                exchange.pooled = None;
                res
            }
            Conn::Cluster(r) => {
                let (generation, mut c, _) = r.get(t).await?;
                let res = call.send(&mut c).await;
                if let Err(e) = &res
                    && e.is_connection_dropped()
                {
                    r.invalidate(generation);
                }
                res.map_err(|e| map_err(e, Phase::Command, t))
            }
        }
    }

    /// Sends a command to one cluster node (by address), for `SCAN`.
    pub(crate) async fn run_on_node(
        &self,
        cmd: Cmd,
        host: &str,
        port: u16,
        t: Timeouts,
    ) -> Result<Value, BackendError> {
        let Conn::Cluster(r) = self else {
            return self.run(&Call::Plain(cmd), t).await;
        };
        let (_, mut c, _) = r.get(t).await?;
        let routing =
            redis::cluster_routing::RoutingInfo::SingleNode(redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            });
        match tokio::time::timeout(t.command, c.route_command(cmd, routing)).await {
            Ok(r) => r.map_err(|e| map_err(e, Phase::Command, t)),
            Err(_) => Err(BackendError::Timeout { backend: KIND, after: t.command }),
        }
    }

    /// Drops what can be dropped.
    pub(crate) fn close(&self) {
        match self {
            Conn::Multiplexed(r) => r.clear(),
            Conn::Cluster(r) => r.clear(),
            Conn::Manager(_) | Conn::Pool(_) => {}
        }
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

/// One exchange on a pooled connection. A caller that stops waiting (the throttle's timeout is
/// often the shorter one) would otherwise hand a connection that may never answer again (a
/// half-open peer) back to the pool, where it would stay: if the exchange is dropped before it
/// finished, a task replaces the connection before the pool gets it back. A connection that
/// timed out or broke while the caller waited is replaced in place.
struct PooledExchange {
    pool: bb8::Pool<RedisConnectionManager>,
    /// `None` once the exchange finished (or the connection went to the replacing task).
    pooled: Option<bb8::PooledConnection<'static, RedisConnectionManager>>,
    t: Timeouts,
    /// The caller's place in the pool's queue, kept until the connection is back.
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl PooledExchange {
    async fn run(&mut self, call: &Call) -> Result<Value, BackendError> {
        let t = self.t;
        let Some(pooled) = self.pooled.as_mut() else {
            return Err(BackendError::command(KIND, "the pooled connection is gone"));
        };
        let timed_out = || BackendError::Timeout { backend: KIND, after: t.command };
        let (replace, again, res) = match tokio::time::timeout(t.command, call.send(&mut **pooled)).await {
            Err(_) => (true, false, Err(timed_out())),
            Ok(Err(e)) if e.is_timeout() || breaks(&e) => (true, resend(&e), Err(map_err(e, Phase::Command, t))),
            Ok(res) => (false, false, res.map_err(|e| map_err(e, Phase::Command, t))),
        };
        if !replace {
            return res;
        }
        // bb8-redis never reports a connection as broken and pings are off, so replace it in
        // place; the pool gets the fresh one back.
        match tokio::time::timeout(t.connect, self.pool.dedicated_connection()).await {
            Ok(Ok(fresh)) => {
                crate::telemetry::count_reconnect();
                **pooled = fresh;
                if again {
                    return match tokio::time::timeout(t.command, call.send(&mut **pooled)).await {
                        Ok(res) => res.map_err(|e| map_err(e, Phase::Command, t)),
                        Err(_) => Err(timed_out()),
                    };
                }
            }
            _ => tracing::debug!("unusable pooled redis connection kept: reconnect failed"),
        }
        res
    }
}

impl Drop for PooledExchange {
    fn drop(&mut self) {
        let Some(mut pooled) = self.pooled.take() else { return };
        // Dropped mid-exchange: whether the connection would ever answer is unknown, so it is
        // replaced (off the caller's path) before the pool gets it back.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (pool, connect, turn) = (self.pool.clone(), self.t.connect, self._turn.take());
        runtime.spawn(async move {
            let _turn = turn;
            match tokio::time::timeout(connect, pool.dedicated_connection()).await {
                Ok(Ok(fresh)) => {
                    crate::telemetry::count_reconnect();
                    *pooled = fresh;
                }
                _ => tracing::debug!("abandoned pooled redis connection kept: reconnect failed"),
            }
        });
    }
}
