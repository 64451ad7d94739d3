//! A flood of new identities at the in-memory backend's key cap never hands a limited client
//! fresh quota, on any strategy, and never grows the backend beyond its cap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use traffik::strategy::{
    FixedWindow, Gcra, LeakyBucket, LeakyBucketWithQueue, SlidingWindowCounter, SlidingWindowLog, TokenBucket,
    TokenBucketWithDebt,
};
use traffik::{InMemoryBackend, ManualClock, Outcome, RequestView, StrategyHandle, Throttle, rate};

/// Every strategy with the most it may admit at one instant under `20/day` (its full quota,
/// plus the queue of the shaping one).
fn strategies() -> Vec<(&'static str, StrategyHandle, u64)> {
    vec![
        ("fixed_window", FixedWindow.into(), 20),
        ("sliding_window_counter", SlidingWindowCounter.into(), 20),
        ("sliding_window_log", SlidingWindowLog.into(), 20),
        ("token_bucket", TokenBucket::new().into(), 20),
        ("token_bucket_with_debt", TokenBucketWithDebt::new(5).into(), 25),
        ("leaky_bucket", LeakyBucket.into(), 20),
        ("leaky_bucket_with_queue", LeakyBucketWithQueue::new(5).into(), 25),
        ("gcra", Gcra::with_tolerance(Duration::from_secs(3000)).into(), 1),
    ]
}

fn peer(ip: IpAddr) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::new(ip, 40_000)))
}

/// The n-th flooding identity: a new IPv4 address, or a new IPv6 /64.
fn flooder(n: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, (n >> 16) as u16, n as u16, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }
}

/// The measured defect: a client limited to 1,000 a day got over 8 million hits in 3 s while a
/// flood of new addresses at the cap kept evicting its key. Here: a client at `20/day`, and a
/// flood of 40 new identities between each of its hits, 1,000 times, on a backend capped at 256
/// keys, with the clock moving a second per round (so no window of a day ends).
#[tokio::test]
async fn a_limited_client_gets_no_more_than_its_quota_under_a_flood_at_the_cap() {
    for v6 in [false, true] {
        for (name, strategy, most) in strategies() {
            let clock = ManualClock::new(1_700_000_000_000_000);
            let backend = InMemoryBackend::builder().shards(4).max_keys(256).build();
            let client = Throttle::builder()
                .uid("client")
                .rate(rate!("20/day"))
                .backend(backend.clone())
                .strategy(strategy.clone())
                .clock(clock.clone())
                .build()
                .unwrap();
            let flood = Throttle::builder()
                .uid("flood")
                .rate(rate!("5/day"))
                .backend(backend.clone())
                .strategy(FixedWindow)
                .clock(clock.clone())
                .build()
                .unwrap();
            let me = peer(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
            let mut admitted = 0u64;
            let mut n = 0u32;
            for _ in 0..1_000 {
                let d = client.hit(&me).await.unwrap();
                if matches!(d.outcome, Outcome::Allowed | Outcome::Delayed) {
                    admitted += 1;
                }
                for _ in 0..40 {
                    n += 1;
                    let _ = flood.hit(&peer(flooder(n, v6))).await.unwrap();
                }
                assert!(backend.len() <= 256, "{name}: {} keys stored", backend.len());
                clock.advance(Duration::from_secs(1));
            }
            assert_eq!(admitted, most, "{name} (IPv6 {v6}): admitted {admitted}, its quota is {most}");
            assert!(backend.refusals() > 0, "{name}: the flood reached the cap");
        }
    }
}

/// A new key refused at the cap costs one backend decision, on the shortcut path too (the
/// refusal used to send the hit down the general path, which asked the backend again).
#[tokio::test]
async fn a_refused_new_key_is_one_backend_decision() {
    let backend = InMemoryBackend::builder().shards(1).max_keys(1).build();
    let t = Throttle::builder()
        .uid("one")
        .rate(rate!("5/day"))
        .backend(backend.clone())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    assert!(t.hit(&peer(flooder(1, false))).await.unwrap().is_allowed());
    let d = t.hit(&peer(flooder(2, false))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Throttled, "refused under the default policy: {d:?}");
    assert_eq!(backend.refusals(), 1);
}
