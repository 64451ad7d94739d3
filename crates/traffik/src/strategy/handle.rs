//! [`StrategyHandle`]: every [`Strategy`] behind one type-erased, cheaply clonable handle.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use super::native::Native;
use super::{
    Amend, Builtin, Concurrency, CostAwareTokenBucket, FixedWindow, Gcra, Input, LeakyBucket, LeakyBucketWithQueue,
    Metadata, Packed, PackedStep, QuotaRollover, Reserved, SlidingWindowCounter, SlidingWindowLog, Slot, Step,
    Strategy, TokenBucket, TokenBucketWithDebt, Verdict, Write,
};

/// Object-safe face of every [`Strategy`], used through [`StrategyHandle`].
trait Erased: Send + Sync + fmt::Debug {
    fn builtin(&self) -> Option<Builtin>;
    fn decide_packed(&self, state: Option<Packed>, input: &Input, write: bool) -> PackedStep;
    fn decide_slot(&self, slot: &mut Option<Slot>, input: &Input, write: bool) -> (Verdict, Option<u64>);
    fn metadata_slot(&self, slot: Option<&Slot>, input: &Input) -> Metadata;
    fn decide_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<BytesStep, StateError>;
    fn metadata_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<Metadata, StateError>;
    fn refund_bytes(
        &self,
        state: &[u8],
        charged_at_us: u64,
        input: &Input,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError>;
    fn amend_bytes(&self, state: &[u8], amend: Amend, input: &Input) -> Result<Option<(Vec<u8>, u64)>, StateError>;
    fn amend_slot(&self, slot: &mut Option<Slot>, amend: Amend, input: &Input) -> Option<u64>;
}

/// The result of a decision over serialized state (the generic compare-and-swap path).
#[derive(Clone, Debug, PartialEq)]
pub struct BytesStep {
    /// The decision.
    pub verdict: Verdict,
    /// Serialized new state and its time to live in microseconds, if the state changed.
    pub write: Option<(Vec<u8>, u64)>,
}

/// Stored state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("strategy `{strategy}` could not {action} its stored state: {source}")]
pub struct StateError {
    strategy: String,
    action: &'static str,
    #[source]
    source: serde_json::Error,
}

/// How a handle holds a strategy: a built-in with its native hooks ([`Native`]), or a custom
/// one without.
trait Storage: Send + Sync + fmt::Debug + 'static {
    type S: Strategy;
    fn strategy(&self) -> &Self::S;
    fn builtin(&self) -> Option<Builtin>;
    fn pack(&self, state: &State<Self>) -> Option<Packed>;
    fn unpack(&self, packed: Packed) -> Option<State<Self>>;
}

/// The state of the strategy a [`Storage`] holds.
type State<T> = <<T as Storage>::S as Strategy>::State;

/// A built-in strategy.
struct Known<S>(S);

/// A custom strategy: no native path, state boxed in memory.
struct Custom<S>(S);

impl<S: fmt::Debug> fmt::Debug for Known<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: fmt::Debug> fmt::Debug for Custom<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: Native> Storage for Known<S> {
    type S = S;
    #[inline]
    fn strategy(&self) -> &S {
        &self.0
    }
    fn builtin(&self) -> Option<Builtin> {
        Some(self.0.builtin())
    }
    #[inline]
    fn pack(&self, state: &S::State) -> Option<Packed> {
        self.0.pack(state)
    }
    #[inline]
    fn unpack(&self, packed: Packed) -> Option<S::State> {
        self.0.unpack(packed)
    }
}

impl<S: Strategy> Storage for Custom<S> {
    type S = S;
    #[inline]
    fn strategy(&self) -> &S {
        &self.0
    }
    fn builtin(&self) -> Option<Builtin> {
        None
    }
    fn pack(&self, _state: &S::State) -> Option<Packed> {
        None
    }
    fn unpack(&self, _packed: Packed) -> Option<S::State> {
        None
    }
}

impl<T: Storage> Erased for T {
    fn builtin(&self) -> Option<Builtin> {
        Storage::builtin(self)
    }

    fn decide_packed(&self, state: Option<Packed>, input: &Input, write: bool) -> PackedStep {
        let state = state.and_then(|p| self.unpack(p));
        let step = self.strategy().decide(state.as_ref(), input);
        match step.write {
            Some(w) if write => match self.pack(&w.state) {
                Some(p) => PackedStep::Packed(step.verdict, p, w.ttl_us),
                None => PackedStep::Boxed(step.verdict, Box::new(w.state), w.ttl_us),
            },
            _ => PackedStep::Kept(step.verdict),
        }
    }

    fn decide_slot(&self, slot: &mut Option<Slot>, input: &Input, write: bool) -> (Verdict, Option<u64>) {
        let strategy = self.strategy();
        match slot {
            Some(Slot::Boxed(any)) => {
                if let Some(state) = any.downcast_mut::<State<T>>() {
                    let step = strategy.decide(Some(state), input);
                    return match step.write {
                        Some(w) if write => {
                            *state = w.state;
                            (step.verdict, Some(w.ttl_us))
                        }
                        _ => (step.verdict, None),
                    };
                }
                // A different strategy's state under this key cannot happen (the strategy name
                // is part of the key); treat it as absent rather than fail.
                store(self, slot, strategy.decide(None, input), write)
            }
            Some(Slot::Packed(p)) => {
                let state = self.unpack(*p);
                let step = strategy.decide(state.as_ref(), input);
                store(self, slot, step, write)
            }
            None => {
                let step = strategy.decide(None, input);
                store(self, slot, step, write)
            }
        }
    }

    fn metadata_slot(&self, slot: Option<&Slot>, input: &Input) -> Metadata {
        let strategy = self.strategy();
        match slot {
            Some(Slot::Boxed(any)) => strategy.metadata(any.downcast_ref::<State<T>>(), input),
            Some(Slot::Packed(p)) => strategy.metadata(self.unpack(*p).as_ref(), input),
            None => strategy.metadata(None, input),
        }
    }

    fn decide_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<BytesStep, StateError> {
        let strategy = self.strategy();
        let state = strategy.read_state(state)?;
        let step = strategy.decide(state.as_ref(), input);
        let write = match step.write {
            Some(w) => Some((strategy.encode(&w.state)?, w.ttl_us)),
            None => None,
        };
        Ok(BytesStep { verdict: step.verdict, write })
    }

    fn metadata_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<Metadata, StateError> {
        let strategy = self.strategy();
        let state = strategy.read_state(state)?;
        Ok(strategy.metadata(state.as_ref(), input))
    }

    fn refund_bytes(
        &self,
        state: &[u8],
        charged_at_us: u64,
        input: &Input,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        self.amend_bytes(state, Amend::Refund { charged_at_us }, input)
    }

    fn amend_bytes(&self, state: &[u8], amend: Amend, input: &Input) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        let strategy = self.strategy();
        let Some(state) = strategy.read_state(Some(state))? else {
            return Ok(None);
        };
        match strategy.amended(&state, amend, input) {
            Some(w) => Ok(Some((strategy.encode(&w.state)?, w.ttl_us))),
            None => Ok(None),
        }
    }

    fn amend_slot(&self, slot: &mut Option<Slot>, amend: Amend, input: &Input) -> Option<u64> {
        let state = match slot {
            Some(Slot::Boxed(any)) => any.downcast_ref::<State<T>>().cloned(),
            Some(Slot::Packed(p)) => self.unpack(*p),
            None => None,
        }?;
        let w = self.strategy().amended(&state, amend, input)?;
        *slot = Some(match self.pack(&w.state) {
            Some(p) => Slot::Packed(p),
            None => Slot::Boxed(Box::new(w.state)),
        });
        Some(w.ttl_us)
    }
}

/// Stores what `step` wrote into `slot` (packed when it packs), if `write`.
fn store<T: Storage>(
    storage: &T,
    slot: &mut Option<Slot>,
    step: Step<State<T>>,
    write: bool,
) -> (Verdict, Option<u64>) {
    match step.write {
        Some(w) if write => {
            *slot = Some(match storage.pack(&w.state) {
                Some(p) => Slot::Packed(p),
                None => Slot::Boxed(Box::new(w.state)),
            });
            (step.verdict, Some(w.ttl_us))
        }
        _ => (step.verdict, None),
    }
}

trait StoreExt: Strategy {
    fn read_state(&self, bytes: Option<&[u8]>) -> Result<Option<Self::State>, StateError> {
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(b).map(Some).map_err(|e| self.state_error("decode", e)),
        }
    }

    fn encode(&self, state: &Self::State) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(state).map_err(|e| self.state_error("encode", e))
    }

    fn state_error(&self, action: &'static str, source: serde_json::Error) -> StateError {
        StateError { strategy: self.name().to_owned(), action, source }
    }

    fn amended(&self, state: &Self::State, amend: Amend, input: &Input) -> Option<Write<Self::State>> {
        match amend {
            Amend::Refund { charged_at_us } => self.refund(state, charged_at_us, input),
            Amend::Renew { charged_at_us } => self.renew(state, charged_at_us, input),
        }
    }
}

impl<S: Strategy> StoreExt for S {}

/// The built-in `strategy` is, held with its native hooks; `None` for a custom strategy.
fn known(strategy: &dyn Any) -> Option<Arc<dyn Erased>> {
    fn as_known<K: Native>(strategy: &dyn Any) -> Option<Arc<dyn Erased>> {
        strategy.downcast_ref::<K>().map(|k| Arc::new(Known(k.clone())) as Arc<dyn Erased>)
    }
    as_known::<FixedWindow>(strategy)
        .or_else(|| as_known::<SlidingWindowCounter>(strategy))
        .or_else(|| as_known::<SlidingWindowLog>(strategy))
        .or_else(|| as_known::<TokenBucket>(strategy))
        .or_else(|| as_known::<TokenBucketWithDebt>(strategy))
        .or_else(|| as_known::<LeakyBucket>(strategy))
        .or_else(|| as_known::<LeakyBucketWithQueue>(strategy))
        .or_else(|| as_known::<Gcra>(strategy))
        .or_else(|| as_known::<QuotaRollover>(strategy))
        .or_else(|| as_known::<CostAwareTokenBucket>(strategy))
        .or_else(|| as_known::<Concurrency>(strategy))
        .or_else(|| as_known::<Reserved>(strategy))
}

/// A type-erased, cheaply clonable strategy: what throttles hold and backends receive.
#[derive(Clone)]
pub struct StrategyHandle {
    inner: Arc<dyn Erased>,
    name: Arc<str>,
    /// 64-bit hash of `name`, computed once (the in-memory backend seeds key hashes with it).
    name_hash: u64,
}

/// A strategy name safe in every backend's keys: names of 1 to 32 characters from `[a-z0-9_-]`
/// are kept, any other is replaced by `x` and 16 hex digits of its SHA-256.
fn safe_name(name: &str) -> Arc<str> {
    let plain = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if plain {
        return name.into();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("x{hex}").into()
}

impl StrategyHandle {
    /// Wraps a strategy.
    pub fn new<S: Strategy>(strategy: S) -> Self {
        let name = safe_name(Strategy::name(&strategy));
        let name_hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        let inner = known(&strategy).unwrap_or_else(|| Arc::new(Custom(strategy)));
        StrategyHandle { inner, name, name_hash }
    }

    /// The strategy's name as used in keys: [`Strategy::name`] if it is 1 to 32 characters of
    /// `[a-z0-9_-]`, otherwise a digest of it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_hash(&self) -> u64 {
        self.name_hash
    }

    /// The built-in this is, if any.
    pub fn builtin(&self) -> Option<Builtin> {
        self.inner.builtin()
    }

    /// Decides over serialized state (JSON), for backends that store bytes and apply the result
    /// with compare-and-swap.
    pub fn decide_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<BytesStep, StateError> {
        self.inner.decide_bytes(state, input)
    }

    /// Metadata over serialized state.
    pub fn metadata_bytes(&self, state: Option<&[u8]>, input: &Input) -> Result<Metadata, StateError> {
        self.inner.metadata_bytes(state, input)
    }

    /// [`Strategy::refund`] over serialized state: the new serialized state and its time to
    /// live, or `None` when nothing is given back.
    pub fn refund_bytes(
        &self,
        state: &[u8],
        charged_at_us: u64,
        input: &Input,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        self.inner.refund_bytes(state, charged_at_us, input)
    }

    /// A refund or a renewal ([`Amend`]) over serialized state: the new serialized state and
    /// its time to live, or `None` when nothing changes (what it names has expired or is gone).
    pub fn amend_bytes(&self, state: &[u8], amend: Amend, input: &Input) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        self.inner.amend_bytes(state, amend, input)
    }

    /// A refund or a renewal on in-memory state: the new time to live when the state changed.
    pub(crate) fn amend_slot(&self, slot: &mut Option<Slot>, amend: Amend, input: &Input) -> Option<u64> {
        self.inner.amend_slot(slot, amend, input)
    }

    pub(crate) fn decide_packed(&self, state: Option<Packed>, input: &Input, write: bool) -> PackedStep {
        self.inner.decide_packed(state, input, write)
    }

    pub(crate) fn decide_slot(&self, slot: &mut Option<Slot>, input: &Input, write: bool) -> (Verdict, Option<u64>) {
        self.inner.decide_slot(slot, input, write)
    }

    pub(crate) fn metadata_slot(&self, slot: Option<&Slot>, input: &Input) -> Metadata {
        self.inner.metadata_slot(slot, input)
    }
}

impl fmt::Debug for StrategyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<S: Strategy> From<S> for StrategyHandle {
    fn from(s: S) -> Self {
        StrategyHandle::new(s)
    }
}

#[cfg(test)]
mod handle_tests {
    use super::*;
    use crate::strategy::FixedWindowState;

    #[derive(Debug)]
    struct Mine;

    impl Strategy for Mine {
        type State = FixedWindowState;
        fn name(&self) -> &str {
            "mine"
        }
        fn decide(&self, state: Option<&FixedWindowState>, input: &Input) -> Step<FixedWindowState> {
            FixedWindow.decide(state, input)
        }
    }

    /// Every built-in is found when its handle is made, whichever way it is made; a custom
    /// strategy with a built-in's state is not one.
    #[test]
    fn handles_know_the_built_ins() {
        let cost_aware = CostAwareTokenBucket::builder().build().map(StrategyHandle::new);
        let rollover = QuotaRollover::builder().max_rollover(2).build().map(StrategyHandle::new);
        let built_ins = [
            StrategyHandle::new(FixedWindow),
            StrategyHandle::new(SlidingWindowCounter),
            StrategyHandle::new(SlidingWindowLog),
            StrategyHandle::new(TokenBucket::new()),
            StrategyHandle::new(TokenBucketWithDebt::new(2)),
            StrategyHandle::new(LeakyBucket),
            StrategyHandle::new(LeakyBucketWithQueue::new(3)),
            Gcra::new().into(),
            StrategyHandle::new(Concurrency),
            StrategyHandle::new(Reserved::new(10)),
            cost_aware.expect("valid"),
            rollover.expect("valid"),
        ];
        for h in &built_ins {
            assert!(h.builtin().is_some(), "{h:?}");
        }
        assert_eq!(StrategyHandle::new(Mine).builtin(), None);
        assert_eq!(StrategyHandle::new(FixedWindow).builtin(), Some(Builtin::FixedWindow));
    }
}

#[cfg(test)]
mod name_tests {
    use super::safe_name;

    #[test]
    fn unsafe_strategy_names_are_digested() {
        assert_eq!(&*safe_name("gcra"), "gcra");
        assert_eq!(&*safe_name("my_strategy-2"), "my_strategy-2");
        for bad in ["", "Has Space", "{tag}", "ünï", &"x".repeat(40)] {
            let n = safe_name(bad);
            assert!(n.starts_with('x') && n.len() == 17, "{bad:?} -> {n}");
        }
        assert_ne!(safe_name("a b"), safe_name("a c"));
    }
}
