//! A throttle's configuration (swapped whole at run time) and the state shared by its clones.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::Rate;
use crate::backend::{Backend, InMemoryBackend, SharedBackend};
use crate::clock::Clock;
use crate::decision::{Decision, Outcome, Source};
use crate::functions::{Cost, RateSource};
use crate::headers::Headers;
use crate::identity::{ClientIp, Identifier};
use crate::key::Key;
use crate::policy::{ErrorPolicy, Incidents};
use crate::rules::RuleSet;
use crate::strategy::{Input, StrategyHandle, Verdict};

/// Where a throttle's backend comes from (builder state: the backend is set).
#[derive(Clone, Debug)]
pub enum BackendChoice {
    /// A fixed backend.
    Fixed(SharedBackend),
    /// The backend in scope ([`with_backend`](crate::with_backend)), per request.
    Context,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) rate: RateSource,
    pub(crate) strategy: StrategyHandle,
    pub(crate) backend: BackendChoice,
    pub(crate) cost: Cost,
    pub(crate) identifier: Arc<dyn Identifier>,
    pub(crate) min_wait: Duration,
    pub(crate) headers: Headers,
    pub(crate) on_error: Option<ErrorPolicy>,
    /// `on_error`, or else the fixed backend's policy, or else `throttle`; `None` only for
    /// context backends without an own policy (looked up per request).
    pub(crate) policy: Option<ErrorPolicy>,
    pub(crate) throttled_handler: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) scope: Vec<Arc<str>>,
    pub(crate) rules: RuleSet,
    pub(crate) hash_identities: bool,
    pub(crate) timeout: Duration,
    /// Set by [`Config::finalize`] when a plain hit needs nothing dynamic.
    pub(crate) fast: Option<FastPlan>,
    /// Decision counters, registered by [`Config::finalize`] with the recorder then in force.
    #[cfg(feature = "metrics")]
    pub(crate) counters: crate::telemetry::DecisionCounters,
}

/// The configuration most throttles have (client address, fixed rate and cost, no rules or
/// scopes, the in-memory backend, no circuit breaker), resolved to concrete types so that
/// [`Throttle::hit`] runs without dynamic dispatch. It makes exactly the decision the general
/// path would: same key, same backend call, same error handling (a backend error goes back to
/// the general path, which applies the policy).
#[derive(Clone)]
pub(crate) struct FastPlan {
    pub(super) client_ip: ClientIp,
    pub(super) memory: InMemoryBackend,
    pub(super) rate: Rate,
    pub(super) cost: u64,
}

impl Config {
    /// Derives what follows from the settings: the effective error policy, the fast plan and
    /// (feature `metrics`) the counters of the throttle named `uid`.
    pub(crate) fn finalize(&mut self, uid: &MetricUid) {
        self.policy = self.resolve_policy();
        self.fast = self.fast_plan();
        #[cfg(feature = "metrics")]
        {
            self.counters = crate::telemetry::DecisionCounters::register(uid);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = uid;
    }

    /// The decision for a verdict, with denied hits told to wait at least `min_wait`, marked as
    /// let through by shadow mode when `shadow`.
    #[inline]
    pub(crate) fn decision(&self, verdict: Verdict, key: Key, input: &Input, source: Source, shadow: bool) -> Decision {
        let mut decision = Decision::from_verdict(verdict, key, input.rate, input.cost, source, shadow, input.now_us);
        if decision.outcome == Outcome::Throttled && decision.wait < self.min_wait {
            decision.wait = self.min_wait;
        }
        decision
    }

    /// Completes a decision made by [`Decision::pending`] with the backend's verdict on a hit
    /// decided at `now_us`.
    #[inline]
    pub(crate) fn settle(&self, decision: &mut Decision, verdict: Verdict, source: Source, now_us: u64) {
        decision.settle(verdict, source, now_us);
        if decision.outcome == Outcome::Throttled && decision.wait < self.min_wait {
            decision.wait = self.min_wait;
        }
    }

    fn fast_plan(&self) -> Option<FastPlan> {
        let (RateSource::Fixed(rate), Cost::Fixed(cost), BackendChoice::Fixed(backend), Some(policy)) =
            (&self.rate, &self.cost, &self.backend, &self.policy)
        else {
            return None;
        };
        if rate.is_unlimited() || *cost == 0 || policy.breaker().is_some() {
            return None;
        }
        if !self.rules.is_empty() || !self.scope.is_empty() || self.hash_identities {
            return None;
        }
        // The concrete types, found once per configuration (no hook on the public traits).
        let identifier: &dyn Any = &*self.identifier;
        let backend: &dyn Any = &**backend;
        let memory = backend
            .downcast_ref::<InMemoryBackend>()
            .or_else(|| backend.downcast_ref::<Arc<InMemoryBackend>>().map(|b| &**b))?;
        Some(FastPlan {
            client_ip: identifier.downcast_ref::<ClientIp>()?.clone(),
            memory: memory.clone(),
            rate: *rate,
            cost: *cost,
        })
    }

    pub(crate) fn resolve_policy(&self) -> Option<ErrorPolicy> {
        match (&self.on_error, &self.backend) {
            (Some(p), _) => Some(p.clone()),
            (None, BackendChoice::Fixed(b)) => Some(b.on_error().map_or_else(ErrorPolicy::throttle, ErrorPolicy::from)),
            (None, BackendChoice::Context) => None,
        }
    }
}

pub(crate) struct ThrottleInner {
    pub(crate) uid: String,
    /// The uid, encoded once as the start of every key.
    pub(crate) key_prefix: Key,
    pub(crate) config: ArcSwap<Config>,
    /// Unique per throttle (never reused), naming it in the per-thread configuration cache.
    pub(crate) id: u64,
    /// Bumped after every configuration swap; per-thread caches compare it.
    pub(crate) generation: AtomicU64,
    /// Whether the current configuration has a [`FastPlan`].
    pub(crate) fast: AtomicBool,
    /// [`DISABLED`] and [`SHADOW`], in one word so that the shortcut reads both at once.
    pub(crate) flags: AtomicU8,
    /// Refusals shadow mode let through (hits only, not checks).
    pub(crate) shadow_refusals: AtomicU64,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) incidents: Incidents,
    /// The uid as a metric label value.
    pub(crate) metric_uid: MetricUid,
}

/// A uid as a metric label value (shared, so labels clone no string).
#[cfg(feature = "metrics")]
pub(crate) type MetricUid = metrics::SharedString;
/// Without the `metrics` feature there are no labels.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetricUid;

/// The label value of `uid`.
pub(crate) fn metric_uid(uid: &str) -> MetricUid {
    #[cfg(feature = "metrics")]
    {
        metrics::SharedString::from(std::sync::Arc::<str>::from(uid))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = uid;
        MetricUid
    }
}

/// [`ThrottleInner::flags`]: the throttle is disabled.
pub(crate) const DISABLED: u8 = 1;

/// [`ThrottleInner::flags`]: the throttle is in shadow mode.
pub(crate) const SHADOW: u8 = 2;

/// Source of [`ThrottleInner::id`] (0 marks an empty cache slot).
pub(crate) static NEXT_THROTTLE_ID: AtomicU64 = AtomicU64::new(1);
