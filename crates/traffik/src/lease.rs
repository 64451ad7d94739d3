//! Holding what a hit took for as long as the work runs: [`Permit`], from
//! [`Throttle::acquire`] and [`ThrottleGroup::acquire`](crate::ThrottleGroup::acquire).
//!
//! With the [`Concurrency`](crate::strategy::Concurrency) strategy an admission is a lease on a
//! slot that expires one lease time `T` (the rate's period) after it was taken. A permit keeps
//! it: every `T/3` a background task renews it (so a long upload keeps its slot), and when the
//! permit is dropped (the handler returned, panicked, or its future was cancelled) the lease is
//! released. A process that dies while holding leases stops renewing them, so its slots come
//! back at most `T` later, on every backend.
//!
//! The in-memory backend uses the same lease model as Redis and Memcached (not a bare counter):
//! one code path, the same property suites, and a slot taken by a permit that was leaked with
//! [`std::mem::forget`] still comes back after `T`. Releasing in memory is synchronous (in
//! `Drop`); on the other backends `Drop` spawns the release on the current tokio runtime (when
//! there is none, the lease simply expires), and [`Permit::release`] awaits it.
//!
//! A permit on a throttle with any other strategy holds nothing: acquiring is then a plain hit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Throttle;
use crate::backend::{Amend, Mode, Operation, SharedBackend};
use crate::clock::Clock;
use crate::context::Context;
use crate::decision::{Decision, Outcome, Source};
use crate::error::{BackendError, Error};
use crate::identity::RequestView;
use crate::key::Key;
use crate::policy::ErrorPolicy;
use crate::strategy::{Input, StrategyHandle, Verdict};
use crate::throttle::{Config, Prepared, Resolved, Single, bounded};

/// One lease a permit holds: where it lives and what identifies it.
pub(crate) struct LeaseRef {
    /// The throttle (or group member) that took it, for errors.
    pub(crate) uid: String,
    pub(crate) backend: SharedBackend,
    pub(crate) key: Key,
    pub(crate) strategy: StrategyHandle,
    pub(crate) input: Input,
    pub(crate) stamp: u64,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) timeout: Duration,
    /// The group's tag, for a group member's lease.
    pub(crate) tag: Option<String>,
    /// Set when a renewal found the lease gone (expired and pruned, or released elsewhere).
    lost: AtomicBool,
}

impl LeaseRef {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        uid: String,
        backend: SharedBackend,
        key: Key,
        strategy: StrategyHandle,
        input: Input,
        stamp: u64,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> Self {
        LeaseRef { uid, backend, key, strategy, input, stamp, clock, timeout, tag: None, lost: AtomicBool::new(false) }
    }

    fn op(&self) -> Operation<'_> {
        let input = Input { now_us: self.clock.now_us(), ..self.input };
        Operation { key: &self.key, strategy: &self.strategy, input, mode: Mode::Consume }
    }

    /// Applies `amend` to this lease, synchronously when the backend allows.
    async fn amend(&self, amend: Amend) -> Result<bool, BackendError> {
        let op = self.op();
        let tag = self.tag.as_deref();
        if let Some(done) = self.backend.amend_now(&op, amend, tag) {
            return done;
        }
        bounded(self.backend.kind(), self.timeout, self.backend.amend(op, amend, tag)).await
    }

    fn release_now(&self) -> Option<Result<bool, BackendError>> {
        self.backend.amend_now(&self.op(), Amend::Refund { charged_at_us: self.stamp }, self.tag.as_deref())
    }

    /// How often a held lease is renewed: a third of its lease time (at least 1 ms).
    fn every(&self) -> Duration {
        Duration::from_micros((self.input.rate.period_us() / 3).max(1_000))
    }
}

/// Renews `lease` every third of its lease time until it is lost or the task is aborted. A
/// failed renewal (backend down) is tried again at the next tick; the lease still has two
/// thirds of its time then.
async fn renew_loop(lease: Arc<LeaseRef>) {
    let every = lease.every();
    loop {
        tokio::time::sleep(every).await;
        match lease.amend(Amend::Renew { charged_at_us: lease.stamp }).await {
            Ok(true) | Err(_) => {}
            Ok(false) => {
                lease.lost.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// Leases held, with their renewal task.
struct Held {
    leases: Vec<Arc<LeaseRef>>,
    renewers: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    fn start(leases: Vec<Arc<LeaseRef>>) -> Option<Held> {
        if leases.is_empty() {
            return None;
        }
        // Without a runtime nothing renews: the leases expire after their lease time.
        let renewers = match tokio::runtime::Handle::try_current() {
            Ok(rt) => leases.iter().map(|l| rt.spawn(renew_loop(Arc::clone(l)))).collect(),
            Err(_) => Vec::new(),
        };
        Some(Held { leases, renewers })
    }

    fn stop(&mut self) {
        for task in self.renewers.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop();
        let mut pending = Vec::new();
        for lease in self.leases.drain(..) {
            // In memory: released right here. Elsewhere: in a task.
            if lease.release_now().is_none() {
                pending.push(lease);
            }
        }
        if pending.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for lease in pending {
                    // A failure leaves the lease to expire: nothing else can be done here.
                    let _ = lease.amend(Amend::Refund { charged_at_us: lease.stamp }).await;
                }
            });
        }
    }
}

/// What [`Throttle::acquire`] (a [`Decision`]) or
/// [`ThrottleGroup::acquire`](crate::ThrottleGroup::acquire) (a
/// [`GroupDecision`](crate::GroupDecision)) decided, holding the leases the admission took until
/// it is dropped or [released](Self::release). See the [module docs](self).
///
/// Check [`decision`](Self::decision) first: a refused permit holds nothing.
#[must_use = "dropping a permit releases its leases at once"]
pub struct Permit<D = Decision> {
    decision: D,
    held: Option<Held>,
}

impl<D: std::fmt::Debug> std::fmt::Debug for Permit<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("decision", &self.decision).field("leases", &self.leases()).finish()
    }
}

impl Permit<Decision> {
    /// Whether the request may go on: the decision allowed it (or shadow mode let it through).
    pub fn is_allowed(&self) -> bool {
        !self.decision.is_refused()
    }
}

impl Permit<crate::GroupDecision> {
    /// Whether the request may go on: every member allowed it (or shadow mode let it through).
    pub fn is_allowed(&self) -> bool {
        !self.decision.is_refused()
    }
}

impl<D> Permit<D> {
    pub(crate) fn new(decision: D, leases: Vec<Arc<LeaseRef>>) -> Self {
        Permit { decision, held: Held::start(leases) }
    }

    /// The decision the permit was acquired with.
    pub fn decision(&self) -> &D {
        &self.decision
    }

    /// Leases held (0 when refused, or for strategies without leases).
    pub fn leases(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.leases.len())
    }

    /// Whether a renewal found a lease gone (it expired before it could be renewed, e.g. the
    /// backend was unreachable for longer than two thirds of the lease time): its slot may be
    /// someone else's now. The permit stops renewing that lease.
    pub fn is_lost(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.leases.iter().any(|l| l.lost.load(Ordering::Acquire)))
    }

    /// Renews every lease now (the background task does it every third of the lease time):
    /// whether every lease was still held.
    pub async fn renew(&self) -> Result<bool, Error> {
        let mut all = true;
        for lease in self.held.iter().flat_map(|h| h.leases.iter()) {
            let renewed = lease
                .amend(Amend::Renew { charged_at_us: lease.stamp })
                .await
                .map_err(|source| Error::Backend { uid: lease.uid.clone(), source })?;
            if !renewed {
                lease.lost.store(true, Ordering::Release);
            }
            all &= renewed;
        }
        Ok(all)
    }

    /// Releases the leases now and waits for the backend: whether every lease was still held
    /// (`false`: one had expired). Dropping the permit does the same without waiting.
    pub async fn release(mut self) -> Result<bool, Error> {
        let Some(mut held) = self.held.take() else {
            return Ok(true);
        };
        held.stop();
        let leases = std::mem::take(&mut held.leases);
        let mut all = true;
        let mut failed = None;
        for lease in leases {
            match lease.amend(Amend::Refund { charged_at_us: lease.stamp }).await {
                Ok(released) => all &= released,
                Err(source) => failed = Some(Error::Backend { uid: lease.uid.clone(), source }),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }
}

/// The leases a group's verdicts took, if every member admitted (a group denied as a whole
/// took nothing, whatever its members would have answered).
pub(crate) fn group_leases(
    tag: &str,
    members: &[Throttle],
    configs: &[Arc<Config>],
    prepared: &[Prepared],
    primary: &SharedBackend,
    verdicts: &[Verdict],
    source: Source,
) -> Vec<Arc<LeaseRef>> {
    let mut out = Vec::new();
    if !verdicts.iter().all(Verdict::is_admitted) {
        return out;
    }
    let going = members.iter().zip(configs).zip(prepared).filter_map(|((m, c), p)| match p {
        Prepared::Go(ready) => Some((m, c, ready)),
        Prepared::Skip(_) => None,
    });
    for ((member, config, ready), v) in going.zip(verdicts) {
        if !leased(v) {
            continue;
        }
        let Some(backend) = holder(config, primary, source) else {
            continue;
        };
        let mut lease = LeaseRef::new(
            member.inner.uid.clone(),
            backend,
            ready.key.clone(),
            config.strategy.clone(),
            ready.input,
            v.lease_us,
            Arc::clone(&member.inner.clock),
            configs.first().map_or(config.timeout, |c| c.timeout),
        );
        lease.tag = Some(tag.to_owned());
        out.push(Arc::new(lease));
    }
    out
}

/// The backend that made a decision from `source`: the primary, or the error policy's
/// fallback.
pub(crate) fn holder(config: &Config, primary: &SharedBackend, source: Source) -> Option<SharedBackend> {
    match source {
        Source::Backend => Some(Arc::clone(primary)),
        Source::Fallback => {
            let looked_up;
            let policy = match &config.policy {
                Some(p) => p,
                None => {
                    looked_up = primary.on_error().map_or_else(ErrorPolicy::throttle, ErrorPolicy::from);
                    &looked_up
                }
            };
            policy.failover_backend().cloned()
        }
        Source::ErrorPolicy | Source::None => None,
    }
}

impl Throttle {
    /// Whether the throttle's strategy holds leases ([`Concurrency`](crate::strategy::Concurrency)),
    /// so that integrations [`acquire`](Self::acquire) and keep the permit until the request is
    /// done instead of [`hit`](Self::hit)ting. A custom strategy with leases is served by
    /// calling [`acquire`](Self::acquire) directly.
    pub fn holds_leases(&self) -> bool {
        self.inner.config.load().strategy.builtin() == Some(crate::strategy::Builtin::Concurrency)
    }

    /// A hit that holds what it took until the returned [`Permit`] is dropped: with the
    /// [`Concurrency`](crate::strategy::Concurrency) strategy, a lease on a slot, renewed in
    /// the background and released on drop (see [`lease`](crate::lease)). Any other strategy's
    /// permit holds nothing. Check [`Permit::decision`]: a refused permit holds nothing either.
    ///
    /// ```
    /// use traffik::{rate, InMemoryBackend, RequestView, Throttle, strategy::Concurrency};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let uploads = Throttle::builder()
    ///     .uid("uploads")
    ///     .rate(rate!("2/30s"))           // 2 in flight; a lease lives 30 s unless renewed
    ///     .backend(InMemoryBackend::new())
    ///     .strategy(Concurrency)
    ///     .build()?;
    /// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
    /// let first = uploads.acquire(&req).await?;
    /// let second = uploads.acquire(&req).await?;
    /// assert!(first.is_allowed() && second.is_allowed());
    /// assert!(!uploads.acquire(&req).await?.is_allowed());
    /// drop(first);                          // the handler finished
    /// assert!(uploads.acquire(&req).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(&self, req: &RequestView<'_>) -> Result<Permit, Error> {
        self.acquire_with(req, &Context::new()).await
    }

    /// [`acquire`](Self::acquire) with per-hit options (cost override, scope, values).
    pub async fn acquire_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Permit, Error> {
        let config = self.inner.config.load_full();
        let prepared = match self.prepare(&config, &self.inner.key_prefix, req, ctx).await {
            Prepared::Skip(skip) => {
                self.count(&config, Outcome::Skipped(skip), Source::None);
                return Ok(Permit::new(Decision::skipped(skip), Vec::new()));
            }
            Prepared::Go(p) => p,
        };
        let primary = self.backend(&config)?;
        let op =
            Operation { key: &prepared.key, strategy: &config.strategy, input: prepared.input, mode: Mode::Consume };
        let resolved = self.decide(&config, &primary, &Single(op), req).await?;
        let lease = match &resolved {
            Resolved::Verdict(v, source) if leased(v) => holder(&config, &primary, *source).map(|backend| {
                Arc::new(LeaseRef::new(
                    self.inner.uid.clone(),
                    backend,
                    prepared.key.clone(),
                    config.strategy.clone(),
                    prepared.input,
                    v.lease_us,
                    Arc::clone(&self.inner.clock),
                    config.timeout,
                ))
            }),
            _ => None,
        };
        let decision = self.conclude(&config, prepared, resolved, ctx.is_shadow(), Mode::Consume);
        Ok(Permit::new(decision, lease.into_iter().collect()))
    }
}

/// Whether a verdict took a lease.
pub(crate) fn leased(v: &Verdict) -> bool {
    v.is_admitted() && v.lease_us != 0
}
