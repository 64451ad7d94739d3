//! [`Throttle`]: identity → key → rate, cost → backend decision → error policy.

pub(crate) mod builder;

pub use builder::{BackendChoice, IntoRate, ThrottleBuilder};

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::Rate;
use crate::backend::{Backend, BoxFuture, InMemoryBackend, Mode, Operation, SharedBackend};
use crate::clock::{Clock, us};
use crate::context::Context;
use crate::decision::{Decision, Outcome, Skip, Source};
use crate::error::{BackendError, Error};
use crate::functions::{Cost, RateSource};
use crate::headers::Headers;
use crate::identity::{ClientIp, Identifier, Identity, RequestView};
use crate::key::Key;
use crate::policy::{ErrorPolicy, Failure, Incident, IncidentCounts, Incidents, PolicyKind, Recovery};
use crate::registry::ThrottleRegistry;
use crate::rules::{Rule, RuleSet};
use crate::stat::{Snapshot, Stat};
use crate::strategy::{Input, StrategyHandle, Verdict, VerdictKind};

tokio::task_local! {
    static CONTEXT_BACKEND: SharedBackend;
}

/// Runs `fut` with `backend` as the backend of every throttle built with
/// [`backend_from_context`](ThrottleBuilder::backend_from_context) (multi-tenant apps set it in
/// a middleware).
pub async fn with_backend<F: Future>(backend: SharedBackend, fut: F) -> F::Output {
    CONTEXT_BACKEND.scope(backend, fut).await
}

/// The backend set by [`with_backend`] for the current task, if any.
pub fn context_backend() -> Option<SharedBackend> {
    CONTEXT_BACKEND.try_with(Arc::clone).ok()
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
    client_ip: ClientIp,
    memory: InMemoryBackend,
    rate: Rate,
    cost: u64,
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
    pub(crate) fn decision(
        &self,
        verdict: Verdict,
        key: Key,
        rate: Rate,
        cost: u64,
        source: Source,
        shadow: bool,
    ) -> Decision {
        let mut decision = Decision::from_verdict(verdict, key, rate, cost, source, shadow);
        if decision.outcome == Outcome::Throttled && decision.wait < self.min_wait {
            decision.wait = self.min_wait;
        }
        decision
    }

    /// Completes a decision made by [`Decision::pending`] with the backend's verdict.
    #[inline]
    pub(crate) fn settle(&self, decision: &mut Decision, verdict: Verdict, source: Source) {
        decision.settle(verdict, source);
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
        Some(FastPlan {
            client_ip: self.identifier.as_client_ip()?.clone(),
            memory: backend.as_in_memory()?.clone(),
            rate: *rate,
            cost: *cost,
        })
    }

    pub(crate) fn resolve_policy(&self) -> Option<ErrorPolicy> {
        match (&self.on_error, &self.backend) {
            (Some(p), _) => Some(p.clone()),
            (None, BackendChoice::Fixed(b)) => Some(b.error_policy().unwrap_or_else(ErrorPolicy::throttle)),
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
    pub(crate) registry: Option<ThrottleRegistry>,
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

impl Drop for ThrottleInner {
    fn drop(&mut self) {
        if let Some(registry) = &self.registry {
            registry.forget_dead(&self.uid);
        }
    }
}

/// A rate limiter: one uid, rate, strategy and backend, applied per client identity.
///
/// Cheap to clone (clones share configuration and state); every setting can be swapped at
/// runtime without locks on the hit path. Each thread keeps a reference to the configuration of
/// the last four throttles it hit through [`hit`](Self::hit); a replaced configuration (with the
/// backend and strategy it names) is released once every such thread has hit the throttle again,
/// and a dropped throttle's once those threads have hit four other throttles or exited.
///
/// ```
/// use traffik::{rate, InMemoryBackend, RequestView, Throttle, strategy::FixedWindow};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), traffik::Error> {
/// let throttle = Throttle::builder()
///     .uid("doc-example")
///     .rate(rate!("2/min"))
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .no_registry()
///     .build()?;
/// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
/// assert!(throttle.hit(&req).await?.is_allowed());
/// assert!(throttle.hit(&req).await?.is_allowed());
/// let third = throttle.hit(&req).await?;
/// assert!(third.is_throttled());
/// assert!(third.retry_after_secs().is_some_and(|s| s <= 60));
/// # Ok(())
/// # }
/// ```
///
/// A throttle cannot be built before its uid, rate, backend and strategy are set:
///
/// ```compile_fail
/// use traffik::{rate, InMemoryBackend, Throttle};
/// let t = Throttle::builder().uid("x").rate(rate!("1/s")).backend(InMemoryBackend::new()).build();
/// ```
#[derive(Clone)]
pub struct Throttle {
    pub(crate) inner: Arc<ThrottleInner>,
}

static NO_CONTEXT: std::sync::LazyLock<Context> = std::sync::LazyLock::new(Context::new);

impl Throttle {
    /// Starts a builder.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder::new()
    }

    /// The throttle's uid.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// Checks and consumes quota for `req`.
    ///
    /// Not for use from a thread-local value's destructor: the common configuration's shortcut
    /// reads a thread-local cache, which may already be gone there (use
    /// [`hit_with`](Self::hit_with), which never reads it).
    pub async fn hit(&self, req: &RequestView<'_>) -> Result<Decision, Error> {
        self.run(req, &NO_CONTEXT, Mode::Consume).await
    }

    /// Checks and consumes quota with per-hit options (cost override, scope, values).
    pub async fn hit_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Decision, Error> {
        self.run(req, ctx, Mode::Consume).await
    }

    /// What a hit would get, without consuming anything.
    pub async fn check(&self, req: &RequestView<'_>) -> Result<Decision, Error> {
        self.run(req, &NO_CONTEXT, Mode::Peek).await
    }

    /// [`check`](Self::check) with per-hit options (cost override, scope, values).
    pub async fn check_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Decision, Error> {
        self.run(req, ctx, Mode::Peek).await
    }

    /// A snapshot of `req`'s quota: its figures, or why the request is not limited at all
    /// (disabled, exempted, unlimited, zero cost or not matched by the rules).
    pub async fn stat(&self, req: &RequestView<'_>) -> Result<Snapshot, Error> {
        self.stat_under(&self.inner.key_prefix, req, &NO_CONTEXT).await
    }

    /// [`stat`](Self::stat) with per-hit options (a cost or scope changes which key and cost
    /// the snapshot is for).
    pub async fn stat_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Snapshot, Error> {
        self.stat_under(&self.inner.key_prefix, req, ctx).await
    }

    /// [`stat`](Self::stat) for keys that start with `prefix` (a group's member keys).
    pub(crate) async fn stat_under(
        &self,
        prefix: &Key,
        req: &RequestView<'_>,
        ctx: &Context,
    ) -> Result<Snapshot, Error> {
        let config = self.inner.config.load_full();
        let prepared = match self.prepare(&config, prefix, req, ctx).await {
            Prepared::Skip(reason) => return Ok(Snapshot::Skipped { throttle: self.inner.uid.to_string(), reason }),
            Prepared::Go(p) => p,
        };
        let backend = self.backend(&config)?;
        let op = Operation { key: &prepared.key, strategy: &config.strategy, input: prepared.input, mode: Mode::Peek };
        let answer = match backend.stat_now(&op) {
            Some(answer) => answer,
            None => bounded(backend.kind(), config.timeout, backend.stat(op)).await,
        };
        let (verdict, metadata) = answer.map_err(|source| Error::Backend { uid: self.inner.uid.clone(), source })?;
        let (uid, strategy) = (self.uid(), &config.strategy);
        Ok(Snapshot::Limited(Stat::from_peek(uid, strategy, prepared.key, &prepared.input, verdict, metadata)))
    }

    async fn run(&self, req: &RequestView<'_>, ctx: &Context, mode: Mode) -> Result<Decision, Error> {
        // A plain hit (no per-hit context) on the common configuration.
        if mode == Mode::Consume && std::ptr::eq(ctx, &*NO_CONTEXT) {
            if self.inner.fast.load(Ordering::Acquire) {
                let mut failed = None;
                if let Some(decision) = self.try_fast(req, &mut failed) {
                    return Ok(decision);
                }
                if let Some((ready, error)) = failed {
                    // The backend refused the hit (nothing was applied): the error policy
                    // decides, without asking the backend a second time.
                    return Box::pin(self.recover_shortcut(ready, req, error)).await;
                }
            } else {
                self.forget_cached();
            }
        }
        let config = self.inner.config.load();
        let prefix = &self.inner.key_prefix;
        let prepared = match self.prepare_now(&config, prefix, req, ctx) {
            Some(p) => p,
            None => Box::pin(self.prepare(&config, prefix, req, ctx)).await,
        };
        let prepared = match prepared {
            Prepared::Skip(skip) => {
                if mode == Mode::Consume {
                    self.count(&config, Outcome::Skipped(skip), Source::None);
                }
                return Ok(Decision::skipped(skip));
            }
            Prepared::Go(p) => p,
        };
        let context_backend;
        let primary = match &config.backend {
            BackendChoice::Fixed(b) => b,
            BackendChoice::Context => {
                context_backend = self.backend(&config)?;
                &context_backend
            }
        };
        let op = Operation { key: &prepared.key, strategy: &config.strategy, input: prepared.input, mode };
        // Fast path: a backend that answers without awaiting and a policy without a breaker.
        // (Only asked when the fast path applies: asking applies the hit.)
        let quick = match &config.policy {
            Some(policy) if policy.breaker().is_none() => primary.decide_now(&op),
            _ => None,
        };
        let resolved = match quick {
            Some(Ok(v)) => Resolved::Verdict(v, Source::Backend),
            Some(Err(e)) => {
                let policy = config.policy.as_ref().map_or_else(ErrorPolicy::throttle, ErrorPolicy::clone);
                Box::pin(self.recover(&policy, &config, primary, &Single(op), req, e)).await?
            }
            None => Box::pin(self.decide(&config, primary, &Single(op), req)).await?,
        };
        Ok(self.conclude(&config, prepared, resolved, ctx.is_shadow(), mode))
    }

    /// The denial event of the shortcut (never in shadow mode: shadow mode takes the general
    /// path), out of line and with plain arguments, so that the admitted path stays as it was.
    #[cold]
    #[inline(never)]
    fn fast_denial(&self, kind: VerdictKind, wait_us: u64) {
        let config = self.inner.config.load();
        let cost = config.fast.as_ref().map_or(0, |f| f.cost);
        let wait = if kind == VerdictKind::Deny { us(wait_us).max(config.min_wait) } else { Duration::ZERO };
        denial_event(&self.inner.uid, &config, kind.outcome(), Source::Backend, cost, wait);
    }

    /// Whether shadow mode (the throttle's, or `forced` for this hit) lets a verdict of `cost`
    /// through (a refusal or a delay); counts and logs a refusal on a hit.
    #[inline]
    fn shadowed(&self, kind: VerdictKind, wait_us: u64, cost: u64, forced: bool, mode: Mode) -> bool {
        kind != VerdictKind::Admit && (forced || self.is_shadow()) && self.let_through(kind, wait_us, cost, mode)
    }

    #[cold]
    #[inline(never)]
    fn let_through(&self, kind: VerdictKind, wait_us: u64, cost: u64, mode: Mode) -> bool {
        if mode == Mode::Consume && kind != VerdictKind::Delay {
            self.inner.shadow_refusals.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            crate::telemetry::count_shadow_refusal(&self.inner.metric_uid);
            shadow_refusal_event(&self.inner.uid, kind, cost, us(wait_us));
        }
        true
    }

    /// The error policy's answer to a backend failure on the shortcut path.
    #[cold]
    async fn recover_shortcut(
        &self,
        ready: Ready,
        req: &RequestView<'_>,
        error: BackendError,
    ) -> Result<Decision, Error> {
        let config = self.inner.config.load_full();
        let BackendChoice::Fixed(primary) = &config.backend else {
            return Err(Error::NoBackendInContext(self.inner.uid.clone()));
        };
        let op = Operation { key: &ready.key, strategy: &config.strategy, input: ready.input, mode: Mode::Consume };
        let policy = config.policy.as_ref().map_or_else(ErrorPolicy::throttle, ErrorPolicy::clone);
        let resolved = self.recover(&policy, &config, primary, &Single(op), req, error).await?;
        Ok(self.conclude(&config, ready, resolved, false, Mode::Consume))
    }

    /// The decision for a backend's (or an error policy's) answer, under shadow mode (the
    /// throttle's, or `forced` for this hit).
    fn conclude(
        &self,
        config: &Config,
        prepared: Ready,
        resolved: Resolved<Verdict>,
        forced: bool,
        mode: Mode,
    ) -> Decision {
        let (verdict, source) = match resolved {
            Resolved::Verdict(v, source) => (v, source),
            Resolved::Allow => {
                if mode == Mode::Consume {
                    self.count(config, Outcome::Allowed, Source::ErrorPolicy);
                }
                return Decision::failed_open(prepared.key, prepared.input.rate, prepared.input.cost);
            }
            Resolved::Throttle(wait) => {
                let v = Verdict::deny(0, crate::clock::to_us(wait.max(config.min_wait)), 0);
                (v, Source::ErrorPolicy)
            }
        };
        let (rate, cost) = (prepared.input.rate, prepared.input.cost);
        let shadow = self.shadowed(verdict.kind, verdict.wait_us, cost, forced, mode);
        let decision = config.decision(verdict, prepared.key, rate, cost, source, shadow);
        if mode == Mode::Consume {
            self.count(config, decision.outcome, source);
            if decision.is_refused() {
                denial_event(&self.inner.uid, config, decision.outcome, source, cost, decision.wait);
            }
        }
        decision
    }

    /// No shortcut any more: lets go of this thread's copy of an older configuration.
    #[cold]
    #[inline(never)]
    fn forget_cached(&self) {
        let _ = CONFIG_CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                cache.forget(self.inner.id);
            }
        });
    }

    /// Runs [`hit_fast`](Self::hit_fast) on this thread's cached copy of the configuration
    /// (no atomic read-modify-write on the hot path); `None` sends the hit down the general path.
    fn try_fast(&self, req: &RequestView<'_>, failed: &mut Option<(Ready, BackendError)>) -> Option<Decision> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        // `with`, not `try_with`: the fallible form costs about 10 ns per hit here (its result
        // is copied through one more layer). `with` panics only when called from a thread-local
        // destructor after this cache was destroyed, which `hit` documents.
        CONFIG_CACHE.with(|cache| {
            // Busy only if a clock or identifier re-entered a throttle: use the general path.
            let mut cache = cache.try_borrow_mut().ok()?;
            let config = cache.get(self.inner.id, generation, || self.inner.config.load_full())?;
            let fast = config.fast.as_ref()?;
            self.hit_fast(config, fast, req, failed)
        })
    }

    /// [`FastPlan`]'s hit: the steps of `prepare_now`, `finish` and the backend call for that
    /// configuration, on concrete types. `None`, with the key, input and error in `failed`,
    /// when the backend failed (nothing was applied: the in-memory backend fails only when it
    /// refuses a new key), so that the caller runs the error policy.
    #[inline]
    fn hit_fast(
        &self,
        config: &Config,
        fast: &FastPlan,
        req: &RequestView<'_>,
        failed: &mut Option<(Ready, BackendError)>,
    ) -> Option<Decision> {
        let flags = self.inner.flags.load(Ordering::Relaxed);
        if flags != 0 {
            if flags & DISABLED != 0 {
                self.count(config, Outcome::Skipped(Skip::Disabled), Source::None);
                return Some(Decision::skipped(Skip::Disabled));
            }
            // Shadow mode: the general path marks, counts and logs what it lets through, so
            // that the shortcut pays nothing for it.
            return None;
        }
        let mut key = self.inner.key_prefix.clone();
        fast.client_ip.identity(req).append_to(&mut key, false);
        let input = Input { now_us: self.inner.clock.now_us(), rate: fast.rate, cost: fast.cost };
        let prepared = fast.memory.prepare(&key, &config.strategy);
        match fast.memory.decide_prepared(prepared, &config.strategy, &input, Mode::Consume) {
            Ok(verdict) => {
                // Counted before the decision is built, so that it is built in place.
                #[cfg(feature = "metrics")]
                if !config.counters.count_verdict(verdict.kind) {
                    self.recount(verdict.kind.outcome(), Source::Backend);
                }
                if matches!(verdict.kind, VerdictKind::Deny | VerdictKind::Never) {
                    self.fast_denial(verdict.kind, verdict.wait_us);
                }
                Some(config.decision(verdict, key, fast.rate, fast.cost, Source::Backend, false))
            }
            Err(error) => {
                *failed = Some((Ready { key, input }, error));
                None
            }
        }
    }

    /// The in-memory backend of the common configuration's shortcut, if the configuration has it.
    pub(crate) fn planned_memory(config: &Config) -> Option<&InMemoryBackend> {
        config.fast.as_ref().map(|f| &f.memory)
    }

    /// For a plain hit on the common configuration ([`FastPlan`]): pushes onto `out` a pending
    /// decision holding the key (starting with `prefix`) the general path would build, and
    /// returns the input, without dynamic dispatch. The key is written where the decision
    /// stays, never moved. `None` (perhaps after pushing) when the shortcut does not apply or
    /// the throttle is disabled: the caller takes the general path.
    ///
    /// `like`: the first member's configuration and prefix, whose decision is `out[0]`. When
    /// both identify clients alike, the identity part of that key is copied rather than worked
    /// out and written again.
    #[inline]
    pub(crate) fn prepare_planned_into(
        &self,
        config: &Config,
        prefix: &Key,
        req: &RequestView<'_>,
        like: Option<(&Config, &Key)>,
        now_us: Option<u64>,
        out: &mut Vec<Decision>,
    ) -> Option<Input> {
        let fast = config.fast.as_ref()?;
        if self.is_disabled() {
            return None;
        }
        out.push(Decision::pending(prefix.clone(), fast.rate, fast.cost));
        let at = out.len().checked_sub(1)?;
        let (earlier, last) = out.split_at_mut(at);
        let key = last.first_mut()?.key.as_mut()?;
        let same = like.and_then(|(other, other_prefix)| {
            let other_fast = other.fast.as_ref()?;
            let other_key = earlier.first()?.key.as_ref()?;
            let identity = other_key.as_bytes().get(other_prefix.as_bytes().len()..)?;
            fast.client_ip.same_as(&other_fast.client_ip).then_some(identity)
        });
        match same {
            Some(identity) => key.text_mut().push_ascii(identity),
            None => fast.client_ip.identity(req).append_to(key, false),
        }
        let now_us = now_us.unwrap_or_else(|| self.inner.clock.now_us());
        Some(Input { now_us, rate: fast.rate, cost: fast.cost })
    }

    /// Whether this throttle and `other` read the very same clock.
    pub(crate) fn same_clock(&self, other: &Throttle) -> bool {
        Arc::ptr_eq(&self.inner.clock, &other.inner.clock)
    }

    /// The throttle's clock, now.
    pub(crate) fn now_us(&self) -> u64 {
        self.inner.clock.now_us()
    }

    /// Resolves identity, rate, cost and key without awaiting, when every piece allows it.
    #[inline]
    fn prepare_now(&self, config: &Config, prefix: &Key, req: &RequestView<'_>, ctx: &Context) -> Option<Prepared> {
        if self.is_disabled() {
            return Some(Prepared::Skip(Skip::Disabled));
        }
        if !config.rules.is_empty() && !config.rules.allows_now(req, ctx)? {
            return Some(Prepared::Skip(Skip::Rules));
        }
        let identity = config.identifier.identify_now(req, ctx)?;
        let rate = config.rate.resolve_now(req, ctx)?;
        let cost = config.cost.resolve_now(req, ctx)?;
        Some(self.finish(config, prefix, ctx, identity, rate, cost))
    }

    /// Resolves identity, rate, cost and key (starting with `prefix`: the throttle's uid, or a
    /// group's member prefix).
    pub(crate) async fn prepare(
        &self,
        config: &Config,
        prefix: &Key,
        req: &RequestView<'_>,
        ctx: &Context,
    ) -> Prepared {
        if self.is_disabled() {
            return Prepared::Skip(Skip::Disabled);
        }
        if !config.rules.is_empty() && !config.rules.allows(req, ctx).await {
            return Prepared::Skip(Skip::Rules);
        }
        let identity = match config.identifier.identify_now(req, ctx) {
            Some(id) => id,
            None => config.identifier.identify(req, ctx).await,
        };
        let rate = config.rate.resolve(req, ctx).await;
        let cost = config.cost.resolve(req, ctx).await;
        self.finish(config, prefix, ctx, identity, rate, cost)
    }

    #[inline]
    fn finish(
        &self,
        config: &Config,
        prefix: &Key,
        ctx: &Context,
        identity: Identity,
        rate: Rate,
        cost: u64,
    ) -> Prepared {
        if identity == Identity::Exempted {
            return Prepared::Skip(Skip::Exempted);
        }
        if rate.is_unlimited() {
            return Prepared::Skip(Skip::Unlimited);
        }
        if cost == 0 {
            return Prepared::Skip(Skip::ZeroCost);
        }
        let mut key = identity.write_key(Key::from_encoded(prefix), config.hash_identities);
        for part in config.scope.iter().chain(ctx.scope_parts()) {
            key = key.part(part.as_bytes());
        }
        let input = Input { now_us: self.inner.clock.now_us(), rate, cost };
        Prepared::Go(Ready { key: key.build(), input })
    }

    pub(crate) fn backend(&self, config: &Config) -> Result<SharedBackend, Error> {
        match &config.backend {
            BackendChoice::Fixed(b) => Ok(Arc::clone(b)),
            BackendChoice::Context => {
                context_backend().ok_or_else(|| Error::NoBackendInContext(self.inner.uid.clone()))
            }
        }
    }

    /// Asks the backend, applying the error policy.
    pub(crate) async fn decide<A: Attempt>(
        &self,
        config: &Config,
        primary: &SharedBackend,
        attempt: &A,
        req: &RequestView<'_>,
    ) -> Result<Resolved<A::Output>, Error> {
        // Resolved once per configuration for fixed backends, so the hot path clones nothing.
        let looked_up;
        let policy = match &config.policy {
            Some(p) => p,
            None => {
                looked_up = primary.error_policy().unwrap_or_else(ErrorPolicy::throttle);
                &looked_up
            }
        };
        let timeout = config.timeout;
        if let Some(breaker) = policy.breaker()
            && !breaker.allow()
        {
            // Open circuit: the primary is not called at all.
            return Ok(match policy.failover_backend() {
                Some(fallback) => match attempt.run(fallback.as_ref(), timeout).await {
                    Ok(v) => Resolved::Verdict(v, Source::Fallback),
                    Err(_) => Resolved::Throttle(self.fail_wait(config)),
                },
                None => Resolved::Throttle(policy.open_wait().unwrap_or_else(|| self.fail_wait(config))),
            });
        }
        match attempt.run(primary.as_ref(), timeout).await {
            Ok(v) => {
                if let Some(b) = policy.breaker() {
                    b.record_success();
                }
                Ok(Resolved::Verdict(v, Source::Backend))
            }
            Err(e) => self.recover(policy, config, primary, attempt, req, e).await,
        }
    }

    pub(crate) fn fail_wait(&self, config: &Config) -> Duration {
        if config.min_wait.is_zero() { Duration::from_secs(1) } else { config.min_wait }
    }

    /// Applies `policy` to a call that failed (a retry policy's deadline counts from now).
    pub(crate) async fn recover<A: Attempt>(
        &self,
        policy: &ErrorPolicy,
        config: &Config,
        primary: &SharedBackend,
        attempt: &A,
        req: &RequestView<'_>,
        mut error: BackendError,
    ) -> Result<Resolved<A::Output>, Error> {
        let op = attempt.first();
        let now = op.input.now_us;
        let note = |e: &BackendError, what| self.inner.incidents.record(&self.inner.uid, e, what, now);
        let timeout = config.timeout;
        let mut policy = policy;
        loop {
            return match &policy.kind {
                PolicyKind::Allow => {
                    note(&error, Incident::FailedOpen);
                    Ok(Resolved::Allow)
                }
                PolicyKind::Throttle => {
                    note(&error, Incident::FailedClosed);
                    Ok(Resolved::Throttle(self.fail_wait(config)))
                }
                PolicyKind::Raise => {
                    note(&error, Incident::Raised);
                    Err(Error::Backend { uid: self.inner.uid.clone(), source: error })
                }
                PolicyKind::Custom(handler) => {
                    let failure = Failure {
                        error: &error,
                        uid: &self.inner.uid,
                        key: op.key,
                        rate: op.input.rate,
                        cost: op.input.cost,
                        backend: primary.kind(),
                        request: req,
                    };
                    match handler.handle(&failure).await {
                        Recovery::Allow => {
                            note(&error, Incident::FailedOpen);
                            Ok(Resolved::Allow)
                        }
                        Recovery::Throttle(wait) => {
                            note(&error, Incident::FailedClosed);
                            Ok(Resolved::Throttle(wait))
                        }
                        Recovery::Raise => {
                            note(&error, Incident::Raised);
                            Err(Error::Backend { uid: self.inner.uid.clone(), source: error })
                        }
                    }
                }
                PolicyKind::Fallback { backend, when } => {
                    if when.as_ref().is_some_and(|f| !f(&error)) {
                        note(&error, Incident::FailedClosed);
                        return Ok(Resolved::Throttle(self.fail_wait(config)));
                    }
                    Ok(self.fall_back(backend, attempt, timeout, &error, config).await)
                }
                PolicyKind::Retry { retry, then } => {
                    let deadline = tokio::time::Instant::now().checked_add(retry.deadline_span());
                    let again = Again {
                        max: retry.max_retries_count(),
                        accepts: &|e: &BackendError| retry.accepts(e),
                        pause: &|tries| retry.delay_for(tries),
                    };
                    match again.run(attempt, primary, timeout, deadline, error).await {
                        Ok(v) => {
                            if let Some(b) = then.breaker() {
                                b.record_success();
                            }
                            return Ok(Resolved::Verdict(v, Source::Backend));
                        }
                        Err(e) => error = e,
                    }
                    policy = then;
                    continue;
                }
                PolicyKind::Failover(f) => {
                    let deadline = tokio::time::Instant::now().checked_add(f.deadline_span());
                    let again = Again {
                        max: f.max_retries_count(),
                        accepts: &BackendError::is_transient,
                        pause: &|_| f.delay(),
                    };
                    match again.run(attempt, primary, timeout, deadline, error).await {
                        Ok(v) => {
                            f.breaker_ref().record_success();
                            Ok(Resolved::Verdict(v, Source::Backend))
                        }
                        Err(e) => {
                            f.breaker_ref().record_failure();
                            Ok(self.fall_back(f.backend_ref(), attempt, timeout, &e, config).await)
                        }
                    }
                }
                PolicyKind::Breaker { breaker, wait } => {
                    breaker.record_failure();
                    note(&error, Incident::FailedClosed);
                    Ok(Resolved::Throttle(*wait))
                }
            };
        }
    }

    async fn fall_back<A: Attempt>(
        &self,
        backend: &SharedBackend,
        attempt: &A,
        timeout: Duration,
        error: &BackendError,
        config: &Config,
    ) -> Resolved<A::Output> {
        let now = attempt.first().input.now_us;
        match attempt.run(backend.as_ref(), timeout).await {
            Ok(v) => {
                self.inner.incidents.record(&self.inner.uid, error, Incident::Fallback, now);
                Resolved::Verdict(v, Source::Fallback)
            }
            Err(second) => {
                self.inner.incidents.record(&self.inner.uid, &second, Incident::FailedClosed, now);
                Resolved::Throttle(self.fail_wait(config))
            }
        }
    }

    /// Disables the throttle: hits are skipped until [`enable`](Self::enable).
    pub fn disable(&self) {
        self.inner.flags.fetch_or(DISABLED, Ordering::Relaxed);
    }

    /// Re-enables the throttle.
    pub fn enable(&self) {
        self.inner.flags.fetch_and(!DISABLED, Ordering::Relaxed);
    }

    /// Counts a hit's decision (feature `metrics`); when another recorder has taken over since
    /// the configuration registered its counters, counts it there and registers them again.
    #[inline]
    fn count(&self, config: &Config, outcome: Outcome, source: Source) {
        #[cfg(feature = "metrics")]
        if !config.counters.count(outcome, source) {
            self.recount(outcome, source);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (config, outcome, source);
    }

    #[cfg(feature = "metrics")]
    #[cold]
    #[inline(never)]
    fn recount(&self, outcome: Outcome, source: Source) {
        crate::telemetry::count_once(&self.inner.metric_uid, outcome, source);
        self.update(|_| {});
    }

    /// Whether the throttle is disabled.
    pub fn is_disabled(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & DISABLED != 0
    }

    /// Switches shadow mode on or off, effective from the next hit (lock-free).
    ///
    /// In shadow mode the throttle decides and stores exactly as when it enforces (a refused
    /// hit consumes nothing, an admitted one consumes its cost), but integrations refuse and
    /// hold nothing: a refusal ([`Outcome::Throttled`], [`Outcome::Never`]) or a delay
    /// ([`Outcome::Delayed`]) comes back with [`Decision::shadow`] set, and the request is
    /// served at once, with the headers of an allowed request and never `Retry-After`. Each
    /// refused hit is counted ([`shadow_refusals`](Self::shadow_refusals)) and logged at
    /// `debug` (the throttle's uid, the outcome, cost and wait; no identity or key). A backend
    /// failure that the error policy raises is still an `Err`. Inside a
    /// [`ThrottleGroup`](crate::ThrottleGroup) the group's own setting applies
    /// ([`ThrottleGroup::set_shadow`](crate::ThrottleGroup::set_shadow)), not the member's.
    ///
    /// ```
    /// use traffik::{rate, InMemoryBackend, RequestView, Throttle, strategy::FixedWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let throttle = Throttle::builder().uid("shadow-doc").rate(rate!("1/min"))
    ///     .backend(InMemoryBackend::new()).strategy(FixedWindow).shadow(true).no_registry().build()?;
    /// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
    /// assert!(throttle.hit(&req).await?.is_allowed());
    /// let second = throttle.hit(&req).await?;
    /// assert!(second.is_throttled() && second.shadow && !second.is_refused());
    /// assert_eq!(throttle.shadow_refusals(), 1);
    /// throttle.set_shadow(false); // enforce from now on
    /// assert!(throttle.hit(&req).await?.is_refused());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_shadow(&self, yes: bool) {
        if yes {
            self.inner.flags.fetch_or(SHADOW, Ordering::Relaxed);
        } else {
            self.inner.flags.fetch_and(!SHADOW, Ordering::Relaxed);
        }
    }

    /// Whether the throttle is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & SHADOW != 0
    }

    /// How many hits shadow mode let through that the throttle refused (alone, or through
    /// [`Context::shadow`]; not counting checks, nor hits through a group, which the group
    /// counts).
    pub fn shadow_refusals(&self) -> u64 {
        self.inner.shadow_refusals.load(Ordering::Relaxed)
    }

    fn update(&self, f: impl Fn(&mut Config)) {
        self.inner.config.rcu(|current| {
            let mut next = Config::clone(current);
            f(&mut next);
            next.finalize(&self.inner.metric_uid);
            next
        });
        // The flag follows the configuration that is current once it is stored (concurrent
        // updates may interleave; whoever stores last re-checks). A stale flag only picks the
        // slower path: the shortcut checks the plan of the configuration it reads.
        loop {
            let current = self.inner.config.load();
            self.inner.fast.store(current.fast.is_some(), Ordering::Release);
            if std::ptr::eq(&**current, &**self.inner.config.load()) {
                break;
            }
        }
        // After the swap: a thread that sees the new generation also sees the new configuration.
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// Swaps the rate.
    pub fn update_rate(&self, rate: Rate) {
        self.update(|c| c.rate = RateSource::Fixed(rate));
    }

    /// Swaps the rate source (e.g. a rate function).
    pub fn update_rate_source(&self, rate: RateSource) {
        self.update(|c| c.rate = rate.clone());
    }

    /// Swaps the strategy (state starts fresh: the strategy name is part of the key).
    pub fn update_strategy(&self, strategy: impl Into<StrategyHandle>) {
        let strategy = strategy.into();
        self.update(|c| c.strategy = strategy.clone());
    }

    /// Swaps the backend.
    pub fn update_backend(&self, backend: impl Backend) {
        let backend: SharedBackend = Arc::new(backend);
        self.update(|c| c.backend = BackendChoice::Fixed(Arc::clone(&backend)));
    }

    /// Swaps the cost.
    pub fn update_cost(&self, cost: Cost) {
        self.update(|c| c.cost = cost.clone());
    }

    /// Swaps the identifier.
    pub fn update_identifier(&self, identifier: impl Identifier) {
        let identifier: Arc<dyn Identifier> = Arc::new(identifier);
        self.update(|c| c.identifier = Arc::clone(&identifier));
    }

    /// Swaps the response headers.
    pub fn update_headers(&self, headers: Headers) {
        self.update(|c| c.headers = headers.clone());
    }

    /// Swaps the floor on the wait of denied hits.
    pub fn update_min_wait(&self, min_wait: Duration) {
        self.update(|c| c.min_wait = min_wait);
    }

    /// Swaps the error policy.
    pub fn update_error_policy(&self, policy: Option<ErrorPolicy>) {
        self.update(|c| c.on_error = policy.clone());
    }

    /// Swaps the throttled handler (a value of an integration's handler type).
    pub fn update_throttled_handler<H: crate::reply::RefusalHandler>(&self, handler: H) {
        let handler: Arc<dyn Any + Send + Sync> = Arc::new(handler);
        self.update(|c| c.throttled_handler = Some(Arc::clone(&handler)));
    }

    /// The throttled handler, if one of type `H` is set.
    pub fn throttled_handler<H: crate::reply::RefusalHandler>(&self) -> Option<Arc<H>> {
        let handler = self.inner.config.load().throttled_handler.clone()?;
        handler.downcast::<H>().ok()
    }

    /// Whether a throttled handler of any type is set (an integration that finds none of its
    /// own type can say that it ignores another's).
    pub fn has_throttled_handler(&self) -> bool {
        self.inner.config.load().throttled_handler.is_some()
    }

    /// The response headers.
    pub fn headers(&self) -> Headers {
        self.inner.config.load().headers.clone()
    }

    /// The current fixed rate, if the rate is not a function.
    pub fn rate(&self) -> Option<Rate> {
        match &self.inner.config.load().rate {
            RateSource::Fixed(r) => Some(*r),
            RateSource::Dynamic(_) => None,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> StrategyHandle {
        self.inner.config.load().strategy.clone()
    }

    /// The gating and bypass rules.
    pub fn rules(&self) -> Vec<Rule> {
        self.inner.config.load().rules.to_vec()
    }

    /// Adds gating or bypass rules.
    pub fn add_rules(&self, rules: impl IntoIterator<Item = Rule>) {
        let rules: Vec<Rule> = rules.into_iter().collect();
        self.update(|c| c.rules = c.rules.with(rules.iter().cloned()));
    }

    /// How this throttle handled backend failures so far.
    pub fn incidents(&self) -> IncidentCounts {
        self.inner.incidents.counts()
    }

    pub(crate) fn downgrade(&self) -> Weak<ThrottleInner> {
        Arc::downgrade(&self.inner)
    }
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.inner.config.load();
        f.debug_struct("Throttle")
            .field("uid", &self.inner.uid)
            .field("rate", &c.rate)
            .field("strategy", &c.strategy)
            .field("disabled", &self.is_disabled())
            .field("shadow", &self.is_shadow())
            .finish()
    }
}

pub(crate) struct Ready {
    pub(crate) key: Key,
    pub(crate) input: Input,
}

pub(crate) enum Prepared {
    Skip(Skip),
    Go(Ready),
}

/// Configurations this thread used recently, by throttle id and generation: reading one costs
/// no atomic read-modify-write, unlike loading from the `ArcSwap`. Each thread keeps at most
/// [`ConfigCache::SLOTS`] of them (the oldest is replaced), so a configuration that was swapped
/// out, or whose throttle was dropped, stays referenced by a thread until that thread reuses
/// the slot or exits.
struct ConfigCache {
    slots: [(u64, u64, Option<Arc<Config>>); ConfigCache::SLOTS],
    next: usize,
}

impl ConfigCache {
    const SLOTS: usize = 4;

    /// Drops the copy held for throttle `id`, if any.
    fn forget(&mut self, id: u64) {
        for slot in self.slots.iter_mut().filter(|s| s.0 == id) {
            *slot = (0, 0, None);
        }
    }

    /// The configuration of throttle `id` at `generation`, loading it on a miss.
    #[inline]
    fn get(&mut self, id: u64, generation: u64, load: impl FnOnce() -> Arc<Config>) -> Option<&Arc<Config>> {
        let i = match self.slots.iter().position(|s| s.0 == id) {
            Some(i) => {
                if self.slots[i].1 != generation {
                    self.slots[i] = (id, generation, Some(load()));
                }
                i
            }
            None => {
                let i = self.next;
                self.next = (i + 1) % Self::SLOTS;
                self.slots[i] = (id, generation, Some(load()));
                i
            }
        };
        self.slots[i].2.as_ref()
    }
}

thread_local! {
    static CONFIG_CACHE: RefCell<ConfigCache> =
        const { RefCell::new(ConfigCache { slots: [(0, 0, None), (0, 0, None), (0, 0, None), (0, 0, None)], next: 0 }) };
}

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

/// [`ThrottleInner::flags`]: the throttle is disabled.
pub(crate) const DISABLED: u8 = 1;
/// [`ThrottleInner::flags`]: the throttle is in shadow mode.
pub(crate) const SHADOW: u8 = 2;

/// Source of [`ThrottleInner::id`] (0 marks an empty cache slot).
pub(crate) static NEXT_THROTTLE_ID: AtomicU64 = AtomicU64::new(1);

/// A backend's answer as the error policy leaves it.
pub(crate) enum Resolved<T> {
    Verdict(T, Source),
    Allow,
    Throttle(Duration),
}

/// A decision the error policy may ask a backend for more than once (retries, fallbacks): one
/// operation, or a group's.
pub(crate) trait Attempt: Sync {
    type Output: Send;

    /// Asks `backend`, bounded by `timeout`.
    fn run<'a>(
        &'a self,
        backend: &'a dyn Backend,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Self::Output, BackendError>>;

    /// The operation a custom error handler is told about (a group's first).
    fn first(&self) -> Operation<'_>;
}

/// One operation.
pub(crate) struct Single<'o>(pub(crate) Operation<'o>);

impl Attempt for Single<'_> {
    type Output = Verdict;

    fn run<'a>(&'a self, backend: &'a dyn Backend, timeout: Duration) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(call(backend, self.0, timeout))
    }

    fn first(&self) -> Operation<'_> {
        self.0
    }
}

/// One backend call, synchronous when the backend allows, otherwise bounded by `timeout`.
async fn call(backend: &dyn Backend, op: Operation<'_>, timeout: Duration) -> Result<Verdict, BackendError> {
    if let Some(result) = backend.decide_now(&op) {
        return result;
    }
    bounded(backend.kind(), timeout, backend.decide(op)).await
}

/// Calls of the primary again after a failure (a retry policy's, a failover's).
struct Again<'p> {
    /// At most this many.
    max: u32,
    /// While the last error is one of these.
    accepts: &'p (dyn Fn(&BackendError) -> bool + Sync),
    /// Pausing this long before retry number `n` (0-based).
    pause: &'p (dyn Fn(u32) -> Duration + Sync),
}

impl Again<'_> {
    /// The first success, or the last error. A retry starts only before `deadline` (none: a
    /// deadline too far to represent), and its call is cut off at it.
    async fn run<A: Attempt>(
        &self,
        attempt: &A,
        primary: &SharedBackend,
        timeout: Duration,
        deadline: Option<tokio::time::Instant>,
        mut error: BackendError,
    ) -> Result<A::Output, BackendError> {
        let mut tries = 0;
        while tries < self.max && (self.accepts)(&error) {
            let pause = (self.pause)(tries);
            let Some(left) = time_left(deadline, pause) else {
                break;
            };
            tokio::time::sleep(pause).await;
            tries += 1;
            match attempt.run(primary.as_ref(), timeout.min(left)).await {
                Ok(v) => return Ok(v),
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

/// What is left of `deadline` after a pause of `pause` from now, in whole milliseconds (the
/// timer's resolution, so a call cut off at it never ends past the deadline); `None` when
/// nothing is. No deadline leaves all the time there is.
fn time_left(deadline: Option<tokio::time::Instant>, pause: Duration) -> Option<Duration> {
    let Some(deadline) = deadline else {
        return Some(Duration::MAX);
    };
    let left = deadline.checked_duration_since(tokio::time::Instant::now().checked_add(pause)?)?;
    let whole = Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
    (!whole.is_zero()).then_some(whole)
}

/// Awaits a backend call for at most `timeout`. Outside a Tokio runtime there is no timer to
/// bound it with (and asking for one would panic), so the call is awaited as is.
pub(crate) async fn bounded<T>(
    backend: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return fut.await;
    }
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Timeout { backend, after: timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::FixedWindow;

    fn throttle() -> Throttle {
        Throttle::builder()
            .uid("plan")
            .rate(Rate::per_millis(5, 1000).unwrap_or_else(|_| Rate::unlimited()))
            .backend(InMemoryBackend::new())
            .strategy(FixedWindow)
            .no_registry()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn planned(t: &Throttle) -> bool {
        let has_plan = t.inner.config.load().fast.is_some();
        assert_eq!(has_plan, t.inner.fast.load(Ordering::Acquire), "flag and plan agree");
        has_plan
    }

    #[test]
    fn the_shortcut_is_planned_only_for_the_common_configuration() {
        let t = throttle();
        assert!(planned(&t), "client address, fixed rate and cost, in-memory backend");
        let generation = t.inner.generation.load(Ordering::Acquire);
        t.update_cost(Cost::Fixed(2));
        assert!(planned(&t));
        assert!(t.inner.generation.load(Ordering::Acquire) > generation, "every update bumps the generation");
        t.update_identifier(|_: &RequestView<'_>| Identity::Anonymous);
        assert!(!planned(&t), "custom identifier");
        t.update_identifier(ClientIp::new());
        assert!(planned(&t));
        t.update_rate(Rate::unlimited());
        assert!(!planned(&t), "unlimited rate");
        t.update_rate(Rate::per_millis(5, 1000).unwrap_or_else(|_| Rate::unlimited()));
        t.update_error_policy(Some(ErrorPolicy::circuit_breaker(
            crate::policy::CircuitBreaker::new(crate::policy::BreakerConfig::default()),
            Duration::from_secs(1),
        )));
        assert!(!planned(&t), "a breaker counts calls on the general path");
    }

    /// A stand-in for an integration's handler type.
    #[derive(Clone)]
    struct Marker(#[allow(dead_code)] Arc<()>);

    impl crate::reply::RefusalHandler for Marker {}

    #[tokio::test]
    async fn a_thread_lets_go_of_a_replaced_configuration() {
        let (first, second) = (Arc::new(()), Arc::new(()));
        let t = throttle();
        let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 1).into()));
        // Staying on the shortcut: the next plain hit replaces this thread's copy.
        t.update_throttled_handler(Marker(Arc::clone(&first)));
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        t.update_throttled_handler(Marker(Arc::clone(&second)));
        assert_eq!(Arc::strong_count(&first), 2, "the replaced configuration, cached by this thread");
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        assert_eq!(Arc::strong_count(&first), 1);
        // Leaving it: the next plain hit drops the copy.
        t.update_identifier(|_: &RequestView<'_>| Identity::Anonymous);
        t.update_throttled_handler(Marker(Arc::clone(&first)));
        assert_eq!(Arc::strong_count(&second), 2, "cached by this thread");
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        assert_eq!(Arc::strong_count(&second), 1);
    }
}
