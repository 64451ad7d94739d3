//! The embedded default backend: sharded, bounded, expiring, lock-per-shard.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use smallvec::SmallVec;

use self::spin::Mutex;

use super::{Backend, BoxFuture, GroupOperation, Mode, Operation};
use crate::error::BackendError;
use crate::error::OnError;
use crate::key::Key;
use crate::strategy::{Input, Metadata, Packed, PackedStep, Slot, StrategyHandle, Verdict};

const KIND: &str = "memory";

/// The shard lock: a test-and-test-and-set spin lock. Almost every critical section is one
/// strategy step (tens of nanoseconds), so a waiter is better off spinning than parking; and
/// with no parked waiters to wake, unlocking is a plain store rather than a second atomic
/// read-modify-write. The exceptions are sweeps and evictions, which walk the whole shard
/// (milliseconds for a very large one): a waiter that keeps finding the lock held yields its
/// time slice, then sleeps in growing steps, so it does not burn a core meanwhile.
///
/// Strategies run while their key's shard is held, so a strategy must not call back into the
/// backend (the [`Strategy`](crate::strategy::Strategy) contract: a pure function of its
/// arguments); one that did would wait for itself.
#[allow(unsafe_code)]
mod spin {
    use std::sync::atomic::{AtomicBool, Ordering};

    use parking_lot::lock_api;

    /// Failed looks at a held lock before a waiter starts yielding its time slice (the holder
    /// may have been descheduled). A waiter never sleeps: it may be an async runtime's worker,
    /// and the work done under a shard lock is bounded (one decision, or a new key's look at
    /// no more than 64 buckets), so the wait is always short once the holder runs.
    const SPINS: u32 = 100;

    pub(super) struct RawSpin(AtomicBool);

    impl RawSpin {
        #[cold]
        fn lock_contended(&self) {
            let mut looks = 0u32;
            loop {
                while self.0.load(Ordering::Relaxed) {
                    if looks < SPINS {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    looks = looks.saturating_add(1);
                }
                if lock_api::RawMutex::try_lock(self) {
                    return;
                }
            }
        }
    }

    // SAFETY: `try_lock` succeeds for exactly one caller between unlocks (a compare-and-swap from
    // false to true, with Acquire ordering), `lock` returns only after such a success, and
    // `unlock` (called only by the holder, per the trait's contract) publishes the holder's
    // writes with a Release store of false.
    unsafe impl lock_api::RawMutex for RawSpin {
        const INIT: RawSpin = RawSpin(AtomicBool::new(false));
        type GuardMarker = lock_api::GuardSend;

        #[inline]
        fn lock(&self) {
            if !self.try_lock() {
                self.lock_contended();
            }
        }

        #[inline]
        fn try_lock(&self) -> bool {
            self.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
        }

        #[inline]
        unsafe fn unlock(&self) {
            self.0.store(false, Ordering::Release);
        }

        fn is_locked(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    pub(super) type Mutex<T> = lock_api::Mutex<RawSpin, T>;
}

/// What the in-memory backend does when a new key arrives and its shard is at the cap.
///
/// State that is harmless to forget goes first: expired state, which is state back at its full
/// quota (every built-in strategy's time to live ends exactly there). Live state limits its
/// client; forgetting it would hand that client fresh quota (measured before this rule: a client
/// limited to 1,000 a day got over 8 million hits in 3 s while a flood of new addresses kept
/// evicting its key). So live state is never dropped, and when a new key finds no expired key to
/// replace, it is refused with [`BackendError::Full`] and the throttle's error policy decides
/// (by default a 429 for one second; `ErrorPolicy::allow` admits new clients unlimited while the
/// backend is full). No client ever gets more than its limit, whatever floods the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Eviction {
    /// Replace only expired keys; refuse new keys while every key is live. The default, and
    /// today the only choice (the variant is named so that others can be added).
    #[default]
    RejectNew,
}

/// A key hashed for one strategy, so repeated decisions skip hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PreparedKey(u64);

/// How far an existing key's decision lets a shard's sweep clock lag behind (microseconds).
const SWEEP_CLOCK_STEP_US: u64 = 1_000;

/// Buckets a new key's sweep looks at (removing expired keys), below the cap.
const SWEEP_STEP: usize = 4;
/// Most buckets a new key at the cap looks at for an expired key to replace.
const EVICTION_SCAN: usize = 64;

/// Set in [`Entry::meta`] when the entry's state lives in the shard's box slab.
const BOXED: u64 = 1 << 63;
/// The expiry part of [`Entry::meta`].
const EXPIRY: u64 = BOXED - 1;

/// One key: 32 bytes, aligned so that an entry never straddles two cache lines.
///
/// `state` holds the strategy's [`Packed`] words, or, when `meta` has [`BOXED`], the index of
/// the state's box in [`Shard::boxes`] (strategies whose state does not pack into two words).
/// An entry whose expiry has passed holds no state.
#[repr(C, align(32))]
struct Entry {
    key: u64,
    meta: u64,
    state: [u64; 2],
}

impl Entry {
    fn expires_at(&self) -> u64 {
        self.meta & EXPIRY
    }

    fn boxed(&self) -> bool {
        self.meta & BOXED != 0
    }

    /// Sets the expiry and whether the state is boxed.
    #[inline]
    fn set_expiry(&mut self, expires_at: u64, boxed: bool) {
        self.meta = if boxed { BOXED } else { 0 } | expires_at.min(EXPIRY);
    }
}

/// Boxed states of one shard, addressed by index; freed indexes are reused.
#[derive(Default)]
struct Boxes {
    slots: Vec<Option<Box<dyn Any + Send + Sync>>>,
    free: Vec<usize>,
}

impl Boxes {
    fn insert(&mut self, b: Box<dyn Any + Send + Sync>) -> usize {
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

    fn take(&mut self, i: usize) -> Option<Box<dyn Any + Send + Sync>> {
        self.slots.get_mut(i).and_then(Option::take)
    }

    fn put(&mut self, i: usize, b: Box<dyn Any + Send + Sync>) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(b);
        }
    }

    fn release(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = None;
            self.free.push(i);
        }
    }

    /// Releases the box an entry owns, if any.
    fn release_entry(&mut self, e: &Entry) {
        if e.boxed() {
            self.release(e.state[0] as usize);
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }
}

fn verdict_of(step: PackedStep) -> Verdict {
    match step {
        PackedStep::Kept(v) | PackedStep::Packed(v, ..) | PackedStep::Boxed(v, ..) => v,
    }
}

/// The live state of `e` (its box is taken out of `boxes` for the duration of a decision).
fn take_slot(boxes: &mut Boxes, e: &Entry) -> Option<Slot> {
    if e.boxed() { boxes.take(e.state[0] as usize).map(Slot::Boxed) } else { Some(Slot::Packed(Packed(e.state))) }
}

/// Stores `slot` back into `e` with expiry `expires_at`; `None` leaves `e` without state.
fn put_slot(boxes: &mut Boxes, e: &mut Entry, slot: Option<Slot>, expires_at: u64) {
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
struct Shard {
    /// Latest `now` seen (by new keys exactly, by existing keys to within
    /// [`SWEEP_CLOCK_STEP_US`]); [`InMemoryBackend::sweep`] uses it, so manual clocks work too.
    high_water: u64,
    /// Where the incremental sweep and the eviction sweep look next (a bucket index).
    hand: usize,
    table: HashTable<Entry>,
    boxes: Boxes,
    /// Most keys this shard holds; the shards' caps add up to `max_keys`.
    cap: usize,
}

#[repr(align(64))]
struct Padded(Mutex<Shard>);

struct Inner {
    namespace: String,
    shards: Box<[Padded]>,
    /// `shards.len() - 1` (the count is a power of two).
    shard_mask: usize,
    max_keys: usize,
    eviction: Eviction,
    /// Per-process random seed, so keys cannot be chosen to collide.
    seed: u64,
    evictions: AtomicU64,
    refusals: AtomicU64,
    on_error: Option<OnError>,
}

/// In-process storage: fast, bounded, not shared between processes.
///
/// State lives in `shards` hash tables, each behind its own lock; a decision locks one shard for
/// a few hundred nanoseconds at most. Keys are stored as 64-bit hashes (seeded randomly per
/// backend) of the key and strategy name, so raw client identities are never stored and keys
/// cannot be crafted to collide; two live keys share state only by an accidental collision, with
/// probability about `live_keys / 2^64` per new key (5e-14 with a million live keys). Each key
/// costs one 32-byte entry (hash, expiry, two words of state) plus the hash table's spare
/// buckets; states that do not fit two words (the sliding log, most custom strategies) are boxed.
/// Expired state is treated as absent on access and swept incrementally: each new key looks at
/// a few buckets after the last one looked at and removes the expired keys there.
///
/// `max_keys` caps memory; at the cap each new key looks at a bounded number of buckets for
/// an expired key to replace, never the whole shard, and is refused if it finds none (see
/// [`Eviction`]): a limited client never gets fresh quota because others flood the backend.
///
/// Cheap to clone; clones share one store.
///
/// ```
/// use traffik::InMemoryBackend;
/// let backend = InMemoryBackend::builder().namespace("api").max_keys(100_000).build();
/// assert_eq!(backend.len(), 0);
/// ```
#[derive(Clone)]
pub struct InMemoryBackend {
    inner: Arc<Inner>,
}

/// Configures an [`InMemoryBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct InMemoryBuilder {
    namespace: String,
    shards: usize,
    max_keys: usize,
    eviction: Eviction,
    on_error: Option<OnError>,
}

impl Default for InMemoryBuilder {
    fn default() -> Self {
        InMemoryBuilder {
            namespace: "inmemory".into(),
            shards: 64,
            max_keys: 1_000_000,
            eviction: Eviction::default(),
            on_error: None,
        }
    }
}

impl InMemoryBuilder {
    /// Key prefix (default `"inmemory"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Number of independently locked shards (default 64, at least 1; rounded down to a power of
    /// two and to at most `max_keys`).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// Most keys held at once (default 1,000,000, at least 1); see [`Eviction`].
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// What to do at the cap.
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }

    /// What throttles on this backend do when it fails, if they set no error policy of their
    /// own (default: fail closed). Richer policies (fallback, breaker, retry) belong to the
    /// throttle: [`ThrottleBuilder::on_error`](crate::ThrottleBuilder::on_error).
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = Some(on_error);
        self
    }

    /// Builds the backend.
    pub fn build(self) -> InMemoryBackend {
        let wanted = self.shards.min(self.max_keys).max(1);
        // A power of two, so picking a shard is a mask rather than a division.
        let shards = 1usize << wanted.ilog2();
        // The caps add up to exactly `max_keys` (shards <= max_keys, so each holds at least one).
        let (base, extra) = (self.max_keys / shards, self.max_keys % shards);
        let shards: Box<[Padded]> = (0..shards)
            .map(|i| {
                Padded(Mutex::new(Shard {
                    high_water: 0,
                    hand: 0,
                    table: HashTable::new(),
                    boxes: Boxes::default(),
                    cap: base + usize::from(i < extra),
                }))
            })
            .collect();
        InMemoryBackend {
            inner: Arc::new(Inner {
                namespace: self.namespace,
                shard_mask: shards.len() - 1,
                shards,
                max_keys: self.max_keys,
                eviction: self.eviction,
                seed: fastrand::u64(..),
                evictions: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                on_error: self.on_error,
            }),
        }
    }
}

impl Default for InMemoryBackend {
    fn default() -> Self {
        InMemoryBackend::new()
    }
}

impl InMemoryBackend {
    /// A backend with default settings.
    pub fn new() -> Self {
        InMemoryBuilder::default().build()
    }

    /// Configures a backend.
    pub fn builder() -> InMemoryBuilder {
        InMemoryBuilder::default()
    }

    /// Whether `self` and `other` are clones of one store.
    pub(crate) fn same_store(&self, other: &InMemoryBackend) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Hashes a key for `strategy` once, for repeated [`decide_prepared`](Self::decide_prepared).
    #[inline]
    pub fn prepare(&self, key: &Key, strategy: &StrategyHandle) -> PreparedKey {
        // One seeded 64-bit pass over the key; the strategy name is folded into the seed, so
        // equal keys of different strategies land apart. The seed is random per backend, so
        // keys cannot be chosen to collide.
        PreparedKey(xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), self.inner.seed ^ strategy.name_hash()))
    }

    fn shard(&self, key: PreparedKey) -> &Mutex<Shard> {
        // Bits 32.. pick the shard; the table uses the low bits and the top 7.
        &self.inner.shards[((key.0 >> 32) as usize) & self.inner.shard_mask].0
    }

    /// Decides on a prepared key, synchronously. This is the whole backend hot path.
    #[inline]
    pub fn decide_prepared(
        &self,
        key: PreparedKey,
        strategy: &StrategyHandle,
        input: &Input,
        mode: Mode,
    ) -> Result<Verdict, BackendError> {
        let mut guard = self.shard(key).lock();
        self.decide_in(&mut guard, key, strategy, input, mode, 0)
    }

    /// Decides prepared keys as one, synchronously (see [`Backend::decide_group`]): every shard
    /// involved is locked, in index order (so groups never wait on each other in a circle),
    /// every member is asked without writing, then, if all are admitted and there is room for
    /// their new keys, every member's decision is applied. Deterministic strategies answer the
    /// same twice, so the applied verdicts are the ones asked.
    pub(crate) fn decide_group_prepared(
        &self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        verdicts: &mut Verdicts,
    ) -> Result<(), BackendError> {
        const SMALL: usize = 4;
        let n = members.len();
        // Working space on the stack for small groups (the common case), on the heap beyond.
        if n <= SMALL {
            if self.decide_group_known(members, mode, verdicts) {
                return Ok(());
            }
            let mut order = [0usize; SMALL];
            let mut guards: [Option<ShardGuard<'_>>; SMALL] = [const { None }; SMALL];
            let mut plans: [Plan; SMALL] = [const { Plan::Nothing }; SMALL];
            self.decide_group_in(members, mode, &mut order[..n], &mut guards[..n], &mut plans[..n], verdicts)
        } else {
            let mut guards = Vec::new();
            guards.resize_with(n, || None);
            let mut plans = Vec::new();
            plans.resize_with(n, || Plan::Nothing);
            self.decide_group_in(members, mode, &mut vec![0; n], &mut guards, &mut plans, verdicts)
        }
    }

    /// The common case of a small group, decided with less bookkeeping: every member's key is
    /// already stored with its state in the entry itself (no new key, no boxed state). `None`,
    /// having written nothing, when that does not hold: the general path decides.
    #[inline]
    fn decide_group_known(
        &self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        verdicts: &mut Verdicts,
    ) -> bool {
        const SMALL: usize = 4;
        let n = members.len();
        if n > SMALL {
            return false;
        }
        let shard_of = |key: PreparedKey| ((key.0 >> 32) as usize) & self.inner.shard_mask;
        // Each member's shard, and the distinct shards in index order (the locking order).
        let mut of = [0usize; SMALL];
        for (o, m) in of.iter_mut().zip(members) {
            *o = shard_of(m.0);
        }
        let mut order = of;
        let order = &mut order[..n];
        order.sort_unstable();
        let mut shards = 0;
        for i in 0..n {
            if i == 0 || order[i] != order[shards - 1] {
                order[shards] = order[i];
                shards += 1;
            }
        }
        let mut guards: [Option<ShardGuard<'_>>; SMALL] = [const { None }; SMALL];
        for (g, &i) in guards.iter_mut().zip(&order[..shards]) {
            *g = Some(self.inner.shards[i].0.lock());
        }
        // Which guard holds each member's shard.
        let mut guard = [0usize; SMALL];
        for (g, o) in guard.iter_mut().zip(&of[..n]) {
            *g = order[..shards].iter().position(|s| s == o).unwrap_or(0);
        }
        // Every member decided on its current state; what an admission writes is kept.
        let mut writes: [Option<(usize, Packed, u64)>; SMALL] = [None; SMALL];
        verdicts.clear();
        let mut admitted = true;
        for (i, &(key, strategy, ref input)) in members.iter().enumerate() {
            let Some(shard) = guards[guard[i]].as_deref_mut() else { return false };
            let now = input.now_us.min(EXPIRY - 1);
            let Some(bucket) = shard.table.find_bucket_index(key.0, |e| e.key == key.0) else { return false };
            let Some(e) = shard.table.get_bucket_mut(bucket) else { return false };
            if e.boxed() {
                return false;
            }
            let state = (e.expires_at() > now).then_some(Packed(e.state));
            let verdict = match strategy.decide_packed(state, input, true) {
                PackedStep::Kept(v) => v,
                PackedStep::Packed(v, state, ttl) => {
                    writes[i] = Some((bucket, state, now.saturating_add(ttl)));
                    v
                }
                PackedStep::Boxed(..) => return false,
            };
            admitted &= verdict.is_admitted();
            verdicts.push(verdict);
        }
        if mode == Mode::Consume && admitted {
            for (i, write) in writes[..n].iter().enumerate() {
                if let Some((bucket, state, expires_at)) = *write
                    && let Some(e) = guards[guard[i]].as_deref_mut().and_then(|s| s.table.get_bucket_mut(bucket))
                {
                    e.state = state.0;
                    e.set_expiry(expires_at, false);
                }
            }
        }
        true
    }

    /// [`decide_group_prepared`](Self::decide_group_prepared) with working space for one shard
    /// index, guard and plan per member.
    fn decide_group_in<'s>(
        &'s self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        order: &mut [usize],
        guards: &mut [Option<ShardGuard<'s>>],
        plans: &mut [Plan],
        verdicts: &mut Verdicts,
    ) -> Result<(), BackendError> {
        let shard_of = |key: PreparedKey| ((key.0 >> 32) as usize) & self.inner.shard_mask;
        for (o, m) in order.iter_mut().zip(members) {
            *o = shard_of(m.0);
        }
        order.sort_unstable();
        let mut shards = 0;
        for i in 0..order.len() {
            if i == 0 || order[i] != order[shards - 1] {
                order[shards] = order[i];
                shards += 1;
            }
        }
        let order = &order[..shards];
        for (g, &i) in guards.iter_mut().zip(order) {
            *g = Some(self.inner.shards[i].0.lock());
        }
        let guard_of = |key: PreparedKey| {
            if shards == 1 { 0 } else { order.binary_search(&shard_of(key)).unwrap_or(0) }
        };
        // Every member's shard is locked above; the error only keeps this path free of panics.
        let locked = || BackendError::command("memory", "a group member's shard was not locked");
        // Every member decided on its current state; what an admission would write is kept.
        verdicts.clear();
        let mut inserts = false;
        let mut admitted = true;
        for (&(key, strategy, ref input), plan) in members.iter().zip(plans.iter_mut()) {
            let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
            let (verdict, p) = shard.plan(key.0, strategy, input);
            inserts |= matches!(p, Plan::Insert(..));
            admitted &= verdict.is_admitted();
            verdicts.push(verdict);
            *plan = p;
        }
        if mode == Mode::Peek || !admitted {
            return Ok(());
        }
        if inserts {
            // Room for every new key before anything is written (a refusal then changes nothing).
            let mut new_keys: SmallVec<[usize; 4]> = smallvec::smallvec![0; shards];
            let spare: SmallVec<[u64; 4]> = members.iter().map(|m| m.0.0).collect();
            for (&(key, _, ref input), plan) in members.iter().zip(plans.iter()) {
                if let Plan::Insert(..) = plan {
                    let g = guard_of(key);
                    let Some(shard) = guards[g].as_deref_mut() else { return Err(locked()) };
                    shard.make_room(&self.inner, input.now_us.min(EXPIRY - 1), new_keys[g], &spare)?;
                    new_keys[g] += 1;
                }
            }
        }
        // In place first (bucket indexes stay valid until a key is inserted), then new keys.
        for (&(key, strategy, ref input), plan) in members.iter().zip(plans.iter_mut()) {
            let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
            match plan {
                Plan::Update { bucket, state, expires_at } => match shard.table.get_bucket_mut(*bucket) {
                    Some(e) if !e.boxed() => {
                        e.state = state.0;
                        e.set_expiry(*expires_at, false);
                    }
                    // Expired boxed state replaced by packed state: the box is released.
                    Some(e) => put_slot(&mut shard.boxes, e, Some(Slot::Packed(*state)), *expires_at),
                    None => {}
                },
                Plan::Again => {
                    self.decide_in(shard, key, strategy, input, Mode::Consume, 0)?;
                }
                Plan::Nothing | Plan::Insert(..) => {}
            }
        }
        if inserts {
            for (&(key, _, ref input), plan) in members.iter().zip(plans.iter_mut()) {
                if let Plan::Insert(slot, expires_at) = std::mem::replace(plan, Plan::Nothing) {
                    let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
                    shard.observe_insert(input.now_us.min(EXPIRY - 1));
                    let mut entry = Entry { key: key.0, meta: 0, state: [0; 2] };
                    put_slot(&mut shard.boxes, &mut entry, Some(slot), expires_at);
                    shard.table.insert_unique(key.0, entry, |e| e.key);
                }
            }
        }
        Ok(())
    }

    fn decide_group_ops(&self, group: GroupOperation<'_>) -> Result<Vec<Verdict>, BackendError> {
        let members: SmallVec<[_; 4]> =
            group.ops.iter().map(|op| (self.prepare(op.key, op.strategy), op.strategy, op.input)).collect();
        let mode = group.ops.first().map_or(Mode::Consume, |op| op.mode);
        let mut verdicts = Verdicts::new();
        self.decide_group_prepared(&members, mode, &mut verdicts)?;
        Ok(verdicts.into_vec())
    }

    /// One decision on a locked shard; `pending` new keys of the same group are already
    /// counted against the shard's cap.
    #[inline]
    fn decide_in(
        &self,
        shard: &mut Shard,
        key: PreparedKey,
        strategy: &StrategyHandle,
        input: &Input,
        mode: Mode,
        pending: usize,
    ) -> Result<Verdict, BackendError> {
        // Expiries are stored below 2^63 (the top bit of `meta` marks boxes); clocks past that
        // (292,000 years after 1970, or a saturated test clock) compare as just below it.
        let now = input.now_us.min(EXPIRY - 1);
        let write = mode == Mode::Consume;
        let hash = key.0;
        if let Some(entry) = shard.table.find_mut(hash, |e| e.key == hash) {
            // Peeks may look into the future (a dashboard asking "when can I"); only real hits
            // move the sweep clock.
            if write && now >= shard.high_water.saturating_add(SWEEP_CLOCK_STEP_US) {
                shard.high_water = now;
            }
            let expires_at = entry.expires_at();
            let live = expires_at > now;
            if !live && !write {
                // Expired state is absent; a peek must not destroy it (it may look ahead).
                return Ok(verdict_of(strategy.decide_packed(None, input, false)));
            }
            if !entry.boxed() {
                // The common case: the state is two words in the entry itself.
                let state = if live { Some(Packed(entry.state)) } else { None };
                return Ok(match strategy.decide_packed(state, input, write) {
                    PackedStep::Kept(verdict) => verdict,
                    PackedStep::Packed(verdict, p, ttl) => {
                        entry.state = p.0;
                        entry.set_expiry(now.saturating_add(ttl), false);
                        verdict
                    }
                    PackedStep::Boxed(verdict, b, ttl) => {
                        put_slot(&mut shard.boxes, entry, Some(Slot::Boxed(b)), now.saturating_add(ttl));
                        verdict
                    }
                });
            }
            let mut slot = if live { take_slot(&mut shard.boxes, entry) } else { None };
            let (verdict, ttl) = strategy.decide_slot(&mut slot, input, write);
            match ttl {
                Some(ttl) => put_slot(&mut shard.boxes, entry, slot, now.saturating_add(ttl)),
                // Unchanged: the box taken out goes back; expired state stays absent.
                None if live => put_slot(&mut shard.boxes, entry, slot, expires_at),
                None => put_slot(&mut shard.boxes, entry, None, 0),
            }
            return Ok(verdict);
        }
        let (verdict, slot, ttl) = match strategy.decide_packed(None, input, write) {
            PackedStep::Kept(verdict) => return Ok(verdict),
            PackedStep::Packed(verdict, p, ttl) => (verdict, Slot::Packed(p), ttl),
            PackedStep::Boxed(verdict, b, ttl) => (verdict, Slot::Boxed(b), ttl),
        };
        if ttl > 0 {
            shard.observe_insert(now);
            shard.make_room(&self.inner, now, pending, &[])?;
            let mut entry = Entry { key: hash, meta: 0, state: [0; 2] };
            put_slot(&mut shard.boxes, &mut entry, Some(slot), now.saturating_add(ttl));
            shard.table.insert_unique(hash, entry, |e| e.key);
        }
        Ok(verdict)
    }

    fn stat_prepared(&self, key: PreparedKey, strategy: &StrategyHandle, input: &Input) -> (Verdict, Metadata) {
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        let hash = key.0;
        let entry =
            shard.table.find_mut(hash, |e| e.key == hash).filter(|e| e.expires_at() > input.now_us.min(EXPIRY - 1));
        match entry {
            Some(entry) => {
                let mut slot = take_slot(&mut shard.boxes, entry);
                let (verdict, _) = strategy.decide_slot(&mut slot, input, false);
                let metadata = strategy.metadata_slot(slot.as_ref(), input);
                let expires_at = entry.expires_at();
                put_slot(&mut shard.boxes, entry, slot, expires_at);
                (verdict, metadata)
            }
            None => {
                let (verdict, _) = strategy.decide_slot(&mut None, input, false);
                (verdict, strategy.metadata_slot(None, input))
            }
        }
    }

    /// Keys currently stored (including expired keys not yet swept).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expired keys replaced by new ones at the cap so far (live keys are never evicted).
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// New keys refused so far because the cap was reached and no expired key was found.
    pub fn refusals(&self) -> u64 {
        self.inner.refusals.load(Ordering::Relaxed)
    }

    /// The configured key cap.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Drops every expired key now (normally done incrementally).
    pub fn sweep(&self) {
        let now = self.inner.shards.iter().map(|s| s.0.lock().high_water).max().unwrap_or(0);
        for s in self.inner.shards.iter() {
            let mut shard = s.0.lock();
            shard.high_water = shard.high_water.max(now);
            shard.sweep();
        }
    }

    /// Deletes everything, synchronously.
    pub fn clear(&self) {
        for s in self.inner.shards.iter() {
            let mut shard = s.0.lock();
            shard.table.clear();
            shard.boxes.clear();
            shard.hand = 0;
        }
    }
}

/// A locked shard.
type ShardGuard<'a> = parking_lot::lock_api::MutexGuard<'a, spin::RawSpin, Shard>;

/// A group's verdicts, in member order (groups of up to four stay off the heap).
pub(crate) type Verdicts = SmallVec<[Verdict; 4]>;

/// What a group member's admission writes, decided while its shard is held.
enum Plan {
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
    fn plan(&mut self, hash: u64, strategy: &StrategyHandle, input: &Input) -> (Verdict, Plan) {
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
    fn observe_insert(&mut self, now: u64) {
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
    fn remove_bucket(&mut self, i: usize) -> Option<Entry> {
        let (removed, _) = self.table.get_bucket_entry(i).ok()?.remove();
        self.boxes.release_entry(&removed);
        Some(removed)
    }

    /// Drops every expired key (a whole pass over the shard: only for [`InMemoryBackend::sweep`]).
    fn sweep(&mut self) {
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
    fn make_room(&mut self, inner: &Inner, now: u64, pending: usize, spare: &[u64]) -> Result<(), BackendError> {
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
                return Ok(());
            }
        }
        inner.refusals.fetch_add(1, Ordering::Relaxed);
        Err(BackendError::Full { max_keys: inner.max_keys })
    }
}

impl std::fmt::Debug for InMemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBackend")
            .field("namespace", &self.inner.namespace)
            .field("shards", &self.inner.shards.len())
            .field("max_keys", &self.inner.max_keys)
            .field("eviction", &self.inner.eviction)
            .finish()
    }
}

impl Backend for InMemoryBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        let result = self.decide_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input, op.mode);
        Box::pin(async move { result })
    }

    #[inline]

    fn decide_now(&self, op: &Operation<'_>) -> Option<Result<Verdict, BackendError>> {
        Some(self.decide_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input, op.mode))
    }

    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        let result = self.decide_group_ops(group);
        Box::pin(async move { result })
    }

    fn decide_group_now(&self, group: GroupOperation<'_>) -> Option<Result<Vec<Verdict>, BackendError>> {
        Some(self.decide_group_ops(group))
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        let result = self.stat_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input);
        Box::pin(async move { Ok(result) })
    }

    fn stat_now(&self, op: &Operation<'_>) -> Option<Result<(Verdict, Metadata), BackendError>> {
        Some(Ok(self.stat_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input)))
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.clear();
        Box::pin(async { Ok(()) })
    }

    fn on_error(&self) -> Option<OnError> {
        self.inner.on_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{FixedWindow, VerdictKind};
    use crate::{Rate, rate};

    fn input(now: u64) -> Input {
        Input { now_us: now, rate: rate!("2/s"), cost: 1 }
    }

    #[test]
    fn state_expires_and_is_swept() {
        let b = InMemoryBackend::new();
        let s = StrategyHandle::new(FixedWindow);
        let k = b.prepare(&Key::builder("t").part(b"a").build(), &s);
        assert!(b.decide_prepared(k, &s, &input(0), Mode::Consume).is_ok());
        assert_eq!(b.len(), 1);
        b.decide_prepared(b.prepare(&Key::builder("t").part(b"b").build(), &s), &s, &input(1_000_000), Mode::Consume)
            .ok();
        b.sweep();
        assert_eq!(b.len(), 1, "only the second key, written at 1 s, is still live");
    }

    #[test]
    fn new_keys_sweep_expired_ones_and_old_keys_move_the_sweep_clock() {
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::builder().shards(1).build();
        let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
        // 4,000 keys live for the first second, then 4,000 new keys at 10 s: the new keys'
        // sweeps drop the expired ones without any explicit call.
        for i in 0..4_000 {
            b.decide_prepared(key(i), &s, &input(0), Mode::Consume).unwrap();
        }
        for i in 4_000..8_000 {
            b.decide_prepared(key(i), &s, &input(10_000_000), Mode::Consume).unwrap();
        }
        assert!(b.len() <= 4_001, "{} stored", b.len());
        // Hits on an existing key alone advance the clock an explicit sweep uses.
        let b = InMemoryBackend::builder().shards(1).build();
        let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
        b.decide_prepared(key(1), &s, &input(0), Mode::Consume).unwrap();
        b.decide_prepared(key(2), &s, &input(0), Mode::Consume).unwrap();
        b.decide_prepared(key(2), &s, &input(5_000_000), Mode::Consume).unwrap();
        b.sweep();
        assert_eq!(b.len(), 1, "key 1 expired at 1 s; the shard saw 5 s through key 2");
    }

    #[test]
    fn at_the_cap_expired_keys_are_replaced_and_live_ones_kept() {
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::builder().shards(1).max_keys(10).build();
        let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
        for i in 0..10u32 {
            assert!(b.decide_prepared(key(i), &s, &input(0), Mode::Consume).is_ok());
        }
        // Every key is live: new keys are refused, and the live ones keep their state.
        for i in 10..100u32 {
            let r = b.decide_prepared(key(i), &s, &input(500_000), Mode::Consume);
            assert!(matches!(r, Err(BackendError::Full { max_keys: 10 })), "{r:?}");
        }
        assert_eq!((b.len(), b.evictions(), b.refusals()), (10, 0, 90));
        for i in 0..10u32 {
            let v = b.decide_prepared(key(i), &s, &input(600_000), Mode::Consume).unwrap();
            assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 0), "key {i} kept its usage");
        }
        // A window later they have expired, and ten new keys replace them; the next are refused.
        for i in 100..190u32 {
            let r = b.decide_prepared(key(i), &s, &input(1_500_000), Mode::Consume);
            assert_eq!(r.is_ok(), i < 110, "key {i}: {r:?}");
        }
        // (Expired keys go to the incremental sweep or, failing that, to the cap's scan.)
        assert_eq!((b.len(), b.refusals()), (10, 170));
        assert!(b.evictions() <= 10);
    }

    #[test]
    fn a_decision_touches_one_line_of_its_shard() {
        let padded = Padded(Mutex::new(Shard {
            high_water: 0,
            hand: 0,
            table: HashTable::new(),
            boxes: Boxes::default(),
            cap: 1,
        }));
        let base = std::ptr::from_ref(&padded) as usize;
        let shard = padded.0.lock();
        let end_of_table = std::ptr::from_ref(&shard.table) as usize + std::mem::size_of::<HashTable<Entry>>();
        let counters = std::ptr::from_ref(&shard.high_water) as usize;
        assert!(end_of_table - base <= 64, "lock, counters and table header in the first line");
        assert!(counters > base);
    }

    #[test]
    fn entries_are_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::align_of::<Entry>(), 32);
    }

    #[test]
    fn boxed_states_are_freed_and_their_slots_reused() {
        use crate::strategy::SlidingWindowLog;
        let s = StrategyHandle::new(SlidingWindowLog);
        let b = InMemoryBackend::builder().shards(1).max_keys(4).build();
        let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
        // Replacing an expired key at the cap releases its box: one window after another, four
        // keys at a time.
        for i in 0..20u32 {
            let now = u64::from(i / 4) * 1_000_000;
            assert_eq!(b.decide_prepared(key(i), &s, &input(now), Mode::Consume).unwrap().kind, VerdictKind::Admit);
        }
        let boxes = |b: &InMemoryBackend| {
            let shard = b.inner.shards[0].0.lock();
            (shard.boxes.slots.iter().filter(|s| s.is_some()).count(), shard.boxes.slots.len())
        };
        assert_eq!(b.len(), 4);
        assert_eq!(boxes(&b), (4, 4), "one live box per key: replaced keys free theirs for reuse");
        let input = |now: u64| input(now + 4_000_000);
        // A live key keeps its state through repeated decisions: 2/s admits two, then denies.
        let k = key(19);
        assert_eq!(b.decide_prepared(k, &s, &input(1), Mode::Consume).unwrap().kind, VerdictKind::Admit);
        assert_eq!(b.decide_prepared(k, &s, &input(2), Mode::Consume).unwrap().kind, VerdictKind::Deny);
        assert_eq!(b.decide_prepared(k, &s, &input(3), Mode::Peek).unwrap().kind, VerdictKind::Deny);
        // Expired state reads as absent, and sweeping frees every box.
        assert_eq!(b.decide_prepared(k, &s, &input(5_000_000), Mode::Peek).unwrap().kind, VerdictKind::Admit);
        b.decide_prepared(key(100), &s, &input(5_000_000), Mode::Consume).unwrap();
        b.sweep();
        assert_eq!(b.len(), 1);
        assert_eq!(boxes(&b).0, 1);
        b.clear();
        assert_eq!(boxes(&b), (0, 0));
    }

    #[test]
    fn max_keys_is_a_hard_cap_whatever_the_shard_count() {
        let s = StrategyHandle::new(FixedWindow);
        for max_keys in [1, 3, 5, 7, 64, 100] {
            for eviction in [Eviction::RejectNew] {
                let b = InMemoryBackend::builder().max_keys(max_keys).eviction(eviction).build();
                for i in 0..1_000u32 {
                    let k = b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
                    let _ = b.decide_prepared(k, &s, &input(0), Mode::Consume);
                }
                assert!(b.len() <= max_keys, "{max_keys} {eviction:?}: {} stored", b.len());
            }
        }
    }

    #[test]
    fn clocks_past_2_pow_63_still_limit() {
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::new();
        let k = b.prepare(&Key::builder("t").build(), &s);
        for now in [(1u64 << 63) + 5, (1u64 << 63) + 86_400_000_000] {
            let kinds: Vec<_> =
                (0..4).map(|_| b.decide_prepared(k, &s, &input(now), Mode::Consume).unwrap().kind).collect();
            assert_eq!(kinds.iter().filter(|k| **k == VerdictKind::Admit).count(), 2, "2/s at {now}: {kinds:?}");
            b.clear();
        }
    }

    #[test]
    fn shard_count_is_a_power_of_two() {
        for (asked, got) in [(1, 1), (3, 2), (64, 64), (100, 64)] {
            let b = InMemoryBackend::builder().shards(asked).build();
            assert_eq!(b.inner.shards.len(), got);
        }
        assert_eq!(InMemoryBackend::builder().shards(64).max_keys(5).build().inner.shards.len(), 4);
    }

    #[test]
    fn threads_on_one_key_admit_exactly_the_limit() {
        // The shard lock is the only thing between racing decisions on one key: 4 threads
        // making 30,000 attempts each against a limit of 100,000 in one window must see
        // exactly 100,000 admitted.
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::builder().shards(1).build();
        let k = b.prepare(&Key::builder("t").build(), &s);
        let rate = Rate::per_millis(100_000, 60_000).unwrap();
        let admitted: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..30_000)
                            .filter(|_| {
                                let input = Input { now_us: 1, rate, cost: 1 };
                                b.decide_prepared(k, &s, &input, Mode::Consume).unwrap().kind == VerdictKind::Admit
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100_000);
    }

    #[test]
    fn a_waiter_outlasts_a_long_hold_and_then_decides() {
        use std::sync::atomic::AtomicBool;
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::builder().shards(1).build();
        let k = b.prepare(&Key::builder("t").build(), &s);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let held = b.inner.shards[0].0.lock();
            let waiter = scope.spawn(|| {
                let kind = b.decide_prepared(k, &s, &input(0), Mode::Consume).unwrap().kind;
                done.store(true, Ordering::SeqCst);
                kind
            });
            // Long enough for the waiter to go through spinning and yielding into sleeping.
            for _ in 0..5_000 {
                std::thread::yield_now();
            }
            assert!(!done.load(Ordering::SeqCst), "decided while the shard was held");
            drop(held);
            assert_eq!(waiter.join().unwrap(), VerdictKind::Admit);
        });
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_panicking_strategy_releases_its_shard() {
        use crate::strategy::Step;

        #[derive(Debug)]
        struct Panics;
        impl crate::strategy::Strategy for Panics {
            type State = u64;
            fn name(&self) -> &str {
                "panics"
            }
            fn decide(&self, _: Option<&u64>, _: &Input) -> Step<u64> {
                panic!("strategy bug")
            }
        }
        let b = InMemoryBackend::builder().shards(1).build();
        let bad = StrategyHandle::new(Panics);
        let k = b.prepare(&Key::builder("t").build(), &bad);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.decide_prepared(k, &bad, &input(0), Mode::Consume)
        }));
        assert!(unwound.is_err());
        // The one shard is free again: another strategy's decision goes through.
        let s = StrategyHandle::new(FixedWindow);
        let k = b.prepare(&Key::builder("t").build(), &s);
        assert_eq!(b.decide_prepared(k, &s, &input(0), Mode::Consume).unwrap().kind, VerdictKind::Admit);
    }

    #[test]
    fn peek_writes_nothing() {
        let b = InMemoryBackend::new();
        let s = StrategyHandle::new(FixedWindow);
        let k = b.prepare(&Key::builder("t").build(), &s);
        for _ in 0..5 {
            let v = b.decide_prepared(k, &s, &input(0), Mode::Peek).unwrap();
            assert_eq!(v.kind, VerdictKind::Admit);
        }
        assert_eq!(b.len(), 0);
    }
}
