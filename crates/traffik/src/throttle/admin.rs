//! A throttle's run-time switches and settings: enable/disable, shadow mode, `update_*` and
//! the read-back getters. Every change swaps the whole configuration (no lock on the hit path).

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Throttle;
use super::config::{BackendChoice, Config, DISABLED, SHADOW};
use crate::Rate;
use crate::backend::{Backend, SharedBackend};
use crate::functions::{Cost, RateSource};
use crate::headers::Headers;
use crate::identity::Identifier;
use crate::policy::{ErrorPolicy, IncidentCounts};
use crate::rules::Rule;
use crate::strategy::StrategyHandle;

impl Throttle {
    /// Disables the throttle: hits are skipped until [`enable`](Self::enable).
    pub fn disable(&self) {
        self.inner.flags.fetch_or(DISABLED, Ordering::Relaxed);
    }

    /// Re-enables the throttle.
    pub fn enable(&self) {
        self.inner.flags.fetch_and(!DISABLED, Ordering::Relaxed);
    }

    /// Whether the throttle is disabled.
    pub fn is_disabled(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & DISABLED != 0
    }

    /// Switches shadow mode on or off, effective from the next hit (lock-free).
    ///
    /// In shadow mode the throttle decides and stores exactly as when it enforces (a refused
    /// hit consumes nothing, an admitted one consumes its cost), but integrations refuse and
    /// hold nothing: a refusal ([`Outcome::Throttled`](crate::Outcome::Throttled), [`Outcome::Never`](crate::Outcome::Never)) or a delay
    /// ([`Outcome::Delayed`](crate::Outcome::Delayed)) comes back with [`Decision::shadow`](crate::Decision::shadow) set, and the request is
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
    ///     .backend(InMemoryBackend::new()).strategy(FixedWindow).shadow(true).build()?;
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
    /// [`Context::shadow`](crate::Context::shadow); not counting checks, nor hits through a group, which the group
    /// counts).
    pub fn shadow_refusals(&self) -> u64 {
        self.inner.shadow_refusals.load(Ordering::Relaxed)
    }

    pub(super) fn update(&self, f: impl Fn(&mut Config)) {
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
}
