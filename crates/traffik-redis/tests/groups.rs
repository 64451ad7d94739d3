//! Groups of throttles on Redis: one script and one round trip per group decision (counted with
//! `INFO commandstats`), every key of a group in one cluster slot, and a typed error for custom
//! strategies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use traffik::strategy::{FixedWindow, Gcra, SlidingWindowLog, TokenBucket};
use traffik::{BackendError, Error, ManualClock, RequestView, SharedBackend, StrategyHandle, Throttle, ThrottleGroup};
use traffik_property_tests::{SuiteConfig, check_groups, custom::PlainFixedWindow};
use traffik_redis::RedisBackend;

fn member(
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

#[test]
fn a_two_member_group_costs_one_evalsha_per_decision() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend: SharedBackend = Arc::new(common::client_clock(&server.url));
    let clock = ManualClock::new(1_700_000_000_000_000);
    let burst = member("burst", "3/s", TokenBucket::new(), &backend, &clock);
    let sustained = member("sustained", "10/min", FixedWindow, &backend, &clock);
    let group = ThrottleGroup::new("api", [burst, sustained]).unwrap();
    // Load the group script (a fresh server answers the first EVALSHA with NOSCRIPT).
    let _ = rt.block_on(group.check(&view(1))).unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).unwrap();
    let mut admitted = 0;
    rt.block_on(async {
        for i in 0..40u8 {
            let d = group.hit(&view(i % 2)).await.unwrap();
            admitted += u64::from(d.is_allowed());
            clock.advance(Duration::from_millis(100));
        }
    });
    assert!(admitted > 0 && admitted < 40, "{admitted} admitted");
    assert_eq!(common::calls(&mut admin, "evalsha"), 40, "one script call per group decision");
    assert_eq!(common::calls(&mut admin, "get"), 80, "two members read in each script");
    assert_eq!(common::calls(&mut admin, "set"), 2 * admitted, "both members written iff the group admits");
}

#[test]
fn every_key_of_a_group_is_in_one_cluster_slot() {
    let cluster = common::cluster::redis_cluster();
    let urls = cluster.urls.clone();
    let make = || {
        Arc::new(
            RedisBackend::builder()
                .cluster(urls.iter().cloned())
                .namespace("g")
                .use_client_clock(true)
                .min_ttl(Duration::from_secs(600))
                .build()
                .unwrap(),
        ) as SharedBackend
    };
    check_groups(make, &SuiteConfig::quick(), false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = make();
    let clock = ManualClock::new(1_700_000_000_000_000);
    let members = [
        member("a", "5/s", FixedWindow, &backend, &clock),
        member("b", "5/s", SlidingWindowLog, &backend, &clock),
        member("c", "5/s", Gcra::new(), &backend, &clock),
    ];
    let group = ThrottleGroup::new("tenant-group", members).unwrap();
    rt.block_on(async {
        for i in 0..20u8 {
            assert!(group.hit(&view(i)).await.unwrap().is_allowed());
        }
    });
    let mut slots = std::collections::BTreeSet::new();
    let mut keys = 0;
    for url in &urls {
        let mut c = common::admin(url);
        let found: Vec<String> = redis::cmd("KEYS").arg("g:{tenant-group}:*").query(&mut c).unwrap();
        for k in &found {
            let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(k).query(&mut c).unwrap();
            slots.insert(slot);
        }
        keys += found.len();
    }
    assert_eq!(keys, 60, "three members for twenty clients");
    assert_eq!(slots.len(), 1, "slots {slots:?}");
}

#[test]
fn a_group_with_a_custom_strategy_is_a_typed_error() {
    let server = common::private_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend: SharedBackend = Arc::new(common::client_clock(&server.url));
    let clock = ManualClock::new(1_700_000_000_000_000);
    let custom = member("custom", "5/s", PlainFixedWindow, &backend, &clock);
    custom.update_error_policy(Some(traffik::ErrorPolicy::raise()));
    let group = ThrottleGroup::new("mixed", [custom, member("fw", "5/s", FixedWindow, &backend, &clock)]).unwrap();
    let err = rt.block_on(group.hit(&view(1))).unwrap_err();
    assert!(
        matches!(err, Error::Backend { source: BackendError::Unsupported { backend: "redis", .. }, .. }),
        "{err:?}"
    );
}

/// A group's `stat` on Redis reads the members' state where the group's decisions wrote it
/// (under the group's tag), so its snapshots agree with the same group's in memory.
#[test]
fn a_groups_stat_sees_what_its_hits_used_as_in_memory() {
    let server = common::private_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000);
    let group_on = |backend: SharedBackend| {
        let burst = member("burst", "5/s", TokenBucket::new(), &backend, &clock);
        let sustained = member("sustained", "10/min", FixedWindow, &backend, &clock);
        let log = member("log", "4/min", SlidingWindowLog, &backend, &clock);
        ThrottleGroup::new("stats", [burst, sustained, log]).unwrap()
    };
    let on_redis = group_on(Arc::new(common::client_clock(&server.url)));
    let in_memory = group_on(Arc::new(traffik::InMemoryBackend::new()));
    let snapshot = |group: &ThrottleGroup| {
        rt.block_on(group.stat(&view(7)))
            .unwrap()
            .into_iter()
            .map(|s| {
                let s = s.into_limited().expect("limited");
                (s.throttle, s.used, s.remaining, s.admissible)
            })
            .collect::<Vec<_>>()
    };
    for step in 0..6 {
        let (r, m) = (rt.block_on(on_redis.hit(&view(7))).unwrap(), rt.block_on(in_memory.hit(&view(7))).unwrap());
        assert_eq!(r.is_allowed(), m.is_allowed(), "step {step}");
        clock.advance(Duration::from_millis(50));
        let (r, m) = (snapshot(&on_redis), snapshot(&in_memory));
        assert_eq!(r, m, "step {step}");
        assert!(r.iter().all(|(_, used, _, _)| *used > 0), "step {step}: every member shows its use: {r:?}");
    }
}
