//! The error-policy interpreter: a backend call bounded by the throttle's timeout, and what
//! the policy makes of a failure (allow, throttle, raise, retry, breaker, fallback).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Throttle;
use super::config::{BackendChoice, Config};
use super::context_backend::context_backend;
use super::events::breaker_event;
use super::prepare::Ready;
use crate::backend::{Backend, BoxFuture, Mode, Operation, SharedBackend};
use crate::decision::{Decision, Source};
use crate::error::{BackendError, Error};
use crate::identity::RequestView;
use crate::policy::{CircuitBreaker, ErrorPolicy, Failure, Incident, PolicyKind, Recovery, Transition};
use crate::strategy::Verdict;

impl Throttle {
    /// The error policy's answer to a backend failure on the shortcut path.
    #[cold]
    pub(super) async fn recover_shortcut(
        &self,
        ready: Ready,
        req: &RequestView<'_>,
        error: BackendError,
    ) -> Result<Decision, Error> {
        let config = self.inner.config.load_full();
        let BackendChoice::Fixed(primary) = &config.backend else {
            return Err(Error::NoBackendInContext(self.inner.uid.clone()));
        };
        let op = Operation { key: &ready.key, strategy: &config.strategy, input: ready.input, mode: Mode::Consume };
        let policy = config.policy.as_ref().map_or_else(ErrorPolicy::throttle, ErrorPolicy::clone);
        let resolved = self.recover(&policy, &config, primary, &Single(op), req, error).await?;
        Ok(self.conclude(&config, ready, resolved, false, Mode::Consume))
    }

    pub(crate) fn backend(&self, config: &Config) -> Result<SharedBackend, Error> {
        match &config.backend {
            BackendChoice::Fixed(b) => Ok(Arc::clone(b)),
            BackendChoice::Context => {
                context_backend().ok_or_else(|| Error::NoBackendInContext(self.inner.uid.clone()))
            }
        }
    }

    /// Asks the backend, applying the error policy.
    pub(crate) async fn decide<A: Attempt>(
        &self,
        config: &Config,
        primary: &SharedBackend,
        attempt: &A,
        req: &RequestView<'_>,
    ) -> Result<Resolved<A::Output>, Error> {
        // Resolved once per configuration for fixed backends, so the hot path clones nothing.
        let looked_up;
        let policy = match &config.policy {
            Some(p) => p,
            None => {
                looked_up = primary.on_error().map_or_else(ErrorPolicy::throttle, ErrorPolicy::from);
                &looked_up
            }
        };
        let timeout = config.timeout;
        if let Some(breaker) = policy.breaker()
            && !self.breaker_admits(breaker, primary.kind())
        {
            // Open circuit: the primary is not called at all.
            return Ok(match policy.failover_backend() {
                Some(fallback) => match attempt.run(fallback.as_ref(), timeout).await {
                    Ok(v) => {
                        self.inner.incidents.record_open_fallback();
                        Resolved::Verdict(v, Source::Fallback)
                    }
                    Err(e) => {
                        let now = attempt.first().input.now_us;
                        self.inner.incidents.record(&self.inner.uid, &e, Incident::FailedClosed, now);
                        Resolved::Throttle(self.fail_wait(config))
                    }
                },
                None => Resolved::Throttle(policy.open_wait().unwrap_or_else(|| self.fail_wait(config))),
            });
        }
        match attempt.run(primary.as_ref(), timeout).await {
            Ok(v) => {
                if let Some(b) = policy.breaker() {
                    self.breaker_moved(b.succeeded(), primary.kind());
                }
                Ok(Resolved::Verdict(v, Source::Backend))
            }
            Err(e) => self.recover(policy, config, primary, attempt, req, e).await,
        }
    }

    /// Whether `breaker` lets a call to the primary (of kind `backend`) through; reports the
    /// transition to half-open that letting a probe through makes.
    #[inline]
    fn breaker_admits(&self, breaker: &CircuitBreaker, backend: &'static str) -> bool {
        let (admitted, moved) = breaker.admit();
        self.breaker_moved(moved, backend);
        admitted
    }

    /// Reports a breaker's transition, if any: the `traffik_breaker_*` metrics and an event
    /// (`warn` when the circuit opens, `info` otherwise) naming the throttle and the backend.
    #[inline]
    fn breaker_moved(&self, moved: Option<Transition>, backend: &'static str) {
        if let Some(t) = moved {
            breaker_event(&self.inner.uid, backend, t);
        }
    }

    pub(crate) fn fail_wait(&self, config: &Config) -> Duration {
        if config.min_wait.is_zero() { Duration::from_secs(1) } else { config.min_wait }
    }

    /// Applies `policy` to a call that failed (a retry policy's deadline counts from now).
    pub(crate) async fn recover<A: Attempt>(
        &self,
        policy: &ErrorPolicy,
        config: &Config,
        primary: &SharedBackend,
        attempt: &A,
        req: &RequestView<'_>,
        mut error: BackendError,
    ) -> Result<Resolved<A::Output>, Error> {
        let op = attempt.first();
        let now = op.input.now_us;
        let note = |e: &BackendError, what| self.inner.incidents.record(&self.inner.uid, e, what, now);
        let timeout = config.timeout;
        let mut policy = policy;
        loop {
            return match &policy.kind {
                PolicyKind::Allow => {
                    note(&error, Incident::FailedOpen);
                    Ok(Resolved::Allow)
                }
                PolicyKind::Throttle => {
                    note(&error, Incident::FailedClosed);
                    Ok(Resolved::Throttle(self.fail_wait(config)))
                }
                PolicyKind::Raise => {
                    note(&error, Incident::Raised);
                    Err(Error::Backend { uid: self.inner.uid.clone(), source: error })
                }
                PolicyKind::Custom(handler) => {
                    let failure = Failure {
                        error: &error,
                        uid: &self.inner.uid,
                        key: op.key,
                        rate: op.input.rate,
                        cost: op.input.cost,
                        backend: primary.kind(),
                        request: req,
                    };
                    match handler.handle(&failure).await {
                        Recovery::Allow => {
                            note(&error, Incident::FailedOpen);
                            Ok(Resolved::Allow)
                        }
                        Recovery::Throttle(wait) => {
                            note(&error, Incident::FailedClosed);
                            Ok(Resolved::Throttle(wait))
                        }
                        Recovery::Raise => {
                            note(&error, Incident::Raised);
                            Err(Error::Backend { uid: self.inner.uid.clone(), source: error })
                        }
                    }
                }
                PolicyKind::Fallback { backend, when } => {
                    if when.as_ref().is_some_and(|f| !f(&error)) {
                        note(&error, Incident::FailedClosed);
                        return Ok(Resolved::Throttle(self.fail_wait(config)));
                    }
                    Ok(self.fall_back(backend, attempt, timeout, &error, config).await)
                }
                PolicyKind::Retry { retry, then } => {
                    let deadline = tokio::time::Instant::now().checked_add(retry.deadline_span());
                    let again = Again {
                        max: retry.max_retries_count(),
                        accepts: &|e: &BackendError| retry.accepts(e),
                        pause: &|tries| retry.delay_for(tries),
                    };
                    match again.run(attempt, primary, timeout, deadline, error).await {
                        Ok(v) => {
                            if let Some(b) = then.breaker() {
                                self.breaker_moved(b.succeeded(), primary.kind());
                            }
                            return Ok(Resolved::Verdict(v, Source::Backend));
                        }
                        Err(e) => error = e,
                    }
                    policy = then;
                    continue;
                }
                PolicyKind::Failover(f) => {
                    let deadline = tokio::time::Instant::now().checked_add(f.deadline_span());
                    let again = Again {
                        max: f.max_retries_count(),
                        accepts: &BackendError::is_transient,
                        pause: &|_| f.delay(),
                    };
                    match again.run(attempt, primary, timeout, deadline, error).await {
                        Ok(v) => {
                            self.breaker_moved(f.breaker_ref().succeeded(), primary.kind());
                            Ok(Resolved::Verdict(v, Source::Backend))
                        }
                        Err(e) => {
                            self.breaker_moved(f.breaker_ref().failed(), primary.kind());
                            Ok(self.fall_back(f.backend_ref(), attempt, timeout, &e, config).await)
                        }
                    }
                }
                PolicyKind::Breaker { breaker, wait } => {
                    self.breaker_moved(breaker.failed(), primary.kind());
                    note(&error, Incident::FailedClosed);
                    Ok(Resolved::Throttle(*wait))
                }
            };
        }
    }

    pub(super) async fn fall_back<A: Attempt>(
        &self,
        backend: &SharedBackend,
        attempt: &A,
        timeout: Duration,
        error: &BackendError,
        config: &Config,
    ) -> Resolved<A::Output> {
        let now = attempt.first().input.now_us;
        match attempt.run(backend.as_ref(), timeout).await {
            Ok(v) => {
                self.inner.incidents.record(&self.inner.uid, error, Incident::Fallback, now);
                Resolved::Verdict(v, Source::Fallback)
            }
            Err(second) => {
                self.inner.incidents.record(&self.inner.uid, &second, Incident::FailedClosed, now);
                Resolved::Throttle(self.fail_wait(config))
            }
        }
    }
}

/// A backend's answer as the error policy leaves it.
pub(crate) enum Resolved<T> {
    Verdict(T, Source),
    Allow,
    Throttle(Duration),
}

/// A decision the error policy may ask a backend for more than once (retries, fallbacks): one
/// operation, or a group's.
pub(crate) trait Attempt: Sync {
    type Output: Send;

    /// Asks `backend`, bounded by `timeout`.
    fn run<'a>(
        &'a self,
        backend: &'a dyn Backend,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Self::Output, BackendError>>;

    /// The operation a custom error handler is told about (a group's first).
    fn first(&self) -> Operation<'_>;
}

/// One operation.
pub(crate) struct Single<'o>(pub(crate) Operation<'o>);

impl Attempt for Single<'_> {
    type Output = Verdict;

    fn run<'a>(&'a self, backend: &'a dyn Backend, timeout: Duration) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(call(backend, self.0, timeout))
    }

    fn first(&self) -> Operation<'_> {
        self.0
    }
}

/// One backend call, synchronous when the backend allows, otherwise bounded by `timeout`.
pub(super) async fn call(backend: &dyn Backend, op: Operation<'_>, timeout: Duration) -> Result<Verdict, BackendError> {
    if let Some(result) = backend.decide_now(&op) {
        return result;
    }
    bounded(backend.kind(), timeout, backend.decide(op)).await
}

/// Calls of the primary again after a failure (a retry policy's, a failover's).
pub(super) struct Again<'p> {
    /// At most this many.
    max: u32,
    /// While the last error is one of these.
    accepts: &'p (dyn Fn(&BackendError) -> bool + Sync),
    /// Pausing this long before retry number `n` (0-based).
    pause: &'p (dyn Fn(u32) -> Duration + Sync),
}

impl Again<'_> {
    /// The first success, or the last error. A retry starts only before `deadline` (none: a
    /// deadline too far to represent), and its call is cut off at it.
    async fn run<A: Attempt>(
        &self,
        attempt: &A,
        primary: &SharedBackend,
        timeout: Duration,
        deadline: Option<tokio::time::Instant>,
        mut error: BackendError,
    ) -> Result<A::Output, BackendError> {
        let mut tries = 0;
        while tries < self.max && (self.accepts)(&error) {
            let pause = (self.pause)(tries);
            let Some(left) = time_left(deadline, pause) else {
                break;
            };
            tokio::time::sleep(pause).await;
            tries += 1;
            match attempt.run(primary.as_ref(), timeout.min(left)).await {
                Ok(v) => return Ok(v),
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

/// What is left of `deadline` after a pause of `pause` from now, in whole milliseconds (the
/// timer's resolution, so a call cut off at it never ends past the deadline); `None` when
/// nothing is. No deadline leaves all the time there is.
pub(crate) fn time_left(deadline: Option<tokio::time::Instant>, pause: Duration) -> Option<Duration> {
    let Some(deadline) = deadline else {
        return Some(Duration::MAX);
    };
    let left = deadline.checked_duration_since(tokio::time::Instant::now().checked_add(pause)?)?;
    let whole = Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
    (!whole.is_zero()).then_some(whole)
}

/// Awaits a backend call for at most `timeout`, timing it (feature `metrics`). Outside a Tokio runtime there is no timer to
/// bound it with (and asking for one would panic), so the call is awaited as is.
pub(crate) async fn bounded<T>(
    backend: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let result = if tokio::runtime::Handle::try_current().is_err() {
        fut.await
    } else {
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout { backend, after: timeout }),
        }
    };
    #[cfg(feature = "metrics")]
    crate::telemetry::record_backend_call(backend, started.elapsed());
    result
}
