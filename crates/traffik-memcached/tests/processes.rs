//! Accuracy across processes: 4 OS processes x 64 tasks hit one key per strategy at one frozen
//! `now`. Exact strategies admit exactly their capacity (and the queueing one delays exactly
//! its queue); contention errors are counted separately and must not be needed
//! (`traffik_property_tests::processes`). Then the same for a group of two (a fixed window of 50
//! and a token bucket of 30): exactly 30 admitted, and the fixed window charged exactly 30
//! times once every compensation is done.
//!
//! A `harness = false` test: without `TRAFFIK_MC_WORKER` it is the coordinator, which starts
//! memcached, runs this same binary four times as workers and checks the totals; the workers
//! wait on stdin so that all four start hammering together.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use traffik::backend::{GroupOperation, Mode, Operation};
use traffik::strategy::{FixedWindow, Input, TokenBucket, Verdict};
use traffik::{Backend, BackendError, Key, Rate, SharedBackend, StrategyHandle};
use traffik_memcached::MemcachedBackend;
use traffik_property_tests::processes::{Counts, Exactness, check_totals, coordinate, report, work};

fn plan() -> Exactness {
    Exactness { rate: Rate::per_millis(50, 1_000).unwrap(), ..Exactness::default() }
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
        work(&plan(), Arc::new(backend.clone()) as SharedBackend, run).await;
        let plan = plan();
        let mut tasks = Vec::new();
        for _ in 0..plan.tasks {
            let backend = backend.clone();
            let members = group_members(run);
            tasks.push(tokio::spawn(async move {
                let ops: Vec<Operation<'_>> = members
                    .iter()
                    .map(|(key, strategy, rate)| Operation {
                        key,
                        strategy,
                        input: Input { now_us: plan.now_us, rate: *rate, cost: 1 },
                        mode: Mode::Consume,
                    })
                    .collect();
                let mut c: Counts = [0; 4];
                for _ in 0..plan.hits {
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
        let mut total: Counts = [0; 4];
        for t in tasks {
            total.iter_mut().zip(t.await.unwrap()).for_each(|(t, n)| *t += n);
        }
        report("group", total);
        report("refunds", [backend.group_refunds(), 0, 0, 0]);
    });
}

/// The group's members: keys, strategies and rates.
fn group_members(run: &str) -> Vec<(Key, StrategyHandle, Rate)> {
    vec![
        (Key::builder(&format!("proc-{run}-group-fw")).build(), FixedWindow.into(), plan().rate),
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
    let plan = plan();
    let totals = coordinate(&plan, || {
        let mut worker = Command::new(&exe);
        worker.env("TRAFFIK_MC_WORKER", format!("{}|{ns}|{run}", server.addr));
        worker
    })
    .unwrap();
    let mut failures = Vec::new();
    if let Err(suites) = check_totals(&plan, &totals, |_| false) {
        failures.push(suites);
    }
    let [admitted, _, denied, contention] = totals.get("group").copied().expect("no result for the group");
    let refunds = totals.get("refunds").map_or(0, |r| r[0]);
    println!(
        "group                    admitted {admitted:>3} (capacity 30), denied {denied}, contention {contention}, members refunded {refunds}"
    );
    assert_eq!(admitted + denied + contention, plan.total_hits(), "group: every hit accounted for");
    if admitted > 30 {
        failures.push(format!("the group over-admitted: {admitted}"));
    }
    if contention == 0 && admitted != 30 {
        failures.push(format!("the group admitted {admitted}, want 30"));
    }
    if contention > 0 {
        failures.push(format!("the group: {contention} contention errors despite a generous retry budget"));
    }
    // Every hit the group refused was refunded where it had been charged.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = MemcachedBackend::builder().server(&server.addr).namespace(&ns).build().unwrap();
    let members = group_members(&run);
    let (key, strategy, rate) = &members[0];
    let op = Operation { key, strategy, input: Input { now_us: plan.now_us, rate: *rate, cost: 1 }, mode: Mode::Peek };
    let left = rt.block_on(backend.decide(op)).unwrap();
    if left.remaining != 50 - admitted - 1 {
        failures.push(format!("the fixed window has {} left after {admitted} group admissions", left.remaining));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    println!("processes: ok");
}
