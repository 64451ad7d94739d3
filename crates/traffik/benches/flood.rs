//! A flood of new identities against the in-memory backend at its key cap, next to an idle
//! baseline measured in the same run.
//!
//! `cargo bench -p traffik --bench flood` prints, for caps of 10,000, 100,000 and 1,000,000
//! keys and for flooding IPv4 addresses and IPv6 /64 prefixes:
//! - the flooding rate (one thread making hits from a new identity each, as fast as it can);
//! - memory (bytes allocated by the backend, per key of its cap) and keys stored;
//! - what the cap did: expired keys replaced, new keys refused;
//! - an honest client's latency on a second thread, hitting its own throttle at a fixed rate
//!   (one hit every microsecond), counted from when each hit was due: p50 and p99 with the
//!   flood running and without it (the idle baseline, same process, same backend, same cap),
//!   and their ratio; medians of 5 measurements of each, alternated;
//! - how many of the honest client's hits were admitted over both measurements (its limit is
//!   1,000 a day: more would be a bypass).
//!
//! The backend is filled to its cap before measuring, so every flooding hit meets a full
//! backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Outcome, RequestView, Throttle, rate};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Hits of the honest client per measurement, one due every [`PERIOD`].
const HONEST_HITS: usize = 200_000;
/// Measurements per row, alternating idle and flooded, so that drift in the machine's speed
/// hits both; the row reports the medians.
const RUNS: usize = 5;
const PERIOD: Duration = Duration::from_micros(1);

/// Polls a future that never waits (the in-memory path) to completion.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory hit unexpectedly waited"),
    }
}

fn identity(n: u64, v6: bool) -> IpAddr {
    if v6 {
        let n = n as u32;
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, (n >> 16) as u16, n as u16, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n as u32)))
    }
}

fn view(ip: IpAddr) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::new(ip, 40_000)))
}

/// The honest client: one hit due every [`PERIOD`]; returns (p50, p99) in ns of the time from
/// when each hit was due to when it was decided, and the hits admitted.
fn honest(client: &Throttle) -> (u64, u64, u64) {
    let me = view(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut latencies = Vec::with_capacity(HONEST_HITS);
    let mut admitted = 0;
    let start = Instant::now();
    for i in 0..HONEST_HITS {
        let due = start + PERIOD * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let d = now_or_never(client.hit(&me)).unwrap();
        latencies.push(due.elapsed().as_nanos() as u64);
        admitted += u64::from(d.outcome == Outcome::Allowed);
    }
    latencies.sort_unstable();
    (latencies[HONEST_HITS / 2], latencies[HONEST_HITS * 99 / 100], admitted)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let caps: &[usize] = if quick { &[10_000] } else { &[10_000, 100_000, 1_000_000] };
    println!(
        "{:>9} {:>5} {:>12} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9}",
        "cap",
        "peers",
        "flood hit/s",
        "B/key",
        "keys",
        "replaced",
        "refused",
        "idle p50",
        "idle p99",
        "p50",
        "p99",
        "p99 x",
        "admitted"
    );
    let mut next = 0u64;
    for &cap in caps {
        for v6 in [false, true] {
            let before = LIVE.load(Ordering::Relaxed);
            let backend = InMemoryBackend::builder().max_keys(cap).build();
            let make = |uid: &str, limit| {
                Throttle::builder().uid(uid).rate(limit).backend(backend.clone()).strategy(FixedWindow).build().unwrap()
            };
            let flood = make("flood", rate!("5/day"));
            let client = make("client", rate!("1000/day"));
            // The honest client is known before the flood; then fill the backend to its cap (a
            // few more hits than keys: shards fill unevenly).
            let me = view(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
            let mut admitted = u64::from(now_or_never(client.hit(&me)).unwrap().is_allowed());
            let mut filling = 0;
            while backend.len() < cap {
                for _ in 0..cap / 4 {
                    next += 1;
                    let _ = now_or_never(flood.hit(&view(identity(next, v6)))).unwrap();
                }
                filling += 1;
                assert!(filling < 40, "the backend does not fill: {} of {cap} keys", backend.len());
            }
            let (mut idle, mut flooded_runs) = (Vec::new(), Vec::new());
            let mut flooded = 0u64;
            let mut flooding = Duration::ZERO;
            for _ in 0..RUNS {
                let (p50, p99, a) = honest(&client);
                idle.push((p50, p99));
                admitted += a;
                let stop = AtomicBool::new(false);
                let hits = AtomicU64::new(0);
                let started = Instant::now();
                let (p50, p99, a) = std::thread::scope(|s| {
                    s.spawn(|| {
                        let mut n = next;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let _ = now_or_never(flood.hit(&view(identity(n, v6)))).unwrap();
                        }
                        hits.store(n - next, Ordering::Relaxed);
                    });
                    let result = honest(&client);
                    stop.store(true, Ordering::Relaxed);
                    result
                });
                flooding += started.elapsed();
                let hits = hits.load(Ordering::Relaxed);
                next += hits;
                flooded += hits;
                flooded_runs.push((p50, p99));
                admitted += a;
            }
            let median = |runs: &mut Vec<(u64, u64)>| {
                let mut p50: Vec<u64> = runs.iter().map(|r| r.0).collect();
                let mut p99: Vec<u64> = runs.iter().map(|r| r.1).collect();
                p50.sort_unstable();
                p99.sort_unstable();
                (p50[RUNS / 2], p99[RUNS / 2])
            };
            let (idle_p50, idle_p99) = median(&mut idle);
            let (p50, p99) = median(&mut flooded_runs);
            let bytes = LIVE.load(Ordering::Relaxed) - before;
            println!(
                "{:>9} {:>5} {:>12.0} {:>9.1} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6.2} {:>9}",
                cap,
                if v6 { "v6/64" } else { "v4" },
                flooded as f64 / flooding.as_secs_f64(),
                bytes as f64 / cap as f64,
                backend.len(),
                backend.evictions(),
                backend.refusals(),
                idle_p50,
                idle_p99,
                p50,
                p99,
                p99 as f64 / idle_p99 as f64,
                admitted
            );
            drop((flood, client));
            drop(backend);
        }
    }
}
