//! Errors. Being throttled is not an error (it is a [`Decision`](crate::Decision)); these are.

use std::time::Duration;

use crate::RateError;
use crate::strategy::StateError;

/// What throttles on a backend do when it fails, if they set no [`ErrorPolicy`](crate::ErrorPolicy)
/// of their own: a backend-wide default, given with the backend builders' `on_error`.
///
/// A backend is storage; it does not hold throttle-level policies (fallback backends, circuit
/// breakers, retries). For those on many throttles, set [`on_error`](crate::ThrottleBuilder::on_error)
/// on a builder and clone it as a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Let the request through (fail open): [`ErrorPolicy::allow`](crate::ErrorPolicy::allow).
    Allow,
    /// Reject it (fail closed): [`ErrorPolicy::throttle`](crate::ErrorPolicy::throttle), the default.
    Throttle,
    /// Return the error to the caller: [`ErrorPolicy::raise`](crate::ErrorPolicy::raise).
    Raise,
}

impl From<OnError> for crate::ErrorPolicy {
    fn from(on_error: OnError) -> Self {
        match on_error {
            OnError::Allow => crate::ErrorPolicy::allow(),
            OnError::Throttle => crate::ErrorPolicy::throttle(),
            OnError::Raise => crate::ErrorPolicy::raise(),
        }
    }
}

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A backend could not make a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached.
    #[error("{backend} backend is unreachable: {message}")]
    Connection {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend did not answer in time.
    #[error("{backend} backend did not answer within {after:?}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// No connection of the backend's pool came free for as long as the pool waits for one:
    /// every connection was in use (the server itself may be answering: the pool is too small
    /// for the load), or, for a pool the backend does not size itself, none could be opened.
    #[error("{backend} backend: no pooled connection came free within {after:?}")]
    PoolExhausted {
        /// Which backend.
        backend: &'static str,
        /// How long the checkout waited.
        after: Duration,
    },
    /// The backend answered with an error (script error, protocol error, bad reply).
    #[error("{backend} backend failed: {message}")]
    Command {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Compare-and-swap kept losing to concurrent writers.
    #[error("{backend} backend gave up after {attempts} compare-and-swap attempts under contention")]
    Contention {
        /// Which backend.
        backend: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// The in-memory backend is at its key cap and is configured to refuse new keys.
    #[error("in-memory backend is full ({max_keys} keys) and refuses new keys")]
    Full {
        /// The configured cap.
        max_keys: usize,
    },
    /// Stored state could not be decoded or encoded.
    #[error(transparent)]
    State(#[from] StateError),
    /// The backend was closed.
    #[error("{backend} backend is closed")]
    Closed {
        /// Which backend.
        backend: &'static str,
    },
    /// The backend cannot do what was asked (for example, decide a group of throttles as one).
    #[error("{backend} backend does not support {what}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
}

impl BackendError {
    /// Whether retrying the same call may succeed (connection problems, timeouts, a busy pool,
    /// contention).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackendError::Connection { .. }
                | BackendError::Timeout { .. }
                | BackendError::PoolExhausted { .. }
                | BackendError::Contention { .. }
        )
    }

    /// Shorthand for a [`BackendError::Connection`].
    pub fn connection(backend: &'static str, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        BackendError::Connection { backend, message: source.to_string(), source: Some(source) }
    }

    /// Shorthand for a [`BackendError::Command`].
    pub fn command(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError::Command { backend, message: message.into(), source: None }
    }
}

/// Everything that can go wrong in traffik.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rate string or value is invalid.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// A configuration value is invalid (empty uid, bad glob, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A registry already holds a live throttle with this uid.
    #[error("a throttle with uid `{0}` is already registered")]
    DuplicateUid(String),
    /// No throttle with this uid is registered.
    #[error("no throttle with uid `{0}` is registered")]
    UnknownUid(String),
    /// The throttle takes its backend from the context, and none was set.
    #[error("throttle `{0}` resolves its backend from the context, but no backend is in scope")]
    NoBackendInContext(String),
    /// The backend failed and the error policy chose to raise.
    #[error("throttle `{uid}`: {source}")]
    Backend {
        /// The throttle.
        uid: String,
        /// What went wrong.
        #[source]
        source: BackendError,
    },
}
