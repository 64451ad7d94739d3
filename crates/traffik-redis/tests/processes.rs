//! Accuracy across processes: four OS processes (this test binary, re-spawned in a worker role)
//! with 64 tasks each hit one key per strategy at one frozen client-clock instant; the admitted
//! total must equal the strategy's capacity exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use traffik::backend::{Mode, Operation};
use traffik::strategy::{Input, VerdictKind};
use traffik::{Backend, Key, Rate};
use traffik_property_tests::builtin_suites;
use traffik_test_support::redis_server;

const WORKER_URL: &str = "TRAFFIK_REDIS_TEST_WORKER_URL";
const WORKER_RUN: &str = "TRAFFIK_REDIS_TEST_WORKER_RUN";
const TEST_NAME: &str = "four_processes_of_sixty_four_tasks_admit_exactly_the_capacity";
const PROCESSES: usize = 4;
const TASKS: usize = 64;
const HITS_PER_TASK: usize = 4;

fn rate() -> Rate {
    Rate::per_millis(200, 1_000).expect("rate")
}

fn worker(url: &str, run: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let backend = Arc::new(common::client_clock(url));
    let mut admin = common::admin(url);
    rt.block_on(async { backend.ready().await.expect("ready") });
    // Start gate: report ready, then wait until the parent opens the gate.
    let _: i64 = redis::cmd("INCR").arg(format!("gate:{run}:ready")).query(&mut admin).expect("incr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis::cmd("EXISTS").arg(format!("gate:{run}:open")).query::<bool>(&mut admin).expect("exists") {
        assert!(Instant::now() < deadline, "gate never opened");
        std::thread::sleep(Duration::from_millis(2));
    }
    let now = 1_700_000_000_123_456u64;
    for suite in builtin_suites() {
        let key = Key::builder(&format!("proc-{run}-{}", suite.name)).build();
        let (admitted, delayed, errors) = rt.block_on(async {
            let mut handles = Vec::new();
            for _ in 0..TASKS {
                let backend = Arc::clone(&backend);
                let key = key.clone();
                let strategy = suite.strategy.clone();
                handles.push(tokio::spawn(async move {
                    let (mut a, mut d, mut e) = (0u64, 0u64, 0u64);
                    for _ in 0..HITS_PER_TASK {
                        let op = Operation {
                            key: &key,
                            strategy: &strategy,
                            input: Input { now_us: now, rate: rate(), cost: 1 },
                            mode: Mode::Consume,
                        };
                        match backend.decide(op).await {
                            Ok(v) if v.kind == VerdictKind::Admit => a += 1,
                            Ok(v) if v.kind == VerdictKind::Delay => d += 1,
                            Ok(_) => {}
                            Err(err) => {
                                eprintln!("worker error: {err}");
                                e += 1;
                            }
                        }
                    }
                    (a, d, e)
                }));
            }
            let mut total = (0, 0, 0);
            for h in handles {
                let (a, d, e) = h.await.expect("task");
                total = (total.0 + a, total.1 + d, total.2 + e);
            }
            total
        });
        println!("RESULT {} {admitted} {delayed} {errors}", suite.name);
    }
}

#[test]
fn four_processes_of_sixty_four_tasks_admit_exactly_the_capacity() {
    if let (Ok(url), Ok(run)) = (std::env::var(WORKER_URL), std::env::var(WORKER_RUN)) {
        worker(&url, &run);
        return;
    }
    let server = redis_server();
    let mut admin = common::admin(&server.url);
    let run = format!("{:x}", u64::from(std::process::id()) ^ (u64::from(traffik_test_support::free_port()) * 7919));
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(WORKER_URL, &server.url)
                .env(WORKER_RUN, &run)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: Option<usize> = redis::cmd("GET").arg(format!("gate:{run}:ready")).query(&mut admin).expect("get");
        if ready == Some(PROCESSES) {
            break;
        }
        assert!(Instant::now() < deadline, "workers did not get ready: {ready:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = redis::cmd("SET").arg(format!("gate:{run}:open")).arg(1).query(&mut admin).expect("open gate");

    let mut totals: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for child in children {
        let out = child.wait_with_output().expect("worker output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let mut lines = 0;
        for line in stdout.lines().filter_map(|l| l.find("RESULT ").map(|i| &l[i + 7..])) {
            let f: Vec<&str> = line.split(' ').collect();
            let n = |i: usize| f[i].parse::<u64>().expect("number");
            let t = totals.entry(f[0].to_owned()).or_default();
            *t = (t.0 + n(1), t.1 + n(2), t.2 + n(3));
            lines += 1;
        }
        assert_eq!(lines, builtin_suites().len(), "worker output: {stdout}");
    }
    let total_hits = (PROCESSES * TASKS * HITS_PER_TASK) as u64;
    for suite in builtin_suites() {
        let (admitted, delayed, errors) = totals[&suite.name];
        let capacity = suite.full_quota(&rate());
        let queue = u64::from(suite.queue());
        assert!(capacity + queue < total_hits);
        assert_eq!(
            (admitted, delayed),
            (capacity, queue),
            "suite {}: {PROCESSES} processes x {TASKS} tasks x {HITS_PER_TASK} hits ({errors} errors)",
            suite.name
        );
        if suite.strategy.builtin().is_some() {
            assert_eq!(errors, 0, "suite {}", suite.name);
        }
    }
}
