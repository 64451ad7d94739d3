//! Behaviour against a real redis-server: round trips, TTLs, hostile identities, outages,
//! script cache loss, server time, peeks, constructors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use traffik::backend::{Mode, Operation};
use traffik::strategy::{
    FixedWindow, Input, LeakyBucketWithQueue, SlidingWindowCounter, SlidingWindowLog, Step, Strategy, TokenBucket,
    Verdict, VerdictKind,
};
use traffik::{Backend, BackendError, Identity, Key, OnError, Outcome, Rate, RequestView, StrategyHandle, Throttle};
use traffik_property_tests::builtin_suites;
use traffik_redis::RedisBackend;
use traffik_test_support::redis_server;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn op<'a>(key: &'a Key, s: &'a StrategyHandle, now: u64, rate: Rate, cost: u64, mode: Mode) -> Operation<'a> {
    Operation { key, strategy: s, input: Input { now_us: now, rate, cost }, mode }
}

fn key(name: &str) -> Key {
    Key::builder(&format!("srv-{:x}", common::run_id())).part(name.as_bytes()).build()
}

fn commandstats(c: &mut redis::Connection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[test]
fn exactly_one_script_call_per_decision_and_per_stat() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend = common::client_clock(&server.url);
    let rate = Rate::per_millis(5, 1_000).expect("rate");
    let builtins: Vec<_> = builtin_suites().into_iter().filter(|s| s.strategy.builtin().is_some()).collect();
    assert_eq!(builtins.len(), 17);
    rt.block_on(async {
        // Load every script once (a fresh server answers the first EVALSHA with NOSCRIPT).
        for s in &builtins {
            backend.decide(op(&key("warm"), &s.strategy, 1, rate, 1, Mode::Peek)).await.expect("warm");
        }
    });
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).expect("resetstat");
    let mut expected = 0u64;
    let mut writes = 0u64;
    rt.block_on(async {
        for (i, s) in builtins.iter().enumerate() {
            let k = key(&format!("rt-{i}"));
            for step in 0..12u64 {
                let now = 1_700_000_000_000_000 + step * 37_000;
                if backend.decide(op(&k, &s.strategy, now, rate, 1, Mode::Consume)).await.expect("hit").is_admitted() {
                    writes += 1;
                }
                backend.decide(op(&k, &s.strategy, now, rate, 2, Mode::Peek)).await.expect("peek");
                backend.stat(op(&k, &s.strategy, now, rate, 1, Mode::Peek)).await.expect("stat");
                backend.decide(op(&k, &s.strategy, now, rate, 99, Mode::Consume)).await.expect("never");
                expected += 4;
            }
        }
    });
    let stats = commandstats(&mut admin);
    let calls = |name: &str| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    // Commandstats also count the commands a script runs: every strategy script runs exactly
    // one GET, and one SET per admitted hit. So any GET or SET sent by the client would show.
    assert_eq!(calls("evalsha"), expected, "{stats:?}");
    assert_eq!(calls("get"), expected, "a GET outside the scripts: {stats:?}");
    assert_eq!(calls("set"), writes, "a SET outside the scripts: {stats:?}");
    let others: Vec<_> = stats
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "evalsha" | "get" | "set" | "info" | "config|resetstat"))
        .collect();
    assert!(others.is_empty(), "commands other than EVALSHA were sent: {others:?}");
}

/// A custom strategy that never expires on its own (ttl u64::MAX): the backend must still set
/// a (clamped) TTL.
#[derive(Debug, Clone)]
struct Lifetime;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Used(u64);

impl Strategy for Lifetime {
    type State = Used;
    fn name(&self) -> &str {
        "lifetime"
    }
    fn decide(&self, state: Option<&Used>, input: &Input) -> Step<Used> {
        let limit = input.rate.limit();
        if input.cost > limit {
            return Step::unchanged(Verdict::never());
        }
        let used = state.map_or(0, |s| s.0);
        if used + input.cost > limit {
            return Step::unchanged(Verdict::deny(limit - used, u64::MAX, u64::MAX));
        }
        let used = used + input.cost;
        Step::write(Verdict::admit(limit - used, u64::MAX), Used(used), u64::MAX)
    }
}

#[test]
fn every_key_has_a_ttl_in_both_clock_modes() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    // Kept ten minutes at least, so no key expires between the hits and the listing below
    // (a window that ends a few milliseconds after a hit would otherwise race the test).
    let server_clock = RedisBackend::builder()
        .url(&server.url)
        .namespace("srvclock")
        .min_ttl(Duration::from_secs(600))
        .build()
        .expect("backend");
    let client_clock = common::client_clock(&server.url);
    let rate = Rate::per_millis(3, 60_000).expect("rate");
    let mut strategies: Vec<StrategyHandle> = builtin_suites().into_iter().map(|s| s.strategy).collect();
    strategies.push(Lifetime.into());
    rt.block_on(async {
        for (i, s) in strategies.iter().enumerate() {
            for b in [&server_clock, &client_clock] {
                for n in 0..3u64 {
                    let k = key(&format!("ttl-{i}-{n}"));
                    for hit in 0..6u64 {
                        b.decide(op(&k, s, 1_700_000_000_000_000 + hit, rate, 1 + hit % 2, Mode::Consume))
                            .await
                            .expect("hit");
                    }
                }
            }
        }
    });
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin).expect("keys");
    assert!(keys.len() >= strategies.len() * 6, "{} keys", keys.len());
    let seen = common::assert_every_key_expires(&mut admin);
    assert_eq!(seen, keys.len());
}

#[test]
fn hostile_identities_work_through_a_throttle() {
    let server = redis_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let ns = format!("hostile-{:x}", common::run_id());
    let backend = RedisBackend::builder().url(&server.url).namespace(ns.as_str()).build().expect("backend");
    let identities = [
        Identity::named("{"),
        Identity::named("}"),
        Identity::named("{tag}"),
        Identity::named("a b"),
        Identity::named("line\nbreak\r\0"),
        Identity::named("x".repeat(10_000)),
        Identity::Bytes(vec![0xff, 0xfe, 0x00, b'{', b' ', b'}']),
        Identity::Bytes(vec![0x80; 10_000]),
    ];
    rt.block_on(async {
        for (i, id) in identities.iter().enumerate() {
            for strategy in [StrategyHandle::from(FixedWindow), SlidingWindowLog.into(), TokenBucket::new().into()] {
                let id = id.clone();
                let throttle = Throttle::builder()
                    .uid("hostile")
                    .rate("2/min")
                    .backend(backend.clone())
                    .strategy(strategy)
                    .identifier(move |_: &RequestView<'_>| id.clone())
                    .build()
                    .expect("throttle");
                let req = RequestView::empty();
                let outcomes: Vec<Outcome> = {
                    let mut v = Vec::new();
                    for _ in 0..3 {
                        v.push(throttle.hit(&req).await.expect("hit").outcome);
                    }
                    v
                };
                assert_eq!(outcomes, vec![Outcome::Allowed, Outcome::Allowed, Outcome::Throttled], "identity {i}");
                let stat = throttle.stat(&req).await.expect("stat").into_limited().expect("limited");
                assert_eq!(stat.remaining, 0, "identity {i}");
            }
        }
    });
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:*")).query(&mut admin).expect("keys");
    assert_eq!(keys.len(), identities.len() * 3);
    for k in &keys {
        assert_eq!(k.matches('{').count(), 1, "{k}");
        assert_eq!(k.matches('}').count(), 1, "{k}");
        assert!(k.len() < 250 && !k.contains(' ') && !k.chars().any(char::is_control), "{k}");
    }
}

fn assert_outage(e: &BackendError) {
    assert!(
        matches!(e, BackendError::Connection { .. } | BackendError::Timeout { .. }),
        "expected a typed connection/timeout error, got {e:?}"
    );
    assert!(e.is_transient());
}

#[test]
fn a_stopped_server_is_a_typed_error_quickly_and_a_restarted_one_serves_again() {
    for pooled in [false, true] {
        // This test stops and restarts its server, so it always runs its own (even when
        // TRAFFIK_REDIS_URL names a shared one).
        let port = traffik_test_support::free_port();
        let mut server = common::start_redis_on(port);
        let url = format!("redis://127.0.0.1:{port}/");
        let rt = rt();
        let mut builder = RedisBackend::builder()
            .url(&url)
            .use_client_clock(true)
            .connection_timeout(Duration::from_millis(500))
            .command_timeout(Duration::from_millis(500));
        if pooled {
            builder = builder.pooled(4);
        }
        let backend = builder.build().expect("backend");
        let s = StrategyHandle::from(FixedWindow);
        let rate = Rate::per_millis(1_000, 1_000).expect("rate");
        let k = key("outage");
        rt.block_on(async {
            assert!(backend.decide(op(&k, &s, 1, rate, 1, Mode::Consume)).await.expect("up").is_admitted());
        });
        server.stop();
        rt.block_on(async {
            for _ in 0..3 {
                let started = Instant::now();
                let e = backend.decide(op(&k, &s, 2, rate, 1, Mode::Consume)).await.expect_err("server is down");
                assert_outage(&e);
                // Bounded by the configured timeouts (500 ms each), not hanging.
                assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
                assert_outage(&backend.ready().await.expect_err("not ready"));
            }
        });
        let _restarted = common::start_redis_on(port);
        rt.block_on(async {
            let mut ok = false;
            for _ in 0..20 {
                if let Ok(v) = backend.decide(op(&k, &s, 3, rate, 1, Mode::Consume)).await {
                    // Fresh server: empty state and empty script cache (NOSCRIPT fallback).
                    assert_eq!(v.remaining, 999);
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(ok, "backend did not recover after the restart (pooled: {pooled})");
            backend.ready().await.expect("ready again");
        });
    }
}

/// The observed defect: after a restart on the same port, the first decision on each old
/// connection failed with `broken pipe` (a false 429 under the default policy; with
/// `pooled(4)`, four of them). A command sent on a connection that turns out to be dead is sent
/// once more on a fresh connection, so a restart costs no decision.
#[test]
fn a_restart_on_the_same_port_costs_no_decision() {
    for pooled in [false, true] {
        let mut server = common::private_server();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut builder = RedisBackend::builder().url(&server.url).use_client_clock(true);
        if pooled {
            builder = builder.pooled(4);
        }
        let backend = Arc::new(builder.build().expect("backend"));
        let s = StrategyHandle::from(FixedWindow);
        let rate = Rate::per_millis(1_000, 1_000).expect("rate");
        // Eight decisions at once: every connection of the pool is opened and used.
        let burst = |now: u64| {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let (backend, s) = (Arc::clone(&backend), s.clone());
                    tokio::spawn(async move {
                        let k = key(&format!("restart-{pooled}-{i}"));
                        backend.decide(op(&k, &s, now, rate, 1, Mode::Consume)).await
                    })
                })
                .collect();
            async move {
                let mut results = Vec::new();
                for t in tasks {
                    results.push(t.await.expect("task"));
                }
                results
            }
        };
        rt.block_on(async {
            for r in burst(1).await {
                assert!(r.expect("up").is_admitted());
            }
        });
        server.guard.stop();
        let _restarted = common::start_redis_on(server.port);
        rt.block_on(async {
            for r in burst(2).await {
                let v = r.unwrap_or_else(|e| panic!("a decision failed after the restart (pooled: {pooled}): {e}"));
                // The restarted server is empty: each key starts over.
                assert_eq!(v.remaining, 999);
            }
        });
    }
}

#[test]
fn a_backend_that_never_connected_reports_a_connection_error() {
    let port = traffik_test_support::free_port();
    let backend = RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{port}/"))
        .connection_timeout(Duration::from_millis(300))
        .build()
        .expect("backend");
    rt().block_on(async {
        assert_outage(&backend.ready().await.expect_err("nothing listens"));
        let s = StrategyHandle::from(FixedWindow);
        let e = backend.decide(op(&key("x"), &s, 1, Rate::per_millis(1, 1000).expect("rate"), 1, Mode::Consume)).await;
        assert_outage(&e.expect_err("nothing listens"));
    });
}

#[test]
fn script_flush_is_survived_with_an_eval_fallback() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend = common::client_clock(&server.url);
    let s = StrategyHandle::from(SlidingWindowCounter);
    let rate = Rate::per_millis(3, 1_000).expect("rate");
    let k = key("flush");
    rt.block_on(async {
        assert!(backend.decide(op(&k, &s, 1_000_000, rate, 1, Mode::Consume)).await.expect("1").is_admitted());
    });
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).expect("flush");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).expect("resetstat");
    rt.block_on(async {
        let v = backend.decide(op(&k, &s, 1_000_000, rate, 1, Mode::Consume)).await.expect("after flush");
        assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 1));
        let v = backend.decide(op(&k, &s, 1_000_000, rate, 1, Mode::Consume)).await.expect("cached again");
        assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 0));
    });
    let stats = commandstats(&mut admin);
    let calls = |name: &str| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    // The first EVALSHA meets NOSCRIPT and is answered by one EVAL; the next one is cached.
    assert_eq!(calls("eval"), 1, "{stats:?}");
    assert_eq!(calls("evalsha"), 2, "{stats:?}");
}

#[test]
fn server_time_is_used_unless_the_client_clock_is_asked_for() {
    let server = redis_server();
    let rt = rt();
    let backend = RedisBackend::builder().url(&server.url).namespace("time").build().expect("backend");
    let s = StrategyHandle::from(FixedWindow);
    // Windows are aligned to multiples of the period since the epoch. With the longest
    // period a rate may have (3660 days) boundaries are ten years apart, so the three hits
    // below do not straddle one however slow the machine is.
    let period_ms = 3660 * 86_400_000;
    let rate = Rate::per_millis(3, period_ms).expect("rate");
    let k = key("time");
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as u64;
    rt.block_on(async {
        // `now_us` 0 is ignored: the server's TIME decides the window.
        for left in [2, 1, 0] {
            let v = backend.decide(op(&k, &s, 0, rate, 1, Mode::Consume)).await.expect("hit");
            assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, left));
        }
        let (v, meta) = backend.stat(op(&k, &s, 0, rate, 1, Mode::Peek)).await.expect("stat");
        assert_eq!(v.kind, VerdictKind::Deny);
        assert!(v.wait_us <= period_ms * 1_000);
        let start = meta["window_start_us"].as_u64().expect("window start");
        assert!(start > 0 && start <= wall && wall - start < period_ms * 1_000, "window start {start} vs wall {wall}");
        assert_eq!(meta["used"], 3);
        // A queued leaky bucket on server time: delays are spaced by the interval.
        let q = StrategyHandle::from(LeakyBucketWithQueue::new(2));
        let kinds: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..6 {
                v.push(
                    backend
                        .decide(op(&key("q"), &q, 0, Rate::per_millis(2, 3_600_000).expect("rate"), 1, Mode::Consume))
                        .await
                        .expect("q")
                        .kind,
                );
            }
            v
        };
        use VerdictKind::*;
        assert_eq!(kinds, vec![Admit, Admit, Delay, Delay, Deny, Deny]);
    });
}

#[test]
fn peeks_stats_denials_and_never_write_nothing() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend = common::client_clock(&server.url);
    let rate = Rate::per_millis(2, 1_000).expect("rate");
    rt.block_on(async {
        for (i, suite) in builtin_suites().iter().enumerate() {
            let k = key(&format!("peek-{i}"));
            backend.decide(op(&k, &suite.strategy, 5, rate, 1, Mode::Peek)).await.expect("peek");
            backend.stat(op(&k, &suite.strategy, 5, rate, 1, Mode::Peek)).await.expect("stat");
            let v = backend.decide(op(&k, &suite.strategy, 5, rate, 1_000, Mode::Consume)).await.expect("never");
            assert_eq!(v.kind, VerdictKind::Never, "{}", suite.name);
        }
    });
    let n: u64 = redis::cmd("DBSIZE").query(&mut admin).expect("dbsize");
    assert_eq!(n, 0, "a peek, stat or impossible hit wrote a key");
}

#[test]
fn every_constructor_serves_decisions_and_close_and_policy_behave() {
    let server = redis_server();
    let rt = rt();
    let url = server.url.clone();
    let s = StrategyHandle::from(FixedWindow);
    let rate = Rate::per_millis(10, 1_000).expect("rate");
    rt.block_on(async {
        let client = redis::Client::open(url.as_str()).expect("client");
        let conn = client.get_multiplexed_async_connection().await.expect("conn");
        let manager = redis::aio::ConnectionManager::new(client.clone()).await.expect("manager");
        let pool = traffik_redis::bb8::Pool::builder()
            .test_on_check_out(false)
            .build(traffik_redis::bb8_redis::RedisConnectionManager::new(url.as_str()).expect("manager"))
            .await
            .expect("pool");
        let f_client = client.clone();
        let backends = [
            RedisBackend::new(url.as_str()).expect("url"),
            RedisBackend::builder().url(url.as_str()).pooled(2).build().expect("pooled"),
            RedisBackend::builder().connection(conn).build().expect("connection"),
            RedisBackend::builder().connection_manager(manager).build().expect("manager"),
            RedisBackend::builder().pool(pool).build().expect("pool"),
            RedisBackend::builder()
                .factory(move || {
                    let c = f_client.clone();
                    async move { c.get_multiplexed_async_connection().await }
                })
                .build()
                .expect("factory"),
        ];
        for (i, b) in backends.iter().enumerate() {
            b.ready().await.expect("ready");
            let k = key(&format!("ctor-{i}"));
            let v = b.decide(op(&k, &s, 0, rate, 1, Mode::Consume)).await.expect("decide");
            assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 9), "constructor {i}");
            let (v, _) = b.stat(op(&k, &s, 0, rate, 1, Mode::Peek)).await.expect("stat");
            assert_eq!(v.remaining, 8, "constructor {i}");
            b.reset().await.expect("reset");
            let (v, _) = b.stat(op(&k, &s, 0, rate, 1, Mode::Peek)).await.expect("stat");
            assert_eq!(v.remaining, 9, "reset, constructor {i}");
        }
        let b = &backends[0];
        assert_eq!(b.kind(), "redis");
        assert_eq!(b.namespace(), "traffik");
        assert_eq!(b.on_error(), None);
        let with_policy = RedisBackend::builder().url(url.as_str()).on_error(OnError::Allow).build().expect("b");
        assert_eq!(with_policy.on_error(), Some(OnError::Allow));
        b.close().await.expect("close");
        let e = b.decide(op(&key("closed"), &s, 0, rate, 1, Mode::Consume)).await.expect_err("closed");
        assert!(matches!(e, BackendError::Closed { .. }), "{e:?}");
    });
}

#[test]
fn reset_deletes_only_this_namespace() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let _: () = redis::cmd("SET").arg("other:{x}:fw").arg("1").query(&mut admin).expect("set");
    let rt = rt();
    let a = Arc::new(RedisBackend::builder().url(&server.url).namespace("a*").build().expect("a"));
    let ab = RedisBackend::builder().url(&server.url).namespace("ab").build().expect("ab");
    let s = StrategyHandle::from(TokenBucket::new());
    // Ten an hour: each key lives for minutes, so the one that must survive the reset is still
    // there when the test looks, however slow the machine (at 10/s it lived 100 ms).
    let rate = Rate::per_millis(10, 3_600_000).expect("rate");
    rt.block_on(async {
        for i in 0..2500u32 {
            let k = key(&format!("r{i}"));
            a.decide(op(&k, &s, 0, rate, 1, Mode::Consume)).await.expect("a");
        }
        ab.decide(op(&key("keep"), &s, 0, rate, 1, Mode::Consume)).await.expect("ab");
        a.reset().await.expect("reset");
    });
    let mut left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin).expect("keys");
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left[0].starts_with("ab:") && left[1] == "other:{x}:fw", "{left:?}");
}

/// A custom strategy that, while deciding, has "another writer" change the stored state, so
/// every compare-and-swap loses.
struct Saboteur {
    admin: std::sync::Mutex<redis::Connection>,
    storage_key: String,
    writes: std::sync::atomic::AtomicU64,
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
        let n = self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1_000;
        let mut admin = self.admin.lock().expect("admin");
        let _: () =
            redis::cmd("SET").arg(&self.storage_key).arg(n).arg("PX").arg(60_000).query(&mut *admin).expect("set");
        Step::write(Verdict::admit(0, 1_000_000), state.map_or(1, |s| s + 1), 1_000_000)
    }
}

#[test]
fn lost_compare_and_swaps_are_retried_then_reported_as_contention() {
    let server = redis_server();
    let rt = rt();
    let backend = RedisBackend::builder().url(&server.url).namespace("cas").cas_attempts(5).build().expect("backend");
    let k = key("contended");
    // The storage key does not depend on the strategy's state, so compute it with a stand-in.
    let probe = StrategyHandle::new(Saboteur {
        admin: std::sync::Mutex::new(common::admin(&server.url)),
        storage_key: String::new(),
        writes: Default::default(),
    });
    let storage_key = backend.storage_key(&k, &probe);
    let s = StrategyHandle::new(Saboteur {
        admin: std::sync::Mutex::new(common::admin(&server.url)),
        storage_key,
        writes: Default::default(),
    });
    let rate = Rate::per_millis(10, 1_000).expect("rate");
    rt.block_on(async {
        let e = backend.decide(op(&k, &s, 0, rate, 1, Mode::Consume)).await.expect_err("always loses");
        assert!(matches!(e, BackendError::Contention { attempts: 5, .. }), "{e:?}");
        assert!(e.is_transient());
        // A peek needs no swap.
        assert!(backend.decide(op(&k, &s, 0, rate, 1, Mode::Peek)).await.expect("peek").is_admitted());
    });
}

/// The observed defect: a pool checkout that timed out was reported as "redis backend did not
/// answer within 1s" while the server was answering. It is its own error, which says so.
#[test]
fn a_pool_checkout_timeout_says_the_pool_was_busy() {
    let server = redis_server();
    let rt = rt();
    rt.block_on(async {
        let manager = bb8_redis::RedisConnectionManager::new(server.url.as_str()).expect("manager");
        let pool = bb8::Pool::builder()
            .max_size(1)
            .test_on_check_out(false)
            .connection_timeout(Duration::from_millis(200))
            .build(manager)
            .await
            .expect("pool");
        let backend = RedisBackend::builder().pool(pool.clone()).build().expect("backend");
        let s = StrategyHandle::from(FixedWindow);
        let rate = Rate::per_millis(10, 1_000).expect("rate");
        let k = key("busy-pool");
        assert!(backend.decide(op(&k, &s, 1, rate, 1, Mode::Consume)).await.expect("free").is_admitted());
        // The only connection is taken (and never given back while the decision waits).
        let held = pool.get().await.expect("checkout");
        let e = backend.decide(op(&k, &s, 2, rate, 1, Mode::Consume)).await.expect_err("no connection is free");
        assert!(matches!(e, BackendError::PoolExhausted { .. }), "{e:?}");
        assert!(e.to_string().contains("no pooled connection"), "{e}");
        assert!(e.is_transient());
        drop(held);
        assert!(backend.decide(op(&k, &s, 3, rate, 1, Mode::Consume)).await.expect("free again").is_admitted());
    });
}
