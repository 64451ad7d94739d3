//! Quota with rollover: epoch-aligned periods of L, and what a period leaves unused rolls into
//! the next one, up to a cap.

use serde::{Deserialize, Serialize};

use super::fixed_window::{TIME_BITS, TIME_MASK, window_start};
use super::native::{Builtin, Native};
use super::params::ParamError;
use super::{Input, Metadata, Packed, Step, Strategy, Verdict, Write, json_u64};

/// How much unused quota may roll over: the smaller of an absolute cap and a percentage of the
/// limit, and never more than the limit itself (rolled-over quota is spent first and never
/// rolls over again, so at most one period's quota is carried).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RolloverSpec {
    /// Absolute cap in units of cost (`None`: no absolute cap).
    pub max: Option<u64>,
    /// Cap as a percentage of the limit, 0 to 100 (`None`: no percentage cap).
    pub percent: Option<u32>,
}

impl RolloverSpec {
    /// The cap `R` under a limit of `limit`: `min(limit, max, floor(limit · percent / 100))`.
    pub fn cap(&self, limit: u64) -> u64 {
        let mut cap = limit;
        if let Some(max) = self.max {
            cap = cap.min(max);
        }
        if let Some(p) = self.percent {
            cap = cap.min(limit.saturating_mul(u64::from(p.min(100))) / 100);
        }
        cap
    }
}

/// A quota of L per epoch-aligned period of the rate, where the quota a period leaves unused
/// rolls into the next period, up to a cap R ([`RolloverSpec::cap`]). A period starts with an
/// allowance of `L + rollover`; a hit is admitted iff `used + cost <= L + rollover`. The
/// rollover into a period is `min(R, L + rollover_before - used_before)` of the period before
/// it: quota rolled over is spent first, so what rolls on is at most the unused part of L.
/// A period with no usage at all rolls over its whole unused quota, up to R; so does a client
/// never seen before (or idle for two periods or more): it starts with `L + R`. A cost above
/// `L + R` is never admitted. Any aligned period admits at most `L + R`.
///
/// `stat` shows the rollover of the current period as soon as it starts, before any hit.
/// Denied hits consume nothing; the wait of a denial is exact: to the next period if that
/// period's allowance (with what this one leaves unused) fits the cost, else to the period
/// after it (which starts with `L + R`).
///
/// State outlives its rate: the state is the period's start, its length, the cost used in it
/// and the rollover it started with, all absolute. Under the same period length, a new limit
/// applies at once to the same usage (the rollover read back is capped by the new R, and what
/// the period before left unused is counted against the new L); under another period length
/// the current period starts fresh, as after an idle spell (`L + R`), the way
/// [`FixedWindow`](super::FixedWindow) starts a fresh window.
///
/// ```
/// use traffik::strategy::{Input, QuotaRollover, Strategy};
/// use traffik::rate;
///
/// // 10 per minute; up to half of that rolls over.
/// let quota = QuotaRollover::builder().max_percent(50).build()?;
/// let minute = 60_000_000;
/// let mut state = None;
/// // A new client starts with 10 + 5. It uses 12 in its first minute.
/// let at = |t, cost| Input { now_us: t, rate: rate!("10/min"), cost };
/// let step = quota.decide(state.as_ref(), &at(0, 12));
/// assert!(step.verdict.is_admitted());
/// state = step.write.map(|w| w.state);
/// // The next minute: 3 of the 15 were left, so 10 + 3.
/// let step = quota.decide(state.as_ref(), &at(minute, 13));
/// assert!(step.verdict.is_admitted());
/// assert_eq!(step.verdict.remaining, 0);
/// # Ok::<(), traffik::strategy::ParamError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaRollover {
    spec: RolloverSpec,
}

/// Builds a [`QuotaRollover`]; see [`QuotaRollover::builder`].
#[derive(Clone, Copy, Debug, Default)]
#[must_use]
pub struct QuotaRolloverBuilder {
    spec: RolloverSpec,
}

impl QuotaRolloverBuilder {
    /// Caps the rollover at `max` units of cost.
    pub fn max_rollover(mut self, max: u64) -> Self {
        self.spec.max = Some(max);
        self
    }

    /// Caps the rollover at `percent` of the limit (0 to 100).
    pub fn max_percent(mut self, percent: u32) -> Self {
        self.spec.percent = Some(percent);
        self
    }

    /// The strategy, or [`ParamError::PercentAbove100`].
    pub fn build(self) -> Result<QuotaRollover, ParamError> {
        if let Some(p) = self.spec.percent
            && p > 100
        {
            return Err(ParamError::PercentAbove100 { name: "max_percent", value: p });
        }
        Ok(QuotaRollover { spec: self.spec })
    }
}

impl QuotaRollover {
    /// Rollover of the whole unused quota (at most L). Use [`builder`](Self::builder) for a cap.
    pub const fn new() -> Self {
        QuotaRollover { spec: RolloverSpec { max: None, percent: None } }
    }

    /// Starts a quota whose rollover is capped by [`max_rollover`](QuotaRolloverBuilder::max_rollover)
    /// and/or [`max_percent`](QuotaRolloverBuilder::max_percent) (both: the smaller).
    pub fn builder() -> QuotaRolloverBuilder {
        QuotaRolloverBuilder::default()
    }

    /// The cap and percentage.
    pub const fn spec(&self) -> RolloverSpec {
        self.spec
    }
}

/// Stored state of [`QuotaRollover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRolloverState {
    /// Start of the period the usage is counted in, microseconds since the epoch.
    pub start_us: u64,
    /// Cost admitted in that period.
    pub used: u64,
    /// The rollover that period started with.
    pub carried: u64,
    /// The period's length, microseconds.
    pub period_us: u64,
}

/// The period in force at `now` and its usage: `(start, used, rollover)`.
fn current(state: Option<&QuotaRolloverState>, now: u64, limit: u64, w: u64, cap: u64) -> (u64, u64, u64) {
    let start = window_start(now, w);
    let Some(s) = state else {
        return (start, 0, cap);
    };
    // Another period length, or a period a whole period or more ahead of now: not believed.
    if s.period_us != w || s.start_us >= now.saturating_add(w) {
        return (start, 0, cap);
    }
    let carried = s.carried.min(cap);
    if s.start_us >= start {
        // This period (or, from a clock that runs ahead, the next one).
        (s.start_us, s.used, carried)
    } else if s.start_us.saturating_add(w) == start {
        (start, 0, limit.saturating_add(carried).saturating_sub(s.used).min(cap))
    } else {
        // A whole idle period in between rolled over the most it may.
        (start, 0, cap)
    }
}

impl Strategy for QuotaRollover {
    type State = QuotaRolloverState;

    fn name(&self) -> &str {
        "qr"
    }

    fn decide(&self, state: Option<&QuotaRolloverState>, input: &Input) -> Step<QuotaRolloverState> {
        let limit = input.rate.limit();
        let w = input.rate.period_us();
        let cap = self.spec.cap(limit);
        if input.cost > limit.saturating_add(cap) {
            return Step::unchanged(Verdict::never());
        }
        let now = input.clock_us();
        let (start, used, carried) = current(state, now, limit, w, cap);
        let end = start.saturating_add(w);
        let allowance = limit.saturating_add(carried);
        let reset = end.saturating_sub(now);
        if used.saturating_add(input.cost) <= allowance {
            let used = used.saturating_add(input.cost);
            let state = QuotaRolloverState { start_us: start, used, carried, period_us: w };
            // Kept through the next period, whose rollover it decides.
            let ttl = end.saturating_add(w).saturating_sub(now);
            Step::write(Verdict::admit(allowance - used, reset), state, ttl)
        } else {
            let left = allowance.saturating_sub(used);
            let wait = if input.cost <= limit.saturating_add(left.min(cap)) { reset } else { reset.saturating_add(w) };
            Step::unchanged(Verdict::deny(left, wait, reset))
        }
    }

    fn metadata(&self, state: Option<&QuotaRolloverState>, input: &Input) -> Metadata {
        let limit = input.rate.limit();
        let w = input.rate.period_us();
        let cap = self.spec.cap(limit);
        let (start, used, carried) = current(state, input.clock_us(), limit, w, cap);
        let mut m = Metadata::new();
        m.insert("strategy".into(), "quota_rollover".into());
        m.insert("window_start_us".into(), json_u64(start));
        m.insert("window_us".into(), json_u64(w));
        m.insert("used".into(), json_u64(used));
        m.insert("rollover".into(), json_u64(carried));
        m.insert("allowance".into(), json_u64(limit.saturating_add(carried)));
        m.insert("max_rollover".into(), json_u64(cap));
        m
    }

    fn refund(&self, s: &QuotaRolloverState, charged_at_us: u64, input: &Input) -> Option<Write<QuotaRolloverState>> {
        let w = input.rate.period_us();
        let now = input.clock_us();
        let end = s.start_us.saturating_add(w);
        if s.period_us != w || window_start(charged_at_us, w) != s.start_us || end <= now {
            return None;
        }
        let state = QuotaRolloverState { used: s.used.saturating_sub(input.cost), ..*s };
        Some(Write { state, ttl_us: end.saturating_add(w).saturating_sub(now) })
    }
}

impl Native for QuotaRollover {
    fn builtin(&self) -> Builtin {
        Builtin::QuotaRollover(self.spec)
    }

    /// `[start | period >> 32 << 53, period << 32 | used << 16 | carried]`: starts below 2^53 µs,
    /// periods below 2^43 µs and usage and rollover below 2^16 pack; others are boxed.
    #[inline]
    fn pack(&self, s: &QuotaRolloverState) -> Option<Packed> {
        if s.start_us > TIME_MASK || s.period_us >> 43 != 0 || s.used >> 16 != 0 || s.carried >> 16 != 0 {
            return None;
        }
        Some(Packed([s.start_us | (s.period_us >> 32) << TIME_BITS, s.period_us << 32 | s.used << 16 | s.carried]))
    }

    #[inline]
    fn unpack(&self, p: Packed) -> Option<QuotaRolloverState> {
        Some(QuotaRolloverState {
            start_us: p.0[0] & TIME_MASK,
            used: (p.0[1] >> 16) & 0xffff,
            carried: p.0[1] & 0xffff,
            period_us: (p.0[0] >> TIME_BITS) << 32 | p.0[1] >> 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    const MIN: u64 = 60_000_000;

    fn run(q: &QuotaRollover, s: &mut Option<QuotaRolloverState>, now: u64, cost: u64) -> Verdict {
        let step = q.decide(s.as_ref(), &Input { now_us: now, rate: rate!("10/min"), cost });
        if let Some(w) = step.write {
            *s = Some(w.state);
        }
        step.verdict
    }

    #[test]
    fn an_idle_period_rolls_over_its_whole_unused_quota_up_to_the_cap() {
        let q = QuotaRollover::builder().max_rollover(4).build().unwrap_or_default();
        let mut s = None;
        // A new client: 10 + 4.
        assert_eq!(run(&q, &mut s, 0, 14).kind, VerdictKind::Admit);
        assert_eq!(run(&q, &mut s, 1, 1).kind, VerdictKind::Deny);
        // Nothing left unused: the next minute has 10.
        assert_eq!(run(&q, &mut s, MIN, 10).remaining, 0);
        // A minute with no hit at all, then the one after starts with 10 + 4.
        let meta = q.metadata(s.as_ref(), &Input { now_us: 3 * MIN, rate: rate!("10/min"), cost: 1 });
        assert_eq!(meta.get("rollover"), Some(&serde_json::Value::from(4)));
        assert_eq!(run(&q, &mut s, 3 * MIN, 14).kind, VerdictKind::Admit);
    }

    #[test]
    fn stat_shows_the_rollover_before_the_first_hit_of_a_period() {
        let q = QuotaRollover::builder().max_percent(50).build().unwrap_or_default();
        let mut s = None;
        run(&q, &mut s, 0, 12);
        run(&q, &mut s, MIN + 5, 7);
        // 10 + 3 - 7 = 6 left unused, capped at 5.
        let meta = q.metadata(s.as_ref(), &Input { now_us: 2 * MIN, rate: rate!("10/min"), cost: 1 });
        assert_eq!(meta.get("rollover"), Some(&serde_json::Value::from(5)));
        assert_eq!(meta.get("allowance"), Some(&serde_json::Value::from(15)));
    }

    #[test]
    fn waits_are_exact_and_costs_above_the_allowance_are_never() {
        let q = QuotaRollover::builder().max_rollover(4).build().unwrap_or_default();
        let mut s = None;
        run(&q, &mut s, 0, 12);
        // 2 left, so the next minute has 10 + 2: a cost of 13 waits two minutes, 12 one.
        assert_eq!(run(&q, &mut s, 10, 13).wait_us, 2 * MIN - 10);
        assert_eq!(run(&q, &mut s, 10, 12).wait_us, MIN - 10);
        assert_eq!(run(&q, &mut s, 10, 15).kind, VerdictKind::Never);
    }

    #[test]
    fn states_pack_exactly_or_not_at_all() {
        let q = QuotaRollover::new();
        for s in [
            QuotaRolloverState { start_us: 0, used: 0, carried: 0, period_us: 1 },
            QuotaRolloverState { start_us: TIME_MASK, used: 0xffff, carried: 0xffff, period_us: (1 << 43) - 1 },
            QuotaRolloverState { start_us: 1_700_000_000_000_000, used: 12, carried: 5, period_us: 86_400_000_000 },
        ] {
            assert_eq!(q.pack(&s).and_then(|p| q.unpack(p)), Some(s));
        }
        for s in [
            QuotaRolloverState { start_us: TIME_MASK + 1, used: 0, carried: 0, period_us: 1 },
            QuotaRolloverState { start_us: 0, used: 1 << 16, carried: 0, period_us: 1 },
            QuotaRolloverState { start_us: 0, used: 0, carried: 1 << 16, period_us: 1 },
            QuotaRolloverState { start_us: 0, used: 0, carried: 0, period_us: 1 << 43 },
        ] {
            assert_eq!(q.pack(&s), None, "{s:?}");
        }
    }

    #[test]
    fn percentages_above_100_are_refused() {
        assert_eq!(
            QuotaRollover::builder().max_percent(101).build(),
            Err(ParamError::PercentAbove100 { name: "max_percent", value: 101 })
        );
        assert!(QuotaRollover::builder().max_percent(100).build().is_ok());
        let spec = RolloverSpec { max: Some(7), percent: Some(50) };
        assert_eq!((spec.cap(10), spec.cap(20), spec.cap(3)), (5, 7, 1));
        assert_eq!(QuotaRollover::new().spec().cap(10), 10);
    }
}
