//! Deferred quota scopes in memory and on a custom backend: charged once at the end, all or
//! nothing; aggregation, nesting, cancel, typed errors after use, checks and snapshots before
//! applying, retries against a failing backend, and 64 concurrent scopes on shared throttles
//! that never over-admit and never wait for each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use traffik::backend::{BoxFuture, GroupOperation, Operation};
use traffik::scope::{Applied, Queued, RunError, ScopeState};
use traffik::strategy::{FixedWindow, Metadata, TokenBucket, Verdict};
use traffik::{
    Backend, BackendError, Context, InMemoryBackend, ManualClock, Outcome, RequestView, Retry, Scope, ScopeError,
    SharedBackend, Skip, Snapshot, StrategyHandle, Throttle,
};
use traffik_property_tests::failing::Failing;

const T0: u64 = 1_700_000_000_000_000;

fn throttle(uid: &str, rate: &str, backend: &SharedBackend, clock: &ManualClock) -> Throttle {
    throttle_with(uid, rate, FixedWindow, backend, clock)
}

fn throttle_with(
    uid: &str,
    rate: &str,
    strategy: impl Into<StrategyHandle>,
    backend: &SharedBackend,
    clock: &ManualClock,
) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        .shared_backend(Arc::clone(backend))
        .strategy(strategy)
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn view(i: u8) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, i], 4000))))
}

fn memory() -> SharedBackend {
    Arc::new(InMemoryBackend::new())
}

async fn used(t: &Throttle, req: &RequestView<'_>) -> u64 {
    match t.stat(req).await.unwrap() {
        Snapshot::Limited(s) => s.used,
        other => panic!("not limited: {other:?}"),
    }
}

#[tokio::test]
async fn nothing_is_charged_before_apply_and_everything_once_after() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let jobs = throttle("jobs", "10/min", &backend, &clock);
    let calls = throttle("calls", "100/min", &backend, &clock);
    let req = view(1);
    let scope = Scope::new();
    assert_eq!(scope.add(&jobs, &req).await.unwrap(), Queued::Added);
    for _ in 0..3 {
        let _ = scope.add(&calls, &req).await.unwrap();
    }
    assert_eq!((used(&jobs, &req).await, used(&calls, &req).await), (0, 0), "queued only");
    let Applied::Charged(decision) = scope.apply().await.unwrap() else { panic!("a root scope charges") };
    assert!(decision.is_allowed());
    assert_eq!(decision.charges.len(), 2);
    assert_eq!(decision.charges[1].throttle, "calls");
    assert_eq!(decision.charges[1].decision.cost, 3);
    assert_eq!(scope.state(), ScopeState::Applied);
    // The throttles' own quota: a plain hit sees the charge.
    assert_eq!((used(&jobs, &req).await, used(&calls, &req).await), (1, 3));
    let d = calls.hit(&req).await.unwrap();
    assert_eq!(d.remaining, Some(96));
}

#[tokio::test]
async fn consecutive_identical_entries_aggregate_and_one_key_is_decided_once() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let a = throttle("a", "10/min", &backend, &clock);
    let b = throttle("b", "10/min", &backend, &clock);
    let req = view(2);
    let scope = Scope::new();
    assert_eq!(scope.add(&a, &req).await.unwrap(), Queued::Added);
    assert_eq!(scope.add(&a, &req).await.unwrap(), Queued::Aggregated { total: 2 });
    assert_eq!(scope.add_with(&a, &req, &Context::new().cost(3)).await.unwrap(), Queued::Aggregated { total: 5 });
    // Another client's key is another entry, and so is `b`.
    assert_eq!(scope.add(&a, &view(3)).await.unwrap(), Queued::Added);
    assert_eq!(scope.add(&b, &req).await.unwrap(), Queued::Added);
    // Not consecutive: a new entry on a's key again.
    assert_eq!(scope.add(&a, &req).await.unwrap(), Queued::Added);
    let entries = scope.entries();
    let costs: Vec<(&str, u64)> = entries.iter().map(|e| (e.throttle.as_str(), e.cost)).collect();
    assert_eq!(costs, [("a", 5), ("a", 1), ("b", 1), ("a", 1)]);
    // Applied, the key's entries are one operation of their summed cost: 6 of 10.
    let Applied::Charged(d) = scope.apply().await.unwrap() else { panic!() };
    assert_eq!(d.charges.len(), 3);
    assert_eq!(d.charges[0].decision.cost, 6);
    assert_eq!(used(&a, &req).await, 6);
    assert_eq!(used(&a, &view(3)).await, 1);
    assert_eq!(used(&b, &req).await, 1);
}

#[tokio::test]
async fn a_refusal_by_one_throttle_changes_no_throttle() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let loose = throttle("loose", "100/min", &backend, &clock);
    let tight = throttle("tight", "2/min", &backend, &clock);
    let req = view(4);
    for _ in 0..2 {
        assert!(tight.hit(&req).await.unwrap().is_allowed());
    }
    let scope = Scope::new();
    let _ = scope.add_with(&loose, &req, &Context::new().cost(7)).await.unwrap();
    let _ = scope.add(&tight, &req).await.unwrap();
    let err = scope.apply().await.unwrap_err();
    let refusal = err.refusal().expect("refused");
    assert_eq!(refusal.outcome, Outcome::Throttled);
    assert_eq!(refusal.binding_charge().map(|c| c.throttle.as_str()), Some("tight"));
    assert!(refusal.wait > Duration::ZERO && refusal.wait <= Duration::from_secs(60));
    let secs = refusal.wait.as_micros().div_ceil(1_000_000) as u64;
    assert_eq!(refusal.retry_after_secs(), Some(secs));
    assert_eq!(err.to_string(), format!("the scope was refused by `tight`: retry after {secs} s"));
    // Neither throttle was charged, and the scope stays open.
    assert_eq!((used(&loose, &req).await, used(&tight, &req).await), (0, 2));
    assert_eq!(scope.state(), ScopeState::Open);
    // After the wait, the same scope applies.
    clock.advance(refusal.wait);
    assert!(matches!(scope.apply().await.unwrap(), Applied::Charged(d) if d.is_allowed()));
    assert_eq!((used(&loose, &req).await, used(&tight, &req).await), (7, 1));
}

#[tokio::test]
async fn a_cost_that_never_fits_is_never() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let small = throttle("small", "3/min", &backend, &clock);
    let scope = Scope::new();
    let _ = scope.add_with(&small, &view(5), &Context::new().cost(2)).await.unwrap();
    let _ = scope.add_with(&small, &view(5), &Context::new().cost(2)).await.unwrap();
    let err = scope.apply().await.unwrap_err();
    assert_eq!(err.refusal().map(|d| d.outcome), Some(Outcome::Never));
    assert_eq!(err.refusal().and_then(|d| d.retry_after_secs()), None);
}

#[tokio::test]
async fn cancel_and_drop_charge_nothing_and_use_after_is_a_typed_error() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let t = throttle("t", "10/min", &backend, &clock);
    let req = view(6);
    let cancelled = Scope::new();
    let _ = cancelled.add(&t, &req).await.unwrap();
    cancelled.cancel().unwrap();
    assert!(cancelled.is_empty());
    {
        let dropped = Scope::new();
        let _ = dropped.add(&t, &req).await.unwrap();
    }
    assert_eq!(used(&t, &req).await, 0);
    let closed = |e: ScopeError, state| assert!(matches!(e, ScopeError::Closed(s) if s == state), "{e}");
    closed(cancelled.add(&t, &req).await.unwrap_err(), ScopeState::Cancelled);
    closed(cancelled.apply().await.unwrap_err(), ScopeState::Cancelled);
    closed(cancelled.cancel().unwrap_err(), ScopeState::Cancelled);
    closed(cancelled.check().await.unwrap_err(), ScopeState::Cancelled);
    closed(cancelled.stat().await.unwrap_err(), ScopeState::Cancelled);
    closed(cancelled.child().unwrap_err(), ScopeState::Cancelled);

    let applied = Scope::new();
    let _ = applied.add(&t, &req).await.unwrap();
    let _ = applied.apply().await.unwrap();
    closed(applied.add(&t, &req).await.unwrap_err(), ScopeState::Applied);
    closed(applied.apply().await.unwrap_err(), ScopeState::Applied);
    closed(applied.cancel().unwrap_err(), ScopeState::Applied);
    assert_eq!(used(&t, &req).await, 1, "applied once");
    assert_eq!(ScopeError::Closed(ScopeState::Applied).to_string(), "the scope is applied");
}

#[tokio::test]
async fn run_applies_on_ok_cancels_on_err_and_applies_on_chosen_errors() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let t = throttle("t", "10/min", &backend, &clock);
    let req = view(7);

    let ok = Scope::new();
    let out = ok
        .run(async {
            let _ = ok.add(&t, &req).await?;
            Ok::<_, ScopeError>("done")
        })
        .await
        .unwrap();
    assert_eq!((out, ok.state(), used(&t, &req).await), ("done", ScopeState::Applied, 1));

    #[derive(Debug, PartialEq)]
    enum JobError {
        Upstream,
        Partial,
    }
    let failed = Scope::new();
    let r: Result<(), _> = failed
        .run(async {
            let _ = failed.add(&t, &req).await;
            Err(JobError::Upstream)
        })
        .await;
    assert!(matches!(r, Err(RunError::Work(JobError::Upstream))));
    assert_eq!((failed.state(), used(&t, &req).await), (ScopeState::Cancelled, 1));

    // Applied on the errors chosen, not on the others.
    for (error, charged) in [(JobError::Partial, true), (JobError::Upstream, false)] {
        let scope = Scope::new();
        let before = used(&t, &req).await;
        let r: Result<(), _> = scope
            .run_with(
                async {
                    let _ = scope.add_with(&t, &req, &Context::new().cost(2)).await;
                    Err(error)
                },
                |e| *e == JobError::Partial,
            )
            .await;
        assert!(matches!(r, Err(RunError::Work(_))));
        assert_eq!(used(&t, &req).await - before, if charged { 2 } else { 0 });
        assert_eq!(scope.state(), if charged { ScopeState::Applied } else { ScopeState::Cancelled });
    }

    // The work succeeded but the scope is refused: the output comes back, nothing is charged.
    let big = Scope::new();
    let r = big
        .run(async {
            let _ = big.add_with(&t, &req, &Context::new().cost(8)).await;
            Ok::<_, ScopeError>(42)
        })
        .await;
    match r {
        Err(RunError::Apply { output, error }) => {
            assert_eq!(output, 42);
            assert!(error.refusal().is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((big.state(), used(&t, &req).await), (ScopeState::Open, 3));
}

#[tokio::test]
async fn a_child_merges_into_its_parent_which_charges_once() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let a = throttle("a", "10/min", &backend, &clock);
    let b = throttle("b", "10/min", &backend, &clock);
    let req = view(8);
    let parent = Scope::new();
    let _ = parent.add(&a, &req).await.unwrap();
    let child = parent.child().unwrap();
    let _ = child.add(&a, &req).await.unwrap();
    let _ = child.add(&b, &req).await.unwrap();
    let grandchild = child.child().unwrap();
    let _ = grandchild.add(&b, &req).await.unwrap();
    assert_eq!(grandchild.apply().await.unwrap(), Applied::Merged);
    assert_eq!(grandchild.state(), ScopeState::Merged);
    // A cancelled or dropped child adds nothing.
    let cancelled = parent.child().unwrap();
    let _ = cancelled.add_with(&a, &req, &Context::new().cost(5)).await.unwrap();
    cancelled.cancel().unwrap();
    drop({
        let dropped = parent.child().unwrap();
        let _ = dropped.add_with(&b, &req, &Context::new().cost(5)).await.unwrap();
        dropped
    });
    assert_eq!(child.apply().await.unwrap(), Applied::Merged);
    assert_eq!((used(&a, &req).await, used(&b, &req).await), (0, 0), "merging charges nothing");
    // The parent's first entry and the child's first aggregate at the seam.
    let costs: Vec<(String, u64)> = parent.entries().into_iter().map(|e| (e.throttle, e.cost)).collect();
    assert_eq!(costs, [("a".to_owned(), 2), ("b".to_owned(), 2)]);
    let _ = parent.apply().await.unwrap();
    assert_eq!((used(&a, &req).await, used(&b, &req).await), (2, 2));
    // A child of a closed parent cannot merge.
    let parent = Scope::new();
    let late = parent.child().unwrap();
    let _ = late.add(&a, &req).await.unwrap();
    parent.cancel().unwrap();
    assert!(matches!(late.apply().await.unwrap_err(), ScopeError::Closed(ScopeState::Cancelled)));
    assert_eq!(late.state(), ScopeState::Open);
}

#[tokio::test]
async fn check_and_stat_peek_at_the_whole_scope() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let a = throttle("a", "10/min", &backend, &clock);
    let b = throttle_with("b", "4/min", TokenBucket::new(), &backend, &clock);
    let req = view(9);
    let scope = Scope::new();
    let _ = scope.add_with(&a, &req, &Context::new().cost(3)).await.unwrap();
    let _ = scope.add_with(&b, &req, &Context::new().cost(4)).await.unwrap();
    let check = scope.check().await.unwrap();
    assert!(check.is_allowed());
    assert_eq!(check.charges[0].decision.remaining, Some(7));
    let stats = scope.stat().await.unwrap();
    let stats: Vec<_> = stats.iter().map(|s| s.limited().unwrap()).collect();
    assert_eq!((stats[0].throttle.as_str(), stats[0].cost, stats[0].used), ("a", 3, 0));
    assert_eq!((stats[1].throttle.as_str(), stats[1].cost, stats[1].admissible), ("b", 4, true));
    assert_eq!((used(&a, &req).await, used(&b, &req).await), (0, 0), "peeks charge nothing");
    // One hit on b: the scope would now be refused as a whole, still charging nothing.
    assert!(b.hit(&req).await.unwrap().is_allowed());
    let check = scope.check().await.unwrap();
    assert!(check.is_throttled());
    assert_eq!(check.binding_charge().map(|c| c.throttle.as_str()), Some("b"));
    assert_eq!(used(&a, &req).await, 0);
}

#[tokio::test]
async fn skipped_requests_queue_nothing_and_an_empty_scope_is_admitted() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let t = throttle("t", "10/min", &backend, &clock);
    let scope = Scope::new();
    assert_eq!(scope.add_with(&t, &view(10), &Context::new().cost(0)).await.unwrap(), Queued::Skipped(Skip::ZeroCost));
    t.disable();
    assert_eq!(scope.add(&t, &view(10)).await.unwrap(), Queued::Skipped(Skip::Disabled));
    assert!(scope.is_empty());
    let Applied::Charged(d) = scope.apply().await.unwrap() else { panic!() };
    assert!(d.is_allowed() && d.charges.is_empty() && d.binding.is_none());
}

#[tokio::test]
async fn entries_on_another_backend_are_refused() {
    let clock = ManualClock::new(T0);
    let shared = InMemoryBackend::new();
    // Clones of one in-memory backend share its store: one backend.
    let a = Throttle::builder().uid("a").rate("5/min").backend(shared.clone()).strategy(FixedWindow);
    let a = a.clock(clock.clone()).build().unwrap();
    let b = Throttle::builder().uid("b").rate("5/min").backend(shared).strategy(FixedWindow);
    let b = b.clock(clock.clone()).build().unwrap();
    let other = throttle("c", "5/min", &memory(), &clock);
    let scope = Scope::new();
    let _ = scope.add(&a, &view(11)).await.unwrap();
    let _ = scope.add(&b, &view(11)).await.unwrap();
    let err = scope.add(&other, &view(11)).await.unwrap_err();
    assert!(matches!(&err, ScopeError::OtherBackend { throttle, .. } if throttle == "c"), "{err}");
    // In a child too, against its parent's entries.
    let child = scope.child().unwrap();
    assert!(matches!(child.add(&other, &view(11)).await.unwrap_err(), ScopeError::OtherBackend { .. }));
    assert_eq!(scope.len(), 2);
}

fn failing(backend: Failing) -> (Arc<Failing>, SharedBackend) {
    let failing = Arc::new(backend);
    let shared: SharedBackend = failing.clone();
    (failing, shared)
}

#[tokio::test(start_paused = true)]
async fn backend_errors_are_retried_with_backoff_then_typed() {
    let clock = ManualClock::new(T0);
    let req = view(12);
    // Two failures, three retries allowed: the third call charges both throttles.
    let (flaky, backend) = failing(Failing::first(2));
    let a = throttle("a", "10/min", &backend, &clock);
    let b = throttle("b", "10/min", &backend, &clock);
    let scope = Scope::new().retry(Retry::new(3).delay(Duration::from_millis(10)));
    let _ = scope.add(&a, &req).await.unwrap();
    let _ = scope.add(&b, &req).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(matches!(scope.apply().await.unwrap(), Applied::Charged(d) if d.is_allowed()));
    assert_eq!(flaky.calls(), 3);
    // Paused time: the backoff's pauses (10 ms, then about 20 ms, with jitter) are all there was.
    assert!(started.elapsed() >= Duration::from_millis(8 + 16), "{:?}", started.elapsed());
    assert_eq!((used(&a, &req).await, used(&b, &req).await), (1, 1));

    // Always failing: the retries run out, the error is typed, the scope stays open.
    let (down, backend) = failing(Failing::first(u32::MAX));
    let a = throttle("a", "10/min", &backend, &clock);
    let b = throttle("b", "10/min", &backend, &clock);
    let scope = Scope::new().retry(Retry::new(2).delay(Duration::from_millis(10)));
    let _ = scope.add(&a, &req).await.unwrap();
    let _ = scope.add(&b, &req).await.unwrap();
    match scope.apply().await.unwrap_err() {
        ScopeError::Backend { attempts, source } => {
            assert_eq!(attempts, 3);
            assert!(matches!(source, BackendError::Connection { .. }));
        }
        other => panic!("{other}"),
    }
    assert_eq!((down.calls(), scope.state()), (3, ScopeState::Open));

    // No retry settings: one attempt.
    let scope = Scope::new();
    let _ = scope.add(&a, &req).await.unwrap();
    assert!(matches!(scope.apply().await.unwrap_err(), ScopeError::Backend { attempts: 1, .. }));

    // One entry's own settings are honoured (the scope has none).
    let scope = Scope::new();
    let _ = scope.add(&a, &req).await.unwrap();
    let retry = Retry::new(4).delay(Duration::from_millis(1));
    let _ = scope.add_with_retry(&b, &req, &Context::new(), retry).await.unwrap();
    assert!(matches!(scope.apply().await.unwrap_err(), ScopeError::Backend { attempts: 5, .. }));

    // A child's entry keeps its settings in the parent.
    let parent = Scope::new();
    let child = parent.child().unwrap();
    let _ = child.add_with_retry(&a, &req, &Context::new(), Retry::new(1).delay(Duration::from_millis(1))).await;
    let _ = child.apply().await.unwrap();
    assert!(matches!(parent.apply().await.unwrap_err(), ScopeError::Backend { attempts: 2, .. }));

    // Errors the settings do not accept are not retried.
    let scope = Scope::new().retry(Retry::new(5).retry_on(|_| false));
    let _ = scope.add(&a, &req).await.unwrap();
    assert!(matches!(scope.apply().await.unwrap_err(), ScopeError::Backend { attempts: 1, .. }));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_never_retried_and_a_down_backend_is_not_retried_forever() {
    let clock = ManualClock::new(T0);
    let req = view(13);
    let (counting, backend) = failing(Failing::first(0));
    let t = throttle("t", "1/min", &backend, &clock);
    assert!(t.hit(&req).await.unwrap().is_allowed());
    let scope = Scope::new().retry(Retry::new(5).delay(Duration::from_millis(1)));
    let _ = scope.add(&t, &req).await.unwrap();
    let before = counting.calls();
    assert!(scope.apply().await.unwrap_err().refusal().is_some());
    assert_eq!(counting.calls() - before, 1, "one call: a refusal is an answer");

    // A hanging backend: each attempt ends at the throttle's timeout, the retries at their
    // deadline.
    let (hanging, backend) = failing(Failing::hanging());
    let t = Throttle::builder()
        .uid("t")
        .rate("5/min")
        .shared_backend(backend)
        .strategy(FixedWindow)
        .clock(clock.clone())
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let scope =
        Scope::new().retry(Retry::new(100).delay(Duration::from_millis(10)).deadline(Duration::from_millis(300)));
    let _ = scope.add(&t, &req).await.unwrap();
    match scope.apply().await.unwrap_err() {
        ScopeError::Backend { attempts, source: BackendError::Timeout { .. } } => {
            assert!((2..100).contains(&attempts), "{attempts} attempts");
            assert_eq!(hanging.calls(), attempts);
        }
        other => panic!("{other}"),
    }
}

/// 64 tasks each run a scope on two shared throttles (cost 2 on a 10/min limit, cost 1 on a
/// 100/min one), all queued before any applies: exactly 5 are admitted, each throttle is
/// charged exactly for them, and no scope waits for another (they all reach the barrier while
/// open; a lock per throttle held for a scope's life would stop the second at it, and paused
/// time would then end the test at its timeout).
#[tokio::test(start_paused = true)]
async fn concurrent_scopes_never_over_admit_and_never_wait_for_each_other() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let tight = throttle("tight", "10/min", &backend, &clock);
    let loose = throttle("loose", "100/min", &backend, &clock);
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (tight, loose, barrier) = (tight.clone(), loose.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let req = view(14);
            let scope = Scope::new();
            let _ = scope.add(&tight, &req).await.unwrap();
            let _ = scope.add(&loose, &req).await.unwrap();
            let _ = scope.add(&tight, &req).await.unwrap();
            barrier.wait().await;
            match scope.apply().await {
                Ok(_) => true,
                Err(e) if e.refusal().is_some() => false,
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let all = async {
        let mut admitted = 0;
        for t in tasks {
            admitted += u32::from(t.await.unwrap());
        }
        admitted
    };
    let admitted = tokio::time::timeout(Duration::from_secs(3600), all).await.expect("a scope waited for another");
    assert_eq!(admitted, 5);
    assert_eq!((used(&tight, &view(14)).await, used(&loose, &view(14)).await), (10, 5));
}

/// The same on a multi-threaded runtime, where applies really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scopes_on_threads_never_over_admit() {
    let (backend, clock) = (memory(), ManualClock::new(T0));
    let tight = throttle("tight", "10/min", &backend, &clock);
    let loose = throttle("loose", "100/min", &backend, &clock);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (tight, loose) = (tight.clone(), loose.clone());
        tasks.push(tokio::spawn(async move {
            let scope = Scope::new();
            let r = scope
                .run(async {
                    let _ = scope.add(&loose, &view(15)).await?;
                    let _ = scope.add_with(&tight, &view(15), &Context::new().cost(2)).await?;
                    tokio::task::yield_now().await;
                    Ok::<_, ScopeError>(())
                })
                .await;
            match r {
                Ok(()) => true,
                Err(RunError::Apply { error, .. }) if error.refusal().is_some() => false,
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 5);
    assert_eq!((used(&tight, &view(15)).await, used(&loose, &view(15)).await), (10, 5));
}

/// A backend written against the documented contract only: single decisions through
/// `decide_bytes`, groups all or nothing, an empty group tag meaning the throttles' own keys
/// (stored where single decisions are).
#[derive(Debug, Default)]
struct Plain {
    states: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl Plain {
    fn storage(tag: &str, op: &Operation<'_>) -> String {
        if tag.is_empty() {
            format!("{}/{}", op.key.as_str(), op.strategy.name())
        } else {
            format!("{tag}|{}/{}", op.key.as_str(), op.strategy.name())
        }
    }

    fn run(&self, tag: &str, ops: &[Operation<'_>]) -> Result<Vec<Verdict>, BackendError> {
        let mut states = self.states.lock().unwrap();
        let mut verdicts = Vec::new();
        let mut writes = Vec::new();
        for op in ops {
            let key = Plain::storage(tag, op);
            let step = op.strategy.decide_bytes(states.get(&key).map(Vec::as_slice), &op.input)?;
            verdicts.push(step.verdict);
            if let Some((bytes, _ttl)) = step.write {
                writes.push((key, bytes));
            }
        }
        let consume = ops.iter().all(|op| op.mode == traffik::backend::Mode::Consume);
        if consume && verdicts.iter().all(Verdict::is_admitted) {
            states.extend(writes);
        }
        Ok(verdicts)
    }
}

impl Backend for Plain {
    fn kind(&self) -> &'static str {
        "plain"
    }

    fn namespace(&self) -> &str {
        "plain"
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(async move { self.run("", &[op]).map(|v| v[0]) })
    }

    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        Box::pin(async move { self.run(group.tag, group.ops) })
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(async move {
            let states = self.states.lock().unwrap();
            let state = states.get(&Plain::storage("", &op)).map(Vec::as_slice);
            let verdict = op.strategy.decide_bytes(state, &op.input)?.verdict;
            Ok((verdict, op.strategy.metadata_bytes(state, &op.input)?))
        })
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.states.lock().unwrap().clear();
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_custom_backend_written_to_the_contract_runs_scopes() {
    let clock = ManualClock::new(T0);
    let backend: SharedBackend = Arc::new(Plain::default());
    let a = throttle("a", "5/min", &backend, &clock);
    let b = throttle_with("b", "3/min", TokenBucket::new(), &backend, &clock);
    let req = view(16);
    let scope = Scope::new();
    let _ = scope.add_with(&a, &req, &Context::new().cost(2)).await.unwrap();
    let _ = scope.add(&b, &req).await.unwrap();
    assert!(matches!(scope.apply().await.unwrap(), Applied::Charged(d) if d.is_allowed()));
    // The throttles' own hits see the scope's charges.
    assert_eq!(a.hit(&req).await.unwrap().remaining, Some(2));
    assert_eq!(b.hit(&req).await.unwrap().remaining, Some(1));
    // All or nothing: b refuses 2 more, so a is not charged either.
    let scope = Scope::new();
    let _ = scope.add(&a, &req).await.unwrap();
    let _ = scope.add_with(&b, &req, &Context::new().cost(2)).await.unwrap();
    assert!(scope.apply().await.unwrap_err().refusal().is_some());
    assert_eq!(used(&a, &req).await, 3);
}

/// An apply whose future is dropped (a caller's own timeout) leaves the scope open with its
/// entries, as if it had not been applied: cancel it or apply it again.
#[tokio::test(start_paused = true)]
async fn an_apply_dropped_midway_leaves_the_scope_open() {
    let clock = ManualClock::new(T0);
    let (_hanging, backend) = failing(Failing::hanging());
    let t = Throttle::builder()
        .uid("t")
        .rate("5/min")
        .shared_backend(backend)
        .strategy(FixedWindow)
        .clock(clock.clone())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let scope = Scope::new();
    let _ = scope.add_with(&t, &view(17), &Context::new().cost(2)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(1), scope.apply()).await.is_err());
    assert_eq!((scope.state(), scope.len()), (ScopeState::Open, 1));
    assert_eq!(scope.entries()[0].cost, 2);
    scope.cancel().unwrap();
}
