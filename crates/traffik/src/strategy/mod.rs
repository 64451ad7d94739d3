//! Strategies: pure state machines that decide whether a hit is admitted.
//!
//! | strategy | state | bound on admitted cost |
//! |---|---|---|
//! | [`FixedWindow`] | window index, cost used | any epoch-aligned window <= L |
//! | [`SlidingWindowCounter`] | window index, previous and current cost | any aligned window <= L (estimate) |
//! | [`SlidingWindowLog`] | (time, cost) log | any sliding window <= L |
//! | [`TokenBucket`] | theoretical arrival time | any interval t: <= B + r·t |
//! | [`TokenBucketWithDebt`] | theoretical arrival time | any interval t: <= B + D + r·t |
//! | [`LeakyBucket`] | theoretical arrival time | any interval t: <= L + r·t |
//! | [`LeakyBucketWithQueue`] | theoretical arrival time | releases in any interval t: <= L + r·t |
//! | [`Gcra`] | theoretical arrival time | any interval t: <= 1 + τ/T + r·t |
//! | [`Reserved`] | time of the latest admission, cost used, period | any aligned window <= L; levels below i <= ceiling(i) |
//! | [`CostAwareTokenBucket`] | theoretical arrival time, average admitted cost | any interval t: <= B + r·t |
//! | [`QuotaRollover`] | period start, cost used, rollover | any aligned window <= L + R (R: rollover cap) |
//! | [`Concurrency`] | leases (taken at, expiry, slots) | at any instant, live leases hold <= L slots |
//!
//! A strategy gets the stored state (or none), `now`, the rate and the cost, and returns a
//! [`Verdict`] plus, when the state changes, the new state and how long it must be kept. It does
//! no I/O and reads no clock, so every backend can run it and every property can be tested with a
//! manual clock. Denied hits never change state. State outlives its rate: each strategy reads
//! state written under another rate by a documented rule (see each type, and README's "When the
//! rate changes").
//!
//! # Writing your own
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use traffik::strategy::{Input, Step, Strategy, Verdict};
//!
//! /// Admits at most `limit` hits, ever (a quota that never refills).
//! #[derive(Debug)]
//! struct Lifetime;
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Used(u64);
//!
//! impl Strategy for Lifetime {
//!     type State = Used;
//!     fn name(&self) -> &str { "lifetime" }
//!     fn decide(&self, state: Option<&Used>, input: &Input) -> Step<Used> {
//!         let limit = input.rate.limit();
//!         if input.cost > limit {
//!             return Step::unchanged(Verdict::never());
//!         }
//!         let used = state.map_or(0, |s| s.0);
//!         if used + input.cost > limit {
//!             return Step::unchanged(Verdict::deny(limit - used, u64::MAX, u64::MAX));
//!         }
//!         let used = used + input.cost;
//!         Step::write(Verdict::admit(limit - used, u64::MAX), Used(used), u64::MAX)
//!     }
//! }
//! ```

mod amend;
mod concurrency;
mod cost_aware;
mod fixed_window;
mod handle;
mod meter;
pub mod native;
mod params;
mod reserved;
mod rollover;
mod sliding_counter;
mod sliding_log;

pub use amend::Amend;
pub(crate) use concurrency::check_slots;
pub use concurrency::{Concurrency, ConcurrencyState, Lease, MAX_SLOTS};
pub use cost_aware::{CostAwareBuilder, CostAwareSpec, CostAwareState, CostAwareTokenBucket};
pub use fixed_window::{FixedWindow, FixedWindowState};
pub use handle::{BytesStep, StateError, StrategyHandle};
pub use meter::{Gcra, LeakyBucket, LeakyBucketWithQueue, MeterState, TokenBucket, TokenBucketWithDebt};
pub use params::ParamError;
pub use reserved::Reserved;
pub use rollover::{QuotaRollover, QuotaRolloverBuilder, QuotaRolloverState, RolloverSpec};
pub use sliding_counter::{SlidingWindowCounter, SlidingWindowCounterState};
pub use sliding_log::{SlidingWindowLog, SlidingWindowLogState};

use std::any::Any;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Rate;

/// Strategy-specific details reported by `stat` (e.g. tokens left, window start).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Everything a strategy needs to decide one hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Input {
    /// Current time, microseconds since the Unix epoch.
    pub now_us: u64,
    /// The limit being enforced (never unlimited: unlimited rates never reach a strategy).
    pub rate: Rate,
    /// Cost of this hit (never 0: zero-cost hits never reach a strategy).
    pub cost: u64,
}

/// Clocks stop at 2^62 µs for the strategies (about 146,000 years after 1970): a clock past
/// it (a saturated test clock, corrupt input) reads as this, so times plus any period never
/// overflow and limits keep holding.
pub const CLOCK_END_US: u64 = 1 << 62;

impl Input {
    /// The time the built-in strategies decide at: [`now_us`](Self::now_us), stopped at
    /// [`CLOCK_END_US`]. Custom strategies should read the clock through it too.
    #[inline]
    pub const fn clock_us(&self) -> u64 {
        if self.now_us < CLOCK_END_US { self.now_us } else { CLOCK_END_US }
    }
}

/// What a strategy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Admitted now; quota consumed.
    Admit,
    /// Admitted, but the caller must hold the request for [`Verdict::wait_us`] before releasing
    /// it (traffic shaping); quota consumed.
    Delay,
    /// Not admitted; nothing consumed. Retrying after [`Verdict::wait_us`] succeeds if no other
    /// traffic intervenes.
    Deny,
    /// The cost exceeds what the strategy can ever admit at this rate; nothing consumed.
    Never,
}

/// A strategy's decision for one hit, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Verdict {
    /// The decision.
    pub kind: VerdictKind,
    /// Unit-cost hits that would still be admitted right after this decision.
    pub remaining: u64,
    /// `Deny`: exact time until this hit would be admitted. `Delay`: how long to hold the
    /// request. Otherwise 0.
    pub wait_us: u64,
    /// Time until the key is back to its full quota (or its current window ends).
    pub reset_us: u64,
    /// An admission by [`Concurrency`]: the microsecond its lease was taken at, which identifies
    /// the lease for release and renewal ([`Amend`]). 0 otherwise (a stat may leave it 0 too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_us: u64,
    /// When the backend decided, on its own clock, if that is not the input's
    /// [`now_us`](Input::now_us): a Redis server that keeps time answers with its `TIME`. 0
    /// otherwise; strategies leave it 0. What a [`Decision`](crate::Decision) names its charge
    /// by ([`Decision::charged_at_us`](crate::Decision::charged_at_us)), for refunds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at_us: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Verdict {
    /// An admission.
    pub const fn admit(remaining: u64, reset_us: u64) -> Self {
        Verdict { kind: VerdictKind::Admit, remaining, wait_us: 0, reset_us, lease_us: 0, at_us: 0 }
    }

    /// An admission that must wait `delay_us` before it is released.
    pub const fn delay(delay_us: u64, reset_us: u64) -> Self {
        Verdict { kind: VerdictKind::Delay, remaining: 0, wait_us: delay_us, reset_us, lease_us: 0, at_us: 0 }
    }

    /// A denial that a retry after `wait_us` would pass.
    pub const fn deny(remaining: u64, wait_us: u64, reset_us: u64) -> Self {
        Verdict { kind: VerdictKind::Deny, remaining, wait_us, reset_us, lease_us: 0, at_us: 0 }
    }

    /// The cost can never be admitted.
    pub const fn never() -> Self {
        Verdict { kind: VerdictKind::Never, remaining: 0, wait_us: 0, reset_us: 0, lease_us: 0, at_us: 0 }
    }

    /// This verdict with the lease it took ([`lease_us`](Self::lease_us)).
    pub const fn with_lease(mut self, lease_us: u64) -> Self {
        self.lease_us = lease_us;
        self
    }

    /// This verdict as decided at `at_us` on the backend's clock ([`at_us`](Self::at_us)).
    pub const fn decided_at(mut self, at_us: u64) -> Self {
        self.at_us = at_us;
        self
    }

    /// Whether the hit goes through (now or after a delay).
    pub const fn is_admitted(&self) -> bool {
        matches!(self.kind, VerdictKind::Admit | VerdictKind::Delay)
    }
}

/// A strategy's answer: the verdict and, if the state changed, what to store.
#[derive(Clone, Debug, PartialEq)]
pub struct Step<S> {
    /// The decision.
    pub verdict: Verdict,
    /// New state and how long it must live, or `None` to leave storage untouched.
    pub write: Option<Write<S>>,
}

/// State to store after a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Write<S> {
    /// The new state.
    pub state: S,
    /// Microseconds the state must be kept; after that it is equivalent to no state at all.
    pub ttl_us: u64,
}

impl<S> Step<S> {
    /// A step that stores nothing.
    pub const fn unchanged(verdict: Verdict) -> Self {
        Step { verdict, write: None }
    }

    /// A step that stores `state` for `ttl_us` microseconds.
    pub const fn write(verdict: Verdict, state: S, ttl_us: u64) -> Self {
        Step { verdict, write: Some(Write { state, ttl_us }) }
    }
}

/// Two machine words of state, stored inline by the in-memory backend (no allocation per key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Packed(pub(crate) [u64; 2]);

pub use meter::{MAX_SPAN_US, MeterParams, MeterSpec};
pub use native::Builtin;

/// A rate-limiting algorithm as a pure state machine. See the [module docs](self).
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// What the strategy stores per key. Serializable so that every backend can store it.
    type State: Clone + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static;

    /// A short, stable name; part of every storage key, so changing strategy starts fresh state.
    /// Use 1 to 32 characters of `[a-z0-9_-]`; other names are replaced by a digest in keys.
    fn name(&self) -> &str;

    /// Decides one hit. Must be deterministic in its arguments, and must not call throttles or
    /// backends: the in-memory backend runs it while holding the key's shard.
    ///
    /// The state may have been written under another rate than `input.rate` (a runtime update,
    /// a rate function, a tier change). Store absolute times and costs (never numbers in units
    /// of a period), never rely on a state past the time to live it was written with (a backend
    /// may have forgotten it by then; store what you need to tell, such as the period), and
    /// answer with waits and times to live bounded by the current rate. The property suites
    /// check this when your `Bound` states a longest wait.
    fn decide(&self, state: Option<&Self::State>, input: &Input) -> Step<Self::State>;

    /// Strategy-specific details for `stat` snapshots.
    fn metadata(&self, _state: Option<&Self::State>, _input: &Input) -> Metadata {
        Metadata::new()
    }

    /// Gives back `input.cost` that a hit admitted at `charged_at_us` consumed, if `state`
    /// still holds it: the new state and its time to live, or `None` when there is nothing to
    /// give back (the window has passed, the meter has drained) or the strategy cannot. The
    /// Memcached backend uses it to compensate a group hit it could not apply to every member.
    /// Built-ins: the windows and the log take the cost off the window or entry that counted
    /// it; a meter's theoretical arrival time moves back by `cost · T`, never before now.
    fn refund(&self, _state: &Self::State, _charged_at_us: u64, _input: &Input) -> Option<Write<Self::State>> {
        None
    }

    /// Extends a lease-like admission made at `charged_at_us` (see [`Concurrency`]): the new
    /// state and its time to live, or `None` when there is nothing to extend (it expired, was
    /// given back, or the strategy has no leases). Backends run it for
    /// [`Amend::Renew`], as they run [`refund`](Self::refund)
    /// for [`Amend::Refund`].
    fn renew(&self, _state: &Self::State, _charged_at_us: u64, _input: &Input) -> Option<Write<Self::State>> {
        None
    }
}

/// How an in-memory entry holds strategy state.
pub(crate) enum Slot {
    Packed(Packed),
    Boxed(Box<dyn Any + Send + Sync>),
}

/// A decision over packed (or absent) state: the verdict and, when the state changed, the new
/// state (packed, or boxed when it does not pack) with its time to live in microseconds.
pub(crate) enum PackedStep {
    Kept(Verdict),
    Packed(Verdict, Packed, u64),
    Boxed(Verdict, Box<dyn Any + Send + Sync>, u64),
}

/// Saturating conversion used by metadata.
pub(crate) fn json_u64(v: u64) -> serde_json::Value {
    serde_json::Value::from(v)
}
