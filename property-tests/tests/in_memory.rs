//! Every strategy suite against the in-memory backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use traffik::{InMemoryBackend, SharedBackend};
use traffik_property_tests::{
    SuiteConfig, builtin_suites, check_backend_refunds, check_concurrency, check_group_concurrency, check_groups,
    check_priorities, check_rate_changes, check_refunds, check_suite,
};

fn memory() -> SharedBackend {
    Arc::new(InMemoryBackend::new())
}

#[test]
fn every_strategy_stays_within_its_bound_on_the_in_memory_backend() {
    for suite in builtin_suites() {
        check_suite(memory, &suite, &SuiteConfig::thorough()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn sixty_four_tasks_on_one_key_admit_exactly_the_capacity() {
    check_concurrency(memory, 64);
}

#[test]
fn tiny_shards_and_caps_do_not_change_decisions() {
    // One shard and a cap far above the keys used: same suites, different storage layout.
    let make = || Arc::new(InMemoryBackend::builder().shards(1).max_keys(1 << 20).build()) as SharedBackend;
    for suite in builtin_suites() {
        check_suite(make, &suite, &SuiteConfig::quick()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn rate_changes_through_a_throttle_never_strand_a_client_in_memory() {
    check_rate_changes(memory);
}

#[test]
fn groups_decide_as_one_on_the_in_memory_backend() {
    check_groups(memory, &SuiteConfig::thorough(), true);
    // One shard: every member's key in the same shard.
    check_groups(
        || Arc::new(InMemoryBackend::builder().shards(1).build()) as SharedBackend,
        &SuiteConfig::quick(),
        true,
    );
}

#[test]
fn sixty_four_tasks_on_one_group_admit_exactly_its_tightest_capacity() {
    check_group_concurrency(memory, 64);
}

#[test]
fn a_refunded_hit_leaves_no_trace_on_any_built_in_strategy() {
    check_refunds(2_000);
}

#[test]
fn a_hit_refunded_through_a_throttle_leaves_no_trace_in_memory() {
    check_backend_refunds(memory, 1_000);
}

/// A suite can fail, and says so as a value: a fixed window claimed to hold the sliding-window
/// bound admits up to twice its limit across a window boundary, which the suite finds.
#[test]
fn a_strategy_that_breaks_its_claimed_bound_fails_its_suite() {
    use traffik::StrategyHandle;
    use traffik::strategy::FixedWindow;
    use traffik_property_tests::{Bound, Suite};

    let suite = Suite::new("fixed_window_claiming_sliding", StrategyHandle::new(FixedWindow), Bound::SlidingWindows);
    let failure = check_suite(memory, &suite, &SuiteConfig::thorough()).expect_err("the boundary burst is found");
    assert_eq!(failure.suite, "fixed_window_claiming_sliding");
    assert_eq!(failure.backend, "memory");
    assert!(failure.to_string().starts_with("suite `fixed_window_claiming_sliding` failed on backend `memory`"));
}

#[test]
fn priorities_share_one_window_and_keep_every_reserve_in_memory() {
    check_priorities(memory, &SuiteConfig::thorough());
}
