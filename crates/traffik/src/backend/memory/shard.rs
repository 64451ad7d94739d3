//! A shard of the in-memory store: a hash table of 32-byte entries (boxed states aside), its
//! incremental sweep and the bounded search for an expired key to replace at the cap.

use std::any::Any;
use std::sync::atomic::Ordering;

use hashbrown::HashTable;

use super::Inner;
use super::spin::{self, Mutex};
use crate::error::BackendError;
use crate::strategy::{Input, Packed, PackedStep, Slot, StrategyHandle, Verdict};

/// How far an existing key's decision lets a shard's sweep clock lag behind (microseconds).
pub(super) const SWEEP_CLOCK_STEP_US: u64 = 1_000;

/// Buckets a new key's sweep looks at (removing expired keys), below the cap.
pub(super) const SWEEP_STEP: usize = 4;

/// Most buckets a new key at the cap looks at for an expired key to replace.
pub(super) const EVICTION_SCAN: usize = 64;

/// Set in [`Entry::meta`] when the entry's state lives in the shard's box slab.
pub(super) const BOXED: u64 = 1 << 63;

/// The expiry part of [`Entry::meta`].
pub(super) const EXPIRY: u64 = BOXED - 1;

/// One key: 32 bytes, aligned so that an entry never straddles two cache lines.
///
/// `state` holds the strategy's [`Packed`] words, or, when `meta` has [`BOXED`], the index of
/// the state's box in [`Shard::boxes`] (strategies whose state does not pack into two words).
/// An entry whose expiry has passed holds no state.
#[repr(C, align(32))]
pub(super) struct Entry {
    pub(super) key: u64,
    pub(super) meta: u64,
    pub(super) state: [u64; 2],
}

impl Entry {
    pub(super) fn expires_at(&self) -> u64 {
        self.meta & EXPIRY
    }

    pub(super) fn boxed(&self) -> bool {
        self.meta & BOXED != 0
    }

    /// Sets the expiry and whether the state is boxed.
    #[inline]
    pub(super) fn set_expiry(&mut self, expires_at: u64, boxed: bool) {
        self.meta = if boxed { BOXED } else { 0 } | expires_at.min(EXPIRY);
    }
}

/// Boxed states of one shard, addressed by index; freed indexes are reused.
#[derive(Default)]
pub(super) struct Boxes {
    pub(super) slots: Vec<Option<Box<dyn Any + Send + Sync>>>,
    pub(super) free: Vec<usize>,
}

impl Boxes {
    pub(super) fn insert(&mut self, b: Box<dyn Any + Send + Sync>) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(b);
                i
            }
            None => {
                self.slots.push(Some(b));
                self.slots.len() - 1
            }
        }
    }

    pub(super) fn take(&mut self, i: usize) -> Option<Box<dyn Any + Send + Sync>> {
        self.slots.get_mut(i).and_then(Option::take)
    }

    pub(super) fn put(&mut self, i: usize, b: Box<dyn Any + Send + Sync>) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(b);
        }
    }

    pub(super) fn release(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = None;
            self.free.push(i);
        }
    }

    /// Releases the box an entry owns, if any.
    pub(super) fn release_entry(&mut self, e: &Entry) {
        if e.boxed() {
            self.release(e.state[0] as usize);
        }
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }
}

pub(super) fn verdict_of(step: PackedStep) -> Verdict {
    match step {
        PackedStep::Kept(v) | PackedStep::Packed(v, ..) | PackedStep::Boxed(v, ..) => v,
    }
}

/// The live state of `e` (its box is taken out of `boxes` for the duration of a decision).
pub(super) fn take_slot(boxes: &mut Boxes, e: &Entry) -> Option<Slot> {
    if e.boxed() { boxes.take(e.state[0] as usize).map(Slot::Boxed) } else { Some(Slot::Packed(Packed(e.state))) }
}

/// Stores `slot` back into `e` with expiry `expires_at`; `None` leaves `e` without state.
pub(super) fn put_slot(boxes: &mut Boxes, e: &mut Entry, slot: Option<Slot>, expires_at: u64) {
    match slot {
        Some(Slot::Packed(p)) => {
            boxes.release_entry(e);
            e.state = p.0;
            e.set_expiry(expires_at, false);
        }
        Some(Slot::Boxed(b)) => {
            if e.boxed() {
                boxes.put(e.state[0] as usize, b);
            } else {
                e.state = [boxes.insert(b) as u64, 0];
            }
            e.set_expiry(expires_at, true);
        }
        None => {
            boxes.release_entry(e);
            e.meta = 0;
        }
    }
}

/// A decision on an existing key writes nothing here but the lock (and, at most once per
/// millisecond, `high_water`): a thread waiting for the lock keeps reading its cache line, and
/// a holder that wrote to that line would have to fetch it back before it could release.
#[repr(C)]
pub(super) struct Shard {
    /// Latest `now` seen (by new keys exactly, by existing keys to within
    /// [`SWEEP_CLOCK_STEP_US`]); [`InMemoryBackend::sweep`] uses it, so manual clocks work too.
    pub(super) high_water: u64,
    /// Where the incremental sweep and the eviction sweep look next (a bucket index).
    pub(super) hand: usize,
    pub(super) table: HashTable<Entry>,
    pub(super) boxes: Boxes,
    /// Most keys this shard holds; the shards' caps add up to `max_keys`.
    pub(super) cap: usize,
}

#[repr(align(64))]
pub(super) struct Padded(pub(super) Mutex<Shard>);

/// A locked shard.
pub(super) type ShardGuard<'a> = parking_lot::lock_api::MutexGuard<'a, spin::RawSpin, Shard>;

/// What a group member's admission writes, decided while its shard is held.
pub(super) enum Plan {
    /// Nothing (the strategy keeps its state).
    Nothing,
    /// Two words of state into the entry in this bucket.
    Update { bucket: usize, state: Packed, expires_at: u64 },
    /// A new key with this state.
    Insert(Slot, u64),
    /// A boxed state: decided again when applied (strategies are deterministic).
    Again,
}

impl Shard {
    /// A group member's verdict on its current state, and what admitting it writes.
    pub(super) fn plan(&mut self, hash: u64, strategy: &StrategyHandle, input: &Input) -> (Verdict, Plan) {
        let now = input.now_us.min(EXPIRY - 1);
        let Some(bucket) = self.table.find_bucket_index(hash, |e| e.key == hash) else {
            return match strategy.decide_packed(None, input, true) {
                PackedStep::Kept(v) => (v, Plan::Nothing),
                PackedStep::Packed(v, _, 0) | PackedStep::Boxed(v, _, 0) => (v, Plan::Nothing),
                PackedStep::Packed(v, p, ttl) => (v, Plan::Insert(Slot::Packed(p), now.saturating_add(ttl))),
                PackedStep::Boxed(v, b, ttl) => (v, Plan::Insert(Slot::Boxed(b), now.saturating_add(ttl))),
            };
        };
        let Some(e) = self.table.get_bucket_mut(bucket) else {
            return (Verdict::never(), Plan::Nothing);
        };
        let live = e.expires_at() > now;
        if live && e.boxed() {
            let mut slot = take_slot(&mut self.boxes, e);
            let (verdict, _) = strategy.decide_slot(&mut slot, input, false);
            let expires_at = e.expires_at();
            put_slot(&mut self.boxes, e, slot, expires_at);
            return (verdict, Plan::Again);
        }
        let state = if live { Some(Packed(e.state)) } else { None };
        match strategy.decide_packed(state, input, true) {
            PackedStep::Kept(v) => (v, Plan::Nothing),
            PackedStep::Packed(v, state, ttl) => {
                (v, Plan::Update { bucket, state, expires_at: now.saturating_add(ttl) })
            }
            PackedStep::Boxed(v, ..) => (v, Plan::Again),
        }
    }

    /// Counts a new key and lets it pay for the sweep: the next [`SWEEP_STEP`] buckets lose
    /// their expired keys, so every key that has expired is gone after as many new keys as
    /// the table has buckets, a quarter of them ([`SWEEP_STEP`] = 4) at most.
    ///
    /// Expiry is judged at the new key's `now`, not at the latest time the shard has seen: a
    /// clock that goes back (a test's manual clock, a backend reused across time bases) never
    /// sweeps away state that is live at the times it is asked about.
    pub(super) fn observe_insert(&mut self, now: u64) {
        self.high_water = self.high_water.max(now);
        let buckets = self.table.num_buckets();
        if buckets == 0 {
            return;
        }
        for _ in 0..SWEEP_STEP {
            let i = self.hand % buckets;
            self.hand = i + 1;
            if self.table.get_bucket(i).is_some_and(|e| e.expires_at() <= now) {
                self.remove_bucket(i);
            }
        }
    }

    /// Removes the key in bucket `i` (which must hold one), with its box.
    pub(super) fn remove_bucket(&mut self, i: usize) -> Option<Entry> {
        let (removed, _) = self.table.get_bucket_entry(i).ok()?.remove();
        self.boxes.release_entry(&removed);
        Some(removed)
    }

    /// Drops every expired key (a whole pass over the shard: only for [`InMemoryBackend::sweep`]).
    pub(super) fn sweep(&mut self) {
        let now = self.high_water;
        let boxes = &mut self.boxes;
        self.table.retain(|e| {
            let live = e.expires_at() > now;
            if !live {
                boxes.release_entry(e);
            }
            live
        });
    }

    /// Makes room for one more key at the cap (beyond `pending` keys already promised room),
    /// looking at no more than [`EVICTION_SCAN`] buckets after the last one looked at: frees
    /// the first expired key found (but none of `spare`, a group's own keys, which are
    /// rewritten in place), or refuses.
    pub(super) fn make_room(
        &mut self,
        inner: &Inner,
        now: u64,
        pending: usize,
        spare: &[u64],
    ) -> Result<(), BackendError> {
        if self.table.len() + pending < self.cap {
            return Ok(());
        }
        let buckets = self.table.num_buckets();
        for _ in 0..EVICTION_SCAN.min(buckets) {
            let i = self.hand % buckets;
            self.hand = i + 1;
            if self.table.get_bucket(i).is_some_and(|e| e.expires_at() <= now && !spare.contains(&e.key)) {
                self.remove_bucket(i);
                inner.evictions.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::telemetry::count_memory_eviction(&inner.namespace);
                return Ok(());
            }
        }
        inner.refusals.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::telemetry::count_memory_refusal(&inner.namespace);
        Err(BackendError::Full { max_keys: inner.max_keys })
    }
}
