//! How a bb8 pool treats waiters: 256 tasks share `pooled(16)` on a local `redis-server` and each
//! makes decisions back to back; prints how many checkouts timed out and the latency quantiles.
//!
//! `cargo run --release -p traffik-redis --example pool_fairness` (starts its own redis-server
//! on a free loopback port, or uses `TRAFFIK_REDIS_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_redis::RedisBackend;

const TASKS: usize = 256;
const PER_TASK: usize = 80;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = traffik_test_support::redis_server();
    let backend = Arc::new(
        RedisBackend::builder().url(&server.url).pooled(16).connection_timeout(Duration::from_secs(1)).build().unwrap(),
    );
    let strategy = StrategyHandle::from(FixedWindow);
    let rate = Rate::per_millis(u32::MAX, 1000).unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (backend, strategy) = (Arc::clone(&backend), strategy.clone());
            tokio::spawn(async move {
                let key = Key::builder("fairness").part(&(t as u64).to_be_bytes()).build();
                let mut latencies = Vec::with_capacity(PER_TASK);
                let mut exhausted = 0u32;
                for _ in 0..PER_TASK {
                    let op = Operation {
                        key: &key,
                        strategy: &strategy,
                        input: Input { now_us: 1, rate, cost: 1 },
                        mode: Mode::Consume,
                    };
                    let at = Instant::now();
                    match backend.decide(op).await {
                        Ok(_) => {}
                        Err(BackendError::PoolExhausted { .. }) => exhausted += 1,
                        Err(e) => panic!("{e}"),
                    }
                    latencies.push(at.elapsed());
                }
                (latencies, exhausted)
            })
        })
        .collect();
    let (mut all, mut exhausted) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        exhausted += e;
    }
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{} decisions by {TASKS} tasks on pooled(16) in {:.1?}: {exhausted} checkouts timed out; latency p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        started.elapsed(),
        q(0.5),
        q(0.99),
        all[all.len() - 1]
    );
}
