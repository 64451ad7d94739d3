//! State read back from a store is input: every built-in strategy, given arbitrary stored state
//! (well-formed with any numbers, or any bytes) and extreme clocks and costs, answers with a
//! typed error or a sane decision: no panic (these tests run with overflow checks), never more
//! admissions than a client with no state at all gets at that instant, and waits and times to
//! live bounded by the rate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use traffik::Rate;
use traffik::strategy::Lease;
use traffik::strategy::{
    Concurrency, ConcurrencyState, CostAwareState, CostAwareTokenBucket, FixedWindow, FixedWindowState, Gcra, Input,
    LeakyBucket, LeakyBucketWithQueue, MeterState, QuotaRollover, QuotaRolloverState, Reserved, SlidingWindowCounter,
    SlidingWindowCounterState, SlidingWindowLog, SlidingWindowLogState, Strategy as Limiter, TokenBucket,
    TokenBucketWithDebt, VerdictKind,
};

const QUEUE: u32 = 3;
const DEBT: u32 = 2;

/// Times near the ends of the clock as well as ordinary ones.
fn instant() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(1u64 << 63),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        1_700_000_000_000_000u64..1_800_000_000_000_000,
        any::<u64>(),
    ]
}

/// Stored numbers: small, near the clock, near the top, anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1_000, 1_700_000_000_000_000u64..1_800_000_000_000_000, Just(u64::MAX), any::<u64>()]
}

fn rate() -> impl Strategy<Value = Rate> {
    (1u32..=50, prop_oneof![1u64..=1_000, 1_000u64..=86_400_000])
        .prop_map(|(limit, ms)| Rate::per_millis(limit, ms).unwrap())
}

/// The longest wait or time to live any strategy here may answer under `rate` (the longest
/// documented wait, 2W for the sliding counter and W + capacity for the meters, plus one period
/// for windows counted up to a period ahead, plus the queue and the debt).
fn bound_us(rate: Rate) -> u64 {
    let t = rate.emission_interval_us();
    3 * rate.period_us() + u64::from(QUEUE + DEBT + 1) * t
}

/// [`bound_us`] for the strategy named `name`: the cost-aware token bucket's level may reach
/// four capacities beyond the period (its documented longest wait is W + 4·capacity), and an
/// admission adds up to four more.
fn bound_of(name: &str, rate: Rate) -> u64 {
    let capacity = rate.limit() * rate.emission_interval_us();
    if name == "catb" { bound_us(rate) + 9 * capacity } else { bound_us(rate) }
}

/// The rollover cap used here: a fresh client gets L + 5, within the burst allowance below.
const ROLLOVER: u64 = 5;

/// Hits at one instant from `state` until refused (at most `cap` + 1 of them): how many were
/// admitted, checking every answer on the way.
fn burst<S: Limiter>(s: &S, mut state: Option<S::State>, input: &Input, cap: u64) -> Result<u64, TestCaseError> {
    let bound = bound_of(s.name(), input.rate);
    let mut admitted = 0;
    for _ in 0..=cap {
        let step = s.decide(state.as_ref(), input);
        let v = step.verdict;
        match v.kind {
            VerdictKind::Deny => prop_assert!(v.wait_us <= bound, "{}: wait {} > {bound}", s.name(), v.wait_us),
            VerdictKind::Delay => prop_assert!(v.wait_us <= bound, "{}: delay {} > {bound}", s.name(), v.wait_us),
            _ => {}
        }
        if let Some(w) = &step.write {
            prop_assert!(w.ttl_us <= bound, "{}: time to live {} > {bound}", s.name(), w.ttl_us);
        }
        if !v.is_admitted() {
            break;
        }
        admitted += 1;
        if let Some(w) = step.write {
            state = Some(w.state);
        }
    }
    Ok(admitted)
}

/// A hostile state admits no more than no state, at the same instant and rate.
fn no_more_than_fresh<S: Limiter>(s: &S, state: S::State, input: &Input) -> Result<(), TestCaseError> {
    let fresh = burst(s, None, input, 10_000)?;
    // No state at all: at most the strategy's burst (the limit, plus the queue or the debt),
    // even at the end of the clock.
    let most = input.rate.limit() + u64::from(QUEUE + DEBT) + 1;
    prop_assert!(fresh <= most, "{}: {fresh} admitted at one instant from no state (at most {most})", s.name());
    let hostile = burst(s, Some(state), input, fresh + 1)?;
    prop_assert!(hostile <= fresh, "{}: {hostile} admitted from stored state, {fresh} from none", s.name());
    // A cost no rate here can ever admit is refused as such, whatever is stored.
    let huge = Input { cost: u64::MAX, ..*input };
    prop_assert_eq!(s.decide(None, &huge).verdict.kind, VerdictKind::Never, "{}", s.name());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn windows_survive_any_stored_numbers(
        now in instant(), rate in rate(), a in number(), b in number(), c in number(), d in number(),
        entries in prop::collection::vec((number(), 0u64..5), 0..6),
    ) {
        let input = Input { now_us: now, rate, cost: 1 };
        no_more_than_fresh(&FixedWindow, FixedWindowState { last_us: a, used: b, period_us: c }, &input)?;
        no_more_than_fresh(
            &SlidingWindowCounter,
            SlidingWindowCounterState { last_us: a, prev: b, cur: c, period_us: d },
            &input,
        )?;
        no_more_than_fresh(&SlidingWindowLog, SlidingWindowLogState { period_us: d, entries }, &input)?;
        no_more_than_fresh(&Reserved::new(u64::from(u32::MAX)), FixedWindowState { last_us: a, used: b, period_us: c }, &input)?;
        let rollover = QuotaRollover::builder().max_rollover(ROLLOVER).build().unwrap();
        no_more_than_fresh(&rollover, QuotaRolloverState { start_us: a, used: b, carried: c, period_us: d }, &input)?;
    }

    #[test]
    fn meters_survive_any_stored_numbers(now in instant(), rate in rate(), tat in number()) {
        let input = Input { now_us: now, rate, cost: 1 };
        let state = MeterState { tat };
        no_more_than_fresh(&TokenBucket::new(), state, &input)?;
        no_more_than_fresh(&TokenBucketWithDebt::new(DEBT), state, &input)?;
        no_more_than_fresh(&LeakyBucket, state, &input)?;
        no_more_than_fresh(&LeakyBucketWithQueue::new(QUEUE), state, &input)?;
        no_more_than_fresh(&Gcra::new(), state, &input)?;
    }

    #[test]
    fn the_cost_aware_bucket_survives_any_stored_numbers(
        now in instant(), rate in rate(), tat in number(), avg in number(), prev in number(),
    ) {
        let input = Input { now_us: now, rate, cost: 1 };
        let state = CostAwareState { tat, avg_milli: avg, prev_avg_milli: prev };
        no_more_than_fresh(&CostAwareTokenBucket::builder().build().unwrap(), state, &input)?;
    }

    #[test]
    fn leases_survive_any_stored_numbers(
        now in instant(), rate in rate(), period in number(),
        leases in prop::collection::vec((number(), number(), number()), 0..6), stamp in number(),
    ) {
        let input = Input { now_us: now, rate, cost: 1 };
        let leases: Vec<Lease> =
            leases.into_iter().map(|(at_us, until_us, slots)| Lease { at_us, until_us, slots }).collect();
        let state = ConcurrencyState { period_us: period, leases };
        no_more_than_fresh(&Concurrency, state.clone(), &input)?;
        // Releasing or renewing whatever is stored never panics, and keeps a bounded state.
        let bound = bound_of("conc", rate);
        for w in [Concurrency.refund(&state, stamp, &input), Concurrency.renew(&state, stamp, &input)].into_iter().flatten() {
            prop_assert!(w.ttl_us <= bound, "time to live {}", w.ttl_us);
            prop_assert!(w.state.leases.len() <= 1024);
        }
    }

    /// Bytes that are not a state are a typed error; any answer at all is never a panic.
    #[test]
    fn stored_bytes_are_parsed_or_refused(now in instant(), rate in rate(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let input = Input { now_us: now, rate, cost: 1 };
        let handles: [traffik::StrategyHandle; 12] = [
            Concurrency.into(),
            FixedWindow.into(),
            SlidingWindowCounter.into(),
            SlidingWindowLog.into(),
            TokenBucket::new().into(),
            TokenBucketWithDebt::new(DEBT).into(),
            LeakyBucket.into(),
            LeakyBucketWithQueue::new(QUEUE).into(),
            Gcra::new().into(),
            QuotaRollover::builder().max_rollover(ROLLOVER).build().unwrap().into(),
            Reserved::new(10).into(),
            CostAwareTokenBucket::builder().build().unwrap().into(),
        ];
        for h in &handles {
            if let Ok(step) = h.decide_bytes(Some(&bytes), &input) {
                let bound = bound_of(h.name(), rate);
                prop_assert!(step.verdict.wait_us <= bound, "{}: wait {}", h.name(), step.verdict.wait_us);
                if let Some((_, ttl)) = step.write {
                    prop_assert!(ttl <= bound, "{}: time to live {ttl}", h.name());
                }
            }
            let _ = h.metadata_bytes(Some(&bytes), &input);
        }
    }
}
