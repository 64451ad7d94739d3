//! Backend semantics on a real server: peeks and stats never write; `reset` starts every key
//! afresh, in this and in any other backend instance; the strategy's TTL reaches memcached
//! rounded up (relative up to 30 days, absolute beyond, never for "forever"); corrupt state is
//! a typed error; under a tiny retry budget contention is reported, never over-admitted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memcache::exp::{AsyncMemcache, Meta};
use serde::{Deserialize, Serialize};
use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Gcra, Input, SlidingWindowLog, Step, Strategy, Verdict, VerdictKind};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_memcached::MemcachedBackend;

const NOW: u64 = 1_700_000_000_000_000;

fn rate(limit: u32) -> Rate {
    Rate::per_millis(limit, 60_000).unwrap()
}

async fn decide(
    b: &MemcachedBackend,
    key: &Key,
    s: &StrategyHandle,
    limit: u32,
    mode: Mode,
) -> Result<Verdict, BackendError> {
    b.decide(Operation { key, strategy: s, input: Input { now_us: NOW, rate: rate(limit), cost: 1 }, mode }).await
}

fn backend(addr: &str, ns: &str) -> MemcachedBackend {
    MemcachedBackend::builder().server(addr).namespace(ns).build().unwrap()
}

#[test]
fn peek_and_stat_never_write() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, &common::unique("peek"));
        let raw = AsyncMemcache::connect([server.addr.clone()]).await.unwrap();
        let key = Key::builder("peek").part(b"k").build();
        for s in
            [StrategyHandle::new(FixedWindow), StrategyHandle::new(SlidingWindowLog), StrategyHandle::new(Gcra::new())]
        {
            let stored = b.current_storage_key(&key, &s).await.unwrap();
            for _ in 0..5 {
                let v = decide(&b, &key, &s, 2, Mode::Peek).await.unwrap();
                assert_eq!(v.kind, VerdictKind::Admit);
            }
            let op = Operation {
                key: &key,
                strategy: &s,
                input: Input { now_us: NOW, rate: rate(2), cost: 1 },
                mode: Mode::Consume,
            };
            let (v, meta) = b.stat(op).await.unwrap();
            assert_eq!(v.kind, VerdictKind::Admit);
            assert!(!meta.is_empty());
            let miss = raw.meta().get(&stored).send().await.unwrap();
            assert!(!miss.hit(), "peek or stat wrote {stored}");
            // A consuming hit does write, and a stat then reports it.
            decide(&b, &key, &s, 2, Mode::Consume).await.unwrap();
            assert!(raw.meta().get(&stored).send().await.unwrap().hit());
            let (_, meta) = b.stat(op).await.unwrap();
            assert!(!meta.is_empty());
        }
    });
}

#[test]
fn reset_starts_every_key_afresh_for_every_instance() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let ns = common::unique("reset");
        let (one, two) = (backend(&server.addr, &ns), backend(&server.addr, &ns));
        let other_ns = backend(&server.addr, &common::unique("other"));
        let s = StrategyHandle::new(FixedWindow);
        let keys: Vec<Key> = (0..5).map(|i| Key::builder("reset").part(&[i]).build()).collect();
        for b in [&one, &other_ns] {
            for key in &keys {
                for _ in 0..2 {
                    assert!(decide(b, key, &s, 2, Mode::Consume).await.unwrap().is_admitted());
                }
                assert_eq!(decide(b, key, &s, 2, Mode::Consume).await.unwrap().kind, VerdictKind::Deny);
            }
        }
        // `two` shares the state (same namespace) and has cached the version.
        assert_eq!(decide(&two, &keys[0], &s, 2, Mode::Peek).await.unwrap().kind, VerdictKind::Deny);
        one.reset().await.unwrap();
        for key in &keys {
            // The other instance sees the reset at once: the version is read with every state.
            assert!(decide(&two, key, &s, 2, Mode::Consume).await.unwrap().is_admitted());
            assert!(decide(&one, key, &s, 2, Mode::Consume).await.unwrap().is_admitted());
            assert_eq!(decide(&two, key, &s, 2, Mode::Consume).await.unwrap().kind, VerdictKind::Deny);
            // Another namespace is untouched.
            assert_eq!(decide(&other_ns, key, &s, 2, Mode::Peek).await.unwrap().kind, VerdictKind::Deny);
        }
    });
}

#[test]
fn a_flushed_server_starts_afresh() {
    // Flushes, so it needs a server of its own even when TRAFFIK_MEMCACHED is set.
    let server = traffik_test_support::MemcachedServer::spawn();
    common::runtime().block_on(async {
        let b = backend(&server.addr, &common::unique("flush"));
        let s = StrategyHandle::new(FixedWindow);
        let key = Key::builder("flush").part(b"k").build();
        assert!(decide(&b, &key, &s, 1, Mode::Consume).await.unwrap().is_admitted());
        assert_eq!(decide(&b, &key, &s, 1, Mode::Consume).await.unwrap().kind, VerdictKind::Deny);
        // The version key is gone with everything else: a new version is created.
        common::command(&server.addr, "flush_all");
        assert!(decide(&b, &key, &s, 1, Mode::Consume).await.unwrap().is_admitted());
        assert_eq!(decide(&b, &key, &s, 1, Mode::Consume).await.unwrap().kind, VerdictKind::Deny);
    });
}

/// Admits everything and keeps its state for a configurable time to live.
#[derive(Debug)]
struct KeepFor(Arc<AtomicU64>);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hits(u64);

impl Strategy for KeepFor {
    type State = Hits;
    fn name(&self) -> &str {
        "keep_for"
    }
    fn decide(&self, state: Option<&Hits>, _input: &Input) -> Step<Hits> {
        let hits = state.map_or(0, |h| h.0) + 1;
        Step::write(Verdict::admit(1, 1), Hits(hits), self.0.load(Ordering::SeqCst))
    }
}

#[test]
fn ttls_reach_memcached_rounded_up_relative_or_absolute() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, &common::unique("ttl"));
        let raw = AsyncMemcache::connect([server.addr.clone()]).await.unwrap();
        let ttl = Arc::new(AtomicU64::new(0));
        let s = StrategyHandle::new(KeepFor(ttl.clone()));
        let day = 86_400u64;
        // (strategy TTL in µs, expected remaining seconds as memcached reports them). The
        // rounding of short TTLs is unit-tested (`ttl.rs`); a 3-second item read back here
        // could expire first on a busy machine.
        let cases: [(u64, i64); 4] = [
            (59_500_000, 62), // 59.5 s -> 60 + 2
            (29 * day * 1_000_000, (29 * day + 2) as i64),
            (40 * day * 1_000_000, (40 * day + 2) as i64), // absolute timestamp on the wire
            (u64::MAX, -1),                                // past 2106: never expires
        ];
        for (i, (ttl_us, expected)) in cases.into_iter().enumerate() {
            ttl.store(ttl_us, Ordering::SeqCst);
            let key = Key::builder("ttl").part(&[i as u8]).build();
            assert!(decide(&b, &key, &s, 1, Mode::Consume).await.unwrap().is_admitted());
            let stored = b.current_storage_key(&key, &s).await.unwrap();
            let got = raw.meta().get(&stored).meta(Meta::NONE.ttl()).send().await.unwrap();
            assert!(got.hit(), "{stored} expired at once (ttl {ttl_us} µs)");
            let remaining = got.item.ttl.unwrap();
            if expected < 0 {
                assert_eq!(remaining, -1);
            } else {
                // A busy machine may take a few seconds between the write and the read. An
                // absolute expiry (beyond 30 days) is converted by memcached against its own
                // clock, which it advances once a second and which may lag the wall clock by
                // up to two seconds: it can report slightly more than was asked for.
                let slack = if ttl_us > 30 * day * 1_000_000 { 2 } else { 0 };
                assert!(
                    (expected - 30..=expected + slack).contains(&remaining),
                    "ttl {ttl_us} µs: {remaining} s, want {expected}"
                );
            }
        }
    });
}

#[test]
fn corrupt_state_is_a_typed_error() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let b = backend(&server.addr, &common::unique("corrupt"));
        let raw = AsyncMemcache::connect([server.addr.clone()]).await.unwrap();
        let s = StrategyHandle::new(FixedWindow);
        let key = Key::builder("corrupt").part(b"k").build();
        let stored = b.current_storage_key(&key, &s).await.unwrap();
        raw.meta().set(&stored, "not json").ttl_raw(60).send().await.unwrap();
        let err = decide(&b, &key, &s, 2, Mode::Consume).await.unwrap_err();
        assert!(matches!(err, BackendError::State(_)), "{err:?}");
    });
}

#[test]
fn contention_is_reported_never_over_admitted() {
    let server = common::memcached_server();
    let rt = common::runtime();
    let (admitted, denied, contention) = rt.block_on(async {
        let b = MemcachedBackend::builder()
            .server(&server.addr)
            .namespace(common::unique("cont"))
            .cas_attempts(1)
            .build()
            .unwrap();
        let key = Key::builder("cont").part(b"k").build();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (b, key) = (b.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let s = StrategyHandle::new(FixedWindow);
                let mut counts = (0u32, 0u32, 0u32);
                for _ in 0..8 {
                    match decide(&b, &key, &s, 100, Mode::Consume).await {
                        Ok(v) if v.is_admitted() => counts.0 += 1,
                        Ok(_) => counts.1 += 1,
                        Err(BackendError::Contention { attempts: 1, .. }) => counts.2 += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                counts
            }));
        }
        let mut total = (0, 0, 0);
        for t in tasks {
            let c = t.await.unwrap();
            total = (total.0 + c.0, total.1 + c.1, total.2 + c.2);
        }
        total
    });
    assert_eq!(admitted + denied + contention, 256);
    assert!(admitted <= 100, "over-admitted: {admitted}");
    assert!(contention > 0, "one attempt per decision under 32 tasks should lose some races");
}
