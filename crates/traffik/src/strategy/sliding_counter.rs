//! Sliding window counter: the previous window's count, weighted by how much of it still
//! overlaps the sliding window, plus the current window's count.

use serde::{Deserialize, Serialize};

use super::fixed_window::{TIME_BITS, TIME_MASK, window_start};
use super::native::{Builtin, Native};
use super::{Input, Metadata, Packed, Step, Strategy, Verdict, Write, json_u64};

/// Estimates the cost in the sliding window as `prev * (1 - elapsed / W) + cur` and admits iff
/// `estimate + cost <= limit`. Since the estimate is never below `cur`, any epoch-aligned window
/// admits at most L; over sliding windows the estimate assumes the previous window's hits were
/// spread evenly, so bursts at the end of a window can let a sliding window see up to 2L in the
/// worst case. Measured against the exact [`SlidingWindowLog`](super::SlidingWindowLog) on the
/// same deterministic traffic (`property-tests/tests/approximation.rs`, 100/min, 20 seeds x 30
/// windows): the busiest sliding window admitted 1.09 L under steady traffic at 1.5x the limit,
/// 1.03 L at 3x, and 1.30 L when half the traffic arrives in the last tenth of each window;
/// total admissions stayed within 1% of the log's.
///
/// The state is the time of the latest admission, the cost admitted in its window and in the
/// window before, and the period they were counted under. After a rate change with the same
/// period (a new limit), the counts carry over exactly; under a different period they start
/// fresh (counts of windows of another length say nothing about these, and the stored state is
/// never relied on past the time to live it was written with). A wait is never longer than two
/// periods of the current rate (three when another instance's clock runs up to a period ahead
/// of this one; a latest admission further ahead is not believed).
///
/// The arithmetic is done in IEEE doubles, in the same order as the Redis script, so both agree
/// bit for bit. Waits are found by bisection on the same predicate, so a retry after the wait
/// passes and one microsecond earlier fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindowCounter;

/// Stored state of [`SlidingWindowCounter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindowCounterState {
    /// Time of the latest admission, microseconds since the epoch.
    #[serde(alias = "window")]
    pub last_us: u64,
    /// Cost admitted in the window before the one that contains `last_us`.
    pub prev: u64,
    /// Cost admitted in the window that contains `last_us`.
    pub cur: u64,
    /// The period the windows were counted under, microseconds (0: unknown, as in state
    /// written by earlier versions, which reads as absent).
    #[serde(default)]
    pub period_us: u64,
}

struct View {
    /// Start of the window the counts are seen from (the current one, or the one after it for
    /// a latest admission up to a period ahead of `now`).
    start: u64,
    prev: u64,
    cur: u64,
    elapsed: u64,
    /// The latest admission once this hit is admitted.
    last: u64,
}

fn view(state: Option<&SlidingWindowCounterState>, now: u64, w: u64) -> View {
    let start = window_start(now, w);
    let fresh = View { start, prev: 0, cur: 0, elapsed: now - start, last: now };
    let Some(s) = state else {
        return fresh;
    };
    // Counts of another period say nothing about these windows; a latest admission more than
    // a period ahead of the clock is not believed.
    if s.period_us != w || s.last_us >= now.saturating_add(w) {
        return fresh;
    }
    let latest = window_start(s.last_us, w);
    let (at, prev, cur) = if latest >= start {
        (latest, s.prev, s.cur)
    } else if latest.saturating_add(w) == start {
        (start, s.cur, 0)
    } else {
        return fresh;
    };
    View { start: at, prev, cur, elapsed: now.saturating_sub(at).min(w - 1), last: s.last_us.max(now) }
}

/// The weighted estimate; the Lua script computes exactly these operations.
pub(crate) fn estimate(prev: u64, cur: u64, w: u64, elapsed: u64) -> f64 {
    let weight = (w - elapsed) as f64 / w as f64;
    prev as f64 * weight + cur as f64
}

fn fits(prev: u64, cur: u64, cost: u64, limit: u64, w: u64, elapsed: u64) -> bool {
    estimate(prev, cur, w, elapsed) + cost as f64 <= limit as f64
}

/// Smallest elapsed time in `(lo, w)` at which the hit fits, given that it does not fit at `lo`
/// and does at `w - 1`.
fn first_fit(prev: u64, cur: u64, cost: u64, limit: u64, w: u64, mut lo: u64) -> u64 {
    let mut hi = w - 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(prev, cur, cost, limit, w, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

fn floor_remaining(limit: u64, used: f64) -> u64 {
    let left = limit as f64 - used;
    if left <= 0.0 { 0 } else { left.floor() as u64 }
}

impl Strategy for SlidingWindowCounter {
    type State = SlidingWindowCounterState;

    fn name(&self) -> &str {
        "swc"
    }

    fn decide(&self, state: Option<&Self::State>, input: &Input) -> Step<Self::State> {
        let (limit, w, c, now) = (input.rate.limit(), input.rate.period_us(), input.cost, input.clock_us());
        if c > limit {
            return Step::unchanged(Verdict::never());
        }
        let v = view(state, now, w);
        let start = v.start;
        let est = estimate(v.prev, v.cur, w, v.elapsed);
        if est + c as f64 <= limit as f64 {
            let cur = v.cur.saturating_add(c);
            let ttl = start.saturating_add(2 * w).saturating_sub(now);
            return Step::write(
                Verdict::admit(floor_remaining(limit, est + c as f64), ttl),
                SlidingWindowCounterState { last_us: v.last, prev: v.prev, cur, period_us: w },
                ttl,
            );
        }
        // Denied: find the first instant at which the same hit fits.
        let target = if v.cur.saturating_add(c) <= limit && fits(v.prev, v.cur, c, limit, w, w - 1) {
            start.saturating_add(first_fit(v.prev, v.cur, c, limit, w, v.elapsed))
        } else if fits(v.cur, 0, c, limit, w, 0) {
            start.saturating_add(w)
        } else if fits(v.cur, 0, c, limit, w, w - 1) {
            start.saturating_add(w).saturating_add(first_fit(v.cur, 0, c, limit, w, 0))
        } else {
            start.saturating_add(2 * w)
        };
        let reset = if v.cur > 0 { start.saturating_add(2 * w) } else { start.saturating_add(w) };
        Step::unchanged(Verdict::deny(
            floor_remaining(limit, est),
            target.saturating_sub(now),
            reset.saturating_sub(now),
        ))
    }

    fn metadata(&self, state: Option<&Self::State>, input: &Input) -> Metadata {
        let w = input.rate.period_us();
        let v = view(state, input.clock_us(), w);
        let mut m = Metadata::new();
        m.insert("window_start_us".into(), json_u64(v.start));
        m.insert("previous".into(), json_u64(v.prev));
        m.insert("current".into(), json_u64(v.cur));
        m.insert("estimate".into(), estimate(v.prev, v.cur, w, v.elapsed).into());
        m
    }

    fn refund(&self, s: &Self::State, charged_at_us: u64, input: &Input) -> Option<Write<Self::State>> {
        let w = input.rate.period_us();
        let latest = window_start(s.last_us, w);
        let charged = window_start(charged_at_us, w);
        let (prev, cur) = if s.period_us != w {
            return None;
        } else if charged == latest {
            (s.prev, s.cur.saturating_sub(input.cost))
        } else if charged.saturating_add(w) == latest {
            (s.prev.saturating_sub(input.cost), s.cur)
        } else {
            return None;
        };
        let end = latest.saturating_add(2 * w);
        (end > input.clock_us())
            .then(|| Write { state: SlidingWindowCounterState { prev, cur, ..*s }, ttl_us: end - input.clock_us() })
    }
}

impl Native for SlidingWindowCounter {
    fn builtin(&self) -> Builtin {
        Builtin::SlidingWindowCounter
    }

    /// `[last | period_ms >> 16 << 53, prev << 40 | cur << 16 | period_ms & 0xffff]`: times
    /// below 2^53 µs, counts below 2^24 and periods of whole milliseconds below 2^27 (37 hours)
    /// pack; others are boxed.
    fn pack(&self, s: &Self::State) -> Option<Packed> {
        let ms = s.period_us.is_multiple_of(1000).then_some(s.period_us / 1000)?;
        if s.last_us > TIME_MASK || s.prev >> 24 != 0 || s.cur >> 24 != 0 || ms >> 27 != 0 {
            return None;
        }
        Some(Packed([s.last_us | (ms >> 16) << TIME_BITS, s.prev << 40 | s.cur << 16 | (ms & 0xffff)]))
    }

    fn unpack(&self, p: Packed) -> Option<Self::State> {
        let ms = (p.0[0] >> TIME_BITS) << 16 | (p.0[1] & 0xffff);
        Some(SlidingWindowCounterState {
            last_us: p.0[0] & TIME_MASK,
            prev: p.0[1] >> 40,
            cur: (p.0[1] >> 16) & 0xff_ffff,
            period_us: ms * 1000,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    #[test]
    fn previous_window_decays_and_wait_is_exact() {
        let r = rate!("10/s");
        let s = SlidingWindowCounterState { last_us: 5_900_000, prev: 0, cur: 10, period_us: 1_000_000 };
        // 100 ms into window 6: estimate 9, one more fits.
        let now = 6_100_000;
        let step = SlidingWindowCounter.decide(Some(&s), &Input { now_us: now, rate: r, cost: 1 });
        assert_eq!(step.verdict.kind, VerdictKind::Admit);
        let s = step.write.unwrap().state;
        let v = SlidingWindowCounter.decide(Some(&s), &Input { now_us: now, rate: r, cost: 1 }).verdict;
        assert_eq!(v.kind, VerdictKind::Deny);
        let at = |t| SlidingWindowCounter.decide(Some(&s), &Input { now_us: t, rate: r, cost: 1 }).verdict.kind;
        assert_eq!(at(now + v.wait_us), VerdictKind::Admit);
        assert_eq!(at(now + v.wait_us - 1), VerdictKind::Deny);
    }

    #[test]
    fn a_new_limit_keeps_the_counts_and_a_new_period_starts_fresh() {
        // Under 10/min: 2 in the minute before, 3 in this one (the latest at 30.4 s).
        let s = SlidingWindowCounterState { last_us: 30_400_000, prev: 2, cur: 3, period_us: 60_000_000 };
        let at = |now_us, rate, cost| SlidingWindowCounter.decide(Some(&s), &Input { now_us, rate, cost }).verdict;
        // 5/min, same period: 2 * (29.5 / 60) + 3 = 3.98 used at 30.5 s.
        let r = rate!("5/min");
        assert_eq!(at(30_500_000, r, 1).kind, VerdictKind::Admit);
        let v = at(30_500_000, r, 2);
        assert_eq!(v.kind, VerdictKind::Deny);
        assert!(v.wait_us <= 2 * 60_000_000, "{v:?}");
        assert_eq!(at(30_500_000 + v.wait_us, r, 2).kind, VerdictKind::Admit);
        assert_eq!(at(30_500_000 + v.wait_us - 1, r, 2).kind, VerdictKind::Deny);
        // In the next minute the 3 are the previous count: 3 * (59 / 60) = 2.95 used at 61 s.
        assert_eq!(at(61_000_000, r, 2).kind, VerdictKind::Admit);
        assert_eq!(at(61_000_000, r, 3).kind, VerdictKind::Deny);
        // 5/s: counts of minutes say nothing about seconds.
        assert_eq!(at(30_500_000, rate!("5/s"), 5).kind, VerdictKind::Admit);
        // A latest admission far in the future is not believed.
        let far = SlidingWindowCounterState { last_us: u64::MAX, prev: u64::MAX, cur: u64::MAX, period_us: 60_000_000 };
        let v = SlidingWindowCounter.decide(Some(&far), &Input { now_us: 1, rate: r, cost: 5 }).verdict;
        assert_eq!(v.kind, VerdictKind::Admit);
    }

    #[test]
    fn states_pack_exactly_or_not_at_all() {
        let swc = SlidingWindowCounter;
        let ok = |last_us, prev, cur, period_us| SlidingWindowCounterState { last_us, prev, cur, period_us };
        for s in [ok(0, 0, 0, 1_000), ok(TIME_MASK, (1 << 24) - 1, (1 << 24) - 1, ((1 << 27) - 1) * 1000)] {
            assert_eq!(swc.pack(&s).and_then(|p| swc.unpack(p)), Some(s));
        }
        for s in [
            ok(TIME_MASK + 1, 0, 0, 1_000),
            ok(0, 1 << 24, 0, 1_000),
            ok(0, 0, 1 << 24, 1_000),
            ok(0, 0, 0, (1 << 27) * 1000),
        ] {
            assert_eq!(swc.pack(&s), None, "{s:?}");
        }
    }

    #[test]
    fn full_cost_waits_for_the_previous_window_to_vanish() {
        let r = rate!("4/s");
        let s = SlidingWindowCounterState { last_us: 3_200_000, prev: 0, cur: 1, period_us: 1_000_000 };
        let v = SlidingWindowCounter.decide(Some(&s), &Input { now_us: 3_500_000, rate: r, cost: 4 }).verdict;
        assert_eq!(v.kind, VerdictKind::Deny);
        assert_eq!(3_500_000 + v.wait_us, 5_000_000);
    }
}
