//! The embedded default backend: sharded, bounded, expiring, lock-per-shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::{Backend, BoxFuture, Mode, Operation};
use crate::error::BackendError;
use crate::key::Key;
use crate::policy::ErrorPolicy;
use crate::strategy::{Input, Metadata, Slot, StrategyHandle, Verdict};

const KIND: &str = "memory";

/// What the in-memory backend does when a new key arrives and its shard is at the cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eviction {
    /// First drop expired keys; if the shard is still full, evict the soonest-expiring of a
    /// sample of 8 keys (its state is the closest to irrelevant). Default.
    #[default]
    SoonestExpiring,
    /// Refuse the new key with [`BackendError::Full`]; the throttle's error policy decides.
    RejectNew,
}

/// A key hashed for one strategy, so repeated decisions skip hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PreparedKey(u128);

struct Entry {
    key: u128,
    expires_at: u64,
    slot: Option<Slot>,
}

struct Shard {
    table: HashTable<Entry>,
    /// Latest `now` seen; expiry sweeps use it, so manual clocks work too.
    high_water: u64,
    ops_since_sweep: usize,
}

#[repr(align(64))]
struct Padded(Mutex<Shard>);

struct Inner {
    namespace: String,
    shards: Box<[Padded]>,
    shard_cap: usize,
    max_keys: usize,
    eviction: Eviction,
    /// Per-process random seed, so keys cannot be chosen to collide.
    seed: u64,
    evictions: AtomicU64,
    error_policy: Option<ErrorPolicy>,
}

/// In-process storage: fast, bounded, not shared between processes.
///
/// State lives in `shards` hash tables, each behind its own lock; a decision locks one shard for
/// a few hundred nanoseconds at most. Keys are stored as 128-bit hashes (seeded per process)
/// of the key and strategy name, so raw client identities are never stored. Expired state is
/// treated as absent on access and swept incrementally (each shard sweeps after as many
/// operations as it holds keys). `max_keys` caps memory; see [`Eviction`].
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
    error_policy: Option<ErrorPolicy>,
}

impl Default for InMemoryBuilder {
    fn default() -> Self {
        InMemoryBuilder {
            namespace: "inmemory".into(),
            shards: 64,
            max_keys: 1_000_000,
            eviction: Eviction::default(),
            error_policy: None,
        }
    }
}

impl InMemoryBuilder {
    /// Key prefix (default `"inmemory"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Number of independently locked shards (default 64, at least 1).
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

    /// Error policy for throttles on this backend that set none.
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = Some(policy);
        self
    }

    /// Builds the backend.
    pub fn build(self) -> InMemoryBackend {
        let shards = self.shards.min(self.max_keys);
        let shard_cap = self.max_keys.div_ceil(shards);
        let shards = (0..shards)
            .map(|_| Padded(Mutex::new(Shard { table: HashTable::new(), high_water: 0, ops_since_sweep: 0 })))
            .collect();
        InMemoryBackend {
            inner: Arc::new(Inner {
                namespace: self.namespace,
                shards,
                shard_cap,
                max_keys: self.max_keys,
                eviction: self.eviction,
                seed: fastrand::u64(..),
                evictions: AtomicU64::new(0),
                error_policy: self.error_policy,
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

    /// Hashes a key for `strategy` once, for repeated [`decide_prepared`](Self::decide_prepared).
    pub fn prepare(&self, key: &Key, strategy: &StrategyHandle) -> PreparedKey {
        // One seeded 128-bit pass over the key; the strategy name picks the seed, so equal keys
        // of different strategies land apart.
        let seed = self.inner.seed ^ xxhash_rust::xxh3::xxh3_64(strategy.name().as_bytes());
        PreparedKey(xxhash_rust::xxh3::xxh3_128_with_seed(key.as_str().as_bytes(), seed))
    }

    /// Decides on a prepared key, synchronously. This is the whole backend hot path.
    pub fn decide_prepared(
        &self,
        key: PreparedKey,
        strategy: &StrategyHandle,
        input: &Input,
        mode: Mode,
    ) -> Result<Verdict, BackendError> {
        let inner = &*self.inner;
        let shard_index = ((key.0 >> 64) as usize) % inner.shards.len();
        let mut shard = inner.shards[shard_index].0.lock();
        let now = input.now_us;
        let write = mode == Mode::Consume;
        // Peeks may look into the future (a dashboard asking "when can I"); only real hits move
        // the sweep clock.
        if write {
            shard.observe(now);
        }
        let hash = key.0 as u64;
        if let Some(entry) = shard.table.find_mut(hash, |e| e.key == key.0) {
            if entry.expires_at <= now {
                if !write {
                    // Expired state is absent; a peek must not destroy it (it may look ahead).
                    return Ok(strategy.decide_slot(&mut None, input, false).0);
                }
                entry.slot = None;
            }
            let (verdict, ttl) = strategy.decide_slot(&mut entry.slot, input, write);
            if let Some(ttl) = ttl {
                entry.expires_at = now.saturating_add(ttl);
            }
            return Ok(verdict);
        }
        let mut slot = None;
        let (verdict, ttl) = strategy.decide_slot(&mut slot, input, write);
        if let (Some(ttl), Some(slot)) = (ttl, slot)
            && ttl > 0
        {
            shard.make_room(inner)?;
            shard.table.insert_unique(
                hash,
                Entry { key: key.0, expires_at: now.saturating_add(ttl), slot: Some(slot) },
                |e| e.key as u64,
            );
        }
        Ok(verdict)
    }

    fn stat_prepared(&self, key: PreparedKey, strategy: &StrategyHandle, input: &Input) -> (Verdict, Metadata) {
        let inner = &*self.inner;
        let shard_index = ((key.0 >> 64) as usize) % inner.shards.len();
        let mut shard = inner.shards[shard_index].0.lock();
        let mut slot = match shard.table.find_mut(key.0 as u64, |e| e.key == key.0) {
            Some(e) if e.expires_at > input.now_us => e.slot.take(),
            _ => None,
        };
        let (verdict, _) = strategy.decide_slot(&mut slot, input, false);
        let metadata = strategy.metadata_slot(slot.as_ref(), input);
        if let Some(slot) = slot
            && let Some(e) = shard.table.find_mut(key.0 as u64, |e| e.key == key.0)
        {
            e.slot = Some(slot);
        }
        (verdict, metadata)
    }

    /// Keys currently stored (including expired keys not yet swept).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys evicted so far because the cap was reached.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
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
            shard.ops_since_sweep = 0;
        }
    }
}

impl Shard {
    fn observe(&mut self, now: u64) {
        self.high_water = self.high_water.max(now);
        self.ops_since_sweep += 1;
        // Amortized: a full pass after as many operations as there are keys (at least 1024).
        if self.ops_since_sweep >= self.table.len().max(1024) {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        let now = self.high_water;
        self.table.retain(|e| e.expires_at > now);
        self.ops_since_sweep = 0;
    }

    fn make_room(&mut self, inner: &Inner) -> Result<(), BackendError> {
        if self.table.len() < inner.shard_cap {
            return Ok(());
        }
        self.sweep();
        if self.table.len() < inner.shard_cap {
            return Ok(());
        }
        match inner.eviction {
            Eviction::RejectNew => Err(BackendError::Full { max_keys: inner.max_keys }),
            Eviction::SoonestExpiring => {
                let victim = self.table.iter().take(8).min_by_key(|e| e.expires_at).map(|e| e.key);
                if let Some(victim) = victim
                    && let Ok(entry) = self.table.find_entry(victim as u64, |e| e.key == victim)
                {
                    entry.remove();
                    inner.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
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

    fn decide_now(&self, op: &Operation<'_>) -> Option<Result<Verdict, BackendError>> {
        Some(self.decide_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input, op.mode))
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        let result = self.stat_prepared(self.prepare(op.key, op.strategy), op.strategy, &op.input);
        Box::pin(async move { Ok(result) })
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.clear();
        Box::pin(async { Ok(()) })
    }

    fn error_policy(&self) -> Option<ErrorPolicy> {
        self.inner.error_policy.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;
    use crate::strategy::{FixedWindow, VerdictKind};

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
    fn cap_evicts_or_rejects() {
        let s = StrategyHandle::new(FixedWindow);
        let b = InMemoryBackend::builder().shards(1).max_keys(10).build();
        for i in 0..100u32 {
            let k = b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
            assert!(b.decide_prepared(k, &s, &input(0), Mode::Consume).is_ok());
        }
        assert_eq!(b.len(), 10);
        assert_eq!(b.evictions(), 90);

        let b = InMemoryBackend::builder().shards(1).max_keys(3).eviction(Eviction::RejectNew).build();
        let mut errors = 0;
        for i in 0..5u32 {
            let k = b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
            if let Err(BackendError::Full { max_keys: 3 }) = b.decide_prepared(k, &s, &input(0), Mode::Consume) {
                errors += 1;
            }
        }
        assert_eq!((b.len(), errors), (3, 2));
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
