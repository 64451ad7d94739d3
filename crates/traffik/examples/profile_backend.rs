//! Profiling aid: `InMemoryBackend::decide_prepared` on 10k prepared keys
//! (`cargo run --release -p traffik --example profile_backend -- 2000000 gcra`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
use std::hint::black_box;

use traffik::backend::Mode;
use traffik::strategy::{FixedWindow, Gcra, Input};
use traffik::{Clock, InMemoryBackend, Key, Rate, StrategyHandle, SystemClock};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let strategy: StrategyHandle = match args.next().as_deref() {
        Some("gcra") => Gcra::new().into(),
        _ => FixedWindow.into(),
    };
    let rate = Rate::per_millis(u32::MAX, 1000).unwrap();
    let backend = InMemoryBackend::new();
    let keys: Vec<_> =
        (0..10_000u64).map(|k| backend.prepare(&Key::builder("p").part(&k.to_be_bytes()).build(), &strategy)).collect();
    let start = std::time::Instant::now();
    for i in 0..n {
        let input = Input { now_us: SystemClock.now_us(), rate, cost: 1 };
        black_box(backend.decide_prepared(keys[i % keys.len()], &strategy, &input, Mode::Consume).unwrap());
    }
    println!("{:.1} ns/decision", start.elapsed().as_nanos() as f64 / n as f64);
}
