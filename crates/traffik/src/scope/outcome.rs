//! What a scope reports: its state, what an entry queued, the decision of applying it, and its errors.

use std::time::Duration;

use serde::Serialize;

use crate::decision::{Decision, Outcome, Skip};
use crate::error::{BackendError, Error};
use crate::key::Key;
use crate::rate::Rate;

/// Where a scope is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeState {
    /// Taking entries.
    Open,
    /// [`Scope::apply`](super::Scope::apply) is charging the entries.
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

/// What [`Scope::add`](super::Scope::add) did with a cost.
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

/// One queued entry, as [`Scope::entries`](super::Scope::entries) lists it.
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

/// What [`Scope::apply`](super::Scope::apply) did.
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

/// Why [`Scope::run`](super::Scope::run) or [`Scope::run_with`](super::Scope::run_with) failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<T, E> {
    /// The work failed. The scope was cancelled, or (when the predicate of
    /// [`run_with`](super::Scope::run_with) chose so) applied.
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

/// The scope's outcome and binding charge.
pub(super) fn concluded(charges: Vec<Charge>) -> ScopeDecision {
    let decisions: Vec<Decision> = charges.iter().map(|c| c.decision.clone()).collect();
    let binding = crate::group::binding_of(&decisions);
    let (outcome, wait) = match binding.and_then(|b| charges.get(b)) {
        Some(c) => (c.decision.outcome, c.decision.wait),
        None => (Outcome::Allowed, Duration::ZERO),
    };
    ScopeDecision { outcome, wait, charges, binding }
}
