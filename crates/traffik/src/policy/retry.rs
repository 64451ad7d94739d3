//! [`Retry`]: how often and how long to retry a failing backend (exponential backoff with
//! jitter, within the throttle's deadline).

use std::sync::Arc;
use std::time::Duration;

use crate::error::BackendError;
use crate::policy::ErrorFilter;

/// Retry settings: up to `max_retries` more attempts, waiting `delay`, then `delay·multiplier`,
/// ... (capped at `max_delay`), each with up to ±`jitter` of random spread, for errors that
/// `retry_on` accepts (default: [`BackendError::is_transient`]), all within `deadline` of the
/// first failure (default 1 s): a retry starts only before the deadline and its call is cut
/// off at it. A request is held at most the first call's timeout plus the deadline.
#[derive(Clone)]
#[must_use]
pub struct Retry {
    max_retries: u32,
    delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
    retry_on: Option<ErrorFilter>,
    deadline: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_retries: 3,
            delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(2),
            jitter: 0.2,
            retry_on: None,
            deadline: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// `max_retries` retries with the default backoff (100 ms, doubling, ±20 % jitter).
    pub fn new(max_retries: u32) -> Self {
        Retry { max_retries, ..Retry::default() }
    }

    /// First delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Backoff multiplier (at least 1).
    pub fn backoff(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() { multiplier.max(1.0) } else { 1.0 };
        self
    }

    /// Longest delay.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Relative jitter in `[0, 1]`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        self
    }

    /// How long the retries may hold a request after the first call failed (default 1 s): a
    /// retry starts only if its delay ends before the deadline, its call is cut off at the
    /// deadline, and then the policy's `then` decides. `Duration::MAX` means no deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub(crate) fn deadline_span(&self) -> Duration {
        self.deadline
    }

    /// Which errors to retry.
    pub fn retry_on(mut self, filter: impl Fn(&BackendError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_on = Some(Arc::new(filter));
        self
    }

    pub(crate) fn max_retries_count(&self) -> u32 {
        self.max_retries
    }

    pub(crate) fn accepts(&self, e: &BackendError) -> bool {
        match &self.retry_on {
            Some(f) => f(e),
            None => e.is_transient(),
        }
    }

    /// The delay before retry number `attempt` (0-based).
    pub(crate) fn delay_for(&self, attempt: u32) -> Duration {
        let base = self.delay.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let base = base.min(self.max_delay.as_secs_f64());
        let spread = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::try_from_secs_f64((base * spread).max(0.0)).unwrap_or(self.max_delay)
    }
}
