//! The suites against a backend written only against the documented contract
//! ([`ContractBackend`]): what a user's own backend gets from the core without native paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use traffik::SharedBackend;
use traffik_property_tests::contract::ContractBackend;
use traffik_property_tests::{SuiteConfig, check_backend, check_backend_refunds};

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
