//! The backend's counters (feature `metrics`) against a real redis-server, read back from
//! `metrics-util`'s debugging recorder installed for the test's thread (the runtime is a
//! current-thread one, so every backend call runs under it).

#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input, Step, Strategy, Verdict};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_redis::RedisBackend;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn key(name: &str) -> Key {
    Key::builder(&format!("metrics-{:x}", common::run_id())).part(name.as_bytes()).build()
}

fn op<'a>(key: &'a Key, s: &'a StrategyHandle, now: u64, mode: Mode) -> Operation<'a> {
    let rate = Rate::per_millis(1_000, 1_000).expect("rate");
    Operation { key, strategy: s, input: Input { now_us: now, rate, cost: 1 }, mode }
}

/// The value of the counter `name` with exactly `labels` (0 when never registered).
fn counter(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(k, _, _, v)| {
            let k = k.key();
            let mut have: Vec<_> = k.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            have.sort();
            let mut want: Vec<_> = labels.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
            want.sort();
            match v {
                DebugValue::Counter(n) if k.name() == name && have == want => Some(n),
                _ => None,
            }
        })
        .unwrap_or(0)
}

#[test]
fn a_script_the_server_forgot_is_counted_as_a_reload() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let backend = common::client_clock(&server.url);
    let s = StrategyHandle::from(FixedWindow);
    let k = key("reload");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = rt();
    let reloads = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("first: loads the script");
        });
        let _ = counter(&snapshotter, "traffik_redis_script_reloads_total", &[]);
        rt.block_on(async {
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("cached");
        });
        let cached = counter(&snapshotter, "traffik_redis_script_reloads_total", &[]);
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).expect("flush");
        rt.block_on(async {
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("after the flush");
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("cached again");
        });
        (cached, counter(&snapshotter, "traffik_redis_script_reloads_total", &[]))
    });
    assert_eq!(reloads, (0, 1), "(a cached script, the flushed one)");
}

#[test]
fn a_killed_connection_is_counted_as_one_reconnect() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let backend = common::client_clock(&server.url);
    let s = StrategyHandle::from(FixedWindow);
    let k = key("reconnect");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = rt();
    let reconnects = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("first connection");
        });
        let first = counter(&snapshotter, "traffik_redis_reconnects_total", &[]);
        // Every client but the admin connection.
        let _: u64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut admin).expect("kill");
        rt.block_on(async {
            // The broken connection's call may fail (or be sent again on a new one).
            let _ = backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await;
            backend.decide(op(&k, &s, 1_000_000, Mode::Consume)).await.expect("reconnected");
        });
        (first, counter(&snapshotter, "traffik_redis_reconnects_total", &[]))
    });
    assert_eq!(reconnects, (0, 1), "(the first connection, after the kill)");
}

/// A custom strategy that has "another writer" change the stored state while it decides, so
/// every compare-and-swap loses.
struct Saboteur {
    admin: Mutex<redis::Connection>,
    storage_key: String,
    writes: AtomicU64,
}

impl std::fmt::Debug for Saboteur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Saboteur")
    }
}

impl Strategy for Saboteur {
    type State = u64;
    fn name(&self) -> &str {
        "saboteur"
    }
    fn decide(&self, state: Option<&u64>, _input: &Input) -> Step<u64> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1_000;
        let mut admin = self.admin.lock().expect("admin");
        let _: () =
            redis::cmd("SET").arg(&self.storage_key).arg(n).arg("PX").arg(60_000).query(&mut *admin).expect("set");
        Step::write(Verdict::admit(0, 1_000_000), state.map_or(1, |s| s + 1), 1_000_000)
    }
}

#[test]
fn lost_compare_and_swaps_are_counted_as_retries() {
    let server = common::private_server();
    let backend = RedisBackend::builder().url(&server.url).namespace("cas").cas_attempts(5).build().expect("backend");
    let k = key("contended");
    let saboteur = |storage_key| Saboteur {
        admin: Mutex::new(common::admin(&server.url)),
        storage_key,
        writes: AtomicU64::new(0),
    };
    let storage_key = backend.storage_key(&k, &StrategyHandle::new(saboteur(String::new())));
    let s = StrategyHandle::new(saboteur(storage_key));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = rt();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let e = backend.decide(op(&k, &s, 0, Mode::Consume)).await.expect_err("always loses");
            assert!(matches!(e, BackendError::Contention { attempts: 5, .. }), "{e:?}");
        });
    });
    // Five lost swaps: the first four are tried again, the fifth is the contention error.
    assert_eq!(counter(&snapshotter, "traffik_cas_retries_total", &[("backend", "redis")]), 4);
}
