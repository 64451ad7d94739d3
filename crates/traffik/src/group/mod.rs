//! [`ThrottleGroup`]: stacked limits decided as one.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use smallvec::SmallVec;

use crate::backend::{Backend, BoxFuture, GroupOperation, Mode, Operation, Verdicts};
use crate::context::Context;
use crate::decision::{Decision, Outcome, Source};
use crate::error::{BackendError, ConfigError, Error};
use crate::identity::RequestView;
use crate::key::Key;
use crate::lease::{LeaseRef, Permit};
use crate::policy::ErrorPolicy;
use crate::stat::Snapshot;
use crate::strategy::{Verdict, VerdictKind};
use crate::throttle::BackendChoice;
use crate::throttle::{
    Attempt, Config, Prepared, Ready, Resolved, Throttle, bounded, context_backend, shadow_refusal_event,
};

mod decision;

pub use decision::GroupDecision;
pub(crate) use decision::binding_of;
use decision::conclude;

static NO_CONTEXT: LazyLock<Context> = LazyLock::new(Context::new);

/// Several throttles on one request (burst + sustained, per user + per tenant), decided as
/// one: no member consumes anything unless every member admits the hit.
///
/// Stacked as separate middlewares, an outer limit is charged for hits an inner one refuses (a
/// `10/min` over a `3/min` had 4 left after 3 admitted and 3 denied). A group asks its backend
/// once for all members: in memory under the locks of every shard involved, on Redis in one
/// script and one round trip, on Memcached by compare-and-swap with compensation (see that
/// crate). Members may differ in strategy, rate, cost and identity; the group decides on its
/// first member's backend. The [`GroupDecision`] carries every member's decision and names the binding one,
/// the member whose answer the client gets.
///
/// A member's state inside a group is the group's own: its keys start with the group's uid,
/// so hitting the member throttle on its own elsewhere counts separately. On Redis Cluster every
/// key of a group lives in the hash slot of the group's uid.
///
/// ```
/// use traffik::{rate, InMemoryBackend, RequestView, Throttle, ThrottleGroup, strategy::{FixedWindow, TokenBucket}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), traffik::Error> {
/// let backend = InMemoryBackend::new();
/// let burst = Throttle::builder().uid("burst").rate(rate!("3/s")).backend(backend.clone())
///     .strategy(TokenBucket::new()).build()?;
/// let sustained = Throttle::builder().uid("sustained").rate(rate!("5/min")).backend(backend)
///     .strategy(FixedWindow).build()?;
/// let api = ThrottleGroup::new("api", [burst, sustained])?;
/// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
/// for _ in 0..3 {
///     assert!(api.hit(&req).await?.is_allowed());
/// }
/// let fourth = api.hit(&req).await?;
/// assert!(fourth.is_throttled());
/// assert_eq!(fourth.binding_member().map(Throttle::uid), Some("burst"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ThrottleGroup {
    inner: Arc<GroupInner>,
}

struct GroupInner {
    /// Unique in this process (the key of the member configurations' thread cache).
    id: u64,
    uid: String,
    members: Vec<Throttle>,
    /// Per member: the start of its keys inside this group (the group's uid, then its own).
    prefixes: Vec<Key>,
    /// The group's uid, encoded: every key of the group shares it as a tag.
    tag: String,
    /// Every member reads the same clock (the shared system clock, or one the application
    /// gave them all): a decision reads it once.
    shared_clock: bool,
    /// Shadow mode, as a throttle's.
    shadow: AtomicBool,
    /// Refusals shadow mode let through (hits only).
    shadow_refusals: AtomicU64,
    /// The uid as a metric label value.
    #[cfg(feature = "metrics")]
    metric_uid: metrics::SharedString,
    /// The group's decision counters, registered with the recorder in force when last needed.
    #[cfg(feature = "metrics")]
    counters: arc_swap::ArcSwap<crate::telemetry::DecisionCounters>,
}

impl std::fmt::Debug for ThrottleGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uids: Vec<&str> = self.inner.members.iter().map(Throttle::uid).collect();
        f.debug_struct("ThrottleGroup").field("uid", &self.inner.uid).field("members", &uids).finish()
    }
}

impl PartialEq for ThrottleGroup {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Source of group ids (0 marks an empty cache slot).
static NEXT_GROUP_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes a group uid may have, like a throttle's.
const MAX_UID: usize = 128;

impl ThrottleGroup {
    /// A group of `members`, in the order their decisions are reported.
    ///
    /// The group decides on its first member's backend (the member keys are the group's own,
    /// so the other members' backends are not used by the group), with the first member's
    /// error policy and timeout.
    ///
    /// Fails when the uid is empty or longer than 128 bytes, when there are no members, or when
    /// two members share a uid.
    pub fn new(uid: impl Into<String>, members: impl IntoIterator<Item = Throttle>) -> Result<Self, Error> {
        let uid = uid.into();
        if uid.is_empty() || uid.len() > MAX_UID {
            return Err(ConfigError::UidLength { len: uid.len(), max: MAX_UID }.into());
        }
        let members: Vec<Throttle> = members.into_iter().collect();
        if members.is_empty() {
            return Err(ConfigError::EmptyGroup { group: uid }.into());
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| o.uid() == m.uid()) {
                return Err(ConfigError::DuplicateMember { group: uid, member: m.uid().to_owned() }.into());
            }
        }
        let group_key = Key::builder(&uid).build();
        #[cfg(feature = "metrics")]
        let metric_uid = crate::throttle::metric_uid(&uid);
        let prefixes = members.iter().map(|m| Key::builder(&uid).part(m.uid().as_bytes()).build()).collect();
        Ok(ThrottleGroup {
            inner: Arc::new(GroupInner {
                id: NEXT_GROUP_ID.fetch_add(1, Ordering::Relaxed),
                tag: group_key.as_str().to_owned(),
                uid,
                shared_clock: members.iter().all(|m| m.same_clock(&members[0])),
                members,
                prefixes,
                shadow: AtomicBool::new(false),
                shadow_refusals: AtomicU64::new(0),
                #[cfg(feature = "metrics")]
                counters: arc_swap::ArcSwap::from_pointee(crate::telemetry::DecisionCounters::register(&metric_uid)),
                #[cfg(feature = "metrics")]
                metric_uid,
            }),
        })
    }

    /// Switches the group's shadow mode on or off, effective from the next hit (lock-free): the
    /// group decides and stores as when it enforces (a refused hit charges no member), but a
    /// refusal or delay comes back with [`GroupDecision::shadow`] set and integrations let the
    /// request through at once, with the binding member's headers for an allowed request (never
    /// `Retry-After`). Refused hits are counted ([`shadow_refusals`](Self::shadow_refusals)) and
    /// logged at `debug`. The members' own shadow settings
    /// ([`Throttle::set_shadow`]) apply when they are hit alone, not inside the group: a
    /// group cannot let one member's refusal through and charge the others, since it decides
    /// as one.
    pub fn set_shadow(&self, yes: bool) {
        self.inner.shadow.store(yes, Ordering::Relaxed);
    }

    /// Whether the group is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.inner.shadow.load(Ordering::Relaxed)
    }

    /// How many hits the group refused and shadow mode let through (the group's own or
    /// [`Context::shadow`]; checks are not counted).
    pub fn shadow_refusals(&self) -> u64 {
        self.inner.shadow_refusals.load(Ordering::Relaxed)
    }

    /// Applies shadow mode (the group's, or `forced` for this hit) to a decision.
    #[inline]
    fn settle(&self, mut decided: GroupDecision, forced: bool, mode: Mode) -> GroupDecision {
        if matches!(decided.outcome, Outcome::Throttled | Outcome::Never | Outcome::Delayed)
            && (forced || self.inner.shadow.load(Ordering::Relaxed))
        {
            self.let_through(&mut decided, mode);
        }
        #[cfg(feature = "metrics")]
        if mode == Mode::Consume {
            self.count(&decided);
        }
        if mode == Mode::Consume && decided.is_refused() {
            self.denial_event(&decided);
        }
        decided
    }

    /// The `debug` event of an enforced refusal: the group, the binding member; never the client.
    #[cold]
    #[inline(never)]
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    fn denial_event(&self, decided: &GroupDecision) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            throttle = self.inner.uid.as_str(),
            member = decided.binding_member().map(Throttle::uid),
            outcome = crate::throttle::outcome_name(decided.outcome),
            wait_ms = u64::try_from(decided.wait.as_millis()).unwrap_or(u64::MAX),
            "rate limit refused a request"
        );
    }

    /// Counts a hit's decision under the group's uid, registering the counters again when
    /// another recorder has taken over.
    #[cfg(feature = "metrics")]
    #[inline]
    fn count(&self, decided: &GroupDecision) {
        let source = decided.binding_decision().map_or(Source::None, |d| d.source);
        if !self.inner.counters.load().count(decided.outcome, source) {
            crate::telemetry::count_once(&self.inner.metric_uid, decided.outcome, source);
            let counters = crate::telemetry::DecisionCounters::register(&self.inner.metric_uid);
            self.inner.counters.store(Arc::new(counters));
        }
    }

    #[cold]
    #[inline(never)]
    fn let_through(&self, decided: &mut GroupDecision, mode: Mode) {
        decided.shadow = true;
        for d in &mut decided.members {
            if matches!(d.outcome, Outcome::Throttled | Outcome::Never | Outcome::Delayed) {
                d.shadow = true;
            }
        }
        if mode == Mode::Consume && decided.is_throttled() {
            self.inner.shadow_refusals.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            crate::telemetry::count_shadow_refusal(&self.inner.metric_uid);
            if let Some(binding) = decided.binding_decision() {
                let kind = if binding.outcome == Outcome::Never { VerdictKind::Never } else { VerdictKind::Deny };
                shadow_refusal_event(&self.inner.uid, kind, binding.cost, binding.wait);
            }
        }
    }

    /// The group's uid.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// The member throttles, in order.
    pub fn members(&self) -> &[Throttle] {
        &self.inner.members
    }

    /// Checks and consumes quota on every member, as one.
    pub async fn hit(&self, req: &RequestView<'_>) -> Result<GroupDecision, Error> {
        // Only the small failure box stays in the future across the awaits below.
        let failed = match self.hit_planned(req) {
            Ok(decision) => return Ok(decision),
            Err(failed) => failed,
        };
        // The slow paths are boxed: the future of a hit decided in place stays small (it is
        // moved whole, wherever it is polled).
        if let Some(failed) = failed {
            let Failed { configs, prepared, error } = *failed;
            let decided = Box::pin(self.decide(configs, prepared, req, Mode::Consume, Some(error), None)).await?;
            return Ok(self.settle(decided, false, Mode::Consume));
        }
        Box::pin(self.run(req, &NO_CONTEXT, Mode::Consume)).await
    }

    /// [`hit`](Self::hit) with per-hit options (cost override, scope, values) for every member.
    pub async fn hit_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<GroupDecision, Error> {
        self.run(req, ctx, Mode::Consume).await
    }

    /// What a hit would get, consuming nothing.
    pub async fn check(&self, req: &RequestView<'_>) -> Result<GroupDecision, Error> {
        self.run(req, &NO_CONTEXT, Mode::Peek).await
    }

    /// [`check`](Self::check) with per-hit options for every member.
    pub async fn check_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<GroupDecision, Error> {
        self.run(req, ctx, Mode::Peek).await
    }

    /// Gives back what `decision`, one of this group's admissions, charged: every member's
    /// cost, as [`Throttle::refund`] does for one throttle (a member's window that has passed
    /// keeps its count). The number of members whose state changed; 0 when the group refused
    /// the hit (nothing was charged then) or the decision is another group's.
    ///
    /// On Redis each member is one script call.
    pub async fn refund(&self, decision: &GroupDecision) -> Result<usize, Error> {
        let ours = decision.group.as_ref().is_some_and(|g| Arc::ptr_eq(&g.inner, &self.inner));
        if !ours || !matches!(decision.outcome, Outcome::Allowed | Outcome::Delayed) {
            return Ok(0);
        }
        let Some(decider) = self.inner.members.first() else {
            return Ok(0);
        };
        let mut changed = 0;
        for (member, d) in self.inner.members.iter().zip(&decision.members) {
            if member.refund_under(d, d.cost, Some((&self.inner.tag, decider))).await? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A snapshot per member, in member order ([`Snapshot::Skipped`] for members that do not
    /// limit the request, with the reason).
    pub async fn stat(&self, req: &RequestView<'_>) -> Result<Vec<Snapshot>, Error> {
        self.stat_with(req, &NO_CONTEXT).await
    }

    /// [`stat`](Self::stat) with per-hit options for every member.
    pub async fn stat_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Vec<Snapshot>, Error> {
        let mut stats = Vec::with_capacity(self.inner.members.len());
        for (member, prefix) in self.inner.members.iter().zip(&self.inner.prefixes) {
            stats.push(member.stat_under(prefix, Some(&self.inner.tag), req, ctx).await?);
        }
        Ok(stats)
    }

    /// A plain hit whose members all take their shortcut on one in-memory backend, decided
    /// without awaiting. `Err(None)` when that does not apply; `Err(Some(_))` when the backend
    /// failed: what was prepared and the error, for the error policy.
    fn hit_planned(&self, req: &RequestView<'_>) -> Result<GroupDecision, Option<Box<Failed>>> {
        let g = &*self.inner;
        let mut failed = None;
        let decided = MEMBER_CONFIGS.with(|cache| {
            // Busy only if a clock or identifier re-entered a group: use the general path.
            let mut cache = cache.try_borrow_mut().ok()?;
            let configs = cache.get(g.id, &g.members);
            self.hit_planned_with(configs, req, &mut failed)
        });
        decided.ok_or(failed)
    }

    #[inline]
    fn hit_planned_with(
        &self,
        configs: &[(u64, Arc<Config>)],
        req: &RequestView<'_>,
        failed: &mut Option<Box<Failed>>,
    ) -> Option<GroupDecision> {
        let g = &*self.inner;
        let memory = Throttle::planned_memory(&configs.first()?.1)?;
        // One clock read for the whole group when every member reads the same clock.
        let now = g.shared_clock.then(|| g.members[0].now_us());
        // Each member's decision is built where it will stay, holding its key; the verdicts
        // fill them in.
        let mut members: Vec<Decision> = Vec::with_capacity(g.members.len());
        let mut keys: SmallVec<[_; 4]> = SmallVec::new();
        for ((member, (_, config)), prefix) in g.members.iter().zip(configs).zip(&g.prefixes) {
            if !Throttle::planned_memory(config).is_some_and(|m| m.same_store(memory)) {
                return None;
            }
            let like = (!members.is_empty()).then(|| (&*configs[0].1, &g.prefixes[0]));
            let input = member.prepare_planned_into(config, prefix, req, like, now, &mut members)?;
            let key = members.last().and_then(|d| d.key.as_ref())?;
            keys.push((memory.prepare(key, &config.strategy), &config.strategy, input));
        }
        let mut verdicts = Verdicts::new();
        match memory.decide_group_prepared(&keys, Mode::Consume, &mut verdicts) {
            Ok(()) => {
                let decided = members.iter_mut().zip(&verdicts).zip(configs).zip(&keys);
                for (((decision, &verdict), (_, config)), (_, _, input)) in decided {
                    config.settle(decision, verdict, Source::Backend, input.now_us);
                }
                Some(self.settle(conclude(members, self.clone()), false, Mode::Consume))
            }
            Err(error) => {
                let prepared = members
                    .into_iter()
                    .zip(&keys)
                    .filter_map(|(d, &(_, _, input))| Some(Prepared::Go(Ready { key: d.key?, input })))
                    .collect();
                drop(keys);
                *failed = Some(Box::new(Failed {
                    configs: configs.iter().map(|(_, c)| Arc::clone(c)).collect(),
                    prepared,
                    error,
                }));
                None
            }
        }
    }

    async fn run(&self, req: &RequestView<'_>, ctx: &Context, mode: Mode) -> Result<GroupDecision, Error> {
        let g = &*self.inner;
        let configs: Configs = g.members.iter().map(|m| m.inner.config.load_full()).collect();
        // Each member's key, rate and cost, or why it does not limit this request.
        let mut prepared: SmallVec<[Prepared; 4]> = SmallVec::with_capacity(g.members.len());
        for ((member, config), prefix) in g.members.iter().zip(&configs).zip(&g.prefixes) {
            prepared.push(member.prepare(config, prefix, req, ctx).await);
        }
        let decided = self.decide(configs, prepared, req, mode, None, None).await?;
        Ok(self.settle(decided, ctx.is_shadow(), mode))
    }

    /// [`hit`](Self::hit) holding what every member took until the [`Permit`] is dropped: the
    /// leases of members with the [`Concurrency`](crate::strategy::Concurrency) strategy, if
    /// every member admitted (see [`Throttle::acquire`]); the other members' quota stays spent.
    pub async fn acquire(&self, req: &RequestView<'_>) -> Result<Permit<GroupDecision>, Error> {
        self.acquire_with(req, &NO_CONTEXT).await
    }

    /// [`acquire`](Self::acquire) with per-hit options for every member.
    pub async fn acquire_with(&self, req: &RequestView<'_>, ctx: &Context) -> Result<Permit<GroupDecision>, Error> {
        let g = &*self.inner;
        let configs: Configs = g.members.iter().map(|m| m.inner.config.load_full()).collect();
        let mut prepared: SmallVec<[Prepared; 4]> = SmallVec::with_capacity(g.members.len());
        for ((member, config), prefix) in g.members.iter().zip(&configs).zip(&g.prefixes) {
            prepared.push(member.prepare(config, prefix, req, ctx).await);
        }
        let mut leases = Vec::new();
        let decided = self.decide(configs, prepared, req, Mode::Consume, None, Some(&mut leases)).await?;
        Ok(Permit::new(self.settle(decided, ctx.is_shadow(), Mode::Consume), leases))
    }

    /// Asks the backend about the prepared members (unless `failed` already holds its answer,
    /// an error), applies the first member's error policy, and concludes.
    async fn decide(
        &self,
        configs: Configs,
        prepared: SmallVec<[Prepared; 4]>,
        req: &RequestView<'_>,
        mode: Mode,
        failed: Option<BackendError>,
        leases: Option<&mut Vec<Arc<LeaseRef>>>,
    ) -> Result<GroupDecision, Error> {
        let g = &*self.inner;
        let limiting = prepared.iter().filter(|p| matches!(p, Prepared::Go(_))).count();
        if limiting == 0 {
            return Ok(self.decisions(&configs, prepared, None));
        }
        let primary = match &configs[0].backend {
            BackendChoice::Fixed(b) => Arc::clone(b),
            BackendChoice::Context => context_backend().ok_or_else(|| Error::NoBackendInContext(g.uid.clone()))?,
        };
        let ops: SmallVec<[Operation<'_>; 4]> = prepared
            .iter()
            .zip(&configs)
            .filter_map(|(p, config)| match p {
                Prepared::Go(ready) => {
                    Some(Operation { key: &ready.key, strategy: &config.strategy, input: ready.input, mode })
                }
                Prepared::Skip(_) => None,
            })
            .collect();
        let attempt = GroupAttempt { tag: &g.tag, ops: &ops };
        // A backend that answers without awaiting, under a policy without a breaker: no timer
        // and no boxed future (the in-memory backend). A failure still goes to the policy.
        let quick = match (failed, &configs[0].policy) {
            (Some(e), _) => Some(Err(e)),
            (None, Some(policy)) if policy.breaker().is_none() => {
                primary.decide_group_now(GroupOperation { tag: &g.tag, ops: &ops })
            }
            _ => None,
        };
        let resolved = match quick {
            Some(Ok(v)) => Resolved::Verdict(v, Source::Backend),
            Some(Err(e)) => {
                let policy = configs[0].policy.clone().unwrap_or_else(ErrorPolicy::throttle);
                Box::pin(g.members[0].recover(&policy, &configs[0], &primary, &attempt, req, e)).await?
            }
            None => Box::pin(g.members[0].decide(&configs[0], &primary, &attempt, req)).await?,
        };
        drop(ops);
        if let (Some(out), Resolved::Verdict(v, source)) = (leases, &resolved) {
            *out = crate::lease::group_leases(&g.tag, &g.members, &configs, &prepared, &primary, v, *source);
        }
        let verdicts = match resolved {
            Resolved::Verdict(v, source) if v.len() == limiting => Some((v, source)),
            Resolved::Verdict(v, _) => {
                let error =
                    BackendError::command(primary.kind(), format!("{} verdicts for a group of {limiting}", v.len()));
                return Err(Error::Backend { uid: g.uid.clone(), source: error });
            }
            Resolved::Allow => None,
            Resolved::Throttle(wait) => {
                let deny = Verdict::deny(0, crate::clock::to_us(wait), 0);
                Some((vec![deny; limiting], Source::ErrorPolicy))
            }
        };
        Ok(self.decisions(&configs, prepared, verdicts.or(Some((Vec::new(), Source::ErrorPolicy)))))
    }

    /// Every member's decision from the verdicts of the limiting members (an empty list: the
    /// error policy failed open), and the group's conclusion. `None`: no member limits.
    fn decisions(
        &self,
        configs: &Configs,
        prepared: SmallVec<[Prepared; 4]>,
        verdicts: Option<(Vec<Verdict>, Source)>,
    ) -> GroupDecision {
        let mut members = Vec::with_capacity(prepared.len());
        let mut next = 0;
        for (i, p) in prepared.into_iter().enumerate() {
            members.push(match p {
                Prepared::Skip(skip) => Decision::skipped(skip),
                Prepared::Go(Ready { key, input }) => {
                    let decision = match &verdicts {
                        Some((v, source)) if next < v.len() => {
                            configs[i].decision(v[next], key, &input, *source, false)
                        }
                        _ => Decision::failed_open(key, input.rate, input.cost),
                    };
                    next += 1;
                    decision
                }
            });
        }
        conclude(members, self.clone())
    }
}

/// The members' configurations, as loaded for one hit.
type Configs = SmallVec<[Arc<Config>; 4]>;

/// The member configurations of the groups this thread hit recently, with the generation each
/// was loaded at: a plain hit reads them without an atomic read-modify-write (like a throttle's
/// own cache). A configuration swapped out, or whose group was dropped, stays referenced by a
/// thread until that thread reuses the slot or exits.
#[derive(Default)]
struct MemberConfigs {
    slots: [(u64, Loaded); MemberConfigs::SLOTS],
    next: usize,
}

/// One group's member configurations, each with the generation it was loaded at.
type Loaded = SmallVec<[(u64, Arc<Config>); 4]>;

impl MemberConfigs {
    const SLOTS: usize = 2;

    /// The current configurations of group `id`'s `members`, reloading those that changed.
    fn get(&mut self, id: u64, members: &[Throttle]) -> &[(u64, Arc<Config>)] {
        let i = match self.slots.iter().position(|s| s.0 == id) {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = (i + 1) % Self::SLOTS;
                self.slots[i] = (id, SmallVec::new());
                i
            }
        };
        let cached = &mut self.slots[i].1;
        // The generation is read first: a configuration loaded after it is at least as new.
        let load = |m: &Throttle| {
            let generation = m.inner.generation.load(Ordering::Acquire);
            (generation, m.inner.config.load_full())
        };
        if cached.len() == members.len() {
            for (m, slot) in members.iter().zip(cached.iter_mut()) {
                if slot.0 != m.inner.generation.load(Ordering::Acquire) {
                    *slot = load(m);
                }
            }
        } else {
            cached.clear();
            cached.extend(members.iter().map(load));
        }
        cached
    }
}

thread_local! {
    static MEMBER_CONFIGS: RefCell<MemberConfigs> = RefCell::new(MemberConfigs::default());
}

/// What the shortcut had prepared when the backend failed.
struct Failed {
    configs: Configs,
    prepared: SmallVec<[Prepared; 4]>,
    error: BackendError,
}

/// A group's operations, as one attempt of the error policy.
struct GroupAttempt<'o> {
    tag: &'o str,
    ops: &'o [Operation<'o>],
}

impl Attempt for GroupAttempt<'_> {
    type Output = Vec<Verdict>;

    fn run<'a>(
        &'a self,
        backend: &'a dyn Backend,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        let group = GroupOperation { tag: self.tag, ops: self.ops };
        Box::pin(bounded(backend.kind(), timeout, backend.decide_group(group)))
    }

    fn first(&self) -> Operation<'_> {
        self.ops[0]
    }
}
