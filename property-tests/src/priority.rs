//! Priority with reserved capacity, through whole throttles on any backend: random schedules of
//! hits at random levels on one client, against a model of the shared window, with the three
//! bounds of [`traffik::priority`] checked on every window, and a flood of low-priority traffic
//! that must leave the higher levels exactly their reserves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use traffik::priority::{Priorities, Reserve};
use traffik::{Context, ManualClock, Outcome, Rate, RequestView, SharedBackend, Throttle};

use crate::{RUN, SuiteConfig, run_id, runtime};

/// The level a test request carries in its context (0 is the highest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Level(pub u8);

/// A random set of three levels and a schedule of hits on one client.
#[derive(Clone, Debug)]
pub struct PriorityCase {
    /// Capacity L.
    pub limit: u32,
    /// Period W in milliseconds.
    pub period_ms: u64,
    /// Reserves of levels 0 and 1 (level 2, the lowest, keeps nothing).
    pub reserves: [u32; 2],
    /// Hits: (advance in thousandths of W, level or none, cost).
    pub hits: Vec<(u64, Option<u8>, u64)>,
}

fn cases(max_steps: usize) -> impl proptest::strategy::Strategy<Value = PriorityCase> {
    (3u32..=12, prop::sample::select(vec![100u64, 1_000, 60_000]))
        .prop_flat_map(move |(limit, period_ms)| {
            let third = limit / 3;
            let hit = (
                prop_oneof![4 => Just(0u64), 3 => 0u64..200, 1 => 0u64..2_500],
                prop_oneof![1 => Just(Some(0u8)), 2 => Just(Some(1u8)), 5 => Just(Some(2u8)), 1 => Just(None)],
                prop_oneof![4 => Just(1u64), 1 => 1u64..=4],
            );
            (Just(limit), Just(period_ms), 0..=third, 0..=third, prop::collection::vec(hit, 1..=max_steps.max(1)))
        })
        .prop_map(|(limit, period_ms, r0, r1, hits)| PriorityCase { limit, period_ms, reserves: [r0, r1], hits })
}

fn priorities(case: &PriorityCase) -> Priorities<Level> {
    let base = Rate::per_millis(case.limit, case.period_ms).expect("rate");
    Priorities::builder(base, |_req: &RequestView<'_>, ctx: &Context| ctx.get::<Level>().copied())
        .level(Level(0), Reserve::Units(case.reserves[0]))
        .level(Level(1), Reserve::Units(case.reserves[1]))
        .level(Level(2), Reserve::None)
        .default_level(Level(2))
        .build()
        .expect("valid levels")
}

fn throttle(backend: SharedBackend, p: &Priorities<Level>, clock: &ManualClock) -> Throttle {
    let uid = format!("prio-{:x}-{}", run_id(), RUN.fetch_add(1, Ordering::Relaxed));
    Throttle::builder()
        .uid(uid)
        .rate_source(p.clone().into())
        .shared_backend(backend)
        .strategy(p.strategy())
        .clock(clock.clone())
        .build()
        .expect("throttle")
}

fn request() -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, 44], 4000))))
}

async fn run_case(backend: SharedBackend, case: &PriorityCase) -> Result<(), TestCaseError> {
    let p = priorities(case);
    let l = u64::from(case.limit);
    let w = case.period_ms * 1000;
    // Worked out here from the reserves, not asked of the priorities.
    let [r0, r1] = case.reserves.map(u64::from);
    let ceilings = [l, l - r0, l - r0 - r1];
    for level in 0..3u8 {
        prop_assert_eq!(p.ceiling_of(&Level(level)), Some(ceilings[usize::from(level)]));
    }
    let ceiling = |level: u8| ceilings[usize::from(level)];
    // What level i may count on whatever lower levels do: its ceiling less the next one's.
    let reserve = |level: u8| ceiling(level) - if level < 2 { ceiling(level + 1) } else { 0 };
    let clock = ManualClock::new(1_700_000_000_000_000 + case.period_ms * 777);
    let t = throttle(backend, &p, &clock);
    let req = request();
    // Admitted cost per (window, level).
    let mut admitted: HashMap<(u64, u8), u64> = HashMap::new();
    for (i, &(advance, level, cost)) in case.hits.iter().enumerate() {
        clock.advance(Duration::from_micros(w * advance / 1000));
        let now = traffik::Clock::now_us(&clock);
        let window = now / w;
        let effective = level.unwrap_or(2);
        let ctx = match level {
            Some(x) => Context::new().cost(cost).with(Level(x)),
            None => Context::new().cost(cost),
        };
        let d = t.hit_with(&req, &ctx).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let used: u64 = (0..3).map(|x| admitted.get(&(window, x)).copied().unwrap_or(0)).sum();
        let at_or_above: u64 = (0..=effective).map(|x| admitted.get(&(window, x)).copied().unwrap_or(0)).sum();
        let model = used + cost <= ceiling(effective);
        let what = || format!("hit {i} at level {level:?}, cost {cost}, window {window}, used {used}: {d:?}");
        prop_assert_eq!(d.is_allowed(), model, "model disagrees; {}", what());
        if cost > ceiling(effective) {
            prop_assert_eq!(d.outcome, Outcome::Never, "{}", what());
        }
        // However much lower levels sent, a level's reserve is there for it.
        if at_or_above + cost <= reserve(effective) {
            prop_assert!(d.is_allowed(), "reserve of level {effective} not honoured; {}", what());
        }
        if d.is_allowed() {
            *admitted.entry((window, effective)).or_default() += cost;
        }
        if i % 7 == 3 {
            let stat = t.stat_with(&req, &ctx).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let stat = stat.into_limited().ok_or_else(|| TestCaseError::fail("no stat"))?;
            let meta = |k: &str| stat.metadata.get(k).and_then(serde_json::Value::as_u64);
            prop_assert_eq!(meta("capacity"), Some(l), "{:?}", stat.metadata);
            prop_assert_eq!(meta("reserved_above"), Some(l - ceiling(effective)), "{:?}", stat.metadata);
        }
    }
    let mut windows: Vec<u64> = admitted.keys().map(|(win, _)| *win).collect();
    windows.sort_unstable();
    windows.dedup();
    for win in windows {
        let of = |x: u8| admitted.get(&(win, x)).copied().unwrap_or(0);
        prop_assert!(of(0) + of(1) + of(2) <= l, "window {} admitted more than {}", win, l);
        for level in 0..3u8 {
            let below: u64 = (level..3).map(of).sum();
            prop_assert!(below <= ceiling(level), "levels {}.. took {} > ceiling {}", level, below, ceiling(level));
        }
    }
    Ok(())
}

/// At the start of a window, a flood of `3·L` lowest-level hits, then hits of level 1 until
/// refused, then of level 0: the flood gets exactly `ceiling(2)`, level 1 exactly its reserve,
/// level 0 exactly its own.
async fn flood(backend: SharedBackend) {
    let case = PriorityCase { limit: 20, period_ms: 60_000, reserves: [3, 5], hits: Vec::new() };
    let p = priorities(&case);
    let clock = ManualClock::new(1_700_000_040_000_000);
    let t = throttle(backend, &p, &clock);
    let req = request();
    let count = |level: u8, tries: u32| {
        let t = t.clone();
        async move {
            let ctx = Context::new().with(Level(level));
            let mut n = 0;
            for _ in 0..tries {
                if t.hit_with(&req, &ctx).await.expect("hit").is_allowed() {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(count(2, 60).await, 12, "the flood fills the lowest level's ceiling");
    assert_eq!(count(1, 10).await, 5, "level 1 keeps its reserve under the flood");
    assert_eq!(count(0, 10).await, 3, "level 0 keeps its reserve under the flood");
}

/// Runs random priority schedules and the flood on the backends `make` returns (which must use
/// the throttle's clock).
pub fn check_priorities(make: impl Fn() -> SharedBackend, cfg: &SuiteConfig) {
    let rt = runtime();
    let backend = {
        let _guard = rt.enter();
        make()
    };
    rt.block_on(flood(backend.clone()));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cfg.cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    });
    let result = runner.run(&cases(cfg.max_steps), |case| rt.block_on(run_case(backend.clone(), &case)));
    if let Err(e) = result {
        panic!("priorities failed on backend `{}`: {e}", backend.kind());
    }
}
