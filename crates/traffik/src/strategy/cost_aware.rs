//! Cost-aware token bucket: a token bucket whose refill slows while the average admitted cost
//! is above a reference cost.

use serde::{Deserialize, Serialize};

use super::fixed_window::{TIME_BITS, TIME_MASK};
use super::meter::{MeterParams, MeterSpec};
use super::native::{Builtin, Native};
use super::params::{ParamError, positive};
use super::{Input, Metadata, Packed, Step, Strategy, Verdict, Write, json_u64};

/// Averages and the slowdown are kept in thousandths (integers, exact in Lua's doubles).
const MILLI: u64 = 1000;
/// The largest slowdown, in thousandths: with capacities capped at 2^50 µs, a hit's charge stays
/// below 2^53 µs.
const MAX_SLOWDOWN_MILLI: u64 = 4 * MILLI;
/// The longest averaging window, in hits.
const MAX_WINDOW: u32 = 1000;
/// The largest reference cost.
const MAX_REFERENCE: f64 = u32::MAX as f64;

/// The parameters of a [`CostAwareTokenBucket`], as the state machine (and the Lua script) use
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CostAwareSpec {
    /// Burst B (`None`: the limit).
    pub burst: Option<u32>,
    /// Reference cost c0, in thousandths of a unit (at least 1).
    pub reference_milli: u64,
    /// Largest slowdown M, in thousandths (1000 to 4000).
    pub max_slowdown_milli: u64,
    /// Averaging window N in admitted hits (1 to 1000): the weight of a new cost is 2/(N + 1).
    pub window: u32,
}

impl CostAwareSpec {
    /// The token bucket this one never admits more than.
    pub fn plain(&self) -> MeterSpec {
        MeterSpec::TokenBucket { burst: self.burst }
    }

    /// The average after admitting `cost`: `floor((avg·(N - 1) + 2·cost·1000) / (N + 1))`, in
    /// thousandths.
    pub fn average_after(&self, avg_milli: u64, cost: u64) -> u64 {
        let n = u64::from(self.window.clamp(1, MAX_WINDOW));
        // A hit costing the average leaves it where it is: `(a·(n-1) + 2a) / (n+1) = a` exactly
        // when nothing saturates. The common case (steady costs), without the division.
        if cost.checked_mul(MILLI) == Some(avg_milli) && avg_milli.checked_mul(n + 1).is_some() {
            return avg_milli;
        }
        avg_milli.saturating_mul(n - 1).saturating_add(cost.saturating_mul(2 * MILLI)) / (n + 1)
    }

    /// The slowdown for an average: `clamp(avg / c0, 1, M)`, in thousandths (rounded down).
    pub fn slowdown_milli(&self, avg_milli: u64) -> u64 {
        // At or below the reference cost there is no slowdown (the quotient is at most 1000,
        // and the clamp's floor is 1000): the common case, without the division.
        if avg_milli <= self.reference_milli {
            return MILLI;
        }
        let top = self.max_slowdown_milli.clamp(MILLI, MAX_SLOWDOWN_MILLI);
        (avg_milli.saturating_mul(MILLI) / self.reference_milli.max(1)).clamp(MILLI, top)
    }
}

/// The time a unit of cost takes to refill under a slowdown of `f` thousandths:
/// `ceil(T · f / 1000)`, worked out without products beyond 2^53.
fn slowed_interval(t: u64, f: u64) -> u64 {
    if f == MILLI {
        // No slowdown: the expression below is exactly `t`.
        return t;
    }
    (t / MILLI).saturating_mul(f).saturating_add(((t % MILLI) * f).div_ceil(MILLI))
}

/// A token bucket (burst B, default L, refilled at r = L/W) whose refill slows while the
/// average admitted cost is high. A hit of cost c is admitted iff the bucket holds c tokens,
/// exactly as [`TokenBucket`](super::TokenBucket) decides; what differs is what it takes out:
///
/// * the average admitted cost is an exponentially weighted average over about N hits,
///   `avg ← avg + (2 / (N + 1)) · (c - avg)` on each admission (kept in thousandths, rounded
///   down), starting at the reference cost c0 whenever the bucket is full (a new or idle key);
/// * the slowdown is `f = clamp(avg / c0, 1, M)`;
/// * an admitted hit takes `c · ceil(T · f)` microseconds of refill (T = ceil(W / L)), so
///   its tokens come back `f` times slower: while the average stays at or below c0 this is a
///   plain token bucket, and at an average of `f · c0` the refill rate is `r / f`.
///
/// Since every hit still needs c tokens and takes out at least `c · T`, it never admits more
/// than a plain token bucket with the same burst: any interval t admits at most `B + r·t`.
/// Denied hits consume nothing and do not move the average; a denial's wait is exact (until c
/// tokens are back). A cost above B is never admitted. The wait can reach `M · B · T`.
///
/// State outlives its rate like every meter's: the bucket's level is a time (the theoretical
/// arrival time) and the average is in units of cost, so both read the same under another
/// rate; a level more than a period beyond `M · B · T` of the new rate is forgiven.
///
/// ```
/// use traffik::strategy::{CostAwareTokenBucket, Input, Strategy, VerdictKind};
/// use traffik::rate;
///
/// // 10/s with a burst of 10; the average follows the latest cost alone (a window of 1 hit).
/// let bucket = CostAwareTokenBucket::builder().window(1).max_slowdown(4.0).build()?;
/// let at = |cost| Input { now_us: 0, rate: rate!("10/s"), cost };
/// // A hit of cost 4 (average 4, four times the reference cost of 1) takes 4 · 400 ms of
/// // refill, not 400 ms: a second one waits a second, where a plain token bucket (6 tokens
/// // left) would admit it at once.
/// let first = bucket.decide(None, &at(4));
/// assert!(first.verdict.is_admitted());
/// let second = bucket.decide(first.write.as_ref().map(|w| &w.state), &at(4));
/// assert_eq!((second.verdict.kind, second.verdict.wait_us), (VerdictKind::Deny, 1_000_000));
/// # Ok::<(), traffik::strategy::ParamError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostAwareTokenBucket {
    spec: CostAwareSpec,
}

/// Builds a [`CostAwareTokenBucket`]; see [`CostAwareTokenBucket::builder`].
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct CostAwareBuilder {
    burst: Option<u32>,
    reference: f64,
    max_slowdown: f64,
    window: u32,
}

impl CostAwareBuilder {
    /// Burst B in units of cost (default: the limit). 0 is refused.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The reference cost c0 (default 1): the average at or below which the refill is not
    /// slowed. Finite and positive, at most 2^32 - 1; kept in thousandths.
    pub fn reference_cost(mut self, cost: f64) -> Self {
        self.reference = cost;
        self
    }

    /// The largest slowdown M (default 4), from 1 (a plain token bucket) to 4; kept in
    /// thousandths.
    pub fn max_slowdown(mut self, factor: f64) -> Self {
        self.max_slowdown = factor;
        self
    }

    /// The averaging window N in admitted hits (default 10), 1 to 1000.
    pub fn window(mut self, hits: u32) -> Self {
        self.window = hits;
        self
    }

    /// The strategy, or a [`ParamError`]: a burst or window of 0, a reference cost or slowdown
    /// that is NaN, infinite, negative or zero, or a value out of its range.
    pub fn build(self) -> Result<CostAwareTokenBucket, ParamError> {
        if self.burst == Some(0) {
            return Err(ParamError::Zero { name: "burst" });
        }
        if self.window == 0 {
            return Err(ParamError::Zero { name: "window" });
        }
        if self.window > MAX_WINDOW {
            return Err(ParamError::OutOfRange { name: "window", range: "1 to 1000 hits" });
        }
        let reference = positive("reference_cost", self.reference)?;
        let reference_milli = (reference * MILLI as f64).round();
        if !(1.0..=MAX_REFERENCE * MILLI as f64).contains(&reference_milli) {
            return Err(ParamError::OutOfRange { name: "reference_cost", range: "0.001 to 4294967295" });
        }
        let slowdown = positive("max_slowdown", self.max_slowdown)?;
        if !(1.0..=4.0).contains(&slowdown) {
            return Err(ParamError::OutOfRange { name: "max_slowdown", range: "1 to 4" });
        }
        Ok(CostAwareTokenBucket {
            spec: CostAwareSpec {
                burst: self.burst,
                // Both within range, checked above: the conversions are exact.
                reference_milli: reference_milli as u64,
                max_slowdown_milli: (slowdown * MILLI as f64).round() as u64,
                window: self.window,
            },
        })
    }
}

impl CostAwareTokenBucket {
    /// Starts a cost-aware token bucket (defaults: burst L, reference cost 1, slowdown up to 4,
    /// averaged over 10 hits).
    pub fn builder() -> CostAwareBuilder {
        CostAwareBuilder { burst: None, reference: 1.0, max_slowdown: 4.0, window: 10 }
    }

    /// The parameters.
    pub const fn spec(&self) -> CostAwareSpec {
        self.spec
    }

    fn params(&self, input: &Input) -> MeterParams {
        self.spec.plain().params(&input.rate)
    }

    /// The stored state as it reads at `now`: theoretical arrival time, level and average. A
    /// full bucket (level 0) starts the average afresh; a level more than a period beyond the
    /// largest one this rate can leave is forgiven.
    fn believed(&self, p: MeterParams, s: Option<&CostAwareState>, now: u64) -> (u64, u64, u64) {
        let fresh = (now, 0, self.spec.reference_milli);
        let Some(s) = s else { return fresh };
        let level = s.tat.saturating_sub(now);
        let most = p.capacity_us.saturating_mul(MAX_SLOWDOWN_MILLI / MILLI).saturating_add(p.period_us);
        if level == 0 || level > most { fresh } else { (s.tat, level, s.avg_milli) }
    }
}

/// Stored state of [`CostAwareTokenBucket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostAwareState {
    /// Theoretical arrival time: when the bucket is full again, microseconds since the epoch.
    pub tat: u64,
    /// Average admitted cost, thousandths of a unit.
    pub avg_milli: u64,
    /// The average before the latest admission (so that a refund restores it exactly).
    pub prev_avg_milli: u64,
}

impl Strategy for CostAwareTokenBucket {
    type State = CostAwareState;

    fn name(&self) -> &str {
        "catb"
    }

    fn decide(&self, state: Option<&CostAwareState>, input: &Input) -> Step<CostAwareState> {
        let p = self.params(input);
        let t = p.interval_us;
        let need = input.cost.saturating_mul(t);
        if need > p.capacity_us {
            return Step::unchanged(Verdict::never());
        }
        let now = input.clock_us();
        let (tat, level, avg) = self.believed(p, state, now);
        if level + need <= p.capacity_us {
            let next_avg = self.spec.average_after(avg, input.cost);
            let charge = input.cost.saturating_mul(slowed_interval(t, self.spec.slowdown_milli(next_avg)));
            let next = tat.max(now).saturating_add(charge);
            let ttl = next - now;
            let remaining = p.capacity_us.saturating_sub(ttl) / t;
            let state = CostAwareState { tat: next, avg_milli: next_avg, prev_avg_milli: avg };
            Step::write(Verdict::admit(remaining, ttl), state, ttl)
        } else {
            let remaining = p.capacity_us.saturating_sub(level) / t;
            Step::unchanged(Verdict::deny(remaining, level + need - p.capacity_us, level))
        }
    }

    fn metadata(&self, state: Option<&CostAwareState>, input: &Input) -> Metadata {
        let p = self.params(input);
        let now = input.clock_us();
        let (tat, level, avg) = self.believed(p, state, now);
        let slowdown = self.spec.slowdown_milli(avg);
        let mut m = Metadata::new();
        m.insert("strategy".into(), "cost_aware_token_bucket".into());
        m.insert("tat_us".into(), json_u64(tat.max(now)));
        m.insert("level_us".into(), json_u64(level));
        m.insert("capacity_us".into(), json_u64(p.capacity_us));
        m.insert("interval_us".into(), json_u64(p.interval_us));
        m.insert("average_cost_milli".into(), json_u64(avg));
        m.insert("reference_cost_milli".into(), json_u64(self.spec.reference_milli));
        m.insert("slowdown_milli".into(), json_u64(slowdown));
        m.insert("refill_interval_us".into(), json_u64(slowed_interval(p.interval_us, slowdown)));
        m
    }

    /// As the meters (never more than the admission charged at `charged_at_us` can still hold:
    /// at most four capacities, the slowest refill, after it was charged), with the slowed
    /// refill of the stored average; the average goes back to the one before the latest
    /// admission.
    fn refund(&self, s: &CostAwareState, charged_at_us: u64, input: &Input) -> Option<Write<CostAwareState>> {
        let now = input.clock_us();
        if s.tat <= now {
            return None;
        }
        let p = self.params(input);
        let span = p.capacity_us.saturating_mul(MAX_SLOWDOWN_MILLI / MILLI);
        let held = charged_at_us.saturating_add(span).saturating_sub(now);
        let charge = input.cost.saturating_mul(slowed_interval(p.interval_us, self.spec.slowdown_milli(s.avg_milli)));
        let give = charge.min(held);
        if give == 0 {
            return None;
        }
        let tat = s.tat.saturating_sub(give).max(now);
        let state = CostAwareState { tat, avg_milli: s.prev_avg_milli, prev_avg_milli: s.prev_avg_milli };
        Some(Write { state, ttl_us: (tat - now).max(1) })
    }
}

impl Native for CostAwareTokenBucket {
    fn builtin(&self) -> Builtin {
        Builtin::CostAware(self.spec)
    }

    /// `[tat | avg << 53 (its low 11 bits), avg >> 11 << 37 | prev]`: times below 2^53 µs and
    /// averages below 2^37 thousandths pack; others are boxed.
    #[inline]
    fn pack(&self, s: &CostAwareState) -> Option<Packed> {
        if s.tat > TIME_MASK || s.avg_milli >> AVG_BITS != 0 || s.prev_avg_milli >> AVG_BITS != 0 {
            return None;
        }
        let low = s.avg_milli & ((1 << (64 - TIME_BITS)) - 1);
        Some(Packed([s.tat | low << TIME_BITS, (s.avg_milli >> (64 - TIME_BITS)) << AVG_BITS | s.prev_avg_milli]))
    }

    #[inline]
    fn unpack(&self, p: Packed) -> Option<CostAwareState> {
        let avg_milli = (p.0[1] >> AVG_BITS) << (64 - TIME_BITS) | p.0[0] >> TIME_BITS;
        Some(CostAwareState { tat: p.0[0] & TIME_MASK, avg_milli, prev_avg_milli: p.0[1] & ((1 << AVG_BITS) - 1) })
    }
}

/// Averages below 2^37 thousandths (about 137 million units) pack.
const AVG_BITS: u32 = 37;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    /// The shortcuts (steady costs, no slowdown) answer exactly what the formulas do.
    #[test]
    fn shortcuts_agree_with_the_formulas() {
        let values = [0, 1, 2, 999, 1_000, 1_001, 1_500, 4_000, 1 << 40, u64::MAX / 1_000, u64::MAX / 3, u64::MAX];
        for window in [1, 2, 10, 1_000] {
            for reference_milli in [0, 1, 1_000, 1_500, 1 << 40] {
                let spec = CostAwareSpec { burst: None, reference_milli, max_slowdown_milli: 4_000, window };
                let n = u64::from(window);
                for avg in values {
                    let top = spec.max_slowdown_milli.clamp(MILLI, MAX_SLOWDOWN_MILLI);
                    let slowdown = (avg.saturating_mul(MILLI) / reference_milli.max(1)).clamp(MILLI, top);
                    assert_eq!(spec.slowdown_milli(avg), slowdown, "avg {avg}, reference {reference_milli}");
                    for cost in [0, 1, 2, 1_000, u64::MAX / 1_000, u64::MAX] {
                        let formula =
                            avg.saturating_mul(n - 1).saturating_add(cost.saturating_mul(2 * MILLI)) / (n + 1);
                        assert_eq!(spec.average_after(avg, cost), formula, "avg {avg}, cost {cost}, n {n}");
                    }
                }
            }
        }
        for t in [1, 999, 1_000, 1_001, 333_334, u64::MAX] {
            for f in [MILLI, 1_001, 2_500, 4_000] {
                let formula = (t / MILLI).saturating_mul(f).saturating_add(((t % MILLI) * f).div_ceil(MILLI));
                assert_eq!(slowed_interval(t, f), formula, "t {t}, f {f}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        let b = CostAwareTokenBucket::builder;
        assert_eq!(b().window(0).build(), Err(ParamError::Zero { name: "window" }));
        assert_eq!(b().burst(0).build(), Err(ParamError::Zero { name: "burst" }));
        assert_eq!(b().reference_cost(f64::NAN).build(), Err(ParamError::NotFinite { name: "reference_cost" }));
        assert_eq!(b().reference_cost(f64::INFINITY).build(), Err(ParamError::NotFinite { name: "reference_cost" }));
        assert_eq!(b().reference_cost(-1.0).build(), Err(ParamError::Negative { name: "reference_cost" }));
        assert_eq!(b().reference_cost(0.0).build(), Err(ParamError::Zero { name: "reference_cost" }));
        assert_eq!(b().max_slowdown(-2.0).build(), Err(ParamError::Negative { name: "max_slowdown" }));
        assert_eq!(b().max_slowdown(f64::NAN).build(), Err(ParamError::NotFinite { name: "max_slowdown" }));
        assert!(matches!(b().max_slowdown(0.5).build(), Err(ParamError::OutOfRange { .. })));
        assert!(matches!(b().window(1001).build(), Err(ParamError::OutOfRange { .. })));
        assert!(matches!(b().reference_cost(0.0001).build(), Err(ParamError::OutOfRange { .. })));
        let spec = b().reference_cost(2.5).max_slowdown(1.5).window(3).build().map(|s| s.spec());
        assert_eq!(spec, Ok(CostAwareSpec { burst: None, reference_milli: 2500, max_slowdown_milli: 1500, window: 3 }));
    }

    #[test]
    fn states_pack_exactly_or_not_at_all() {
        let q = CostAwareTokenBucket::builder().build().unwrap();
        let top = (1 << AVG_BITS) - 1;
        for s in [
            CostAwareState { tat: 0, avg_milli: 0, prev_avg_milli: 0 },
            CostAwareState { tat: TIME_MASK, avg_milli: top, prev_avg_milli: top },
            CostAwareState { tat: 1_700_000_000_123_456, avg_milli: 4_321, prev_avg_milli: 1_000 },
        ] {
            assert_eq!(q.pack(&s).and_then(|p| q.unpack(p)), Some(s));
        }
        for s in [
            CostAwareState { tat: TIME_MASK + 1, avg_milli: 0, prev_avg_milli: 0 },
            CostAwareState { tat: 0, avg_milli: top + 1, prev_avg_milli: 0 },
            CostAwareState { tat: 0, avg_milli: 0, prev_avg_milli: top + 1 },
        ] {
            assert_eq!(q.pack(&s), None, "{s:?}");
        }
    }

    #[test]
    fn the_average_and_the_slowdown_follow_the_documented_formula() {
        let spec = CostAwareTokenBucket::builder().window(3).build().map(|s| s.spec()).unwrap();
        // (1000·2 + 2·5·1000) / 4 = 3000.
        assert_eq!(spec.average_after(1000, 5), 3000);
        assert_eq!(spec.slowdown_milli(3000), 3000);
        assert_eq!(spec.slowdown_milli(500), 1000);
        assert_eq!(spec.slowdown_milli(9000), 4000);
        assert_eq!(slowed_interval(100_000, 3000), 300_000);
        assert_eq!(slowed_interval(333_334, 1500), 500_001);
    }

    #[test]
    fn unit_costs_refill_like_a_plain_token_bucket_and_heavy_ones_slower() {
        let q = CostAwareTokenBucket::builder().window(1).build().unwrap();
        let r = rate!("10/s");
        let run = |costs: &[u64]| {
            let mut s = None;
            let mut last = Verdict::never();
            for &c in costs {
                let step = q.decide(s.as_ref(), &Input { now_us: 1_000_000, rate: r, cost: c });
                if let Some(w) = step.write {
                    s = Some(w.state);
                }
                last = step.verdict;
            }
            last
        };
        // Ten unit hits empty the bucket; the eleventh waits one interval.
        let v = run(&[1; 11]);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 100_000));
        // A hit of 4 (average 4: four times slower) takes 1,600 ms of refill; the next hit of 4
        // waits until its 4 tokens are back: the level falls from 1.6 s to 0.6 s.
        let v = run(&[4, 4]);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 1_000_000));
    }
}
