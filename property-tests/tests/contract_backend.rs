//! The suites against a backend written only against the documented contract
//! ([`ContractBackend`]): what a user's own backend gets from the core without native paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use traffik::SharedBackend;
use traffik_property_tests::contract::ContractBackend;
use traffik_property_tests::{
    SuiteConfig, check_backend, check_backend_refunds, check_concurrency, check_group_concurrency, check_groups,
    check_scopes,
};

fn contract() -> SharedBackend {
    Arc::new(ContractBackend::new())
}

#[test]
fn every_strategy_stays_within_its_bound_on_a_contract_backend() {
    check_backend(contract, &SuiteConfig::quick()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_hit_refunded_through_a_throttle_leaves_no_trace_on_a_contract_backend() {
    check_backend_refunds(contract, 500);
}

#[test]
fn groups_decide_as_one_on_a_contract_backend() {
    check_groups(contract, &SuiteConfig::quick(), true);
}

#[test]
fn sixty_four_tasks_on_one_group_admit_exactly_its_tightest_capacity_on_a_contract_backend() {
    check_group_concurrency(contract, 64);
}

#[test]
fn deferred_scopes_apply_as_one_on_a_contract_backend() {
    check_scopes(contract, &SuiteConfig::quick(), true);
}

#[test]
fn sixty_four_tasks_on_one_key_admit_exactly_the_capacity_on_a_contract_backend() {
    check_concurrency(contract, 64);
}
