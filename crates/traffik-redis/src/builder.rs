//! [`RedisBackendBuilder`]: where the server is, which connection, the timeouts, the clock and the
//! namespace; and what can be wrong with them ([`BuildError`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use traffik::OnError;

use crate::conn::{Conn, ConnectFuture, Factory, LazyPool, PoolConfig, Reconnecting, Timeouts};
use crate::{Inner, MAX_TTL_MS, RedisBackend};

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

pub(crate) enum Source {
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
    pub(crate) source: Option<Source>,
    pub(crate) pool: Option<PoolConfig>,
    pub(crate) namespace: String,
    pub(crate) client_clock: bool,
    pub(crate) timeouts: Timeouts,
    pub(crate) min_ttl_ms: u64,
    pub(crate) cas_attempts: u32,
    pub(crate) on_error: Option<OnError>,
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
            on_error: None,
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
    /// each other's state, and [`Backend::reset`](traffik::backend::Backend::reset) deletes only this namespace.
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
    /// [`BackendError::Timeout`](traffik::BackendError::Timeout); the throttle also applies its own.
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

    /// Compare-and-swap attempts of the generic path before [`BackendError::Contention`](traffik::BackendError::Contention)
    /// (default 64).
    pub fn cas_attempts(mut self, attempts: u32) -> Self {
        self.cas_attempts = attempts.max(1);
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
                on_error: self.on_error,
                closed: AtomicBool::new(false),
            }),
        })
    }
}
