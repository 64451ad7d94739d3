//! Fault injection against real redis-server processes: `SIGSTOP`/`SIGCONT`, kill and restart
//! under load, `SCRIPT FLUSH` under load, and a loopback TCP fault proxy (added latency,
//! dropped and reset connections, a half-open peer) between the backend and the server.
//!
//! For every fault: each decision returns within a bound several times the throttle's timeout
//! (never an exact latency); while the server is unreachable the throttle's error policy
//! decides; service comes back within a counted number of requests once the server does (the
//! count is printed, the bound asserted is generous); no server admits more than its limit
//! (every admission of a fixed window carries a distinct `remaining`, so a value seen twice on
//! one server is an over-admission); every key left in Redis has a time to live.
//!
//! Run with `--nocapture` to see the measured figures (`fault-figures:` lines).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use traffik::{Backend, ErrorPolicy, Outcome, Source};
use traffik_property_tests::faults::{BOUND, TIMEOUT, Tally, burst, exhaust, figures, hit, recover, throttle};
use traffik_redis::RedisBackend;
use traffik_test_support::{Fault, FaultProxy};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A backend on `url` with the throttle-sized timeouts and the client's clock.
fn backend(url: &str, pooled: bool) -> RedisBackend {
    backend_with(url, pooled, TIMEOUT)
}

/// The same with another command timeout.
fn backend_with(url: &str, pooled: bool, command_timeout: Duration) -> RedisBackend {
    let mut b = RedisBackend::builder()
        .url(url)
        .namespace("faults")
        .use_client_clock(true)
        .min_ttl(Duration::from_secs(600))
        .connection_timeout(TIMEOUT)
        .command_timeout(command_timeout);
    if pooled {
        b = b.pooled(4);
    }
    b.build().expect("backend")
}

/// Every key on the server has a time to live (see [`common::assert_every_key_expires`]).
fn assert_every_key_expires(url: &str) -> usize {
    common::assert_every_key_expires(&mut common::admin(url))
}

#[test]
fn sigstop_and_sigcont_decisions_stay_bounded_and_service_recovers() {
    for pooled in [false, true] {
        let mut server = common::private_server();
        let rt = rt();
        let backend = backend(&server.url, pooled);
        let limit = 40;
        let t = throttle(&backend, "sigstop", limit, ErrorPolicy::throttle());
        let mut tally = Tally::default();
        let recovered = rt.block_on(async {
            for _ in 0..5 {
                let d = hit(&t, &mut tally).await.expect("up");
                assert_eq!((d.source, d.outcome), (Source::Backend, Outcome::Allowed));
            }
            server.guard.pause();
            let stopped = burst(&t, 4, 3).await;
            // Every decision while the server is stopped comes from the policy (throttle).
            assert_eq!(stopped.policy.get("Throttled").copied(), Some(12), "pooled {pooled}: {stopped:?}");
            assert_eq!(stopped.policy_total(), 12, "{stopped:?}");
            tally.merge(stopped);
            server.guard.resume();
            let n = recover(&t, &mut tally, "SIGCONT").await;
            exhaust(&t, &mut tally, limit).await;
            n
        });
        tally.assert_no_over_admission(limit, 1);
        // Requests sent while the server was stopped may still have run when it resumed
        // (their answers were too late), so the client saw at most the limit.
        assert!(tally.admitted_total() <= u64::from(limit), "{tally:?}");
        assert!(assert_every_key_expires(&server.url) >= 1);
        figures("redis", &format!("SIGSTOP/SIGCONT (pooled {pooled})"), &tally, Some(recovered));
    }
}

#[test]
fn kill_and_restart_under_load_applies_the_policy_and_recovers() {
    let mut server = common::private_server();
    let port = server.port;
    let rt = rt();
    let backend = backend(&server.url, false);
    let limit = 60;
    // Fail open while the server is gone.
    let t = throttle(&backend, "restart", limit, ErrorPolicy::allow());
    let stop = Arc::new(AtomicBool::new(false));
    let decided = Arc::new(AtomicU64::new(0));
    let by_policy = Arc::new(AtomicU64::new(0));
    let (tally, recovered, _restarted) = rt.block_on(async {
        let load: Vec<_> = (0..8)
            .map(|_| {
                let (t, stop, decided, by_policy) =
                    (Arc::clone(&t), Arc::clone(&stop), Arc::clone(&decided), Arc::clone(&by_policy));
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(d) = hit(&t, &mut tally).await {
                            if d.source == Source::ErrorPolicy {
                                // Fail open: the policy lets the request through.
                                assert_eq!(d.outcome, Outcome::Allowed, "{d:?}");
                                by_policy.fetch_add(1, Ordering::Relaxed);
                            }
                            decided.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::task::yield_now().await;
                    }
                    tally
                })
            })
            .collect();
        let wait_for = |counter: Arc<AtomicU64>, at_least: u64| async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while counter.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "the load made no progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        wait_for(Arc::clone(&decided), 20).await;
        server.guard.stop();
        wait_for(Arc::clone(&by_policy), 16).await;
        let restarted = common::start_redis_on(port);
        // The load keeps running; a probe counts the requests until the backend answers.
        let mut probe = Tally::default();
        let n = recover(&t, &mut probe, "restart").await;
        let settled = decided.load(Ordering::Relaxed);
        wait_for(Arc::clone(&decided), settled + 40).await;
        stop.store(true, Ordering::Relaxed);
        let mut tally = probe;
        for l in load {
            tally.merge(l.await.expect("task"));
        }
        exhaust(&t, &mut tally, limit).await;
        assert!(tally.policy.get("Allowed").copied().unwrap_or(0) >= 16, "{tally:?}");
        (tally, n, restarted)
    });
    // Two server lifetimes (the restarted one starts empty): each `remaining` at most twice.
    tally.assert_no_over_admission(limit, 2);
    assert_eq!(tally.errors, 0, "the allow policy never raises");
    assert!(assert_every_key_expires(&format!("redis://127.0.0.1:{port}/")) >= 1);
    figures("redis", "kill + restart under load (8 tasks)", &tally, Some(recovered));
}

#[test]
fn script_flush_under_load_costs_no_decision() {
    let server = common::private_server();
    let rt = rt();
    let backend = backend(&server.url, false);
    let limit = 100;
    let t = throttle(&backend, "flush", limit, ErrorPolicy::raise());
    let url = server.url.clone();
    let tally = rt.block_on(async {
        let load = tokio::spawn({
            let t = Arc::clone(&t);
            async move { burst(&t, 8, 25).await }
        });
        let flusher = tokio::task::spawn_blocking(move || {
            let mut admin = common::admin(&url);
            for _ in 0..10 {
                let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).expect("flush");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        flusher.await.expect("flusher");
        load.await.expect("load")
    });
    // Raise would surface any failure: none, every decision is the backend's.
    assert_eq!((tally.errors, tally.policy_total()), (0, 0), "{tally:?}");
    // 200 hits on a limit of 100: exactly the limit admitted, every `remaining` once.
    assert_eq!(tally.admitted_total(), u64::from(limit), "{tally:?}");
    assert_eq!(tally.backend_throttled, 100);
    tally.assert_no_over_admission(limit, 1);
    assert!(assert_every_key_expires(&server.url) >= 1);
    figures("redis", "SCRIPT FLUSH x10 under load (8 tasks x 25 hits)", &tally, None);
}

fn proxied(server: &common::PrivateServer) -> FaultProxy {
    FaultProxy::start(([127, 0, 0, 1], server.port).into())
}

#[test]
fn latency_below_the_timeout_is_served_and_above_it_the_policy_decides() {
    let server = common::private_server();
    let proxy = proxied(&server);
    let rt = rt();
    let backend = backend(&format!("redis://{}/", proxy.addr()), false);
    let limit = 40;
    let t = throttle(&backend, "latency", limit, ErrorPolicy::throttle());
    let mut tally = Tally::default();
    let recovered = rt.block_on(async {
        // 40 ms each way: about 80 ms a decision, well inside 300 ms.
        proxy.set(Fault::Latency(Duration::from_millis(40)));
        let slow = burst(&t, 4, 3).await;
        assert_eq!((slow.admitted_total(), slow.policy_total(), slow.errors), (12, 0, 0), "{slow:?}");
        tally.merge(slow);
        // 400 ms each way: every decision times out and the policy throttles.
        proxy.set(Fault::Latency(Duration::from_millis(400)));
        let late = burst(&t, 4, 2).await;
        assert_eq!(late.policy.get("Throttled").copied(), Some(8), "{late:?}");
        tally.merge(late);
        proxy.set(Fault::PassThrough);
        let n = recover(&t, &mut tally, "latency removed").await;
        exhaust(&t, &mut tally, limit).await;
        n
    });
    tally.assert_no_over_admission(limit, 1);
    assert!(tally.admitted_total() <= u64::from(limit));
    assert!(assert_every_key_expires(&server.url) >= 1);
    figures("redis", "proxy latency 40 ms then 400 ms per direction", &tally, Some(recovered));
}

#[test]
fn reset_connections_cost_no_decision() {
    for pooled in [false, true] {
        let server = common::private_server();
        let proxy = proxied(&server);
        let rt = rt();
        let backend = backend(&format!("redis://{}/", proxy.addr()), pooled);
        let limit = 40;
        let t = throttle(&backend, "reset", limit, ErrorPolicy::raise());
        let mut tally = Tally::default();
        rt.block_on(async {
            tally.merge(burst(&t, 8, 1).await);
            for _ in 0..3 {
                proxy.reset_connections();
                // The resets reach the client's sockets before its next request.
                tokio::time::sleep(Duration::from_millis(20)).await;
                tally.merge(burst(&t, 4, 2).await);
            }
            exhaust(&t, &mut tally, limit).await;
        });
        // A connection found reset is reopened and the command sent again: no decision lost.
        assert_eq!((tally.errors, tally.policy_total()), (0, 0), "pooled {pooled}: {tally:?}");
        assert_eq!(tally.admitted_total(), u64::from(limit), "pooled {pooled}: {tally:?}");
        tally.assert_no_over_admission(limit, 1);
        assert!(assert_every_key_expires(&server.url) >= 1);
        figures("redis", &format!("proxy resets open connections x3 (pooled {pooled})"), &tally, None);
    }
}

#[test]
fn dropped_connections_apply_the_policy_and_service_recovers() {
    for pooled in [false, true] {
        let server = common::private_server();
        let proxy = proxied(&server);
        let rt = rt();
        let backend = backend(&format!("redis://{}/", proxy.addr()), pooled);
        let limit = 40;
        let t = throttle(&backend, "dropped", limit, ErrorPolicy::allow());
        let mut tally = Tally::default();
        let recovered = rt.block_on(async {
            tally.merge(burst(&t, 2, 2).await);
            proxy.set(Fault::DropNew);
            proxy.reset_connections();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let down = burst(&t, 4, 3).await;
            assert_eq!(down.policy.get("Allowed").copied(), Some(12), "pooled {pooled}: {down:?}");
            tally.merge(down);
            proxy.set(Fault::PassThrough);
            let n = recover(&t, &mut tally, "connections accepted again").await;
            exhaust(&t, &mut tally, limit).await;
            n
        });
        tally.assert_no_over_admission(limit, 1);
        assert!(assert_every_key_expires(&server.url) >= 1);
        figures(
            "redis",
            &format!("proxy drops new + resets open connections (pooled {pooled})"),
            &tally,
            Some(recovered),
        );
    }
}

/// The observed defect: once its peer went half-open, a connection was used forever (every
/// request timed out, nothing reported it broken), so the backend never recovered even after
/// the server was reachable again. With the backend's command timeout longer than the
/// throttle's (the default 1 s against 300 ms), requests are abandoned by the throttle before
/// the client library times out, so no error is ever seen: the backend must notice anyway.
#[test]
fn a_half_open_peer_is_bounded_by_the_timeout_and_service_recovers() {
    for (pooled, command_timeout) in
        [(false, TIMEOUT), (false, Duration::from_secs(1)), (true, TIMEOUT), (true, Duration::from_secs(1))]
    {
        let server = common::private_server();
        let proxy = proxied(&server);
        let rt = rt();
        let backend = backend_with(&format!("redis://{}/", proxy.addr()), pooled, command_timeout);
        let limit = 40;
        let t = throttle(&backend, "half-open", limit, ErrorPolicy::throttle());
        let mut tally = Tally::default();
        let recovered = rt.block_on(async {
            tally.merge(burst(&t, 4, 1).await);
            // Open connections and new ones swallow everything and never answer.
            proxy.set(Fault::HalfOpen);
            let silent = burst(&t, 4, 3).await;
            assert_eq!(silent.policy.get("Throttled").copied(), Some(12), "pooled {pooled}: {silent:?}");
            tally.merge(silent);
            // The server is reachable again, but the half-open connections stay dead: the
            // backend must notice and open fresh ones.
            proxy.set(Fault::PassThrough);
            let n = recover(&t, &mut tally, "half-open peer gone").await;
            exhaust(&t, &mut tally, limit).await;
            n
        });
        tally.assert_no_over_admission(limit, 1);
        assert!(tally.admitted_total() <= u64::from(limit));
        assert!(assert_every_key_expires(&server.url) >= 1);
        figures(
            "redis",
            &format!("proxy half-open peer (pooled {pooled}, command timeout {command_timeout:?})"),
            &tally,
            Some(recovered),
        );
        drop(backend);
    }
}

/// The backend's readiness check is bounded too.
#[test]
fn readiness_against_a_half_open_peer_is_a_typed_error_within_the_bound() {
    let server = common::private_server();
    let proxy = proxied(&server);
    let rt = rt();
    let backend = backend(&format!("redis://{}/", proxy.addr()), false);
    rt.block_on(async {
        backend.ready().await.expect("ready through the proxy");
        proxy.set(Fault::HalfOpen);
        let started = Instant::now();
        let e = tokio::time::timeout(BOUND, backend.ready()).await.expect("bounded").expect_err("no answer");
        assert!(started.elapsed() < BOUND);
        assert!(e.is_transient(), "{e:?}");
    });
}
