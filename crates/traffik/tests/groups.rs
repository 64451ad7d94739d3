//! Stacked limits as one decision: a `ThrottleGroup` on the in-memory backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{throttle_on, view};
use traffik::strategy::{FixedWindow, Gcra, SlidingWindowLog, TokenBucket};
use traffik::{Identity, InMemoryBackend, ManualClock, Outcome, RequestView, Throttle, ThrottleGroup};

/// The observed defect: `10/min` stacked over `3/min` was charged for the hits `3/min` refused
/// (10/min had 4 left after 3 admitted and 3 denied). As a group, it has 7 left.
#[tokio::test]
async fn a_refusing_member_leaves_the_others_uncharged() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let outer = throttle_on("outer", "10/min", FixedWindow, backend.clone(), &clock);
    let inner = throttle_on("inner", "3/min", FixedWindow, backend.clone(), &clock);
    let group = ThrottleGroup::new("data", [outer, inner]).unwrap();
    let req = view([192, 0, 2, 1]);
    let outcomes: Vec<Outcome> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(group.hit(&req).await.unwrap().outcome);
        }
        v
    };
    assert_eq!(outcomes[..3], [Outcome::Allowed; 3]);
    assert_eq!(outcomes[3..], [Outcome::Throttled; 3]);
    let stats = group.stat(&req).await.unwrap();
    let left: Vec<u64> = stats.iter().map(|s| s.limited().unwrap().remaining).collect();
    assert_eq!(left, [7, 0], "the outer limit was charged only for the 3 admitted hits");
}

#[tokio::test]
async fn the_decision_names_the_binding_member_and_waits_for_all() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let burst = throttle_on("burst", "2/s", TokenBucket::new(), backend.clone(), &clock);
    let sustained = throttle_on("sustained", "3/min", FixedWindow, backend.clone(), &clock);
    let group = ThrottleGroup::new("api", [burst, sustained]).unwrap();
    let req = view([192, 0, 2, 2]);
    let first = group.hit(&req).await.unwrap();
    assert!(first.is_allowed());
    assert_eq!(first.binding_member().map(Throttle::uid), Some("burst"), "fewest left: {first:?}");
    assert!(group.hit(&req).await.unwrap().is_allowed());
    // The burst is empty: it binds, with its own wait.
    let d = group.hit(&req).await.unwrap();
    assert_eq!((d.outcome, d.binding_member().map(Throttle::uid)), (Outcome::Throttled, Some("burst")));
    assert_eq!(d.wait, Duration::from_millis(500));
    assert_eq!(d.members[1].outcome, Outcome::Allowed, "the sustained limit would have admitted it");
    clock.advance(d.wait);
    assert!(group.hit(&req).await.unwrap().is_allowed());
    // Now the sustained limit is spent: it binds, with the longer wait, and a retry after that
    // wait passes both members.
    clock.advance(Duration::from_secs(1));
    let d = group.hit(&req).await.unwrap();
    assert_eq!((d.outcome, d.binding_member().map(Throttle::uid)), (Outcome::Throttled, Some("sustained")));
    assert_eq!(d.retry_after_secs(), Some(d.wait.as_micros().div_ceil(1_000_000) as u64));
    clock.advance(d.wait);
    assert!(group.hit(&req).await.unwrap().is_allowed());
}

#[tokio::test]
async fn members_may_differ_in_identity_strategy_rate_and_cost() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let per_user = throttle_on("per-user", "3/min", SlidingWindowLog, backend.clone(), &clock);
    let per_tenant = Throttle::builder()
        .uid("per-tenant")
        .rate("5/min")
        .backend(backend.clone())
        .strategy(Gcra::with_tolerance(Duration::from_secs(60)))
        .identifier(|_: &RequestView<'_>| Identity::named("tenant-a"))
        .cost(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    let group = ThrottleGroup::new("tenancy", [per_user, per_tenant]).unwrap();
    let mut admitted = Vec::new();
    for user in 1..=4u8 {
        let mut n = 0;
        for _ in 0..4 {
            n += u32::from(group.hit(&view([192, 0, 2, user])).await.unwrap().is_allowed());
        }
        admitted.push(n);
    }
    // Each user gets at most 3; the tenant's GCRA (one per 12 s, 60 s of tolerance) lets 6 in.
    assert_eq!(admitted, [3, 3, 0, 0]);
}

#[tokio::test]
async fn skipped_members_do_not_limit_and_check_consumes_nothing() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let a = throttle_on("a", "1/min", FixedWindow, backend.clone(), &clock);
    let b = throttle_on("b", "5/min", FixedWindow, backend.clone(), &clock);
    b.disable();
    let group = ThrottleGroup::new("g", [a, b]).unwrap();
    let req = view([192, 0, 2, 9]);
    let peek = group.check(&req).await.unwrap();
    assert!(peek.is_allowed());
    assert!(group.check(&req).await.unwrap().is_allowed(), "a check consumed quota");
    let d = group.hit(&req).await.unwrap();
    assert_eq!(d.members[1].outcome, Outcome::Skipped(traffik::Skip::Disabled));
    assert_eq!(d.binding, Some(0));
    assert!(group.hit(&req).await.unwrap().is_throttled());
    group.members()[0].disable();
    let d = group.hit(&req).await.unwrap();
    assert!(d.is_allowed() && d.binding.is_none(), "{d:?}");
}

#[tokio::test]
async fn a_group_refused_at_the_key_cap_consumes_nothing() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    // One shard holding two keys: the first member's key fits, the second's does not.
    let backend = InMemoryBackend::builder().shards(1).max_keys(2).build();
    let filler = throttle_on("filler", "5/min", FixedWindow, backend.clone(), &clock);
    assert!(filler.hit(&view([10, 0, 0, 1])).await.unwrap().is_allowed());
    let a = throttle_on("a", "5/min", FixedWindow, backend.clone(), &clock);
    let b = throttle_on("b", "5/min", FixedWindow, backend.clone(), &clock);
    let group = ThrottleGroup::new("g", [a, b]).unwrap();
    let req = view([192, 0, 2, 10]);
    let d = group.hit(&req).await.unwrap();
    assert_eq!(d.outcome, Outcome::Throttled, "refused under the default error policy: {d:?}");
    assert_eq!(backend.len(), 1, "neither member's key was written");
}

#[test]
fn sixty_four_tasks_in_two_overlapping_groups_admit_exactly_and_never_deadlock() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::builder().shards(4).build();
    let a = throttle_on("a", "100/min", FixedWindow, backend.clone(), &clock);
    let b = throttle_on("b", "60/min", TokenBucket::new(), backend.clone(), &clock);
    // The same members in both orders: a circle of lock waits would hang this test.
    let ab = ThrottleGroup::new("ab", [a.clone(), b.clone()]).unwrap();
    let ba = ThrottleGroup::new("ab", [b, a]).unwrap();
    let admitted: u64 = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64u8 {
            let group = if t % 2 == 0 { ab.clone() } else { ba.clone() };
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                for _ in 0..4 {
                    n += u64::from(group.hit(&view([192, 0, 2, 1])).await.unwrap().is_allowed());
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    assert_eq!(admitted, 60, "the tighter member's capacity");
    let stats = rt.block_on(ab.stat(&view([192, 0, 2, 1]))).unwrap();
    assert_eq!(stats[0].limited().unwrap().remaining, 40, "the looser member was charged 60 times, no more");
    assert_eq!(stats[1].limited().unwrap().remaining, 0);
}

/// A plain group hit reads its members' configurations from a per-thread copy: a member whose
/// rate changes is decided at the new rate on the very next hit, on this thread and others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rate_change_applies_to_the_next_group_hit() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let a = throttle_on("a", "2/min", FixedWindow, backend.clone(), &clock);
    let b = throttle_on("b", "100/min", FixedWindow, backend.clone(), &clock);
    let group = ThrottleGroup::new("g", [a, b]).unwrap();
    let req = view([192, 0, 2, 10]);
    assert!(group.hit(&req).await.unwrap().is_allowed());
    assert!(group.hit(&req).await.unwrap().is_allowed());
    assert!(group.hit(&req).await.unwrap().is_throttled(), "2/min admitted a third hit");
    group.members()[0].update_rate("4/min".parse().unwrap());
    let d = group.hit(&req).await.unwrap();
    assert!(d.is_allowed(), "the new rate was not seen: {d:?}");
    assert_eq!(d.members[0].rate.map(|r| r.limit()), Some(4));
    let other = group.clone();
    let d = tokio::spawn(async move { other.hit(&view([192, 0, 2, 10])).await.unwrap() }).await.unwrap();
    assert!(d.is_allowed() && d.members[0].rate.map(|r| r.limit()) == Some(4), "{d:?}");
    assert!(group.hit(&req).await.unwrap().is_throttled(), "4/min admitted a fifth hit");
}

/// Members that identify clients differently get keys of their own identity, and members that
/// identify alike get the same identity part, on the shortcut as on the general path (`stat`).
#[tokio::test]
async fn members_key_their_own_identity() {
    use traffik::{ClientIp, TrustedProxies};
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let member = |uid: &str, identifier: ClientIp| {
        Throttle::builder()
            .uid(uid)
            .rate("10/min")
            .backend(backend.clone())
            .strategy(FixedWindow)
            .identifier(identifier)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let behind_proxy = || ClientIp::new().trusted_proxies(TrustedProxies::new(["10.0.0.0/8"]).unwrap());
    let group = ThrottleGroup::new(
        "ids",
        [member("peer", ClientIp::new()), member("client", behind_proxy()), member("client2", behind_proxy())],
    )
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-forwarded-for", http::HeaderValue::from_static("198.51.100.20"));
    let (method, uri) = (http::Method::GET, http::Uri::from_static("/"));
    let req = RequestView::new(&method, &uri, &headers).peer(Some(SocketAddr::from(([10, 0, 0, 1], 4000))));
    let d = group.hit(&req).await.unwrap();
    let keys: Vec<String> = d.members.iter().map(|m| m.key.as_ref().unwrap().as_str().to_owned()).collect();
    assert!(keys[0].ends_with("10.0.0.1"), "{keys:?}");
    assert!(keys[1].ends_with("198.51.100.20") && keys[2].ends_with("198.51.100.20"), "{keys:?}");
    let stats = group.stat(&req).await.unwrap();
    let stat_keys: Vec<String> = stats.iter().map(|s| s.limited().unwrap().key.as_str().to_owned()).collect();
    assert_eq!(keys, stat_keys, "the shortcut and the general path key members alike");
}

/// For a group, the draft-10 fields carry every member as one RFC 8941 List.
#[tokio::test]
async fn the_draft_fields_list_every_member() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let backend = InMemoryBackend::new();
    let group = ThrottleGroup::new(
        "api",
        [
            throttle_on("burst", "3/s", FixedWindow, backend.clone(), &clock),
            throttle_on("sustained", "100/h", FixedWindow, backend.clone(), &clock),
        ],
    )
    .unwrap();
    let req = view([192, 0, 2, 11]);
    let d = group.hit(&req).await.unwrap();
    let h = d.ietf_draft10();
    assert_eq!(h["ratelimit-policy"], r#""burst";q=3;w=1, "sustained";q=100;w=3600"#);
    // 1,700,000,000 s is 1,700,000,000 mod 3600 = 800 s into its hour: the window resets in 2800 s.
    assert_eq!(h["ratelimit"], r#""burst";r=2;t=1, "sustained";r=99;t=2800"#);
    for _ in 0..2 {
        let _ = group.hit(&req).await.unwrap();
    }
    let refused = group.hit(&req).await.unwrap();
    assert!(refused.is_throttled());
    // The refusal charged nobody: 97 left of the hour, not the 96 an admission would leave.
    assert_eq!(refused.ietf_draft10()["ratelimit"], r#""burst";r=0;t=1, "sustained";r=97;t=2800"#);
}

/// A group decides on its first member's backend, whatever the others were built with: its
/// refund gives every member's cost back there (it looked for the second member's state on
/// that member's own backend, found none, and left its charge).
#[tokio::test]
async fn a_refund_gives_back_every_member_on_the_backend_the_group_decided_on() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let minute = throttle_on("refund-minute", "3/min", FixedWindow, InMemoryBackend::new(), &clock);
    let hour = throttle_on("refund-hour", "10/h", FixedWindow, InMemoryBackend::new(), &clock);
    let group = ThrottleGroup::new("refund", [minute, hour]).unwrap();
    let client = view([192, 0, 2, 30]);
    let decided = group.hit(&client).await.unwrap();
    assert_eq!(group.refund(&decided).await.unwrap(), 2);
    let left: Vec<_> =
        group.stat(&client).await.unwrap().into_iter().map(|s| s.into_limited().map(|s| s.remaining)).collect();
    assert_eq!(left, [Some(3), Some(10)]);
    // A refused hit charged nothing: nothing to give back.
    for _ in 0..3 {
        let _ = group.hit(&client).await.unwrap();
    }
    let refused = group.hit(&client).await.unwrap();
    assert!(refused.is_refused());
    assert_eq!(group.refund(&refused).await.unwrap(), 0);
}
