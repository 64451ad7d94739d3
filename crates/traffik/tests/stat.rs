//! `Stat` snapshots as dashboards read them: the serialized shape (pinned field by field), the
//! figures of each strategy family, and the reason a request is not limited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::throttle;
use serde_json::{Value, json};
use traffik::strategy::{FixedWindow, Gcra, LeakyBucketWithQueue, SlidingWindowLog, TokenBucket, TokenBucketWithDebt};
use traffik::{Context, Identity, InMemoryBackend, ManualClock, RequestView, Skip, Snapshot, Stat, Throttle};

const START_US: u64 = 1_700_000_000_000_000;

fn view(ip: &str) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::new(ip.parse().unwrap(), 40000)))
}

async fn stat(t: &Throttle, req: &RequestView<'_>) -> Stat {
    match t.stat(req).await.unwrap() {
        Snapshot::Limited(stat) => stat,
        other => panic!("{} should limit the request, got {other:?}", t.uid()),
    }
}

/// The serialized shape, every field: a change to it is a breaking change for dashboards.
#[tokio::test]
async fn a_snapshot_serializes_to_the_documented_shape() {
    let clock = ManualClock::new(START_US);
    // The example in the `traffik::stat` docs and README.
    let t = throttle("upload", "5/s", TokenBucketWithDebt::new(2), &clock);
    let req = view("192.0.2.1");
    for _ in 0..6 {
        assert!(t.hit(&req).await.unwrap().is_allowed());
    }
    clock.advance(Duration::from_millis(100));
    let snapshot = t.stat(&req).await.unwrap();
    let json = serde_json::to_value(&snapshot).unwrap();
    let Value::Object(fields) = &json else { panic!("a snapshot is an object: {json}") };
    let tat_us = START_US + 6 * 200_000;
    let now_us = START_US + 100_000;
    let expected = json!({
        "status": "limited",
        "throttle": "upload",
        "strategy": "tbd",
        "key": "upload:ip!192.0.2.1",
        "rate": "5/s",
        "limit": 5,
        "period_us": 1_000_000,
        "capacity": 7,
        "max_debt": 2,
        "cost": 1,
        "used": 6,
        "remaining": 1,
        "debt": 1,
        "admissible": true,
        "wait_us": 0,
        "reset_at_us": tat_us,
        "taken_at_us": now_us,
        "metadata": {
            "tat_us": tat_us,
            "level_us": tat_us - now_us,
            "capacity_us": 7 * 200_000,
            "interval_us": 200_000,
            "tokens": -0.5,
            "debt": 0.5,
            "max_debt": 2,
        },
    });
    let Value::Object(expected) = expected else { unreachable!() };
    for (name, want) in &expected {
        assert_eq!(fields.get(name), Some(want), "field `{name}` of {json}");
    }
    let extra: Vec<&String> = fields.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(extra.is_empty(), "undocumented fields {extra:?} in {json}");
    let back: Snapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, snapshot, "a snapshot reads back as it was");
}

#[tokio::test]
async fn a_request_that_is_not_limited_says_why() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.2");

    let disabled = throttle("off", "5/s", FixedWindow, &clock);
    disabled.disable();
    let unlimited = Throttle::builder()
        .uid("open")
        .rate(traffik::Rate::unlimited())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let exempt = Throttle::builder()
        .uid("staff")
        .rate("5/s")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(|_: &RequestView<'_>| Identity::Exempted)
        .clock(clock.clone())
        .build()
        .unwrap();
    let cases = [(&disabled, Skip::Disabled), (&unlimited, Skip::Unlimited), (&exempt, Skip::Exempted)];
    for (t, reason) in cases {
        let snapshot = t.stat(&req).await.unwrap();
        assert_eq!(snapshot.skip_reason(), Some(reason), "{}", t.uid());
        assert_eq!(snapshot.throttle(), t.uid());
        assert!(snapshot.limited().is_none());
    }
    let zero = t_stat_with_zero_cost(&clock, &req).await;
    assert_eq!(zero.skip_reason(), Some(Skip::ZeroCost));

    let json = serde_json::to_value(exempt.stat(&req).await.unwrap()).unwrap();
    assert_eq!(json, json!({"status": "skipped", "throttle": "staff", "reason": "exempted"}));
}

async fn t_stat_with_zero_cost(clock: &ManualClock, req: &RequestView<'_>) -> Snapshot {
    let t = throttle("free", "5/s", FixedWindow, clock);
    t.stat_with(req, &Context::new().cost(0)).await.unwrap()
}

#[tokio::test]
async fn windows_count_used_against_the_limit_and_reset_at_the_window_end() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.3");
    let fixed = throttle("fixed", "10/min", FixedWindow, &clock);
    let log = throttle("log", "10/min", SlidingWindowLog, &clock);
    for t in [&fixed, &log] {
        for _ in 0..4 {
            assert!(t.hit(&req).await.unwrap().is_allowed());
        }
        let s = stat(t, &req).await;
        assert_eq!((s.limit, s.period_us, s.capacity), (10, 60_000_000, 10), "{}", t.uid());
        assert_eq!((s.used, s.remaining, s.debt, s.max_debt), (4, 6, 0, 0), "{}", t.uid());
        assert_eq!(s.taken_at_us, START_US);
        assert!(s.reset_at_us > s.taken_at_us && s.reset_after() <= Duration::from_secs(60), "{s:?}");
    }
    // The fixed window ends on the minute (windows are aligned to the epoch).
    let s = stat(&fixed, &req).await;
    assert_eq!(s.reset_at_us % 60_000_000, 0, "{s:?}");
    assert_eq!(s.strategy, "fw");
    assert_eq!(stat(&log, &req).await.strategy, "swl");
}

#[tokio::test]
async fn a_bucket_refills_and_its_snapshot_follows() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.4");
    let t = throttle("bucket", "4/s", TokenBucket::with_burst(4), &clock);
    for _ in 0..4 {
        assert!(t.hit(&req).await.unwrap().is_allowed());
    }
    let empty = stat(&t, &req).await;
    assert_eq!((empty.capacity, empty.used, empty.remaining), (4, 4, 0));
    assert_eq!(empty.wait_us, 250_000, "one token every 250 ms");
    assert_eq!(empty.reset_at_us, START_US + 1_000_000, "full again after a second");
    clock.advance(Duration::from_millis(500));
    let half = stat(&t, &req).await;
    assert_eq!((half.used, half.remaining, half.wait_us), (2, 2, 0));
    assert_eq!(half.reset_at_us, empty.reset_at_us, "the reset time is absolute: it does not move");
}

#[tokio::test]
async fn debt_is_reported_beside_the_bucket() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.5");
    let t = throttle("debt", "5/s", TokenBucketWithDebt::new(2), &clock);
    let rested = stat(&t, &req).await;
    assert_eq!((rested.capacity, rested.max_debt, rested.remaining, rested.debt), (7, 2, 7, 0));
    for _ in 0..7 {
        assert!(t.hit(&req).await.unwrap().is_allowed());
    }
    let owing = stat(&t, &req).await;
    assert_eq!((owing.used, owing.remaining, owing.debt), (7, 0, 2), "{owing:?}");
    assert!(!t.hit(&req).await.unwrap().is_allowed(), "no more than the debt");
}

#[tokio::test]
async fn other_meters_report_their_capacity() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.6");
    let gcra = stat(&throttle("g", "10/s", Gcra::with_burst(3), &clock), &req).await;
    assert_eq!((gcra.strategy.as_str(), gcra.capacity, gcra.remaining), ("gcra", 3, 3));
    let queue = stat(&throttle("q", "10/s", LeakyBucketWithQueue::new(5), &clock), &req).await;
    assert_eq!((queue.strategy.as_str(), queue.capacity, queue.remaining), ("lbq", 10, 10));
    assert_eq!(queue.metadata["queue"], 5);
}

#[tokio::test]
async fn a_cost_that_never_fits_is_not_admissible() {
    let clock = ManualClock::new(START_US);
    let req = view("192.0.2.7");
    let t = throttle("small", "3/s", FixedWindow, &clock);
    let s = t.stat_with(&req, &Context::new().cost(4)).await.unwrap().into_limited().unwrap();
    assert!(!s.admissible);
    assert_eq!((s.cost, s.used, s.remaining, s.wait_us), (4, 0, 0, 0));
}
