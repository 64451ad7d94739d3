//! [`MemcachedBackendBuilder`]: servers (or a `memcache://` URL), timeouts, compare-and-swap
//! attempts and the namespace; and what can be wrong with them ([`BuildError`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use traffik::OnError;

use crate::{Inner, MemcachedBackend, RETRY_QUEUES, keys};

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
    pub(crate) servers: Vec<String>,
    pub(crate) bad_input: Option<BuildError>,
    pub(crate) namespace: String,
    pub(crate) pool_size: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) cas_attempts: u32,
    pub(crate) min_ttl_secs: u64,
    pub(crate) on_error: Option<OnError>,
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
pub(crate) fn valid_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok()
        && !addr.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
}

/// Parses `memcache://host:port[,host:port...][/]` (also `memcached://`).
pub(crate) fn parse_url(url: &str) -> Result<Vec<String>, BuildError> {
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
    /// [`Backend::reset`](traffik::backend::Backend::reset) resets only this namespace.
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
    /// [`BackendError::Connection`](traffik::BackendError::Connection). The client library reports both kinds of expiry alike,
    /// so the backend tells them apart by how long the call took: keep this below
    /// [`command_timeout`](Self::command_timeout), or a connect timeout is reported as
    /// [`BackendError::Timeout`](traffik::BackendError::Timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one exchange with a server (default 1 s). Past it the call fails with
    /// [`BackendError::Timeout`](traffik::BackendError::Timeout).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Compare-and-swap attempts per decision before [`BackendError::Contention`](traffik::BackendError::Contention) (default 64).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{BuildError, parse_url, valid_address};
    use crate::MemcachedBackend;

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
}
