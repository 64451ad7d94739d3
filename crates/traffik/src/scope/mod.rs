//! [`Scope`]: deferred quota. Costs are queued on one or more throttles while work runs and
//! charged at the end, all or nothing, as one group decision.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Backend, Mode, Operation, SharedBackend};
use crate::context::Context;
use crate::identity::RequestView;
use crate::key::Key;
use crate::policy::Retry;
use crate::rate::Rate;
use crate::stat::{Snapshot, Stat};
use crate::strategy::Input;
use crate::throttle::{Config, Prepared, Ready, Throttle, bounded};

mod apply;
mod outcome;

use apply::{check_backend, decide, operations};
pub use outcome::{Applied, Charge, EntryInfo, Queued, RunError, ScopeDecision, ScopeError, ScopeState};

/// Deferred quota: costs queued on throttles while work runs, charged at the end as one
/// all-or-nothing decision, or not at all.
///
/// A job of several steps (an export that reads, converts and uploads; a request that calls
/// three internal services) should be charged once it has succeeded, not step by step: a job
/// that fails half-way charges nothing, and a job that would exceed any of its limits charges
/// none of them. A scope collects the costs ([`add`](Self::add)), and
/// [`apply`](Self::apply) charges them all in one backend decision (the backend's group
/// decision: in memory under the shard locks of the keys involved, on Redis in one script, on
/// Memcached by compare-and-swap with compensation). [`run`](Self::run) does the work and
/// applies when it returns `Ok`; [`run_with`](Self::run_with) also applies on the errors you
/// choose.
///
/// ```
/// use traffik::{rate, InMemoryBackend, RequestView, Scope, Throttle, strategy::FixedWindow};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = InMemoryBackend::new();
/// let exports = Throttle::builder().uid("exports").rate(rate!("10/h"))
///     .backend(backend.clone()).strategy(FixedWindow).build()?;
/// let storage = Throttle::builder().uid("storage-calls").rate(rate!("100/h"))
///     .backend(backend).strategy(FixedWindow).build()?;
/// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
///
/// let scope = Scope::new();
/// let rows = scope
///     .run(async {
///         scope.add(&exports, &req).await?;         // one export
///         for _ in 0..3 {
///             scope.add(&storage, &req).await?;     // three storage calls: one entry of cost 3
///         }
///         Ok::<_, traffik::ScopeError>(42)           // the job's result
///     })
///     .await?;
/// assert_eq!(rows, 42);
/// assert_eq!(storage.stat(&req).await?.limited().map(|s| s.used), Some(3));
/// # Ok(())
/// # }
/// ```
///
/// # What an entry captures
///
/// [`add`](Self::add) resolves the throttle's rules, identity, rate, cost and key from the
/// request and [`Context`] at once, so the scope does not borrow the request and can outlive
/// it. A request the throttle does not limit (disabled, exempted, unlimited, zero cost, not
/// matched by its rules) queues nothing ([`Queued::Skipped`]). The entry keeps the throttle's
/// configuration as it was then (strategy, rate); the time is read when the scope is applied.
/// An entry charges the throttle's own quota: the same state its [`Throttle::hit`] uses.
///
/// Consecutive entries on the same throttle and key (under the same configuration) aggregate
/// into one entry whose cost is their sum ([`entries`](Self::entries) shows them). When the
/// scope is applied, every entry on one key is decided as one operation of the summed cost,
/// consecutive or not.
///
/// Every entry of a scope must be on one backend (clones of a backend are the same backend;
/// two in-memory backends are the same only if they share their store): an entry on another
/// is refused when it is added ([`ScopeError::OtherBackend`]). A scope with one key works on
/// any backend; more keys need [`Backend::decide_group`] (the in-memory, Redis and Memcached
/// backends have it; see [`GroupOperation::tag`](crate::backend::GroupOperation::tag) for what
/// a custom backend must do). On Redis Cluster the keys of one decision must share a hash slot,
/// which a throttle's own keys do only for one key: apply a scope of several keys on a
/// standalone server.
///
/// # Applying, cancelling, dropping
///
/// - [`apply`](Self::apply) charges every entry or none. Admitted, the scope is
///   [`ScopeState::Applied`]. Refused ([`ScopeError::Refused`], with every entry's decision:
///   what a retry after [`ScopeDecision::wait`] needs), or failed on the backend after the
///   retries ([`ScopeError::Backend`]), nothing is charged and the scope stays open: apply it
///   again later, or cancel it. A refusal is an answer and is never retried.
/// - [`cancel`](Self::cancel) discards the entries. Dropping an open scope does the same:
///   nothing is charged until a scope is applied.
/// - Using a scope after it was applied, cancelled or merged is a typed error
///   ([`ScopeError::Closed`]).
/// - The throttles' error policies are not consulted: the work is done, and whether to deliver
///   it when the charge fails is the application's choice. A refusal is logged at `debug`
///   (`deferred quota scope refused`, with the binding throttle's uid); scope charges are not
///   counted in the decision metrics. A throttle's shadow mode does not
///   apply inside a scope either (as inside a group: one decision for every entry).
///
/// # Nested scopes
///
/// [`child`](Self::child) opens a scope whose entries join its parent's when the child is
/// applied (nothing is charged then; the parent charges them with its own). A child that is
/// cancelled or dropped adds nothing. The child inherits the parent's retry settings.
///
/// # Before applying
///
/// [`check`](Self::check) asks whether the whole scope would be admitted now, as one group and
/// consuming nothing; [`stat`](Self::stat) gives a snapshot per entry, for its queued cost. A
/// child answers for its own entries (they are not its parent's until merged).
///
/// # Retries
///
/// [`retry`](Self::retry) sets the scope's [`Retry`] (none by default), and
/// [`add_with_retry`](Self::add_with_retry) gives one entry its own. Since every entry is
/// charged in one backend call, that call is retried after a backend error while any entry's
/// settings allow another attempt (its count, its error filter, its deadline from the first
/// failure), pausing the longest backoff among them: no entry gets fewer retries than it asked
/// for. After the last attempt the error is [`ScopeError::Backend`] with the number of attempts.
/// Each call is bounded by the longest timeout among the entries' throttles (and by what is
/// left of the retry deadline).
///
/// # No locks
///
/// A scope holds no lock on any throttle while it is open: clients of the same throttles run
/// their scopes concurrently, and the backend's atomic group decision keeps them from
/// over-admitting together. (The entries of one scope are kept under a mutex of its own, held
/// for a few instructions and never across an `await`.)
pub struct Scope {
    inner: Arc<ScopeInner>,
}

struct ScopeInner {
    state: Mutex<State>,
    parent: Option<Arc<ScopeInner>>,
}

struct State {
    status: ScopeState,
    entries: Vec<Entry>,
    /// The retry settings in force: the entries' own, and the scope's default once an entry
    /// used it.
    retries: Vec<Retry>,
    /// The scope's default retry settings (for entries without their own).
    default_retry: Option<Retry>,
    /// Whether an entry without its own settings was queued (so the default is in force).
    default_used: bool,
}

#[derive(Clone)]
struct Entry {
    throttle: Throttle,
    config: Arc<Config>,
    backend: SharedBackend,
    key: Key,
    rate: Rate,
    cost: u64,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::new()
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Scope")
            .field("state", &state.status)
            .field("entries", &state.entries.len())
            .field("child", &self.inner.parent.is_some())
            .finish()
    }
}

impl Scope {
    /// An open, empty scope without retries.
    pub fn new() -> Self {
        Scope::open(None, None)
    }

    fn open(parent: Option<Arc<ScopeInner>>, default_retry: Option<Retry>) -> Self {
        let state = State {
            status: ScopeState::Open,
            entries: Vec::new(),
            retries: Vec::new(),
            default_retry,
            default_used: false,
        };
        Scope { inner: Arc::new(ScopeInner { state: Mutex::new(state), parent }) }
    }

    /// The retry settings of entries queued without their own (from now on). See the type's
    /// docs, "Retries".
    #[must_use]
    pub fn retry(self, retry: Retry) -> Self {
        self.inner.state.lock().default_retry = Some(retry);
        self
    }

    /// Queues the throttle's cost for `req` (see the type's docs for what is captured).
    pub async fn add(&self, throttle: &Throttle, req: &RequestView<'_>) -> Result<Queued, ScopeError> {
        self.queue(throttle, req, &Context::new(), None).await
    }

    /// [`add`](Self::add) with per-hit options: a cost override, scope parts of the key, values
    /// for the throttle's functions.
    pub async fn add_with(
        &self,
        throttle: &Throttle,
        req: &RequestView<'_>,
        ctx: &Context,
    ) -> Result<Queued, ScopeError> {
        self.queue(throttle, req, ctx, None).await
    }

    /// [`add_with`](Self::add_with), with retry settings of this entry's own.
    pub async fn add_with_retry(
        &self,
        throttle: &Throttle,
        req: &RequestView<'_>,
        ctx: &Context,
        retry: Retry,
    ) -> Result<Queued, ScopeError> {
        self.queue(throttle, req, ctx, Some(retry)).await
    }

    async fn queue(
        &self,
        throttle: &Throttle,
        req: &RequestView<'_>,
        ctx: &Context,
        retry: Option<Retry>,
    ) -> Result<Queued, ScopeError> {
        self.ensure_open()?;
        let config = throttle.inner.config.load_full();
        let Ready { key, input } = match throttle.prepare(&config, &throttle.inner.key_prefix, req, ctx).await {
            Prepared::Skip(skip) => return Ok(Queued::Skipped(skip)),
            Prepared::Go(ready) => ready,
        };
        let backend = throttle.backend(&config)?;
        let entry = Entry { throttle: throttle.clone(), config, backend, key, rate: input.rate, cost: input.cost };
        if let Some(other) = self.ancestor_backend() {
            check_backend(&entry, &other)?;
        }
        let mut state = self.inner.state.lock();
        if state.status != ScopeState::Open {
            return Err(ScopeError::Closed(state.status));
        }
        if let Some(first) = state.entries.first() {
            check_backend(&entry, &first.backend)?;
        }
        match retry {
            Some(r) => state.retries.push(r),
            None => state.default_used = true,
        }
        Ok(push(&mut state.entries, entry))
    }

    /// The backend of the first entry of the nearest ancestor that has one.
    fn ancestor_backend(&self) -> Option<SharedBackend> {
        let mut next = self.inner.parent.as_ref();
        while let Some(scope) = next {
            if let Some(first) = scope.state.lock().entries.first() {
                return Some(Arc::clone(&first.backend));
            }
            next = scope.parent.as_ref();
        }
        None
    }

    fn ensure_open(&self) -> Result<(), ScopeError> {
        match self.inner.state.lock().status {
            ScopeState::Open => Ok(()),
            other => Err(ScopeError::Closed(other)),
        }
    }

    /// The scope's state.
    pub fn state(&self) -> ScopeState {
        self.inner.state.lock().status
    }

    /// The queued entries, in order (consecutive identical costs aggregated).
    pub fn entries(&self) -> Vec<EntryInfo> {
        let state = self.inner.state.lock();
        state
            .entries
            .iter()
            .map(|e| EntryInfo {
                throttle: e.throttle.uid().to_owned(),
                key: e.key.clone(),
                rate: e.rate,
                cost: e.cost,
            })
            .collect()
    }

    /// How many entries are queued.
    pub fn len(&self) -> usize {
        self.inner.state.lock().entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A nested scope: its entries join this scope's when it is applied. Fails when this scope
    /// is no longer open.
    pub fn child(&self) -> Result<Scope, ScopeError> {
        let state = self.inner.state.lock();
        if state.status != ScopeState::Open {
            return Err(ScopeError::Closed(state.status));
        }
        Ok(Scope::open(Some(Arc::clone(&self.inner)), state.default_retry.clone()))
    }

    /// Discards the entries: nothing is charged, and the scope cannot be used again.
    pub fn cancel(&self) -> Result<(), ScopeError> {
        let mut state = self.inner.state.lock();
        if state.status != ScopeState::Open {
            return Err(ScopeError::Closed(state.status));
        }
        state.status = ScopeState::Cancelled;
        state.entries = Vec::new();
        Ok(())
    }

    /// Whether the whole scope would be admitted now, as one group decision that consumes
    /// nothing (retried like [`apply`](Self::apply) after a backend error). A refusal is an
    /// `Ok` decision here.
    pub async fn check(&self) -> Result<ScopeDecision, ScopeError> {
        let (entries, retries) = {
            let state = self.inner.state.lock();
            if state.status != ScopeState::Open {
                return Err(ScopeError::Closed(state.status));
            }
            (state.entries.clone(), state.policies())
        };
        decide(&entries, &retries, Mode::Peek).await
    }

    /// A snapshot per key of the scope, for the cost queued on it (nothing is charged).
    pub async fn stat(&self) -> Result<Vec<Snapshot>, ScopeError> {
        let entries = {
            let state = self.inner.state.lock();
            if state.status != ScopeState::Open {
                return Err(ScopeError::Closed(state.status));
            }
            state.entries.clone()
        };
        let mut out = Vec::new();
        for op in operations(&entries) {
            let entry = &entries[op.entry];
            let input = Input { now_us: entry.throttle.inner.clock.now_us(), rate: entry.rate, cost: op.cost };
            let operation = Operation { key: &entry.key, strategy: &entry.config.strategy, input, mode: Mode::Peek };
            let backend = &entry.backend;
            let answer = match backend.stat_now(&operation) {
                Some(answer) => answer,
                None => bounded(backend.kind(), entry.config.timeout, backend.stat(operation)).await,
            };
            let (verdict, metadata) = answer.map_err(|source| ScopeError::Backend { attempts: 1, source })?;
            let (uid, strategy) = (entry.throttle.uid(), &entry.config.strategy);
            out.push(Snapshot::Limited(Stat::from_peek(uid, strategy, entry.key.clone(), &input, verdict, metadata)));
        }
        Ok(out)
    }

    /// Charges every entry as one decision (a root scope), or merges the entries into the
    /// parent (a child scope). See the type's docs for what a refusal or a backend failure
    /// leaves.
    pub async fn apply(&self) -> Result<Applied, ScopeError> {
        let (entries, retries) = {
            let mut state = self.inner.state.lock();
            if state.status != ScopeState::Open {
                return Err(ScopeError::Closed(state.status));
            }
            if let Some(parent) = &self.inner.parent {
                return merge(&mut state, parent).map(|()| Applied::Merged);
            }
            state.status = ScopeState::Applying;
            (std::mem::take(&mut state.entries), state.policies())
        };
        // Put back in the open scope if this future is dropped before it ends (what the
        // backend did with a call in flight is unknown, as for any hit).
        let mut pending = Pending { scope: &self.inner, entries: Some(entries) };
        let result = decide(pending.entries.as_deref().unwrap_or_default(), &retries, Mode::Consume).await;
        match result {
            Ok(decision) if decision.is_allowed() => {
                pending.finish(ScopeState::Applied);
                Ok(Applied::Charged(decision))
            }
            Ok(decision) => {
                refusal_event(&decision);
                Err(ScopeError::Refused(Box::new(decision)))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `work`; applies the scope when it returns `Ok`, cancels it when it returns `Err`.
    /// The work usually queues the entries ([`add`](Self::add)) as it goes.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, RunError<T, E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.run_with(work, |_| false).await
    }

    /// [`run`](Self::run), also applying the scope when the work fails with an error that
    /// `apply_on` accepts (the work did something worth charging: a partial export, an upstream
    /// call that was made and failed after).
    pub async fn run_with<T, E, F, P>(&self, work: F, apply_on: P) -> Result<T, RunError<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        match work.await {
            Ok(output) => match self.apply().await {
                Ok(_) => Ok(output),
                Err(error) => Err(RunError::Apply { output, error }),
            },
            Err(work) if apply_on(&work) => match self.apply().await {
                Ok(_) => Err(RunError::Work(work)),
                Err(apply) => Err(RunError::Both { work, apply }),
            },
            Err(work) => {
                // Already closed (the work applied or cancelled it itself): nothing to do.
                let _ = self.cancel();
                Err(RunError::Work(work))
            }
        }
    }
}

impl State {
    /// The retry settings in force.
    fn policies(&self) -> Vec<Retry> {
        let mut all = self.retries.clone();
        if self.default_used
            && let Some(r) = &self.default_retry
        {
            all.push(r.clone());
        }
        all
    }
}

/// The `debug` event of a refused scope: the binding throttle, never the client.
#[cold]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn refusal_event(decision: &ScopeDecision) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        throttle = decision.binding_charge().map(|c| c.throttle.as_str()),
        outcome = crate::throttle::outcome_name(decision.outcome),
        wait_ms = u64::try_from(decision.wait.as_millis()).unwrap_or(u64::MAX),
        "deferred quota scope refused"
    );
}

/// The entries of an apply in flight, put back if it ends without charging them.
struct Pending<'s> {
    scope: &'s ScopeInner,
    entries: Option<Vec<Entry>>,
}

impl Pending<'_> {
    fn finish(&mut self, status: ScopeState) {
        self.entries = None;
        self.scope.state.lock().status = status;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(entries) = self.entries.take() {
            let mut state = self.scope.state.lock();
            state.entries = entries;
            state.status = ScopeState::Open;
        }
    }
}

/// Adds `entry` to `entries`, aggregating it into the last one when identical.
fn push(entries: &mut Vec<Entry>, entry: Entry) -> Queued {
    if let Some(last) = entries.last_mut()
        && Arc::ptr_eq(&last.throttle.inner, &entry.throttle.inner)
        && Arc::ptr_eq(&last.config, &entry.config)
        && last.key == entry.key
        && last.rate == entry.rate
    {
        last.cost = last.cost.saturating_add(entry.cost);
        return Queued::Aggregated { total: last.cost };
    }
    entries.push(entry);
    Queued::Added
}

/// Moves a child's entries and retry settings into its parent.
fn merge(child: &mut State, parent: &ScopeInner) -> Result<(), ScopeError> {
    let mut up = parent.state.lock();
    if up.status != ScopeState::Open {
        return Err(ScopeError::Closed(up.status));
    }
    if let (Some(first), Some(theirs)) = (child.entries.first(), up.entries.first()) {
        check_backend(first, &theirs.backend)?;
    }
    for entry in std::mem::take(&mut child.entries) {
        let _ = push(&mut up.entries, entry);
    }
    up.retries.append(&mut child.retries);
    // The child's default (inherited from the parent when the child was opened) stays in
    // force for the entries that used it.
    if child.default_used
        && let Some(r) = &child.default_retry
    {
        up.retries.push(r.clone());
    }
    child.status = ScopeState::Merged;
    Ok(())
}
