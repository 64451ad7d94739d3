//! Latency of decisions under contention on one key: 4 OS processes (this binary, re-spawned as
//! workers) x 64 tasks each hit one key at once, every hit an admission (a limit no run
//! reaches), so every decision is a compare-and-swap race. Prints the latency distribution of
//! the decisions (p50, p90, p99, p99.9, max) and the contention errors, per strategy and round,
//! to compare backoff settings before and after a change. Not a test: nothing is asserted.
//! Run: `cargo bench -p traffik-memcached --bench contention`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input, TokenBucket};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;

const PROCESSES: usize = 4;
const TASKS: usize = 64;
const HITS: usize = 8;
const ROUNDS: usize = 3;
const NOW: u64 = 1_700_000_000_123_456;
const WORKER: &str = "TRAFFIK_MC_CONTENTION_WORKER";

fn strategies() -> Vec<(&'static str, StrategyHandle)> {
    vec![("fixed_window", FixedWindow.into()), ("token_bucket", TokenBucket::new().into())]
}

fn main() {
    match std::env::var(WORKER) {
        Ok(spec) => worker(&spec),
        Err(_) => coordinator(),
    }
}

/// `addr|key prefix`: runs every strategy once when told to on stdin, printing
/// `LAT <strategy> <micros>...` and `ERR <strategy> <contention errors>`.
fn worker(spec: &str) {
    let (addr, prefix) = spec.split_once('|').unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let backend = MemcachedBackend::builder().server(addr).namespace("contention").build().unwrap();
        backend.ready_check().await.unwrap();
        for (name, strategy) in strategies() {
            println!("READY");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let key = Key::builder(&format!("{prefix}-{name}")).build();
            let rate = Rate::per_millis(1_000_000, 3_600_000).unwrap();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (backend, key, strategy) = (backend.clone(), key.clone(), strategy.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(HITS);
                        let mut errors = 0u64;
                        for _ in 0..HITS {
                            let op = Operation {
                                key: &key,
                                strategy: &strategy,
                                input: Input { now_us: NOW, rate, cost: 1 },
                                mode: Mode::Consume,
                            };
                            let started = Instant::now();
                            match backend.decide(op).await {
                                Ok(_) => {}
                                Err(BackendError::Contention { .. }) => errors += 1,
                                Err(e) => panic!("{e}"),
                            }
                            lat.push(started.elapsed().as_micros() as u64);
                        }
                        (lat, errors)
                    })
                })
                .collect();
            let (mut all, mut errors) = (Vec::new(), 0);
            for t in tasks {
                let (lat, e) = t.await.unwrap();
                all.extend(lat);
                errors += e;
            }
            let text: Vec<String> = all.iter().map(u64::to_string).collect();
            println!("LAT {name} {}", text.join(" "));
            println!("ERR {name} {errors}");
        }
    });
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn coordinator() {
    let server = traffik_test_support::MemcachedServer::spawn();
    let exe = std::env::current_exe().unwrap();
    println!(
        "memcached contention: {PROCESSES} processes x {TASKS} tasks x {HITS} admitted hits on one key, \
         {ROUNDS} rounds; latency of each decision in ms"
    );
    println!(
        "{:<14} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}",
        "strategy", "round", "p50", "p90", "p99", "p99.9", "max", "contention"
    );
    for round in 0..ROUNDS {
        let prefix = format!("r{round}-{}", std::process::id());
        let mut children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                Command::new(&exe)
                    .env(WORKER, format!("{}|{prefix}", server.addr))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn worker")
            })
            .collect();
        let mut readers: Vec<_> = children.iter_mut().map(|c| BufReader::new(c.stdout.take().unwrap())).collect();
        for (name, _) in strategies() {
            for r in &mut readers {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert_eq!(line.trim(), "READY", "worker not ready");
            }
            for c in &mut children {
                c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
            }
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            for r in &mut readers {
                for _ in 0..2 {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    let mut f = line.split_whitespace();
                    match f.next() {
                        Some("LAT") => {
                            f.next();
                            lat.extend(f.map(|v| v.parse::<u64>().unwrap()));
                        }
                        Some("ERR") => {
                            f.next();
                            errors += f.next().unwrap().parse::<u64>().unwrap();
                        }
                        other => panic!("unexpected worker output {other:?}"),
                    }
                }
            }
            lat.sort_unstable();
            let ms = |us: u64| us as f64 / 1000.0;
            println!(
                "{name:<14} {round:>5} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {errors:>10}",
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.9)),
                ms(percentile(&lat, 0.99)),
                ms(percentile(&lat, 0.999)),
                ms(*lat.last().unwrap()),
            );
        }
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a worker failed");
        }
    }
}
