//! Refunds through the public API on the in-memory backend: `Throttle::refund`,
//! `refund_cost`, `settle` and `ThrottleGroup::refund`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{START, throttle, view};
use traffik::policy::BreakerConfig;
use traffik::strategy::{Concurrency, FixedWindow, SlidingWindowCounter, SlidingWindowLog, TokenBucket};
use traffik::{
    CircuitBreaker, Context, Decision, ErrorPolicy, Failover, InMemoryBackend, ManualClock, Outcome, RequestView,
    Settlement, Source, StrategyHandle, Throttle, ThrottleGroup,
};
use traffik_property_tests::failing::Failing;

/// Unit hits the key can still take.
async fn left(t: &Throttle, req: &RequestView<'_>) -> u64 {
    t.stat(req).await.unwrap().limited().unwrap().remaining
}

#[tokio::test]
async fn a_refunded_hit_is_as_if_it_never_happened_for_the_windows_and_the_log() {
    for strategy in [
        StrategyHandle::new(FixedWindow),
        StrategyHandle::new(SlidingWindowCounter),
        StrategyHandle::new(SlidingWindowLog),
    ] {
        let clock = ManualClock::new(START);
        let t = throttle("windows", "3/min", strategy.clone(), &clock);
        let req = view([192, 0, 2, 1]);
        let first = t.hit(&req).await.unwrap();
        clock.advance(Duration::from_secs(5));
        let second = t.hit(&req).await.unwrap();
        assert!(first.is_charged() && second.is_charged());
        assert_eq!(left(&t, &req).await, 1, "{strategy:?}");
        assert!(t.refund(&first).await.unwrap(), "{strategy:?}");
        assert_eq!(left(&t, &req).await, 2, "{strategy:?}: the refunded hit no longer counts");
        // The hits left are exactly 2 more.
        for _ in 0..2 {
            assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Allowed, "{strategy:?}");
        }
        assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled, "{strategy:?}");
    }
}

#[tokio::test]
async fn a_window_that_has_passed_keeps_its_count() {
    let clock = ManualClock::new(START - START % 60_000_000);
    let t = throttle("passed", "2/min", FixedWindow, &clock);
    let req = view([192, 0, 2, 2]);
    let old = t.hit(&req).await.unwrap();
    clock.advance(Duration::from_secs(61));
    let new = t.hit(&req).await.unwrap();
    assert!(!t.refund(&old).await.unwrap(), "the window that counted it is over");
    assert_eq!(left(&t, &req).await, 1, "the current window's hit is still counted");
    assert!(t.refund(&new).await.unwrap());
    assert_eq!(left(&t, &req).await, 2);
}

#[tokio::test]
async fn nothing_is_given_back_for_what_was_not_charged() {
    let clock = ManualClock::new(START);
    let t = throttle("uncharged", "1/min", FixedWindow, &clock);
    let req = view([192, 0, 2, 3]);
    let admitted = t.hit(&req).await.unwrap();
    let refused = t.hit(&req).await.unwrap();
    assert_eq!(refused.outcome, Outcome::Throttled);
    assert!(!refused.is_charged());
    assert_eq!(refused.charged_at_us, 0);
    assert!(!t.refund(&refused).await.unwrap());
    assert_eq!(left(&t, &req).await, 0, "refunding a refusal gave nothing back");

    // Shadow mode lets a refusal through without charging it.
    let shadowed = t.hit_with(&req, &Context::new().shadow(true)).await.unwrap();
    assert!(shadowed.shadow && !shadowed.is_charged());
    assert!(!t.refund(&shadowed).await.unwrap());

    // An exempted request charges nothing.
    let exempt = Throttle::builder()
        .uid("exempt")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(|_: &RequestView<'_>| traffik::Identity::Exempted)
        .no_registry()
        .build()
        .unwrap();
    let skipped = exempt.hit(&req).await.unwrap();
    assert!(matches!(skipped.outcome, Outcome::Skipped(_)) && !skipped.is_charged());
    assert!(!exempt.refund(&skipped).await.unwrap());

    assert!(t.refund(&admitted).await.unwrap());
    assert_eq!(left(&t, &req).await, 1);
}

#[tokio::test]
async fn part_of_a_cost_comes_back() {
    let clock = ManualClock::new(START);
    let t = throttle("part", "10/min", FixedWindow, &clock);
    let req = view([192, 0, 2, 4]);
    let d = t.hit_with(&req, &Context::new().cost(6)).await.unwrap();
    assert_eq!(d.remaining, Some(4));
    assert!(t.refund_cost(&d, 2).await.unwrap());
    assert_eq!(left(&t, &req).await, 6);
    // More than the decision charged is capped at its cost.
    assert!(t.refund_cost(&d, 100).await.unwrap());
    assert_eq!(left(&t, &req).await, 10);
}

#[tokio::test]
async fn settling_refunds_down_and_charges_up_as_far_as_the_key_can_take() {
    let clock = ManualClock::new(START);
    let t = throttle("settle", "100/min", FixedWindow, &clock);
    let req = view([192, 0, 2, 5]);
    let reserve = Context::new().cost(50);

    let small = t.hit_with(&req, &reserve).await.unwrap();
    let done = t.settle(&small, 10).await.unwrap();
    assert_eq!((done.refunded, done.charged, done.uncharged), (40, 0, 0));
    assert_eq!(left(&t, &req).await, 90);

    let big = t.hit_with(&req, &reserve).await.unwrap();
    assert_eq!(left(&t, &req).await, 40);
    let done = t.settle(&big, 70).await.unwrap();
    assert_eq!((done.refunded, done.charged, done.uncharged), (0, 20, 0));
    assert_eq!(left(&t, &req).await, 20);

    let huge = t.hit_with(&req, &Context::new().cost(10)).await.unwrap();
    let done = t.settle(&huge, 45).await.unwrap();
    assert_eq!((done.refunded, done.charged, done.uncharged), (0, 10, 25), "only 10 more fitted");
    assert_eq!(left(&t, &req).await, 0);

    // Beyond the limit at once: the key still takes what it can.
    clock.advance(Duration::from_secs(60));
    let one = t.hit(&req).await.unwrap();
    let done = t.settle(&one, 500).await.unwrap();
    assert_eq!((done.charged, done.uncharged), (99, 400));
    assert_eq!(left(&t, &req).await, 0);
    assert_eq!(t.settle(&one, 1).await.unwrap(), Settlement::default(), "the charge was right");
}

#[tokio::test]
async fn a_meter_moves_back_by_the_cost_never_before_now() {
    let clock = ManualClock::new(START);
    let t = throttle("meter", "4/s", TokenBucket::new(), &clock);
    let req = view([192, 0, 2, 6]);
    let mut last = None;
    for _ in 0..4 {
        last = Some(t.hit(&req).await.unwrap());
    }
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled);
    assert!(t.refund(&last.unwrap()).await.unwrap());
    assert_eq!(left(&t, &req).await, 1, "one token is back");
    // Once the bucket has refilled, there is nothing left to give back.
    let d = t.hit(&req).await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(!t.refund(&d).await.unwrap());
    assert_eq!(left(&t, &req).await, 4, "never more than a full bucket");
}

#[tokio::test]
async fn refunding_a_concurrency_admission_frees_its_slot() {
    let clock = ManualClock::new(START);
    let t = throttle("slots", "1/30s", Concurrency, &clock);
    let req = view([192, 0, 2, 7]);
    let d = t.hit(&req).await.unwrap();
    assert_ne!(d.charged_at_us, 0, "named by its lease");
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled);
    assert!(t.refund(&d).await.unwrap());
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Allowed);
}

#[tokio::test]
async fn a_group_refund_gives_every_member_back_its_cost() {
    let clock = ManualClock::new(START);
    let backend = InMemoryBackend::new();
    let member = |uid: &str, rate: &str, strategy: StrategyHandle| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(backend.clone())
            .strategy(strategy)
            .clock(clock.clone())
            .no_registry()
            .build()
            .unwrap()
    };
    let burst = member("burst", "3/s", StrategyHandle::new(TokenBucket::new()));
    let sustained = member("sustained", "5/min", StrategyHandle::new(FixedWindow));
    let group = ThrottleGroup::new("api", [burst, sustained]).unwrap();
    let req = view([192, 0, 2, 8]);
    let before: Vec<Decision> = group.check(&req).await.unwrap().members;
    let d = group.hit(&req).await.unwrap();
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(group.refund(&d).await.unwrap(), 2);
    let after: Vec<Decision> = group.check(&req).await.unwrap().members;
    let remaining = |ds: &[Decision]| ds.iter().map(|d| d.remaining).collect::<Vec<_>>();
    assert_eq!(remaining(&after), remaining(&before), "both members are back where they were");

    // A refused group hit charged nothing: nothing to give back.
    for _ in 0..3 {
        let _ = group.hit(&req).await.unwrap();
    }
    let refused = group.hit(&req).await.unwrap();
    assert_eq!(refused.outcome, Outcome::Throttled);
    let held = remaining(&group.check(&req).await.unwrap().members);
    assert_eq!(group.refund(&refused).await.unwrap(), 0);
    assert_eq!(remaining(&group.check(&req).await.unwrap().members), held);

    // Another group's decision is not ours to refund.
    let other = ThrottleGroup::new("other", [throttle("solo", "3/min", FixedWindow, &clock)]).unwrap();
    let theirs = other.hit(&req).await.unwrap();
    assert_eq!(group.refund(&theirs).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_decision_is_refunded_on_the_fallback() {
    let clock = ManualClock::new(START);
    let fallback = InMemoryBackend::new();
    let breaker = CircuitBreaker::with_clock(BreakerConfig::builder().build(), Arc::new(clock.clone()));
    let primary = Arc::new(Failing::first(u32::MAX));
    let t = Throttle::builder()
        .uid("fallback")
        .rate("2/min")
        .shared_backend(primary)
        .strategy(FixedWindow)
        .clock(clock.clone())
        .on_error(ErrorPolicy::failover(Failover::new(fallback.clone(), breaker).max_retries(0)))
        .no_registry()
        .build()
        .unwrap();
    let req = view([192, 0, 2, 9]);
    let d = t.hit(&req).await.unwrap();
    assert_eq!(d.source, Source::Fallback);
    let again = t.hit(&req).await.unwrap();
    assert_eq!((again.source, again.remaining), (Source::Fallback, Some(0)));
    assert!(t.refund(&d).await.unwrap(), "given back where it was charged");
    let third = t.hit(&req).await.unwrap();
    assert_eq!((third.source, third.outcome, third.remaining), (Source::Fallback, Outcome::Allowed, Some(0)));
}
