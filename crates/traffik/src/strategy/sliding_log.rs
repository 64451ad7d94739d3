//! Sliding window log: every admitted hit is remembered for one period.

use serde::{Deserialize, Serialize};

use super::native::{Builtin, Native};
use super::{Input, Metadata, Step, Strategy, Verdict, Write, json_u64};

/// Exact sliding window: admits iff the cost admitted in `(now - W, now]` plus this cost is at
/// most L. Stores one `(time, cost)` entry per distinct admission instant, so memory is
/// O(limit) per key. The wait of a denial is the instant enough old entries leave the window.
///
/// Entries are absolute times and costs, and the log keeps the period it was written under, so
/// it reads the same under any rate: after a rate change, an entry counts while it is inside
/// both the new period and the one it was written under (the stored state is never relied on
/// past the time to live it was written with). A wait is never longer than one period (two when
/// another instance's clock runs up to a period ahead of this one; entries further ahead are
/// not believed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindowLog;

/// Stored state of [`SlidingWindowLog`]: `(time_us, cost)` pairs, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindowLogState {
    /// The period the log was written under, microseconds (0: unknown, as in state written by
    /// earlier versions, which reads as empty).
    #[serde(default)]
    pub period_us: u64,
    /// Admissions still inside the window, oldest first.
    pub entries: Vec<(u64, u64)>,
}

/// Entries still inside the window ending at `now` (those with `t + w > now`, where `w` is the
/// shorter of the current period and the log's own), without those a period or more ahead of
/// `now`, which are not believed (see [`SlidingWindowLog`]). A log out of time order was not
/// written by this strategy (corrupt or hostile storage) and is not believed at all.
fn live(state: Option<&SlidingWindowLogState>, now: u64, w: u64) -> &[(u64, u64)] {
    let Some(s) = state.filter(|s| s.period_us > 0 && s.entries.is_sorted_by_key(|&(t, _)| t)) else {
        return &[];
    };
    let horizon = w.min(s.period_us);
    let first = s.entries.partition_point(|&(t, _)| t.saturating_add(horizon) <= now);
    let end = s.entries.partition_point(|&(t, _)| t < now.saturating_add(w)).max(first);
    &s.entries[first..end]
}

impl Strategy for SlidingWindowLog {
    type State = SlidingWindowLogState;

    fn name(&self) -> &str {
        "swl"
    }

    fn decide(&self, state: Option<&Self::State>, input: &Input) -> Step<Self::State> {
        let (limit, w, c, now) = (input.rate.limit(), input.rate.period_us(), input.cost, input.clock_us());
        if c > limit {
            return Step::unchanged(Verdict::never());
        }
        let entries = live(state, now, w);
        // How long the live entries still count: the shorter of the two periods.
        let horizon = state.map_or(w, |s| w.min(s.period_us));
        let used: u64 = entries.iter().fold(0u64, |a, &(_, k)| a.saturating_add(k));
        if used.saturating_add(c) <= limit {
            let mut next = Vec::with_capacity(entries.len() + 1);
            next.extend_from_slice(entries);
            // Keep the log sorted even if a lagging clock reports an earlier time.
            let at = next.partition_point(|&(t, _)| t <= now);
            if at > 0 && next[at - 1].0 == now {
                next[at - 1].1 = next[at - 1].1.saturating_add(c);
            } else {
                next.insert(at, (now, c));
            }
            let newest = next.last().map_or(now, |&(t, _)| t);
            let ttl = newest.saturating_add(w).saturating_sub(now);
            let state = SlidingWindowLogState { period_us: w, entries: next };
            return Step::write(Verdict::admit(limit - used - c, ttl), state, ttl);
        }
        // Free the oldest entries until the hit fits; it fits once the last of them expires.
        let need = used.saturating_add(c) - limit;
        let mut freed = 0u64;
        let mut target = now;
        for &(t, k) in entries {
            freed = freed.saturating_add(k);
            if freed >= need {
                target = t.saturating_add(horizon);
                break;
            }
        }
        let reset = entries.last().map_or(now, |&(t, _)| t.saturating_add(horizon));
        Step::unchanged(Verdict::deny(
            limit.saturating_sub(used),
            target.saturating_sub(now),
            reset.saturating_sub(now),
        ))
    }

    fn metadata(&self, state: Option<&Self::State>, input: &Input) -> Metadata {
        let entries = live(state, input.clock_us(), input.rate.period_us());
        let mut m = Metadata::new();
        m.insert("entries".into(), json_u64(entries.len() as u64));
        m.insert("used".into(), json_u64(entries.iter().map(|e| e.1).sum()));
        if let (Some(&(oldest, _)), Some(&(newest, _))) = (entries.first(), entries.last()) {
            m.insert("oldest_us".into(), json_u64(oldest));
            m.insert("newest_us".into(), json_u64(newest));
        }
        m
    }

    fn refund(&self, s: &Self::State, charged_at_us: u64, input: &Input) -> Option<Write<Self::State>> {
        // Only an entry that still counts gives anything back (one past the window is kept
        // until it is pruned, but counts for nothing).
        let horizon = input.rate.period_us().min(s.period_us);
        let now = input.clock_us();
        let at = s.entries.iter().position(|&(t, _)| t == charged_at_us && t.saturating_add(horizon) > now)?;
        let mut entries = s.entries.clone();
        entries[at].1 = entries[at].1.saturating_sub(input.cost);
        if entries[at].1 == 0 {
            entries.remove(at);
        }
        let newest = entries.last().map_or(input.clock_us(), |&(t, _)| t);
        let ttl_us = newest.saturating_add(s.period_us).saturating_sub(input.clock_us()).max(1);
        Some(Write { state: SlidingWindowLogState { period_us: s.period_us, entries }, ttl_us })
    }
}

impl Native for SlidingWindowLog {
    fn builtin(&self) -> Builtin {
        Builtin::SlidingWindowLog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    /// An entry that no longer counts gives nothing back (refunding it changes nothing), one
    /// that does gives its cost back.
    #[test]
    fn only_an_entry_that_still_counts_is_refunded() {
        let s = SlidingWindowLogState { period_us: 1_000_000, entries: vec![(100_000, 2), (600_000, 1)] };
        let input = |now_us| Input { now_us, rate: rate!("3/s"), cost: 1 };
        assert_eq!(SlidingWindowLog.refund(&s, 100_000, &input(1_100_000)), None, "past the window");
        let w = SlidingWindowLog.refund(&s, 100_000, &input(1_099_999)).unwrap();
        assert_eq!(w.state.entries, vec![(100_000, 1), (600_000, 1)]);
        assert_eq!(SlidingWindowLog.refund(&s, 100_001, &input(200_000)), None, "no such admission");
    }

    #[test]
    fn entries_count_within_the_shorter_of_the_two_periods() {
        let s = SlidingWindowLogState { period_us: 1_000_000, entries: vec![(100_000, 2), (600_000, 1)] };
        let at = |now_us, rate, cost| SlidingWindowLog.decide(Some(&s), &Input { now_us, rate, cost }).verdict;
        // 3/s becomes 3/min: the entries leave after a second (their own period), not a minute.
        let v = at(700_000, rate!("3/min"), 1);
        assert_eq!((v.kind, v.wait_us), (VerdictKind::Deny, 400_000));
        assert_eq!(at(1_100_000, rate!("3/min"), 1).kind, VerdictKind::Admit);
        // 3/s becomes 3/500ms: only the entry at 600 ms is inside the last half second.
        assert_eq!(at(700_000, rate!("3/500ms"), 2).kind, VerdictKind::Admit);
        // State of earlier versions (no period) reads as empty.
        let old = SlidingWindowLogState { period_us: 0, entries: vec![(100_000, 3)] };
        let v = SlidingWindowLog.decide(Some(&old), &Input { now_us: 200_000, rate: rate!("3/s"), cost: 3 }).verdict;
        assert_eq!(v.kind, VerdictKind::Admit);
    }

    #[test]
    fn waits_until_enough_old_cost_leaves_the_window() {
        let r = rate!("3/s");
        let mut s: Option<SlidingWindowLogState> = None;
        let mut hit = |now: u64, cost: u64| {
            let step = SlidingWindowLog.decide(s.as_ref(), &Input { now_us: now, rate: r, cost });
            if let Some(w) = step.write {
                s = Some(w.state);
            }
            step.verdict
        };
        assert!(hit(0, 1).is_admitted());
        assert!(hit(200_000, 2).is_admitted());
        let v = hit(500_000, 2);
        assert_eq!(v.kind, VerdictKind::Deny);
        // Needs 2 freed: the entry at 0 frees 1, the one at 200 ms frees 2 more.
        assert_eq!(v.wait_us, 700_000);
        assert_eq!(hit(1_199_999, 2).kind, VerdictKind::Deny);
        assert_eq!(hit(1_200_000, 2).kind, VerdictKind::Admit);
    }
}
