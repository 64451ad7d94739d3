//! The `debug` events of refusals (shadow mode's and enforced ones), in one test alone in its
//! binary: `tracing` caches whether a call site is of interest, and a test on another thread
//! reaching the same call site while this one installs its subscriber could leave it cached as
//! uninteresting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use traffik::strategy::FixedWindow;
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, Throttle};

/// The events of one thread, as `name=value` strings per event.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String)>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn refusals_are_logged_once_at_debug_without_the_client() {
    let events = Events::default();
    let _guard = tracing::subscriber::set_default(events.clone());
    let t = Throttle::builder()
        .uid("logged")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_699_999_980_000_000))
        .shadow(true)
        .build()
        .unwrap();
    let req = RequestView::empty().peer(Some(SocketAddr::from(([203, 0, 113, 99], 4000))));
    assert!(t.hit(&req).await.unwrap().is_allowed());
    assert!(t.hit(&req).await.unwrap().shadow);
    let seen = events.0.lock().unwrap().clone();
    let shadow: Vec<_> = seen.iter().filter(|(_, f)| f.contains("shadow mode")).collect();
    assert_eq!(shadow.len(), 1, "one event per refusal: {seen:?}");
    let (level, fields) = shadow[0];
    assert_eq!(*level, tracing::Level::DEBUG);
    assert!(fields.contains("throttle=\"logged\"") || fields.contains("throttle=logged"), "{fields}");
    assert!(fields.contains("outcome=\"throttled\""), "{fields}");
    assert!(!fields.contains("203.0.113"), "no client identity in the event: {fields}");

    // Enforced refusals, on the common configuration's shortcut and on the general path (a
    // per-hit context): one event each, naming the throttle, its strategy and backend.
    t.set_shadow(false);
    assert!(t.hit(&req).await.unwrap().is_refused());
    assert!(t.hit_with(&req, &Context::new()).await.unwrap().is_refused());
    let seen = events.0.lock().unwrap().clone();
    let refused: Vec<_> = seen.iter().filter(|(_, f)| f.contains("rate limit refused a request")).collect();
    assert_eq!(refused.len(), 2, "{seen:?}");
    for (level, fields) in refused {
        assert_eq!(*level, tracing::Level::DEBUG);
        for field in ["throttle=\"logged\"", "strategy=\"fw\"", "backend=\"memory\"", "outcome=\"throttled\""] {
            assert!(fields.contains(field), "{field} in {fields}");
        }
        assert!(!fields.contains("203.0.113"), "no client identity in the event: {fields}");
    }
}
