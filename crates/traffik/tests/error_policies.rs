//! A failing or slow backend under every error policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use traffik::backend::{BoxFuture, Operation};
use traffik::policy::{BreakerConfig, BreakerState, Recovery};
use traffik::strategy::{FixedWindow, Metadata, Verdict};
use traffik::{
    Backend, BackendError, CircuitBreaker, Error, ErrorPolicy, Failover, InMemoryBackend, ManualClock, Outcome,
    RequestView, Retry, Source, Throttle, rate,
};
use traffik_property_tests::failing::Failing;

/// A backend that fails its first `n` decisions (every one with `u32::MAX`), shared so a test
/// can count its calls.
fn flaky(n: u32) -> Arc<Failing> {
    Arc::new(Failing::first(n))
}

fn throttle(uid: &str, backend: Arc<Failing>, policy: Option<ErrorPolicy>) -> Throttle {
    let b = Throttle::builder().uid(uid).rate(rate!("1/min")).shared_backend(backend).strategy(FixedWindow);
    match policy {
        Some(p) => b.on_error(p).build().unwrap(),
        None => b.build().unwrap(),
    }
}

fn req() -> RequestView<'static> {
    RequestView::empty().peer(Some("192.0.2.1:1".parse().unwrap()))
}

#[tokio::test]
async fn default_policy_fails_closed_for_one_second() {
    let t = throttle("default", flaky(u32::MAX), None);
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.source, d.wait), (Outcome::Throttled, Source::ErrorPolicy, Duration::from_secs(1)));
    assert_eq!(d.retry_after_secs(), Some(1));
    assert_eq!(t.incidents().failed_closed, 1);
}

#[tokio::test]
async fn allow_fails_open_and_counts() {
    let t = throttle("allow", flaky(u32::MAX), Some(ErrorPolicy::allow()));
    for _ in 0..3 {
        let d = t.hit(&req()).await.unwrap();
        assert_eq!((d.outcome, d.source), (Outcome::Allowed, Source::ErrorPolicy));
    }
    let counts = t.incidents();
    assert_eq!((counts.errors, counts.failed_open), (3, 3));
}

#[tokio::test]
async fn raise_returns_the_typed_error() {
    let t = throttle("raise", flaky(u32::MAX), Some(ErrorPolicy::raise()));
    match t.hit(&req()).await {
        Err(Error::Backend { uid, source: BackendError::Connection { .. } }) => assert_eq!(uid, "raise"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn custom_handler_sees_the_failure_and_decides() {
    let policy = ErrorPolicy::custom(|f: &traffik::policy::Failure<'_>| {
        assert_eq!((f.uid, f.backend, f.cost), ("custom", "flaky", 1));
        if f.error.is_transient() { Recovery::Throttle(Duration::from_secs(7)) } else { Recovery::Raise }
    });
    let t = throttle("custom", flaky(u32::MAX), Some(policy));
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.wait), (Outcome::Throttled, Duration::from_secs(7)));
}

#[tokio::test]
async fn backend_level_policy_applies_when_the_throttle_sets_none() {
    #[derive(Debug)]
    struct Lenient(Arc<Failing>);
    impl Backend for Lenient {
        fn kind(&self) -> &'static str {
            "lenient"
        }
        fn namespace(&self) -> &str {
            "lenient"
        }
        fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
            self.0.decide(op)
        }
        fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
            self.0.stat(op)
        }
        fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.reset()
        }
        fn on_error(&self) -> Option<traffik::OnError> {
            Some(traffik::OnError::Allow)
        }
    }
    let t = Throttle::builder()
        .uid("backend-policy")
        .rate(rate!("1/min"))
        .backend(Lenient(flaky(u32::MAX)))
        .strategy(FixedWindow)
        .build()
        .unwrap();
    assert_eq!(t.hit(&req()).await.unwrap().outcome, Outcome::Allowed);
    t.update_error_policy(Some(ErrorPolicy::raise()));
    assert!(t.hit(&req()).await.is_err(), "the throttle's own policy wins");
}

#[tokio::test]
async fn fallback_decides_on_the_other_backend() {
    let fallback = InMemoryBackend::new();
    let t = throttle("fallback", flaky(u32::MAX), Some(ErrorPolicy::fallback(fallback.clone())));
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.source), (Outcome::Allowed, Source::Fallback));
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.source), (Outcome::Throttled, Source::Fallback), "the fallback keeps real state");
    assert_eq!(fallback.len(), 1);
    assert_eq!(t.incidents().fallbacks, 2);
}

#[tokio::test]
async fn fallback_on_filters_errors_and_a_failing_fallback_fails_closed() {
    let never =
        ErrorPolicy::fallback_on(InMemoryBackend::new(), |e: &BackendError| matches!(e, BackendError::Timeout { .. }));
    let t = throttle("fallback-on", flaky(u32::MAX), Some(never));
    assert_eq!(t.hit(&req()).await.unwrap().source, Source::ErrorPolicy);

    let t = throttle("fallback-down", flaky(u32::MAX), Some(ErrorPolicy::fallback(Failing::down())));
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.source), (Outcome::Throttled, Source::ErrorPolicy));
}

#[tokio::test(start_paused = true)]
async fn retry_recovers_from_transient_failures() {
    let transient = flaky(2);
    let policy = ErrorPolicy::retry(Retry::new(3).delay(Duration::from_millis(100)).jitter(0.0), ErrorPolicy::raise());
    let t = throttle("retry", Arc::clone(&transient), Some(policy));
    let started = tokio::time::Instant::now();
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.source), (Outcome::Allowed, Source::Backend));
    assert_eq!(transient.calls(), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(300), "100 ms then 200 ms of backoff");

    let hopeless = flaky(u32::MAX);
    let policy = ErrorPolicy::retry(Retry::new(2).delay(Duration::from_millis(10)).jitter(0.0), ErrorPolicy::allow());
    let t = throttle("retry-then", Arc::clone(&hopeless), Some(policy));
    assert_eq!(t.hit(&req()).await.unwrap().outcome, Outcome::Allowed);
    assert_eq!(hopeless.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn failover_opens_the_breaker_and_stops_calling_the_primary() {
    let clock = ManualClock::new(0);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 2, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock.clone()),
    );
    let primary = flaky(6);
    let policy = ErrorPolicy::failover(Failover::new(InMemoryBackend::new(), breaker.clone()).max_retries(1));
    let t = throttle("failover", Arc::clone(&primary), Some(policy));
    let other = RequestView::empty().peer(Some("192.0.2.99:1".parse().unwrap()));

    // Two requests, each one try + one retry, all failing: the breaker opens.
    assert_eq!(t.hit(&req()).await.unwrap().source, Source::Fallback);
    assert_eq!(t.hit(&other).await.unwrap().source, Source::Fallback);
    assert_eq!(primary.calls(), 4);
    assert_eq!(breaker.state(), BreakerState::Open);

    // While open the primary is not called at all.
    for _ in 0..5 {
        assert_eq!(t.hit(&other).await.unwrap().source, Source::Fallback);
    }
    assert_eq!(primary.calls(), 4);

    // After the recovery timeout a probe goes through; it fails (calls 5 and 6), reopening.
    clock.advance(Duration::from_secs(30));
    assert_eq!(t.hit(&other).await.unwrap().source, Source::Fallback);
    assert_eq!((primary.calls(), breaker.state()), (6, BreakerState::Open));

    // Next probe succeeds: the circuit closes and the primary decides again.
    clock.advance(Duration::from_secs(30));
    let d = t.hit(&RequestView::empty()).await.unwrap();
    assert_eq!((d.source, breaker.state()), (Source::Backend, BreakerState::Closed));
    assert_eq!(breaker.info().times_opened, 2);
}

#[tokio::test]
async fn circuit_breaker_policy_throttles_without_calling_while_open() {
    let breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() });
    let primary = flaky(u32::MAX);
    let t = throttle(
        "breaker",
        Arc::clone(&primary),
        Some(ErrorPolicy::circuit_breaker(breaker.clone(), Duration::from_secs(5))),
    );
    for _ in 0..4 {
        let d = t.hit(&req()).await.unwrap();
        assert_eq!((d.outcome, d.wait), (Outcome::Throttled, Duration::from_secs(5)));
    }
    assert_eq!(primary.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_becomes_a_timeout_error_not_a_hang() {
    let t = Throttle::builder()
        .uid("slow")
        .rate(rate!("1/min"))
        .shared_backend(Arc::new(Failing::hanging()))
        .strategy(FixedWindow)
        .timeout(Duration::from_millis(250))
        .on_error(ErrorPolicy::raise())
        .build()
        .unwrap();
    match t.hit(&req()).await {
        Err(Error::Backend { source: BackendError::Timeout { after, .. }, .. }) => {
            assert_eq!(after, Duration::from_millis(250))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_breaker_policy_on_a_healthy_in_memory_backend_counts_each_hit_once() {
    let breaker = CircuitBreaker::new(BreakerConfig::default());
    let t = Throttle::builder()
        .uid("breaker-healthy")
        .rate(rate!("2/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .on_error(ErrorPolicy::circuit_breaker(breaker, Duration::from_secs(1)))
        .build()
        .unwrap();
    let outcomes: Vec<Outcome> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(t.hit(&req()).await.unwrap().outcome);
        }
        v
    };
    assert_eq!(outcomes, vec![Outcome::Allowed, Outcome::Allowed, Outcome::Throttled]);
}

/// The observed defect: a breaker nested inside a retry policy was never consulted, so every
/// request still went to the failing backend (and waited for its retries).
#[tokio::test(start_paused = true)]
async fn a_breaker_inside_a_retry_policy_is_consulted() {
    let clock = ManualClock::new(0);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 1, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock.clone()),
    );
    let primary = flaky(u32::MAX);
    let policy = ErrorPolicy::retry(
        Retry::new(1).delay(Duration::from_millis(10)).jitter(0.0),
        ErrorPolicy::circuit_breaker(breaker.clone(), Duration::from_secs(5)),
    );
    let t = throttle("retry-breaker", Arc::clone(&primary), Some(policy));
    let d = t.hit(&req()).await.unwrap();
    assert_eq!((d.outcome, d.wait), (Outcome::Throttled, Duration::from_secs(5)));
    assert_eq!((primary.calls(), breaker.state()), (2, BreakerState::Open), "a try and a retry, then open");
    for _ in 0..3 {
        assert_eq!(t.hit(&req()).await.unwrap().wait, Duration::from_secs(5));
    }
    assert_eq!(primary.calls(), 2, "an open breaker keeps requests off the backend");
}

/// The observed defect: `Retry::new(3)` could hold a request for about 4.7 s (its backoff plus
/// each attempt's timeout). A retry policy has a deadline (default 1 s) counted from the first
/// failure: a retry starts only before it and its call is cut off at it, so a request is held at
/// most the first call's timeout plus the deadline.
#[tokio::test(start_paused = true)]
async fn retries_stop_at_their_deadline() {
    let hanging = Arc::new(Failing::hanging());
    let t = Throttle::builder()
        .uid("retry-deadline")
        .rate(rate!("1/min"))
        .shared_backend(Arc::clone(&hanging) as Arc<dyn Backend>)
        .strategy(FixedWindow)
        .timeout(Duration::from_millis(300))
        .on_error(ErrorPolicy::retry(Retry::new(3).jitter(0.0), ErrorPolicy::throttle()))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(t.hit(&req()).await.unwrap().outcome, Outcome::Throttled);
    let held = started.elapsed();
    assert!(held <= Duration::from_millis(1300), "held {held:?}, past the timeout plus the deadline");
    // The first call fails at 300 ms (the deadline: 1.3 s); 100 ms of backoff and a call end at
    // 700 ms, 200 ms and a call at 1.2 s; the third retry's 400 ms of backoff would end past it.
    assert_eq!(held, Duration::from_millis(1200));
    assert_eq!(hanging.calls(), 3);

    let longer = Throttle::builder()
        .uid("retry-deadline-3s")
        .rate(rate!("1/min"))
        .shared_backend(Arc::clone(&hanging) as Arc<dyn Backend>)
        .strategy(FixedWindow)
        .timeout(Duration::from_millis(300))
        .on_error(ErrorPolicy::retry(
            Retry::new(3).jitter(0.0).deadline(Duration::from_secs(3)),
            ErrorPolicy::throttle(),
        ))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(longer.hit(&req()).await.unwrap().outcome, Outcome::Throttled);
    // 300 + 100 + 300 + 200 + 300 + 400 + 300 ms: all three retries fit in 3 s.
    assert_eq!(started.elapsed(), Duration::from_millis(1900));
    assert_eq!(hanging.calls(), 3 + 4);
}

/// A failover's retries of the primary stop at its deadline too (default 1 s): a hanging
/// primary with many retries holds a request no longer, and the fallback decides.
#[tokio::test(start_paused = true)]
async fn failover_retries_stop_at_their_deadline() {
    let hanging = Arc::new(Failing::hanging());
    let breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 100, ..BreakerConfig::default() });
    let t = Throttle::builder()
        .uid("failover-deadline")
        .rate(rate!("1/min"))
        .shared_backend(Arc::clone(&hanging) as Arc<dyn Backend>)
        .strategy(FixedWindow)
        .timeout(Duration::from_millis(300))
        .on_error(ErrorPolicy::failover(Failover::new(InMemoryBackend::new(), breaker).max_retries(20)))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let d = t.hit(&req()).await.unwrap();
    let held = started.elapsed();
    assert_eq!(d.source, Source::Fallback);
    assert!(held <= Duration::from_millis(1300), "held {held:?}, past the timeout plus the deadline");
    assert!(hanging.calls() <= 5, "{} calls of the primary of 300 ms each within 1.3 s", hanging.calls());
}

/// A retry policy that falls back to a failover uses the failover's backend while its breaker is
/// open (the review found it answered 429 instead); a deadline of `Duration::MAX` means none.
#[tokio::test(start_paused = true)]
async fn a_failover_inside_a_retry_policy_serves_while_open() {
    let clock = ManualClock::new(0);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 1, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock),
    );
    let primary = flaky(u32::MAX);
    let policy = ErrorPolicy::retry(
        Retry::new(1).delay(Duration::from_millis(10)).jitter(0.0).deadline(Duration::MAX),
        ErrorPolicy::failover(Failover::new(InMemoryBackend::new(), breaker.clone()).deadline(Duration::MAX)),
    );
    let t = throttle("retry-failover", Arc::clone(&primary), Some(policy));
    assert_eq!(t.hit(&req()).await.unwrap().source, Source::Fallback);
    assert_eq!(breaker.state(), BreakerState::Open);
    let calls = primary.calls();
    for _ in 0..3 {
        let d = t.hit(&req()).await.unwrap();
        assert_eq!(d.source, Source::Fallback, "{d:?}");
    }
    assert_eq!(primary.calls(), calls, "an open breaker keeps requests off the primary");
}

/// `incidents().fallbacks` counts every decision a fallback served, including those served
/// while the breaker was open (the primary not called, so no error to go with them).
#[tokio::test(start_paused = true)]
async fn every_decision_served_by_the_fallback_is_counted_while_the_breaker_is_open() {
    let clock = ManualClock::new(0);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 2, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock.clone()),
    );
    let primary = flaky(u32::MAX);
    let policy = ErrorPolicy::failover(Failover::new(InMemoryBackend::new(), breaker.clone()));
    let t = throttle("served-while-open", Arc::clone(&primary), Some(policy));
    let mut served = 0;
    for i in 0..200u32 {
        let who = RequestView::empty().peer(Some(std::net::SocketAddr::from(([192, 0, 2, 10], 1 + (i % 50) as u16))));
        let d = t.hit(&who).await.unwrap();
        served += u64::from(d.source == Source::Fallback);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(primary.calls(), 2, "the open breaker spares the primary");
    assert_eq!(served, 200);
    let counts = t.incidents();
    assert_eq!(counts.fallbacks, served, "{counts:?}");
    // Errors are the primary's failures only; an open circuit's decisions are not errors.
    assert_eq!(counts.errors, 2, "{counts:?}");
}
