//! Profiling aid: governor's keyed `check_key` on the same workload as `profile_hit`
//! (`cargo run --release -p traffik --example profile_governor -- 2000000`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
use std::hint::black_box;
use std::num::NonZeroU32;

use governor::{Quota, RateLimiter};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let limiter = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(u32::MAX).unwrap()));
    let keys: Vec<std::net::IpAddr> =
        (0..10_000u32).map(|k| std::net::IpAddr::from([10, 0, (k >> 8) as u8, k as u8])).collect();
    let start = std::time::Instant::now();
    for i in 0..n {
        black_box(limiter.check_key(&keys[i % keys.len()]).is_ok());
    }
    println!("{:.1} ns/check", start.elapsed().as_nanos() as f64 / n as f64);
}
