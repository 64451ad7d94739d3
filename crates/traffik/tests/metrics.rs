//! Decision counters through the `metrics` facade, read back from `metrics-util`'s debugging
//! recorder (a real recorder, installed for this thread only).

#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::view;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use traffik::strategy::FixedWindow;
use traffik::{Backend, ErrorPolicy, InMemoryBackend, ManualClock, Throttle, ThrottleGroup};
use traffik_property_tests::failing::Failing;

/// Polls an in-memory hit, which never waits.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory hit waited"),
    }
}

fn throttle(uid: &str, backend: &InMemoryBackend) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate("2/min")
        .backend(backend.clone())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_699_999_980_000_000))
        .build()
        .unwrap()
}

/// A counter: its name, its labels (sorted) and its value.
type Seen = (String, Vec<(String, String)>, u64);

/// Every counter.
fn counters(snapshotter: &Snapshotter) -> Vec<Seen> {
    let mut out: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Counter(n) = value else { return None };
            let key = key.key();
            let mut labels: Vec<_> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            labels.sort();
            Some((key.name().to_owned(), labels, n))
        })
        .collect();
    out.sort();
    out
}

/// The value of one counter (0 when it was never registered).
fn value(all: &[Seen], name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    want.sort();
    all.iter().find(|(n, l, _)| n == name && *l == want).map_or(0, |(_, _, v)| *v)
}

#[test]
fn decisions_are_counted_by_throttle_outcome_and_source_without_identities() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let t = throttle("counted", &InMemoryBackend::new());
        let req = view([203, 0, 113, 7]);
        for _ in 0..3 {
            let _ = now(t.hit(&req)).unwrap();
        }
        // A check is not a decision on a request.
        let _ = now(t.check(&req)).unwrap();
        t.set_shadow(true);
        let _ = now(t.hit(&req)).unwrap();
        t.disable();
        let _ = now(t.hit(&req)).unwrap();
    });
    let all = counters(&snapshotter);
    let decisions = |outcome, source| {
        value(&all, "traffik_decisions_total", &[("throttle", "counted"), ("outcome", outcome), ("source", source)])
    };
    assert_eq!(decisions("allowed", "backend"), 2, "{all:?}");
    assert_eq!(decisions("throttled", "backend"), 2, "one enforced, one in shadow mode: {all:?}");
    assert_eq!(decisions("skipped", "none"), 1, "{all:?}");
    assert_eq!(value(&all, "traffik_shadow_refusals_total", &[("throttle", "counted")]), 1);
    for (_, labels, _) in &all {
        for (_, v) in labels {
            assert!(!v.contains("203.0.113"), "an identity in a label: {all:?}");
        }
    }
}

#[test]
fn a_recorder_installed_after_the_throttle_was_built_sees_every_hit() {
    let t = throttle("late", &InMemoryBackend::new());
    let req = view([192, 0, 2, 1]);
    // No recorder yet: nothing to see, nothing kept.
    let _ = now(t.hit(&req)).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..3 {
            let _ = now(t.hit(&req)).unwrap();
        }
    });
    let all = counters(&snapshotter);
    let decisions = |outcome| {
        value(&all, "traffik_decisions_total", &[("throttle", "late"), ("outcome", outcome), ("source", "backend")])
    };
    assert_eq!((decisions("allowed"), decisions("throttled")), (1, 2), "{all:?}");
}

#[test]
fn a_group_counts_its_decisions_under_its_own_uid() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let backend = InMemoryBackend::new();
        let group = ThrottleGroup::new("api", [throttle("burst", &backend), throttle("sustained", &backend)]).unwrap();
        group.set_shadow(true);
        let req = view([192, 0, 2, 2]);
        for _ in 0..3 {
            let _ = now(group.hit(&req)).unwrap();
        }
    });
    let all = counters(&snapshotter);
    let decisions = |outcome| {
        value(&all, "traffik_decisions_total", &[("throttle", "api"), ("outcome", outcome), ("source", "backend")])
    };
    assert_eq!((decisions("allowed"), decisions("throttled")), (2, 1), "{all:?}");
    assert_eq!(value(&all, "traffik_shadow_refusals_total", &[("throttle", "api")]), 1);
    let members: u64 =
        all.iter().filter(|(_, l, _)| l.iter().any(|(k, v)| k == "throttle" && v != "api")).map(|(_, _, n)| n).sum();
    assert_eq!(members, 0, "members are not counted apart inside a group: {all:?}");
}

#[test]
fn backend_errors_are_counted_by_backend_kind_and_action_and_fallbacks_by_source() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let build = |uid: &str, policy: ErrorPolicy| {
            Throttle::builder()
                .uid(uid)
                .rate("5/min")
                .backend(Failing::down())
                .strategy(FixedWindow)
                .on_error(policy)
                .build()
                .unwrap()
        };
        let req = view([192, 0, 2, 3]);
        let closed = build("closed", ErrorPolicy::throttle());
        let _ = now(closed.hit(&req)).unwrap();
        let fallback = build("fallback", ErrorPolicy::fallback(InMemoryBackend::new()));
        let _ = now(fallback.hit(&req)).unwrap();
    });
    let all = counters(&snapshotter);
    let errors = |throttle, action| {
        value(
            &all,
            "traffik_backend_errors_total",
            &[("throttle", throttle), ("backend", "down"), ("kind", "command"), ("action", action)],
        )
    };
    assert_eq!((errors("closed", "failed_closed"), errors("fallback", "fallback")), (1, 1), "{all:?}");
    let decisions = |throttle, outcome, source| {
        value(&all, "traffik_decisions_total", &[("throttle", throttle), ("outcome", outcome), ("source", source)])
    };
    assert_eq!(decisions("closed", "throttled", "error_policy"), 1, "{all:?}");
    assert_eq!(decisions("fallback", "allowed", "fallback"), 1, "{all:?}");
}

/// One snapshot (the debugging recorder's snapshots drain its counters): every counter, and
/// the value of the gauge `name` of `throttle` (`None` when it was never set).
fn drain(snapshotter: &Snapshotter, name: &str, throttle: &str) -> (Vec<Seen>, Option<f64>) {
    drain_gauge(snapshotter, name, ("throttle", throttle))
}

#[test]
fn breaker_transitions_are_counted_and_its_state_gauged_and_fallback_decisions_all_counted() {
    use std::sync::Arc;
    use std::time::Duration;
    use traffik::policy::BreakerConfig;
    use traffik::{CircuitBreaker, Failover};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new(0);
    let primary = Arc::new(Failing::switch());
    primary.set_down(true);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 2, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock.clone()),
    );
    let t = Throttle::builder()
        .uid("guarded")
        .rate("1000/min")
        .shared_backend(Arc::clone(&primary) as Arc<dyn Backend>)
        .strategy(FixedWindow)
        .on_error(ErrorPolicy::failover(Failover::new(InMemoryBackend::new(), breaker.clone())))
        .build()
        .unwrap();
    let req = view([192, 0, 2, 4]);
    let mut states = Vec::new();
    let mut all: Vec<Seen> = Vec::new();
    let mut look = || {
        let (seen, level) = drain(&snapshotter, "traffik_breaker_state", "guarded");
        all.extend(seen);
        states.push(level);
    };
    metrics::with_local_recorder(&recorder, || {
        // Two failures open the circuit; thirty more hits are served by the fallback.
        for _ in 0..32 {
            assert_eq!(now(t.hit(&req)).unwrap().source, traffik::Source::Fallback);
        }
        look();
        // The probe after the recovery timeout fails: half-open, then open again.
        clock.advance(Duration::from_secs(30));
        let _ = now(t.hit(&req)).unwrap();
        look();
        // The next probe succeeds: closed.
        clock.advance(Duration::from_secs(30));
        primary.set_down(false);
        assert_eq!(now(t.hit(&req)).unwrap().source, traffik::Source::Backend);
        look();
    });
    assert_eq!(states, [Some(2.0), Some(2.0), Some(0.0)]);
    // Summed over the snapshots.
    let total = |name: &str, labels: &[(&str, &str)]| {
        let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        want.sort();
        all.iter().filter(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| v).sum::<u64>()
    };
    let moved =
        |from, to| total("traffik_breaker_transitions_total", &[("throttle", "guarded"), ("from", from), ("to", to)]);
    assert_eq!(
        [moved("closed", "open"), moved("open", "half_open"), moved("half_open", "open"), moved("half_open", "closed")],
        [1, 2, 1, 1]
    );
    let served =
        total("traffik_decisions_total", &[("throttle", "guarded"), ("outcome", "allowed"), ("source", "fallback")]);
    assert_eq!(served, 33);
    assert_eq!(t.incidents().fallbacks, served, "{:?}", t.incidents());
}

#[test]
fn the_in_memory_backend_counts_refusals_at_its_cap_and_gauges_its_keys_on_sweep() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new(1_699_999_980_000_000);
    let backend = InMemoryBackend::builder().namespace("capped").max_keys(2).shards(1).build();
    let t = Throttle::builder()
        .uid("capped")
        .rate("5/min")
        .backend(backend.clone())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut level = None;
    let mut all = Vec::new();
    metrics::with_local_recorder(&recorder, || {
        for last in 1..=3 {
            let _ = now(t.hit(&view([198, 51, 100, last]))).unwrap();
        }
        // Both keys expire; the new key's incremental sweep removes them.
        clock.advance(std::time::Duration::from_secs(180));
        let _ = now(t.hit(&view([198, 51, 100, 4]))).unwrap();
        backend.sweep();
        let (seen, gauge) = drain_gauge(&snapshotter, "traffik_memory_keys", ("namespace", "capped"));
        (all, level) = (seen, gauge);
    });
    assert_eq!(backend.refusals(), 1);
    let count = |name| value(&all, name, &[("namespace", "capped")]);
    assert_eq!(count("traffik_memory_full_refusals_total"), 1, "{all:?}");
    assert_eq!(level, Some(1.0), "one live key after the sweep");
}

/// One snapshot: every counter, and the value of the gauge `name` whose one label is `label`.
fn drain_gauge(snapshotter: &Snapshotter, name: &str, label: (&str, &str)) -> (Vec<Seen>, Option<f64>) {
    let mut seen = Vec::new();
    let mut level = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<_> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        labels.sort();
        match value {
            DebugValue::Counter(n) => seen.push((key.name().to_owned(), labels, n)),
            DebugValue::Gauge(g) if key.name() == name && labels == [(label.0.into(), label.1.into())] => {
                level = Some(g.into_inner());
            }
            _ => {}
        }
    }
    (seen, level)
}

#[test]
fn awaited_backend_calls_are_timed_by_backend_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let t = Throttle::builder()
            .uid("timed")
            .rate("5/min")
            .backend(Failing::down())
            .strategy(FixedWindow)
            .on_error(ErrorPolicy::fallback(InMemoryBackend::new()))
            .build()
            .unwrap();
        for _ in 0..3 {
            let _ = now(t.hit(&view([192, 0, 2, 5]))).unwrap();
        }
    });
    let samples: Vec<(String, Vec<f64>)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Histogram(h) = value else { return None };
            let key = key.key();
            assert_eq!(key.name(), "traffik_backend_call_seconds");
            let labels: Vec<_> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            Some((labels.join(","), h.into_iter().map(|v| v.into_inner()).collect()))
        })
        .collect();
    // The failing primary's calls are awaited (and timed); the in-memory fallback answers
    // without awaiting.
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].0, "backend=down");
    assert_eq!(samples[0].1.len(), 3, "{samples:?}");
    assert!(samples[0].1.iter().all(|s| s.is_finite() && *s >= 0.0), "{samples:?}");
}

/// An expired key replaced at the cap is counted: the counter agrees with the backend's own
/// `evictions()`. Live keys fill the cap but one, whose client's key expires before the next
/// client arrives; that newcomer finds the expired key in its incremental sweep (no eviction),
/// replaces it at the cap (an eviction) or, beyond the bounded scan's reach, is refused; the
/// scan's starting point moves every round, so a hundred rounds evict many times.
#[test]
fn the_in_memory_backend_counts_keys_replaced_at_its_cap() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The start of a day: the long keys' window (a day) outlasts the hundred rounds.
    let clock = ManualClock::new(1_700_006_400_000_000);
    let backend = InMemoryBackend::builder().namespace("churn").max_keys(64).shards(1).build();
    let build = |uid: &str, rate: &str| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(backend.clone())
            .strategy(FixedWindow)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (long, short) = (build("long", "5/d"), build("short", "5/min"));
    let mut all = Vec::new();
    metrics::with_local_recorder(&recorder, || {
        for i in 0..63u8 {
            assert!(now(long.hit(&view([198, 51, 100, i]))).unwrap().is_allowed());
        }
        for round in 0..100u8 {
            // Admitted in its sweep's or the eviction scan's reach, refused (`Full`) beyond it.
            let _ = now(short.hit(&view([203, 0, 113, round]))).unwrap();
            clock.advance(std::time::Duration::from_secs(120));
        }
        all = drain(&snapshotter, "none", "none").0;
    });
    assert_eq!(backend.len(), 64, "the cap is held");
    assert!(backend.evictions() > 0, "expired keys were replaced at the cap");
    let counted = value(&all, "traffik_memory_evictions_total", &[("namespace", "churn")]);
    assert_eq!(counted, backend.evictions(), "{all:?}");
}
