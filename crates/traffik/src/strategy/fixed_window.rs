//! Fixed window: epoch-aligned windows of length W, at most L cost in each.

use serde::{Deserialize, Serialize};

use super::native::{Builtin, Native};
use super::{Input, Metadata, Packed, Step, Strategy, Verdict, Write, json_u64};

/// Epoch-aligned windows of the rate's period; a hit is admitted iff `used + cost <= limit` in
/// its window. Denied hits consume nothing; the wait of a denial is exactly the time to the next
/// window. Cheapest strategy; admits up to 2L across a window boundary.
///
/// The state is the time of the latest admission, the cost admitted in its window and the
/// period it was counted under. After a rate change with the same period (a new limit), the
/// usage carries over exactly: it counts against the new limit until the window ends. Under a
/// different period the current window starts fresh: a window of another length says nothing
/// about this one, and the stored state is never relied on past the time to live it was written
/// with. A wait is never longer than one period of the current rate (two when another
/// instance's clock runs up to a period ahead of this one; a latest admission further ahead is
/// not believed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedWindow;

/// Stored state of [`FixedWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindowState {
    /// Time of the latest admission, microseconds since the epoch.
    #[serde(alias = "window")]
    pub last_us: u64,
    /// Cost admitted in the window that contains `last_us`.
    pub used: u64,
    /// The period the window was counted under, microseconds (0: unknown, as in state written
    /// by earlier versions, which reads as absent).
    #[serde(default)]
    pub period_us: u64,
}

/// Start of the window of length `w` that contains `t`.
#[inline]
pub(crate) fn window_start(t: u64, w: u64) -> u64 {
    t - t % w
}

/// The usage that counts at `now` under windows of length `w`, with the end of the window it
/// counts against: `(end, used, last)`. Usage counts iff it was counted under the same period
/// and its latest admission is in the current window; a latest admission up to a period ahead
/// of `now` (a clock that runs ahead) counts against its own window, one further ahead is not
/// believed.
#[inline]
fn current(state: Option<&FixedWindowState>, now: u64, w: u64) -> (u64, u64, u64) {
    let start = window_start(now, w);
    let end = start.saturating_add(w);
    match state {
        Some(s) if s.period_us == w && s.last_us >= start && s.last_us < now.saturating_add(w) => {
            // Ahead of `now` by less than a period: in this window or the next.
            if s.last_us < end { (end, s.used, now.max(s.last_us)) } else { (end.saturating_add(w), s.used, s.last_us) }
        }
        _ => (end, 0, now),
    }
}

/// Timestamps below 2^53 µs (the year 2255) leave 11 bits of a word free.
pub(crate) const TIME_BITS: u32 = 53;
pub(crate) const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

impl Strategy for FixedWindow {
    type State = FixedWindowState;

    fn name(&self) -> &str {
        "fw"
    }

    #[inline]
    fn decide(&self, state: Option<&FixedWindowState>, input: &Input) -> Step<FixedWindowState> {
        let limit = input.rate.limit();
        let w = input.rate.period_us();
        if input.cost > limit {
            return Step::unchanged(Verdict::never());
        }
        let (end, used, last) = current(state, input.clock_us(), w);
        let reset = end.saturating_sub(input.clock_us());
        if used.saturating_add(input.cost) <= limit {
            let used = used.saturating_add(input.cost);
            let state = FixedWindowState { last_us: last, used, period_us: w };
            Step::write(Verdict::admit(limit - used, reset), state, reset)
        } else {
            Step::unchanged(Verdict::deny(limit.saturating_sub(used), reset, reset))
        }
    }

    fn metadata(&self, state: Option<&FixedWindowState>, input: &Input) -> Metadata {
        let w = input.rate.period_us();
        let (end, used, _) = current(state, input.clock_us(), w);
        let mut m = Metadata::new();
        m.insert("window_start_us".into(), json_u64(end.saturating_sub(w)));
        m.insert("window_us".into(), json_u64(w));
        m.insert("used".into(), json_u64(used));
        m
    }

    fn refund(&self, s: &FixedWindowState, charged_at_us: u64, input: &Input) -> Option<Write<FixedWindowState>> {
        let w = input.rate.period_us();
        let start = window_start(s.last_us, w);
        let end = start.saturating_add(w);
        if s.period_us != w || window_start(charged_at_us, w) != start || end <= input.clock_us() {
            return None;
        }
        let state = FixedWindowState { used: s.used.saturating_sub(input.cost), ..*s };
        Some(Write { state, ttl_us: end - input.clock_us() })
    }
}

impl Native for FixedWindow {
    fn builtin(&self) -> Builtin {
        Builtin::FixedWindow
    }

    /// `[last | period >> 32 << 53, period << 32 | used]`: times below 2^53 µs, costs below
    /// 2^32 and periods below 2^43 µs (101 days) pack; others are boxed.
    #[inline]
    fn pack(&self, s: &FixedWindowState) -> Option<Packed> {
        if s.last_us > TIME_MASK || s.used > u64::from(u32::MAX) || s.period_us >> 43 != 0 {
            return None;
        }
        Some(Packed([s.last_us | (s.period_us >> 32) << TIME_BITS, s.period_us << 32 | s.used]))
    }

    #[inline]
    fn unpack(&self, p: Packed) -> Option<FixedWindowState> {
        let period_us = (p.0[0] >> TIME_BITS) << 32 | p.0[1] >> 32;
        Some(FixedWindowState { last_us: p.0[0] & TIME_MASK, used: p.0[1] & 0xffff_ffff, period_us })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::VerdictKind;
    use crate::{Rate, rate};

    fn run(s: &mut Option<FixedWindowState>, now: u64, rate: Rate, cost: u64) -> Verdict {
        let step = FixedWindow.decide(s.as_ref(), &Input { now_us: now, rate, cost });
        if let Some(w) = step.write {
            *s = Some(w.state);
        }
        step.verdict
    }

    #[test]
    fn admits_limit_then_waits_exactly_to_the_next_window() {
        let r = rate!("3/s");
        let mut s = None;
        let t0 = 10_250_000; // 250 ms into a window
        for left in [2, 1, 0] {
            let v = run(&mut s, t0, r, 1);
            assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, left));
        }
        let v = run(&mut s, t0, r, 1);
        assert_eq!(v.kind, VerdictKind::Deny);
        assert_eq!(v.wait_us, 750_000);
        assert_eq!(run(&mut s, t0 + v.wait_us - 1, r, 1).kind, VerdictKind::Deny);
        assert_eq!(run(&mut s, t0 + v.wait_us, r, 1).kind, VerdictKind::Admit);
    }

    #[test]
    fn a_new_limit_keeps_the_usage_and_a_new_period_starts_the_window_fresh() {
        let mut s = None;
        let t0 = 1_700_000_010_300_000; // 30.3 s into a minute, 0.3 s into a second
        for _ in 0..3 {
            assert!(run(&mut s, t0, rate!("5/s"), 1).is_admitted());
        }
        // 5/s becomes 4/s: the three hits still count; one is left this second.
        assert_eq!(run(&mut s, t0 + 1, rate!("4/s"), 1).kind, VerdictKind::Admit);
        let v = run(&mut s, t0 + 2, rate!("4/s"), 1);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 700_000 - 2));
        // 4/s becomes 5/min: a window of another length starts fresh, and a denial waits for
        // the end of the minute, not for a window counted in seconds.
        let r = rate!("5/min");
        assert_eq!(run(&mut s, t0 + 3, r, 5).kind, VerdictKind::Admit);
        let v = run(&mut s, t0 + 4, r, 1);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 29_700_000 - 4));
        assert_eq!(run(&mut s, t0 + 4 + v.wait_us, r, 5).kind, VerdictKind::Admit);
    }

    #[test]
    fn a_latest_admission_ahead_of_the_clock_counts_unless_it_is_more_than_a_period_ahead() {
        let r = rate!("2/s");
        let ahead = Some(FixedWindowState { last_us: 5_400_000, used: 2, period_us: 1_000_000 });
        // Up to a period ahead: counts against its own window, which ends at 6 s.
        let v = FixedWindow.decide(ahead.as_ref(), &Input { now_us: 4_900_000, rate: r, cost: 1 }).verdict;
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 1_100_000));
        // Further ahead: not believed.
        let v = FixedWindow.decide(ahead.as_ref(), &Input { now_us: 4_300_000, rate: r, cost: 1 }).verdict;
        assert_eq!(v.kind, VerdictKind::Admit);
        let far = Some(FixedWindowState { last_us: u64::MAX, used: u64::MAX, period_us: 1_000_000 });
        let v = FixedWindow.decide(far.as_ref(), &Input { now_us: 4_300_000, rate: r, cost: 1 }).verdict;
        assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 1));
    }

    #[test]
    fn states_pack_exactly_or_not_at_all() {
        let fw = FixedWindow;
        for s in [
            FixedWindowState { last_us: 0, used: 0, period_us: 1_000 },
            FixedWindowState { last_us: TIME_MASK, used: u64::from(u32::MAX), period_us: (1 << 43) - 1 },
            FixedWindowState { last_us: 1_700_000_000_123_456, used: 7, period_us: 60_000_000 },
        ] {
            assert_eq!(fw.pack(&s).and_then(|p| fw.unpack(p)), Some(s));
        }
        for s in [
            FixedWindowState { last_us: TIME_MASK + 1, used: 0, period_us: 1_000 },
            FixedWindowState { last_us: 0, used: 1 << 32, period_us: 1_000 },
            FixedWindowState { last_us: 0, used: 0, period_us: 1 << 43 },
        ] {
            assert_eq!(fw.pack(&s), None, "{s:?}");
        }
    }

    #[test]
    fn denied_hits_consume_nothing_and_big_costs_never_fit() {
        let r = rate!("5/s");
        let mut s = None;
        assert_eq!(run(&mut s, 0, r, 4).kind, VerdictKind::Admit);
        assert_eq!(run(&mut s, 0, r, 2).kind, VerdictKind::Deny);
        assert_eq!(run(&mut s, 0, r, 1).kind, VerdictKind::Admit);
        assert_eq!(run(&mut s, 0, r, 6).kind, VerdictKind::Never);
    }
}
