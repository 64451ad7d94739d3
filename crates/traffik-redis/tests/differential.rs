//! Differential property test: for random schedules, the Lua script of every built-in strategy
//! decides exactly what the Rust state machine decides, step by step (verdicts of hits, peeks
//! and stats, and the metadata computed from the stored state), including schedules whose rate
//! changes from one step to the next (state written under one rate, read under another), and
//! the refunds of every built-in (the scripts' refund mode against `Strategy::refund`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use traffik::backend::Amend;
use traffik::backend::{Mode, Operation};
use traffik::strategy::{
    Concurrency, CostAwareTokenBucket, FixedWindow, Gcra, Input, LeakyBucket, LeakyBucketWithQueue, QuotaRollover,
    Reserved, SlidingWindowCounter, SlidingWindowLog, Strategy as RateStrategy, TokenBucket, TokenBucketWithDebt,
};
use traffik::{Backend, Key, Rate, StrategyHandle};
use traffik_redis::RedisBackend;
use traffik_test_support::redis_server;

#[derive(Clone, Debug)]
enum Which {
    Fw,
    Swc,
    Swl,
    Tb(Option<u32>),
    Tbd(Option<u32>, u32),
    Lb,
    Lbq(u32),
    Gcra(u64),
    Qr(Option<u64>, Option<u32>),
    Prio(u64),
    /// Burst, reference cost in thousandths, slowdown in thousandths, window.
    Ca(Option<u32>, u64, u64, u32),
    Conc,
}

#[derive(Clone, Debug)]
enum Action {
    Hit,
    Peek,
    Stat,
    /// A refund of the step's cost, charged at that time.
    Refund(Charge),
}

/// The time a refund names its admission by.
#[derive(Clone, Debug)]
enum Charge {
    /// The input `now` of the `n`-th admission so far (modulo their number; `now` when there
    /// is none): what `Decision::charged_at_us` is in client-clock mode.
    Admission(usize),
    /// `now` plus this many microseconds (a window or entry near, or no admission at all).
    Near(i64),
    /// Any time, beyond 2^53 (what Lua numbers hold exactly) included.
    Any(u64),
}

#[derive(Clone, Debug)]
struct Step {
    /// Signed time change in microseconds (negative: a lagging client clock).
    delta: i64,
    cost: u64,
    action: Action,
    /// From this step on, this limit and period (ms) instead.
    new_rate: Option<(u32, u64)>,
}

#[derive(Clone, Debug)]
struct Case {
    which: Which,
    limit: u32,
    period_ms: u64,
    start: u64,
    steps: Vec<Step>,
}

fn which() -> impl proptest::strategy::Strategy<Value = Which> {
    prop_oneof![
        Just(Which::Fw),
        Just(Which::Swc),
        Just(Which::Swl),
        proptest::option::of(1u32..40).prop_map(Which::Tb),
        (proptest::option::of(1u32..40), 0u32..10).prop_map(|(b, d)| Which::Tbd(b, d)),
        Just(Which::Lb),
        (0u32..10).prop_map(Which::Lbq),
        prop_oneof![Just(0u64), 0u64..5_000_000].prop_map(Which::Gcra),
        (proptest::option::of(0u64..30), proptest::option::of(0u32..=100)).prop_map(|(m, p)| Which::Qr(m, p)),
        (1u64..10_000).prop_map(Which::Prio),
        (proptest::option::of(1u32..40), 1u64..8_000, 1_000u64..=4_000, 1u32..=1_000)
            .prop_map(|(b, r, m, n)| Which::Ca(b, r, m, n)),
        Just(Which::Conc),
    ]
}

fn limits() -> impl proptest::strategy::Strategy<Value = u32> {
    prop_oneof![6 => 1u32..=20, 1 => 21u32..=5_000, 1 => Just(u32::MAX)]
}

fn periods() -> impl proptest::strategy::Strategy<Value = u64> {
    prop::sample::select(vec![1u64, 3, 7, 100, 999, 1_000, 2_500, 60_000, 3_600_000, 86_400_000])
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    case_with(which(), limits(), periods())
}

/// Sliding window counters whose weights are exact fractions, so that estimates land exactly
/// on the limit and any change in the order of floating-point operations shows: fill the
/// previous window with `prev`, the current one with `cur`, then ask for `cost` at `elapsed`
/// (the denial's wait bisects right onto the boundary).
fn counter_case() -> impl proptest::strategy::Strategy<Value = Case> {
    let period = prop::sample::select(vec![3u64, 6, 7, 9, 12, 15]);
    (period, 1u32..=12, 1u64..1_000_000_000)
        .prop_flat_map(|(period_ms, limit, n)| {
            let l = u64::from(limit);
            (Just((period_ms, limit, n)), 0..=l)
        })
        .prop_flat_map(|((period_ms, limit, n), prev)| {
            let l = u64::from(limit);
            (Just((period_ms, limit, n, prev)), 0..=l - prev, 1..=l, 0..period_ms * 1000)
        })
        .prop_map(|((period_ms, limit, n, prev), cur, cost, elapsed)| {
            let w = period_ms * 1000;
            let hit = |delta: i64, cost: u64| Step { delta, cost, action: Action::Hit, new_rate: None };
            let mut steps = Vec::new();
            let mut delta = 0i64;
            if prev > 0 {
                steps.push(hit(0, prev));
            }
            delta += w as i64;
            if cur > 0 {
                steps.push(hit(delta, cur));
                delta = 0;
            }
            steps.push(Step { delta: delta + elapsed as i64, cost, action: Action::Peek, new_rate: None });
            steps.push(Step { delta: 0, cost, action: Action::Stat, new_rate: None });
            steps.push(hit(0, cost));
            Case { which: Which::Swc, limit, period_ms, start: n * w, steps }
        })
}

fn case_with(
    which: impl proptest::strategy::Strategy<Value = Which>,
    limit: impl proptest::strategy::Strategy<Value = u32>,
    period: impl proptest::strategy::Strategy<Value = u64>,
) -> impl proptest::strategy::Strategy<Value = Case> {
    let start =
        prop_oneof![0u64..10_000_000, 1_600_000_000_000_000u64..1_900_000_000_000_000, 0u64..4_000_000_000_000_000];
    let step = (
        prop_oneof![
            4 => Just(0i64),
            4 => 0i64..2_000,
            3 => 0i64..200_000,
            2 => 0i64..5_000_000,
            1 => 0i64..200_000_000_000,
            1 => -100_000i64..0,
        ],
        prop_oneof![8 => 1u64..=4, 2 => 1u64..=40, 1 => Just(u64::MAX), 1 => 1u64..=1_000_000],
        prop_oneof![6 => Just(Action::Hit), 2 => Just(Action::Peek), 1 => Just(Action::Stat)],
        prop_oneof![7 => Just(None), 1 => (limits(), periods()).prop_map(Some)],
    )
        .prop_map(|(delta, cost, action, new_rate)| Step { delta, cost, action, new_rate });
    (which, limit, period, start, prop::collection::vec(step, 1..60))
        .prop_map(|(which, limit, period_ms, start, steps)| Case { which, limit, period_ms, start, steps })
}

thread_local! {
    /// An admin connection, for the tests that check times to live.
    static ADMIN: std::cell::RefCell<Option<redis::Connection>> = const { std::cell::RefCell::new(None) };
}

/// When the test set an [`ADMIN`] connection: `key`'s time to live is what a write of `ttl_us`
/// sets (rounded up to ms, at least the backend's 600 s minimum), less the little time that
/// passed since (at most one patient timeout's worth).
fn expires_as_written(key: &str, ttl_us: u64) -> Result<(), String> {
    ADMIN.with_borrow_mut(|admin| {
        let Some(admin) = admin.as_mut() else { return Ok(()) };
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(admin).map_err(|e| e.to_string())?;
        let expected = ttl_us.div_ceil(1000).max(600_000) as i64;
        let slack = 2 * common::PATIENT.as_millis() as i64;
        if pttl <= expected && pttl > expected - slack {
            Ok(())
        } else {
            Err(format!("PTTL {pttl} ms, written with a time to live of {ttl_us} µs"))
        }
    })
}

/// Schedules of hits, peeks, stats, rate changes and refunds, for every built-in but the
/// concurrency strategy (whose releases `compare_leases` checks).
fn refund_case() -> impl proptest::strategy::Strategy<Value = Case> {
    let which = which().prop_filter("leases are released by compare_leases", |w| !matches!(w, Which::Conc));
    let start =
        prop_oneof![0u64..10_000_000, 1_600_000_000_000_000u64..1_900_000_000_000_000, 0u64..4_000_000_000_000_000];
    let charge = prop_oneof![
        6 => (0usize..64).prop_map(Charge::Admission),
        2 => (-3_000_000i64..3_000_000).prop_map(Charge::Near),
        1 => prop_oneof![0u64..1 << 53, Just(1u64 << 53), Just(u64::MAX)].prop_map(Charge::Any),
    ];
    let step = (
        prop_oneof![
            4 => Just(0i64),
            4 => 0i64..2_000,
            3 => 0i64..200_000,
            2 => 0i64..5_000_000,
            1 => 0i64..200_000_000_000,
            1 => -100_000i64..0,
        ],
        prop_oneof![8 => 1u64..=4, 2 => 1u64..=40, 1 => Just(u64::MAX), 1 => 1u64..=1_000_000],
        prop_oneof![
            6 => Just(Action::Hit),
            1 => Just(Action::Peek),
            1 => Just(Action::Stat),
            4 => charge.prop_map(Action::Refund),
        ],
        prop_oneof![9 => Just(None), 1 => (limits(), periods()).prop_map(Some)],
    )
        .prop_map(|(delta, cost, action, new_rate)| Step { delta, cost, action, new_rate });
    (which, limits(), periods(), start, prop::collection::vec(step, 1..60))
        .prop_map(|(which, limit, period_ms, start, steps)| Case { which, limit, period_ms, start, steps })
}

static KEYS: AtomicU64 = AtomicU64::new(0);

async fn compare<S: RateStrategy + Clone>(s: S, backend: &RedisBackend, case: &Case) -> Result<(), TestCaseError> {
    let handle = StrategyHandle::new(s.clone());
    let mut rate = Rate::per_millis(case.limit, case.period_ms).map_err(|e| TestCaseError::reject(e.to_string()))?;
    let key = Key::builder(&format!("diff-{}", common::run_id()))
        .part(&KEYS.fetch_add(1, Ordering::Relaxed).to_be_bytes())
        .build();
    let mut state: Option<S::State> = None;
    let mut admissions: Vec<u64> = Vec::new();
    let mut now = case.start;
    for (i, step) in case.steps.iter().enumerate() {
        now = now.saturating_add_signed(step.delta);
        if let Some((limit, period_ms)) = step.new_rate {
            rate = Rate::per_millis(limit, period_ms).map_err(|e| TestCaseError::reject(e.to_string()))?;
        }
        let input = Input { now_us: now, rate, cost: step.cost };
        let rust = s.decide(state.as_ref(), &input);
        let mode = match step.action {
            Action::Hit | Action::Refund(_) => Mode::Consume,
            _ => Mode::Peek,
        };
        let op = Operation { key: &key, strategy: &handle, input, mode };
        let ctx = || format!("step {i}: now {now}, {rate:?}, cost {}, {:?}, state {state:?}", step.cost, step.action);
        match &step.action {
            Action::Refund(charge) => {
                let charged = match *charge {
                    Charge::Admission(n) => admissions.get(n % admissions.len().max(1)).copied().unwrap_or(now),
                    Charge::Near(d) => now.saturating_add_signed(d),
                    Charge::Any(t) => t,
                };
                let ctx = format!("{}, charged at {charged}", ctx());
                let refund = state.as_ref().and_then(|st| s.refund(st, charged, &input));
                let amend = Amend::Refund { charged_at_us: charged };
                let changed =
                    backend.amend(op, amend, None).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx)))?;
                prop_assert_eq!(changed, refund.is_some(), "refund; {}", ctx);
                if let Some(w) = refund {
                    expires_as_written(&backend.storage_key(&key, &handle), w.ttl_us)
                        .map_err(|e| TestCaseError::fail(format!("{e}; {ctx}")))?;
                    state = Some(w.state);
                }
                // What the refund left: a unit hit's verdict and the metadata of the state.
                let probe = Input { cost: 1, ..input };
                let op = Operation { key: &key, strategy: &handle, input: probe, mode: Mode::Peek };
                let (v, meta) = backend.stat(op).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx)))?;
                prop_assert_eq!(v, s.decide(state.as_ref(), &probe).verdict, "after the refund; {}", ctx);
                prop_assert_eq!(meta, s.metadata(state.as_ref(), &probe), "metadata after the refund; {}", ctx);
                continue;
            }
            Action::Stat => {
                let (v, meta) = backend.stat(op).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx())))?;
                // A stat reports no lease stamp (nothing is taken).
                prop_assert_eq!(v, rust.verdict.with_lease(0), "stat verdict; {}", ctx());
                prop_assert_eq!(meta, s.metadata(state.as_ref(), &input), "metadata; {}", ctx());
            }
            _ => {
                let v = backend.decide(op).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx())))?;
                prop_assert_eq!(v, rust.verdict, "verdict; {}", ctx());
            }
        }
        if let (Action::Hit, Some(w)) = (&step.action, rust.write) {
            state = Some(w.state);
            admissions.push(now);
        }
    }
    Ok(())
}

async fn run(backend: &RedisBackend, case: &Case) -> Result<(), TestCaseError> {
    match case.which {
        Which::Fw => compare(FixedWindow, backend, case).await,
        Which::Swc => compare(SlidingWindowCounter, backend, case).await,
        Which::Swl => compare(SlidingWindowLog, backend, case).await,
        Which::Tb(None) => compare(TokenBucket::new(), backend, case).await,
        Which::Tb(Some(b)) => compare(TokenBucket::with_burst(b), backend, case).await,
        Which::Tbd(None, d) => compare(TokenBucketWithDebt::new(d), backend, case).await,
        Which::Tbd(Some(b), d) => compare(TokenBucketWithDebt::with_burst(b, d), backend, case).await,
        Which::Lb => compare(LeakyBucket, backend, case).await,
        Which::Lbq(q) => compare(LeakyBucketWithQueue::new(q), backend, case).await,
        Which::Gcra(t) => compare(Gcra::with_tolerance(Duration::from_micros(t)), backend, case).await,
        Which::Ca(burst, reference, slowdown, window) => {
            let mut b = CostAwareTokenBucket::builder()
                .reference_cost(reference as f64 / 1000.0)
                .max_slowdown(slowdown as f64 / 1000.0)
                .window(window);
            if let Some(burst) = burst {
                b = b.burst(burst);
            }
            compare(b.build().map_err(|e| TestCaseError::fail(e.to_string()))?, backend, case).await
        }
        Which::Prio(capacity) => compare(Reserved::new(capacity), backend, case).await,
        Which::Conc => compare(Concurrency, backend, case).await,
        Which::Qr(max, percent) => {
            let mut b = QuotaRollover::builder();
            if let Some(m) = max {
                b = b.max_rollover(m);
            }
            if let Some(p) = percent {
                b = b.max_percent(p);
            }
            compare(b.build().map_err(|e| TestCaseError::fail(e.to_string()))?, backend, case).await
        }
    }
}

#[test]
fn lua_scripts_decide_exactly_like_the_rust_state_machines() {
    let server = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = common::client_clock(&server.url);
    let mut runner = TestRunner::new(Config { cases: 1500, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |c| rt.block_on(run(&backend, &c)));
    if let Err(e) = result {
        panic!("Lua and Rust disagree: {e}");
    }
}

#[test]
fn sliding_counter_boundaries_and_waits_match_to_the_microsecond() {
    let server = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = common::client_clock(&server.url);
    let mut runner = TestRunner::new(Config { cases: 1500, failure_persistence: None, ..Config::default() });
    let result = runner.run(&counter_case(), |c| rt.block_on(run(&backend, &c)));
    if let Err(e) = result {
        panic!("Lua and Rust disagree: {e}");
    }
}

/// Refunds: for every built-in, the script's refund mode changes the state exactly when
/// `Strategy::refund` does, and to the same state (every later verdict and metadata agree, and
/// each refund is followed by a stat of what it left), whether it names an earlier admission, a
/// time near now or any time at all, under rate changes and a lagging clock; and what it
/// writes expires when the Rust refund says.
#[test]
fn lua_refunds_give_back_exactly_what_the_rust_strategies_do() {
    let server = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = common::client_clock(&server.url);
    ADMIN.set(Some(common::admin(&server.url)));
    let mut runner = TestRunner::new(Config { cases: 1200, failure_persistence: None, ..Config::default() });
    let result = runner.run(&refund_case(), |c| rt.block_on(run(&backend, &c)));
    if let Err(e) = result {
        panic!("Lua and Rust refunds disagree: {e}");
    }
}

/// One step of a lease schedule: a hit, a peek, a stat, or the release or renewal of the
/// `n`-th lease taken so far (modulo their number; a stamp never taken when there is none).
#[derive(Clone, Debug)]
enum LeaseAction {
    Hit,
    Peek,
    Stat,
    Release(usize),
    Renew(usize),
}

/// A lease step: time change, cost, action, and a new limit and period (ms) from then on.
type LeaseStep = (i64, u64, LeaseAction, Option<(u32, u64)>);

fn lease_steps() -> impl proptest::strategy::Strategy<Value = Vec<LeaseStep>> {
    let action = prop_oneof![
        5 => Just(LeaseAction::Hit),
        1 => Just(LeaseAction::Peek),
        1 => Just(LeaseAction::Stat),
        3 => (0usize..64).prop_map(LeaseAction::Release),
        3 => (0usize..64).prop_map(LeaseAction::Renew),
    ];
    let step = (
        prop_oneof![4 => Just(0i64), 4 => 0i64..2_000_000, 2 => 0i64..20_000_000, 1 => -100_000i64..0],
        prop_oneof![8 => Just(1u64), 2 => 1u64..=4, 1 => Just(u64::MAX)],
        action,
        prop_oneof![12 => Just(None), 1 => (1u32..=8, prop::sample::select(vec![100u64, 1_000, 5_000, 30_000])).prop_map(Some)],
    );
    prop::collection::vec(step, 1..60)
}

/// Releases and renewals too: the concurrency script and the Rust strategy agree on every
/// decision, every release and renewal (whether the lease was still there) and every stat,
/// stamps included, under rate changes and a lagging clock.
async fn compare_leases(
    backend: &RedisBackend,
    (limit, period_ms, start): (u32, u64, u64),
    steps: &[LeaseStep],
) -> Result<(), TestCaseError> {
    let s = Concurrency;
    let handle = StrategyHandle::new(s);
    let mut rate = Rate::per_millis(limit, period_ms).map_err(|e| TestCaseError::reject(e.to_string()))?;
    let key = Key::builder(&format!("lease-{}", common::run_id()))
        .part(&KEYS.fetch_add(1, Ordering::Relaxed).to_be_bytes())
        .build();
    let mut state = None;
    let mut stamps: Vec<u64> = Vec::new();
    let mut now = start;
    for (i, (delta, cost, action, new_rate)) in steps.iter().enumerate() {
        now = now.saturating_add_signed(*delta);
        if let Some((l, p)) = new_rate {
            rate = Rate::per_millis(*l, *p).map_err(|e| TestCaseError::reject(e.to_string()))?;
        }
        let input = Input { now_us: now, rate, cost: *cost };
        let op = |mode| Operation { key: &key, strategy: &handle, input, mode };
        let ctx = || format!("step {i}: now {now}, {rate:?}, cost {cost}, {action:?}, state {state:?}");
        match action {
            LeaseAction::Hit | LeaseAction::Peek => {
                let rust = s.decide(state.as_ref(), &input);
                let mode = if matches!(action, LeaseAction::Hit) { Mode::Consume } else { Mode::Peek };
                let v = backend.decide(op(mode)).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx())))?;
                prop_assert_eq!(v, rust.verdict, "verdict; {}", ctx());
                if let (LeaseAction::Hit, Some(w)) = (action, rust.write) {
                    state = Some(w.state);
                    stamps.push(v.lease_us);
                }
            }
            LeaseAction::Stat => {
                let rust = s.decide(state.as_ref(), &input);
                let (v, meta) =
                    backend.stat(op(Mode::Peek)).await.map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx())))?;
                prop_assert_eq!(v, rust.verdict.with_lease(0), "stat verdict; {}", ctx());
                prop_assert_eq!(meta, s.metadata(state.as_ref(), &input), "metadata; {}", ctx());
            }
            LeaseAction::Release(n) | LeaseAction::Renew(n) => {
                let stamp = if stamps.is_empty() { 7 } else { stamps[n % stamps.len()] };
                let amend = match action {
                    LeaseAction::Release(_) => Amend::Refund { charged_at_us: stamp },
                    _ => Amend::Renew { charged_at_us: stamp },
                };
                let rust = match (&state, amend) {
                    (None, _) => None,
                    (Some(st), Amend::Refund { .. }) => s.refund(st, stamp, &input),
                    (Some(st), _) => s.renew(st, stamp, &input),
                };
                let changed = backend
                    .amend(op(Mode::Consume), amend, None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{e}; {}", ctx())))?;
                prop_assert_eq!(changed, rust.is_some(), "{} of {}; {}", amend.name(), stamp, ctx());
                if let Some(w) = rust {
                    state = Some(w.state);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_concurrency_script_releases_and_renews_exactly_like_the_rust_strategy() {
    let server = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = common::client_clock(&server.url);
    let mut runner = TestRunner::new(Config { cases: 600, failure_persistence: None, ..Config::default() });
    let cases = (
        1u32..=6,
        prop::sample::select(vec![100u64, 1_000, 30_000]),
        1_600_000_000_000_000u64..1_900_000_000_000_000,
        lease_steps(),
    );
    let result =
        runner.run(&cases, |(l, p, start, steps)| rt.block_on(compare_leases(&backend, (l, p, start), &steps)));
    if let Err(e) = result {
        panic!("Lua and Rust disagree on leases: {e}");
    }
}
