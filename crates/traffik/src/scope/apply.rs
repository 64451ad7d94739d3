//! How a scope's entries become one backend decision: one backend for them all, one operation per key, retried calls.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use super::outcome::concluded;
use super::{Charge, Entry, ScopeDecision, ScopeError};
use crate::backend::{Backend, GroupOperation, InMemoryBackend, Mode, Operation, SharedBackend};
use crate::decision::Source;
use crate::error::BackendError;
use crate::policy::Retry;
use crate::strategy::{Input, Verdict};
use crate::throttle::{bounded, time_left};

/// Refuses an entry on another backend than `scope`'s.
pub(super) fn check_backend(entry: &Entry, scope: &SharedBackend) -> Result<(), ScopeError> {
    if same_backend(&entry.backend, scope) {
        Ok(())
    } else {
        Err(ScopeError::OtherBackend {
            throttle: entry.throttle.uid().to_owned(),
            backend: entry.backend.kind(),
            scope_backend: scope.kind(),
        })
    }
}

/// One backend: the same value, the same in-memory store, or (other backends, whose clones
/// share their connections) the same type, kind and namespace.
fn same_backend(a: &SharedBackend, b: &SharedBackend) -> bool {
    if std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)) {
        return true;
    }
    let (x, y): (&dyn Any, &dyn Any) = (&**a, &**b);
    let memory = |v: &dyn Any| {
        v.downcast_ref::<InMemoryBackend>()
            .cloned()
            .or_else(|| v.downcast_ref::<Arc<InMemoryBackend>>().map(|m| (**m).clone()))
    };
    match (memory(x), memory(y)) {
        (Some(m), Some(n)) => m.same_store(&n),
        (None, None) => x.type_id() == y.type_id() && a.kind() == b.kind() && a.namespace() == b.namespace(),
        _ => false,
    }
}

/// One backend operation: the first entry on its key, and the key's summed cost.
pub(super) struct Op {
    pub(super) entry: usize,
    pub(super) cost: u64,
}

/// The scope's operations: one per key (and strategy), in the order of first appearance. A
/// backend decides a key once per group, so its entries are summed.
pub(super) fn operations(entries: &[Entry]) -> SmallVec<[Op; 4]> {
    let mut ops: SmallVec<[Op; 4]> = SmallVec::new();
    for (i, e) in entries.iter().enumerate() {
        let same = |o: &&mut Op| {
            let first = &entries[o.entry];
            first.key == e.key && first.config.strategy.name() == e.config.strategy.name()
        };
        match ops.iter_mut().find(|o| same(o)) {
            Some(op) => op.cost = op.cost.saturating_add(e.cost),
            None => ops.push(Op { entry: i, cost: e.cost }),
        }
    }
    ops
}

/// Decides the entries as one (consuming or peeking), with the retries `policies` allow.
pub(super) async fn decide(entries: &[Entry], policies: &[Retry], mode: Mode) -> Result<ScopeDecision, ScopeError> {
    let Some(first) = entries.first() else {
        return Ok(concluded(Vec::new()));
    };
    let ops = operations(entries);
    let inputs: SmallVec<[Input; 4]> = ops
        .iter()
        .map(|op| {
            let e = &entries[op.entry];
            Input { now_us: e.throttle.inner.clock.now_us(), rate: e.rate, cost: op.cost }
        })
        .collect();
    let operations: SmallVec<[Operation<'_>; 4]> = ops
        .iter()
        .zip(&inputs)
        .map(|(op, &input)| {
            let e = &entries[op.entry];
            Operation { key: &e.key, strategy: &e.config.strategy, input, mode }
        })
        .collect();
    let backend = &first.backend;
    let timeout = ops.iter().map(|op| entries[op.entry].config.timeout).max().unwrap_or(Duration::from_secs(1));
    let verdicts = call_retrying(backend.as_ref(), &operations, timeout, policies).await?;
    if verdicts.len() != ops.len() {
        let source =
            BackendError::command(backend.kind(), format!("{} verdicts for {} keys", verdicts.len(), ops.len()));
        return Err(ScopeError::Backend { attempts: 1, source });
    }
    let charges = ops
        .iter()
        .zip(inputs)
        .zip(verdicts)
        .map(|((op, input), verdict)| {
            let e = &entries[op.entry];
            let decision = e.config.decision(verdict, e.key.clone(), &input, Source::Backend, false);
            Charge { throttle: e.throttle.uid().to_owned(), decision }
        })
        .collect();
    Ok(concluded(charges))
}

/// One call for every operation (a single decision for one key, else the backend's group
/// decision on the throttles' own keys), retried after errors while a policy allows.
async fn call_retrying(
    backend: &dyn Backend,
    ops: &[Operation<'_>],
    timeout: Duration,
    policies: &[Retry],
) -> Result<Vec<Verdict>, ScopeError> {
    let mut error = match call(backend, ops, timeout).await {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut attempts = 1u32;
    // Without a Tokio runtime there is no timer to pause with.
    if policies.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return Err(ScopeError::Backend { attempts, source: error });
    }
    let failed_at = tokio::time::Instant::now();
    let mut retries = 0u32;
    loop {
        // The longest pause among the settings that allow another attempt, and the most time
        // any of them leaves for it.
        let mut next: Option<(Duration, Duration)> = None;
        for p in policies {
            if retries >= p.max_retries_count() || !p.accepts(&error) {
                continue;
            }
            let pause = p.delay_for(retries);
            let Some(left) = time_left(failed_at.checked_add(p.deadline_span()), pause) else {
                continue;
            };
            next = Some(match next {
                Some((pa, le)) => (pa.max(pause), le.max(left)),
                None => (pause, left),
            });
        }
        let Some((pause, left)) = next else {
            return Err(ScopeError::Backend { attempts, source: error });
        };
        tokio::time::sleep(pause).await;
        retries += 1;
        attempts += 1;
        match call(backend, ops, timeout.min(left)).await {
            Ok(v) => return Ok(v),
            Err(e) => error = e,
        }
    }
}

async fn call(backend: &dyn Backend, ops: &[Operation<'_>], timeout: Duration) -> Result<Vec<Verdict>, BackendError> {
    if let [op] = ops {
        if let Some(answer) = backend.decide_now(op) {
            return answer.map(|v| vec![v]);
        }
        return bounded(backend.kind(), timeout, backend.decide(*op)).await.map(|v| vec![v]);
    }
    // The throttles' own keys: an empty tag (see `GroupOperation::tag`).
    let group = GroupOperation { tag: "", ops };
    if let Some(answer) = backend.decide_group_now(group) {
        return answer;
    }
    bounded(backend.kind(), timeout, backend.decide_group(group)).await
}
