//! [`GroupDecision`]: what a group decided, and which member's answer binds it.

use std::time::Duration;

use serde::Serialize;

use super::ThrottleGroup;
use crate::decision::{Decision, Outcome, Skip};
use crate::throttle::Throttle;

/// What a group decided for one hit.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[must_use]
pub struct GroupDecision {
    /// Allowed only if every member that limits the request admitted it; otherwise what the
    /// binding member answered.
    pub outcome: Outcome,
    /// The binding member's wait (the longest of the denying members', so that a retry after
    /// it passes every member), or its delay.
    #[serde(with = "crate::decision::millis")]
    pub wait: Duration,
    /// Every member's decision, in order. When the group is denied, nothing was consumed: the
    /// members that would have admitted the hit say what they would have answered.
    pub members: Vec<Decision>,
    /// The member whose answer the client gets: a member that can never admit the cost, else
    /// the denying member with the longest wait, else the member delaying longest, else the
    /// admitting member with the fewest hits left. `None` when every member skipped the hit.
    pub binding: Option<usize>,
    /// Whether the group's shadow mode let this decision through: the group refused or delayed
    /// the hit, but integrations neither refuse nor hold the request. The members' decisions
    /// that refused or delayed are marked too. Serialized only when `true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The member throttles' uids, in order.
    #[serde(skip)]
    pub(super) group: Option<ThrottleGroup>,
}

impl GroupDecision {
    /// Whether the request goes through (now or after [`wait`](Self::wait)).
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::Delayed | Outcome::Skipped(_))
    }

    /// Whether the group refused the request, enforced or not: in shadow mode
    /// ([`shadow`](Self::shadow)) the request still goes through.
    pub fn is_throttled(&self) -> bool {
        matches!(self.outcome, Outcome::Throttled | Outcome::Never)
    }

    /// Whether the request is refused: the group refused it and is not in shadow mode.
    pub fn is_refused(&self) -> bool {
        self.is_throttled() && !self.shadow
    }

    /// How long to hold the request before serving it: the binding member's delay, zero when
    /// nothing is delayed and in shadow mode.
    pub fn hold(&self) -> Duration {
        if self.outcome == Outcome::Delayed && !self.shadow { self.wait } else { Duration::ZERO }
    }

    /// The binding member's decision: what the client is told (headers, body).
    pub fn binding_decision(&self) -> Option<&Decision> {
        self.members.get(self.binding?)
    }

    /// The binding member throttle.
    pub fn binding_member(&self) -> Option<&Throttle> {
        self.group.as_ref()?.inner.members.get(self.binding?)
    }

    /// The draft-10 rate-limit fields for the whole group
    /// (draft-ietf-httpapi-ratelimit-headers-10): `RateLimit-Policy` and `RateLimit`, each one
    /// RFC 8941 List with an entry per member that limits the request, named by the member's
    /// uid (`"burst";q=3;w=1, "sustained";q=100;w=3600` and `"burst";r=0;t=1, "sustained";r=97;t=3412`).
    /// A throttled member's `t` is its wait, an admitting member's the time to its reset; `r` is
    /// what each member has left (a refused group charged nobody).
    /// Members whose uid is not printable ASCII are left out.
    pub fn ietf_draft10(&self) -> http::HeaderMap {
        let mut out = http::HeaderMap::new();
        let Some(group) = &self.group else {
            return out;
        };
        let mut policy = sfv::ListSerializer::new();
        let mut state = sfv::ListSerializer::new();
        let (Ok(q), Ok(w), Ok(r), Ok(t)) = (
            sfv::KeyRef::from_str("q"),
            sfv::KeyRef::from_str("w"),
            sfv::KeyRef::from_str("r"),
            sfv::KeyRef::from_str("t"),
        ) else {
            return out;
        };
        let int = |v: u64| sfv::Integer::try_from(v.min(999_999_999_999_999)).unwrap_or(sfv::Integer::MAX);
        for (member, d) in group.inner.members.iter().zip(&self.members) {
            let (Some(rate), Some(remaining)) = (d.rate, d.remaining) else {
                continue;
            };
            let Ok(name) = sfv::StringRef::from_str(member.uid()) else {
                continue;
            };
            // A refused group charged nobody: a member that would have admitted still has the
            // cost it reported as spent.
            let remaining =
                if self.is_throttled() && d.is_allowed() { remaining.saturating_add(d.cost) } else { remaining };
            let window = rate.period().as_secs().max(1);
            let seconds = match d.retry_after_secs() {
                Some(wait) => wait,
                None => crate::decision::ceil_secs(d.reset),
            };
            policy.bare_item(name).parameter(q, int(rate.limit())).parameter(w, int(window));
            state.bare_item(name).parameter(r, int(remaining)).parameter(t, int(seconds));
        }
        for (field, list) in [("ratelimit-policy", policy.finish()), ("ratelimit", state.finish())] {
            if let Some(value) = list.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                out.insert(http::HeaderName::from_static(field), value);
            }
        }
        out
    }

    /// Replaces the draft-10 fields that `headers` carries (a member configured with
    /// [`Headers::ietf_draft10`](crate::Headers::ietf_draft10)) with the group's
    /// ([`ietf_draft10`](Self::ietf_draft10)); other headers are left alone. Integrations call
    /// it on the answering member's resolved headers, before merging them into a response (so
    /// what an application or handler set itself still wins).
    pub fn list_members_in(&self, headers: &mut http::HeaderMap) {
        if !headers.contains_key("ratelimit") && !headers.contains_key("ratelimit-policy") {
            return;
        }
        for (name, value) in self.ietf_draft10() {
            if let Some(name) = name
                && headers.contains_key(&name)
            {
                headers.insert(name, value);
            }
        }
    }

    /// `Retry-After` in whole seconds, rounded up (for a throttled group).
    pub fn retry_after_secs(&self) -> Option<u64> {
        (self.outcome == Outcome::Throttled).then(|| self.wait.as_micros().div_ceil(1_000_000) as u64)
    }
}

/// The group's outcome and binding member from its members' decisions.
pub(super) fn conclude(members: Vec<Decision>, group: ThrottleGroup) -> GroupDecision {
    let binding = binding_of(&members);
    let (outcome, wait) = match binding.and_then(|b| members.get(b)) {
        Some(d) => (d.outcome, d.wait),
        None => (members.first().map_or(Outcome::Skipped(Skip::Rules), |d| d.outcome), Duration::ZERO),
    };
    GroupDecision { outcome, wait, members, binding, shadow: false, group: Some(group) }
}

/// The binding decision among `members` (see [`GroupDecision::binding`]); `None` when every
/// one skipped. Deferred scopes ([`Scope`](crate::Scope)) conclude by the same rule.
#[inline]
pub(crate) fn binding_of(members: &[Decision]) -> Option<usize> {
    let mut binding: Option<usize> = None;
    for (i, d) in members.iter().enumerate() {
        let binds = match binding.and_then(|b| members.get(b)) {
            None => rank(d.outcome) >= 0,
            Some(b) => binds_over(d, b),
        };
        if binds {
            binding = Some(i);
        }
    }
    binding
}

/// How strongly an outcome binds a group: a cost that never fits, then a refusal, a delay, an
/// admission; a skipped member never binds.
#[inline]
fn rank(outcome: Outcome) -> i8 {
    match outcome {
        Outcome::Never => 3,
        Outcome::Throttled => 2,
        Outcome::Delayed => 1,
        Outcome::Allowed => 0,
        Outcome::Skipped(_) => -1,
    }
}

/// Whether member decision `d` (later in the group) binds rather than `b`: a stronger outcome;
/// among admissions fewer hits left (the first on a tie); among refusals and delays the longest
/// wait (the last on a tie).
#[inline]
fn binds_over(d: &Decision, b: &Decision) -> bool {
    let (rd, rb) = (rank(d.outcome), rank(b.outcome));
    if rd != rb {
        return rd > rb;
    }
    match rd {
        0 => d.remaining.unwrap_or(u64::MAX) < b.remaining.unwrap_or(u64::MAX),
        r if r > 0 => d.wait >= b.wait,
        _ => false,
    }
}
