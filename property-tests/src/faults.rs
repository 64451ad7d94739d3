//! A harness for fault-injection tests of a backend: a throttle with a short timeout on a
//! frozen clock, a tally of what every hit saw (checked against a bound on each decision's
//! latency and against over-admission), and the steps a scenario is made of (a burst of
//! concurrent clients, hits until the backend decides steadily again, hits until the window is
//! exhausted). The Redis and Memcached fault suites run on it; so can a custom backend's.

#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traffik::strategy::FixedWindow;
use traffik::{Backend, Decision, ErrorPolicy, Identity, ManualClock, Outcome, Rate, RequestView, Source, Throttle};

/// The throttle's timeout in every scenario.
pub const TIMEOUT: Duration = Duration::from_millis(300);
/// What "bounded" means here: many times the timeout, so a slow machine still passes.
pub const BOUND: Duration = Duration::from_secs(5);
/// Requests allowed for recovery once the server is back (the measured count is printed).
pub const RECOVERY_BUDGET: u32 = 60;
/// A frozen client clock: one fixed window for the whole test.
pub const NOW_US: u64 = 1_700_000_000_000_000;

/// A fixed window of `limit` per hour for one client, on a frozen clock.
pub fn throttle<B: Backend + Clone>(backend: &B, uid: &str, limit: u32, policy: ErrorPolicy) -> Arc<Throttle> {
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
            .build()
            .expect("throttle"),
    )
}

/// What a run of hits saw.
#[derive(Default, Debug)]
pub struct Tally {
    /// Admissions decided by the backend, by their `remaining` (per server lifetime).
    pub admitted: BTreeMap<u64, u32>,
    /// Refusals decided by the backend.
    pub backend_throttled: u64,
    /// Decisions made by the error policy, by outcome.
    pub policy: BTreeMap<String, u64>,
    /// Errors returned (a policy that raises).
    pub errors: u64,
    /// The slowest decision.
    pub slowest: Duration,
}

impl Tally {
    /// Tallies one hit's result, asserting it took less than [`BOUND`].
    pub fn record(&mut self, result: &Result<Decision, traffik::Error>, took: Duration) {
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

    /// Adds another tally (a concurrent client's) to this one.
    pub fn merge(&mut self, other: Tally) {
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

    /// Admissions decided by the backend.
    pub fn admitted_total(&self) -> u64 {
        self.admitted.values().map(|n| u64::from(*n)).sum()
    }

    /// Decisions made by the error policy.
    pub fn policy_total(&self) -> u64 {
        self.policy.values().sum()
    }

    /// No `remaining` value was handed out more than `lifetimes` times (once per server
    /// lifetime: a restarted server starts empty), and no admission claimed more than the limit.
    pub fn assert_no_over_admission(&self, limit: u32, lifetimes: u32) {
        for (remaining, n) in &self.admitted {
            assert!(*remaining < u64::from(limit), "remaining {remaining} with a limit of {limit}");
            assert!(*n <= lifetimes, "remaining {remaining} was handed out {n} times: over-admission");
        }
    }
}

/// One hit, timed.
pub async fn hit(t: &Throttle, tally: &mut Tally) -> Result<Decision, traffik::Error> {
    let started = Instant::now();
    let r = t.hit(&RequestView::empty()).await;
    tally.record(&r, started.elapsed());
    r
}

/// `tasks` concurrent clients of `hits` sequential hits each.
pub async fn burst(t: &Arc<Throttle>, tasks: usize, hits: usize) -> Tally {
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
pub const STREAK: u32 = 8;

/// Hits until the backend decides again, steadily: returns the request (counted from 1) at
/// which a run of [`STREAK`] decisions of the backend began, i.e. from which on no decision was
/// lost to the fault.
pub async fn recover(t: &Throttle, tally: &mut Tally, what: &str) -> u32 {
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
pub async fn exhaust(t: &Throttle, tally: &mut Tally, limit: u32) {
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

/// Prints a scenario's figures (`fault-figures:` lines; run with `--nocapture`).
pub fn figures(backend: &str, scenario: &str, tally: &Tally, recovered_in: Option<u32>) {
    println!(
        "fault-figures: {backend} {scenario}: slowest decision {:?}, policy decisions {:?}, backend admits {}, \
         backend throttles {}, errors {}, every decision the backend's from request {} on",
        tally.slowest,
        tally.policy,
        tally.admitted_total(),
        tally.backend_throttled,
        tally.errors,
        recovered_in.map_or("-".to_owned(), |n| n.to_string()),
    );
}
