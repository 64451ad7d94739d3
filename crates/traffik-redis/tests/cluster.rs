//! A three-master Redis Cluster on loopback: the suites pass, and every key of one decision
//! lives in one slot (checked with `CLUSTER KEYSLOT`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Gcra, Input, SlidingWindowLog};
use traffik::{Backend, Key, Rate, SharedBackend, StrategyHandle};
use traffik_property_tests::{SuiteConfig, check_backend, check_concurrency};
use traffik_redis::RedisBackend;

fn cluster_backend(urls: &[String]) -> RedisBackend {
    RedisBackend::builder()
        .cluster(urls.iter().cloned())
        .namespace("c")
        .use_client_clock(true)
        .min_ttl(Duration::from_secs(600))
        .build()
        .expect("cluster backend")
}

#[test]
fn suites_pass_and_each_decision_stays_in_one_slot_on_a_three_master_cluster() {
    let cluster = common::cluster::redis_cluster();
    let urls = cluster.urls.clone();
    check_backend(|| Arc::new(cluster_backend(&urls)) as SharedBackend, &SuiteConfig::quick())
        .unwrap_or_else(|e| panic!("{e}"));
    check_concurrency(|| Arc::new(cluster_backend(&urls)) as SharedBackend, 64);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let backend = cluster_backend(&urls);
    let rate = Rate::per_millis(5, 1_000).expect("rate");
    let strategies: Vec<StrategyHandle> = vec![FixedWindow.into(), SlidingWindowLog.into(), Gcra::new().into()];
    let mut admin: Vec<redis::Connection> = urls.iter().map(|u| common::admin(u)).collect();
    let mut slots_used = HashMap::new();
    rt.block_on(async {
        backend.reset().await.expect("reset");
        for i in 0..40u32 {
            let key = Key::builder("cluster").part(format!("client-{i}").as_bytes()).build();
            let mut slots = Vec::new();
            for s in &strategies {
                let op = Operation {
                    key: &key,
                    strategy: s,
                    input: Input { now_us: 1_000_000, rate, cost: 1 },
                    mode: Mode::Consume,
                };
                assert!(backend.decide(op).await.expect("decide").is_admitted());
                let storage = backend.storage_key(&key, s);
                let slot: u16 =
                    redis::cmd("CLUSTER").arg("KEYSLOT").arg(&storage).query(&mut admin[0]).expect("keyslot");
                slots.push(slot);
            }
            assert!(slots.windows(2).all(|w| w[0] == w[1]), "keys of {key:?} in slots {slots:?}");
            *slots_used.entry(slots[0]).or_insert(0) += 1;
        }
    });
    assert!(slots_used.len() > 10, "keys should spread over slots: {slots_used:?}");

    // Every master got some keys, all with a TTL, and reset deletes them on every master.
    let count = |admin: &mut Vec<redis::Connection>| -> Vec<usize> {
        admin
            .iter_mut()
            .map(|c| {
                let keys: Vec<String> = redis::cmd("KEYS").arg("c:*").query(c).expect("keys");
                for k in &keys {
                    let ttl: i64 = redis::cmd("PTTL").arg(k).query(c).expect("pttl");
                    // -2: expired since KEYS listed it (fine); -1: no time to live (a bug).
                    assert!(ttl > 0 || ttl == -2, "{k} has no TTL ({ttl})");
                }
                keys.len()
            })
            .collect()
    };
    let per_master = count(&mut admin);
    assert!(per_master.iter().all(|&n| n > 0), "keys per master: {per_master:?}");
    rt.block_on(async { backend.reset().await.expect("reset") });
    assert_eq!(count(&mut admin), vec![0, 0, 0]);
    rt.block_on(async { backend.ready().await.expect("ready") });
}
