//! The adaptive limit: an AIMD controller driven by scripted signals on a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use traffik::sources::{Adaptive, Load};
use traffik::strategy::FixedWindow;
use traffik::{ConfigError, Error, InMemoryBackend, ManualClock, Rate, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory hit waited"),
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn adaptive(clock: &ManualClock) -> Adaptive {
    Adaptive::builder(rate!("100/min"))
        .decrease(0.5)
        .unwrap()
        .increase(0.1)
        .unwrap()
        .floor(0.2)
        .unwrap()
        .clock(clock.clone())
        .build()
}

fn limit(a: &Adaptive) -> u64 {
    a.rate().limit()
}

#[test]
fn overload_cuts_calm_recovers_within_floor_and_base() {
    let clock = ManualClock::new(1_000_000);
    let a = adaptive(&clock);
    assert_eq!(limit(&a), 100);
    // A signal counts at the end of its step, once however often it is repeated.
    for _ in 0..5 {
        a.signal(Load::Overloaded);
    }
    assert_eq!(limit(&a), 100, "not before the step ends");
    let mut seen = Vec::new();
    for overloaded in [true, true, true, false, false, false, false, false, false, false, false, false] {
        clock.advance(SECOND);
        seen.push(limit(&a));
        if overloaded {
            a.signal(Load::Overloaded);
        }
    }
    // 1 -> 0.5 -> 0.25 -> 0.2 (the floor) -> 0.2 -> then +0.1 a step up to 1, never above.
    assert_eq!(seen, [50, 25, 20, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    clock.advance(SECOND);
    assert_eq!(limit(&a), 100, "never above the base");
    assert_eq!(a.rate().period(), Duration::from_secs(60), "the base rate's period");
}

#[test]
fn latency_and_gauge_are_signals() {
    let clock = ManualClock::new(0);
    let a = adaptive(&clock);
    a.observe_latency(Duration::from_millis(80), Duration::from_millis(100));
    clock.advance(SECOND);
    assert_eq!(limit(&a), 100, "fast enough");
    a.observe_latency(Duration::from_millis(120), Duration::from_millis(100));
    clock.advance(SECOND);
    assert_eq!(limit(&a), 50, "too slow");

    let busy = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicUsize::new(0));
    let (b, r) = (busy.clone(), reads.clone());
    let g = Adaptive::builder(rate!("10/s"))
        .clock(clock.clone())
        .gauge(move || {
            r.fetch_add(1, Ordering::Relaxed);
            if b.load(Ordering::Relaxed) { Load::Overloaded } else { Load::Normal }
        })
        .build();
    for _ in 0..50 {
        assert_eq!(limit(&g), 10, "the gauge is read at the end of a step, not per query");
    }
    assert_eq!(reads.load(Ordering::Relaxed), 0);
    clock.advance(SECOND);
    assert_eq!(limit(&g), 5);
    assert_eq!(reads.load(Ordering::Relaxed), 1);
    busy.store(false, Ordering::Relaxed);
    clock.advance(SECOND);
    assert_eq!(limit(&g), 5, "0.5 + 0.05 of 10 rounds down to 5");
}

/// The original counted a client's own requests as load and cut a fresh window to 80, then
/// 32 of 100. Here hits are not signals: a busy client meets the full base limit.
#[test]
fn a_clients_own_traffic_is_not_load() {
    let clock = ManualClock::new(0);
    let a = adaptive(&clock);
    let throttle = Throttle::builder()
        .uid("adaptive-own")
        .rate_source(a.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let view = RequestView::empty();
    let admitted = (0..150).filter(|_| now_or_never(throttle.hit(&view)).unwrap().is_allowed()).count();
    assert_eq!(admitted, 100);
    assert_eq!(a.factor(), 1.0);
}

/// When the limit moves within a fixed window, the window's usage carries over.
#[test]
fn a_cut_keeps_the_windows_usage() {
    let clock = ManualClock::new(0);
    let a = Adaptive::builder(rate!("10/min")).clock(clock.clone()).build();
    let throttle = Throttle::builder()
        .uid("adaptive-window")
        .rate_source(a.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let view = RequestView::empty();
    let admitted = || (0..20).take_while(|_| now_or_never(throttle.hit(&view)).unwrap().is_allowed()).count();
    assert_eq!(admitted(), 10);
    a.signal(Load::Overloaded);
    clock.advance(SECOND);
    assert_eq!(a.rate(), rate!("5/min"));
    assert_eq!(admitted(), 0, "10 used this minute, over the new 5");
    clock.advance(Duration::from_secs(60));
    assert!(admitted() >= 5, "a fresh minute under the recovering limit");
}

#[test]
fn steps_missed_without_traffic_count_as_calm() {
    let clock = ManualClock::new(0);
    let a = adaptive(&clock);
    a.signal(Load::Overloaded);
    clock.advance(SECOND);
    assert_eq!(limit(&a), 50);
    clock.advance(Duration::from_secs(3));
    assert_eq!(limit(&a), 80, "three calm steps passed unobserved");
}

#[test]
fn bad_parameters_are_typed_errors() {
    let base = || Adaptive::builder(Rate::per_millis(10, 1000).unwrap());
    for v in [f64::NAN, f64::INFINITY, -0.5, 0.0, 1.0, 1.5] {
        assert!(
            matches!(
                base().decrease(v),
                Err(Error::Config(ConfigError::OutOfRange { parameter: "adaptive decrease", .. }))
            ),
            "decrease {v}"
        );
    }
    for v in [f64::NAN, -0.1, 0.0, 1.01] {
        assert!(
            matches!(base().floor(v), Err(Error::Config(ConfigError::OutOfRange { parameter: "adaptive floor", .. }))),
            "floor {v}"
        );
    }
    for v in [f64::NAN, -0.1, 2.0] {
        assert!(
            matches!(
                base().increase(v),
                Err(Error::Config(ConfigError::OutOfRange { parameter: "adaptive increase", .. }))
            ),
            "increase {v}"
        );
    }
    assert!(base().floor(1.0).is_ok() && base().increase(0.0).is_ok());
}

fn observed(clock: &ManualClock) -> Adaptive {
    Adaptive::builder(rate!("100/min"))
        .clock(clock.clone())
        .latency_target(Duration::from_millis(100))
        .max_slow_share(0.25)
        .unwrap()
        .max_error_share(0.5)
        .unwrap()
        .build()
}

/// Scripted responses: a step is judged by the share of slow responses (latency measured on
/// the limit's clock) against `max_slow_share`.
#[test]
fn observed_latency_cuts_when_too_many_responses_are_slow() {
    let clock = ManualClock::new(0);
    let a = observed(&clock);
    let respond = |millis: u64, status: u16| {
        let seen = a.begin();
        clock.advance(Duration::from_millis(millis));
        seen.finish(status);
    };
    // 1 slow of 4 is 25%: not more than the share allowed.
    for millis in [10, 20, 30, 300] {
        respond(millis, 200);
    }
    clock.set_us(1_000_000);
    assert_eq!(limit(&a), 100, "1 of 4 slow is within the share");
    // 2 slow of 4: overloaded.
    for millis in [10, 20, 150, 300] {
        respond(millis, 200);
    }
    clock.set_us(2_000_000);
    assert_eq!(limit(&a), 50, "2 of 4 slow cut the limit");
    // A step with no response at all is calm.
    clock.set_us(3_000_000);
    assert_eq!(limit(&a), 55);
}

/// Failed responses (5xx, or an observation dropped unfinished: a timeout or a cancelled
/// handler) are judged against `max_error_share`.
#[test]
fn observed_failures_and_abandoned_handlers_cut_past_the_error_share() {
    let clock = ManualClock::new(0);
    let a = observed(&clock);
    a.begin().finish(200);
    a.begin().finish(503);
    clock.set_us(1_000_000);
    assert_eq!(limit(&a), 100, "1 of 2 failed is within the share of 0.5");
    a.begin().finish(200);
    a.begin().finish(500);
    drop(a.begin());
    clock.set_us(2_000_000);
    assert_eq!(limit(&a), 50, "a dropped observation counts as failed: 2 of 3");
    // 4xx answers are the client's fault, not load.
    for _ in 0..10 {
        a.begin().finish(429);
    }
    clock.set_us(3_000_000);
    assert_eq!(limit(&a), 55);
}

/// Without a latency target or an error share, responses are counted but judge nothing.
#[test]
fn observed_responses_judge_nothing_unless_asked() {
    let clock = ManualClock::new(0);
    let a = Adaptive::builder(rate!("100/min")).clock(clock.clone()).build();
    let seen = a.begin();
    clock.advance(Duration::from_secs(30));
    seen.finish(500);
    drop(a.begin());
    clock.set_us(31_000_000);
    assert_eq!(limit(&a), 100);
    let bad = Adaptive::builder(rate!("1/s")).max_error_share(1.0);
    assert!(matches!(bad, Err(Error::Config(ConfigError::OutOfRange { .. }))), "{bad:?}");
    let bad = Adaptive::builder(rate!("1/s")).max_slow_share(f64::NAN);
    assert!(matches!(bad, Err(Error::Config(ConfigError::OutOfRange { .. }))), "{bad:?}");
}

/// `stat` shows the factor in force, the base limit and the limit it gives.
#[test]
fn stat_shows_the_factor_in_force() {
    let clock = ManualClock::new(0);
    let a = adaptive(&clock);
    let t = Throttle::builder()
        .uid("adaptive-stat")
        .rate_source(a.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    a.signal(Load::Overloaded);
    clock.advance(SECOND);
    let stat = now_or_never(t.stat(&RequestView::empty())).unwrap().into_limited().unwrap();
    assert_eq!(stat.limit, 50);
    assert_eq!(
        stat.metadata["source"],
        serde_json::json!({"kind": "adaptive", "factor": 0.5, "base_limit": 100, "limit": 50})
    );
}
