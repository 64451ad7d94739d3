//! [`CircuitBreaker`]: counts backend failures and, while open, spares the backend calls that
//! would fail anyway; half-open lets one probe through.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock, to_us};

/// Settings of a [`CircuitBreaker`]: a struct literal, or a builder whose unset fields take
/// the defaults (5 failures, 30 s, 2 successes):
///
/// ```
/// use std::time::Duration;
/// use traffik::policy::BreakerConfig;
///
/// let config = BreakerConfig::builder().failure_threshold(3).recovery_timeout(Duration::from_secs(10)).build();
/// assert_eq!(config, BreakerConfig { failure_threshold: 3, recovery_timeout: Duration::from_secs(10), success_threshold: 2 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, typed_builder::TypedBuilder)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    #[builder(default = 5)]
    pub failure_threshold: u32,
    /// How long the circuit stays open before letting a probe through.
    #[serde(with = "crate::policy::breaker::millis")]
    #[builder(default = Duration::from_secs(30))]
    pub recovery_timeout: Duration,
    /// Successes in half-open state that close the circuit.
    #[builder(default = 2)]
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::builder().build()
    }
}

/// Circuit state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go to the backend.
    Closed,
    /// Calls skip the backend.
    Open,
    /// Probing: calls go to the backend; enough successes close the circuit, a failure opens it.
    HalfOpen,
}

impl BreakerState {
    /// The state's name in metrics and logs: `closed`, `open` or `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The state as a gauge reads it: 0 closed, 1 half-open, 2 open.
    pub fn level(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A change of a breaker's state, as a call reporting to it made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    /// Consecutive failures counted when the circuit opened from closed (0 otherwise).
    pub(crate) failures: u32,
}

/// A snapshot of a breaker for health endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerInfo {
    /// Current state.
    pub state: BreakerState,
    /// Consecutive failures counted while closed.
    pub failures: u32,
    /// Successes counted while half-open.
    pub successes: u32,
    /// When the circuit last opened, in ms since the epoch of the breaker's clock.
    pub opened_at_ms: Option<u64>,
    /// Times the circuit has opened.
    pub times_opened: u64,
    /// The configuration.
    pub config: BreakerConfig,
}

#[derive(Debug)]
pub(super) struct BreakerCell {
    pub(super) state: BreakerState,
    pub(super) failures: u32,
    pub(super) successes: u32,
    pub(super) opened_at_us: Option<u64>,
    pub(super) times_opened: u64,
    /// Half-open: whether a probe is out, and since when (a probe that never reports, say a
    /// cancelled request, is presumed lost after `recovery_timeout` and another may go).
    pub(super) probing: Option<u64>,
}

pub(super) struct BreakerInner {
    pub(super) config: BreakerConfig,
    pub(super) clock: Arc<dyn Clock>,
    /// Mirrors `cell.state` so the closed-state check takes no lock.
    pub(super) fast: AtomicU8,
    /// Mirrors `cell.failures` while closed, so a success with no failure streak to reset takes
    /// no lock.
    pub(super) streak: AtomicU32,
    pub(super) cell: Mutex<BreakerCell>,
}

/// Closed → (failure_threshold failures) → open → (recovery_timeout) → half-open →
/// (success_threshold successes) → closed; a failure while half-open reopens it. Half-open lets
/// one probe through at a time. (Calls report without a token, so a success from a call that
/// started before the circuit opened, and ends after the recovery timeout, counts as the
/// probe's and lets the next probe go; with timeouts shorter than the recovery timeout, the
/// default, that cannot happen.) A closed breaker's checks and successes take no lock.
/// Clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(super) inner: Arc<BreakerInner>,
}

pub(super) const CLOSED: u8 = 0;

pub(super) const NOT_CLOSED: u8 = 1;

impl CircuitBreaker {
    /// A breaker on the system clock.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker::with_clock(config, Arc::new(SystemClock))
    }

    /// A breaker on the given clock (use a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        CircuitBreaker {
            inner: Arc::new(BreakerInner {
                config,
                clock,
                fast: AtomicU8::new(CLOSED),
                streak: AtomicU32::new(0),
                cell: Mutex::new(BreakerCell {
                    state: BreakerState::Closed,
                    failures: 0,
                    successes: 0,
                    opened_at_us: None,
                    times_opened: 0,
                    probing: None,
                }),
            }),
        }
    }

    /// Whether a call may go to the protected backend now: always while closed; while open,
    /// not until `recovery_timeout` has passed, then as the first probe of the half-open
    /// state; while half-open, only when no other probe is out.
    pub fn allow(&self) -> bool {
        self.admit().0
    }

    /// [`allow`](Self::allow), and the transition it made (open → half-open), if any.
    pub(crate) fn admit(&self) -> (bool, Option<Transition>) {
        if self.inner.fast.load(Ordering::Acquire) == CLOSED {
            return (true, None);
        }
        let recovery = to_us(self.inner.config.recovery_timeout);
        let now = self.inner.clock.now_us();
        let mut c = self.inner.cell.lock();
        match c.state {
            BreakerState::Closed => (true, None),
            BreakerState::HalfOpen => match c.probing {
                Some(since) if now.saturating_sub(since) < recovery => (false, None),
                _ => {
                    c.probing = Some(now);
                    (true, None)
                }
            },
            BreakerState::Open => {
                let since = c.opened_at_us.unwrap_or(0);
                if now.saturating_sub(since) >= recovery {
                    c.state = BreakerState::HalfOpen;
                    c.successes = 0;
                    c.probing = Some(now);
                    (true, Some(Transition { from: BreakerState::Open, to: BreakerState::HalfOpen, failures: 0 }))
                } else {
                    (false, None)
                }
            }
        }
    }

    /// Records a successful call.
    pub fn record_success(&self) {
        let _ = self.succeeded();
    }

    /// [`record_success`](Self::record_success), and the transition it made (half-open →
    /// closed), if any.
    #[inline]
    pub(crate) fn succeeded(&self) -> Option<Transition> {
        if self.inner.fast.load(Ordering::Acquire) == CLOSED && self.inner.streak.load(Ordering::Relaxed) == 0 {
            // Closed with no failure streak: nothing to reset, and no lock taken.
            return None;
        }
        self.succeeded_slow()
    }

    #[cold]
    fn succeeded_slow(&self) -> Option<Transition> {
        let mut c = self.inner.cell.lock();
        match c.state {
            BreakerState::Closed => {
                c.failures = 0;
                self.inner.streak.store(0, Ordering::Relaxed);
                None
            }
            BreakerState::HalfOpen => {
                c.probing = None;
                c.successes += 1;
                if c.successes < self.inner.config.success_threshold {
                    return None;
                }
                c.state = BreakerState::Closed;
                c.failures = 0;
                c.successes = 0;
                self.inner.streak.store(0, Ordering::Relaxed);
                self.inner.fast.store(CLOSED, Ordering::Release);
                Some(Transition { from: BreakerState::HalfOpen, to: BreakerState::Closed, failures: 0 })
            }
            BreakerState::Open => None,
        }
    }

    /// Records a failed call.
    pub fn record_failure(&self) {
        let transition = self.failed();
        #[cfg(feature = "tracing")]
        if let Some(t) = transition {
            tracing::warn!(from = t.from.name(), to = t.to.name(), failures = t.failures, "circuit breaker opened");
        }
        #[cfg(not(feature = "tracing"))]
        let _ = transition;
    }

    /// [`record_failure`](Self::record_failure), and the transition it made (to open), if any.
    pub(crate) fn failed(&self) -> Option<Transition> {
        let mut c = self.inner.cell.lock();
        let from = c.state;
        let open = match from {
            BreakerState::Closed => {
                c.failures = c.failures.saturating_add(1);
                self.inner.streak.store(c.failures, Ordering::Relaxed);
                c.failures >= self.inner.config.failure_threshold
            }
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if !open {
            return None;
        }
        c.state = BreakerState::Open;
        c.opened_at_us = Some(self.inner.clock.now_us());
        c.successes = 0;
        c.probing = None;
        c.times_opened += 1;
        self.inner.fast.store(NOT_CLOSED, Ordering::Release);
        Some(Transition { from, to: BreakerState::Open, failures: c.failures })
    }

    /// The current state (without moving open → half-open).
    pub fn state(&self) -> BreakerState {
        self.inner.cell.lock().state
    }

    /// A snapshot for dashboards.
    pub fn info(&self) -> BreakerInfo {
        let c = self.inner.cell.lock();
        BreakerInfo {
            state: c.state,
            failures: c.failures,
            successes: c.successes,
            opened_at_ms: c.opened_at_us.map(|t| t / 1000),
            times_opened: c.times_opened,
            config: self.inner.config,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CircuitBreaker").field(&self.info()).finish()
    }
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
