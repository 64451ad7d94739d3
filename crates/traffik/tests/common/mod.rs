//! Helpers shared by the core's integration tests (each test file uses some of them).

#![allow(dead_code)]

use std::net::SocketAddr;

use traffik::{Backend, InMemoryBackend, ManualClock, RequestView, StrategyHandle, Throttle};

/// A time in 2023, in microseconds since the epoch: where the tests' manual clocks start.
pub(crate) const START: u64 = 1_700_000_000_000_000;

/// A request from `ip` (port 4000), identified by its peer address.
pub(crate) fn view(ip: [u8; 4]) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from((ip, 4000))))
}

/// A throttle on a fresh in-memory backend of its own, reading `clock`.
pub(crate) fn throttle(uid: &str, rate: &str, strategy: impl Into<StrategyHandle>, clock: &ManualClock) -> Throttle {
    throttle_on(uid, rate, strategy, InMemoryBackend::new(), clock)
}

/// A throttle on `backend` (clone a shared one to let throttles share state), reading `clock`.
pub(crate) fn throttle_on(
    uid: &str,
    rate: &str,
    strategy: impl Into<StrategyHandle>,
    backend: impl Backend,
    clock: &ManualClock,
) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        .backend(backend)
        .strategy(strategy)
        .clock(clock.clone())
        .no_registry()
        .build()
        .unwrap_or_else(|e| panic!("test throttle {uid}: {e}"))
}
