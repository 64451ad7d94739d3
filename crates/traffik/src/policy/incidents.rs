//! A throttle's incident counters: backend errors, and what the error policy made of them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// Counts of failure handling per throttle, for dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentCounts {
    /// Backend errors seen.
    pub errors: u64,
    /// Requests let through because of an error.
    pub failed_open: u64,
    /// Requests rejected because of an error.
    pub failed_closed: u64,
    /// Decisions taken by a fallback backend: after an error, and while a breaker is open
    /// (the primary is not called then, so these are not errors).
    pub fallbacks: u64,
    /// Errors returned to the caller.
    pub raised: u64,
}

/// Counters plus once-per-burst logging.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Incidents {
    pub(super) errors: AtomicU64,
    pub(super) failed_open: AtomicU64,
    pub(super) failed_closed: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    pub(super) raised: AtomicU64,
    pub(super) last_log_us: AtomicU64,
    pub(super) logged_errors: AtomicU64,
}

/// Kinds of incident.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Incident {
    FailedOpen,
    FailedClosed,
    Fallback,
    Raised,
}

impl Incident {
    /// The metric label and log field of this action.
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    pub(super) fn name(self) -> &'static str {
        match self {
            Incident::FailedOpen => "failed_open",
            Incident::FailedClosed => "failed_closed",
            Incident::Fallback => "fallback",
            Incident::Raised => "raised",
        }
    }
}

impl Incidents {
    /// Counts an error and what was done about it; logs at most once per second per throttle,
    /// with the number of errors since the last log line.
    pub(crate) fn record(&self, uid: &str, error: &BackendError, what: Incident, now_us: u64) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let counter = match what {
            Incident::FailedOpen => &self.failed_open,
            Incident::FailedClosed => &self.failed_closed,
            Incident::Fallback => &self.fallbacks,
            Incident::Raised => &self.raised,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::telemetry::count_backend_error(uid, error, what.name());
        #[cfg(not(feature = "tracing"))]
        let _ = (uid, error, now_us);
        #[cfg(feature = "tracing")]
        let last = self.last_log_us.load(Ordering::Relaxed);
        #[cfg(feature = "tracing")]
        if now_us.saturating_sub(last) >= 1_000_000
            && self.last_log_us.compare_exchange(last, now_us, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let total = self.errors.load(Ordering::Relaxed);
            let since = total - self.logged_errors.swap(total, Ordering::Relaxed);
            tracing::warn!(throttle = uid, errors_since_last_report = since, action = what.name(), error = %error,
                "rate limit backend failing");
        }
    }

    /// Counts a decision a fallback took while the breaker kept the primary out (no error:
    /// the primary was not called).
    pub(crate) fn record_open_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> IncidentCounts {
        IncidentCounts {
            errors: self.errors.load(Ordering::Relaxed),
            failed_open: self.failed_open.load(Ordering::Relaxed),
            failed_closed: self.failed_closed.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            raised: self.raised.load(Ordering::Relaxed),
        }
    }
}
