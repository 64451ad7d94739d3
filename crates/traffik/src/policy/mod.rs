//! What a throttle does when its backend fails: error policies, retries, fallback backends,
//! failover and the circuit breaker.
//!
//! | policy | on a backend error |
//! |---|---|
//! | [`ErrorPolicy::allow`] | let the request through (fail open) |
//! | [`ErrorPolicy::throttle`] (default) | reject it; wait = the throttle's min wait, or 1 s |
//! | [`ErrorPolicy::raise`] | return the error to the caller |
//! | [`ErrorPolicy::custom`] | your function picks allow / throttle / raise |
//! | [`ErrorPolicy::fallback`] | decide on another backend; if that fails too, throttle |
//! | [`ErrorPolicy::retry`] | retry the backend with backoff and jitter, then another policy |
//! | [`ErrorPolicy::failover`] | circuit breaker + retries + fallback backend |
//! | [`ErrorPolicy::circuit_breaker`] | count failures; while open, throttle without calling the backend |
//!
//! A throttle's own policy wins over its backend's default ([`Backend::on_error`], one of
//! [`OnError`](crate::OnError)); with neither, the policy is `throttle`.

mod breaker;
mod incidents;
mod retry;
#[cfg(test)]
mod tests;

pub(crate) use breaker::Transition;
pub use breaker::{BreakerConfig, BreakerConfigBuilder, BreakerInfo, BreakerState, CircuitBreaker};
pub use incidents::IncidentCounts;
pub(crate) use incidents::{Incident, Incidents};
pub use retry::Retry;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;

use crate::Rate;
use crate::backend::{Backend, SharedBackend};
use crate::error::BackendError;
use crate::identity::RequestView;
use crate::key::Key;

/// What a custom error handler decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Let the request through.
    Allow,
    /// Reject it with this wait.
    Throttle(Duration),
    /// Return the error.
    Raise,
}

/// Everything known about a failed decision, given to custom handlers.
#[derive(Debug)]
pub struct Failure<'a> {
    /// The backend's error.
    pub error: &'a BackendError,
    /// The throttle's uid.
    pub uid: &'a str,
    /// The key being decided.
    pub key: &'a Key,
    /// The rate in force.
    pub rate: Rate,
    /// The cost of the hit.
    pub cost: u64,
    /// The failing backend's kind.
    pub backend: &'static str,
    /// The request.
    pub request: &'a RequestView<'a>,
}

/// A custom error handler.
pub trait ErrorHandler: Send + Sync + 'static {
    /// Decides what to do about a failure.
    fn handle<'a>(&'a self, failure: &'a Failure<'a>) -> BoxFuture<'a, Recovery>;
}

impl<F> ErrorHandler for F
where
    F: Fn(&Failure<'_>) -> Recovery + Send + Sync + 'static,
{
    fn handle<'a>(&'a self, failure: &'a Failure<'a>) -> BoxFuture<'a, Recovery> {
        let r = self(failure);
        Box::pin(async move { r })
    }
}

/// Adapts an async handler `Fn(&Failure) -> impl Future<Output = Recovery> + 'static`.
pub struct AsyncHandler<F>(pub F);

impl<F, Fut> ErrorHandler for AsyncHandler<F>
where
    F: Fn(&Failure<'_>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Recovery> + Send + 'static,
{
    fn handle<'a>(&'a self, failure: &'a Failure<'a>) -> BoxFuture<'a, Recovery> {
        Box::pin((self.0)(failure))
    }
}

type ErrorFilter = Arc<dyn Fn(&BackendError) -> bool + Send + Sync>;

/// Failover settings: the fallback backend, the breaker guarding the primary, and how many
/// times to retry the primary before falling back.
#[derive(Clone)]
#[must_use]
pub struct Failover {
    backend: SharedBackend,
    breaker: CircuitBreaker,
    max_retries: u32,
    retry_delay: Duration,
    deadline: Duration,
}

impl Failover {
    /// Falls back to `backend`, guarded by `breaker`, with no retries.
    pub fn new(backend: impl Backend, breaker: CircuitBreaker) -> Self {
        Failover {
            backend: Arc::new(backend),
            breaker,
            max_retries: 0,
            retry_delay: Duration::from_millis(20),
            deadline: Duration::from_secs(1),
        }
    }

    /// How long the retries of the primary may hold a request after its first call failed
    /// (default 1 s), as [`Retry::deadline`]; then the fallback decides.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub(crate) fn deadline_span(&self) -> Duration {
        self.deadline
    }

    /// Retries of the primary before falling back.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Delay between retries (with ±20 % jitter).
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    pub(crate) fn max_retries_count(&self) -> u32 {
        self.max_retries
    }

    pub(crate) fn delay(&self) -> Duration {
        self.retry_delay.mul_f64(1.0 + 0.2 * (fastrand::f64() * 2.0 - 1.0))
    }

    pub(crate) fn breaker_ref(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub(crate) fn backend_ref(&self) -> &SharedBackend {
        &self.backend
    }
}

#[derive(Clone)]
pub(crate) enum PolicyKind {
    Allow,
    Throttle,
    Raise,
    Custom(Arc<dyn ErrorHandler>),
    Fallback { backend: SharedBackend, when: Option<ErrorFilter> },
    Retry { retry: Retry, then: Box<ErrorPolicy> },
    Failover(Failover),
    Breaker { breaker: CircuitBreaker, wait: Duration },
}

/// What to do when a backend fails. See the [module docs](self).
#[derive(Clone)]
pub struct ErrorPolicy {
    pub(crate) kind: PolicyKind,
}

impl ErrorPolicy {
    /// Fail open.
    pub fn allow() -> Self {
        ErrorPolicy { kind: PolicyKind::Allow }
    }

    /// Fail closed, with the throttle's min wait or 1 s.
    pub fn throttle() -> Self {
        ErrorPolicy { kind: PolicyKind::Throttle }
    }

    /// Return the error.
    pub fn raise() -> Self {
        ErrorPolicy { kind: PolicyKind::Raise }
    }

    /// A custom handler (a closure `Fn(&Failure) -> Recovery`, or [`AsyncHandler`]).
    pub fn custom(handler: impl ErrorHandler) -> Self {
        ErrorPolicy { kind: PolicyKind::Custom(Arc::new(handler)) }
    }

    /// Decide on `backend` instead; if it fails too, throttle.
    pub fn fallback(backend: impl Backend) -> Self {
        ErrorPolicy { kind: PolicyKind::Fallback { backend: Arc::new(backend), when: None } }
    }

    /// Like [`fallback`](Self::fallback), only for errors `when` accepts (others throttle).
    pub fn fallback_on(backend: impl Backend, when: impl Fn(&BackendError) -> bool + Send + Sync + 'static) -> Self {
        ErrorPolicy { kind: PolicyKind::Fallback { backend: Arc::new(backend), when: Some(Arc::new(when)) } }
    }

    /// Retry, then apply `then`.
    pub fn retry(retry: Retry, then: ErrorPolicy) -> Self {
        ErrorPolicy { kind: PolicyKind::Retry { retry, then: Box::new(then) } }
    }

    /// Circuit breaker + retries + fallback backend.
    pub fn failover(failover: Failover) -> Self {
        ErrorPolicy { kind: PolicyKind::Failover(failover) }
    }

    /// Counts failures in `breaker`; on failure, and without calling the backend while the
    /// circuit is open, throttles with `wait`.
    pub fn circuit_breaker(breaker: CircuitBreaker, wait: Duration) -> Self {
        ErrorPolicy { kind: PolicyKind::Breaker { breaker, wait } }
    }

    /// The breaker this policy consults before calling the backend, if any (a breaker a retry
    /// policy falls back to is consulted before the first call, too).
    pub(crate) fn breaker(&self) -> Option<&CircuitBreaker> {
        match &self.kind {
            PolicyKind::Failover(f) => Some(&f.breaker),
            PolicyKind::Breaker { breaker, .. } => Some(breaker),
            PolicyKind::Retry { then, .. } => then.breaker(),
            _ => None,
        }
    }

    /// What a circuit-breaker policy (or one a retry policy falls back to) answers while open.
    pub(crate) fn open_wait(&self) -> Option<Duration> {
        match &self.kind {
            PolicyKind::Breaker { wait, .. } => Some(*wait),
            PolicyKind::Retry { then, .. } => then.open_wait(),
            _ => None,
        }
    }

    /// The backend that decides while this policy's breaker is open (a failover's, also when
    /// a retry policy falls back to it).
    pub(crate) fn failover_backend(&self) -> Option<&SharedBackend> {
        match &self.kind {
            PolicyKind::Failover(f) => Some(&f.backend),
            PolicyKind::Retry { then, .. } => then.failover_backend(),
            _ => None,
        }
    }
}

impl fmt::Debug for ErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.kind {
            PolicyKind::Allow => "allow",
            PolicyKind::Throttle => "throttle",
            PolicyKind::Raise => "raise",
            PolicyKind::Custom(_) => "custom",
            PolicyKind::Fallback { .. } => "fallback",
            PolicyKind::Retry { .. } => "retry",
            PolicyKind::Failover(_) => "failover",
            PolicyKind::Breaker { .. } => "circuit_breaker",
        };
        write!(f, "ErrorPolicy({name})")
    }
}
