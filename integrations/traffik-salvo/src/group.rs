//! Stacked limits as one decision: a [`ThrottleGroup`] as a Salvo hoop.

use std::fmt;
use std::sync::Arc;

use salvo::handler::Skipper;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use traffik::{Context, Decision, GroupDecision, Settle, ThrottleGroup};

use crate::depot::{ThrottleRecord, record};
use crate::hoop::{delay, refuse, unavailable};
use crate::view::request_view;

/// A [`ThrottleGroup`] as a Salvo [`Handler`]: every member limits the route, decided as one,
/// so no member is charged for a request another member refuses (two stacked
/// [`SalvoThrottle`](crate::SalvoThrottle) hoops charge the outer one for requests the inner
/// one refuses).
///
/// ```
/// use salvo::prelude::*;
/// use traffik::{rate, InMemoryBackend, Throttle, ThrottleGroup, strategy::{FixedWindow, TokenBucket}};
/// use traffik_salvo::GroupExt;
///
/// #[handler]
/// async fn data() -> &'static str { "data" }
///
/// let backend = InMemoryBackend::new();
/// let burst = Throttle::builder().uid("burst").rate(rate!("3/s")).backend(backend.clone())
///     .strategy(TokenBucket::new()).build()?;
/// let sustained = Throttle::builder().uid("sustained").rate(rate!("100/hour")).backend(backend)
///     .strategy(FixedWindow).build()?;
/// let group = ThrottleGroup::new("data", [burst, sustained])?;
/// let router = Router::with_path("data").hoop(group.hoop()).get(data);
/// # let _ = router;
/// # Ok::<(), traffik::Error>(())
/// ```
///
/// Per request: the binding member's headers are added (the draft-10 fields, when it sends them,
/// list every member: [`GroupDecision::ietf_draft10`]); a refusal answers the binding
/// member's 429 (its [`ThrottledHandler`](crate::ThrottledHandler) if it has one, a
/// `Retry-After` long enough for every member); a backend failure the first member's error
/// policy raised answers 503; a delayed decision waits. A group in shadow mode
/// ([`ThrottleGroup::set_shadow`]) neither refuses nor waits. Every member's decision is recorded in
/// the [`Depot`] in member order, the binding member's last, so
/// [`DepotExt::throttle_decision`](crate::DepotExt::throttle_decision) is the one the client
/// was answered with.
#[derive(Clone)]
pub struct SalvoGroup {
    group: ThrottleGroup,
    members: Arc<[Arc<str>]>,
    context: Option<ContextFn>,
    skipper: Option<Arc<dyn Skipper>>,
    settle: Option<Settle>,
}

type ContextFn = Arc<dyn Fn(&Request, &Depot) -> Context + Send + Sync>;

impl fmt::Debug for SalvoGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalvoGroup").field("group", &self.group).finish()
    }
}

impl From<ThrottleGroup> for SalvoGroup {
    fn from(group: ThrottleGroup) -> Self {
        SalvoGroup::new(group)
    }
}

impl SalvoGroup {
    /// Wraps a group.
    pub fn new(group: ThrottleGroup) -> Self {
        let members = group.members().iter().map(|m| Arc::from(m.uid())).collect();
        SalvoGroup { group, members, context: None, skipper: None, settle: None }
    }

    /// The wrapped group.
    pub fn group(&self) -> &ThrottleGroup {
        &self.group
    }

    /// Builds the per-hit [`Context`] every member sees (cost override, scope parts, typed values
    /// for identifiers, rules, cost and rate functions) from the request and the depot, as
    /// [`SalvoThrottle::context`](crate::SalvoThrottle::context) does for one throttle.
    #[must_use]
    pub fn context(mut self, f: impl Fn(&Request, &Depot) -> Context + Send + Sync + 'static) -> Self {
        self.context = Some(Arc::new(f));
        self
    }

    /// Settles each admission once the rest of the chain has answered, by refunds only: when
    /// `rule`'s actual cost for the response is 0 ([`Settle::refund_server_errors`],
    /// [`Settle::refund_when`]), every member's charge is given back
    /// ([`ThrottleGroup::refund`]); any other actual cost keeps the charges
    /// ([`Settle::apply_group`]). A status a handler set counts with it. The response is never
    /// changed; a failure to refund is logged. A group with a member that holds leases is not
    /// settled.
    #[must_use]
    pub fn settle(mut self, rule: Settle) -> Self {
        self.settle = Some(rule);
        self
    }

    /// Lets requests the `skipper` picks through without a hit, as
    /// [`SalvoThrottle::skipper`](crate::SalvoThrottle::skipper) does: no member is charged, no
    /// headers are added and no decision is recorded.
    #[must_use]
    pub fn skipper(mut self, skipper: impl Skipper) -> Self {
        self.skipper = Some(Arc::new(skipper));
        self
    }
}

/// The index of the member whose answer the client gets: the binding member, or (should a
/// refused group name none) the first member that refused.
fn answering(decided: &GroupDecision) -> Option<usize> {
    decided.binding.or_else(|| decided.members.iter().position(Decision::is_throttled))
}

#[async_trait]
impl Handler for SalvoGroup {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        if let Some(skipper) = &self.skipper
            && skipper.skipped(req, depot)
        {
            return;
        }
        let members = self.group.members();
        let ctx = self.context.as_ref().map(|f| f(req, depot));
        // A member with leases (a concurrency limit): the permit is held while the rest of the
        // chain runs, and released however this future ends.
        let leased = members.iter().any(traffik::Throttle::holds_leases);
        let mut permit = None;
        let decided = {
            let view = request_view(req);
            let hit = match (&ctx, leased) {
                (Some(ctx), true) => self.group.acquire_with(&view, ctx).await.map(|p| {
                    let d = p.decision().clone();
                    permit = Some(p);
                    d
                }),
                (None, true) => self.group.acquire(&view).await.map(|p| {
                    let d = p.decision().clone();
                    permit = Some(p);
                    d
                }),
                (Some(ctx), false) => self.group.hit_with(&view, ctx).await,
                (None, false) => self.group.hit(&view).await,
            };
            let decided = match hit {
                Ok(d) => d,
                Err(error) => {
                    unavailable(self.group.uid(), &error, res);
                    ctrl.skip_rest();
                    return;
                }
            };
            if let Some(i) = answering(&decided)
                && let (Some(member), Some(decision)) = (members.get(i), decided.members.get(i))
            {
                member.headers().apply(&view, decision, None, res.headers_mut());
                // Where the member sends the draft-10 fields, the group's list every member.
                decided.list_members_in(res.headers_mut());
            }
            decided
        };
        let answer = answering(&decided);
        let (refused, hold) = (decided.is_refused(), decided.hold());
        // The admission to settle once the chain has answered (a group with leases is not settled).
        let to_settle = self.settle.as_ref().filter(|_| !leased && !refused).map(|rule| (rule, decided.clone()));
        let mut binding = None;
        for (i, (uid, decision)) in self.members.iter().zip(decided.members).enumerate() {
            let entry = ThrottleRecord { uid: Arc::clone(uid), decision, stat: None };
            if Some(i) == answer {
                binding = Some((i, entry));
            } else {
                record(depot, entry);
            }
        }
        let Some((i, entry)) = binding else {
            // Every member skipped the request (a refused group always names a member).
            return;
        };
        if refused {
            match members.get(i) {
                Some(member) => refuse(member, entry, req, depot, res, ctrl).await,
                None => record(depot, entry),
            }
            ctrl.skip_rest();
            return;
        }
        record(depot, entry);
        delay(hold).await;
        if let Some(permit) = permit {
            ctrl.call_next(req, depot, res).await;
            drop(permit);
        } else if let Some((rule, decided)) = to_settle {
            ctrl.call_next(req, depot, res).await;
            crate::settle::settle_group(rule, &self.group, &decided, crate::settle::served(res)).await;
        }
    }
}

/// Salvo conveniences on [`ThrottleGroup`].
pub trait GroupExt {
    /// The group as a hoop ([`SalvoGroup`]).
    fn hoop(&self) -> SalvoGroup;
}

impl GroupExt for ThrottleGroup {
    fn hoop(&self) -> SalvoGroup {
        SalvoGroup::new(self.clone())
    }
}
