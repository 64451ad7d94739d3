//! Fixed window: epoch-aligned windows of length W, at most L cost in each.

use serde::{Deserialize, Serialize};

use super::{Builtin, Input, Metadata, Packed, Step, Strategy, Verdict, json_u64};

/// Epoch-aligned windows of the rate's period; a hit is admitted iff `used + cost <= limit` in
/// its window. Denied hits consume nothing; the wait of a denial is exactly the time to the next
/// window. Cheapest strategy; admits up to 2L across a window boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedWindow;

/// Stored state of [`FixedWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindowState {
    /// Index of the window (`now / period`).
    pub window: u64,
    /// Cost admitted in that window.
    pub used: u64,
}

impl FixedWindow {
    /// Window index and cost used as seen at `now`. A stored window ahead of `now` (a client
    /// whose clock lags) keeps counting against that window, which errs on the strict side.
    fn current(state: Option<&FixedWindowState>, now: u64, w: u64) -> (u64, u64) {
        let window = now / w;
        match state {
            Some(s) if s.window >= window => (s.window, s.used),
            _ => (window, 0),
        }
    }
}

impl Strategy for FixedWindow {
    type State = FixedWindowState;

    fn name(&self) -> &str {
        "fw"
    }

    fn decide(&self, state: Option<&FixedWindowState>, input: &Input) -> Step<FixedWindowState> {
        let limit = input.rate.limit();
        let w = input.rate.period_us();
        if input.cost > limit {
            return Step::unchanged(Verdict::never());
        }
        let (window, used) = Self::current(state, input.now_us, w);
        let reset = window.saturating_add(1).saturating_mul(w).saturating_sub(input.now_us);
        if used.saturating_add(input.cost) <= limit {
            let used = used + input.cost;
            Step::write(Verdict::admit(limit - used, reset), FixedWindowState { window, used }, reset)
        } else {
            Step::unchanged(Verdict::deny(limit.saturating_sub(used), reset, reset))
        }
    }

    fn metadata(&self, state: Option<&FixedWindowState>, input: &Input) -> Metadata {
        let w = input.rate.period_us();
        let (window, used) = Self::current(state, input.now_us, w);
        let mut m = Metadata::new();
        m.insert("strategy".into(), "fixed_window".into());
        m.insert("window_start_us".into(), json_u64(window.saturating_mul(w)));
        m.insert("window_us".into(), json_u64(w));
        m.insert("used".into(), json_u64(used));
        m
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin::FixedWindow)
    }

    fn pack(&self, s: &FixedWindowState) -> Option<Packed> {
        Some(Packed([s.window, s.used]))
    }

    fn unpack(&self, p: Packed) -> Option<FixedWindowState> {
        Some(FixedWindowState { window: p.0[0], used: p.0[1] })
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
    fn denied_hits_consume_nothing_and_big_costs_never_fit() {
        let r = rate!("5/s");
        let mut s = None;
        assert_eq!(run(&mut s, 0, r, 4).kind, VerdictKind::Admit);
        assert_eq!(run(&mut s, 0, r, 2).kind, VerdictKind::Deny);
        assert_eq!(run(&mut s, 0, r, 1).kind, VerdictKind::Admit);
        assert_eq!(run(&mut s, 0, r, 6).kind, VerdictKind::Never);
    }
}
