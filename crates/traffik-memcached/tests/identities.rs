//! Identities that would break a naive memcached key (spaces, newlines, control bytes,
//! 10 kB, unicode, non-UTF-8 bytes) work through a `Throttle` on this backend, each with its
//! own exact quota; keys that bypass the core's encoding (deserialized) are made valid too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Gcra, Input, VerdictKind};
use traffik::{Backend, Identity, Key, ManualClock, Outcome, Rate, RequestView, StrategyHandle, Throttle};
use traffik_memcached::MemcachedBackend;

fn hostile_identities() -> Vec<(&'static str, Identity)> {
    let mut ten_kb_bytes: Vec<u8> = (0..10_240u32).map(|i| (i % 256) as u8).collect();
    ten_kb_bytes[0] = b' ';
    vec![
        ("spaces", Identity::named("user with spaces")),
        ("newlines", Identity::named("line\r\nbreak\nget evil 0 0 1\r\n")),
        ("control", Identity::named("nul\0tab\tbell\u{7}")),
        ("10kB named", Identity::named("x".repeat(10_240))),
        ("unicode", Identity::named("ユーザー🦀 café")),
        ("non-utf8", Identity::Bytes(vec![0xff, 0xfe, 0x00, b' ', 0x80, b'\n'])),
        ("10kB bytes", Identity::Bytes(ten_kb_bytes)),
        ("empty", Identity::named("")),
    ]
}

#[test]
fn hostile_identities_work_through_a_throttle() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let backend =
            MemcachedBackend::builder().server(&server.addr).namespace(common::unique("ids")).build().unwrap();
        let clock = ManualClock::new(1_700_000_000_000_000);
        for strategy in [
            StrategyHandle::new(FixedWindow),
            StrategyHandle::new(Gcra::with_tolerance(std::time::Duration::from_secs(40))),
        ] {
            let mut throttles = Vec::new();
            for (name, identity) in hostile_identities() {
                let identity = Arc::new(identity);
                let throttle = Throttle::builder()
                    .uid(format!("ids-{}", strategy.name()))
                    .rate(Rate::per_millis(3, 60_000).unwrap())
                    .backend(backend.clone())
                    .strategy(strategy.clone())
                    .identifier(move |_: &RequestView<'_>| (*identity).clone())
                    .clock(clock.clone())
                    .build()
                    .unwrap();
                throttles.push((name, throttle));
            }
            // Interleaved: each identity has its own bucket of exactly 3.
            for round in 0..4 {
                for (name, throttle) in &throttles {
                    let d = throttle.hit(&RequestView::empty()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                    let expected = if round < 3 { Outcome::Allowed } else { Outcome::Throttled };
                    assert_eq!(d.outcome, expected, "{name} round {round} with {}", strategy.name());
                }
            }
        }
    });
}

#[test]
fn keys_that_bypass_the_core_encoding_still_work() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let backend =
            MemcachedBackend::builder().server(&server.addr).namespace(common::unique("raw")).build().unwrap();
        let strategy = StrategyHandle::new(FixedWindow);
        let rate = Rate::per_millis(2, 1_000).unwrap();
        // Text that no key builder produces is refused when a key is deserialized...
        for bad in ["a b", "a\r\nb", "#", "ü", "{x}", &"k".repeat(10_000)] {
            assert!(serde_json::from_value::<Key>(serde_json::Value::from(bad)).is_err(), "{bad:.12}");
        }
        // ...and the longest and oddest valid keys still map to legal memcached keys.
        let long = "k".repeat(1_024);
        let raw = ["a:b:c", long.as_str(), "~%7E!:", "x"];
        let keys: Vec<Key> = raw.iter().map(|r| serde_json::from_value(serde_json::Value::from(*r)).unwrap()).collect();
        for key in &keys {
            let stored = backend.current_storage_key(key, &strategy).await.unwrap();
            assert!(stored.len() <= 250 && stored.bytes().all(|b| b.is_ascii_graphic()), "{stored:?}");
        }
        for round in 0..3 {
            for key in &keys {
                let op = Operation {
                    key,
                    strategy: &strategy,
                    input: Input { now_us: 1_000_000_000_000, rate, cost: 1 },
                    mode: Mode::Consume,
                };
                let v = backend.decide(op).await.unwrap();
                let expected = if round < 2 { VerdictKind::Admit } else { VerdictKind::Deny };
                assert_eq!(v.kind, expected, "{:?} round {round}", &key.as_str()[..key.as_str().len().min(10)]);
            }
        }
    });
}
