//! The typestate builder: `build()` exists only once uid, rate, backend and strategy are set.
//!
//! The types here are the builder's states ([`NoUid`], [`Uid`], [`NoRate`], [`RateSet`], ...)
//! and the sealed traits that mark a complete builder; they appear in
//! [`ThrottleBuilder`]'s type parameters, and users rarely need to name them.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::Throttle;
use super::config::{BackendChoice, Config, DISABLED, NEXT_THROTTLE_ID, SHADOW, ThrottleInner, metric_uid};
use crate::backend::{Backend, SharedBackend};
use crate::clock::Clock;
use crate::error::{ConfigError, Error};
use crate::functions::{AsyncFn, Cost, CostFn, RateSource, SyncFn};
use crate::headers::Headers;
use crate::identity::{ClientIp, Identifier, RequestView};
use crate::policy::{ErrorPolicy, Incidents};
use crate::registry::ThrottleRegistry;
use crate::rules::{Rule, RuleSet};
use crate::strategy::StrategyHandle;
use crate::{Context, Rate, RateError};

/// Builder state: no uid yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoUid;
/// Builder state: no rate yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRate;
/// Builder state: no backend yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBackend;
/// Builder state: no strategy yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStrategy;

/// Builder state: the uid is set.
#[derive(Clone, Debug)]
pub struct Uid(String);

/// Builder state: the rate is set (a parse error, if any, is reported by `build()`).
#[derive(Clone)]
pub struct RateSet(Result<RateSource, RateError>);

impl std::fmt::Debug for RateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(source) => f.debug_tuple("RateSet").field(source).finish(),
            Err(e) => f.debug_tuple("RateSet").field(e).finish(),
        }
    }
}

/// Keeps the marker traits closed: only this module's states implement them.
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Uid {}
    impl Sealed for super::RateSet {}
    impl Sealed for crate::throttle::BackendChoice {}
    impl Sealed for crate::strategy::StrategyHandle {}
}

/// Marks a builder whose uid is set.
#[diagnostic::on_unimplemented(
    message = "the throttle has no uid yet",
    label = "`build()` needs a uid",
    note = "call `.uid(\"...\")` before `.build()`"
)]
pub trait HasUid: sealed::Sealed {
    #[doc(hidden)]
    fn take(self) -> String;
}
impl HasUid for Uid {
    fn take(self) -> String {
        self.0
    }
}

/// Marks a builder whose rate is set.
#[diagnostic::on_unimplemented(
    message = "the throttle has no rate yet",
    label = "`build()` needs a rate",
    note = "call `.rate(rate!(\"100/min\"))` (or `.rate_fn(...)`) before `.build()`"
)]
pub trait HasRate: sealed::Sealed {
    #[doc(hidden)]
    fn take(self) -> Result<RateSource, RateError>;
}
impl HasRate for RateSet {
    fn take(self) -> Result<RateSource, RateError> {
        self.0
    }
}

/// Marks a builder whose backend is set.
#[diagnostic::on_unimplemented(
    message = "the throttle has no backend yet",
    label = "`build()` needs a backend",
    note = "call `.backend(InMemoryBackend::new())` or `.backend_from_context()` before `.build()`"
)]
pub trait HasBackend: sealed::Sealed {
    #[doc(hidden)]
    fn take(self) -> BackendChoice;
}
impl HasBackend for BackendChoice {
    fn take(self) -> BackendChoice {
        self
    }
}

/// Marks a builder whose strategy is set.
#[diagnostic::on_unimplemented(
    message = "the throttle has no strategy yet",
    label = "`build()` needs a strategy",
    note = "call `.strategy(FixedWindow)` (or another strategy) before `.build()`"
)]
pub trait HasStrategy: sealed::Sealed {
    #[doc(hidden)]
    fn take(self) -> StrategyHandle;
}
impl HasStrategy for StrategyHandle {
    fn take(self) -> StrategyHandle {
        self
    }
}

/// Builds a [`Throttle`]. Required: [`uid`](Self::uid), [`rate`](Self::rate),
/// [`backend`](Self::backend) and [`strategy`](Self::strategy); `build()` does not exist until
/// all four are set.
#[must_use]
#[derive(Clone)]
pub struct ThrottleBuilder<U = NoUid, R = NoRate, B = NoBackend, S = NoStrategy> {
    uid: U,
    rate: R,
    backend: B,
    strategy: S,
    opts: Options,
}

#[derive(Clone)]
struct Options {
    cost: Cost,
    identifier: Arc<dyn Identifier>,
    min_wait: Duration,
    headers: Headers,
    on_error: Option<ErrorPolicy>,
    throttled_handler: Option<Arc<dyn Any + Send + Sync>>,
    scope: Vec<Arc<str>>,
    hash_identities: bool,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    registry: Option<ThrottleRegistry>,
    rules: Vec<Rule>,
    disabled: bool,
    shadow: bool,
}

impl Throttle {
    /// A builder: set uid, rate, backend and strategy, then `build()`.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder::new()
    }
}

impl Default for ThrottleBuilder {
    fn default() -> Self {
        ThrottleBuilder::new()
    }
}

impl ThrottleBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        ThrottleBuilder {
            uid: NoUid,
            rate: NoRate,
            backend: NoBackend,
            strategy: NoStrategy,
            opts: Options {
                cost: Cost::Fixed(1),
                identifier: Arc::new(ClientIp::new()),
                min_wait: Duration::ZERO,
                headers: Headers::new(),
                on_error: None,
                throttled_handler: None,
                scope: Vec::new(),
                hash_identities: false,
                timeout: Duration::from_secs(1),
                clock: crate::clock::system(),
                registry: None,
                rules: Vec::new(),
                disabled: false,
                shadow: false,
            },
        }
    }
}

impl<U, R, B, S> ThrottleBuilder<U, R, B, S> {
    /// The throttle's unique id: its registry key and part of every storage key.
    pub fn uid(self, uid: impl Into<String>) -> ThrottleBuilder<Uid, R, B, S> {
        ThrottleBuilder {
            uid: Uid(uid.into()),
            rate: self.rate,
            backend: self.backend,
            strategy: self.strategy,
            opts: self.opts,
        }
    }

    /// The rate: a [`Rate`] (see [`rate!`](crate::rate!)) or a rate string, which is parsed here
    /// and reported by `build()` if invalid.
    pub fn rate(self, rate: impl IntoRate) -> ThrottleBuilder<U, RateSet, B, S> {
        let rate = RateSet(rate.into_rate().map(RateSource::Fixed));
        ThrottleBuilder { uid: self.uid, rate, backend: self.backend, strategy: self.strategy, opts: self.opts }
    }

    /// A per-request rate from a sync closure `Fn(&RequestView, &Context) -> Rate`.
    pub fn rate_fn<F>(self, f: F) -> ThrottleBuilder<U, RateSet, B, S>
    where
        F: Fn(&RequestView<'_>, &Context) -> Rate + Send + Sync + 'static,
    {
        self.rate_source(RateSource::Dynamic(Arc::new(SyncFn(f))))
    }

    /// A per-request rate from an async closure.
    pub fn rate_async<F, Fut>(self, f: F) -> ThrottleBuilder<U, RateSet, B, S>
    where
        F: Fn(&RequestView<'_>, &Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Rate> + Send + 'static,
    {
        self.rate_source(RateSource::Dynamic(Arc::new(AsyncFn(f))))
    }

    /// A rate source implementing [`RateFn`](crate::functions::RateFn) or a fixed rate.
    pub fn rate_source(self, source: RateSource) -> ThrottleBuilder<U, RateSet, B, S> {
        ThrottleBuilder {
            uid: self.uid,
            rate: RateSet(Ok(source)),
            backend: self.backend,
            strategy: self.strategy,
            opts: self.opts,
        }
    }

    /// The backend that stores state.
    pub fn backend(self, backend: impl Backend) -> ThrottleBuilder<U, R, BackendChoice, S> {
        self.shared_backend(Arc::new(backend))
    }

    /// A backend already behind an `Arc`.
    pub fn shared_backend(self, backend: SharedBackend) -> ThrottleBuilder<U, R, BackendChoice, S> {
        ThrottleBuilder {
            uid: self.uid,
            rate: self.rate,
            backend: BackendChoice::Fixed(backend),
            strategy: self.strategy,
            opts: self.opts,
        }
    }

    /// Resolve the backend per request from [`with_backend`](crate::with_backend) (the seed's
    /// `dynamic_backend`); a hit with none in scope fails with
    /// [`Error::NoBackendInContext`].
    pub fn backend_from_context(self) -> ThrottleBuilder<U, R, BackendChoice, S> {
        ThrottleBuilder {
            uid: self.uid,
            rate: self.rate,
            backend: BackendChoice::Context,
            strategy: self.strategy,
            opts: self.opts,
        }
    }

    /// The algorithm.
    pub fn strategy(self, strategy: impl Into<StrategyHandle>) -> ThrottleBuilder<U, R, B, StrategyHandle> {
        ThrottleBuilder {
            uid: self.uid,
            rate: self.rate,
            backend: self.backend,
            strategy: strategy.into(),
            opts: self.opts,
        }
    }

    /// Cost of every hit (default 1; 0 makes hits no-ops).
    pub fn cost(mut self, cost: u64) -> Self {
        self.opts.cost = Cost::Fixed(cost);
        self
    }

    /// Cost from a sync closure `Fn(&RequestView, &Context) -> u64`.
    pub fn cost_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestView<'_>, &Context) -> u64 + Send + Sync + 'static,
    {
        self.opts.cost = Cost::Dynamic(Arc::new(SyncFn(f)));
        self
    }

    /// Cost from an async closure.
    pub fn cost_async<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(&RequestView<'_>, &Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = u64> + Send + 'static,
    {
        self.opts.cost = Cost::Dynamic(Arc::new(AsyncFn(f)));
        self
    }

    /// Cost from any [`CostFn`].
    pub fn cost_source(mut self, f: impl CostFn) -> Self {
        self.opts.cost = Cost::Dynamic(Arc::new(f));
        self
    }

    /// Who a request is charged to (default: [`ClientIp`], the socket peer).
    pub fn identifier(mut self, identifier: impl Identifier) -> Self {
        self.opts.identifier = Arc::new(identifier);
        self
    }

    /// A floor on the wait of denied hits.
    pub fn min_wait(mut self, min_wait: Duration) -> Self {
        self.opts.min_wait = min_wait;
        self
    }

    /// Response headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.opts.headers = headers;
        self
    }

    /// What to do when the backend fails (default: the backend's policy, else throttle).
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.opts.on_error = Some(policy);
        self
    }

    /// The response for refused requests, as an integration's handler type
    /// (`traffik_poem::ThrottledHandler`, `traffik_salvo::ThrottledHandler`; see
    /// [`RefusalHandler`](crate::reply::RefusalHandler)).
    pub fn throttled_handler<H: crate::reply::RefusalHandler>(mut self, handler: H) -> Self {
        self.opts.throttled_handler = Some(Arc::new(handler));
        self
    }

    /// A static key part, so throttles sharing a uid can keep separate state.
    pub fn scope(mut self, part: impl Into<Arc<str>>) -> Self {
        self.opts.scope.push(part.into());
        self
    }

    /// Store a digest of each identity instead of the identity itself (privacy).
    pub fn hash_identities(mut self, yes: bool) -> Self {
        self.opts.hash_identities = yes;
        self
    }

    /// Longest wait for one backend call (default 1 s); slower calls are errors.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = timeout;
        self
    }

    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.opts.clock = Arc::new(clock);
        self
    }

    /// Registers the throttle in `registry` (by default it joins none): lookup by uid, rules
    /// and enable/disable through the registry, and a [`Error::DuplicateUid`](crate::Error)
    /// when another live throttle there has the same uid. `.registry(&GLOBAL_REGISTRY)` joins
    /// the process-wide one, as every throttle of the original library does.
    pub fn registry(mut self, registry: &ThrottleRegistry) -> Self {
        self.opts.registry = Some(registry.clone());
        self
    }

    /// Registers nowhere (the default; undoes an earlier [`registry`](Self::registry)).
    pub fn no_registry(mut self) -> Self {
        self.opts.registry = None;
        self
    }

    /// Gating or bypass rules.
    pub fn rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.opts.rules.extend(rules);
        self
    }

    /// Start disabled.
    pub fn disabled(mut self, yes: bool) -> Self {
        self.opts.disabled = yes;
        self
    }

    /// Start in shadow mode: decide and record as usual, refuse nothing (see
    /// [`Throttle::set_shadow`], which switches it at run time).
    pub fn shadow(mut self, yes: bool) -> Self {
        self.opts.shadow = yes;
        self
    }
}

impl<U, R, B, S> ThrottleBuilder<U, R, B, S> {
    /// Builds and registers the throttle. Exists only once uid, rate, backend and strategy are
    /// set (the compiler says which is missing).
    ///
    /// Fails on an invalid rate string, an empty or overlong uid, or a uid already registered
    /// by a live throttle in the same registry.
    pub fn build(self) -> Result<Throttle, Error>
    where
        U: HasUid,
        R: HasRate,
        B: HasBackend,
        S: HasStrategy,
    {
        let uid = self.uid.take();
        if uid.is_empty() || uid.len() > 128 {
            return Err(ConfigError::UidLength { len: uid.len(), max: 128 }.into());
        }
        let rate = self.rate.take()?;
        let strategy = self.strategy.take();
        crate::strategy::check_slots(&strategy, &rate)?;
        let o = self.opts;
        let mut config = Config {
            rate,
            strategy,
            backend: self.backend.take(),
            cost: o.cost,
            identifier: o.identifier,
            min_wait: o.min_wait,
            headers: o.headers,
            on_error: o.on_error,
            throttled_handler: o.throttled_handler,
            scope: o.scope,
            rules: RuleSet::new(o.rules),
            hash_identities: o.hash_identities,
            timeout: o.timeout,
            policy: None,
            fast: None,
            #[cfg(feature = "metrics")]
            counters: crate::telemetry::DecisionCounters::unregistered(),
        };
        let metric_uid = metric_uid(&uid);
        config.finalize(&metric_uid);
        let throttle = Throttle {
            inner: Arc::new(ThrottleInner {
                key_prefix: crate::key::Key::builder(&uid).build(),
                uid,
                id: NEXT_THROTTLE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                generation: std::sync::atomic::AtomicU64::new(0),
                fast: AtomicBool::new(config.fast.is_some()),
                config: ArcSwap::from_pointee(config),
                flags: std::sync::atomic::AtomicU8::new(
                    if o.disabled { DISABLED } else { 0 } | if o.shadow { SHADOW } else { 0 },
                ),
                shadow_refusals: std::sync::atomic::AtomicU64::new(0),
                clock: o.clock,
                incidents: Incidents::default(),
                metric_uid,
            }),
        };
        if let Some(registry) = &o.registry {
            registry.register(&throttle)?;
        }
        Ok(throttle)
    }
}

/// Values accepted by [`ThrottleBuilder::rate`].
pub trait IntoRate {
    /// Converts to a rate.
    fn into_rate(self) -> Result<Rate, RateError>;
}

impl IntoRate for Rate {
    fn into_rate(self) -> Result<Rate, RateError> {
        Ok(self)
    }
}

impl IntoRate for &str {
    fn into_rate(self) -> Result<Rate, RateError> {
        Rate::parse(self)
    }
}

impl IntoRate for String {
    fn into_rate(self) -> Result<Rate, RateError> {
        Rate::parse(&self)
    }
}
