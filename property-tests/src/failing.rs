//! Backends that fail on purpose, for testing what a throttle, an integration or an error
//! policy does when storage is down: one type instead of a hand-written copy per test file.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use traffik::backend::{BoxFuture, GroupOperation, Operation};
use traffik::strategy::{Metadata, Verdict};
use traffik::{Backend, BackendError, InMemoryBackend};

/// A backend that fails: every call ([`Failing::down`]), its first `n` decisions
/// ([`Failing::first`], then it decides in memory), by never answering ([`Failing::hanging`],
/// for timeouts), or while switched off ([`Failing::switch`] and [`Failing::set_down`], for
/// outages that end). Counts the decisions asked of it (a group decision is one).
#[derive(Debug)]
pub struct Failing {
    kind: &'static str,
    /// Every call fails, snapshots and resets too.
    down: bool,
    calls: AtomicU32,
    fail_first: u32,
    hang: bool,
    /// Decisions fail while set (a [`Failing::switch`] backend).
    switched_off: AtomicBool,
    inner: InMemoryBackend,
}

impl Failing {
    fn with(kind: &'static str, down: bool, fail_first: u32, hang: bool) -> Self {
        let switched_off = AtomicBool::new(false);
        Failing { kind, down, calls: AtomicU32::new(0), fail_first, hang, switched_off, inner: InMemoryBackend::new() }
    }

    /// Always down: every decision, snapshot and reset fails with a command error. Its kind
    /// (the `backend` in errors and metric labels) is `"down"`.
    pub fn down() -> Self {
        Failing::with("down", true, u32::MAX, false)
    }

    /// Refuses its first `n` decisions with a connection error (every one with `u32::MAX`),
    /// then decides in memory; snapshots and resets work. Its kind is `"flaky"`.
    pub fn first(n: u32) -> Self {
        Failing::with("flaky", false, n, false)
    }

    /// Never answers a decision (the throttle's timeout or error policy must step in). Its kind
    /// is `"flaky"`.
    pub fn hanging() -> Self {
        Failing::with("flaky", false, 0, true)
    }

    /// Decides in memory until [`set_down`](Self::set_down)`(true)`, then fails its decisions
    /// with a command error until `set_down(false)`; snapshots and resets always work. Its kind
    /// is `"switch"`.
    pub fn switch() -> Self {
        Failing::with("switch", false, 0, false)
    }

    /// Switches the outage on or off (any kind; a [`Failing::down`] backend stays down).
    pub fn set_down(&self, down: bool) {
        self.switched_off.store(down, Ordering::SeqCst);
    }

    /// Decisions asked of it so far.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn error(&self) -> BackendError {
        if self.down {
            BackendError::command(self.kind, "always down")
        } else if self.switched_off.load(Ordering::SeqCst) {
            BackendError::command(self.kind, "switched off")
        } else {
            BackendError::Connection { backend: self.kind, message: "connection refused".into(), source: None }
        }
    }
}

impl Backend for Failing {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn namespace(&self) -> &str {
        self.kind
    }

    fn decide<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<Verdict, BackendError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if n < self.fail_first || self.switched_off.load(Ordering::SeqCst) {
                return Err(self.error());
            }
            self.inner.decide(op).await
        })
    }

    /// A group decision is one call: it fails, hangs or is decided in memory like a decision.
    fn decide_group<'a>(&'a self, group: GroupOperation<'a>) -> BoxFuture<'a, Result<Vec<Verdict>, BackendError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if n < self.fail_first || self.switched_off.load(Ordering::SeqCst) {
                return Err(self.error());
            }
            self.inner.decide_group(group).await
        })
    }

    fn stat<'a>(&'a self, op: Operation<'a>) -> BoxFuture<'a, Result<(Verdict, Metadata), BackendError>> {
        if self.down {
            return Box::pin(async move { Err(self.error()) });
        }
        self.inner.stat(op)
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        if self.down {
            return Box::pin(async move { Err(self.error()) });
        }
        self.inner.reset()
    }
}
