//! The core's property-test suites, unchanged, against a real memcached: every built-in
//! strategy (and the suites' custom one, which has no native path anywhere) stays within its
//! bound and agrees with the reference models; 64 tasks on one key admit exactly the capacity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use traffik::SharedBackend;
use traffik_memcached::MemcachedBackend;
use traffik_property_tests::{
    SuiteConfig, check_backend, check_concurrency, check_group_concurrency, check_groups, check_priorities,
    check_rate_changes,
};

fn backend(addr: &str) -> SharedBackend {
    Arc::new(MemcachedBackend::builder().server(addr).namespace(common::unique("prop")).build().unwrap())
}

#[test]
fn every_strategy_stays_within_its_bound_on_memcached() {
    let server = common::memcached_server();
    // Decisions take a loopback round trip or two, so more than the `quick` preset fits.
    check_backend(|| backend(&server.addr), &SuiteConfig { cases: 64, max_steps: 60 })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sixty_four_tasks_on_one_key_admit_exactly_the_capacity() {
    let server = common::memcached_server();
    check_concurrency(|| backend(&server.addr), 64);
}

#[test]
fn rate_changes_through_a_throttle_never_strand_a_client_on_memcached() {
    let server = common::memcached_server();
    check_rate_changes(|| backend(&server.addr));
}

#[test]
fn groups_decide_as_one_on_memcached() {
    let server = common::memcached_server();
    check_groups(|| backend(&server.addr), &SuiteConfig { cases: 48, max_steps: 40 }, true);
}

#[test]
fn sixty_four_tasks_on_one_group_admit_exactly_its_tightest_capacity_on_memcached() {
    let server = common::memcached_server();
    check_group_concurrency(|| backend(&server.addr), 64);
}

#[test]
fn stat_snapshots_match_the_in_memory_backend_on_memcached() {
    let server = common::memcached_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(traffik_property_tests::check_stats_match_memory(backend(&server.addr), "stats")).unwrap();
}

#[test]
fn priorities_share_one_window_and_keep_every_reserve_on_memcached() {
    let server = common::memcached_server();
    check_priorities(|| backend(&server.addr), &SuiteConfig { cases: 48, max_steps: 40 });
}

#[test]
fn a_hit_refunded_through_a_throttle_leaves_no_trace_on_memcached() {
    let server = common::memcached_server();
    traffik_property_tests::check_backend_refunds(|| backend(&server.addr), 200);
}
