//! Deferred quota scopes ([`traffik::Scope`]) on any backend: random schedules of scopes and
//! plain hits on throttles that share their keys, against a model made of each throttle's own
//! state machine on its own state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use traffik::scope::Applied;
use traffik::strategy::{Input, Verdict, VerdictKind};
use traffik::{
    Clock, Context, ManualClock, Outcome, Rate, RequestView, Scope, ScopeDecision, ScopeError, SharedBackend,
    StrategyHandle, Throttle,
};

use crate::groups::Setup;
use crate::{RUN, SuiteConfig, rates, run_id};

/// A throttle of a random schedule.
#[derive(Clone, Debug)]
pub struct ScopeThrottle {
    /// Index into the suites' strategies.
    pub suite: usize,
    /// Its rate.
    pub rate: Rate,
}

/// What a step does with the scope it fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeAction {
    /// Apply it.
    Apply,
    /// Check it (nothing consumed), then cancel it.
    Check,
    /// Cancel it.
    Cancel,
    /// No scope: a plain hit on the first entry's throttle and client, of its cost.
    Hit,
}

/// One step: entries `(throttle, client, cost)` queued in order (the second half in a child
/// scope merged into the parent when `nested`), then the action.
#[derive(Clone, Debug)]
pub struct ScopeStep {
    /// Microseconds since the previous step.
    pub advance_us: u64,
    /// The entries.
    pub entries: Vec<(usize, u8, u64)>,
    /// Whether the second half of the entries goes through a child scope.
    pub nested: bool,
    /// The action.
    pub action: ScopeAction,
}

/// A random schedule.
#[derive(Clone, Debug)]
pub struct ScopeCase {
    /// The throttles.
    pub throttles: Vec<ScopeThrottle>,
    /// The steps.
    pub steps: Vec<ScopeStep>,
}

fn scope_cases(max_steps: usize, suites: usize) -> impl proptest::strategy::Strategy<Value = ScopeCase> {
    let throttle = (0..suites, rates()).prop_map(|(suite, rate)| ScopeThrottle { suite, rate });
    let entry = (0usize..3, 0u8..2, prop_oneof![4 => Just(1u64), 1 => 1u64..=3]);
    let action = prop_oneof![
        6 => Just(ScopeAction::Apply),
        1 => Just(ScopeAction::Check),
        1 => Just(ScopeAction::Cancel),
        2 => Just(ScopeAction::Hit),
    ];
    let step = (
        prop_oneof![3 => Just(0u64), 3 => 0u64..300_000, 1 => 0u64..5_000_000],
        prop::collection::vec(entry, 1..=5),
        any::<bool>(),
        action,
    )
        .prop_map(|(advance_us, entries, nested, action)| ScopeStep { advance_us, entries, nested, action });
    (prop::collection::vec(throttle, 3), prop::collection::vec(step, 1..=max_steps.max(1)))
        .prop_map(|(throttles, steps)| ScopeCase { throttles, steps })
}

/// Runs random schedules of scopes and plain hits on three throttles of the backend `make`
/// returns (two clients each), comparing every charge of every scope, and every hit, with a
/// model made of each throttle's own state machine on each client's state: a scope is admitted
/// iff the machine of every key it touches admits the key's summed cost, and then (applied)
/// every key's state moves, otherwise none does; a check or a cancelled scope moves nothing;
/// the throttles' plain hits read and write the same state. `with_custom` includes the suites'
/// custom strategy (backends that decide groups of custom strategies).
pub fn check_scopes(make: impl Fn() -> SharedBackend, cfg: &SuiteConfig, with_custom: bool) {
    let Setup { rt, backend, suites, mut runner } = Setup::new(make, cfg, with_custom);
    let result =
        runner.run(&scope_cases(cfg.max_steps, suites.len()), |case| rt.block_on(run_scopes(&backend, &suites, &case)));
    if let Err(e) = result {
        panic!("scopes failed on backend `{}`: {e}", backend.kind());
    }
}

fn client(c: u8) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([198, 51, 100, c + 1], 1000))))
}

fn outcome(kind: VerdictKind) -> Outcome {
    match kind {
        VerdictKind::Admit => Outcome::Allowed,
        VerdictKind::Delay => Outcome::Delayed,
        VerdictKind::Deny => Outcome::Throttled,
        VerdictKind::Never => Outcome::Never,
    }
}

fn fail(at: usize, what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("step {at}: {what}"))
}

async fn run_scopes(backend: &SharedBackend, suites: &[StrategyHandle], case: &ScopeCase) -> Result<(), TestCaseError> {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let clock = ManualClock::new(1_700_000_000_000_000);
    let throttles: Vec<Throttle> = case
        .throttles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Throttle::builder()
                .uid(format!("scp-{:x}-{n}-{i}", run_id()))
                .rate(t.rate)
                .shared_backend(backend.clone())
                .strategy(suites[t.suite].clone())
                .clock(clock.clone())
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    // The model: each (throttle, client) key's serialized state.
    let mut model: HashMap<(usize, u8), Vec<u8>> = HashMap::new();
    for (i, step) in case.steps.iter().enumerate() {
        clock.advance(std::time::Duration::from_micros(step.advance_us));
        let now = clock.now_us();
        // The keys a scope touches, in order of first appearance, with their summed costs.
        let mut keys: Vec<((usize, u8), u64)> = Vec::new();
        for &(t, c, cost) in &step.entries {
            match keys.iter_mut().find(|(k, _)| *k == (t, c)) {
                Some((_, sum)) => *sum += cost,
                None => keys.push(((t, c), cost)),
            }
        }
        if step.action == ScopeAction::Hit {
            keys.truncate(1);
            keys[0].1 = step.entries[0].2;
        }
        let mut expected = Vec::new();
        let mut writes = Vec::new();
        for &((t, c), cost) in &keys {
            let input = Input { now_us: now, rate: case.throttles[t].rate, cost };
            let decided = suites[case.throttles[t].suite]
                .decide_bytes(model.get(&(t, c)).map(Vec::as_slice), &input)
                .map_err(|e| fail(i, e))?;
            expected.push(decided.verdict);
            writes.push(decided.write);
        }
        let admitted = expected.iter().all(Verdict::is_admitted);
        let moves = match step.action {
            ScopeAction::Hit => {
                let ((t, c), cost) = keys[0];
                let d = throttles[t].hit_with(&client(c), &Context::new().cost(cost)).await.map_err(|e| fail(i, e))?;
                prop_assert_eq!(d.outcome, outcome(expected[0].kind), "step {}: hit {:?}", i, step);
                admitted
            }
            action => {
                let scope = Scope::new();
                let half = if step.nested { step.entries.len() / 2 } else { step.entries.len() };
                for &(t, c, cost) in &step.entries[..half] {
                    scope
                        .add_with(&throttles[t], &client(c), &Context::new().cost(cost))
                        .await
                        .map_err(|e| fail(i, e))?;
                }
                if step.nested {
                    let child = scope.child().map_err(|e| fail(i, e))?;
                    for &(t, c, cost) in &step.entries[half..] {
                        let ctx = Context::new().cost(cost);
                        child.add_with(&throttles[t], &client(c), &ctx).await.map_err(|e| fail(i, e))?;
                    }
                    prop_assert_eq!(child.apply().await.map_err(|e| fail(i, e))?, Applied::Merged);
                }
                match action {
                    ScopeAction::Apply => {
                        let decision = match scope.apply().await {
                            Ok(Applied::Charged(d)) => d,
                            Ok(Applied::Merged) => return Err(fail(i, "a root scope merged")),
                            Err(ScopeError::Refused(d)) => *d,
                            Err(e) => return Err(fail(i, e)),
                        };
                        compare(i, &decision, &keys, &expected, &throttles)?;
                        prop_assert_eq!(decision.is_allowed(), admitted, "step {}: {:?}", i, step);
                        if !admitted {
                            scope.cancel().map_err(|e| fail(i, e))?;
                        }
                        admitted
                    }
                    ScopeAction::Check => {
                        let decision = scope.check().await.map_err(|e| fail(i, e))?;
                        compare(i, &decision, &keys, &expected, &throttles)?;
                        scope.cancel().map_err(|e| fail(i, e))?;
                        false
                    }
                    _ => {
                        scope.cancel().map_err(|e| fail(i, e))?;
                        false
                    }
                }
            }
        };
        if moves {
            for (&(key, _), write) in keys.iter().zip(writes) {
                if let Some((bytes, _)) = write {
                    model.insert(key, bytes);
                }
            }
        }
    }
    Ok(())
}

/// Every charge of `decision` against the model's verdict for its key.
fn compare(
    at: usize,
    decision: &ScopeDecision,
    keys: &[((usize, u8), u64)],
    expected: &[Verdict],
    throttles: &[Throttle],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(decision.charges.len(), keys.len(), "step {}: one charge per key", at);
    for ((charge, &((t, _), cost)), v) in decision.charges.iter().zip(keys).zip(expected) {
        let d = &charge.decision;
        prop_assert_eq!(charge.throttle.as_str(), throttles[t].uid(), "step {}", at);
        prop_assert_eq!(d.cost, cost, "step {}", at);
        prop_assert_eq!(d.outcome, outcome(v.kind), "step {}: {:?} against {:?}", at, d, v);
        let remaining = (v.kind != VerdictKind::Never).then_some(v.remaining);
        prop_assert_eq!(d.remaining, remaining, "step {}: {:?} against {:?}", at, d, v);
        prop_assert_eq!(d.wait.as_micros(), u128::from(v.wait_us), "step {}: {:?} against {:?}", at, d, v);
    }
    Ok(())
}
