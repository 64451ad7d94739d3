//! [`Scope`]: deferred quota. Costs are queued on one or more throttles while work runs and
//! charged at the end, all or nothing, as one group decision.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use smallvec::SmallVec;

use crate::backend::{Backend, GroupOperation, InMemoryBackend, Mode, Operation, SharedBackend};
use crate::context::Context;
use crate::decision::{Decision, Outcome, Skip, Source};
use crate::error::{BackendError, Error};
use crate::identity::RequestView;
use crate::key::Key;
use crate::policy::Retry;
use crate::rate::Rate;
use crate::stat::{Snapshot, Stat};
use crate::strategy::{Input, Verdict};
use crate::throttle::{Config, Prepared, Ready, Throttle, bounded, time_left};

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
/// backends have it; see [`GroupOperation::tag`] for what a custom backend must do). On Redis
/// Cluster the keys of one decision must share a hash slot, which a throttle's own keys do only
/// for one key: apply a scope of several keys on a standalone server.
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

/// Where a scope is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeState {
    /// Taking entries.
    Open,
    /// [`Scope::apply`] is charging the entries.
    Applying,
    /// Charged: every entry was admitted.
    Applied,
    /// Cancelled: nothing was charged.
    Cancelled,
    /// A child scope whose entries joined its parent's.
    Merged,
}

impl std::fmt::Display for ScopeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScopeState::Open => "open",
            ScopeState::Applying => "being applied",
            ScopeState::Applied => "applied",
            ScopeState::Cancelled => "cancelled",
            ScopeState::Merged => "merged into its parent",
        })
    }
}

/// What [`Scope::add`] did with a cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Queued as a new entry.
    Added,
    /// Added to the previous entry (same throttle and key): its cost is now `total`.
    Aggregated {
        /// The entry's cost so far.
        total: u64,
    },
    /// The throttle does not limit this request: nothing was queued.
    Skipped(Skip),
}

/// One queued entry, as [`Scope::entries`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    /// The throttle's uid.
    pub throttle: String,
    /// The storage key (the throttle's own).
    pub key: Key,
    /// The rate resolved when the entry was queued.
    pub rate: Rate,
    /// The entry's cost (summed over the consecutive identical costs it aggregates).
    pub cost: u64,
}

/// What applying (or checking) a scope decided: one decision per key charged.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[must_use]
pub struct ScopeDecision {
    /// Allowed only if every entry was admitted; otherwise what the binding entry answered.
    pub outcome: Outcome,
    /// The binding entry's wait: the longest among the refused entries, so that applying again
    /// after it passes every one of them.
    #[serde(with = "crate::decision::millis")]
    pub wait: Duration,
    /// One charge per key, in the order the keys were first queued. When the scope was
    /// refused, nothing was consumed: the entries that would have been admitted say what they
    /// would have answered.
    pub charges: Vec<Charge>,
    /// The charge whose answer binds (a cost that never fits, else the longest wait, else the
    /// fewest hits left); `None` for an empty scope.
    pub binding: Option<usize>,
}

/// One key's part of a [`ScopeDecision`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Charge {
    /// The throttle's uid.
    pub throttle: String,
    /// Its decision for the summed cost of the key's entries.
    pub decision: Decision,
}

impl ScopeDecision {
    /// Whether every entry was admitted (a delay counts as admitted: a deferred charge holds
    /// nothing).
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::Delayed | Outcome::Skipped(_))
    }

    /// Whether the scope was refused.
    pub fn is_throttled(&self) -> bool {
        matches!(self.outcome, Outcome::Throttled | Outcome::Never)
    }

    /// The binding charge.
    pub fn binding_charge(&self) -> Option<&Charge> {
        self.charges.get(self.binding?)
    }

    /// When refused: whole seconds to wait before applying again, rounded up (`None` when the
    /// cost can never fit, or when not refused).
    pub fn retry_after_secs(&self) -> Option<u64> {
        (self.outcome == Outcome::Throttled).then(|| crate::decision::ceil_secs(self.wait))
    }
}

/// What [`Scope::apply`] did.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub enum Applied {
    /// A root scope: every entry was charged (an empty scope charges nothing and is admitted).
    Charged(ScopeDecision),
    /// A child scope: its entries joined its parent's, to be charged with them.
    Merged,
}

/// Why a scope could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The scope (or, when merging a child, its parent) is no longer open.
    #[error("the scope is {0}")]
    Closed(ScopeState),
    /// The scope was refused: nothing was charged (the scope stays open).
    #[error("{}", refused(.0))]
    Refused(Box<ScopeDecision>),
    /// The backend failed on every attempt: nothing was charged (the scope stays open).
    #[error("the scope's backend failed after {attempts} attempt(s): {source}")]
    Backend {
        /// Calls made (1 when no retry was allowed).
        attempts: u32,
        /// The last error.
        #[source]
        source: BackendError,
    },
    /// An entry's throttle uses another backend than the scope's earlier entries.
    #[error("throttle `{throttle}` uses a {backend} backend, but the scope's entries are on a {scope_backend} backend")]
    OtherBackend {
        /// The throttle whose entry was refused.
        throttle: String,
        /// Its backend's kind.
        backend: &'static str,
        /// The kind of the scope's backend.
        scope_backend: &'static str,
    },
    /// The throttle could not prepare the entry (its backend comes from the context and none
    /// is in scope).
    #[error(transparent)]
    Throttle(#[from] Error),
}

/// The message of [`ScopeError::Refused`].
fn refused(d: &ScopeDecision) -> String {
    let by = d.binding_charge().map_or("a throttle", |c| c.throttle.as_str());
    match d.retry_after_secs() {
        Some(secs) => format!("the scope was refused by `{by}`: retry after {secs} s"),
        None => format!("the scope was refused by `{by}`: its cost can never fit"),
    }
}

impl ScopeError {
    /// The decision, when the scope was refused.
    pub fn refusal(&self) -> Option<&ScopeDecision> {
        match self {
            ScopeError::Refused(d) => Some(d),
            _ => None,
        }
    }
}

/// Why [`Scope::run`] or [`Scope::run_with`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<T, E> {
    /// The work failed. The scope was cancelled, or (when the predicate of
    /// [`run_with`](Scope::run_with) chose so) applied.
    #[error("the work failed: {0}")]
    Work(E),
    /// The work succeeded but applying the scope failed (refused, backend error): nothing was
    /// charged, the scope stays open, and the work's output is here.
    #[error("the work succeeded but the scope was not applied: {error}")]
    Apply {
        /// The work's output.
        output: T,
        /// Why the scope was not applied.
        #[source]
        error: ScopeError,
    },
    /// The work failed, the predicate chose to apply the scope, and applying failed too.
    #[error("the work failed ({work}) and the scope was not applied: {apply}")]
    Both {
        /// The work's error.
        work: E,
        /// Why the scope was not applied.
        apply: ScopeError,
    },
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

/// Refuses an entry on another backend than `scope`'s.
fn check_backend(entry: &Entry, scope: &SharedBackend) -> Result<(), ScopeError> {
    if same_backend(&entry.backend, scope) {
        Ok(())
    } else {
        Err(ScopeError::OtherBackend {
            throttle: entry.throttle.uid().to_owned(),
            backend: entry.backend.kind(),
            scope_backend: scope.kind(),
        })
    }
}

/// One backend: the same value, the same in-memory store, or (other backends, whose clones
/// share their connections) the same type, kind and namespace.
fn same_backend(a: &SharedBackend, b: &SharedBackend) -> bool {
    if std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)) {
        return true;
    }
    let (x, y): (&dyn Any, &dyn Any) = (&**a, &**b);
    let memory = |v: &dyn Any| {
        v.downcast_ref::<InMemoryBackend>()
            .cloned()
            .or_else(|| v.downcast_ref::<Arc<InMemoryBackend>>().map(|m| (**m).clone()))
    };
    match (memory(x), memory(y)) {
        (Some(m), Some(n)) => m.same_store(&n),
        (None, None) => x.type_id() == y.type_id() && a.kind() == b.kind() && a.namespace() == b.namespace(),
        _ => false,
    }
}

/// One backend operation: the first entry on its key, and the key's summed cost.
struct Op {
    entry: usize,
    cost: u64,
}

/// The scope's operations: one per key (and strategy), in the order of first appearance. A
/// backend decides a key once per group, so its entries are summed.
fn operations(entries: &[Entry]) -> SmallVec<[Op; 4]> {
    let mut ops: SmallVec<[Op; 4]> = SmallVec::new();
    for (i, e) in entries.iter().enumerate() {
        let same = |o: &&mut Op| {
            let first = &entries[o.entry];
            first.key == e.key && first.config.strategy.name() == e.config.strategy.name()
        };
        match ops.iter_mut().find(|o| same(o)) {
            Some(op) => op.cost = op.cost.saturating_add(e.cost),
            None => ops.push(Op { entry: i, cost: e.cost }),
        }
    }
    ops
}

/// Decides the entries as one (consuming or peeking), with the retries `policies` allow.
async fn decide(entries: &[Entry], policies: &[Retry], mode: Mode) -> Result<ScopeDecision, ScopeError> {
    let Some(first) = entries.first() else {
        return Ok(concluded(Vec::new()));
    };
    let ops = operations(entries);
    let inputs: SmallVec<[Input; 4]> = ops
        .iter()
        .map(|op| {
            let e = &entries[op.entry];
            Input { now_us: e.throttle.inner.clock.now_us(), rate: e.rate, cost: op.cost }
        })
        .collect();
    let operations: SmallVec<[Operation<'_>; 4]> = ops
        .iter()
        .zip(&inputs)
        .map(|(op, &input)| {
            let e = &entries[op.entry];
            Operation { key: &e.key, strategy: &e.config.strategy, input, mode }
        })
        .collect();
    let backend = &first.backend;
    let timeout = ops.iter().map(|op| entries[op.entry].config.timeout).max().unwrap_or(Duration::from_secs(1));
    let verdicts = call_retrying(backend.as_ref(), &operations, timeout, policies).await?;
    if verdicts.len() != ops.len() {
        let source =
            BackendError::command(backend.kind(), format!("{} verdicts for {} keys", verdicts.len(), ops.len()));
        return Err(ScopeError::Backend { attempts: 1, source });
    }
    let charges = ops
        .iter()
        .zip(inputs)
        .zip(verdicts)
        .map(|((op, input), verdict)| {
            let e = &entries[op.entry];
            let decision = e.config.decision(verdict, e.key.clone(), &input, Source::Backend, false);
            Charge { throttle: e.throttle.uid().to_owned(), decision }
        })
        .collect();
    Ok(concluded(charges))
}

/// The scope's outcome and binding charge.
fn concluded(charges: Vec<Charge>) -> ScopeDecision {
    let decisions: Vec<Decision> = charges.iter().map(|c| c.decision.clone()).collect();
    let binding = crate::group::binding_of(&decisions);
    let (outcome, wait) = match binding.and_then(|b| charges.get(b)) {
        Some(c) => (c.decision.outcome, c.decision.wait),
        None => (Outcome::Allowed, Duration::ZERO),
    };
    ScopeDecision { outcome, wait, charges, binding }
}

/// One call for every operation (a single decision for one key, else the backend's group
/// decision on the throttles' own keys), retried after errors while a policy allows.
async fn call_retrying(
    backend: &dyn Backend,
    ops: &[Operation<'_>],
    timeout: Duration,
    policies: &[Retry],
) -> Result<Vec<Verdict>, ScopeError> {
    let mut error = match call(backend, ops, timeout).await {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut attempts = 1u32;
    // Without a Tokio runtime there is no timer to pause with.
    if policies.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return Err(ScopeError::Backend { attempts, source: error });
    }
    let failed_at = tokio::time::Instant::now();
    let mut retries = 0u32;
    loop {
        // The longest pause among the settings that allow another attempt, and the most time
        // any of them leaves for it.
        let mut next: Option<(Duration, Duration)> = None;
        for p in policies {
            if retries >= p.max_retries_count() || !p.accepts(&error) {
                continue;
            }
            let pause = p.delay_for(retries);
            let Some(left) = time_left(failed_at.checked_add(p.deadline_span()), pause) else {
                continue;
            };
            next = Some(match next {
                Some((pa, le)) => (pa.max(pause), le.max(left)),
                None => (pause, left),
            });
        }
        let Some((pause, left)) = next else {
            return Err(ScopeError::Backend { attempts, source: error });
        };
        tokio::time::sleep(pause).await;
        retries += 1;
        attempts += 1;
        match call(backend, ops, timeout.min(left)).await {
            Ok(v) => return Ok(v),
            Err(e) => error = e,
        }
    }
}

async fn call(backend: &dyn Backend, ops: &[Operation<'_>], timeout: Duration) -> Result<Vec<Verdict>, BackendError> {
    if let [op] = ops {
        if let Some(answer) = backend.decide_now(op) {
            return answer.map(|v| vec![v]);
        }
        return bounded(backend.kind(), timeout, backend.decide(*op)).await.map(|v| vec![v]);
    }
    // The throttles' own keys: an empty tag (see `GroupOperation::tag`).
    let group = GroupOperation { tag: "", ops };
    if let Some(answer) = backend.decide_group_now(group) {
        return answer;
    }
    bounded(backend.kind(), timeout, backend.decide_group(group)).await
}
