//! Memcached backend cost next to its baseline on the same client and server, in one run:
//! sequential latency of a decision (fixed window, GCRA) against a raw `gets` + `cas`, the
//! commands each decision sends (from the server's own counters), and throughput with 64
//! tasks. Starts its own memcached. Run: `cargo bench -p traffik-memcached --bench compare`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memcache::exp::{AsyncMemcache, Meta};
use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Gcra, Input};
use traffik::{Backend, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;

const SEQUENTIAL: u32 = 10_000;
const ROUNDS: usize = 5;
const TASKS: usize = 64;
const PER_TASK: u32 = 1_000;
const NOW: u64 = 1_700_000_000_000_000;

fn stats(addr: &str) -> (u64, u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"stats\r\n").unwrap();
    let (mut get, mut set) = (0, 0);
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        let f: Vec<&str> = line.split(' ').collect();
        match f.get(1) {
            Some(&"cmd_get") => get = f[2].parse().unwrap(),
            Some(&"cmd_set") => set = f[2].parse().unwrap(),
            _ => {}
        }
    }
    (get, set)
}

async fn raw_gets_cas(client: &AsyncMemcache, key: &str) {
    let r = client.meta().get(key).meta(Meta::NONE.cas()).send().await.unwrap();
    let cas = r.item.cas.unwrap();
    let w = client.meta().set(key, r.value.unwrap()).compare_cas(cas).ttl_raw(60).send().await.unwrap();
    assert!(w.applied());
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let server = traffik_test_support::memcached_server();
    let addr = server.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let backend = MemcachedBackend::builder().server(&addr).namespace("bench").build().unwrap();
        backend.ready_check().await.unwrap();
        let client = AsyncMemcache::connect([addr.clone()]).await.unwrap();
        // Every hit is admitted (and so written): the expensive path.
        let rate = Rate::per_millis(1_000_000_000, 3_600_000).unwrap();

        // Baseline: raw gets + cas on the same client library and server. Rounds alternate
        // baseline and decisions so that drift (CPU frequency, other load) hits all alike;
        // each figure is the median of its rounds.
        client.meta().set("bench:raw", r#"{"window":1,"used":1}"#).ttl_raw(60).send().await.unwrap();
        for _ in 0..1_000 {
            raw_gets_cas(&client, "bench:raw").await;
        }
        let strategies = [("gcra", StrategyHandle::new(Gcra::new())), ("fixed window", StrategyHandle::new(FixedWindow))];
        let mut raw_rounds = Vec::new();
        let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); strategies.len()];
        let mut commands = vec![(0.0, 0.0); strategies.len()];
        let mut now = NOW;
        for _round in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..SEQUENTIAL {
                raw_gets_cas(&client, "bench:raw").await;
            }
            raw_rounds.push(per_op(t.elapsed(), SEQUENTIAL));
            for (i, (name, strategy)) in strategies.iter().enumerate() {
                let key = Key::builder("bench-seq").part(name.as_bytes()).build();
                let (g0, s0) = stats(&addr);
                let t = Instant::now();
                for _ in 0..SEQUENTIAL {
                    now += 1_000;
                    let op = Operation {
                        key: &key,
                        strategy,
                        input: Input { now_us: now, rate, cost: 1 },
                        mode: Mode::Consume,
                    };
                    assert!(backend.decide(op).await.unwrap().is_admitted());
                }
                rounds[i].push(per_op(t.elapsed(), SEQUENTIAL));
                let (g1, s1) = stats(&addr);
                let n = f64::from(SEQUENTIAL);
                commands[i] = ((g1 - g0) as f64 / n, (s1 - s0) as f64 / n);
            }
        }
        let raw = median(&mut raw_rounds);
        println!("raw gets+cas                  {raw:>7.1} µs/op   (2 round trips)");
        for (i, (name, _)) in strategies.iter().enumerate() {
            let us = median(&mut rounds[i]);
            println!(
                "{name:<12} decision (admit) {us:>7.1} µs/op   {:.2}x raw; per decision {:.2} gets (pipelined, one exchange) + {:.2} sets = 2 round trips",
                us / raw,
                commands[i].0,
                commands[i].1
            );
        }

        // Denied hits: one exchange, nothing written.
        let strategy = StrategyHandle::new(FixedWindow);
        let key = Key::builder("bench-deny").build();
        let tight = Rate::per_millis(1, 3_600_000).unwrap();
        let deny = |backend: &MemcachedBackend| {
            let op = Operation {
                key: &key,
                strategy: &strategy,
                input: Input { now_us: NOW, rate: tight, cost: 1 },
                mode: Mode::Consume,
            };
            let b = backend.clone();
            async move { b.decide(op).await.unwrap() }
        };
        deny(&backend).await;
        let t = Instant::now();
        for _ in 0..SEQUENTIAL {
            assert!(!deny(&backend).await.is_admitted());
        }
        let us = per_op(t.elapsed(), SEQUENTIAL);
        println!("fixed window decision (deny)  {us:>7.1} µs/op   {:.2}x raw (1 round trip)", us / raw);

        // Throughput, 64 tasks: distinct keys, then one hot key.
        for hot in [false, true] {
            let backend = Arc::new(backend.clone());
            let t = Instant::now();
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let backend = backend.clone();
                tasks.push(tokio::spawn(async move {
                    let strategy = StrategyHandle::new(Gcra::new());
                    let part = if hot { 255u8 } else { task as u8 };
                    let key = Key::builder("bench-tp").part(&[part]).build();
                    let mut contention = 0u32;
                    for i in 0..u64::from(PER_TASK) {
                        let op = Operation {
                            key: &key,
                            strategy: &strategy,
                            input: Input { now_us: NOW + 10_000_000 + i * 1_000, rate, cost: 1 },
                            mode: Mode::Consume,
                        };
                        if backend.decide(op).await.is_err() {
                            contention += 1;
                        }
                    }
                    contention
                }));
            }
            let mut errors = 0;
            for task in tasks {
                errors += task.await.unwrap();
            }
            let total = TASKS as f64 * f64::from(PER_TASK);
            println!(
                "throughput, {TASKS} tasks, {:<13} {:>8.0} decisions/s ({errors} contention errors)",
                if hot { "one hot key:" } else { "64 keys:" },
                total / t.elapsed().as_secs_f64()
            );
        }
        // Raw baseline throughput with 64 tasks on distinct keys.
        let t = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("bench:raw:{task}");
                client.meta().set(&key, r#"{"tat":1}"#).ttl_raw(60).send().await.unwrap();
                for _ in 0..PER_TASK {
                    raw_gets_cas(&client, &key).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let total = TASKS as f64 * f64::from(PER_TASK);
        println!("throughput, {TASKS} tasks, raw gets+cas: {:>8.0} ops/s", total / t.elapsed().as_secs_f64());
    });
}
