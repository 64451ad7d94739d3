//! Runs one kind of in-memory decision many times, for counting instructions under callgrind
//! (counts do not depend on how busy or fast the machine is):
//!
//! ```sh
//! cargo build --release -p traffik --example instructions
//! valgrind --tool=callgrind --toggle-collect='*hits*' target/release/examples/instructions hit
//! valgrind --tool=callgrind --toggle-collect='*checks*' target/release/examples/instructions governor
//! ```
//!
//! Instructions per operation = the reported `refs` / 100,000. `hit` is a whole `Throttle::hit`
//! (client address, fixed window, 10,000 clients in turn); `group` a `ThrottleGroup` of two fixed
//! windows on the same clients (like for like with `hit`) (`--toggle-collect='*group_hits*'`); `governor` is
//! governor's keyed `check_key` on the same 10,000 keys. `hit-recorded` and `group-recorded` are
//! `hit` and `group` with a metrics recorder installed (feature `metrics`: the decision
//! counters then count for real); `hit-prometheus` is `hit` with the Prometheus exporter's
//! recorder installed (`metrics-exporter-prometheus`, without its HTTP listener).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, RequestView, StrategyHandle, Throttle, ThrottleGroup};

const KEYS: u32 = 10_000;
const OPS: u32 = 100_000;

fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory hit waited"),
    }
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "hit".into());
    if what.ends_with("-recorded") {
        // A real recorder (atomic counters behind handles, as exporters keep them), installed
        // before anything is built.
        metrics_util::debugging::DebuggingRecorder::new().install().unwrap();
    }
    if what.ends_with("-prometheus") {
        // The Prometheus exporter's recorder (no HTTP listener: rendering is not counted).
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().unwrap();
        black_box(&handle);
    }
    let views: Vec<RequestView<'static>> = (0..KEYS)
        .map(|i| RequestView::empty().peer(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 1))))
        .collect();
    let backend = InMemoryBackend::new();
    let throttle = Throttle::builder()
        .uid("instructions")
        .rate("1000000/min")
        .backend(backend.clone())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let quota = governor::Quota::per_minute(NonZeroU32::new(1_000_000).unwrap());
    let limiter = governor::DefaultKeyedRateLimiter::<u32>::keyed(quota);
    // Warm up: every key exists before counting starts.
    for (i, v) in views.iter().enumerate() {
        let _ = black_box(now_or_never(throttle.hit(v)).unwrap());
        black_box(limiter.check_key(&(i as u32)).is_ok());
    }
    let member = |uid: &str, strategy: StrategyHandle| {
        Throttle::builder().uid(uid).rate("1000000/min").backend(backend.clone()).strategy(strategy).build().unwrap()
    };
    let group =
        ThrottleGroup::new("group", [member("burst", FixedWindow.into()), member("sustained", FixedWindow.into())])
            .unwrap();
    for v in &views {
        let _ = black_box(now_or_never(group.hit(v)).unwrap());
    }
    match what.as_str() {
        "hit" | "hit-recorded" | "hit-prometheus" => hits(&throttle, &views),
        "group" | "group-recorded" => group_hits(&group, &views),
        "governor" => checks(&limiter),
        other => panic!(
            "unknown operation {other:?}: use hit, group, hit-recorded, group-recorded, hit-prometheus or governor"
        ),
    }
}

/// `OPS` hits of a group of two (`--toggle-collect=*group_hits*`).
#[inline(never)]
fn group_hits(group: &ThrottleGroup, views: &[RequestView<'static>]) {
    for i in 0..OPS {
        let _ = black_box(now_or_never(group.hit(&views[(i % KEYS) as usize])).unwrap());
    }
}

/// `OPS` whole hits; the only function callgrind counts (`--toggle-collect=*hits*`).
#[inline(never)]
fn hits(throttle: &Throttle, views: &[RequestView<'static>]) {
    for i in 0..OPS {
        let _ = black_box(now_or_never(throttle.hit(&views[(i % KEYS) as usize])).unwrap());
    }
}

/// `OPS` keyed checks of governor (`--toggle-collect=*checks*`).
#[inline(never)]
fn checks(limiter: &governor::DefaultKeyedRateLimiter<u32>) {
    for i in 0..OPS {
        black_box(limiter.check_key(&(i % KEYS)).is_ok());
    }
}
