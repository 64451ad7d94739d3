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

/// What is wrong with a configuration value ([`Error::Config`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A throttle's or group's uid is empty or too long.
    #[error("uid must be 1 to {max} bytes long, got {len} bytes")]
    UidLength {
        /// Its length in bytes.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// A group has no members.
    #[error("group `{group}` has no members")]
    EmptyGroup {
        /// The group.
        group: String,
    },
    /// A throttle is a member of a group twice.
    #[error("group `{group}` has member `{member}` twice")]
    DuplicateMember {
        /// The group.
        group: String,
        /// The member's uid.
        member: String,
    },
    /// Not an IP address or CIDR network (trusted proxies).
    #[error("`{text}` is not an IP address or CIDR network")]
    Network {
        /// The text given.
        text: String,
    },
    /// A path glob or regular expression does not compile (rules).
    #[error("path pattern `{pattern}` is invalid: {reason}")]
    PathPattern {
        /// The pattern given.
        pattern: String,
        /// The parser's message.
        reason: String,
    },
    /// A tier is given twice.
    #[error("tier {tier} is given twice")]
    DuplicateTier {
        /// The tier, as its `Debug` form.
        tier: String,
    },
    /// Tiers without a default tier.
    #[error("tiers need a default tier (`default_tier`)")]
    NoDefaultTier,
    /// The default tier is not one of the tiers.
    #[error("the default tier {tier} is not one of the tiers")]
    UnknownDefaultTier {
        /// The tier, as its `Debug` form.
        tier: String,
    },
    /// Not a time of day (`"HH:MM"`, 00:00 to 24:00).
    #[error("bad time of day {text:?}: use HH:MM, 00:00 to 24:00")]
    TimeOfDay {
        /// The text given.
        text: String,
    },
    /// A schedule window overlaps an earlier one.
    #[error("window {window} overlaps {other}")]
    OverlappingWindows {
        /// The window added, as `"HH:MM-HH:MM"`.
        window: String,
        /// The earlier window it overlaps.
        other: String,
    },
    /// More schedule windows than a day can hold.
    #[error("too many windows")]
    TooManyWindows,
    /// A UTC offset beyond what any clock uses.
    #[error("UTC offset of {minutes} minutes is out of range")]
    UtcOffset {
        /// The offset given.
        minutes: i32,
    },
    /// An IANA time zone name that the built-in database does not know.
    #[error("unknown time zone {name:?}: {reason}")]
    TimeZone {
        /// The name given.
        name: String,
        /// Why it was not found.
        reason: String,
    },
    /// A strategy's parameter is out of its range.
    #[error(transparent)]
    Strategy(#[from] crate::strategy::ParamError),
    /// Priority levels that cannot share their capacity.
    #[error(transparent)]
    Priority(#[from] crate::priority::PriorityError),
    /// A numeric parameter is not a number in its allowed range (NaN, infinite, negative,
    /// zero where that means nothing, ...).
    #[error("{parameter} must be {expected}, got {value}")]
    OutOfRange {
        /// Which parameter (e.g. `"adaptive decrease"`).
        parameter: &'static str,
        /// What it must be (e.g. `"a fraction in (0, 1)"`).
        expected: &'static str,
        /// The value given, as text.
        value: String,
    },
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
    /// A configuration value is invalid: which one and why is the [`ConfigError`].
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
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
