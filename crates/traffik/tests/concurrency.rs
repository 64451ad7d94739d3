//! Concurrency limits: leases held by permits on the in-memory backend and on a custom backend
//! written against the documented contract (`decide_bytes`, `amend_bytes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::view;
use traffik::strategy::{Concurrency, FixedWindow};
use traffik::{Backend, InMemoryBackend, ManualClock, Outcome, SharedBackend, Throttle, ThrottleGroup};
use traffik_property_tests::contract::ContractBackend;

const START: u64 = 1_700_000_000_000_000;

fn throttle(uid: &str, rate: &str, backend: impl Backend, clock: &ManualClock) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).backend(backend).strategy(Concurrency).clock(clock.clone()).build().unwrap()
}

/// 64 clients at once, each holding what it got until all have asked: exactly N hold a slot;
/// once they let go, exactly N again.
async fn exactly_n_under_64_clients(t: &Throttle) {
    for _round in 0..2 {
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (t, barrier, admitted) = (t.clone(), barrier.clone(), admitted.clone());
                tokio::spawn(async move {
                    let permit = t.acquire(&view([198, 51, 100, 1])).await.unwrap();
                    if permit.is_allowed() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(permit.leases(), 1);
                    } else {
                        assert_eq!(permit.decision().outcome, Outcome::Throttled);
                        assert_eq!(permit.leases(), 0);
                    }
                    // Everyone has asked before anyone lets go.
                    barrier.wait().await;
                    // Every lease is still held (nothing expired): released.
                    assert!(permit.release().await.unwrap());
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::SeqCst), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_in_flight_under_64_concurrent_clients_in_memory() {
    let clock = ManualClock::new(START);
    exactly_n_under_64_clients(&throttle("uploads", "5/30s", InMemoryBackend::new(), &clock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_in_flight_on_a_custom_backend() {
    let clock = ManualClock::new(START);
    exactly_n_under_64_clients(&throttle("uploads", "5/30s", ContractBackend::new(), &clock)).await;
}

#[tokio::test]
async fn a_refusal_waits_for_the_earliest_lease_expiry() {
    let clock = ManualClock::new(START);
    let t = throttle("uploads", "2/30s", InMemoryBackend::new(), &clock);
    let req = view([192, 0, 2, 1]);
    let a = t.acquire(&req).await.unwrap();
    clock.advance(Duration::from_secs(10));
    let b = t.acquire(&req).await.unwrap();
    assert!(a.is_allowed() && b.is_allowed());
    assert_eq!(b.decision().remaining, Some(0));
    let refused = t.acquire(&req).await.unwrap();
    assert!(!refused.is_allowed());
    // The first lease expires 30 s after it was taken unless renewed: 20 s from now.
    assert_eq!(refused.decision().retry_after_secs(), Some(20));
    drop(a);
    assert!(t.acquire(&req).await.unwrap().is_allowed());
    // Other clients have their own slots.
    assert!(t.acquire(&view([192, 0, 2, 2])).await.unwrap().is_allowed());
}

#[tokio::test]
async fn release_on_drop_panic_cancellation_and_abort() {
    let clock = ManualClock::new(START);
    let t = throttle("jobs", "1/60s", InMemoryBackend::new(), &clock);
    let req = view([192, 0, 2, 1]);
    let free = |t: Throttle| async move {
        let p = t.acquire(&view([192, 0, 2, 1])).await.unwrap();
        p.is_allowed()
    };

    // An explicit release.
    let p = t.acquire(&req).await.unwrap();
    assert!(!free(t.clone()).await);
    assert!(p.release().await.unwrap());
    assert!(free(t.clone()).await);

    // A handler that panics.
    let t2 = t.clone();
    let panicked = tokio::spawn(async move {
        let _permit = t2.acquire(&view([192, 0, 2, 1])).await.unwrap();
        panic!("handler failed");
    })
    .await;
    assert!(panicked.is_err());
    assert!(free(t.clone()).await);

    // A future dropped mid-handler.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let t3 = t.clone();
    let handler = async move {
        let _permit = t3.acquire(&view([192, 0, 2, 1])).await.unwrap();
        let _ = entered_tx.send(());
        std::future::pending::<()>().await;
    };
    let mut handler = Box::pin(handler);
    tokio::select! {
        _ = &mut handler => unreachable!("the handler never finishes"),
        _ = entered_rx => {}
    }
    assert!(!free(t.clone()).await, "held while the handler runs");
    drop(handler);
    assert!(free(t.clone()).await);

    // An aborted task.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let t4 = t.clone();
    let task = tokio::spawn(async move {
        let _permit = t4.acquire(&view([192, 0, 2, 1])).await.unwrap();
        let _ = entered_tx.send(());
        std::future::pending::<()>().await;
    });
    entered_rx.await.unwrap();
    assert!(!free(t.clone()).await);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(free(t).await);
}

/// A "crashed" holder: permits leaked inside a runtime that is then shut down (so nothing
/// renews or releases them). The slots come back once the lease time has passed.
#[test]
fn leaked_leases_come_back_after_the_lease_time() {
    let clock = ManualClock::new(START);
    let backend = InMemoryBackend::new();
    let t = throttle("jobs", "3/30s", backend, &clock);
    let crashed = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    crashed.block_on(async {
        for _ in 0..3 {
            let p = t.acquire(&view([192, 0, 2, 1])).await.unwrap();
            assert!(p.is_allowed());
            std::mem::forget(p);
        }
    });
    drop(crashed);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let p = t.acquire(&view([192, 0, 2, 1])).await.unwrap();
        assert!(!p.is_allowed());
        assert_eq!(p.decision().retry_after_secs(), Some(30));
        clock.advance(Duration::from_secs(30));
        assert!(t.acquire(&view([192, 0, 2, 1])).await.unwrap().is_allowed());
    });
}

/// A permit renews its lease every third of the lease time, so work longer than the lease time
/// keeps its slot; once dropped, the slot is free.
#[tokio::test(start_paused = true)]
async fn a_held_permit_renews_its_lease() {
    let clock = ManualClock::new(START);
    let t = throttle("uploads", "1/30s", InMemoryBackend::new(), &clock);
    let req = view([192, 0, 2, 1]);
    let p = t.acquire(&req).await.unwrap();
    assert!(p.is_allowed());
    for _ in 0..12 {
        // Both clocks move on by a third of the lease time (the tokio clock drives the renewal
        // task, the manual clock is what the backend reads).
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
    }
    assert!(!p.is_lost());
    assert!(!t.acquire(&req).await.unwrap().is_allowed(), "still held after 4 lease times");
    assert!(p.renew().await.unwrap());
    drop(p);
    assert!(t.acquire(&req).await.unwrap().is_allowed());
}

#[tokio::test]
async fn a_group_of_a_rate_and_a_concurrency_limit() {
    let clock = ManualClock::new(START);
    let backend = InMemoryBackend::new();
    let rate = Throttle::builder()
        .uid("per-minute")
        .rate("100/min")
        .backend(backend.clone())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let conc = throttle("in-flight", "2/30s", backend, &clock);
    let group = ThrottleGroup::new("api", [rate, conc]).unwrap();
    let req = view([192, 0, 2, 1]);
    let a = group.acquire(&req).await.unwrap();
    let b = group.acquire(&req).await.unwrap();
    assert!(a.is_allowed() && b.is_allowed());
    assert_eq!((a.leases(), b.leases()), (1, 1), "only the concurrency member holds a lease");
    let refused = group.acquire(&req).await.unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.leases(), 0);
    assert_eq!(refused.decision().binding_member().map(Throttle::uid), Some("in-flight"));
    assert_eq!(refused.decision().retry_after_secs(), Some(30));
    drop(a);
    let c = group.acquire(&req).await.unwrap();
    assert!(c.is_allowed());
    // The rate member was charged for the 3 admissions only; releasing gave back nothing of it.
    let stats = group.stat(&req).await.unwrap();
    assert_eq!(stats[0].limited().unwrap().remaining, 97);
    assert_eq!(stats[1].limited().unwrap().remaining, 0);
}

/// A strategy without leases: acquiring is a plain hit, and the permit holds nothing.
#[tokio::test]
async fn other_strategies_hold_nothing() {
    let clock = ManualClock::new(START);
    let t = Throttle::builder()
        .uid("plain")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let req = view([192, 0, 2, 1]);
    let p = t.acquire(&req).await.unwrap();
    assert!(p.is_allowed());
    assert_eq!(p.leases(), 0);
    drop(p);
    assert!(t.acquire(&req).await.unwrap().is_allowed());
    assert!(!t.acquire(&req).await.unwrap().is_allowed());
}

#[tokio::test]
async fn stat_shows_the_slots_in_flight() {
    let clock = ManualClock::new(START);
    let t = throttle("uploads", "3/30s", InMemoryBackend::new(), &clock);
    let req = view([192, 0, 2, 1]);
    let _a = t.acquire(&req).await.unwrap();
    let stat = t.stat(&req).await.unwrap();
    let stat = stat.limited().unwrap();
    assert_eq!(stat.remaining, 2);
    assert_eq!(stat.metadata.get("in_flight"), Some(&serde_json::Value::from(1)));
    assert_eq!(stat.metadata.get("slots"), Some(&serde_json::Value::from(3)));
}

#[tokio::test]
async fn a_custom_backend_releases_through_the_contract() {
    let clock = ManualClock::new(START);
    let backend: SharedBackend = Arc::new(ContractBackend::new());
    let t = throttle("uploads", "1/30s", backend, &clock);
    let req = view([192, 0, 2, 1]);
    let p = t.acquire(&req).await.unwrap();
    assert!(!t.acquire(&req).await.unwrap().is_allowed());
    assert!(p.release().await.unwrap());
    let q = t.acquire(&req).await.unwrap();
    assert!(q.is_allowed());
    // Dropped: the release runs in a task (no synchronous path here); poll until it has.
    drop(q);
    let mut admitted = false;
    for _ in 0..10_000 {
        tokio::task::yield_now().await;
        if t.acquire(&req).await.unwrap().is_allowed() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the dropped permit's lease was released");
}

#[test]
fn more_slots_than_the_cap_is_a_build_error() {
    let built =
        Throttle::builder().uid("huge").rate("5000/min").backend(InMemoryBackend::new()).strategy(Concurrency).build();
    let err = built.expect_err("5000 slots are refused");
    assert!(matches!(
        err,
        traffik::Error::Config(traffik::ConfigError::Strategy(traffik::strategy::ParamError::OutOfRange { .. }))
    ));
    let fine =
        Throttle::builder().uid("ok").rate("1024/min").backend(InMemoryBackend::new()).strategy(Concurrency).build();
    assert!(fine.is_ok());
}
