//! Deferred quota scopes on a real redis-server: a scope of several throttles is one script and
//! one round trip when applied, charges the throttles' own keys (what their hits read), is all
//! or nothing, and 64 concurrent scopes on shared throttles never over-admit; on a Cluster a
//! scope of one key works and one across slots is a typed error that charges nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use traffik::scope::{Applied, ScopeState};
use traffik::strategy::{FixedWindow, Gcra, SlidingWindowLog, TokenBucket};
use traffik::{
    Context, ManualClock, RequestView, Scope, ScopeError, SharedBackend, Snapshot, StrategyHandle, Throttle,
};
use traffik_property_tests::{SuiteConfig, check_scopes};
use traffik_redis::RedisBackend;

const T0: u64 = 1_700_000_000_000_000;

fn throttle(
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

async fn used(t: &Throttle, req: &RequestView<'_>) -> u64 {
    match t.stat(req).await.unwrap() {
        Snapshot::Limited(s) => s.used,
        other => panic!("not limited: {other:?}"),
    }
}

#[test]
fn a_scope_is_one_script_on_the_throttles_own_keys() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend: SharedBackend = Arc::new(common::client_clock(&server.url));
    let clock = ManualClock::new(T0);
    let throttles = [
        throttle("fw", "10/min", FixedWindow, &backend, &clock),
        throttle("tb", "10/min", TokenBucket::new(), &backend, &clock),
        throttle("gcra", "10/min", Gcra::with_burst(10), &backend, &clock),
        throttle("log", "10/min", SlidingWindowLog, &backend, &clock),
    ];
    let req = view(1);
    rt.block_on(async {
        // Load the scripts first (a fresh server answers the first EVALSHA with NOSCRIPT).
        for t in &throttles {
            let _ = t.check(&req).await.unwrap();
        }
        let warm = Scope::new();
        for t in &throttles {
            let _ = warm.add(t, &view(2)).await.unwrap();
        }
        let _ = warm.check().await.unwrap();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).unwrap();

        let scope = Scope::new();
        for t in &throttles {
            let _ = scope.add_with(t, &req, &Context::new().cost(3)).await.unwrap();
        }
        let Applied::Charged(d) = scope.apply().await.unwrap() else { panic!("a root scope charges") };
        assert!(d.is_allowed() && d.charges.len() == 4);
        assert_eq!(common::calls(&mut admin, "evalsha"), 1, "one script for the whole scope");
        // The throttles' own hits and snapshots read what the scope wrote.
        for t in &throttles {
            assert_eq!(used(t, &req).await, 3, "{}", t.uid());
            assert_eq!(t.hit(&req).await.unwrap().remaining, Some(6), "{}", t.uid());
        }
    });
    let keys: Vec<String> = redis::cmd("KEYS").arg("t:*").query(&mut admin).unwrap();
    // `t:{<key>}:<strategy>`, not a group's `t:{<tag>}:<key>:<strategy>`.
    assert!(keys.iter().all(|k| k.starts_with("t:{") && !k.starts_with("t:{}")), "single-decision keys: {keys:?}");
    assert_eq!(keys.len(), 4, "{keys:?}");
    common::assert_every_key_expires(&mut admin);
}

#[test]
fn a_refusal_by_one_throttle_changes_no_throttle() {
    let server = common::private_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend: SharedBackend = Arc::new(common::client_clock(&server.url));
    let clock = ManualClock::new(T0);
    let loose = throttle("loose", "100/min", TokenBucket::new(), &backend, &clock);
    let tight = throttle("tight", "2/min", FixedWindow, &backend, &clock);
    let req = view(3);
    rt.block_on(async {
        for _ in 0..2 {
            assert!(tight.hit(&req).await.unwrap().is_allowed());
        }
        let scope = Scope::new();
        let _ = scope.add_with(&loose, &req, &Context::new().cost(7)).await.unwrap();
        let _ = scope.add(&tight, &req).await.unwrap();
        let check = scope.check().await.unwrap();
        assert!(check.is_throttled());
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
    let server = common::private_server();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Clones of one backend in each throttle: still one backend for the scope.
    let redis = common::client_clock(&server.url);
    let clock = ManualClock::new(T0);
    let build = |uid: &str, rate: &str| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(redis.clone())
            .strategy(FixedWindow)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (tight, loose) = (build("tight", "10/min"), build("loose", "100/min"));
    rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (tight, loose, barrier) = (tight.clone(), loose.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                let req = view(4);
                let scope = Scope::new();
                let _ = scope.add(&tight, &req).await.unwrap();
                let _ = scope.add(&loose, &req).await.unwrap();
                let _ = scope.add(&tight, &req).await.unwrap();
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
        assert_eq!((used(&tight, &view(4)).await, used(&loose, &view(4)).await), (10, 5));
    });
}

#[test]
fn on_a_cluster_one_key_applies_and_keys_across_slots_are_a_typed_error() {
    let cluster = common::cluster::redis_cluster();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend: SharedBackend = Arc::new(
        RedisBackend::builder()
            .cluster(cluster.urls.iter().cloned())
            .namespace("s")
            .use_client_clock(true)
            .min_ttl(Duration::from_secs(600))
            .build()
            .unwrap(),
    );
    let clock = ManualClock::new(T0);
    let a = throttle("a", "100/min", FixedWindow, &backend, &clock);
    let b = throttle("b", "100/min", FixedWindow, &backend, &clock);
    let req = view(5);
    rt.block_on(async {
        let one = Scope::new();
        for _ in 0..4 {
            let _ = one.add(&a, &req).await.unwrap();
        }
        assert!(matches!(one.apply().await.unwrap(), Applied::Charged(d) if d.is_allowed()));
        assert_eq!(used(&a, &req).await, 4);
        // Find a key of `b` in another slot than a's (the identity decides the slot).
        let mut across = None;
        for i in 0..64u8 {
            let scope = Scope::new();
            let _ = scope.add(&a, &req).await.unwrap();
            let _ = scope.add(&b, &view(i)).await.unwrap();
            match scope.apply().await {
                Err(ScopeError::Backend { source, .. }) => {
                    across = Some((i, source));
                    break;
                }
                Ok(_) => {}
                Err(other) => panic!("{other}"),
            }
        }
        let (i, source) = across.expect("some pair of keys in two slots");
        assert!(source.to_string().to_lowercase().contains("slot"), "{source}");
        // Nothing was charged by the failed scope: a's usage counts only the applied scopes.
        let applied_before = u64::from(i);
        assert_eq!(used(&a, &req).await, 4 + applied_before);
        assert_eq!(used(&b, &view(i)).await, 0);
    });
}

#[test]
fn scopes_agree_with_the_model_on_redis() {
    let server = traffik_test_support::redis_server();
    // Built-in strategies only: a group of keys is one script, which has no custom strategy.
    check_scopes(
        || common::shared(common::client_clock(&server.url)),
        &SuiteConfig { cases: 64, max_steps: 40 },
        false,
    );
}
