//! The throttle's `tracing` events: one per enforced refusal, one per refusal shadow mode let
//! through and one per breaker transition, naming the throttle, its strategy and backend,
//! never the client. Field names and values follow one scheme across events, spans and metric
//! labels (see the `telemetry` module docs).

// Without the `tracing` feature the events compile to nothing, and so do their helpers.
#![cfg_attr(not(feature = "tracing"), allow(dead_code, unused_imports))]

use std::time::Duration;

use super::config::{BackendChoice, Config};
use crate::backend::Backend;
use crate::decision::{Outcome, Source};
use crate::policy::{BreakerState, Transition};
use crate::strategy::VerdictKind;

/// The `backend` field of a throttle's configuration: its backend's kind, or `context` for a
/// backend chosen per request.
pub(crate) fn backend_kind(choice: &BackendChoice) -> &'static str {
    match choice {
        BackendChoice::Fixed(b) => b.kind(),
        BackendChoice::Context => "context",
    }
}

/// The `outcome` field (and metric label) of an outcome: `allowed`, `delayed`, `throttled`,
/// `never` or `skipped`.
pub(crate) fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Delayed => "delayed",
        Outcome::Throttled => "throttled",
        Outcome::Never => "never",
        Outcome::Skipped(_) => "skipped",
    }
}

/// The `source` field (and metric label) of a source: `backend`, `fallback`, `error_policy`
/// or `none`.
pub(crate) fn source_name(source: Source) -> &'static str {
    match source {
        Source::Backend => "backend",
        Source::Fallback => "fallback",
        Source::ErrorPolicy => "error_policy",
        Source::None => "none",
    }
}

/// The `debug` event of an enforced refusal: names the throttle, its strategy and backend,
/// never the client.
#[cold]
#[inline(never)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn denial_event(uid: &str, config: &Config, outcome: Outcome, source: Source, cost: u64, wait: Duration) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        throttle = uid,
        strategy = config.strategy.name(),
        backend = backend_kind(&config.backend),
        outcome = outcome_name(outcome),
        source = source_name(source),
        cost,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "rate limit refused a request"
    );
}

/// The `debug` event of a refusal that shadow mode let through (a throttle's or a group's):
/// names the throttle, never the client.
#[cold]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn shadow_refusal_event(uid: &str, kind: VerdictKind, cost: u64, wait: Duration) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        throttle = uid,
        outcome = outcome_name(if kind == VerdictKind::Never { Outcome::Never } else { Outcome::Throttled }),
        cost,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "shadow mode let a refused request through"
    );
}

/// A breaker's transition, seen by a throttle's call to its primary backend: counted and
/// gauged (feature `metrics`), and logged (`warn` when the circuit opens, `info` otherwise)
/// with the throttle and the backend.
#[cold]
#[inline(never)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn breaker_event(uid: &str, backend: &'static str, t: Transition) {
    #[cfg(feature = "metrics")]
    crate::telemetry::count_breaker_transition(uid, t.from, t.to);
    #[cfg(feature = "tracing")]
    let (from, to) = (t.from.name(), t.to.name());
    #[cfg(feature = "tracing")]
    if t.to == BreakerState::Open {
        tracing::warn!(throttle = uid, backend, from, to, failures = t.failures, "circuit breaker opened");
    } else {
        tracing::info!(throttle = uid, backend, from, to, "circuit breaker moved");
    }
}
