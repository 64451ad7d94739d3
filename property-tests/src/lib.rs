//! Reusable property-test suites for traffik strategies and backends.
//!
//! Each [`Suite`] pairs a strategy with the accuracy [`Bound`] it promises and, for the exact
//! strategies, a naive reference model. [`check_backend`] drives every built-in suite through
//! any [`Backend`] with random schedules (time advances, costs, keys) on explicit timestamps and
//! checks, for every step:
//!
//! * the decisions of exact strategies equal the reference model's;
//! * admitted cost never exceeds the bound, per key;
//! * denied hits consume nothing (a peek right after a denial gets the same answer);
//! * `wait` is exact: a peek at `now + wait` is admitted, one at `now + wait - 1` is not;
//! * `remaining` never exceeds the full quota, admissions carry a reset in the future;
//! * costs above the full quota are `Never` and consume nothing;
//! * no wait is longer than the current rate can require ([`Bound::longest_wait_us`]);
//! * after a long idle period every key is back to its full quota.
//!
//! Schedules change the rate now and then (longer and shorter periods, larger and smaller
//! limits): state written under one rate is read under the next, as after
//! `Throttle::update_rate` or with a rate function. Every check above holds under the rate in
//! force at each step; bounds are checked within each stretch of one rate, and the fixed-window
//! model follows the documented carry-over rule (under the same period, usage counts iff its
//! latest admission is in the current window; under another period the window starts fresh).
//!
//! [`check_concurrency`] hammers one key from many tasks at one frozen instant: every
//! strategy must admit exactly its capacity.
//!
//! Your own strategy gets the same treatment with [`check_suite`]:
//!
//! ```
//! use traffik::{InMemoryBackend, SharedBackend, StrategyHandle};
//! use traffik_property_tests::{check_suite, custom::PlainFixedWindow, Bound, Suite, SuiteConfig};
//! use std::sync::Arc;
//!
//! let suite = Suite::new("plain_fixed_window", StrategyHandle::new(PlainFixedWindow), Bound::FixedWindows)
//!     .with_fixed_window_model();
//! check_suite(|| Arc::new(InMemoryBackend::new()) as SharedBackend, &suite, &SuiteConfig::quick())?;
//! # Ok::<(), traffik_property_tests::SuiteFailure>(())
//! ```
//!
//! Backends that read time from elsewhere (Redis' `TIME`) must be configured to use the
//! timestamp in [`traffik::backend::Operation`] for these suites.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod contract;
pub mod custom;
pub mod failing;
pub mod faults;
pub mod groups;
pub mod leases;
pub mod priority;
pub mod processes;
pub mod rate_change;
pub mod refunds;
pub mod scopes;
pub mod stats;

pub use groups::{check_group_concurrency, check_groups};
pub use priority::check_priorities;
pub use rate_change::check_rate_changes;
pub use refunds::{check_backend_refunds, check_refunds};
pub use scopes::check_scopes;
pub use stats::check_stats_match_memory;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use traffik::backend::{Mode, Operation};
use traffik::strategy::Input;
use traffik::strategy::{
    Concurrency, CostAwareSpec, CostAwareTokenBucket, FixedWindow, Gcra, LeakyBucket, LeakyBucketWithQueue, MeterSpec,
    QuotaRollover, Reserved, RolloverSpec, SlidingWindowCounter, SlidingWindowLog, TokenBucket, TokenBucketWithDebt,
    Verdict, VerdictKind,
};
use traffik::{Backend, Key, Rate, SharedBackend, StrategyHandle};

/// How hard to try.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// Random schedules per suite.
    pub cases: u32,
    /// Longest schedule.
    pub max_steps: usize,
}

impl SuiteConfig {
    /// A fast configuration for remote backends (24 cases of up to 40 steps).
    pub fn quick() -> Self {
        SuiteConfig { cases: 24, max_steps: 40 }
    }

    /// The default for the in-memory backend (256 cases of up to 80 steps).
    pub fn thorough() -> Self {
        SuiteConfig { cases: 256, max_steps: 80 }
    }
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig::quick()
    }
}

/// A custom bound: checks `(release_time_us, cost)` pairs sorted by time.
pub type BoundCheck = Arc<dyn Fn(&Rate, &[(u64, u64)]) -> Result<(), String> + Send + Sync>;

/// The accuracy a strategy promises, checked over every admitted hit of a schedule.
#[derive(Clone)]
pub enum Bound {
    /// Any epoch-aligned window of the rate's period admits at most `limit`.
    FixedWindows,
    /// Any sliding window `(t - W, t]` admits at most `limit`.
    SlidingWindows,
    /// A meter: releases in any interval `[t1, t2]` total at most
    /// `capacity / T + limit · (t2 - t1) / W` (burst plus the rate).
    Meter(MeterSpec),
    /// Quota with rollover: any epoch-aligned window of the rate's period admits at most
    /// `limit + R`, R the rollover cap under that limit.
    Rollover(RolloverSpec),
    /// A cost-aware token bucket: the bound of the plain token bucket with the same burst
    /// ([`CostAwareSpec::plain`]); its waits may reach the slowdown times the capacity.
    CostAware(CostAwareSpec),
    /// Your own check over `(release_time_us, cost)` pairs sorted by time.
    Custom(BoundCheck),
}

impl Bound {
    /// The longest wait a hit of any admissible cost may be told under `rate`, whatever state
    /// an earlier rate left: two periods for the windows (the sliding counter's previous window
    /// plus the current one), one for the sliding log, and one period plus the capacity for a
    /// meter (a level up to a period beyond `capacity + queue` still counts after a rate
    /// change). `None` for custom bounds.
    pub fn longest_wait_us(&self, rate: &Rate) -> Option<u64> {
        let w = rate.period_us();
        match self {
            Bound::FixedWindows | Bound::Rollover(_) => Some(2 * w),
            Bound::SlidingWindows => Some(w),
            Bound::Meter(spec) => Some(w + spec.params(rate).capacity_us),
            Bound::CostAware(spec) => Some(w + 4 * spec.plain().params(rate).capacity_us),
            Bound::Custom(_) => None,
        }
    }
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::FixedWindows => f.write_str("FixedWindows"),
            Bound::SlidingWindows => f.write_str("SlidingWindows"),
            Bound::Meter(s) => write!(f, "Meter({s:?})"),
            Bound::Rollover(s) => write!(f, "Rollover({s:?})"),
            Bound::CostAware(s) => write!(f, "CostAware({s:?})"),
            Bound::Custom(_) => f.write_str("Custom"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    FixedWindow,
    SlidingLog,
    Rollover(RolloverSpec),
    Concurrency,
}

/// A strategy under test.
#[derive(Clone, Debug)]
pub struct Suite {
    /// Name used in failure messages and keys.
    pub name: String,
    /// The strategy.
    pub strategy: StrategyHandle,
    /// What it promises.
    pub bound: Bound,
    model: Option<Model>,
    queue: u32,
}

impl Suite {
    /// A suite with no reference model.
    pub fn new(name: impl Into<String>, strategy: StrategyHandle, bound: Bound) -> Self {
        Suite { name: name.into(), strategy, bound, model: None, queue: 0 }
    }

    /// Also compare every decision with a naive fixed-window model.
    pub fn with_fixed_window_model(mut self) -> Self {
        self.model = Some(Model::FixedWindow);
        self
    }

    /// Also compare every decision with a naive sliding-log model.
    pub fn with_sliding_log_model(mut self) -> Self {
        self.model = Some(Model::SlidingLog);
        self
    }

    /// Cost units the strategy may queue (answer `Delay` for) beyond its quota, as a shaping
    /// strategy does: delays are then checked against this allowance instead of failing the
    /// suite. A custom strategy that delays needs it to pass.
    pub fn with_queue(mut self, queue: u32) -> Self {
        self.queue = queue;
        self
    }

    /// Also compare every decision with a naive model of the quota with rollover, which walks
    /// the periods one by one.
    pub fn with_rollover_model(mut self, spec: RolloverSpec) -> Self {
        self.model = Some(Model::Rollover(spec));
        self
    }

    /// Also compare every decision with a naive model of concurrency leases (the schedules
    /// never release or renew, so every lease lives its lease time, or less after the lease time
    /// shrinks: it then ends that much earlier).
    pub fn with_concurrency_model(mut self) -> Self {
        self.model = Some(Model::Concurrency);
        self
    }

    /// Cost units a shaping strategy may queue (delay) beyond its quota; 0 for the others.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Unit-cost hits admitted from an empty state at one instant (without queueing).
    pub fn full_quota(&self, rate: &Rate) -> u64 {
        match &self.bound {
            Bound::Meter(spec) => {
                let p = spec.params(rate);
                p.capacity_us / p.interval_us
            }
            Bound::Rollover(spec) => rate.limit() + spec.cap(rate.limit()),
            Bound::CostAware(spec) => {
                let p = spec.plain().params(rate);
                p.capacity_us / p.interval_us
            }
            _ => rate.limit(),
        }
    }
}

/// The built-in strategies with their bounds and models.
pub fn builtin_suites() -> Vec<Suite> {
    let gcra_tol = std::time::Duration::from_millis(300);
    let cost_aware = CostAwareTokenBucket::builder().build().expect("valid cost-aware bucket");
    let cost_aware_burst = CostAwareTokenBucket::builder()
        .burst(3)
        .window(2)
        .reference_cost(1.5)
        .max_slowdown(2.5)
        .build()
        .expect("valid cost-aware bucket");
    let capped = QuotaRollover::builder().max_rollover(2).max_percent(50).build().expect("valid rollover");
    vec![
        Suite::new("fixed_window", FixedWindow.into(), Bound::FixedWindows).with_fixed_window_model(),
        Suite::new("sliding_window_log", SlidingWindowLog.into(), Bound::SlidingWindows).with_sliding_log_model(),
        Suite::new("sliding_window_counter", SlidingWindowCounter.into(), Bound::FixedWindows),
        Suite::new("token_bucket", TokenBucket::new().into(), Bound::Meter(MeterSpec::TokenBucket { burst: None })),
        Suite::new(
            "token_bucket_burst",
            TokenBucket::with_burst(3).into(),
            Bound::Meter(MeterSpec::TokenBucket { burst: Some(3) }),
        ),
        Suite::new(
            "token_bucket_with_debt",
            TokenBucketWithDebt::with_burst(2, 2).into(),
            Bound::Meter(MeterSpec::TokenBucketWithDebt { burst: Some(2), max_debt: 2 }),
        ),
        Suite::new("leaky_bucket", LeakyBucket.into(), Bound::Meter(MeterSpec::LeakyBucket)),
        Suite::new(
            "leaky_bucket_with_queue",
            LeakyBucketWithQueue::new(3).into(),
            Bound::Meter(MeterSpec::LeakyBucket),
        )
        .with_queue(3),
        Suite::new("gcra", Gcra::new().into(), Bound::Meter(MeterSpec::Gcra { tolerance_us: 0 })),
        Suite::new(
            "gcra_tolerance",
            Gcra::with_tolerance(gcra_tol).into(),
            Bound::Meter(MeterSpec::Gcra { tolerance_us: 300_000 }),
        ),
        Suite::new("gcra_burst", Gcra::with_burst(3).into(), Bound::Meter(MeterSpec::GcraBurst { burst: 3 })),
        Suite::new("quota_rollover", QuotaRollover::new().into(), Bound::Rollover(RolloverSpec::default()))
            .with_rollover_model(RolloverSpec::default()),
        Suite::new("quota_rollover_capped", capped.into(), Bound::Rollover(capped.spec()))
            .with_rollover_model(capped.spec()),
        Suite::new("cost_aware_token_bucket", cost_aware.into(), Bound::CostAware(cost_aware.spec())),
        Suite::new("cost_aware_token_bucket_burst", cost_aware_burst.into(), Bound::CostAware(cost_aware_burst.spec())),
        Suite::new("priority_reserved", Reserved::new(6).into(), Bound::FixedWindows).with_fixed_window_model(),
        // Leases that are never released live their lease time W: at most L in any sliding
        // window, the sliding log's bound.
        Suite::new("concurrency", Concurrency.into(), Bound::SlidingWindows).with_concurrency_model(),
        Suite::new("custom_fixed_window", custom::PlainFixedWindow.into(), Bound::FixedWindows)
            .with_fixed_window_model(),
    ]
}

/// One step of a schedule.
#[derive(Clone, Debug)]
pub struct Step {
    /// From this step on, this rate instead of the one before.
    pub new_rate: Option<Rate>,
    /// Time advance before the hit, in thousandths of the (new) rate's period.
    pub advance_permille: u64,
    /// Extra microseconds (to leave window alignment).
    pub jitter_us: u64,
    /// Cost (may exceed the quota, to exercise `Never`).
    pub cost: u64,
    /// Which of a few keys.
    pub key: u8,
}

/// A random case: rate, start time and steps.
#[derive(Clone, Debug)]
pub struct Case {
    /// The rate of the first steps (steps may change it).
    pub rate: Rate,
    /// First timestamp.
    pub start_us: u64,
    /// The hits.
    pub steps: Vec<Step>,
}

fn rates() -> impl proptest::strategy::Strategy<Value = Rate> {
    (1u32..=6, prop::sample::select(vec![100u64, 1_000, 2_500, 60_000]))
        .prop_map(|(l, ms)| Rate::per_millis(l, ms).expect("valid rate"))
}

fn steps(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![11 => Just(None), 1 => rates().prop_map(Some)],
        prop_oneof![4 => Just(0u64), 4 => 0u64..150, 2 => 0u64..1_000, 1 => 0u64..3_000],
        prop_oneof![3 => Just(0u64), 1 => 0u64..1_000],
        prop_oneof![6 => Just(1u64), 3 => 1u64..=4, 1 => 1u64..=8],
        0u8..3,
    )
        .prop_map(|(new_rate, advance_permille, jitter_us, cost, key)| Step {
            new_rate,
            advance_permille,
            jitter_us,
            cost,
            key,
        });
    prop::collection::vec(step, 1..=max.max(1))
}

/// The schedule generator used by every suite.
pub fn cases(max_steps: usize) -> impl proptest::strategy::Strategy<Value = Case> {
    (rates(), 1_600_000_000_000_000u64..1_900_000_000_000_000, steps(max_steps))
        .prop_map(|(rate, start_us, steps)| Case { rate, start_us, steps })
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn run_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        (t as u64) ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// A fresh key for one case, unique across runs (so an external server needs no reset).
pub fn fresh_key(suite: &str, key: u8) -> Key {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    Key::builder(&format!("prop-{suite}-{:x}-{n}", run_id())).part(&[key]).build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A suite that failed: which suite, on which backend, and proptest's account of the smallest
/// failing schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteFailure {
    /// The suite's name.
    pub suite: String,
    /// The backend's kind (`"memory"`, `"redis"`, ...).
    pub backend: String,
    /// The failing schedule and what went wrong.
    pub message: String,
}

impl std::fmt::Display for SuiteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "suite `{}` failed on backend `{}`: {}", self.suite, self.backend, self.message)
    }
}

impl std::error::Error for SuiteFailure {}

/// Runs every built-in suite against the backend that `make` returns, stopping at the first
/// failure. Call from a plain `#[test]`, not from inside a runtime: the suites build their own
/// and call `make` in it.
pub fn check_backend(make: impl Fn() -> SharedBackend, cfg: &SuiteConfig) -> Result<(), SuiteFailure> {
    builtin_suites().iter().try_for_each(|suite| check_suite(&make, suite, cfg))
}

/// Runs one suite (see the [crate docs](crate)); `Err` names the suite, the backend and the
/// smallest failing schedule proptest found.
pub fn check_suite(make: impl Fn() -> SharedBackend, suite: &Suite, cfg: &SuiteConfig) -> Result<(), SuiteFailure> {
    let rt = runtime();
    let backend = {
        let _guard = rt.enter();
        make()
    };
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cfg.cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    });
    let result = runner.run(&cases(cfg.max_steps), |case| rt.block_on(run_case(backend.as_ref(), suite, &case)));
    result.map_err(|e| SuiteFailure {
        suite: suite.name.clone(),
        backend: backend.kind().to_owned(),
        message: e.to_string(),
    })
}

async fn decide(
    backend: &dyn Backend,
    key: &Key,
    suite: &Suite,
    now: u64,
    rate: Rate,
    cost: u64,
    mode: Mode,
) -> Result<Verdict, TestCaseError> {
    let op = Operation { key, strategy: &suite.strategy, input: Input { now_us: now, rate, cost }, mode };
    backend.decide(op).await.map_err(|e| TestCaseError::fail(format!("backend error: {e}")))
}

/// Admitted `(release time, cost)` pairs per key.
type Admissions = HashMap<u8, Vec<(u64, u64)>>;

/// Runs one case against a backend; public so backends can build their own proptests on it.
pub async fn run_case(backend: &dyn Backend, suite: &Suite, case: &Case) -> Result<(), TestCaseError> {
    let mut rate = case.rate;
    let keys: Vec<Key> = (0..3).map(|k| fresh_key(&suite.name, k)).collect();
    // Admissions (release time, cost) per key, per stretch of one rate.
    let mut stretches: Vec<(Rate, Admissions)> = vec![(rate, HashMap::new())];
    // Fixed-window model: per key, the latest admission, the cost admitted in its window and
    // the period it was counted under.
    let mut model_fw: HashMap<u8, (u64, u64, u64)> = HashMap::new();
    let mut model_log: HashMap<u8, (u64, Vec<(u64, u64)>)> = HashMap::new();
    let mut model_qr: HashMap<u8, RolloverModel> = HashMap::new();
    // Concurrency model: per key, the lease time and the leases' (expiry, slots).
    let mut model_conc: HashMap<u8, (u64, Vec<(u64, u64)>)> = HashMap::new();
    let mut now = case.start_us;
    for (i, step) in case.steps.iter().enumerate() {
        if let Some(r) = step.new_rate
            && r != rate
        {
            rate = r;
            stretches.push((rate, HashMap::new()));
        }
        let w = rate.period_us();
        let full = suite.full_quota(&rate);
        now += w * step.advance_permille / 1000 + step.jitter_us;
        let key = &keys[usize::from(step.key)];
        let cost = step.cost;
        let v = decide(backend, key, suite, now, rate, cost, Mode::Consume).await?;
        let ctx = || format!("step {i} at +{}us, {rate}, cost {cost}, key {}: {v:?}", now - case.start_us, step.key);

        // Shape of the verdict.
        prop_assert!(v.remaining <= full, "remaining above full quota {full}; {}", ctx());
        match v.kind {
            VerdictKind::Admit => {
                prop_assert!(v.wait_us == 0 && v.reset_us > 0, "admit shape; {}", ctx())
            }
            VerdictKind::Delay => {
                prop_assert!(v.wait_us > 0 && suite.queue > 0, "delay shape; {}", ctx())
            }
            VerdictKind::Deny => prop_assert!(v.wait_us > 0, "a denial must wait; {}", ctx()),
            VerdictKind::Never => {
                prop_assert!(cost > full, "never for an admissible cost; {}", ctx())
            }
        }
        if cost > full {
            prop_assert_eq!(v.kind, VerdictKind::Never, "cost above quota must be never; {}", ctx());
        }
        if v.kind == VerdictKind::Deny
            && let Some(longest) = suite.bound.longest_wait_us(&rate)
        {
            prop_assert!(v.wait_us <= longest, "wait longer than {longest}us; {}", ctx());
        }

        // Reference models.
        if let Some(model) = suite.model {
            let admit = match model {
                Model::FixedWindow => {
                    let (last, used, period) = model_fw.get(&step.key).copied().unwrap_or((0, 0, 0));
                    let used = if period == w && last >= now - now % w { used } else { 0 };
                    let ok = cost <= rate.limit() && used + cost <= rate.limit();
                    if ok {
                        model_fw.insert(step.key, (now, used + cost, w));
                    }
                    ok
                }
                Model::SlidingLog => {
                    // An entry counts within the shorter of the current period and the one the
                    // log was last written under.
                    let (period, log) = model_log.entry(step.key).or_insert((w, Vec::new()));
                    let horizon = w.min(*period);
                    let used: u64 = log.iter().filter(|(t, _)| t + horizon > now).map(|(_, c)| c).sum();
                    let ok = cost <= rate.limit() && used + cost <= rate.limit();
                    if ok {
                        // Admitting rewrites the log under the current period.
                        log.retain(|(t, _)| t + horizon > now);
                        log.push((now, cost));
                        *period = w;
                    }
                    ok
                }
                Model::Rollover(spec) => model_qr.entry(step.key).or_default().hit(spec, rate, now, cost),
                Model::Concurrency => {
                    let (period, leases) = model_conc.entry(step.key).or_insert((w, Vec::new()));
                    let shorter = period.saturating_sub(w);
                    let live: Vec<(u64, u64)> = leases
                        .iter()
                        .map(|&(until, c)| (until - shorter, c))
                        .filter(|&(until, _)| until > now)
                        .collect();
                    let used: u64 = live.iter().map(|(_, c)| c).sum();
                    let ok = cost <= rate.limit() && used + cost <= rate.limit();
                    if ok {
                        *leases = live;
                        leases.push((now + w, cost));
                        *period = w;
                    }
                    ok
                }
            };
            prop_assert_eq!(v.is_admitted(), admit, "model disagrees; {}", ctx());
        }

        let logs = &mut stretches.last_mut().expect("one stretch at least").1;
        match v.kind {
            VerdictKind::Admit => logs.entry(step.key).or_default().push((now, cost)),
            VerdictKind::Delay => logs.entry(step.key).or_default().push((now + v.wait_us, cost)),
            VerdictKind::Deny | VerdictKind::Never => {
                // Nothing was consumed: asking again gives the same answer.
                let again = decide(backend, key, suite, now, rate, cost, Mode::Peek).await?;
                prop_assert_eq!(again.kind, v.kind, "denial consumed something; {}", ctx());
                prop_assert_eq!(again.wait_us, v.wait_us, "denial consumed something; {}", ctx());
            }
        }
        if v.kind == VerdictKind::Deny {
            // Wait is exact.
            let at = decide(backend, key, suite, now + v.wait_us, rate, cost, Mode::Peek).await?;
            prop_assert!(at.is_admitted(), "retry after wait not admitted ({at:?}); {}", ctx());
            let before = decide(backend, key, suite, now + v.wait_us - 1, rate, cost, Mode::Peek).await?;
            prop_assert!(!before.is_admitted(), "retry 1us before wait admitted ({before:?}); {}", ctx());
        }
    }
    for (stretch_rate, logs) in &mut stretches {
        for (k, log) in logs.iter_mut() {
            log.sort_unstable();
            check_bound(&suite.bound, stretch_rate, log)
                .map_err(|e| TestCaseError::fail(format!("key {k} under {stretch_rate}: {e}")))?;
        }
    }
    // Idle keys return to full quota, once idle for longer than any rate of the case needs.
    let drain =
        |r: &Rate| 4 * r.period_us() + 4 * r.emission_interval_us() * (suite.full_quota(r) + u64::from(suite.queue));
    let idle = now + stretches.iter().map(|(r, _)| drain(r)).max().unwrap_or(0) + 1_000_000;
    let full = suite.full_quota(&rate);
    for key in &keys {
        let v = decide(backend, key, suite, idle, rate, full, Mode::Peek).await?;
        prop_assert_eq!(v.kind, VerdictKind::Admit, "idle key not back to full quota {}: {:?}", full, v);
        let v = decide(backend, key, suite, idle, rate, 1, Mode::Peek).await?;
        prop_assert_eq!(v.remaining, full - 1, "idle key remaining: {:?}", v);
    }
    Ok(())
}

/// The quota-with-rollover model of one key: its current period, walked forward one period at
/// a time (never by the strategy's shortcuts).
#[derive(Clone, Copy, Debug, Default)]
struct RolloverModel {
    /// `(period index, period length, used, rollover)` of the latest admission, if any.
    at: Option<(u64, u64, u64, u64)>,
}

impl RolloverModel {
    fn hit(&mut self, spec: RolloverSpec, rate: Rate, now: u64, cost: u64) -> bool {
        let (l, w) = (rate.limit(), rate.period_us());
        let cap = spec.cap(l);
        let index = now / w;
        let (used, carried) = match self.at {
            Some((i, period, used, carried)) if period == w && i <= index => {
                let (mut i, mut used, mut carried) = (i, used, carried.min(cap));
                while i < index {
                    let next = (l + carried).saturating_sub(used).min(cap);
                    if used == 0 && next == carried {
                        // Idle periods that change nothing any more.
                        break;
                    }
                    i += 1;
                    used = 0;
                    carried = next;
                }
                (used, carried)
            }
            // Never seen, or counted under another period: as after an idle spell.
            _ => (0, cap),
        };
        let ok = used + cost <= l + carried;
        if ok {
            self.at = Some((index, w, used + cost, carried));
        }
        ok
    }
}

/// Checks a bound over `(time_us, cost)` pairs sorted by time.
pub fn check_bound(bound: &Bound, rate: &Rate, log: &[(u64, u64)]) -> Result<(), String> {
    let l = rate.limit();
    let w = rate.period_us();
    match bound {
        Bound::FixedWindows | Bound::Rollover(_) => {
            let most = match bound {
                Bound::Rollover(spec) => l + spec.cap(l),
                _ => l,
            };
            let mut per: HashMap<u64, u64> = HashMap::new();
            for &(t, c) in log {
                *per.entry(t / w).or_default() += c;
            }
            match per.iter().find(|(_, used)| **used > most) {
                Some((win, used)) => Err(format!("window {win} admitted {used} > {most}")),
                None => Ok(()),
            }
        }
        Bound::SlidingWindows => {
            for (i, &(t, _)) in log.iter().enumerate() {
                let used: u64 = log[..=i].iter().filter(|(s, _)| s + w > t).map(|(_, c)| c).sum();
                if used > l {
                    return Err(format!("sliding window ending at {t} admitted {used} > {l}"));
                }
            }
            Ok(())
        }
        Bound::Meter(_) | Bound::CostAware(_) => {
            let spec = match bound {
                Bound::CostAware(spec) => spec.plain(),
                Bound::Meter(spec) => *spec,
                _ => return Err("not a meter bound".into()),
            };
            let p = spec.params(rate);
            // sum <= C/T + L·span/W  <=>  sum·T·W <= C·W + L·span·T
            for i in 0..log.len() {
                let mut sum = 0u128;
                for j in i..log.len() {
                    sum += u128::from(log[j].1);
                    let span = u128::from(log[j].0 - log[i].0);
                    let lhs = sum * u128::from(p.interval_us) * u128::from(w);
                    let rhs =
                        u128::from(p.capacity_us) * u128::from(w) + u128::from(l) * span * u128::from(p.interval_us);
                    if lhs > rhs {
                        return Err(format!(
                            "interval [{}, {}] released {sum} > burst {} + rate·{span}us",
                            log[i].0,
                            log[j].0,
                            p.capacity_us as f64 / p.interval_us as f64
                        ));
                    }
                }
            }
            Ok(())
        }
        Bound::Custom(f) => f(rate, log),
    }
}

/// Many tasks on a multi-threaded runtime hit one key at one frozen instant; each built-in
/// strategy must admit exactly its capacity (plus its queue, as delays). `tasks` tasks make
/// four unit-cost hits each.
pub fn check_concurrency(make: impl Fn() -> SharedBackend, tasks: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let backend = {
        let _guard = rt.enter();
        make()
    };
    let rate = Rate::per_millis(50, 1_000).expect("rate");
    for suite in builtin_suites() {
        let key = fresh_key(&suite.name, 0);
        let now = 1_700_000_000_123_456u64;
        let (admitted, delayed) = rt.block_on(async {
            let mut handles = Vec::new();
            for _ in 0..tasks {
                let backend = Arc::clone(&backend);
                let key = key.clone();
                let strategy = suite.strategy.clone();
                handles.push(tokio::spawn(async move {
                    let (mut a, mut d) = (0u64, 0u64);
                    for _ in 0..4 {
                        let op = Operation {
                            key: &key,
                            strategy: &strategy,
                            input: Input { now_us: now, rate, cost: 1 },
                            mode: Mode::Consume,
                        };
                        match backend.decide(op).await.expect("backend error under concurrency").kind {
                            VerdictKind::Admit => a += 1,
                            VerdictKind::Delay => d += 1,
                            _ => {}
                        }
                    }
                    (a, d)
                }));
            }
            let mut total = (0, 0);
            for h in handles {
                let (a, d) = h.await.expect("task");
                total.0 += a;
                total.1 += d;
            }
            total
        });
        let expected = suite.full_quota(&rate).min(4 * tasks as u64);
        let expected_delayed = u64::from(suite.queue).min(4 * tasks as u64 - expected);
        assert_eq!(
            (admitted, delayed),
            (expected, expected_delayed),
            "suite `{}` on `{}`: {tasks} tasks x 4 hits at one instant",
            suite.name,
            backend.kind()
        );
    }
}
