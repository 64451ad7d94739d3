//! Profiling aid: a tight loop of `Throttle::hit` on the in-memory backend
//! (`cargo run --release -p traffik --example profile_hit -- <hits> [<distinct peers, default 10000>]`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Rate, RequestView, Throttle};

fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("waited"),
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let keys: u32 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let t = Throttle::builder()
        .uid("profile")
        .rate(Rate::per_millis(u32::MAX, 1000).unwrap())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let peers: Vec<std::net::SocketAddr> =
        (0..keys).map(|k| std::net::SocketAddr::from(([10, 0, (k >> 8) as u8, k as u8], 1))).collect();
    let start = std::time::Instant::now();
    for i in 0..n {
        let req = RequestView::empty().peer(Some(peers[i % peers.len()]));
        let _ = black_box(now_or_never(t.hit(&req)).unwrap());
    }
    println!("{:.1} ns/hit", start.elapsed().as_nanos() as f64 / n as f64);
}
