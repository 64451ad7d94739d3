//! Groups of throttles decided as one, on any backend: random schedules against a model made
//! of the members' own state machines, and many tasks on one group.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use traffik::backend::GroupOperation;
use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input, TokenBucket, Verdict, VerdictKind};
use traffik::{Backend, Key, Rate, SharedBackend, StrategyHandle};

use crate::{RUN, SuiteConfig, builtin_suites, rates, run_id, runtime};

/// One member of a random group.
#[derive(Clone, Debug)]
pub struct Member {
    /// Index into [`builtin_suites`].
    pub suite: usize,
    /// Its rate.
    pub rate: Rate,
    /// Its cost per hit.
    pub cost: u64,
    /// Keyed by the client (`true`) or shared by every client (`false`, a tenant-wide limit).
    pub per_client: bool,
}

/// One hit of a group schedule.
#[derive(Clone, Debug)]
pub struct GroupStep {
    /// Microseconds since the previous step.
    pub advance_us: u64,
    /// Which of two clients.
    pub client: u8,
    /// A hit, or a check (peek).
    pub consume: bool,
}

/// A random group and its schedule.
#[derive(Clone, Debug)]
pub struct GroupCase {
    /// The members.
    pub members: Vec<Member>,
    /// The hits.
    pub steps: Vec<GroupStep>,
}

fn group_cases(max_steps: usize, suites: usize) -> impl proptest::strategy::Strategy<Value = GroupCase> {
    let member = (0..suites, rates(), prop_oneof![4 => Just(1u64), 1 => 1u64..=3], any::<bool>())
        .prop_map(|(suite, rate, cost, per_client)| Member { suite, rate, cost, per_client });
    let step =
        (prop_oneof![3 => Just(0u64), 3 => 0u64..300_000, 1 => 0u64..5_000_000], 0u8..2, prop::bool::weighted(0.8))
            .prop_map(|(advance_us, client, consume)| GroupStep { advance_us, client, consume });
    (prop::collection::vec(member, 2..=3), prop::collection::vec(step, 1..=max_steps.max(1)))
        .prop_map(|(members, steps)| GroupCase { members, steps })
}

/// What a multi-key suite (groups, scopes) runs on: a runtime, the backend `make` returns
/// (built inside the runtime), the built-in strategies (and the custom one when asked) and a
/// proptest runner for `cfg`.
pub(crate) struct Setup {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) backend: SharedBackend,
    pub(crate) suites: Vec<StrategyHandle>,
    pub(crate) runner: TestRunner,
}

impl Setup {
    pub(crate) fn new(make: impl Fn() -> SharedBackend, cfg: &SuiteConfig, with_custom: bool) -> Setup {
        let rt = runtime();
        let backend = {
            let _guard = rt.enter();
            make()
        };
        let suites = builtin_suites()
            .into_iter()
            .filter(|s| with_custom || s.strategy.builtin().is_some())
            .map(|s| s.strategy)
            .collect();
        let runner = TestRunner::new(ProptestConfig {
            cases: cfg.cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..ProptestConfig::default()
        });
        Setup { rt, backend, suites, runner }
    }
}

/// Runs random group schedules against the backend `make` returns, comparing every verdict with
/// a model made of each member's own state machine on its own state: the group admits iff every
/// member's machine admits, and then (for a hit) every member's state moves, otherwise none
/// does. Equal verdicts at every step mean that a group never admits more than any member alone
/// would, and that a denied group hit changes no member's state. `with_custom` includes the
/// suites' custom strategy (backends that run groups of custom strategies).
pub fn check_groups(make: impl Fn() -> SharedBackend, cfg: &SuiteConfig, with_custom: bool) {
    let Setup { rt, backend, suites, mut runner } = Setup::new(make, cfg, with_custom);
    let result = runner.run(&group_cases(cfg.max_steps, suites.len()), |case| {
        rt.block_on(run_group(backend.as_ref(), &suites, &case))
    });
    if let Err(e) = result {
        panic!("groups failed on backend `{}`: {e}", backend.kind());
    }
}

async fn run_group(backend: &dyn Backend, suites: &[StrategyHandle], case: &GroupCase) -> Result<(), TestCaseError> {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let tag = format!("grp-{:x}-{n}", run_id());
    // The model: each (member, client) key's serialized state.
    let mut model: HashMap<(usize, u8), Vec<u8>> = HashMap::new();
    let mut now = 1_700_000_000_000_000u64;
    for (i, step) in case.steps.iter().enumerate() {
        now += step.advance_us;
        let keys: Vec<(Key, u8)> = case
            .members
            .iter()
            .enumerate()
            .map(|(m, member)| {
                let who = if member.per_client { step.client } else { 9 };
                (Key::builder(&format!("{tag}-m{m}")).part(&[who]).build(), who)
            })
            .collect();
        let mode = if step.consume { Mode::Consume } else { Mode::Peek };
        let ops: Vec<Operation<'_>> = case
            .members
            .iter()
            .zip(&keys)
            .map(|(member, (key, _))| Operation {
                key,
                strategy: &suites[member.suite],
                input: Input { now_us: now, rate: member.rate, cost: member.cost },
                mode,
            })
            .collect();
        let got = backend
            .decide_group(GroupOperation { tag: &tag, ops: &ops })
            .await
            .map_err(|e| TestCaseError::fail(format!("backend error at step {i}: {e}")))?;
        // The model's answer.
        let mut expected = Vec::new();
        let mut writes = Vec::new();
        for (m, op) in ops.iter().enumerate() {
            let state = model.get(&(m, keys[m].1));
            let step = op
                .strategy
                .decide_bytes(state.map(Vec::as_slice), &op.input)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            expected.push(step.verdict);
            writes.push(step.write);
        }
        prop_assert_eq!(&got, &expected, "step {} at {}: {:?}", i, now, step);
        if step.consume && expected.iter().all(Verdict::is_admitted) {
            for (m, write) in writes.into_iter().enumerate() {
                if let Some((bytes, _)) = write {
                    model.insert((m, keys[m].1), bytes);
                }
            }
        }
    }
    Ok(())
}

/// `tasks` tasks hit one two-member group (a fixed window of 50 and a token bucket of 30 per
/// second, keyed alike) four times each at one frozen instant: exactly 30 are admitted, and
/// afterwards the fixed window was charged exactly 30 times (no member was charged for a hit
/// the group refused, and no hit was applied to one member only).
pub fn check_group_concurrency(make: impl Fn() -> SharedBackend, tasks: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let backend = {
        let _guard = rt.enter();
        make()
    };
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let tag: Arc<str> = format!("grpc-{:x}-{n}", run_id()).into();
    let keys = [Key::builder(&format!("{tag}-fw")).build(), Key::builder(&format!("{tag}-tb")).build()];
    let strategies = [StrategyHandle::new(FixedWindow), StrategyHandle::new(TokenBucket::new())];
    let rates = [Rate::per_millis(50, 1_000).expect("rate"), Rate::per_millis(30, 1_000).expect("rate")];
    let now = 1_700_000_000_123_456u64;
    let ops = |mode| -> Vec<(Key, StrategyHandle, Input, Mode)> {
        (0..2)
            .map(|i| (keys[i].clone(), strategies[i].clone(), Input { now_us: now, rate: rates[i], cost: 1 }, mode))
            .collect()
    };
    let admitted: u64 = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let backend = Arc::clone(&backend);
            let tag = Arc::clone(&tag);
            let members = ops(Mode::Consume);
            handles.push(tokio::spawn(async move {
                let ops: Vec<Operation<'_>> = members
                    .iter()
                    .map(|(key, strategy, input, mode)| Operation { key, strategy, input: *input, mode: *mode })
                    .collect();
                let mut a = 0u64;
                for _ in 0..4 {
                    let v =
                        backend.decide_group(GroupOperation { tag: &tag, ops: &ops }).await.expect("group decision");
                    a += u64::from(v.iter().all(Verdict::is_admitted));
                }
                a
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.expect("task");
        }
        total
    });
    assert_eq!(admitted, 30u64.min(4 * tasks as u64), "{tasks} tasks x 4 group hits on `{}`", backend.kind());
    // What each member has left: a check of the group.
    let members = ops(Mode::Peek);
    let ops: Vec<Operation<'_>> = members
        .iter()
        .map(|(key, strategy, input, mode)| Operation { key, strategy, input: *input, mode: *mode })
        .collect();
    let left = rt.block_on(backend.decide_group(GroupOperation { tag: &tag, ops: &ops })).expect("check");
    if tasks * 4 >= 30 {
        assert_eq!(left[0].kind, VerdictKind::Admit);
        assert_eq!(left[0].remaining, 50 - 30 - 1, "the fixed window was charged for exactly 30 hits");
        assert_eq!(left[1].kind, VerdictKind::Deny, "the token bucket is empty");
    }
}
