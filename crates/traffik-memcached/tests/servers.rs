//! Two memcached servers: keys spread over both (each server's `curr_items` counts the keys
//! routed to it), and every key's limit stays exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input, VerdictKind};
use traffik::{Backend, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;
use traffik_test_support::MemcachedServer;

#[test]
fn keys_spread_over_two_servers_and_limits_stay_exact() {
    // Counts items, so it needs servers of its own even when TRAFFIK_MEMCACHED is set.
    let (a, b) = (MemcachedServer::spawn(), MemcachedServer::spawn());
    common::runtime().block_on(async {
        let backend = MemcachedBackend::builder().servers([a.addr.clone(), b.addr.clone()]).build().unwrap();
        let strategy = StrategyHandle::new(FixedWindow);
        let rate = Rate::per_millis(3, 10_000).unwrap();
        let now = 1_750_000_000_000_000;
        let keys: Vec<Key> =
            (0..200).map(|i| Key::builder("spread").part(format!("client-{i}").as_bytes()).build()).collect();
        let mut expected_on_a = 0;
        for key in &keys {
            let mut admitted = 0;
            for _ in 0..5 {
                let op = Operation {
                    key,
                    strategy: &strategy,
                    input: Input { now_us: now, rate, cost: 1 },
                    mode: Mode::Consume,
                };
                if backend.decide(op).await.unwrap().kind == VerdictKind::Admit {
                    admitted += 1;
                }
            }
            assert_eq!(admitted, 3, "{key:?}");
            if backend.server_for(key, &strategy) == a.addr {
                expected_on_a += 1;
            }
        }
        // One state item per key plus one version key per server.
        let (on_a, on_b) = (common::stat(&a.addr, "curr_items"), common::stat(&b.addr, "curr_items"));
        assert_eq!(on_a + on_b, 200 + 2);
        assert_eq!(on_a, expected_on_a + 1);
        assert!(on_a > 50 && on_b > 50, "keys are not spread: {on_a} / {on_b}");
    });
}
