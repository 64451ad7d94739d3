//! What a throttle decided.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Rate;
use crate::key::Key;
use crate::strategy::{Verdict, VerdictKind};

/// Why a throttle let a request through without asking its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// The throttle (or its registry) is disabled.
    Disabled,
    /// The identifier returned [`Identity::Exempted`](crate::Identity::Exempted).
    Exempted,
    /// The rate is unlimited.
    Unlimited,
    /// The cost is zero.
    ZeroCost,
    /// A gating rule did not match, or a bypass rule did.
    Rules,
}

/// The outcome of a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// Serialized as `"allowed"`, `"delayed"`, `"throttled"`, `"never"` or `{"skipped": "<reason>"}`.
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Admitted.
    Allowed,
    /// Admitted after [`Decision::wait`]: hold the request that long, then serve it.
    Delayed,
    /// Not admitted; retry after [`Decision::wait`].
    Throttled,
    /// The cost can never be admitted at this rate; retrying is pointless.
    Never,
    /// Not limited at all.
    Skipped(Skip),
}

/// Where a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The throttle's backend.
    Backend,
    /// A fallback backend, after the primary failed or while its circuit breaker is open.
    Fallback,
    /// The error policy, because the backend failed.
    ErrorPolicy,
    /// No backend was asked.
    None,
}

/// A throttle's decision for one hit. A hit whose decision is ignored is almost always a bug
/// (the request goes through whatever it says), hence `#[must_use]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[must_use]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// The storage key (None when skipped before the key was built).
    pub key: Option<Key>,
    /// The rate applied (None when skipped before it was resolved).
    pub rate: Option<Rate>,
    /// The cost charged (or that would have been).
    pub cost: u64,
    /// Unit-cost hits left right after this decision (None when unknown).
    pub remaining: Option<u64>,
    /// Throttled: time until a retry passes. Delayed: how long to hold the request.
    #[serde(with = "millis")]
    pub wait: Duration,
    /// Time until the quota is fully restored (or the window ends).
    #[serde(with = "millis")]
    pub reset: Duration,
    /// Where the decision came from.
    pub source: Source,
    /// Whether shadow mode let this decision through: the outcome is what the throttle decided
    /// (throttled, never, or delayed), but it was in shadow mode
    /// ([`Throttle::set_shadow`](crate::Throttle::set_shadow),
    /// [`Context::shadow`](crate::Context::shadow)), so integrations neither refuse nor hold the
    /// request. Always `false` on allowed and skipped decisions. Serialized only when `true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
    /// An admission's charge: when the backend that decided made it, in microseconds on that
    /// backend's clock (the throttle's clock; a Redis server's `TIME` when it keeps time; a
    /// lease's stamp for [`Concurrency`](crate::strategy::Concurrency)). What
    /// [`Throttle::refund`](crate::Throttle::refund) names the charge by: with it, a window
    /// strategy gives the cost back to the window that counted it, or to none when that
    /// window has passed. 0 when nothing was charged. Serialized only when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub charged_at_us: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// When an admission by `v`, decided with the input's `now_us`, was charged (0: refused).
#[inline]
fn charged_at(v: &Verdict, now_us: u64) -> u64 {
    if !v.is_admitted() {
        0
    } else if v.lease_us != 0 {
        v.lease_us
    } else if v.at_us != 0 {
        v.at_us
    } else {
        now_us
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Decision {
    pub(crate) fn skipped(skip: Skip) -> Self {
        Decision {
            outcome: Outcome::Skipped(skip),
            key: None,
            rate: None,
            cost: 0,
            remaining: None,
            wait: Duration::ZERO,
            reset: Duration::ZERO,
            source: Source::None,
            shadow: false,
            charged_at_us: 0,
        }
    }

    /// Let through because the backend failed and the error policy fails open.
    pub(crate) fn failed_open(key: Key, rate: Rate, cost: u64) -> Self {
        Decision {
            outcome: Outcome::Allowed,
            key: Some(key),
            rate: Some(rate),
            cost,
            remaining: None,
            wait: Duration::ZERO,
            reset: Duration::ZERO,
            source: Source::ErrorPolicy,
            shadow: false,
            charged_at_us: 0,
        }
    }

    /// A decision on `key` still waiting for its verdict ([`settle`](Self::settle)): built
    /// where the key is, so the key is not moved again.
    #[inline]
    pub(crate) fn pending(key: Key, rate: Rate, cost: u64) -> Self {
        Decision {
            outcome: Outcome::Skipped(Skip::Disabled),
            key: Some(key),
            rate: Some(rate),
            cost,
            remaining: None,
            wait: Duration::ZERO,
            reset: Duration::ZERO,
            source: Source::Backend,
            shadow: false,
            charged_at_us: 0,
        }
    }

    /// Fills a [`pending`](Self::pending) decision in from the backend's verdict.
    #[inline]
    pub(crate) fn settle(&mut self, v: Verdict, source: Source, now_us: u64) {
        self.outcome = v.kind.outcome();
        self.charged_at_us = charged_at(&v, now_us);
        self.remaining = if v.kind == VerdictKind::Never { None } else { Some(v.remaining) };
        self.wait = Duration::from_micros(v.wait_us);
        self.reset = Duration::from_micros(v.reset_us);
        self.source = source;
    }

    #[inline]
    pub(crate) fn from_verdict(
        v: Verdict,
        key: Key,
        rate: Rate,
        cost: u64,
        source: Source,
        shadow: bool,
        now_us: u64,
    ) -> Self {
        let outcome = v.kind.outcome();
        Decision {
            outcome,
            key: Some(key),
            rate: Some(rate),
            cost,
            // A cost that can never fit is refused before the state is read: how much is left
            // is unknown, and "0" would be wrong.
            remaining: if v.kind == VerdictKind::Never { None } else { Some(v.remaining) },
            wait: Duration::from_micros(v.wait_us),
            reset: Duration::from_micros(v.reset_us),
            source,
            shadow,
            charged_at_us: charged_at(&v, now_us),
        }
    }

    /// Whether this decision charged a backend: admitted (or delayed) by the throttle's backend
    /// or its fallback, so that [`Throttle::refund`](crate::Throttle::refund) has something to
    /// give back. Not when skipped, let through by the error policy, or refused (shadow mode
    /// lets a refusal through without charging it).
    pub fn is_charged(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::Delayed)
            && matches!(self.source, Source::Backend | Source::Fallback)
    }

    /// Whether the throttle admitted the request (possibly after [`Decision::wait`], when
    /// delayed).
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::Delayed | Outcome::Skipped(_))
    }

    /// Whether the throttle refused the request (throttled or never admissible), enforced or
    /// not: in shadow mode ([`shadow`](Self::shadow)) the request still goes through.
    pub fn is_throttled(&self) -> bool {
        !self.is_allowed()
    }

    /// Whether the request is refused: the throttle refused it and is not in shadow mode. What
    /// integrations answer with a 429.
    pub fn is_refused(&self) -> bool {
        self.is_throttled() && !self.shadow
    }

    /// How long to hold the request before serving it: the wait of a delayed decision, zero
    /// for every other outcome and in shadow mode (which never holds a request).
    pub fn hold(&self) -> Duration {
        if self.outcome == Outcome::Delayed && !self.shadow { self.wait } else { Duration::ZERO }
    }

    /// Seconds to put in `Retry-After`: the wait rounded up (at least 1) when throttled; `None`
    /// when allowed or when the cost can never fit (a retry would not help).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Throttled => Some(ceil_secs(self.wait).max(1)),
            _ => None,
        }
    }
}

impl VerdictKind {
    /// The outcome of a decision with this verdict.
    #[inline]
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            VerdictKind::Admit => Outcome::Allowed,
            VerdictKind::Delay => Outcome::Delayed,
            VerdictKind::Deny => Outcome::Throttled,
            VerdictKind::Never => Outcome::Never,
        }
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
