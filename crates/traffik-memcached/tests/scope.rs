//! Deferred quota scopes on a real memcached: a scope charges the throttles' own keys (what
//! their hits read), a refusal by one throttle leaves every throttle as it was (compensated
//! where an earlier key was written), and 64 concurrent scopes on shared throttles are admitted
//! exactly the tightest limit, with every throttle charged exactly for them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use traffik::SharedBackend;
use traffik::scope::{Applied, ScopeState};
use traffik::strategy::{FixedWindow, Gcra, SlidingWindowLog, TokenBucket};
use traffik::{Context, ManualClock, RequestView, Scope, Snapshot, StrategyHandle, Throttle};
use traffik_memcached::MemcachedBackend;
use traffik_property_tests::{SuiteConfig, check_scopes};

const T0: u64 = 1_700_000_000_000_000;

fn backend(addr: &str, name: &str) -> MemcachedBackend {
    MemcachedBackend::builder().server(addr).namespace(common::unique(name)).build().unwrap()
}

fn throttle(
    uid: &str,
    rate: &str,
    strategy: impl Into<StrategyHandle>,
    backend: &MemcachedBackend,
    clock: &ManualClock,
) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        // A clone per throttle: clones are one backend for a scope.
        .backend(backend.clone())
        .strategy(strategy)
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn view(i: u8) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, i], 4000))))
}

async fn used(t: &Throttle, req: &RequestView<'_>) -> u64 {
    match t.stat(req).await.unwrap() {
        Snapshot::Limited(s) => s.used,
        other => panic!("not limited: {other:?}"),
    }
}

#[test]
fn a_scope_charges_the_throttles_own_keys_once() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, "scope-own");
        let clock = ManualClock::new(T0);
        let throttles = [
            throttle("fw", "10/min", FixedWindow, &b, &clock),
            throttle("tb", "10/min", TokenBucket::new(), &b, &clock),
            throttle("gcra", "10/min", Gcra::with_burst(10), &b, &clock),
            throttle("log", "10/min", SlidingWindowLog, &b, &clock),
        ];
        let req = view(1);
        let scope = Scope::new();
        for t in &throttles {
            let _ = scope.add(t, &req).await.unwrap();
            let _ = scope.add_with(t, &req, &Context::new().cost(2)).await.unwrap();
        }
        assert_eq!(scope.len(), 4, "consecutive costs on one key aggregate");
        assert!(scope.check().await.unwrap().is_allowed());
        for t in &throttles {
            assert_eq!(used(t, &req).await, 0, "nothing before apply");
        }
        let Applied::Charged(d) = scope.apply().await.unwrap() else { panic!("a root scope charges") };
        assert!(d.is_allowed() && d.charges.iter().all(|c| c.decision.cost == 3));
        for t in &throttles {
            assert_eq!(used(t, &req).await, 3, "{}", t.uid());
            assert_eq!(t.hit(&req).await.unwrap().remaining, Some(6), "{}", t.uid());
        }
    });
}

#[test]
fn a_refusal_by_one_throttle_changes_no_throttle() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, "scope-refusal");
        let clock = ManualClock::new(T0);
        // The loose throttle comes first: memcached writes it before the tight one refuses,
        // then refunds it.
        let loose = throttle("loose", "100/min", TokenBucket::new(), &b, &clock);
        let tight = throttle("tight", "2/min", FixedWindow, &b, &clock);
        let req = view(2);
        for _ in 0..2 {
            assert!(tight.hit(&req).await.unwrap().is_allowed());
        }
        let scope = Scope::new();
        let _ = scope.add_with(&loose, &req, &Context::new().cost(7)).await.unwrap();
        let _ = scope.add(&tight, &req).await.unwrap();
        let err = scope.apply().await.unwrap_err();
        let refusal = err.refusal().expect("refused");
        assert_eq!(refusal.binding_charge().map(|c| c.throttle.as_str()), Some("tight"));
        assert_eq!((used(&loose, &req).await, used(&tight, &req).await), (0, 2));
        assert_eq!(scope.state(), ScopeState::Open);
        clock.advance(refusal.wait);
        assert!(matches!(scope.apply().await.unwrap(), Applied::Charged(d) if d.is_allowed()));
        assert_eq!((used(&loose, &req).await, used(&tight, &req).await), (7, 1));
    });
}

#[test]
fn concurrent_scopes_never_over_admit() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, "scope-concurrent");
        let clock = ManualClock::new(T0);
        let loose = throttle("loose", "100/min", FixedWindow, &b, &clock);
        let tight = throttle("tight", "10/min", FixedWindow, &b, &clock);
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (tight, loose, barrier) = (tight.clone(), loose.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                let req = view(3);
                let scope = Scope::new();
                let _ = scope.add(&loose, &req).await.unwrap();
                let _ = scope.add_with(&tight, &req, &Context::new().cost(2)).await.unwrap();
                // Every scope is open here at once: none holds anything the others wait for.
                barrier.wait().await;
                match scope.apply().await {
                    Ok(_) => true,
                    Err(e) if e.refusal().is_some() => false,
                    Err(e) => panic!("{e}"),
                }
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += u32::from(t.await.unwrap());
        }
        assert_eq!(admitted, 5);
        // Every compensation is done once the applies have returned.
        assert_eq!((used(&tight, &view(3)).await, used(&loose, &view(3)).await), (10, 5));
    });
}

#[test]
fn scopes_agree_with_the_model_on_memcached() {
    let server = common::memcached_server();
    let make = || Arc::new(backend(&server.addr, "scope-prop")) as SharedBackend;
    check_scopes(make, &SuiteConfig { cases: 48, max_steps: 40 }, true);
}
