//! Shadow mode: a throttle (or group) decides and stores as usual, but what it refuses or
//! delays is let through, marked, counted and logged. In memory, on a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{throttle, view};
use traffik::strategy::{FixedWindow, LeakyBucketWithQueue, TokenBucket};
use traffik::{
    Context, ErrorPolicy, Identity, InMemoryBackend, ManualClock, Outcome, RequestView, Source, StrategyHandle,
    Throttle, ThrottleGroup, rate,
};
use traffik_property_tests::failing::Failing;

/// At a minute boundary, so fixed windows of a minute start now.
fn clock() -> ManualClock {
    ManualClock::new(1_699_999_980_000_000)
}

#[tokio::test]
async fn a_throttle_in_shadow_mode_decides_as_usual_and_refuses_nothing() {
    let clock = clock();
    let t = Throttle::builder()
        .uid("shadowed")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .shadow(true)
        .build()
        .unwrap();
    assert!(t.is_shadow());
    let req = view([192, 0, 2, 1]);
    for left in [1, 0] {
        let d = t.hit(&req).await.unwrap();
        assert_eq!(
            (d.outcome, d.remaining, d.shadow),
            (Outcome::Allowed, Some(left), false),
            "admitted hits are plain"
        );
    }
    for _ in 0..3 {
        let d = t.hit(&req).await.unwrap();
        assert_eq!(d.outcome, Outcome::Throttled, "the decision says what the strategy decided");
        assert!(d.shadow && d.is_throttled() && !d.is_refused(), "{d:?}");
        assert_eq!(d.retry_after_secs(), Some(60), "the wait a client would have been told");
        assert_eq!(d.remaining, Some(0));
    }
    assert_eq!(t.shadow_refusals(), 3);
    // Refused hits consumed nothing: the next window admits the full limit again, exactly as
    // an enforcing throttle would.
    clock.advance(Duration::from_secs(60));
    assert_eq!(t.hit(&req).await.unwrap().remaining, Some(1));
    // A check is marked but not counted.
    assert!(t.hit(&req).await.unwrap().is_allowed());
    let peek = t.check(&req).await.unwrap();
    assert!(peek.shadow && peek.is_throttled());
    assert_eq!(t.shadow_refusals(), 3);
}

#[tokio::test]
async fn shadow_mode_switches_at_run_time() {
    let clock = clock();
    let t = throttle("switch", "1/min", FixedWindow, &clock);
    let req = view([192, 0, 2, 2]);
    assert!(t.hit(&req).await.unwrap().is_allowed());
    let enforced = t.hit(&req).await.unwrap();
    assert!(enforced.is_refused() && !enforced.shadow);
    t.set_shadow(true);
    assert!(t.is_shadow());
    let shadowed = t.hit(&req).await.unwrap();
    assert!(shadowed.shadow && !shadowed.is_refused());
    assert_eq!((shadowed.outcome, shadowed.wait), (enforced.outcome, enforced.wait), "the same decision");
    t.set_shadow(false);
    assert!(t.hit(&req).await.unwrap().is_refused());
    assert_eq!(t.shadow_refusals(), 1, "only the hit in shadow mode");
}

#[tokio::test]
async fn the_general_path_and_a_per_hit_context_shadow_alike() {
    let clock = clock();
    // A custom identifier takes the general path rather than the common configuration's.
    let t = Throttle::builder()
        .uid("general")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .identifier(|_: &RequestView<'_>| Identity::Named("everyone".into()))
        .shadow(true)
        .build()
        .unwrap();
    let req = view([192, 0, 2, 3]);
    assert!(t.hit(&req).await.unwrap().is_allowed());
    assert!(t.hit(&req).await.unwrap().shadow);
    assert_eq!(t.shadow_refusals(), 1);

    // An enforcing throttle, shadowed for one hit through its context.
    let e = throttle("per-hit", "1/min", FixedWindow, &clock);
    assert!(e.hit(&req).await.unwrap().is_allowed());
    let d = e.hit_with(&req, &Context::new().shadow(true)).await.unwrap();
    assert!(d.shadow && !d.is_refused());
    assert!(e.hit_with(&req, &Context::new()).await.unwrap().is_refused(), "only that hit");
    assert!(e.hit(&req).await.unwrap().is_refused());
    assert_eq!(e.shadow_refusals(), 1);
    assert!(!e.is_shadow());
}

#[tokio::test]
async fn a_cost_that_never_fits_is_let_through_and_counted() {
    let t = throttle("never", "5/min", FixedWindow, &clock());
    t.set_shadow(true);
    let d = t.hit_with(&view([192, 0, 2, 4]), &Context::new().cost(9)).await.unwrap();
    assert_eq!(d.outcome, Outcome::Never);
    assert!(d.shadow && !d.is_refused() && d.retry_after_secs().is_none());
    assert_eq!(t.shadow_refusals(), 1);
}

#[tokio::test]
async fn a_delay_is_not_held_in_shadow_mode_but_its_slot_is_taken() {
    let clock = clock();
    let shape = |uid: &str| throttle(uid, "2/s", LeakyBucketWithQueue::new(1), &clock);
    let (enforcing, shadowed) = (shape("enforcing"), shape("shadowed"));
    shadowed.set_shadow(true);
    let req = view([192, 0, 2, 5]);
    for t in [&enforcing, &shadowed] {
        for _ in 0..2 {
            assert_eq!(t.hit(&req).await.unwrap().hold(), Duration::ZERO);
        }
    }
    let held = enforcing.hit(&req).await.unwrap();
    assert_eq!((held.outcome, held.hold(), held.shadow), (Outcome::Delayed, Duration::from_millis(500), false));
    let not_held = shadowed.hit(&req).await.unwrap();
    assert_eq!((not_held.outcome, not_held.wait), (Outcome::Delayed, Duration::from_millis(500)));
    assert!(not_held.shadow && not_held.hold().is_zero());
    assert_eq!(shadowed.shadow_refusals(), 0, "a delay is not a refusal");
    // The queue slot was taken in both: the next hit is refused by both.
    assert!(enforcing.hit(&req).await.unwrap().is_refused());
    let over = shadowed.hit(&req).await.unwrap();
    assert!(over.is_throttled() && !over.is_refused());
    assert_eq!(shadowed.shadow_refusals(), 1);
}

#[tokio::test]
async fn a_failure_the_error_policy_throttles_is_let_through_one_it_raises_is_not() {
    let build = |uid: &str, policy: ErrorPolicy| {
        Throttle::builder()
            .uid(uid)
            .rate(rate!("5/min"))
            .backend(Failing::down())
            .strategy(FixedWindow)
            .on_error(policy)
            .shadow(true)
            .build()
            .unwrap()
    };
    let closed = build("closed", ErrorPolicy::throttle());
    let d = closed.hit(&view([192, 0, 2, 6])).await.unwrap();
    assert_eq!((d.outcome, d.source), (Outcome::Throttled, Source::ErrorPolicy));
    assert!(d.shadow && !d.is_refused());
    let raised = build("raised", ErrorPolicy::raise());
    assert!(raised.hit(&view([192, 0, 2, 6])).await.is_err(), "errors are not decisions");
}

#[tokio::test]
async fn a_group_in_shadow_mode_decides_as_one_and_refuses_nothing() {
    let clock = clock();
    let backend = InMemoryBackend::new();
    let member = |uid: &str, rate: &str, strategy: StrategyHandle| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(backend.clone())
            .strategy(strategy)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let burst = member("burst", "2/s", TokenBucket::new().into());
    let sustained = member("sustained", "10/min", FixedWindow.into());
    let group = ThrottleGroup::new("api", [burst.clone(), sustained.clone()]).unwrap();
    let req = view([192, 0, 2, 7]);
    for _ in 0..2 {
        assert!(group.hit(&req).await.unwrap().is_allowed());
    }
    let enforced = group.hit(&req).await.unwrap();
    assert!(enforced.is_refused() && !enforced.shadow);
    // A member's own shadow mode does not apply inside the group.
    burst.set_shadow(true);
    assert!(group.hit(&req).await.unwrap().is_refused());
    assert_eq!(burst.shadow_refusals(), 0);

    group.set_shadow(true);
    assert!(group.is_shadow());
    let d = group.hit(&req).await.unwrap();
    assert_eq!((d.outcome, d.wait), (enforced.outcome, enforced.wait), "the same decision");
    assert!(d.shadow && d.is_throttled() && !d.is_refused() && d.hold().is_zero());
    let binding = d.binding_decision().unwrap();
    assert!(binding.shadow && binding.outcome == Outcome::Throttled);
    assert!(!d.members[1].shadow, "the member that admitted is not marked");
    assert_eq!(group.shadow_refusals(), 1);
    // As a group refusal, it charged nobody: the sustained limit has 8 left.
    let stats = group.stat(&req).await.unwrap();
    assert_eq!(stats[1].limited().unwrap().remaining, 8);
    // Back to enforcing; or shadowed for one hit through the context.
    group.set_shadow(false);
    assert!(group.hit(&req).await.unwrap().is_refused());
    assert!(group.hit_with(&req, &Context::new().shadow(true)).await.unwrap().shadow);
    assert_eq!(group.shadow_refusals(), 2);
}
