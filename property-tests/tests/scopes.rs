//! Deferred quota scopes against the model, on the in-memory backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use traffik::{InMemoryBackend, SharedBackend};
use traffik_property_tests::{SuiteConfig, check_scopes};

#[test]
fn scopes_charge_all_or_nothing_on_the_throttles_own_state_in_memory() {
    check_scopes(|| Arc::new(InMemoryBackend::new()) as SharedBackend, &SuiteConfig::thorough(), true);
    // One shard: every key of a scope in the same shard.
    check_scopes(
        || Arc::new(InMemoryBackend::builder().shards(1).build()) as SharedBackend,
        &SuiteConfig::quick(),
        true,
    );
}
