//! Backends store strategy state and apply each decision atomically.
//!
//! | backend | crate | atomicity |
//! |---|---|---|
//! | [`InMemoryBackend`] | `traffik` | per-key shard lock, in process |
//! | `RedisBackend` | `traffik-redis` | one Lua script per decision |
//! | `MemcachedBackend` | `traffik-memcached` | `gets`/`cas` with bounded retries |
//!
//! The contract: [`Backend::decide`] runs the strategy on the key's current state and stores
//! the result as one atomic step, so concurrent hits on one key never over-admit, without
//! distributed locks. Built-in strategies ([`StrategyHandle::builtin`]) may use native
//! implementations; any other strategy must work through [`StrategyHandle::decide_bytes`].

mod memory;

/// Changes to an admission after the fact; defined with the strategies, which apply them.
pub use crate::strategy::Amend;

pub(crate) use memory::Verdicts;
pub use memory::{Eviction, InMemoryBackend, InMemoryBuilder, PreparedKey};

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::error::{BackendError, OnError};
use crate::key::Key;
use crate::strategy::{Input, Metadata, StrategyHandle, Verdict};

/// A boxed, `Send` future, the return type of [`Backend`] methods (the `futures` family's own
/// alias, so implementations written against either name agree).
pub use futures_core::future::BoxFuture;

pub use crate::error::BoxError;

/// Whether a decision consumes quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Apply the decision (a hit).
    Consume,
    /// Only compute what a hit would get (a check); nothing is written.
    Peek,
}

/// One decision to make.
#[derive(Clone, Copy, Debug)]
pub struct Operation<'a> {
    /// The key, without the backend's namespace.
    pub key: &'a Key,
    /// The strategy to run.
    pub strategy: &'a StrategyHandle,
    /// Time, rate and cost. Backends that use their own time source (Redis' `TIME`) replace
    /// `input.now_us`.
    pub input: Input,
    /// Consume or peek.
    pub mode: Mode,
}

/// Several decisions to make as one: the members of a [`ThrottleGroup`](crate::ThrottleGroup).
#[derive(Clone, Copy, Debug)]
pub struct GroupOperation<'a> {
    /// A tag shared by every key of the group (Redis Cluster puts the group's keys in the
    /// tag's hash slot, so one script can decide them all).
    ///
    /// Empty when the keys are throttles' own keys rather than a group's (a deferred
    /// [`Scope`](crate::Scope) charging its entries): each key must then be stored where
    /// [`Backend::decide`] stores it, so that the scope and the throttle's own hits share
    /// state. A backend that stores group members like single decisions (the in-memory and
    /// Memcached ones) needs nothing more; one that derives group storage from the tag (Redis)
    /// uses its single-decision keys for an empty tag.
    pub tag: &'a str,
    /// The members' operations, in order, all with the same [`Mode`].
    pub ops: &'a [Operation<'a>],
}

/// Storage for throttle state. See the [module docs](self).
pub trait Backend: Any + Send + Sync + fmt::Debug {
    /// A short name for logs and errors (`"memory"`, `"redis"`, ...).
    fn kind(&self) -> &'static str;

    /// The prefix that isolates this backend's keys.
    fn namespace(&self) -> &str;

    /// Runs the strategy on the key's state atomically and returns its verdict.
    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>>;

    /// Decides without awaiting, for backends that never block (the in-memory one). The
    /// throttle tries this first and skips the future when it returns `Some`.
    fn decide_now(&self, _op: &Operation<'_>) -> Option<Result<Verdict, BackendError>> {
        None
    }

    /// Decides every operation of `group` as one: if every member is admitted (an admission or
    /// a delay), every member's state is updated; if any is not, no state changes at all. The
    /// verdicts come back in order; when the group is denied, the members that would have been
    /// admitted report what they would have answered. The default refuses with
    /// [`BackendError::Unsupported`].
    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        let _ = group;
        let backend = self.kind();
        Box::pin(async move { Err(BackendError::Unsupported { backend, what: "groups of throttles" }) })
    }

    /// [`decide_group`](Self::decide_group) without awaiting, for backends that never block
    /// (the in-memory one); `None` otherwise.
    fn decide_group_now(&self, _group: GroupOperation<'_>) -> Option<Result<Vec<Verdict>, BackendError>> {
        None
    }

    /// Applies a refund or a lease renewal ([`Amend`]) to the key of `op` atomically (`tag`: the
    /// [`GroupOperation::tag`] when the admission was a group member's, for backends that key
    /// group members apart, as Redis does): `true` if
    /// the state changed, `false` if there was nothing to change (the key's state is gone, the
    /// lease expired or was released, the window passed). `op.mode` is ignored. The default
    /// refuses with [`BackendError::Unsupported`]; a custom backend implements it like
    /// [`decide`](Self::decide), running [`StrategyHandle::amend_bytes`] on the stored state and
    /// writing the result (with its time to live) only if the state is still what it read.
    /// Leases ([`Concurrency`](crate::strategy::Concurrency)) need it to be released before they
    /// expire and to be renewed.
    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let _ = (op, amend, tag);
        let backend = self.kind();
        Box::pin(async move { Err(BackendError::Unsupported { backend, what: "refunds and lease renewals" }) })
    }

    /// [`amend`](Self::amend) without awaiting, for backends that never block (the in-memory
    /// one); `None` otherwise.
    fn amend_now(&self, _op: &Operation<'_>, _amend: Amend, _tag: Option<&str>) -> Option<Result<bool, BackendError>> {
        None
    }

    /// What a hit would get now, plus strategy metadata; writes nothing.
    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>>;

    /// [`stat`](Self::stat) of a group member's key, whose admissions
    /// [`decide_group`](Self::decide_group) made under `tag` ([`GroupOperation::tag`]).
    /// Backends that store group members apart (Redis keeps them in the tag's hash slot)
    /// read them there; the default is [`stat`](Self::stat). Asked only when
    /// [`stat_now`](Self::stat_now) has no answer: a backend that answers `stat_now` keeps
    /// group members where [`decide`](Self::decide) keeps them.
    fn stat_member<'a>(
        &'a self,
        op: Operation<'a>,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        let _ = tag;
        self.stat(op)
    }

    /// [`stat`](Self::stat) without awaiting, for backends that never block (the in-memory
    /// one): no timeout, so no timer, is needed. `None` otherwise.
    fn stat_now(&self, _op: &Operation<'_>) -> Option<Result<(Verdict, Metadata), BackendError>> {
        None
    }

    /// Deletes every key under this backend's namespace.
    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Checks that the backend can serve decisions (connects if needed).
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Releases connections; later calls fail with [`BackendError::Closed`] or reconnect.
    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// What throttles on this backend do when it fails, if they set no error policy
    /// themselves (`None`: fail closed, [`OnError::Throttle`]).
    fn on_error(&self) -> Option<OnError> {
        None
    }
}

impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn namespace(&self) -> &str {
        (**self).namespace()
    }
    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        (**self).decide(op)
    }
    fn decide_now(&self, op: &Operation<'_>) -> Option<Result<Verdict, BackendError>> {
        (**self).decide_now(op)
    }
    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        (**self).decide_group(group)
    }
    fn decide_group_now(&self, group: GroupOperation<'_>) -> Option<Result<Vec<Verdict>, BackendError>> {
        (**self).decide_group_now(group)
    }
    fn amend<'a>(
        &'a self,
        op: Operation<'a>,
        amend: Amend,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).amend(op, amend, tag)
    }
    fn amend_now(&self, op: &Operation<'_>, amend: Amend, tag: Option<&str>) -> Option<Result<bool, BackendError>> {
        (**self).amend_now(op, amend, tag)
    }
    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        (**self).stat(op)
    }
    fn stat_member<'a>(
        &'a self,
        op: Operation<'a>,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        (**self).stat_member(op, tag)
    }
    fn stat_now(&self, op: &Operation<'_>) -> Option<Result<(Verdict, Metadata), BackendError>> {
        (**self).stat_now(op)
    }
    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).reset()
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).ready()
    }
    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).close()
    }
    fn on_error(&self) -> Option<OnError> {
        (**self).on_error()
    }
}

/// A shared, type-erased backend.
pub type SharedBackend = Arc<dyn Backend>;
