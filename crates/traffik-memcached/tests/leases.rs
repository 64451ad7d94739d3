//! Concurrency limits on a real memcached (compare-and-swap): exactly N in flight under 64
//! clients, cancelled and panicking handlers release, a group of a rate and a concurrency
//! limit, and a killed process's slots come back after the lease time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use traffik::strategy::{Concurrency, FixedWindow};
use traffik::{Throttle, ThrottleGroup};
use traffik_memcached::MemcachedBackend;
use traffik_property_tests::leases;

const CHILD: &str = "TRAFFIK_LEASE_CHILD";
const KILLED: &str = "a_killed_processs_slots_come_back_after_the_lease_time";
/// Generous: asking again until admitted stops at the first success.
const BOUND: Duration = Duration::from_secs(120);

fn backend(addr: &str, namespace: &str) -> MemcachedBackend {
    MemcachedBackend::builder().server(addr).namespace(namespace).cas_attempts(10_000).build().expect("backend")
}

fn conc(backend: MemcachedBackend, uid: &str, rate: &str) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).backend(backend).strategy(Concurrency).build().expect("throttle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_in_flight_under_64_concurrent_clients() {
    let server = common::memcached_server();
    let t = conc(backend(&server.addr, &common::unique("n")), "uploads", "5/30s");
    leases::exactly_n_in_flight(&t, 5).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_aborted_and_panicking_handlers_release() {
    let server = common::memcached_server();
    let t = conc(backend(&server.addr, &common::unique("c")), "jobs", "1/60s");
    leases::cancelled_requests_release(&t, BOUND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_rate_and_a_concurrency_limit() {
    let server = common::memcached_server();
    let b = backend(&server.addr, &common::unique("g"));
    let rate = Throttle::builder().uid("per-minute").rate("100/min").backend(b.clone()).strategy(FixedWindow).build();
    let group = ThrottleGroup::new("api", [rate.unwrap(), conc(b, "in-flight", "2/30s")]).unwrap();
    leases::group_of_rate_and_concurrency(&group, BOUND).await.unwrap();
}

/// A child process takes both slots and is killed; they come back once their lease (6 s,
/// renewed every 2 s while the child lived) expires.
#[test]
fn a_killed_processs_slots_come_back_after_the_lease_time() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (addr, ns) = spec.split_once('|').expect("addr|namespace");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(leases::hold_until_killed(&conc(backend(addr, ns), "killed", "2/6s"), 2));
    }
    let server = common::memcached_server();
    let ns = common::unique("k");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([KILLED, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}|{ns}", server.addr))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let t = conc(backend(&server.addr, &ns), "killed", "2/6s");
        leases::killed_holder_comes_back(&t, child, BOUND).await.unwrap();
    });
}
