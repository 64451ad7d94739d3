//! Changes to an admission after the fact: refunds and lease renewals.

/// A change to what an earlier admission took, made by [`Backend::amend`] (also exported as
/// `traffik::backend::Amend`).
///
/// Both name the admission by the microsecond it was charged at
/// ([`Decision::charged_at_us`](crate::Decision::charged_at_us)): for [`Concurrency`] the
/// lease's stamp ([`Verdict::lease_us`]); for other strategies the time the backend decided at. The backend runs [`Strategy::refund`] or [`Strategy::renew`] on the key's state, in the
/// same atomic step as a decision (under the shard lock in memory, a compare-and-swap on
/// Memcached, a script on Redis), with [`Operation::input`] giving the
/// time (Redis replaces it with its own, as for decisions), the rate and the cost to give back.
///
/// [`Backend::amend`]: crate::Backend::amend
/// [`Operation::input`]: crate::backend::Operation::input
/// [`Concurrency`]: crate::strategy::Concurrency
/// [`Verdict::lease_us`]: crate::strategy::Verdict::lease_us
/// [`Strategy::refund`]: crate::strategy::Strategy::refund
/// [`Strategy::renew`]: crate::strategy::Strategy::renew
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Amend {
    /// Give back what the admission charged at `charged_at_us` took (a lease: release it).
    Refund {
        /// When the admission was charged (a lease's stamp).
        charged_at_us: u64,
    },
    /// Extend the lease taken at `charged_at_us` by one lease time from now.
    Renew {
        /// The lease's stamp.
        charged_at_us: u64,
    },
}

impl Amend {
    /// The admission it names.
    pub const fn charged_at_us(&self) -> u64 {
        match *self {
            Amend::Refund { charged_at_us } | Amend::Renew { charged_at_us } => charged_at_us,
        }
    }

    /// `"refund"` or `"renew"`.
    pub const fn name(&self) -> &'static str {
        match self {
            Amend::Refund { .. } => "refund",
            Amend::Renew { .. } => "renew",
        }
    }
}
