//! The throttle's `tracing` events: one per enforced refusal and one per refusal shadow mode
//! let through, naming the throttle, its strategy and backend, never the client.

use std::time::Duration;

use super::config::{BackendChoice, Config};
use crate::backend::Backend;
use crate::decision::{Outcome, Source};
use crate::strategy::VerdictKind;

/// The `debug` event of an enforced refusal: names the throttle, its strategy and backend,
/// never the client.
#[cold]
#[inline(never)]
pub(crate) fn denial_event(uid: &str, config: &Config, outcome: Outcome, source: Source, cost: u64, wait: Duration) {
    let backend = match &config.backend {
        BackendChoice::Fixed(b) => b.kind(),
        BackendChoice::Context => "context",
    };
    tracing::debug!(
        throttle = uid,
        strategy = config.strategy.name(),
        backend,
        outcome = ?outcome,
        source = ?source,
        cost,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "rate limit refused a request"
    );
}

/// The `debug` event of a refusal that shadow mode let through (a throttle's or a group's):
/// names the throttle, never the client.
#[cold]
pub(crate) fn shadow_refusal_event(uid: &str, kind: VerdictKind, cost: u64, wait: Duration) {
    let outcome = if kind == VerdictKind::Never { Outcome::Never } else { Outcome::Throttled };
    tracing::debug!(
        throttle = uid,
        outcome = ?outcome,
        cost,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "shadow mode let a refused request through"
    );
}
