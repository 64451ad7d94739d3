//! Metrics through the [`metrics`] facade (feature `metrics`, on by default).
//!
//! | metric | kind | labels | counts |
//! |---|---|---|---|
//! | `traffik_decisions_total` | counter | `throttle`, `outcome`, `source` | every hit's decision |
//! | `traffik_shadow_refusals_total` | counter | `throttle` | refusals shadow mode let through |
//! | `traffik_backend_errors_total` | counter | `throttle`, `backend`, `kind`, `action` | backend errors, by what the error policy did |
//! | `traffik_breaker_transitions_total` | counter | `throttle`, `from`, `to` | breaker transitions a throttle's calls made |
//! | `traffik_breaker_state` | gauge | `throttle` | the breaker's state after its last transition: 0 closed, 1 half-open, 2 open |
//! | `traffik_backend_call_seconds` | histogram | `backend` | awaited backend calls (errors and timeouts included) |
//! | `traffik_memory_keys` | gauge | `namespace` | in-memory keys, set by [`InMemoryBackend::sweep`](crate::InMemoryBackend::sweep) |
//! | `traffik_memory_evictions_total` | counter | `namespace` | expired keys replaced at the cap |
//! | `traffik_memory_full_refusals_total` | counter | `namespace` | new keys refused at the cap |
//! | `traffik_cas_retries_total` | counter | `backend` | lost compare-and-swaps tried again (`traffik-memcached`; `traffik-redis`'s path for custom strategies) |
//! | `traffik_redis_script_reloads_total` | counter | | scripts sent in full after `NOSCRIPT` (a server's first call of each script included) |
//! | `traffik_redis_reconnects_total` | counter | | connections opened to replace a broken or silent one |
//!
//! The backend crates' metrics come with their own `metrics` feature (on by default).
//!
//! Label values: `throttle` is a throttle's or group's uid; `outcome` is `allowed`, `delayed`,
//! `throttled`, `never` or `skipped`; `source` is `backend`, `fallback`, `error_policy` or
//! `none` (a skipped hit); `backend` a backend's kind (`memory`, `redis`, `memcached`, ...);
//! `from` and `to` are `closed`, `open` or `half_open`; `namespace` an in-memory backend's
//! namespace. Hits are counted, checks are not; a group counts its own decisions under its
//! uid, not its members'. Every decision a fallback served is counted with `source="fallback"`
//! (and in [`IncidentCounts::fallbacks`](crate::IncidentCounts::fallbacks)), those served
//! while the breaker kept the primary out included. A breaker shared by several throttles
//! reports each transition under the throttle whose call made it. No label ever holds a
//! client identity or a key. Any exporter works (install it as the global recorder); with
//! none installed a decision pays a look-up of the recorder in force, a comparison and a
//! no-op increment.
//! Decision handles are registered with the recorder in force when a throttle is configured,
//! and again on the first hit after another recorder takes over; the others are registered
//! where they are counted (rare events, or calls that await a backend).
//!
//! `tracing` uses the same names: fields `throttle`, `strategy`, `backend`, `outcome`,
//! `source`, `action`, `from`, `to`, `cost`, `wait_ms` and `error`, with the values above.
//! Each decision on the general path (not the common configuration's in-memory shortcut) runs
//! in a `debug` span `traffik.decision` with `throttle`, `strategy`, `backend` and `mode`
//! (`hit` or `check`), and records `outcome` and `source` when decided. Breaker transitions
//! are events with `throttle`, `backend`, `from` and `to` (`warn` when the circuit opens,
//! `info` otherwise).

use metrics::{Counter, Recorder, SharedString};

use crate::decision::{Outcome, Source};
use crate::error::BackendError;
use crate::policy::BreakerState;
use crate::strategy::VerdictKind;

/// The name of the decisions counter.
pub(crate) const DECISIONS: &str = "traffik_decisions_total";
/// The name of the shadow-refusals counter.
pub(crate) const SHADOW_REFUSALS: &str = "traffik_shadow_refusals_total";
/// The name of the backend-errors counter.
pub(crate) const BACKEND_ERRORS: &str = "traffik_backend_errors_total";
/// The name of the breaker-state gauge.
pub(crate) const BREAKER_STATE: &str = "traffik_breaker_state";
/// The name of the breaker-transitions counter.
pub(crate) const BREAKER_TRANSITIONS: &str = "traffik_breaker_transitions_total";

/// The name of the backend-call latency histogram.
pub(crate) const BACKEND_CALL_SECONDS: &str = "traffik_backend_call_seconds";
/// The name of the in-memory live-keys gauge.
pub(crate) const MEMORY_KEYS: &str = "traffik_memory_keys";
/// The name of the in-memory evictions counter.
pub(crate) const MEMORY_EVICTIONS: &str = "traffik_memory_evictions_total";
/// The name of the in-memory refusals-at-the-cap counter.
pub(crate) const MEMORY_FULL_REFUSALS: &str = "traffik_memory_full_refusals_total";

/// In the order of [`VerdictKind`]'s variants, then skipped.
const OUTCOMES: [&str; 5] = ["allowed", "delayed", "throttled", "never", "skipped"];
const SOURCES: [&str; 4] = ["backend", "fallback", "error_policy", "none"];

/// One throttle's (or group's) counter handles, registered with one recorder.
#[derive(Clone)]
pub(crate) struct DecisionCounters {
    /// The address of the recorder the handles belong to (0: none yet).
    recorder: usize,
    /// By outcome, then source: `decisions[outcome * SOURCES.len() + source]`.
    decisions: [Counter; OUTCOMES.len() * SOURCES.len()],
}

/// The address of the recorder in force on this thread (the local one, else the global one,
/// else the no-op recorder).
#[inline]
pub(crate) fn current_recorder() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref::<dyn Recorder>(r).cast::<()>() as usize)
}

/// `Admit`, `Delay`, `Deny`, `Never`: 0 to 3, as their declaration order (and `OUTCOMES`).
#[inline]
fn kind_index(kind: VerdictKind) -> usize {
    kind as usize
}

#[inline]
fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => kind_index(VerdictKind::Admit),
        Outcome::Delayed => kind_index(VerdictKind::Delay),
        Outcome::Throttled => kind_index(VerdictKind::Deny),
        Outcome::Never => kind_index(VerdictKind::Never),
        Outcome::Skipped(_) => 4,
    }
}

#[inline]
fn source_index(source: Source) -> usize {
    match source {
        Source::Backend => 0,
        Source::Fallback => 1,
        Source::ErrorPolicy => 2,
        Source::None => 3,
    }
}

impl DecisionCounters {
    /// Registers the handles of `uid` with the recorder in force.
    pub(crate) fn register(uid: &SharedString) -> Self {
        let recorder = current_recorder();
        let decisions = std::array::from_fn(|i| {
            let (outcome, source) = (OUTCOMES[i / SOURCES.len()], SOURCES[i % SOURCES.len()]);
            metrics::counter!(DECISIONS, "throttle" => uid.clone(), "outcome" => outcome, "source" => source)
        });
        DecisionCounters { recorder, decisions }
    }

    /// Handles that count nothing, for a configuration not registered yet (never current, so
    /// a hit with them registers them).
    pub(crate) fn unregistered() -> Self {
        DecisionCounters { recorder: 0, decisions: std::array::from_fn(|_| Counter::noop()) }
    }

    /// Counts one decision; `false` (nothing counted) when another recorder has taken over
    /// since the handles were registered.
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome, source: Source) -> bool {
        self.count_at(outcome_index(outcome) * SOURCES.len() + source_index(source))
    }

    /// [`count`](Self::count) for a backend's verdict.
    #[inline]
    pub(crate) fn count_verdict(&self, kind: VerdictKind) -> bool {
        self.count_at(kind_index(kind) * SOURCES.len())
    }

    #[inline]
    fn count_at(&self, i: usize) -> bool {
        if self.recorder != current_recorder() {
            return false;
        }
        if let Some(counter) = self.decisions.get(i) {
            counter.increment(1);
        }
        true
    }
}

/// Counts one decision of `uid` with handles registered for it now (for a hit whose cached
/// handles belong to another recorder).
#[cold]
pub(crate) fn count_once(uid: &SharedString, outcome: Outcome, source: Source) {
    let (outcome, source) = (OUTCOMES[outcome_index(outcome)], SOURCES[source_index(source)]);
    metrics::counter!(DECISIONS, "throttle" => uid.clone(), "outcome" => outcome, "source" => source).increment(1);
}

/// Counts a refusal that shadow mode let through.
#[cold]
pub(crate) fn count_shadow_refusal(uid: &SharedString) {
    metrics::counter!(SHADOW_REFUSALS, "throttle" => uid.clone()).increment(1);
}

/// Counts a breaker's transition seen by `throttle` and sets its state gauge.
#[cold]
pub(crate) fn count_breaker_transition(throttle: &str, from: BreakerState, to: BreakerState) {
    metrics::counter!(
        BREAKER_TRANSITIONS,
        "throttle" => throttle.to_owned(),
        "from" => from.name(),
        "to" => to.name()
    )
    .increment(1);
    metrics::gauge!(BREAKER_STATE, "throttle" => throttle.to_owned()).set(f64::from(to.level()));
}

/// Counts a backend error that `throttle`'s error policy handled with `action`
/// (`failed_open`, `failed_closed`, `fallback`, `raised`).
#[cold]
pub(crate) fn count_backend_error(throttle: &str, error: &BackendError, action: &'static str) {
    let (backend, kind) = match error {
        BackendError::Connection { backend, .. } => (*backend, "connection"),
        BackendError::Timeout { backend, .. } => (*backend, "timeout"),
        BackendError::PoolExhausted { backend, .. } => (*backend, "pool_exhausted"),
        BackendError::Command { backend, .. } => (*backend, "command"),
        BackendError::Contention { backend, .. } => (*backend, "contention"),
        BackendError::Full { .. } => ("memory", "full"),
        BackendError::State(_) => ("unknown", "state"),
        BackendError::Closed { backend } => (*backend, "closed"),
        BackendError::Unsupported { backend, .. } => (*backend, "unsupported"),
    };
    metrics::counter!(
        BACKEND_ERRORS,
        "throttle" => throttle.to_owned(),
        "backend" => backend,
        "kind" => kind,
        "action" => action
    )
    .increment(1);
}

/// Records how long an awaited call to a backend of kind `backend` took (error or not).
pub(crate) fn record_backend_call(backend: &'static str, took: std::time::Duration) {
    metrics::histogram!(BACKEND_CALL_SECONDS, "backend" => backend).record(took.as_secs_f64());
}

/// Sets the live-keys gauge of the in-memory backend of `namespace`.
#[cold]
pub(crate) fn set_memory_keys(namespace: &str, keys: usize) {
    // A gauge is a float: exact up to 2^53 keys, far beyond any cap.
    #[allow(clippy::cast_precision_loss)]
    let keys = keys as f64;
    metrics::gauge!(MEMORY_KEYS, "namespace" => namespace.to_owned()).set(keys);
}

/// Counts an expired key replaced at the cap of the in-memory backend of `namespace`.
#[cold]
#[inline(never)]
pub(crate) fn count_memory_eviction(namespace: &str) {
    metrics::counter!(MEMORY_EVICTIONS, "namespace" => namespace.to_owned()).increment(1);
}

/// Counts a new key refused at the cap of the in-memory backend of `namespace`.
#[cold]
#[inline(never)]
pub(crate) fn count_memory_refusal(namespace: &str) {
    metrics::counter!(MEMORY_FULL_REFUSALS, "namespace" => namespace.to_owned()).increment(1);
}
