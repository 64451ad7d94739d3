//! For backend authors: the built-in strategies described as data, so that a backend can run
//! its own implementation of each (the Redis backend runs each as one Lua script) instead of
//! the generic path over serialized state.
//!
//! [`StrategyHandle::builtin`](super::StrategyHandle::builtin) says which built-in a handle
//! holds, with its parameters; a custom strategy is never one, and a backend serves it through
//! [`StrategyHandle::decide_bytes`](super::StrategyHandle::decide_bytes) and
//! [`StrategyHandle::amend_bytes`](super::StrategyHandle::amend_bytes). Nothing here is needed
//! to write a strategy.

use super::{CostAwareSpec, Packed, RolloverSpec, Strategy};

pub use super::{MAX_SLOTS, MAX_SPAN_US, MeterParams, MeterSpec};

/// The built-in strategies and their parameters, so backends can run native implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Builtin {
    /// [`FixedWindow`](super::FixedWindow), and [`Reserved`](super::Reserved) (whose levels
    /// travel as the hit's rate).
    FixedWindow,
    /// [`SlidingWindowCounter`](super::SlidingWindowCounter).
    SlidingWindowCounter,
    /// [`SlidingWindowLog`](super::SlidingWindowLog).
    SlidingWindowLog,
    /// Any of the meter family (token buckets, leaky buckets, GCRA), reduced to its capacity and
    /// queue, both in units of the rate's emission interval or microseconds.
    Meter(MeterSpec),
    /// [`QuotaRollover`](super::QuotaRollover) with its cap.
    QuotaRollover(RolloverSpec),
    /// [`CostAwareTokenBucket`](super::CostAwareTokenBucket) with its parameters.
    CostAware(CostAwareSpec),
    /// [`Concurrency`](super::Concurrency).
    Concurrency,
}

/// What only the built-ins tell the backends: which one they are, and how their state packs
/// into two words for the in-memory backend (no allocation per key). Crate-private: a handle
/// finds out whether it holds a built-in when it is made ([`StrategyHandle::new`](super::StrategyHandle::new)).
pub(crate) trait Native: Strategy + Clone {
    /// Which built-in this is.
    fn builtin(&self) -> Builtin;

    /// Packs the state into two words, if it fits (otherwise it is boxed).
    fn pack(&self, _state: &Self::State) -> Option<Packed> {
        None
    }

    /// The inverse of [`pack`](Self::pack).
    fn unpack(&self, _packed: Packed) -> Option<Self::State> {
        None
    }
}
