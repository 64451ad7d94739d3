//! Concurrency: at most N requests in flight per key, each holding a lease that expires.

use serde::{Deserialize, Serialize};

use super::native::{Builtin, Native};
use super::params::ParamError;
use super::{Input, Metadata, Step, Strategy, Verdict, Write, json_u64};

/// The most slots one key can have: a rate whose limit is above it is a build error
/// ([`ParamError::OutOfRange`](super::ParamError::OutOfRange)), and a limit above it at run
/// time (a rate update, a rate function) counts as this many. It bounds the stored state (one
/// lease of 3 numbers per admission) on every backend.
pub const MAX_SLOTS: u64 = 1024;

/// At most N requests in flight per key: the rate `N/T` gives N slots, each held by a lease
/// that lives T (the lease time) unless renewed or released.
///
/// A hit of cost c takes a lease on c slots iff the live leases hold at most `N - c`; expired
/// leases are dropped as they are read. The lease is identified by the microsecond it was
/// taken at ([`Verdict::lease_us`]; unique within the key: a lease taken in the same
/// microsecond as an earlier one is stamped one microsecond later; never 0), which is what the holder
/// passes to give it back ([`Amend::Refund`](crate::backend::Amend::Refund)) or to extend it
/// by another T from now ([`Amend::Renew`](crate::backend::Amend::Renew)).
/// [`Throttle::acquire`](crate::Throttle::acquire) does both for you: its
/// [`Permit`](crate::lease::Permit) renews every T/3 while held and releases when dropped.
///
/// A denial's wait is the time until enough leases expire for the cost to fit, if their holders
/// neither renew nor release them: the earliest moment a retry can pass, never a promise (a
/// holder that keeps renewing keeps its slot). A cost above N is never admitted. `remaining` is
/// the number of free slots; the reset is the latest expiry.
///
/// State outlives its rate: leases are absolute times, stored with the lease time they were set
/// under. A new N counts the same leases against it at once; under a shorter T each lease
/// expires earlier by the difference (it lives at most the new T after it was taken or last
/// renewed), under a longer one it keeps its expiry; no wait is longer than the new T. Leases
/// stamped more than T ahead of now are not believed.
///
/// ```
/// use traffik::strategy::{Concurrency, Input, Strategy};
/// use traffik::rate;
///
/// // 2 in flight, leases of 30 seconds.
/// let at = |t| Input { now_us: t, rate: rate!("2/30s"), cost: 1 };
/// let first = Concurrency.decide(None, &at(0));
/// let state = first.write.map(|w| w.state);
/// let second = Concurrency.decide(state.as_ref(), &at(5));
/// let state = second.write.map(|w| w.state);
/// let third = Concurrency.decide(state.as_ref(), &at(10));
/// assert!(!third.verdict.is_admitted());
/// // The first lease expires 30 s after it was taken, unless renewed or released.
/// assert_eq!(third.verdict.wait_us, 30_000_000 - 10);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Concurrency;

/// One lease: taken at `at_us`, live until `until_us`, on `slots` slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// When it was taken (its identity within the key), microseconds since the epoch.
    pub at_us: u64,
    /// When it expires unless renewed, microseconds since the epoch.
    pub until_us: u64,
    /// Slots it holds (the hit's cost).
    pub slots: u64,
}

/// Stored state of [`Concurrency`]: the leases, in the order they were taken, and the lease
/// time they were written under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyState {
    /// The lease time the expiries were set with, microseconds.
    #[serde(default)]
    pub period_us: u64,
    /// The leases (expired ones may still be there; they count for nothing).
    pub leases: Vec<Lease>,
}

/// The leases that count at `now` under lease time `t`: under a shorter `t` than the state's,
/// each expiry moves earlier by the difference (a lease lives at most `t` after it was taken or
/// last renewed); expired ones, those stamped more than `t` ahead and empty ones are dropped,
/// expiries are capped at `now + t`, and at most [`MAX_SLOTS`] leases are read.
fn live(state: Option<&ConcurrencyState>, now: u64, t: u64) -> Vec<Lease> {
    let Some(s) = state else {
        return Vec::new();
    };
    let shorter = s.period_us.saturating_sub(t);
    let horizon = now.saturating_add(t);
    s.leases
        .iter()
        .map(|l| Lease { until_us: l.until_us.saturating_sub(shorter).min(horizon), ..*l })
        .filter(|l| l.until_us > now && l.at_us <= horizon && l.slots > 0)
        .take(MAX_SLOTS as usize)
        .map(|l| Lease { slots: l.slots.min(MAX_SLOTS), ..l })
        .collect()
}

fn used(leases: &[Lease]) -> u64 {
    leases.iter().fold(0u64, |a, l| a.saturating_add(l.slots))
}

/// Time from `now` until the last lease expires (0 with none).
fn latest(leases: &[Lease], now: u64) -> u64 {
    leases.iter().map(|l| l.until_us).max().map_or(0, |u| u.saturating_sub(now))
}

/// The state to write for `leases` and how long to keep it (at least 1 µs, so that no backend
/// reads a time to live of 0 as "forever").
fn keep(leases: Vec<Lease>, now: u64, t: u64) -> Write<ConcurrencyState> {
    let ttl_us = latest(&leases, now).max(1);
    Write { state: ConcurrencyState { period_us: t, leases }, ttl_us }
}

/// A fixed rate with more slots than [`MAX_SLOTS`] for [`Concurrency`]: a build error.
pub(crate) fn check_slots(strategy: &super::StrategyHandle, rate: &crate::RateSource) -> Result<(), ParamError> {
    let too_many = strategy.builtin() == Some(Builtin::Concurrency)
        && matches!(rate, crate::RateSource::Fixed(r) if !r.is_unlimited() && r.limit() > MAX_SLOTS);
    if too_many {
        return Err(ParamError::OutOfRange { name: "concurrency slots (the rate's limit)", range: "1 to 1024" });
    }
    Ok(())
}

/// Slots of a rate: its limit, at most [`MAX_SLOTS`].
pub(crate) fn slots_of(input: &Input) -> u64 {
    input.rate.limit().min(MAX_SLOTS)
}

impl Strategy for Concurrency {
    type State = ConcurrencyState;

    fn name(&self) -> &str {
        "conc"
    }

    fn decide(&self, state: Option<&ConcurrencyState>, input: &Input) -> Step<ConcurrencyState> {
        let (n, t, c, now) = (slots_of(input), input.rate.period_us(), input.cost, input.clock_us());
        if c > n {
            return Step::unchanged(Verdict::never());
        }
        let mut leases = live(state, now, t);
        let in_use = used(&leases);
        if in_use.saturating_add(c) <= n {
            let stamp = leases.iter().map(|l| l.at_us.saturating_add(1)).max().map_or(now.max(1), |next| next.max(now));
            leases.push(Lease { at_us: stamp, until_us: now.saturating_add(t), slots: c });
            let remaining = n - in_use - c;
            let reset = latest(&leases, now);
            let write = keep(leases, now, t);
            return Step::write(Verdict::admit(remaining, reset).with_lease(stamp), write.state, write.ttl_us);
        }
        // Free slots in order of expiry until the cost fits.
        let mut expiries: Vec<(u64, u64)> = leases.iter().map(|l| (l.until_us, l.slots)).collect();
        expiries.sort_unstable();
        let mut held = in_use;
        let mut wait = t;
        for (until, slots) in expiries {
            held = held.saturating_sub(slots);
            if held.saturating_add(c) <= n {
                wait = until.saturating_sub(now);
                break;
            }
        }
        Step::unchanged(Verdict::deny(n.saturating_sub(in_use), wait, latest(&leases, now)))
    }

    fn metadata(&self, state: Option<&ConcurrencyState>, input: &Input) -> Metadata {
        let (n, t, now) = (slots_of(input), input.rate.period_us(), input.clock_us());
        let leases = live(state, now, t);
        let mut m = Metadata::new();
        m.insert("strategy".into(), "concurrency".into());
        m.insert("slots".into(), json_u64(n));
        m.insert("in_flight".into(), json_u64(used(&leases)));
        m.insert("leases".into(), json_u64(leases.len() as u64));
        m.insert("lease_us".into(), json_u64(t));
        if let Some(first) = leases.iter().map(|l| l.until_us).min() {
            m.insert("earliest_expiry_us".into(), json_u64(first));
        }
        m
    }

    /// Releases the lease taken at `charged_at_us` (whatever `input.cost` says: a lease is
    /// given back whole); `None` if it has expired or was released already.
    fn refund(&self, s: &ConcurrencyState, charged_at_us: u64, input: &Input) -> Option<Write<ConcurrencyState>> {
        let (t, now) = (input.rate.period_us(), input.clock_us());
        let mut leases = live(Some(s), now, t);
        let i = leases.iter().position(|l| l.at_us == charged_at_us)?;
        leases.remove(i);
        Some(keep(leases, now, t))
    }

    /// Extends the lease taken at `charged_at_us` to T from now; `None` if it has expired or
    /// was released (its slots may be someone else's by now: the holder has lost them).
    fn renew(&self, s: &ConcurrencyState, charged_at_us: u64, input: &Input) -> Option<Write<ConcurrencyState>> {
        let (t, now) = (input.rate.period_us(), input.clock_us());
        let mut leases = live(Some(s), now, t);
        let lease = leases.iter_mut().find(|l| l.at_us == charged_at_us)?;
        lease.until_us = now.saturating_add(t);
        Some(keep(leases, now, t))
    }
}

impl Native for Concurrency {
    fn builtin(&self) -> Builtin {
        Builtin::Concurrency
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shorter_lease_time_shortens_every_lease() {
        let mut s = None;
        hit(&mut s, 0, 1);
        hit(&mut s, 0, 1);
        hit(&mut s, 0, 1);
        // Now 3/4s: the leases (10 s) expire at 4 s.
        let short = Input { now_us: S, rate: crate::rate!("3/4s"), cost: 1 };
        let v = Concurrency.decide(s.as_ref(), &short).verdict;
        assert_eq!(v.wait_us, 3 * S);
        let later = Input { now_us: 4 * S, ..short };
        assert!(Concurrency.decide(s.as_ref(), &later).verdict.is_admitted());
    }

    use super::*;
    use crate::rate;
    use crate::strategy::VerdictKind;

    const S: u64 = 1_000_000;

    fn at(now: u64, cost: u64) -> Input {
        Input { now_us: now, rate: rate!("3/10s"), cost }
    }

    fn hit(s: &mut Option<ConcurrencyState>, now: u64, cost: u64) -> Verdict {
        let step = Concurrency.decide(s.as_ref(), &at(now, cost));
        if let Some(w) = step.write {
            *s = Some(w.state);
        }
        step.verdict
    }

    #[test]
    fn admits_n_then_waits_for_the_earliest_expiry() {
        let mut s = None;
        let a = hit(&mut s, 0, 1);
        let b = hit(&mut s, 0, 1);
        let c = hit(&mut s, 2 * S, 1);
        assert!(a.is_admitted() && b.is_admitted() && c.is_admitted());
        // Same microsecond: distinct stamps.
        assert_eq!((a.lease_us, b.lease_us, c.lease_us), (1, 2, 2 * S));
        assert_eq!(c.remaining, 0);
        let d = hit(&mut s, 3 * S, 1);
        assert_eq!(d.kind, VerdictKind::Deny);
        assert_eq!(d.wait_us, 7 * S);
        // A cost of 2 needs two leases gone: both taken at 0, expiring at 10 s.
        assert_eq!(hit(&mut s, 3 * S, 2).wait_us, 7 * S);
        assert_eq!(hit(&mut s, 3 * S, 4).kind, VerdictKind::Never);
        // Retrying after the wait passes.
        assert!(hit(&mut s, 10 * S, 1).is_admitted());
    }

    #[test]
    fn release_frees_a_slot_and_renew_extends_only_a_live_lease() {
        let mut s = None;
        let stamps: Vec<u64> = (0..3).map(|i| hit(&mut s, i, 1).lease_us).collect();
        let state = s.clone().unwrap_or_default();
        let released = Concurrency.refund(&state, stamps[1], &at(5, 1)).map(|w| w.state);
        assert_eq!(released.as_ref().map(|r| r.leases.len()), Some(2));
        assert!(Concurrency.refund(released.as_ref().unwrap_or(&state), stamps[1], &at(6, 1)).is_none());
        // Renewed at 9 s: the first lease now lives until 19 s.
        let renewed = Concurrency.renew(&state, stamps[0], &at(9 * S, 1)).map(|w| w.state);
        s = renewed;
        let d = hit(&mut s, 11 * S, 1);
        assert!(d.is_admitted(), "two leases expired at 10 s");
        assert_eq!(Concurrency.renew(&state, stamps[0], &at(20 * S, 1)), None);
    }

    #[test]
    fn hostile_state_is_bounded() {
        let lease = Lease { at_us: u64::MAX, until_us: u64::MAX, slots: u64::MAX };
        let far = ConcurrencyState { period_us: 10 * S, leases: vec![lease; 5000] };
        // Stamped far ahead: not believed.
        assert!(Concurrency.decide(Some(&far), &at(0, 1)).verdict.is_admitted());
        let near = ConcurrencyState {
            period_us: 10 * S,
            leases: vec![Lease { at_us: 0, until_us: u64::MAX, slots: u64::MAX }; 5000],
        };
        let v = Concurrency.decide(Some(&near), &at(0, 1)).verdict;
        assert_eq!(v.kind, VerdictKind::Deny);
        // Expiries are capped at one lease time from now.
        assert_eq!(v.wait_us, 10 * S);
        assert!(v.reset_us <= 10 * S);
    }
}
