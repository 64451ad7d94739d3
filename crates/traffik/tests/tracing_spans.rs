//! The `tracing` span of a decision on the general path and the events of breaker transitions,
//! in one test alone in its binary: `tracing` caches whether a call site is of interest, and a
//! test on another thread reaching the same call site while this one installs its subscriber
//! could leave it cached as uninteresting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use traffik::policy::BreakerConfig;
use traffik::strategy::FixedWindow;
use traffik::{Backend, CircuitBreaker, Context, ErrorPolicy, InMemoryBackend, ManualClock, RequestView, Throttle};
use traffik_property_tests::failing::Failing;

/// What one thread's subscriber saw: spans (name and `name=value` fields, recorded ones
/// appended) and events (level and fields).
#[derive(Clone, Default)]
struct Seen {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    events: Arc<Mutex<Vec<(tracing::Level, String)>>>,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl tracing::Subscriber for Seen {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_owned(), fields.0));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        let i = usize::try_from(id.into_u64()).unwrap() - 1;
        self.spans.lock().unwrap()[i].1.push_str(&fields.0);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.events.lock().unwrap().push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn general_path_decisions_have_a_span_and_breaker_transitions_an_event() {
    let seen = Seen::default();
    let _guard = tracing::subscriber::set_default(seen.clone());
    let req = RequestView::empty().peer(Some(SocketAddr::from(([203, 0, 113, 42], 4000))));

    // The in-memory shortcut has no span; a per-hit context takes the general path, which has.
    let t = Throttle::builder()
        .uid("spanned")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_699_999_980_000_000))
        .build()
        .unwrap();
    assert!(t.hit(&req).await.unwrap().is_allowed());
    assert!(seen.spans.lock().unwrap().is_empty(), "the shortcut opens no span");
    assert!(t.hit_with(&req, &Context::new()).await.unwrap().is_refused());
    let spans = seen.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (name, fields) = &spans[0];
    assert_eq!(name, "traffik.decision");
    for field in [
        "throttle=\"spanned\"",
        "strategy=\"fw\"",
        "backend=\"memory\"",
        "mode=\"hit\"",
        "outcome=\"throttled\"",
        "source=\"backend\"",
    ] {
        assert!(fields.contains(field), "{field} in {fields}");
    }
    assert!(!fields.contains("203.0.113"), "no client identity in the span: {fields}");

    // A breaker guarding a failing backend: opening, probing and closing are events naming
    // the throttle and the backend.
    let clock = ManualClock::new(0);
    let breaker = CircuitBreaker::with_clock(
        BreakerConfig { failure_threshold: 1, recovery_timeout: Duration::from_secs(30), success_threshold: 1 },
        Arc::new(clock.clone()),
    );
    let primary = Arc::new(Failing::switch());
    primary.set_down(true);
    let guarded = Throttle::builder()
        .uid("guarded")
        .rate("100/min")
        .shared_backend(Arc::clone(&primary) as Arc<dyn Backend>)
        .strategy(FixedWindow)
        .on_error(ErrorPolicy::circuit_breaker(breaker, Duration::from_secs(1)))
        .build()
        .unwrap();
    assert!(guarded.hit(&req).await.unwrap().is_refused());
    clock.advance(Duration::from_secs(30));
    primary.set_down(false);
    assert!(guarded.hit(&req).await.unwrap().is_allowed());
    let events = seen.events.lock().unwrap().clone();
    let moves: Vec<_> = events.iter().filter(|(_, f)| f.contains("circuit breaker")).collect();
    let expected = [
        (tracing::Level::WARN, "from=\"closed\" to=\"open\""),
        (tracing::Level::INFO, "from=\"open\" to=\"half_open\""),
        (tracing::Level::INFO, "from=\"half_open\" to=\"closed\""),
    ];
    assert_eq!(moves.len(), expected.len(), "{events:?}");
    for ((level, fields), (want_level, want)) in moves.into_iter().zip(expected) {
        assert_eq!(*level, want_level, "{fields}");
        for field in ["throttle=\"guarded\"", "backend=\"switch\"", want] {
            assert!(fields.contains(field), "{field} in {fields}");
        }
    }
}
