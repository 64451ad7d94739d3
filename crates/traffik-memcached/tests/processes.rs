//! Accuracy across processes: 4 OS processes x 64 tasks hit one key per strategy at one frozen
//! `now`. Exact strategies admit exactly their capacity (and the queueing one delays exactly
//! its queue); contention errors are counted separately and must not be needed. Then the same
//! for a group of two (a fixed window of 50 and a token bucket of 30): exactly 30 admitted, and
//! the fixed window charged exactly 30 times once every compensation is done.
//!
//! A `harness = false` test: without `TRAFFIK_MC_WORKER` it is the coordinator, which starts
//! memcached, runs this same binary four times as workers and checks the totals; the workers
//! wait on stdin so that all four start hammering together.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use traffik::backend::GroupOperation;
use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input, TokenBucket, Verdict, VerdictKind};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;
use traffik_property_tests::builtin_suites;

const PROCESSES: usize = 4;
const TASKS: usize = 64;
const HITS: usize = 4;
const NOW: u64 = 1_700_000_000_123_456;

fn rate() -> Rate {
    Rate::per_millis(50, 1_000).unwrap()
}

fn main() {
    if let Ok(spec) = std::env::var("TRAFFIK_MC_WORKER") {
        worker(&spec);
    } else {
        coordinator();
    }
}

/// `addr|namespace|run`
fn worker(spec: &str) {
    let mut parts = spec.split('|');
    let (addr, ns, run) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let backend = MemcachedBackend::builder().server(addr).namespace(ns).cas_attempts(100_000).build().unwrap();
        backend.ready_check().await.unwrap();
        println!("READY");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        for suite in builtin_suites() {
            let key = Key::builder(&format!("proc-{run}-{}", suite.name)).build();
            let mut tasks = Vec::new();
            for _ in 0..TASKS {
                let (backend, key, strategy) = (backend.clone(), key.clone(), suite.strategy.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = [0u64; 4]; // admitted, delayed, denied, contention
                    for _ in 0..HITS {
                        let op = Operation {
                            key: &key,
                            strategy: &strategy,
                            input: Input { now_us: NOW, rate: rate(), cost: 1 },
                            mode: Mode::Consume,
                        };
                        match backend.decide(op).await {
                            Ok(v) if v.kind == VerdictKind::Admit => c[0] += 1,
                            Ok(v) if v.kind == VerdictKind::Delay => c[1] += 1,
                            Ok(_) => c[2] += 1,
                            Err(BackendError::Contention { .. }) => c[3] += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    c
                }));
            }
            let mut total = [0u64; 4];
            for t in tasks {
                let c = t.await.unwrap();
                for i in 0..4 {
                    total[i] += c[i];
                }
            }
            println!("RESULT {} {} {} {} {}", suite.name, total[0], total[1], total[2], total[3]);
        }
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let backend = backend.clone();
            let members = group_members(run);
            tasks.push(tokio::spawn(async move {
                let ops: Vec<Operation<'_>> = members
                    .iter()
                    .map(|(key, strategy, rate)| Operation {
                        key,
                        strategy,
                        input: Input { now_us: NOW, rate: *rate, cost: 1 },
                        mode: Mode::Consume,
                    })
                    .collect();
                let mut c = [0u64; 4];
                for _ in 0..HITS {
                    match backend.decide_group(GroupOperation { tag: "g", ops: &ops }).await {
                        Ok(v) if v.iter().all(Verdict::is_admitted) => c[0] += 1,
                        Ok(_) => c[2] += 1,
                        Err(BackendError::Contention { .. }) => c[3] += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                c
            }));
        }
        let mut total = [0u64; 4];
        for t in tasks {
            let c = t.await.unwrap();
            for i in 0..4 {
                total[i] += c[i];
            }
        }
        println!("RESULT group {} {} {} {}", total[0], total[1], total[2], total[3]);
        println!("REFUNDS {}", backend.group_refunds());
    });
}

/// The group's members: keys, strategies and rates.
fn group_members(run: &str) -> Vec<(Key, StrategyHandle, Rate)> {
    vec![
        (Key::builder(&format!("proc-{run}-group-fw")).build(), FixedWindow.into(), rate()),
        (
            Key::builder(&format!("proc-{run}-group-tb")).build(),
            TokenBucket::new().into(),
            Rate::per_millis(30, 1_000).unwrap(),
        ),
    ]
}

fn coordinator() {
    let server = common::memcached_server();
    let ns = common::unique("procs");
    let run = common::unique("run");
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env("TRAFFIK_MC_WORKER", format!("{}|{ns}|{run}", server.addr))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut readers: Vec<_> = children.iter_mut().map(|c| BufReader::new(c.stdout.take().unwrap())).collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY", "worker did not get ready");
    }
    for c in &mut children {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut totals: HashMap<String, [u64; 4]> = HashMap::new();
    let mut refunds = 0u64;
    for r in readers {
        for line in r.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("REFUNDS ") {
                refunds += n.parse::<u64>().unwrap();
                continue;
            }
            let mut f = line.split_whitespace();
            if f.next() != Some("RESULT") {
                continue;
            }
            let name = f.next().unwrap().to_owned();
            let t = totals.entry(name).or_default();
            for slot in t.iter_mut() {
                *slot += f.next().unwrap().parse::<u64>().unwrap();
            }
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }
    let all = (PROCESSES * TASKS * HITS) as u64;
    let mut failures = Vec::new();
    for suite in builtin_suites() {
        let [admitted, delayed, denied, contention] =
            totals.get(&suite.name).copied().unwrap_or_else(|| panic!("no result for {}", suite.name));
        let capacity = suite.full_quota(&rate());
        let queue = u64::from(suite.queue());
        println!(
            "{:<24} admitted {admitted:>3} (capacity {capacity}), delayed {delayed} (queue {queue}), denied {denied}, contention {contention}",
            suite.name
        );
        assert_eq!(admitted + delayed + denied + contention, all, "{}: every hit accounted for", suite.name);
        if admitted > capacity || delayed > queue {
            failures.push(format!("{} over-admitted: {admitted}+{delayed}", suite.name));
        }
        if contention == 0 && (admitted, delayed) != (capacity, queue) {
            failures.push(format!("{} admitted {admitted}+{delayed}, want {capacity}+{queue}", suite.name));
        }
        if contention > 0 {
            failures.push(format!("{}: {contention} contention errors despite a generous retry budget", suite.name));
        }
    }
    let [admitted, _, denied, contention] = totals.get("group").copied().expect("no result for the group");
    println!(
        "group                    admitted {admitted:>3} (capacity 30), denied {denied}, contention {contention}, members refunded {refunds}"
    );
    assert_eq!(admitted + denied + contention, all, "group: every hit accounted for");
    if admitted > 30 {
        failures.push(format!("the group over-admitted: {admitted}"));
    }
    if contention == 0 && admitted != 30 {
        failures.push(format!("the group admitted {admitted}, want 30"));
    }
    // Every hit the group refused was refunded where it had been charged.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = MemcachedBackend::builder().server(&server.addr).namespace(&ns).build().unwrap();
    let members = group_members(&run);
    let (key, strategy, rate) = &members[0];
    let op = Operation { key, strategy, input: Input { now_us: NOW, rate: *rate, cost: 1 }, mode: Mode::Peek };
    let left = rt.block_on(backend.decide(op)).unwrap();
    if left.remaining != 50 - admitted - 1 {
        failures.push(format!("the fixed window has {} left after {admitted} group admissions", left.remaining));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    println!("processes: ok ({PROCESSES} processes x {TASKS} tasks x {HITS} hits per strategy)");
}
