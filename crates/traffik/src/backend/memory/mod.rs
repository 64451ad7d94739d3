//! The embedded default backend: sharded, bounded, expiring, lock-per-shard.

mod group;
mod shard;
mod spin;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;

use self::spin::Mutex;
use crate::backend::{Amend, Backend, BoxFuture, GroupOperation, Mode, Operation};
use crate::error::{BackendError, OnError};
use crate::key::Key;
use crate::strategy::{Input, Metadata, Packed, PackedStep, Slot, StrategyHandle, Verdict};

pub(crate) use group::Verdicts;
use shard::{Boxes, EXPIRY, Entry, Padded, SWEEP_CLOCK_STEP_US, Shard, put_slot, take_slot, verdict_of};

const KIND: &str = "memory";

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

    /// A refund or a renewal under the key's shard lock.
    fn amend_prepared(&self, key: PreparedKey, strategy: &StrategyHandle, input: &Input, amend: Amend) -> bool {
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        let now = input.now_us.min(EXPIRY - 1);
        let hash = key.0;
        let Some(entry) = shard.table.find_mut(hash, |e| e.key == hash).filter(|e| e.expires_at() > now) else {
            return false;
        };
        let expires_at = entry.expires_at();
        let mut slot = take_slot(&mut shard.boxes, entry);
        match strategy.amend_slot(&mut slot, amend, input) {
            Some(ttl) => {
                put_slot(&mut shard.boxes, entry, slot, now.saturating_add(ttl));
                true
            }
            None => {
                put_slot(&mut shard.boxes, entry, slot, expires_at);
                false
            }
        }
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
        #[cfg(feature = "metrics")]
        crate::telemetry::set_memory_keys(&self.inner.namespace, self.len());
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

    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        _tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let changed = self.amend_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input, amend);
        Box::pin(std::future::ready(Ok(changed)))
    }

    fn amend_now(&self, op: &Operation<'_>, amend: Amend, _tag: Option<&str>) -> Option<Result<bool, BackendError>> {
        Some(Ok(self.amend_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input, amend)))
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
