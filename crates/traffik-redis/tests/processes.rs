//! Accuracy across processes: four OS processes (this test binary, re-spawned in a worker role)
//! with 64 tasks each hit one key per strategy at one frozen client-clock instant; the admitted
//! total must equal the strategy's capacity exactly (`traffik_property_tests::processes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use traffik::{Backend, SharedBackend};
use traffik_property_tests::processes::{Exactness, check_totals, coordinate, work};
use traffik_test_support::redis_server;

const WORKER: &str = "TRAFFIK_REDIS_TEST_WORKER";
const TEST_NAME: &str = "four_processes_of_sixty_four_tasks_admit_exactly_the_capacity";

/// `url|run`
fn worker(spec: &str) {
    let (url, run) = spec.split_once('|').expect("url|run");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    rt.block_on(async {
        let backend = common::client_clock(url);
        backend.ready().await.expect("ready");
        work(&Exactness::default(), Arc::new(backend) as SharedBackend, run).await;
    });
}

#[test]
fn four_processes_of_sixty_four_tasks_admit_exactly_the_capacity() {
    if let Ok(spec) = std::env::var(WORKER) {
        worker(&spec);
        return;
    }
    let server = redis_server();
    let run = format!("{:x}", u64::from(std::process::id()) ^ (u64::from(traffik_test_support::free_port()) * 7919));
    let exe = std::env::current_exe().expect("test binary");
    let plan = Exactness::default();
    let totals = coordinate(&plan, || {
        let mut worker = Command::new(&exe);
        worker.args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"]);
        worker.env(WORKER, format!("{}|{run}", server.url));
        worker
    })
    .unwrap();
    // Only custom strategies take the compare-and-swap path, which may give up under
    // contention; the built-ins run as one script each and never may.
    check_totals(&plan, &totals, |suite| suite.strategy.builtin().is_none()).unwrap();
}
