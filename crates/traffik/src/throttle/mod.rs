//! [`Throttle`]: identity → key → rate, cost → backend decision → error policy.

mod admin;
pub(crate) mod builder;
mod config;
mod context_backend;
mod events;
mod prepare;
mod recovery;
mod refund;
mod shortcut;

pub use builder::ThrottleBuilder;
pub use config::BackendChoice;
#[cfg(feature = "metrics")]
pub(crate) use config::metric_uid;
pub(crate) use config::{Config, ThrottleInner};
pub use context_backend::{context_backend, with_backend};
#[cfg_attr(not(feature = "tracing"), allow(unused_imports))]
pub(crate) use events::{backend_kind, denial_event, outcome_name, shadow_refusal_event, source_name};
pub(crate) use prepare::{Prepared, Ready};
pub(crate) use recovery::{Attempt, Resolved, Single, bounded, time_left};
pub use refund::Settlement;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::backend::{Backend, Mode, Operation};
use crate::clock::us;
use crate::context::Context;
use crate::decision::{Decision, Outcome, Source};
use crate::error::Error;
use crate::functions::RateSource;
use crate::identity::RequestView;
use crate::key::Key;
use crate::policy::ErrorPolicy;
use crate::stat::{Snapshot, Stat};
use crate::strategy::{Verdict, VerdictKind};

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
    /// The throttle's uid.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// Checks and consumes quota for `req`: a future of the [`Decision`] (see [`Hit`]).
    ///
    /// Not for use from a thread-local value's destructor: the common configuration's shortcut
    /// reads a thread-local cache, which may already be gone there (use
    /// [`hit_with`](Self::hit_with), which never reads it).
    pub fn hit<'a>(&'a self, req: &'a RequestView<'_>) -> Hit<'a> {
        Hit { state: HitState::Start { throttle: self, req } }
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
        self.stat_under(&self.inner.key_prefix, None, req, &NO_CONTEXT).await
    }

    /// [`stat`](Self::stat) with per-hit options (a cost or scope changes which key and cost
    /// the snapshot is for).
    pub async fn stat_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Snapshot, Error> {
        self.stat_under(&self.inner.key_prefix, None, req, ctx).await
    }

    /// [`stat`](Self::stat) for keys that start with `prefix` (a group's member keys, decided
    /// under the group's `tag`).
    pub(crate) async fn stat_under(
        &self,
        prefix: &Key,
        tag: Option<&str>,
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
            None => match tag {
                Some(tag) => bounded(backend.kind(), config.timeout, backend.stat_member(op, tag)).await,
                None => bounded(backend.kind(), config.timeout, backend.stat(op)).await,
            },
        };
        let (verdict, mut metadata) =
            answer.map_err(|source| Error::Backend { uid: self.inner.uid.clone(), source })?;
        if let RateSource::Dynamic(source) = &config.rate {
            let described = source.describe(req, ctx);
            if !described.is_empty() {
                metadata.insert("source".into(), described.into());
            }
        }
        let (uid, strategy) = (self.uid(), &config.strategy);
        Ok(Snapshot::Limited(Stat::from_peek(uid, strategy, prepared.key, &prepared.input, verdict, metadata)))
    }

    /// A plain hit (no per-hit context) on the common configuration, decided without awaiting
    /// when it can be.
    fn shortcut(&self) -> bool {
        self.inner.fast.load(Ordering::Acquire)
    }

    async fn run(&self, req: &RequestView<'_>, ctx: &Context, mode: Mode) -> Result<Decision, Error> {
        if mode == Mode::Consume && std::ptr::eq(ctx, &*NO_CONTEXT) {
            return Hit { state: HitState::Start { throttle: self, req } }.await;
        }
        self.traced(req, ctx, mode).await
    }

    /// The general path, in a span per decision when tracing is on.
    async fn traced(&self, req: &RequestView<'_>, ctx: &Context, mode: Mode) -> Result<Decision, Error> {
        let config = self.inner.config.load();
        #[cfg(not(feature = "tracing"))]
        return self.general(&config, req, ctx, mode).await;
        // A span per decision on the general path (the shortcut above has none), with the
        // decision's outcome and source recorded when it is known.
        #[cfg(feature = "tracing")]
        {
            let span = tracing::debug_span!(
                "traffik.decision",
                throttle = &*self.inner.uid,
                strategy = config.strategy.name(),
                backend = backend_kind(&config.backend),
                mode = if mode == Mode::Consume { "hit" } else { "check" },
                outcome = tracing::field::Empty,
                source = tracing::field::Empty,
            );
            if span.is_disabled() {
                return self.general(&config, req, ctx, mode).await;
            }
            let decision = tracing::Instrument::instrument(self.general(&config, req, ctx, mode), span.clone()).await;
            if let Ok(d) = &decision {
                span.record("outcome", outcome_name(d.outcome));
                span.record("source", source_name(d.source));
            }
            decision
        }
    }

    /// The general path of a decision: prepare, ask the backend under the error policy,
    /// conclude.
    async fn general(
        &self,
        config: &Config,
        req: &RequestView<'_>,
        ctx: &Context,
        mode: Mode,
    ) -> Result<Decision, Error> {
        let prefix = &self.inner.key_prefix;
        let prepared = match self.prepare_now(config, prefix, req, ctx) {
            Some(p) => p,
            None => Box::pin(self.prepare(config, prefix, req, ctx)).await,
        };
        let prepared = match prepared {
            Prepared::Skip(skip) => {
                if mode == Mode::Consume {
                    self.count(config, Outcome::Skipped(skip), Source::None);
                }
                return Ok(Decision::skipped(skip));
            }
            Prepared::Go(p) => p,
        };
        let context_backend;
        let primary = match &config.backend {
            BackendChoice::Fixed(b) => b,
            BackendChoice::Context => {
                context_backend = self.backend(config)?;
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
                Box::pin(self.recover(&policy, config, primary, &Single(op), req, e)).await?
            }
            None => Box::pin(self.decide(config, primary, &Single(op), req)).await?,
        };
        Ok(self.conclude(config, prepared, resolved, ctx.is_shadow(), mode))
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

    /// The decision for a backend's (or an error policy's) answer, under shadow mode (the
    /// throttle's, or `forced` for this hit).
    pub(crate) fn conclude(
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
        let cost = prepared.input.cost;
        let shadow = self.shadowed(verdict.kind, verdict.wait_us, cost, forced, mode);
        let decision = config.decision(verdict, prepared.key, &prepared.input, source, shadow);
        if mode == Mode::Consume {
            self.count(config, decision.outcome, source);
            if decision.is_refused() {
                denial_event(&self.inner.uid, config, decision.outcome, source, cost, decision.wait);
            }
        }
        decision
    }

    /// Counts a hit's decision (feature `metrics`); when another recorder has taken over since
    /// the configuration registered its counters, counts it there and registers them again.
    #[inline]
    pub(crate) fn count(&self, config: &Config, outcome: Outcome, source: Source) {
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

/// The future of [`Throttle::hit`]. Small (a few words, whatever the throttle's configuration):
/// on the in-memory shortcut its first poll decides without awaiting; otherwise it boxes the
/// general path's future and drives it. Polled again after it completed, it stays pending.
#[must_use = "a hit does nothing unless it is awaited"]
pub struct Hit<'a> {
    state: HitState<'a>,
}

enum HitState<'a> {
    Start { throttle: &'a Throttle, req: &'a RequestView<'a> },
    Running(futures_core::future::BoxFuture<'a, Result<Decision, Error>>),
    Done,
}

impl fmt::Debug for Hit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            HitState::Start { .. } => "start",
            HitState::Running(_) => "running",
            HitState::Done => "done",
        };
        f.debug_struct("Hit").field("state", &state).finish()
    }
}

impl std::future::Future for Hit<'_> {
    type Output = Result<Decision, Error>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        if let HitState::Start { throttle, req } = this.state {
            let mut failed = None;
            if throttle.shortcut() {
                if let Some(decision) = throttle.try_fast(req, &mut failed) {
                    this.state = HitState::Done;
                    return Poll::Ready(Ok(decision));
                }
            } else {
                throttle.forget_cached();
            }
            this.state = HitState::Running(match failed {
                // The backend refused the hit (nothing was applied): the error policy decides,
                // without asking the backend a second time.
                Some((ready, error)) => Box::pin(throttle.recover_shortcut(ready, req, error)),
                None => Box::pin(throttle.traced(req, &NO_CONTEXT, Mode::Consume)),
            });
        }
        match &mut this.state {
            HitState::Running(future) => match future.as_mut().poll(cx) {
                Poll::Ready(answer) => {
                    this.state = HitState::Done;
                    Poll::Ready(answer)
                }
                Poll::Pending => Poll::Pending,
            },
            HitState::Start { .. } | HitState::Done => Poll::Pending,
        }
    }
}
