//! Refunds: a hit given back leaves the key as if it had not happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use traffik::strategy::Input;
use traffik::{Clock, Context, ManualClock, Rate, RequestView, SharedBackend, StrategyHandle, Throttle};

use crate::{builtin_suites, rates};

#[derive(Clone, Debug)]
struct RefundCase {
    suite: usize,
    rate: Rate,
    /// Earlier hits: (microseconds after the previous, cost).
    before: Vec<(u64, u64)>,
    /// The hit given back: microseconds after the last earlier hit, and its cost.
    hit: (u64, u64),
    /// How long after the hit it is given back.
    refund_after_us: u64,
    /// Later peeks: microseconds after the refund, and cost.
    later: Vec<(u64, u64)>,
}

fn case(suites: usize) -> impl proptest::strategy::Strategy<Value = RefundCase> {
    let hit = (prop_oneof![2 => Just(0u64), 2 => 0u64..300_000, 1 => 0u64..3_000_000], 1u64..=3);
    (
        0..suites,
        rates(),
        prop::collection::vec(hit.clone(), 0..8),
        hit,
        prop_oneof![Just(0u64), 0u64..50],
        prop::collection::vec((0u64..3_000_000, 1u64..=4), 1..8),
    )
        .prop_map(|(suite, rate, before, hit, refund_after_us, later)| RefundCase {
            suite,
            rate,
            before,
            hit,
            refund_after_us,
            later,
        })
}

/// Whether the hit was admitted, the state after it, and what identifies the admission for a
/// refund: a lease's stamp, else the hit's time.
fn apply(
    s: &StrategyHandle,
    state: Option<Vec<u8>>,
    input: &Input,
) -> Result<(bool, Option<Vec<u8>>, u64), TestCaseError> {
    let step = s.decide_bytes(state.as_deref(), input).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let admitted = step.verdict.is_admitted();
    let charged_at = if step.verdict.lease_us != 0 { step.verdict.lease_us } else { input.now_us };
    Ok((admitted, step.write.map(|(b, _)| b).or(state), charged_at))
}

/// For every built-in strategy (and the suites' custom one): after some hits, one more admitted hit is given back at most
/// 50 µs later (as the Memcached backend compensates a group hit); from then on every peek
/// answers exactly as it would have had that hit never been made. (The built-in refunds are
/// exact for every strategy when given back that soon: the windows and the log take the cost
/// off the window or entry that counted it, a meter's arrival time moves back by `cost · T`,
/// never before now; a lease is removed, named by its stamp.)
pub fn check_refunds(cases: u32) {
    let suites: Vec<StrategyHandle> = builtin_suites().into_iter().map(|s| s.strategy).collect();
    let mut runner = TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() });
    let result = runner.run(&case(suites.len()), |c| {
        let s = &suites[c.suite];
        let mut now = 1_700_000_000_000_000u64;
        let mut state = None;
        for &(advance, cost) in &c.before {
            now += advance;
            state = apply(s, state, &Input { now_us: now, rate: c.rate, cost })?.1;
        }
        let without = state.clone();
        now += c.hit.0;
        let hit = Input { now_us: now, rate: c.rate, cost: c.hit.1 };
        let (admitted, with, charged_at) = apply(s, state, &hit)?;
        if !admitted {
            return Ok(());
        }
        now += c.refund_after_us;
        let refund = Input { now_us: now, rate: c.rate, cost: c.hit.1 };
        let with = with.unwrap_or_default();
        let refunded =
            match s.refund_bytes(&with, charged_at, &refund).map_err(|e| TestCaseError::fail(e.to_string()))? {
                Some((bytes, _)) => Some(bytes),
                None => Some(with),
            };
        for &(advance, cost) in &c.later {
            now += advance;
            let input = Input { now_us: now, rate: c.rate, cost };
            let a = s.decide_bytes(refunded.as_deref(), &input).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let b = s.decide_bytes(without.as_deref(), &input).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                a.verdict,
                b.verdict,
                "{} at +{}us, cost {}",
                s.name(),
                now.saturating_sub(charged_at),
                cost
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("a refunded hit left a trace: {e}");
    }
}

/// [`check_refunds`] through a [`Throttle`] on a backend: for every built-in
/// strategy (and the suites' custom one, which takes the backend's generic path), two clients get the same earlier hits; one of them makes one more hit, which is
/// given back with [`Throttle::refund`](traffik::Throttle::refund) at most 50 µs later; from
/// then on both clients get the same answers to every check. This covers the backend's side of
/// a refund: the admission named by [`Decision::charged_at_us`](traffik::Decision), the key
/// found again, the state written back atomically.
///
/// The backend must decide at the throttles' time (Redis: its client-clock mode). Keys are
/// unique per case (a fresh throttle uid), so a shared server needs no reset between cases.
pub fn check_backend_refunds(make: impl Fn() -> SharedBackend, cases: u32) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = {
        let _guard = rt.enter();
        make()
    };
    let suites: Vec<StrategyHandle> = builtin_suites().into_iter().map(|s| s.strategy).collect();
    let run = Arc::new(AtomicU64::new(0));
    let mut runner = TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() });
    let result = runner.run(&case(suites.len()), |c| {
        let n = run.fetch_add(1, Ordering::Relaxed);
        rt.block_on(backend_case(&backend, &suites[c.suite], &c, n))
    });
    if let Err(e) = result {
        panic!("a refund through a throttle left a trace on backend `{}`: {e}", backend.kind());
    }
}

async fn backend_case(
    backend: &SharedBackend,
    strategy: &StrategyHandle,
    c: &RefundCase,
    n: u64,
) -> Result<(), TestCaseError> {
    let fail = |e: traffik::Error| TestCaseError::fail(e.to_string());
    let clock = ManualClock::new(1_700_000_000_000_000);
    let t = Throttle::builder()
        .uid(format!("refund-{:x}-{n}", crate::run_id()))
        .rate(c.rate)
        .shared_backend(Arc::clone(backend))
        .strategy(strategy.clone())
        .clock(clock.clone())
        .no_registry()
        .build()
        .map_err(fail)?;
    let refunded = RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, 1], 4000))));
    let twin = RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, 2], 4000))));
    let cost = |c: u64| Context::new().cost(c);
    for &(advance, c) in &c.before {
        clock.advance_us(advance);
        let _ = t.hit_with(&refunded, &cost(c)).await.map_err(fail)?;
        let _ = t.hit_with(&twin, &cost(c)).await.map_err(fail)?;
    }
    clock.advance_us(c.hit.0);
    let hit = t.hit_with(&refunded, &cost(c.hit.1)).await.map_err(fail)?;
    if !hit.is_charged() {
        return Ok(());
    }
    clock.advance_us(c.refund_after_us);
    t.refund(&hit).await.map_err(fail)?;
    for &(advance, c) in &c.later {
        clock.advance_us(advance);
        let a = t.check_with(&refunded, &cost(c)).await.map_err(fail)?;
        let b = t.check_with(&twin, &cost(c)).await.map_err(fail)?;
        prop_assert_eq!(
            (a.outcome, a.remaining, a.wait, a.reset),
            (b.outcome, b.remaining, b.wait, b.reset),
            "{} at +{}us after the refunded hit, cost {}",
            strategy.name(),
            clock.now_us().saturating_sub(hit.charged_at_us),
            c
        );
    }
    Ok(())
}
