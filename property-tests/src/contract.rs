//! A backend written only against the documented [`Backend`] contract, as a user would write
//! one for a store traffik does not ship: decisions through
//! [`StrategyHandle::decide_bytes`](traffik::StrategyHandle::decide_bytes), refunds and lease
//! renewals through [`StrategyHandle::amend_bytes`](traffik::StrategyHandle::amend_bytes), and
//! groups (all-or-nothing, for [`ThrottleGroup`](traffik::ThrottleGroup)s and deferred
//! [`Scope`](traffik::Scope)s) by deciding every member before writing any, each under one
//! lock (its atomic step). Times to live are ignored: state is kept until reset, which the
//! contract allows (a strategy never relies on state expiring).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use traffik::backend::{Amend, BoxFuture, GroupOperation, Mode, Operation};
use traffik::strategy::{Metadata, Verdict};
use traffik::{Backend, BackendError};

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct ContractBackend {
    store: Mutex<HashMap<String, Vec<u8>>>,
}

impl ContractBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(op: &Operation<'_>) -> String {
        format!("{}:{}", op.key.as_str(), op.strategy.name())
    }

    fn store(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn state_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::command("contract", e.to_string())
}

impl Backend for ContractBackend {
    fn kind(&self) -> &'static str {
        "contract"
    }

    fn namespace(&self) -> &str {
        "contract"
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        Box::pin(async move {
            let mut store = self.store();
            let key = Self::key(&op);
            let step = op.strategy.decide_bytes(store.get(&key).map(Vec::as_slice), &op.input).map_err(state_error)?;
            if let (Mode::Consume, Some((bytes, _ttl))) = (op.mode, step.write) {
                store.insert(key, bytes);
            }
            Ok(step.verdict)
        })
    }

    /// Every member decided on the state as it is (a key that appears twice sees its earlier
    /// write), written only if every member is admitted.
    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        Box::pin(async move {
            let mut store = self.store();
            let mut pending: HashMap<String, Vec<u8>> = HashMap::new();
            let mut verdicts = Vec::with_capacity(group.ops.len());
            for op in group.ops {
                let key = Self::key(op);
                let current = pending.get(&key).or_else(|| store.get(&key)).map(Vec::as_slice);
                let step = op.strategy.decide_bytes(current, &op.input).map_err(state_error)?;
                if let (Mode::Consume, Some((bytes, _ttl))) = (op.mode, step.write) {
                    pending.insert(key, bytes);
                }
                verdicts.push(step.verdict);
            }
            if verdicts.iter().all(Verdict::is_admitted) {
                store.extend(pending);
            }
            Ok(verdicts)
        })
    }

    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        _tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut store = self.store();
            let key = Self::key(&op);
            let Some(current) = store.get(&key) else {
                return Ok(false);
            };
            match op.strategy.amend_bytes(current, amend, &op.input).map_err(state_error)? {
                Some((bytes, _ttl)) => {
                    store.insert(key, bytes);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        Box::pin(async move {
            let state = self.store().get(&Self::key(&op)).cloned();
            let step = op.strategy.decide_bytes(state.as_deref(), &op.input).map_err(state_error)?;
            let meta = op.strategy.metadata_bytes(state.as_deref(), &op.input).map_err(state_error)?;
            Ok((step.verdict, meta))
        })
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.store().clear();
        Box::pin(async { Ok(()) })
    }
}
