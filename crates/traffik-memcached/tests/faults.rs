//! Fault injection against real memcached processes: `SIGSTOP`/`SIGCONT`, kill and restart
//! under load, and a loopback TCP fault proxy (added latency, dropped and reset connections, a
//! half-open peer) between the backend and the server.
//!
//! For every fault: each decision returns within a bound several times the throttle's timeout
//! (never an exact latency); while the server is unreachable the throttle's error policy
//! decides; service comes back within a counted number of requests once the server does (the
//! count is printed, the bound asserted is generous); no server admits more than its limit
//! (every admission of a fixed window carries a distinct `remaining`, so a value seen twice on
//! one server's lifetime is an over-admission).
//!
//! Run with `--nocapture` to see the measured figures (`fault-figures:` lines).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use traffik::strategy::FixedWindow;
use traffik::{Decision, ErrorPolicy, Identity, ManualClock, Outcome, Rate, RequestView, Source, Throttle};
use traffik_memcached::MemcachedBackend;
use traffik_test_support::{Fault, FaultProxy, MemcachedServer};

/// The throttle's timeout in every scenario.
const TIMEOUT: Duration = Duration::from_millis(300);
/// What "bounded" means here: many times the timeout, so a slow machine still passes.
const BOUND: Duration = Duration::from_secs(5);
/// Requests allowed for recovery once the server is back (the measured count is printed).
const RECOVERY_BUDGET: u32 = 60;
/// A frozen client clock: one fixed window for the whole test.
const NOW_US: u64 = 1_700_000_000_000_000;

fn rt() -> tokio::runtime::Runtime {
    common::runtime()
}

/// A backend on `addr` with throttle-sized timeouts (or a longer command timeout).
fn backend_with(addr: &str, command_timeout: Duration) -> MemcachedBackend {
    MemcachedBackend::builder()
        .server(addr)
        .namespace("faults")
        .connect_timeout(TIMEOUT)
        .command_timeout(command_timeout)
        .build()
        .expect("backend")
}

fn backend(addr: &str) -> MemcachedBackend {
    backend_with(addr, TIMEOUT)
}

/// A fixed window of `limit` per hour for one client, on a frozen clock.
fn throttle(backend: &MemcachedBackend, uid: &str, limit: u32, policy: ErrorPolicy) -> Arc<Throttle> {
    Arc::new(
        Throttle::builder()
            .uid(uid)
            .rate(Rate::per_millis(limit, 3_600_000).expect("rate"))
            .backend(backend.clone())
            .strategy(FixedWindow)
            .identifier(|_: &RequestView<'_>| Identity::named("client"))
            .clock(ManualClock::new(NOW_US))
            .timeout(TIMEOUT)
            .on_error(policy)
            .no_registry()
            .build()
            .expect("throttle"),
    )
}

/// What a run of hits saw.
#[derive(Default, Debug)]
struct Tally {
    /// Admissions decided by the backend, by their `remaining` (per server lifetime).
    admitted: BTreeMap<u64, u32>,
    backend_throttled: u64,
    /// Decisions made by the error policy, by outcome.
    policy: BTreeMap<String, u64>,
    errors: u64,
    slowest: Duration,
}

impl Tally {
    fn record(&mut self, result: &Result<Decision, traffik::Error>, took: Duration) {
        self.slowest = self.slowest.max(took);
        assert!(took < BOUND, "a decision took {took:?} (timeout {TIMEOUT:?})");
        match result {
            Ok(d) if d.source == Source::Backend && d.outcome == Outcome::Allowed => {
                *self.admitted.entry(d.remaining.expect("remaining")).or_default() += 1;
            }
            Ok(d) if d.source == Source::Backend => self.backend_throttled += 1,
            Ok(d) => {
                assert_eq!(d.source, Source::ErrorPolicy, "{d:?}");
                *self.policy.entry(format!("{:?}", d.outcome)).or_default() += 1;
            }
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        for (r, n) in other.admitted {
            *self.admitted.entry(r).or_default() += n;
        }
        self.backend_throttled += other.backend_throttled;
        for (k, n) in other.policy {
            *self.policy.entry(k).or_default() += n;
        }
        self.errors += other.errors;
        self.slowest = self.slowest.max(other.slowest);
    }

    fn admitted_total(&self) -> u64 {
        self.admitted.values().map(|n| u64::from(*n)).sum()
    }

    fn policy_total(&self) -> u64 {
        self.policy.values().sum()
    }

    /// No `remaining` value was handed out more than `lifetimes` times (once per server
    /// lifetime: a restarted server starts empty), and no admission claimed more than the limit.
    fn assert_no_over_admission(&self, limit: u32, lifetimes: u32) {
        for (remaining, n) in &self.admitted {
            assert!(*remaining < u64::from(limit), "remaining {remaining} with a limit of {limit}");
            assert!(*n <= lifetimes, "remaining {remaining} was handed out {n} times: over-admission");
        }
    }
}

/// One hit, timed.
async fn hit(t: &Throttle, tally: &mut Tally) -> Result<Decision, traffik::Error> {
    let started = Instant::now();
    let r = t.hit(&RequestView::empty()).await;
    tally.record(&r, started.elapsed());
    r
}

/// `tasks` concurrent clients of `hits` sequential hits each.
async fn burst(t: &Arc<Throttle>, tasks: usize, hits: usize) -> Tally {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let t = Arc::clone(t);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..hits {
                    let _ = hit(&t, &mut tally).await;
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        all.merge(h.await.expect("task"));
    }
    all
}

/// Consecutive decisions of the backend that count as recovered (more than a pool has
/// connections, so every connection a fault left dead has been found and replaced).
const STREAK: u32 = 8;

/// Hits until the backend decides again, steadily: returns the request (counted from 1) at
/// which a run of [`STREAK`] decisions of the backend began, i.e. from which on no decision was
/// lost to the fault.
async fn recover(t: &Throttle, tally: &mut Tally, what: &str) -> u32 {
    let mut streak = 0;
    for n in 1..=RECOVERY_BUDGET {
        match hit(t, tally).await {
            Ok(d) if d.source == Source::Backend => streak += 1,
            _ => streak = 0,
        }
        if streak == STREAK {
            return n + 1 - STREAK;
        }
    }
    panic!(
        "{what}: the backend did not decide {STREAK} times in a row within {RECOVERY_BUDGET} requests after the server came back"
    );
}

/// Hits until the backend throttles, then checks that it keeps throttling: the window is
/// exhausted and nothing beyond the limit gets through.
async fn exhaust(t: &Throttle, tally: &mut Tally, limit: u32) {
    let mut throttled = false;
    for _ in 0..=2 * limit {
        let d = hit(t, tally).await.expect("server is up");
        assert_eq!(d.source, Source::Backend, "{d:?}");
        if d.outcome == Outcome::Throttled {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the backend never throttled");
    for _ in 0..5 {
        let d = hit(t, tally).await.expect("server is up");
        assert_eq!((d.source, d.outcome), (Source::Backend, Outcome::Throttled), "{d:?}");
    }
}

fn figures(scenario: &str, tally: &Tally, recovered_in: Option<u32>) {
    println!(
        "fault-figures: memcached {scenario}: slowest decision {:?}, policy decisions {:?}, backend admits {}, \
         backend throttles {}, errors {}, every decision the backend's from request {} on",
        tally.slowest,
        tally.policy,
        tally.admitted_total(),
        tally.backend_throttled,
        tally.errors,
        recovered_in.map_or("-".to_owned(), |n| n.to_string()),
    );
}

#[test]
fn sigstop_and_sigcont_decisions_stay_bounded_and_service_recovers() {
    let mut server = MemcachedServer::spawn();
    let rt = rt();
    let backend = backend(&server.addr);
    let limit = 40;
    let t = throttle(&backend, "sigstop", limit, ErrorPolicy::throttle());
    let mut tally = Tally::default();
    let recovered = rt.block_on(async {
        for _ in 0..5 {
            let d = hit(&t, &mut tally).await.expect("up");
            assert_eq!((d.source, d.outcome), (Source::Backend, Outcome::Allowed));
        }
        server.process().expect("own server").pause();
        let stopped = burst(&t, 4, 3).await;
        assert_eq!(stopped.policy.get("Throttled").copied(), Some(12), "{stopped:?}");
        assert_eq!(stopped.policy_total(), 12, "{stopped:?}");
        tally.merge(stopped);
        server.process().expect("own server").resume();
        let n = recover(&t, &mut tally, "SIGCONT").await;
        exhaust(&t, &mut tally, limit).await;
        n
    });
    tally.assert_no_over_admission(limit, 1);
    assert!(tally.admitted_total() <= u64::from(limit), "{tally:?}");
    figures("SIGSTOP/SIGCONT", &tally, Some(recovered));
}

#[test]
fn kill_and_restart_under_load_applies_the_policy_and_recovers() {
    let mut server = MemcachedServer::spawn();
    let port: u16 = server.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let rt = rt();
    let backend = backend(&server.addr);
    let limit = 60;
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
        server.stop();
        wait_for(Arc::clone(&by_policy), 16).await;
        let restarted = MemcachedServer::spawn_on(port);
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
    figures("kill + restart under load (8 tasks)", &tally, Some(recovered));
}

fn proxied(server: &MemcachedServer) -> FaultProxy {
    FaultProxy::start(server.addr.parse().expect("memcached address"))
}

#[test]
fn latency_below_the_timeout_is_served_and_above_it_the_policy_decides() {
    let server = MemcachedServer::spawn();
    let proxy = proxied(&server);
    let rt = rt();
    let backend = backend(&proxy.addr().to_string());
    let limit = 40;
    let t = throttle(&backend, "latency", limit, ErrorPolicy::throttle());
    let mut tally = Tally::default();
    let recovered = rt.block_on(async {
        // 20 ms each way: an uncontended decision (two round trips) takes about 80 ms, inside
        // 300 ms. (Concurrent hits on one key would add compare-and-swap retries, each two
        // more round trips: that is contention, not this fault.)
        proxy.set(Fault::Latency(Duration::from_millis(20)));
        let slow = burst(&t, 1, 6).await;
        assert_eq!((slow.admitted_total(), slow.policy_total(), slow.errors), (6, 0, 0), "{slow:?}");
        tally.merge(slow);
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
    figures("proxy latency 20 ms then 400 ms per direction", &tally, Some(recovered));
}

#[test]
fn reset_connections_apply_the_policy_and_service_recovers() {
    let server = MemcachedServer::spawn();
    let proxy = proxied(&server);
    let rt = rt();
    let backend = backend(&proxy.addr().to_string());
    let limit = 40;
    let t = throttle(&backend, "reset", limit, ErrorPolicy::throttle());
    let mut tally = Tally::default();
    let mut worst = 0;
    rt.block_on(async {
        tally.merge(burst(&t, 8, 1).await);
        for _ in 0..3 {
            proxy.reset_connections();
            tokio::time::sleep(Duration::from_millis(20)).await;
            worst = worst.max(recover(&t, &mut tally, "connections reset").await);
            tally.merge(burst(&t, 4, 2).await);
        }
        exhaust(&t, &mut tally, limit).await;
    });
    assert_eq!(tally.errors, 0);
    // Any decision lost to a reset is the policy's (throttle), never an error or an admission.
    assert_eq!(tally.policy_total(), tally.policy.get("Throttled").copied().unwrap_or(0), "{tally:?}");
    tally.assert_no_over_admission(limit, 1);
    figures("proxy resets open connections x3", &tally, Some(worst));
}

#[test]
fn dropped_connections_apply_the_policy_and_service_recovers() {
    let server = MemcachedServer::spawn();
    let proxy = proxied(&server);
    let rt = rt();
    let backend = backend(&proxy.addr().to_string());
    let limit = 40;
    let t = throttle(&backend, "dropped", limit, ErrorPolicy::allow());
    let mut tally = Tally::default();
    let recovered = rt.block_on(async {
        tally.merge(burst(&t, 2, 2).await);
        proxy.set(Fault::DropNew);
        proxy.reset_connections();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let down = burst(&t, 4, 3).await;
        assert_eq!(down.policy.get("Allowed").copied(), Some(12), "{down:?}");
        tally.merge(down);
        proxy.set(Fault::PassThrough);
        let n = recover(&t, &mut tally, "connections accepted again").await;
        exhaust(&t, &mut tally, limit).await;
        n
    });
    tally.assert_no_over_admission(limit, 1);
    figures("proxy drops new + resets open connections", &tally, Some(recovered));
}

#[test]
fn a_half_open_peer_is_bounded_by_the_timeout_and_service_recovers() {
    for command_timeout in [TIMEOUT, Duration::from_secs(1)] {
        let server = MemcachedServer::spawn();
        let proxy = proxied(&server);
        let rt = rt();
        let backend = backend_with(&proxy.addr().to_string(), command_timeout);
        let limit = 40;
        let t = throttle(&backend, "half-open", limit, ErrorPolicy::throttle());
        let mut tally = Tally::default();
        let recovered = rt.block_on(async {
            tally.merge(burst(&t, 4, 1).await);
            proxy.set(Fault::HalfOpen);
            let silent = burst(&t, 4, 3).await;
            assert_eq!(silent.policy.get("Throttled").copied(), Some(12), "{silent:?}");
            tally.merge(silent);
            proxy.set(Fault::PassThrough);
            let n = recover(&t, &mut tally, "half-open peer gone").await;
            exhaust(&t, &mut tally, limit).await;
            n
        });
        tally.assert_no_over_admission(limit, 1);
        assert!(tally.admitted_total() <= u64::from(limit));
        figures(&format!("proxy half-open peer (command timeout {command_timeout:?})"), &tally, Some(recovered));
    }
}
