//! The meter family: token buckets, leaky buckets and GCRA, all run by one virtual-scheduling
//! state machine.
//!
//! A meter stores one timestamp, the theoretical arrival time `tat`. Its fill level is
//! `max(tat - now, 0)` microseconds; every unit of cost adds the emission interval
//! `T = ceil(W / L)` (rounded up so rounding never admits more than the rate). A hit fits while
//! `level + cost·T <= capacity`. The variants differ only in their capacity and queue:
//!
//! | variant | capacity | queue |
//! |---|---|---|
//! | `TokenBucket { burst: B }` | B·T | 0 |
//! | `TokenBucketWithDebt { burst: B, max_debt: D }` | (B + D)·T | 0 |
//! | `LeakyBucket` | L·T | 0 |
//! | `LeakyBucketWithQueue { queue: Q }` | L·T | Q·T |
//! | `Gcra { tolerance: τ }` | τ + T | 0 |
//! | `Gcra` with a burst of B | B·T | 0 |
//!
//! Capacities and queues are capped at 2^50 µs (about 35 years), which keeps every value exact
//! in the doubles of Redis' Lua.
//!
//! # When the rate changes
//!
//! The state is an absolute time, so it reads the same under any rate: a meter keeps the
//! moment it drains, and its level (in microseconds) carries over. A level up to one period of
//! the new rate beyond the new `capacity + queue` still counts (a full meter of a slower rate,
//! or a clock running ahead on another instance), so a denial never waits longer than one period
//! plus one hit's cost; a level further beyond is forgiven and the meter starts empty.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::native::{Builtin, Native};
use super::{Input, Metadata, Packed, Step, Strategy, Verdict, Write, json_u64};
use crate::Rate;
use crate::clock::to_us;

/// Largest capacity or queue, in microseconds.
pub const MAX_SPAN_US: u64 = 1 << 50;

/// A meter variant and its parameters; see [`Gcra`], [`TokenBucket`] and the other meters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeterSpec {
    /// Token bucket with this burst (`None` = the rate's limit).
    TokenBucket {
        /// Bucket size in cost units.
        burst: Option<u32>,
    },
    /// Token bucket that may go `max_debt` tokens below empty.
    TokenBucketWithDebt {
        /// Bucket size in cost units (`None` = the rate's limit).
        burst: Option<u32>,
        /// How far below empty the bucket may go.
        max_debt: u32,
    },
    /// Leaky bucket meter of capacity L.
    LeakyBucket,
    /// Leaky bucket of capacity L that delays up to `queue` units of overflow.
    LeakyBucketWithQueue {
        /// Cost units that may wait for a slot.
        queue: u32,
    },
    /// GCRA with a burst tolerance in microseconds.
    Gcra {
        /// Burst tolerance τ in microseconds.
        tolerance_us: u64,
    },
    /// GCRA whose tolerance admits exactly `burst` unit-cost hits at once: τ = (burst - 1)·T.
    GcraBurst {
        /// Hits at once.
        burst: u32,
    },
}

/// A [`MeterSpec`] resolved against a rate: what the state machine (and the Lua script) needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterParams {
    /// Emission interval `T`, microseconds per unit of cost.
    pub interval_us: u64,
    /// Capacity in microseconds.
    pub capacity_us: u64,
    /// Queue length in microseconds (0 unless shaping).
    pub queue_us: u64,
    /// The rate's period in microseconds: how far beyond `capacity + queue` a stored level is
    /// still believed (a level further beyond is forgiven: the meter starts empty).
    pub period_us: u64,
}

fn span(units: u64, t: u64) -> u64 {
    units.saturating_mul(t).min(MAX_SPAN_US)
}

impl MeterSpec {
    /// Resolves the spec for `rate` (which must not be unlimited).
    #[inline]
    pub fn params(&self, rate: &Rate) -> MeterParams {
        let t = rate.emission_interval_us().max(1);
        let l = rate.limit();
        let (capacity_us, queue_us) = match *self {
            MeterSpec::TokenBucket { burst } => (span(burst.map_or(l, u64::from), t), 0),
            MeterSpec::TokenBucketWithDebt { burst, max_debt } => {
                (span(burst.map_or(l, u64::from).saturating_add(u64::from(max_debt)), t), 0)
            }
            MeterSpec::LeakyBucket => (span(l, t), 0),
            MeterSpec::LeakyBucketWithQueue { queue } => (span(l, t), span(u64::from(queue), t)),
            MeterSpec::Gcra { tolerance_us } => (tolerance_us.saturating_add(t).min(MAX_SPAN_US), 0),
            MeterSpec::GcraBurst { burst } => (span(u64::from(burst.max(1)), t), 0),
        };
        MeterParams { interval_us: t, capacity_us, queue_us, period_us: rate.period_us().min(MAX_SPAN_US) }
    }
}

/// Stored state of every meter: the theoretical arrival time in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterState {
    /// Theoretical arrival time.
    pub tat: u64,
}

/// The one meter state machine.
#[inline]
pub(crate) fn decide(p: MeterParams, state: Option<&MeterState>, now: u64, cost: u64) -> Step<MeterState> {
    let t = p.interval_us;
    let inc = cost.saturating_mul(t);
    if inc > p.capacity_us {
        return Step::unchanged(Verdict::never());
    }
    let (tat, level) = believed(p, state, now);
    let fill = level + inc;
    if fill <= p.capacity_us + p.queue_us {
        let next = tat.max(now).saturating_add(inc);
        let ttl = next - now;
        let verdict = if fill <= p.capacity_us {
            Verdict::admit(units(p.capacity_us - fill, t), ttl)
        } else {
            Verdict::delay(fill - p.capacity_us, ttl)
        };
        return Step::write(verdict, MeterState { tat: next }, ttl);
    }
    let wait = fill - p.capacity_us - p.queue_us;
    Step::unchanged(Verdict::deny(units(p.capacity_us.saturating_sub(level), t), wait, level))
}

/// Gives back `cost · T`: the theoretical arrival time moves back, never before now, and by no
/// more than the admission charged at `charged_at` can still hold: its cells end at most a
/// full meter (capacity and queue) after it was charged, and drain first, so an admission
/// refunded that late gives back nothing (later admissions keep what they took).
fn refund(p: MeterParams, s: &MeterState, charged_at: u64, input: &Input) -> Option<Write<MeterState>> {
    let now = input.clock_us();
    if s.tat <= now {
        return None;
    }
    let held = charged_at.saturating_add(p.capacity_us.saturating_add(p.queue_us)).saturating_sub(now);
    let give = input.cost.saturating_mul(p.interval_us).min(held);
    if give == 0 {
        return None;
    }
    let tat = s.tat.saturating_sub(give).max(now);
    Some(Write { state: MeterState { tat }, ttl_us: (tat - now).max(1) })
}

/// The stored theoretical arrival time and the fill level it means at `now`, as far as they
/// can be believed under the current parameters. The level is at most `capacity + queue` when
/// written at this rate; a level more than one period of the rate beyond that was written under
/// a slower rate (or is corrupt) and is forgiven: the meter reads as empty. Within that period
/// the level counts in full, so a clock that runs up to a period behind another instance's
/// never admits more than it would have.
#[inline]
fn believed(p: MeterParams, state: Option<&MeterState>, now: u64) -> (u64, u64) {
    let tat = state.map_or(0, |s| s.tat);
    let level = tat.saturating_sub(now);
    if level > p.capacity_us + p.queue_us + p.period_us { (0, 0) } else { (tat, level) }
}

/// Whole cost units in `span` microseconds; skips the division when the answer is 0 (a meter
/// running at its limit, the common case under load).
fn units(span: u64, t: u64) -> u64 {
    if span < t { 0 } else { span / t }
}

fn meter_metadata(p: MeterParams, state: Option<&MeterState>, now: u64) -> Metadata {
    let (tat, level) = believed(p, state, now);
    let mut m = Metadata::new();
    m.insert("tat_us".into(), json_u64(tat.max(now)));
    m.insert("level_us".into(), json_u64(level));
    m.insert("capacity_us".into(), json_u64(p.capacity_us));
    m.insert("interval_us".into(), json_u64(p.interval_us));
    m
}

macro_rules! meter_strategy {
    ($ty:ident, $name:literal) => {
        impl Strategy for $ty {
            type State = MeterState;

            fn name(&self) -> &str {
                $name
            }

            #[inline]
            fn decide(&self, state: Option<&MeterState>, input: &Input) -> Step<MeterState> {
                decide(self.spec().params(&input.rate), state, input.clock_us(), input.cost)
            }

            fn metadata(&self, state: Option<&MeterState>, input: &Input) -> Metadata {
                let p = self.spec().params(&input.rate);
                let mut m = meter_metadata(p, state, input.clock_us());
                self.extra_metadata(&mut m, p, state, input);
                m
            }

            fn refund(&self, s: &MeterState, charged_at_us: u64, input: &Input) -> Option<Write<MeterState>> {
                refund(self.spec().params(&input.rate), s, charged_at_us, input)
            }
        }

        impl Native for $ty {
            fn builtin(&self) -> Builtin {
                Builtin::Meter(self.spec())
            }

            fn pack(&self, s: &MeterState) -> Option<Packed> {
                Some(Packed([s.tat, 0]))
            }

            fn unpack(&self, p: Packed) -> Option<MeterState> {
                Some(MeterState { tat: p.0[0] })
            }
        }
    };
}

/// Tokens refill at the rate's pace up to `burst`; a hit needs `cost` tokens.
/// Any interval of length t admits at most `burst + r·t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    burst: Option<u32>,
}

impl TokenBucket {
    /// A bucket as large as the rate's limit.
    pub const fn new() -> Self {
        TokenBucket { burst: None }
    }

    /// A bucket of `burst` tokens.
    pub const fn with_burst(burst: u32) -> Self {
        TokenBucket { burst: Some(burst) }
    }

    fn spec(&self) -> MeterSpec {
        MeterSpec::TokenBucket { burst: self.burst }
    }

    fn extra_metadata(&self, m: &mut Metadata, p: MeterParams, state: Option<&MeterState>, input: &Input) {
        let (_, level) = believed(p, state, input.clock_us());
        let tokens = (p.capacity_us - level.min(p.capacity_us)) as f64 / p.interval_us as f64;
        m.insert("tokens".into(), tokens.into());
        m.insert("burst".into(), json_u64(p.capacity_us / p.interval_us));
    }
}
meter_strategy!(TokenBucket, "tb");

/// A token bucket that lends up to `max_debt` tokens: admits iff `tokens - cost >= -max_debt`.
/// Any interval of length t admits at most `burst + max_debt + r·t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucketWithDebt {
    burst: Option<u32>,
    max_debt: u32,
}

impl TokenBucketWithDebt {
    /// A bucket as large as the rate's limit that may owe `max_debt` tokens.
    pub const fn new(max_debt: u32) -> Self {
        TokenBucketWithDebt { burst: None, max_debt }
    }

    /// A bucket of `burst` tokens that may owe `max_debt` tokens.
    pub const fn with_burst(burst: u32, max_debt: u32) -> Self {
        TokenBucketWithDebt { burst: Some(burst), max_debt }
    }

    fn spec(&self) -> MeterSpec {
        MeterSpec::TokenBucketWithDebt { burst: self.burst, max_debt: self.max_debt }
    }

    fn extra_metadata(&self, m: &mut Metadata, p: MeterParams, state: Option<&MeterState>, input: &Input) {
        let (_, level) = believed(p, state, input.clock_us());
        let burst_us = p.capacity_us.saturating_sub(span(u64::from(self.max_debt), p.interval_us));
        let tokens = (burst_us as f64 - level as f64) / p.interval_us as f64;
        m.insert("tokens".into(), tokens.into());
        m.insert("debt".into(), (-tokens).max(0.0).into());
        m.insert("max_debt".into(), json_u64(u64::from(self.max_debt)));
    }
}
meter_strategy!(TokenBucketWithDebt, "tbd");

/// A meter of capacity L leaking at the rate's pace; a hit adds its cost. Smooths traffic to
/// the rate after an initial burst of at most L.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakyBucket;

impl LeakyBucket {
    fn spec(&self) -> MeterSpec {
        MeterSpec::LeakyBucket
    }

    fn extra_metadata(&self, m: &mut Metadata, p: MeterParams, state: Option<&MeterState>, input: &Input) {
        let (_, level) = believed(p, state, input.clock_us());
        m.insert("level".into(), (level as f64 / p.interval_us as f64).into());
    }
}
meter_strategy!(LeakyBucket, "lb");

/// Traffic shaping: a leaky bucket of capacity L whose overflow waits in a queue of `queue`
/// cost units. A hit that finds the bucket full but the queue open is admitted with a delay
/// ([`VerdictKind::Delay`](super::VerdictKind::Delay)): the integration holds it until its
/// slot, so releases are spaced by `cost / r`. Beyond the queue, hits are denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakyBucketWithQueue {
    queue: u32,
}

impl LeakyBucketWithQueue {
    /// A bucket whose overflow queue holds `queue` cost units.
    pub const fn new(queue: u32) -> Self {
        LeakyBucketWithQueue { queue }
    }

    fn spec(&self) -> MeterSpec {
        MeterSpec::LeakyBucketWithQueue { queue: self.queue }
    }

    fn extra_metadata(&self, m: &mut Metadata, p: MeterParams, state: Option<&MeterState>, input: &Input) {
        let (_, level) = believed(p, state, input.clock_us());
        m.insert("level".into(), (level as f64 / p.interval_us as f64).into());
        m.insert("queued".into(), (level.saturating_sub(p.capacity_us) as f64 / p.interval_us as f64).into());
        m.insert("queue".into(), json_u64(u64::from(self.queue)));
    }
}
meter_strategy!(LeakyBucketWithQueue, "lbq");

/// Generic cell rate algorithm: one timestamp per key, hits spaced by `T = W / L` with a burst
/// tolerance τ. A hit of cost c is admitted iff all its c cells conform, i.e.
/// `level + c·T <= τ + T`; the wait of a denial excludes the tolerance (it is the time until the
/// last cell conforms).
///
/// Say the burst in hits with [`with_burst`](Self::with_burst): `T` is rounded up to whole
/// microseconds (at 3/s it is 333,334 µs), so a tolerance computed from the exact interval
/// (two thirds of a second for a burst of 3) falls short of the burst by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    tolerance_us: u64,
    /// A burst in hits; the tolerance is then `(burst - 1)·T` of whatever rate applies.
    burst: Option<u32>,
}

impl Gcra {
    /// Perfectly smooth: one unit of cost per emission interval.
    pub const fn new() -> Self {
        Gcra { tolerance_us: 0, burst: None }
    }

    /// With a burst tolerance.
    pub fn with_tolerance(tolerance: Duration) -> Self {
        Gcra { tolerance_us: to_us(tolerance), burst: None }
    }

    /// Exactly `burst` unit-cost hits at once from a full tolerance, then one per emission
    /// interval: the tolerance is `(burst - 1)·T` of the rate in force, so it follows the rate
    /// when it changes. A burst of 0 or 1 is [`Gcra::new`].
    ///
    /// ```
    /// use traffik::strategy::{Gcra, Input, Strategy, VerdictKind};
    /// use traffik::rate;
    /// let gcra = Gcra::with_burst(3);
    /// let input = Input { now_us: 0, rate: rate!("3/s"), cost: 1 };
    /// let mut state = None;
    /// let mut admitted = 0;
    /// for _ in 0..5 {
    ///     let step = gcra.decide(state.as_ref(), &input);
    ///     if step.verdict.kind == VerdictKind::Admit {
    ///         admitted += 1;
    ///     }
    ///     if let Some(w) = step.write {
    ///         state = Some(w.state);
    ///     }
    /// }
    /// assert_eq!(admitted, 3);
    /// ```
    pub const fn with_burst(burst: u32) -> Self {
        Gcra { tolerance_us: 0, burst: if burst > 1 { Some(burst) } else { None } }
    }

    fn spec(&self) -> MeterSpec {
        match self.burst {
            Some(burst) => MeterSpec::GcraBurst { burst },
            None => MeterSpec::Gcra { tolerance_us: self.tolerance_us },
        }
    }

    fn extra_metadata(&self, m: &mut Metadata, p: MeterParams, _s: Option<&MeterState>, _i: &Input) {
        m.insert("tolerance_us".into(), json_u64(p.capacity_us.saturating_sub(p.interval_us)));
        if let Some(burst) = self.burst {
            m.insert("burst".into(), json_u64(u64::from(burst)));
        }
    }
}
meter_strategy!(Gcra, "gcra");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    fn p(spec: MeterSpec, r: Rate) -> MeterParams {
        spec.params(&r)
    }

    /// A refund gives back no more than its admission still holds: an old admission whose
    /// cells have drained gives nothing back, whatever later admissions took.
    #[test]
    fn a_late_refund_takes_nothing_from_later_admissions() {
        let r = rate!("4/s");
        let bucket = TokenBucket::new();
        let t0 = 1_000_000_000;
        let hit = |s: Option<&MeterState>, now: u64| {
            bucket.decide(s, &Input { now_us: now, rate: r, cost: 1 }).write.map(|w| w.state)
        };
        let old = hit(None, t0).unwrap();
        // Two seconds later (the bucket refills in one), four more hits empty it.
        let mut s = old;
        for _ in 0..4 {
            s = hit(Some(&s), t0 + 2_000_000).unwrap();
        }
        let later = Input { now_us: t0 + 2_000_000, rate: r, cost: 1 };
        assert_eq!(bucket.refund(&s, t0, &later), None, "the old admission holds nothing any more");
        // The latest admission gives its token back.
        let back = bucket.refund(&s, t0 + 2_000_000, &later).unwrap();
        assert_eq!(back.state.tat, s.tat - 250_000);
        // 900 ms after the admission that filled the bucket, its cells (the last 250 ms of a
        // one-second bucket) are still held for 100 ms: that is all it gives back.
        let partly = Input { now_us: t0 + 2_000_000 + 900_000, rate: r, cost: 1 };
        let w = bucket.refund(&s, t0 + 2_000_000, &partly).unwrap();
        assert_eq!(w.state.tat, s.tat - 100_000, "only what it still holds: 100 ms of its 250");
    }

    /// Unit-cost hits admitted at one instant from an empty meter.
    fn burst_of(spec: MeterSpec, r: Rate) -> u32 {
        let params = p(spec, r);
        let mut s: Option<MeterState> = None;
        let mut admitted = 0;
        for _ in 0..100 {
            let step = decide(params, s.as_ref(), 1_000_000, 1);
            if step.verdict.kind != VerdictKind::Admit {
                break;
            }
            admitted += 1;
            s = step.write.map(|w| w.state);
        }
        admitted
    }

    #[test]
    fn gcra_with_burst_admits_exactly_the_burst_asked_for() {
        // The pitfall: at 3/s the interval rounds up to 333,334 µs, so a tolerance of two exact
        // thirds of a second gives a burst of 2, not 3.
        let two_thirds = MeterSpec::Gcra { tolerance_us: 666_666 };
        assert_eq!(burst_of(two_thirds, rate!("3/s")), 2);
        for (burst, r) in [(3, rate!("3/s")), (1, rate!("3/s")), (7, rate!("100/min")), (10, rate!("7/13s"))] {
            assert_eq!(burst_of(Gcra::with_burst(burst).spec(), r), burst, "burst {burst} at {r}");
        }
        assert_eq!(Gcra::with_burst(0), Gcra::new());
        assert_eq!(Gcra::with_burst(1), Gcra::new());
        // After the burst, one hit per interval.
        let params = p(Gcra::with_burst(3).spec(), rate!("3/s"));
        let mut s = None;
        for _ in 0..3 {
            s = decide(params, s.as_ref(), 0, 1).write.map(|w| w.state);
        }
        assert_eq!(decide(params, s.as_ref(), 0, 1).verdict.kind, VerdictKind::Deny);
        assert_eq!(decide(params, s.as_ref(), 333_334, 1).verdict.kind, VerdictKind::Admit);
    }

    #[test]
    fn token_bucket_bursts_then_refills_one_interval_per_token() {
        let params = p(MeterSpec::TokenBucket { burst: Some(2) }, rate!("4/s"));
        let mut s = None;
        let mut hit = |now| {
            let step = decide(params, s.as_ref(), now, 1);
            if let Some(w) = step.write {
                s = Some(w.state);
            }
            step.verdict
        };
        assert_eq!(hit(0).kind, VerdictKind::Admit);
        assert_eq!(hit(0).kind, VerdictKind::Admit);
        let v = hit(0);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 250_000));
        assert_eq!(hit(249_999).kind, VerdictKind::Deny);
        assert_eq!(hit(250_000).kind, VerdictKind::Admit);
    }

    #[test]
    fn gcra_without_tolerance_is_perfectly_spaced_and_wait_excludes_tolerance() {
        let params = p(MeterSpec::Gcra { tolerance_us: 0 }, rate!("10/s"));
        let s1 = decide(params, None, 0, 1).write.unwrap().state;
        let v = decide(params, Some(&s1), 30_000, 1).verdict;
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 70_000));
        let tol = p(MeterSpec::Gcra { tolerance_us: 150_000 }, rate!("10/s"));
        assert_eq!(decide(tol, Some(&s1), 30_000, 1).verdict.kind, VerdictKind::Admit);
        let v = decide(tol, Some(&s1), 30_000, 2).verdict;
        // level 70 ms + 2 cells (200 ms) must fit τ + T = 250 ms: wait 20 ms, not 20 + τ.
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 20_000));
        assert_eq!(decide(tol, Some(&s1), 50_000, 2).verdict.kind, VerdictKind::Admit);
        assert_eq!(decide(tol, None, 0, 3).verdict.kind, VerdictKind::Never);
    }

    #[test]
    fn queue_delays_overflow_then_denies() {
        let params = p(MeterSpec::LeakyBucketWithQueue { queue: 2 }, rate!("2/s"));
        let mut s = None;
        let mut kinds = vec![];
        for _ in 0..5 {
            let step = decide(params, s.as_ref(), 0, 1);
            if let Some(w) = step.write {
                s = Some(w.state);
            }
            kinds.push((step.verdict.kind, step.verdict.wait_us));
        }
        assert_eq!(
            kinds,
            vec![
                (VerdictKind::Admit, 0),
                (VerdictKind::Admit, 0),
                (VerdictKind::Delay, 500_000),
                (VerdictKind::Delay, 1_000_000),
                (VerdictKind::Deny, 500_000),
            ]
        );
    }

    #[test]
    fn debt_extends_the_bucket() {
        let params = p(MeterSpec::TokenBucketWithDebt { burst: Some(2), max_debt: 3 }, rate!("1/s"));
        assert_eq!(params.capacity_us, 5_000_000);
        assert_eq!(decide(params, None, 0, 5).verdict.kind, VerdictKind::Admit);
        assert_eq!(decide(params, None, 0, 6).verdict.kind, VerdictKind::Never);
    }
}
