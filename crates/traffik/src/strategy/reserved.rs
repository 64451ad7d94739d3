//! One shared window of capacity L per key, of which each hit may fill only up to its priority
//! level's ceiling: the strategy half of [`Priorities`](crate::priority::Priorities).

use super::native::{Builtin, Native};
use super::{FixedWindow, FixedWindowState, Input, Metadata, Packed, Step, Strategy, Write, json_u64};

/// A fixed window of capacity L shared by every priority level of a key, where a hit is
/// admitted iff `used + cost <= ceiling`: the ceiling is the limit of the hit's rate, which
/// [`Priorities`](crate::priority::Priorities) sets to L less the capacity reserved for the
/// levels above the hit's. One key and one counter per client, whatever its level: lower
/// levels cannot fill the share that higher ones keep, and a higher level can always use its
/// reserve, however much lower levels tried.
///
/// The decision is exactly [`FixedWindow`]'s with the ceiling as its limit (so every backend
/// runs the fixed window's native code, and Redis its script), and so is the rate-change rule:
/// usage carries over exactly between levels (same period), and a window of another length
/// starts fresh. What this type adds is the capacity, for `stat`: the metadata says the
/// capacity, the ceiling the hit was held to and what is reserved above it.
///
/// Build it with [`Priorities::strategy`](crate::priority::Priorities::strategy). Under a
/// plain fixed rate it is a fixed window whose metadata reports nothing reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    capacity: u64,
}

impl Reserved {
    /// A shared window of `capacity` (the limit of the priorities' base rate).
    pub const fn new(capacity: u64) -> Self {
        Reserved { capacity }
    }

    /// The capacity shared by every level.
    pub const fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl Strategy for Reserved {
    type State = FixedWindowState;

    fn name(&self) -> &str {
        "prio"
    }

    #[inline]
    fn decide(&self, state: Option<&FixedWindowState>, input: &Input) -> Step<FixedWindowState> {
        FixedWindow.decide(state, input)
    }

    fn metadata(&self, state: Option<&FixedWindowState>, input: &Input) -> Metadata {
        let mut m = FixedWindow.metadata(state, input);
        let ceiling = input.rate.limit();
        let capacity = self.capacity.max(ceiling);
        m.insert("strategy".into(), "priority_reserve".into());
        m.insert("capacity".into(), json_u64(capacity));
        m.insert("ceiling".into(), json_u64(ceiling));
        m.insert("reserved_above".into(), json_u64(capacity - ceiling));
        m
    }

    fn refund(&self, state: &FixedWindowState, charged_at_us: u64, input: &Input) -> Option<Write<FixedWindowState>> {
        FixedWindow.refund(state, charged_at_us, input)
    }
}

impl Native for Reserved {
    fn builtin(&self) -> Builtin {
        Builtin::FixedWindow
    }

    #[inline]
    fn pack(&self, state: &FixedWindowState) -> Option<Packed> {
        FixedWindow.pack(state)
    }

    #[inline]
    fn unpack(&self, packed: Packed) -> Option<FixedWindowState> {
        FixedWindow.unpack(packed)
    }
}
