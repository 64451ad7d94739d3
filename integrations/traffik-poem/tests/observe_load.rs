//! `ObserveLoad`: the responses of an endpoint drive an adaptive limit. Scripted on a manual
//! clock (the handlers move it), so no result depends on how fast the machine is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use poem::endpoint::make_sync;
use poem::http::StatusCode;
use poem::test::TestClient;
use poem::{EndpointExt, Route, get};
use traffik::sources::Adaptive;
use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, ManualClock, RequestView, Throttle, rate};
use traffik_poem::{ObserveLoad, PoemThrottle};

const SECOND: u64 = 1_000_000;

#[tokio::test]
async fn slow_failed_and_abandoned_responses_cut_the_limit_and_stat_shows_it() {
    let clock = ManualClock::new(0);
    let load = Adaptive::builder(rate!("100/min"))
        .clock(clock.clone())
        .latency_target(Duration::from_millis(100))
        .max_error_share(0.4)
        .unwrap()
        .build();
    let throttle = Throttle::builder()
        .uid("observed")
        .rate_source(load.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let slow_clock = clock.clone();
    let observe = ObserveLoad::new(load.clone());
    let guard = PoemThrottle::new(throttle.clone());
    let app = Route::new()
        .at("/ok", get(make_sync(|_| "ok")).with(observe.clone()).with(guard.clone()))
        .at(
            "/slow",
            get(make_sync(move |_| {
                slow_clock.advance(Duration::from_millis(300));
                "slow"
            }))
            .with(observe.clone())
            .with(guard.clone()),
        )
        .at("/fail", get(make_sync(|_| StatusCode::INTERNAL_SERVER_ERROR)).with(observe.clone()).with(guard.clone()))
        .at("/hang", get(poem::endpoint::make(|_| std::future::pending::<&'static str>())).with(observe).with(guard));
    let cli = TestClient::new(app);
    let limit = || load.rate().limit();

    // Fast answers: calm.
    for _ in 0..3 {
        cli.get("/ok").send().await.assert_status_is_ok();
    }
    clock.set_us(SECOND);
    assert_eq!(limit(), 100);
    // One response of the step was slower than the target (any slow one counts by default).
    cli.get("/slow").send().await.assert_status_is_ok();
    clock.set_us(2 * SECOND);
    assert_eq!(limit(), 50);
    // One of two failed: above the error share of 0.4.
    cli.get("/fail").send().await.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    cli.get("/ok").send().await.assert_status_is_ok();
    clock.set_us(3 * SECOND);
    assert_eq!(limit(), 25);
    // A request whose handling is given up (a timeout layer, a client gone) counts as failed.
    {
        let mut pending = pin!(cli.get("/hang").send());
        assert!(pending.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())).is_pending());
    }
    clock.set_us(4 * SECOND);
    assert_eq!(limit(), 12);

    // The throttle enforces the cut limit, and `stat` says why.
    let stat = throttle.stat(&RequestView::empty()).await.unwrap().into_limited().unwrap();
    assert_eq!(stat.limit, 12);
    assert_eq!(stat.metadata["source"]["factor"], serde_json::json!(0.125));
}

/// Requests the throttle refuses never reach an `ObserveLoad` inside it, so a flood of
/// instant 429s cannot make the service look fast.
#[tokio::test]
async fn refused_requests_are_not_observed_inside_the_throttle() {
    let clock = ManualClock::new(0);
    let load = Adaptive::builder(rate!("2/min"))
        .clock(clock.clone())
        .latency_target(Duration::from_millis(100))
        .max_slow_share(0.5)
        .unwrap()
        .build();
    let throttle = Throttle::builder()
        .uid("observed-refusals")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let slow_clock = clock.clone();
    let app = Route::new().at(
        "/slow",
        get(make_sync(move |_| {
            slow_clock.advance(Duration::from_millis(300));
            "slow"
        }))
        .with(ObserveLoad::new(load.clone()))
        .with(PoemThrottle::new(throttle)),
    );
    let cli = TestClient::new(app);
    cli.get("/slow").send().await.assert_status_is_ok();
    for _ in 0..10 {
        cli.get("/slow").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    }
    clock.set_us(SECOND);
    // 1 slow of 1 observed (not 1 of 11): overloaded.
    assert_eq!(load.rate().limit(), 1);
}
