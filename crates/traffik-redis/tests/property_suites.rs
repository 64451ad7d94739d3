//! The core's property-test suites, unchanged, against a real redis-server (client clock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use traffik_property_tests::{
    SuiteConfig, check_backend, check_concurrency, check_group_concurrency, check_groups, check_priorities,
    check_rate_changes,
};
use traffik_test_support::redis_server;

#[test]
fn every_strategy_stays_within_its_bound_on_a_multiplexed_connection() {
    let server = redis_server();
    let cfg = SuiteConfig { cases: 96, max_steps: 60 };
    check_backend(|| common::shared(common::client_clock(&server.url)), &cfg).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_strategy_stays_within_its_bound_on_a_bb8_pool() {
    let server = redis_server();
    check_backend(|| common::shared(common::client_clock_pooled(&server.url, 4)), &SuiteConfig::quick())
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sixty_four_tasks_on_one_key_admit_exactly_the_capacity_multiplexed() {
    let server = redis_server();
    check_concurrency(|| common::shared(common::client_clock(&server.url)), 64);
}

#[test]
fn sixty_four_tasks_on_one_key_admit_exactly_the_capacity_pooled() {
    let server = redis_server();
    check_concurrency(|| common::shared(common::client_clock_pooled(&server.url, 8)), 64);
}

#[test]
fn rate_changes_through_a_throttle_never_strand_a_client_on_redis() {
    let server = redis_server();
    check_rate_changes(|| common::shared(common::client_clock(&server.url)));
}

#[test]
fn groups_decide_as_one_in_one_script_on_redis() {
    let server = redis_server();
    check_groups(
        || common::shared(common::client_clock(&server.url)),
        &SuiteConfig { cases: 96, max_steps: 40 },
        false,
    );
}

#[test]
fn sixty_four_tasks_on_one_group_admit_exactly_its_tightest_capacity_on_redis() {
    let server = redis_server();
    check_group_concurrency(|| common::shared(common::client_clock(&server.url)), 64);
}

#[test]
fn stat_snapshots_match_the_in_memory_backend_on_redis() {
    let server = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = common::shared(common::client_clock(&server.url));
    let uid = format!("stats-{:x}", common::run_id());
    rt.block_on(traffik_property_tests::check_stats_match_memory(backend, &uid)).unwrap();
}

#[test]
fn priorities_share_one_window_and_keep_every_reserve_on_redis() {
    let server = redis_server();
    check_priorities(|| common::shared(common::client_clock(&server.url)), &SuiteConfig { cases: 64, max_steps: 40 });
}

#[test]
fn a_hit_refunded_through_a_throttle_leaves_no_trace_on_redis() {
    let server = redis_server();
    traffik_property_tests::check_backend_refunds(|| common::shared(common::client_clock(&server.url)), 300);
}
