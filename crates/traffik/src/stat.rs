//! `Stat` snapshots: a client's quota under one throttle, in figures a dashboard can show as is.
//!
//! [`Throttle::stat`](crate::Throttle::stat) answers a [`Snapshot`]: either the figures
//! ([`Snapshot::Limited`] with a [`Stat`]) or why the request is not limited at all
//! ([`Snapshot::Skipped`] with a [`Skip`] reason: disabled, exempted, unlimited, zero cost, or
//! the rules let it through).
//!
//! # Serialized shape
//!
//! Every time is an integer of microseconds, and says so in its name (`_us`); absolute times
//! count from the Unix epoch. A limited snapshot:
//!
//! ```json
//! {
//!   "status": "limited",
//!   "throttle": "upload",
//!   "strategy": "tbd",
//!   "key": "upload:ip!192.0.2.1",
//!   "rate": "5/s",
//!   "limit": 5,
//!   "period_us": 1000000,
//!   "capacity": 7,
//!   "max_debt": 2,
//!   "cost": 1,
//!   "used": 6,
//!   "remaining": 1,
//!   "debt": 1,
//!   "admissible": true,
//!   "wait_us": 0,
//!   "reset_at_us": 1700000001200000,
//!   "taken_at_us": 1700000000100000,
//!   "metadata": {
//!     "tat_us": 1700000001200000, "level_us": 1100000, "capacity_us": 1400000,
//!     "interval_us": 200000, "tokens": -0.5, "debt": 0.5, "max_debt": 2
//!   }
//! }
//! ```
//!
//! A request that is not limited: `{"status": "skipped", "throttle": "api", "reason":
//! "exempted"}` (reasons: `disabled`, `exempted`, `unlimited`, `zero_cost`, `rules`).
//!
//! # Reading the figures
//!
//! `capacity` is the most unit-cost hits a rested client is admitted at once, and `used +
//! remaining = capacity` (except when the asked cost can never fit, see [`Stat::admissible`]).
//! For the token bucket with debt, `capacity` is the bucket plus the debt it may run into:
//! under `5/s` with a debt of 2, a rested client has `remaining: 7` of `capacity: 7`, of which
//! `max_debt: 2` are borrowed; once it owes, `debt` says how many hits it owes (they are repaid
//! at the rate's pace before the bucket refills). Above: 6 hits at once, then 100 ms later, 1
//! hit is owed and 1 more can be borrowed.

use serde::{Deserialize, Serialize};

use crate::Rate;
use crate::decision::Skip;
use crate::key::Key;
use crate::strategy::{Builtin, Input, Metadata, MeterSpec, StrategyHandle, Verdict, VerdictKind};

/// What [`Throttle::stat`](crate::Throttle::stat) found for a request: its quota's figures, or
/// why it is not limited. Serialized with a `status` field (`"limited"` or `"skipped"`), see
/// the [module docs](crate::stat).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
// A snapshot is taken once per stat call (a backend read); boxing the figures would make every
// caller that matches on `Limited` deal with a `Box` to save a short-lived copy.
#[allow(clippy::large_enum_variant)]
pub enum Snapshot {
    /// The request is limited: its figures.
    Limited(Stat),
    /// The request is not limited at all.
    Skipped {
        /// The throttle's uid.
        throttle: String,
        /// Why: disabled, exempted, unlimited rate, zero cost, or the rules let it through.
        reason: Skip,
    },
}

impl Snapshot {
    /// The figures, when the request is limited.
    pub fn limited(&self) -> Option<&Stat> {
        match self {
            Snapshot::Limited(stat) => Some(stat),
            Snapshot::Skipped { .. } => None,
        }
    }

    /// The figures, when the request is limited (by value).
    pub fn into_limited(self) -> Option<Stat> {
        match self {
            Snapshot::Limited(stat) => Some(stat),
            Snapshot::Skipped { .. } => None,
        }
    }

    /// Why the request is not limited, when it is not.
    pub fn skip_reason(&self) -> Option<Skip> {
        match self {
            Snapshot::Limited(_) => None,
            Snapshot::Skipped { reason, .. } => Some(*reason),
        }
    }

    /// The uid of the throttle the snapshot is from.
    pub fn throttle(&self) -> &str {
        match self {
            Snapshot::Limited(stat) => &stat.throttle,
            Snapshot::Skipped { throttle, .. } => throttle,
        }
    }
}

/// A read-only snapshot of a client's quota under one throttle (the seed's `StrategyStat`).
/// See the [module docs](crate::stat) for its serialized shape and how the figures relate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The throttle's uid.
    pub throttle: String,
    /// The strategy's name, as [`StrategyHandle::name`] (`fw`, `swc`, `swl`, `tb`, `tbd`,
    /// `lb`, `lbq`, `gcra`, or a custom strategy's name).
    pub strategy: String,
    /// The storage key.
    pub key: Key,
    /// The rate applied (serialized as text, e.g. `"5/1s"`).
    pub rate: Rate,
    /// The rate's limit: cost units per period.
    pub limit: u64,
    /// The rate's period, microseconds.
    pub period_us: u64,
    /// The most unit-cost hits a rested client is admitted at once: the limit for the windows,
    /// the leaky bucket and custom strategies; the burst for token buckets and GCRA; burst plus
    /// [`max_debt`](Self::max_debt) for the token bucket with debt. A leaky bucket's queue is
    /// not counted (queued hits are delayed, not admitted at once; see `metadata.queue`).
    pub capacity: u64,
    /// How many of [`capacity`](Self::capacity) are borrowed: the token bucket with debt's
    /// largest debt, 0 for every other strategy.
    pub max_debt: u64,
    /// The cost the snapshot was asked for (what [`wait_us`](Self::wait_us) and
    /// [`admissible`](Self::admissible) refer to).
    pub cost: u64,
    /// Cost units counted against the client now: `capacity - remaining`.
    pub used: u64,
    /// Unit-cost hits that would be admitted now, borrowed ones included.
    pub remaining: u64,
    /// Hits the client owes (token bucket with debt): how far below empty its bucket is; 0 for
    /// every other strategy.
    pub debt: u64,
    /// Whether a hit of the asked cost can ever be admitted at this rate. When it cannot, the
    /// backend is not read: `used` and `remaining` are 0.
    pub admissible: bool,
    /// Time until a hit of the asked cost would be admitted, 0 if it would be now; microseconds.
    pub wait_us: u64,
    /// When the quota is fully restored (or the current window ends), microseconds since the
    /// Unix epoch, by the throttle's clock.
    pub reset_at_us: u64,
    /// When the snapshot was taken, microseconds since the Unix epoch, by the throttle's clock
    /// (a Redis backend deciding by the server's time reports the same figures relative to it).
    pub taken_at_us: u64,
    /// Strategy-specific details (window start, tokens, level, ...), times in `_us`.
    pub metadata: Metadata,
}

impl Stat {
    /// Builds a snapshot from a backend's peek (`verdict`) at `input`.
    pub(crate) fn from_peek(
        throttle: &str,
        strategy: &StrategyHandle,
        key: Key,
        input: &Input,
        verdict: Verdict,
        metadata: Metadata,
    ) -> Stat {
        let rate = input.rate;
        let (capacity, max_debt) = capacity(strategy, &rate);
        let admissible = verdict.kind != VerdictKind::Never;
        // A peek reports what is left after the asked cost; a snapshot reports what is left now.
        let remaining = match verdict.kind {
            VerdictKind::Admit => verdict.remaining.saturating_add(input.cost),
            _ => verdict.remaining,
        };
        let used = if admissible { capacity.saturating_sub(remaining) } else { 0 };
        Stat {
            throttle: throttle.to_owned(),
            strategy: strategy.name().to_owned(),
            key,
            rate,
            limit: rate.limit(),
            period_us: rate.period_us(),
            capacity,
            max_debt,
            cost: input.cost,
            used,
            remaining,
            debt: used.saturating_sub(capacity - max_debt),
            admissible,
            wait_us: if verdict.kind == VerdictKind::Deny { verdict.wait_us } else { 0 },
            reset_at_us: input.now_us.saturating_add(reset_now(strategy, input, &verdict, &metadata)),
            taken_at_us: input.now_us,
            metadata,
        }
    }

    /// Time until the quota is fully restored, from when the snapshot was taken.
    pub fn reset_after(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.reset_at_us.saturating_sub(self.taken_at_us))
    }

    /// [`wait_us`](Self::wait_us) as a duration.
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.wait_us)
    }
}

/// A strategy's capacity in unit-cost hits under `rate`, and how many of them are debt.
fn capacity(strategy: &StrategyHandle, rate: &Rate) -> (u64, u64) {
    match strategy.builtin() {
        Some(Builtin::Meter(spec)) => {
            let p = spec.params(rate);
            let hits = p.capacity_us / p.interval_us.max(1);
            let debt = match spec {
                MeterSpec::TokenBucketWithDebt { max_debt, .. } => u64::from(max_debt).min(hits),
                _ => 0,
            };
            (hits, debt)
        }
        _ => (rate.limit(), 0),
    }
}

/// Time until the quota is full again, as it stands: a peek that admits reports it after the
/// asked cost (the cost's emission intervals on a meter, a new entry on the log); a window ends
/// when it ends either way.
fn reset_now(strategy: &StrategyHandle, input: &Input, verdict: &Verdict, metadata: &Metadata) -> u64 {
    if verdict.kind != VerdictKind::Admit {
        return verdict.reset_us;
    }
    match strategy.builtin() {
        Some(Builtin::Meter(spec)) => {
            let p = spec.params(&input.rate);
            verdict.reset_us.saturating_sub(input.cost.saturating_mul(p.interval_us))
        }
        Some(Builtin::SlidingWindowLog) => match metadata.get("newest_us").and_then(serde_json::Value::as_u64) {
            Some(newest) => newest.saturating_add(input.rate.period_us()).saturating_sub(input.clock_us()),
            None => 0,
        },
        _ => verdict.reset_us,
    }
}
