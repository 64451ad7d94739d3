//! The backend's compare-and-swap retries counter (feature `metrics`) against a real
//! memcached, read back from `metrics-util`'s debugging recorder installed for the test's
//! thread (the runtime is a current-thread one, so every backend call runs under it).

#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use traffik::backend::{Mode, Operation};
use traffik::strategy::{Input, Step, Strategy, Verdict};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;

/// A custom strategy that, once armed, has "another writer" touch the stored value (an empty
/// `append`, which changes its CAS token) while it decides, so every compare-and-swap loses.
struct Saboteur {
    addr: String,
    storage_key: Arc<Mutex<String>>,
    armed: Arc<AtomicBool>,
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
        if self.armed.load(Ordering::SeqCst) {
            let key = self.storage_key.lock().unwrap().clone();
            let reply = common::command(&self.addr, &format!("append {key} 0 0 0\r\n"));
            assert_eq!(reply, "STORED", "the saboteur's write");
        }
        Step::write(Verdict::admit(0, 1_000_000), state.map_or(1, |s| s + 1), 60_000_000)
    }
}

#[test]
fn lost_compare_and_swaps_are_counted_as_retries() {
    let server = common::memcached_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = MemcachedBackend::builder()
        .server(&server.addr)
        .namespace(common::unique("metrics"))
        .cas_attempts(5)
        .build()
        .unwrap();
    let (storage_key, armed) = (Arc::new(Mutex::new(String::new())), Arc::new(AtomicBool::new(false)));
    let s = StrategyHandle::new(Saboteur {
        addr: server.addr.clone(),
        storage_key: Arc::clone(&storage_key),
        armed: Arc::clone(&armed),
    });
    let key = Key::builder("metrics").part(b"contended").build();
    let rate = Rate::per_millis(1_000, 60_000).unwrap();
    let op = || Operation {
        key: &key,
        strategy: &s,
        input: Input { now_us: 1_000_000, rate, cost: 1 },
        mode: Mode::Consume,
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            // Unarmed: the first write (an `add`) stores the key.
            assert!(backend.decide(op()).await.unwrap().is_admitted());
            *storage_key.lock().unwrap() = backend.current_storage_key(&key, &s).await.unwrap();
            armed.store(true, Ordering::SeqCst);
            let e = backend.decide(op()).await.expect_err("always loses");
            assert!(matches!(e, BackendError::Contention { attempts: 5, .. }), "{e:?}");
        });
    });
    let retries: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| {
            let k = k.key();
            let labels: Vec<_> = k.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            match v {
                DebugValue::Counter(n) if k.name() == "traffik_cas_retries_total" => Some((labels, n)),
                _ => None,
            }
        })
        .collect();
    // Five lost swaps: the first four are tried again, the fifth is the contention error.
    assert_eq!(retries, [(vec!["backend=memcached".to_owned()], 4)]);
}
