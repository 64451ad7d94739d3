//! Stacked limits as one decision: a [`ThrottleGroup`] as Poem middleware.

use std::fmt;
use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use traffik::{Context, Decision, GroupDecision, Settle, Throttle, ThrottleGroup};

use crate::middleware::{allowed_headers, record_shared};
use crate::response::{add_missing, error_response, throttled_response_with};
use crate::view::request_view;

/// A [`ThrottleGroup`] usable as Poem middleware: every member limits the route, decided as
/// one, so no member is charged for a request another member refuses (two stacked
/// [`PoemThrottle`](crate::PoemThrottle)s charge the outer one for requests the inner one
/// refuses).
///
/// ```
/// use poem::{EndpointExt, Route, get, handler};
/// use traffik::{rate, InMemoryBackend, Throttle, ThrottleGroup, strategy::{FixedWindow, TokenBucket}};
/// use traffik_poem::GroupExt;
///
/// #[handler]
/// fn data() -> &'static str { "data" }
///
/// let backend = InMemoryBackend::new();
/// let burst = Throttle::builder().uid("burst").rate(rate!("3/s")).backend(backend.clone())
///     .strategy(TokenBucket::new()).build()?;
/// let sustained = Throttle::builder().uid("sustained").rate(rate!("100/hour")).backend(backend)
///     .strategy(FixedWindow).build()?;
/// let group = ThrottleGroup::new("data", [burst, sustained])?;
/// let app = Route::new().at("/data", get(data).with(group.middleware()));
/// # let _ = app;
/// # Ok::<(), traffik::Error>(())
/// ```
///
/// Per request: a refusal answers the binding member's 429 (its headers, its
/// [`ThrottledHandler`](crate::ThrottledHandler) if it has one, `Retry-After` long enough for
/// every member); a backend failure the first member's error policy raised answers 503; a
/// delayed decision waits, then calls the endpoint; a group in shadow mode
/// ([`ThrottleGroup::set_shadow`]) does neither. The endpoint sees every member's decision
/// in [`ThrottleDecisions`](crate::ThrottleDecisions) (in member order) and the binding
/// member's as `Data<&Decision>`; the binding member's headers for allowed requests are added
/// where the response does not set them. When those include the draft-10 fields
/// ([`Headers::ietf_draft10`](traffik::Headers::ietf_draft10)), they list every member
/// ([`GroupDecision::ietf_draft10`]).
#[derive(Clone)]
pub struct PoemGroup {
    group: ThrottleGroup,
    uid: Arc<str>,
    members: Arc<[Arc<str>]>,
    context: Option<Arc<ContextFn>>,
    settle: Option<Settle>,
}

type ContextFn = dyn Fn(&Request) -> Context + Send + Sync;

impl fmt::Debug for PoemGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoemGroup").field("group", &self.group).finish()
    }
}

impl From<ThrottleGroup> for PoemGroup {
    fn from(group: ThrottleGroup) -> Self {
        PoemGroup::new(group)
    }
}

impl PoemGroup {
    /// Wraps a group.
    pub fn new(group: ThrottleGroup) -> Self {
        let members = group.members().iter().map(|m| Arc::from(m.uid())).collect();
        PoemGroup { uid: Arc::from(group.uid()), members, group, context: None, settle: None }
    }

    /// Builds the per-request [`Context`] every member sees (cost override, scope parts, typed
    /// values for identifiers, rules, cost and rate functions) from the request, e.g. a user an
    /// earlier middleware put in the request's extensions.
    #[must_use]
    pub fn context(mut self, f: impl Fn(&Request) -> Context + Send + Sync + 'static) -> Self {
        self.context = Some(Arc::new(f));
        self
    }

    /// Settles each admission once the endpoint has answered, by refunds only: when `rule`'s
    /// actual cost for the response is 0 ([`Settle::refund_server_errors`],
    /// [`Settle::refund_when`]), every member's charge is given back
    /// ([`ThrottleGroup::refund`]); any other actual cost keeps the charges
    /// ([`Settle::apply_group`]). An error the endpoint returned counts with its status. The
    /// response is never changed; a failure to refund is logged. A group with a member that
    /// holds leases is not settled.
    #[must_use]
    pub fn settle(mut self, rule: Settle) -> Self {
        self.settle = Some(rule);
        self
    }

    /// The wrapped group.
    pub fn group(&self) -> &ThrottleGroup {
        &self.group
    }

    /// Acquires the group for `req` ([`ThrottleGroup::acquire`]): what the middleware does when
    /// a member holds leases (a concurrency limit).
    pub async fn acquire(&self, req: &Request) -> Result<traffik::lease::Permit<GroupDecision>, traffik::Error> {
        match &self.context {
            Some(f) => self.group.acquire_with(&request_view(req), &f(req)).await,
            None => self.group.acquire(&request_view(req)).await,
        }
    }

    /// Hits the group for `req`.
    pub async fn hit(&self, req: &Request) -> Result<GroupDecision, traffik::Error> {
        match &self.context {
            Some(f) => self.group.hit_with(&request_view(req), &f(req)).await,
            None => self.group.hit(&request_view(req)).await,
        }
    }
}

/// The member whose answer the client gets, and its decision: the binding member, or (should a
/// refused group name none) the first member that refused.
fn answering<'g>(group: &'g ThrottleGroup, decided: &'g GroupDecision) -> Option<(&'g Throttle, &'g Decision)> {
    let i = decided.binding.or_else(|| decided.members.iter().position(Decision::is_throttled))?;
    Some((group.members().get(i)?, decided.members.get(i)?))
}

impl<E: Endpoint> Middleware<E> for PoemGroup {
    type Output = GroupEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        GroupEndpoint { inner: ep, group: self.clone() }
    }
}

/// The endpoint [`PoemGroup`] wraps around another.
#[derive(Debug)]
pub struct GroupEndpoint<E> {
    inner: E,
    group: PoemGroup,
}

impl<E: Endpoint> Endpoint for GroupEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let g = &self.group;
        // A member with leases (a concurrency limit): the permit is held until the endpoint has
        // answered, and released however this future ends.
        let leased = g.group.members().iter().any(Throttle::holds_leases);
        let (decided, permit) = if leased {
            match g.acquire(&req).await {
                Ok(p) => (p.decision().clone(), Some(p)),
                Err(e) => return Ok(error_response(&g.uid, &e)),
            }
        } else {
            match g.hit(&req).await {
                Ok(d) => (d, None),
                Err(e) => return Ok(error_response(&g.uid, &e)),
            }
        };
        let answer = answering(&g.group, &decided);
        if decided.is_refused() {
            return Ok(match answer {
                // The group's draft fields go into the throttle's headers, which a handler's
                // own headers still win over.
                Some((member, decision)) => {
                    throttled_response_with(member, &req, decision, |h| decided.list_members_in(h))
                }
                // A refused group always has a refusing member; this only keeps the path total.
                None => crate::response::into_response(traffik::reply::Reply::unavailable()),
            });
        }
        let wait = decided.hold();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let headers = answer.and_then(|(member, decision)| allowed_headers(member, &req, decision)).map(|mut h| {
            decided.list_members_in(&mut h);
            h
        });
        for (uid, decision) in g.members.iter().zip(&decided.members) {
            record_shared(&mut req, uid, decision.clone());
        }
        if let Some((_, decision)) = answer {
            req.extensions_mut().insert(decision.clone());
        }
        let mut answered = self.inner.call(req).await.map(IntoResponse::into_response);
        drop(permit);
        if let Some(rule) = &g.settle {
            let served = crate::settle::served_answer(&mut answered);
            crate::settle::settle_group(rule, &g.group, &decided, served).await;
        }
        let mut resp = answered?;
        if let Some(h) = headers {
            add_missing(resp.headers_mut(), h);
        }
        Ok(resp)
    }
}

/// Poem conveniences on [`ThrottleGroup`].
pub trait GroupExt {
    /// The group as Poem middleware: `get(h).with(group.middleware())`.
    fn middleware(&self) -> PoemGroup;
}

impl GroupExt for ThrottleGroup {
    fn middleware(&self) -> PoemGroup {
        PoemGroup::new(self.clone())
    }
}
