//! In-memory decision cost next to `governor`'s keyed limiter, measured in one run.
//!
//! `cargo bench -p traffik --bench decisions` prints, for 1 key and 10,000 keys on 1 and 2
//! threads: ns per decision for governor's `check_key` (the baseline), for
//! `InMemoryBackend::decide_prepared` with each strategy, and for a whole `Throttle::hit`
//! (identity, key, decision), the newer strategies' decisions against the fixed window's, and for a `ThrottleGroup` of two (fixed window and sliding window
//! counter) against one `Throttle::hit` (fixed window); then
//! bytes per key with 1,000,000 keys. Each row's runs alternate
//! with runs of governor on the same workload (so drift in the machine's speed hits both), and
//! the ratio is of the two medians.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use governor::{Quota, RateLimiter};
use traffik::backend::Mode;
use traffik::backend::PreparedKey;
use traffik::strategy::{
    CostAwareTokenBucket, FixedWindow, Gcra, Input, LeakyBucket, LeakyBucketWithQueue, QuotaRollover, Reserved,
    SlidingWindowCounter, SlidingWindowLog, TokenBucket, TokenBucketWithDebt,
};
use traffik::{Clock, InMemoryBackend, Key, Rate, RequestView, StrategyHandle, SystemClock, Throttle, ThrottleGroup};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Counting is switched on for the memory rows only: elsewhere a shared counter touched on
/// every allocation would tax whatever allocates (a group's decision list) with contention
/// between the threads that no application has.
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const OPS: usize = 1_000_000;
const RUNS: usize = 7;

/// Polls a future that never waits (the in-memory path) to completion.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory hit unexpectedly waited"),
    }
}

/// ns per operation of one run of `op(thread, i)` over `threads` threads doing OPS each (wall
/// time / total operations).
fn run_once(threads: usize, op: &(dyn Fn(usize, usize) + Sync)) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..OPS {
                    op(t, i);
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (OPS * threads) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians (baseline, candidate) of RUNS runs of each, alternating, so that the machine's
/// drift hits both alike.
fn paired(
    threads: usize,
    baseline: &(dyn Fn(usize, usize) + Sync),
    candidate: &(dyn Fn(usize, usize) + Sync),
) -> (f64, f64) {
    let (mut b, mut c) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        b.push(run_once(threads, baseline));
        c.push(run_once(threads, candidate));
    }
    (median(b), median(c))
}

fn row(label: &str, keys: usize, threads: usize, ns: f64, gov_ns: f64) {
    println!("{label:<34} {keys:>6} {threads:>7} {ns:>9.1} {gov_ns:>9.1} {:>7.2}", ns / gov_ns);
}

fn strategies() -> Vec<(&'static str, StrategyHandle)> {
    vec![
        ("fixed_window", FixedWindow.into()),
        ("sliding_window_counter", SlidingWindowCounter.into()),
        ("sliding_window_log", SlidingWindowLog.into()),
        ("token_bucket", TokenBucket::new().into()),
        ("token_bucket_with_debt", TokenBucketWithDebt::new(10).into()),
        ("leaky_bucket", LeakyBucket.into()),
        ("leaky_bucket_with_queue", LeakyBucketWithQueue::new(10).into()),
        ("gcra", Gcra::new().into()),
        ("quota_rollover", QuotaRollover::builder().max_percent(50).build().unwrap().into()),
        ("priority_reserved", Reserved::new(u64::from(u32::MAX)).into()),
        ("cost_aware_token_bucket", CostAwareTokenBucket::builder().build().unwrap().into()),
    ]
}

fn main() {
    // A rate that is never reached, like the governor quota below.
    let rate = Rate::per_millis(u32::MAX, 1_000).unwrap();
    let quota = Quota::per_second(NonZeroU32::new(u32::MAX).unwrap());
    let clock = SystemClock;
    println!(
        "traffik in-memory decisions vs governor keyed check_key; ns per decision, medians of {RUNS} runs of {OPS} \
         ops/thread, each row's runs alternating with governor's on the same workload"
    );
    println!("{:<34} {:>6} {:>7} {:>9} {:>9} {:>7}", "workload", "keys", "threads", "ns/op", "governor", "ratio");
    let mut summary = Vec::new();
    for keys in [1usize, 10_000] {
        for threads in [1usize, 2] {
            let governor = RateLimiter::keyed(quota);
            let gov = |t: usize, i: usize| {
                let k = ((i + t * 7919) % keys) as u64;
                black_box(governor.check_key(&k).is_ok());
            };

            let backend = InMemoryBackend::builder().max_keys(2_000_000).build();
            let mut fixed_window_ratio = f64::NAN;
            for (name, strategy) in strategies() {
                if name == "sliding_window_log" && keys == 1 {
                    // One key with an unreachable limit would log millions of entries: not a
                    // meaningful per-decision cost. Measured with 10k keys only.
                    continue;
                }
                let prepared: Vec<PreparedKey> = (0..keys)
                    .map(|k| backend.prepare(&Key::builder("bench").part(&(k as u64).to_be_bytes()).build(), &strategy))
                    .collect();
                let (gov_ns, ns) = paired(threads, &gov, &|t, i| {
                    let k = prepared[(i + t * 7919) % keys];
                    let input = Input { now_us: clock.now_us(), rate, cost: 1 };
                    black_box(backend.decide_prepared(k, &strategy, &input, Mode::Consume).unwrap());
                });
                let label = format!("backend {name}");
                row(&label, keys, threads, ns, gov_ns);
                if name == "fixed_window" || name == "gcra" {
                    summary.push((format!("backend {name}, {keys} keys, {threads} thr"), ns / gov_ns, 1.0));
                }
                if name == "fixed_window" {
                    fixed_window_ratio = ns / gov_ns;
                }
                if matches!(name, "quota_rollover" | "priority_reserved" | "cost_aware_token_bucket") {
                    // The newer strategies are held to the fixed window's cost (its row above
                    // ran on the same backend and workload). Each row is compared through its
                    // ratio to the governor runs it alternated with, so that the machine's
                    // drift between the two rows cancels out.
                    let what = format!("backend {name} / fixed_window, {keys} keys, {threads} thr");
                    summary.push((what, ns / gov_ns / fixed_window_ratio, 1.5));
                }
                backend.clear();
            }

            for (name, strategy) in [("fixed_window", StrategyHandle::new(FixedWindow)), ("gcra", Gcra::new().into())] {
                let throttle = Throttle::builder()
                    .uid(format!("bench-{name}-{keys}-{threads}"))
                    .rate(rate)
                    .backend(InMemoryBackend::builder().max_keys(2_000_000).build())
                    .strategy(strategy)
                    .build()
                    .unwrap();
                let peers: Vec<std::net::SocketAddr> = (0..keys)
                    .map(|k| std::net::SocketAddr::from(([10, (k >> 16) as u8, (k >> 8) as u8, k as u8], 40_000)))
                    .collect();
                let (gov_ns, ns) = paired(threads, &gov, &|t, i| {
                    let req = RequestView::empty().peer(Some(peers[(i + t * 7919) % keys]));
                    let _ = black_box(now_or_never(throttle.hit(&req)).unwrap());
                });
                let label = format!("Throttle::hit {name}");
                row(&label, keys, threads, ns, gov_ns);
                summary.push((format!("Throttle::hit {name}, {keys} keys, {threads} thr"), ns / gov_ns, 2.0));
            }

            // A group of two fixed windows (burst + sustained) against one hit of a fixed window:
            // like for like, so the ratio is what grouping costs.
            let backend = InMemoryBackend::builder().max_keys(2_000_000).build();
            let member = |uid: &str, strategy: StrategyHandle| {
                Throttle::builder()
                    .uid(format!("{uid}-{keys}-{threads}"))
                    .rate(rate)
                    .backend(backend.clone())
                    .strategy(strategy)
                    .build()
                    .unwrap()
            };
            let single = member("single", FixedWindow.into());
            let group = ThrottleGroup::new(
                "group",
                [member("burst", FixedWindow.into()), member("sustained", FixedWindow.into())],
            )
            .unwrap();
            let peers: Vec<std::net::SocketAddr> = (0..keys)
                .map(|k| std::net::SocketAddr::from(([10, (k >> 16) as u8, (k >> 8) as u8, k as u8], 40_000)))
                .collect();
            let (hit_ns, group_ns) = paired(
                threads,
                &|t, i| {
                    let req = RequestView::empty().peer(Some(peers[(i + t * 7919) % keys]));
                    let _ = black_box(now_or_never(single.hit(&req)).unwrap());
                },
                &|t, i| {
                    let req = RequestView::empty().peer(Some(peers[(i + t * 7919) % keys]));
                    let _ = black_box(now_or_never(group.hit(&req)).unwrap());
                },
            );
            println!(
                "{:<34} {keys:>6} {threads:>7} {group_ns:>9.1} {hit_ns:>9.1} {:>7.2}  (baseline: one Throttle::hit)",
                "ThrottleGroup::hit fw + fw",
                group_ns / hit_ns
            );
            summary.push((format!("group of 2 vs one hit, {keys} keys, {threads} thr"), group_ns / hit_ns, 2.0));
        }
    }

    println!();
    println!("memory with 1,000,000 live keys at 100/min (bytes allocated / keys; keys are stored as 8-byte hashes)");
    let rate = Rate::per_millis(100, 60_000).unwrap();
    // From here on every allocation is counted (each backend is made after this, so all it
    // allocates and frees is seen).
    COUNTING.store(true, Ordering::Relaxed);
    for (name, strategy) in [("fixed_window", StrategyHandle::new(FixedWindow)), ("gcra", Gcra::new().into())] {
        let backend = InMemoryBackend::builder().max_keys(2_000_000).build();
        let before = LIVE.load(Ordering::Relaxed);
        for k in 0..1_000_000u64 {
            let pk = backend.prepare(&Key::builder("mem").part(&k.to_be_bytes()).build(), &strategy);
            let input = Input { now_us: clock.now_us(), rate, cost: 1 };
            backend.decide_prepared(pk, &strategy, &input, Mode::Consume).unwrap();
        }
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / 1e6;
        println!("  traffik {name:<13} {bytes:>6.1} bytes/key ({} keys)", backend.len());
        summary.push((format!("memory {name} (bytes/key incl. the 8-byte key hash)"), bytes, 64.0 + 8.0));
        drop(backend);
    }
    let governor = RateLimiter::keyed(quota);
    let before = LIVE.load(Ordering::Relaxed);
    for k in 0..1_000_000u64 {
        let _ = governor.check_key(&k);
    }
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / 1e6;
    println!("  governor (u64 keys)   {bytes:>6.1} bytes/key");

    println!();
    println!("targets");
    for (what, value, target) in summary {
        let verdict = if value <= target { "meets" } else { "MISSES" };
        println!("  {what:<58} {value:>6.2} (target <= {target:.2}) {verdict}");
    }
}
