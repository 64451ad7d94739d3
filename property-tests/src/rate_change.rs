//! Rate changes through a whole throttle: `update_rate` and a rate function whose answer flips,
//! on any backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use traffik::{ManualClock, Outcome, Rate, RequestView, SharedBackend, Throttle};

use crate::{RUN, Suite, builtin_suites, run_id};

/// How a throttle's rate changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// [`Throttle::update_rate`].
    UpdateRate,
    /// A rate function (`rate_fn`) whose answer changes.
    RateFn,
}

/// The pairs of rates every strategy is taken through: longer and shorter periods, larger and
/// smaller limits under the same period.
pub fn rate_pairs() -> Vec<(Rate, Rate)> {
    let r = |s: &str| Rate::parse(s).expect("valid rate");
    vec![
        (r("5/s"), r("5/min")),
        (r("5/min"), r("5/s")),
        (r("10/min"), r("3/min")),
        (r("3/min"), r("10/min")),
        (r("2/s"), r("20/5s")),
    ]
}

fn throttle(
    backend: SharedBackend,
    suite: &Suite,
    before: Rate,
    after: Rate,
    change: Change,
    clock: &ManualClock,
    flip: &Arc<AtomicBool>,
) -> Throttle {
    let uid = format!("rc-{}-{:x}-{}", suite.name, run_id(), RUN.fetch_add(1, Ordering::Relaxed));
    let builder =
        Throttle::builder().uid(uid).shared_backend(backend).strategy(suite.strategy.clone()).clock(clock.clone());
    let built = match change {
        Change::UpdateRate => builder.rate(before).build(),
        Change::RateFn => {
            let flipped = Arc::clone(flip);
            builder.rate_fn(move |_, _| if flipped.load(Ordering::SeqCst) { after } else { before }).build()
        }
    };
    built.expect("throttle")
}

/// Takes every built-in strategy through every pair of [`rate_pairs`], both ways of changing
/// the rate, on the backends `make` returns (which must use the throttle's clock). For each:
/// some hits under the first rate, the change, then hits under the second rate until a dozen
/// were admitted, where every denial waits no longer than [`Bound::longest_wait_us`] of the new
/// rate and its retry after that wait is admitted; after the longest wait either rate needs,
/// the client is back to the new rate's full quota.
///
/// [`Bound::longest_wait_us`]: crate::Bound::longest_wait_us
pub fn check_rate_changes(make: impl Fn() -> SharedBackend) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let req = RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, 77], 4000))));
    for suite in builtin_suites() {
        for (before, after) in rate_pairs() {
            for change in [Change::UpdateRate, Change::RateFn] {
                let ctx = format!("{} {before} -> {after} by {change:?}", suite.name);
                let clock = ManualClock::new(1_700_000_000_250_000);
                let flip = Arc::new(AtomicBool::new(false));
                let backend = {
                    let _guard = rt.enter();
                    make()
                };
                let t = throttle(backend, &suite, before, after, change, &clock, &flip);
                rt.block_on(async {
                    for _ in 0..3 {
                        let _warm_up = t.hit(&req).await.expect("hit");
                        clock.advance(Duration::from_millis(150));
                    }
                    match change {
                        Change::UpdateRate => t.update_rate(after),
                        Change::RateFn => flip.store(true, Ordering::SeqCst),
                    }
                    let longest = suite.bound.longest_wait_us(&after).expect("built-in bound");
                    let mut admitted = 0;
                    while admitted < 12 {
                        let d = t.hit(&req).await.expect("hit");
                        match d.outcome {
                            Outcome::Allowed | Outcome::Delayed => admitted += 1,
                            Outcome::Throttled => {
                                let wait = u64::try_from(d.wait.as_micros()).unwrap_or(u64::MAX);
                                assert!(wait <= longest, "{ctx}: told to wait {wait}us, at most {longest}us");
                                clock.advance(d.wait);
                                let retry = t.hit(&req).await.expect("hit");
                                assert!(retry.is_allowed(), "{ctx}: not admitted after its wait: {retry:?}");
                                admitted += 1;
                            }
                            other => panic!("{ctx}: {other:?}"),
                        }
                    }
                    let idle = [before, after]
                        .iter()
                        .map(|r| suite.bound.longest_wait_us(r).unwrap_or(0) + 2 * r.period_us())
                        .max()
                        .unwrap_or(0);
                    clock.advance(Duration::from_micros(idle + u64::from(suite.queue()) * after.period_us()));
                    let d = t.hit(&req).await.expect("hit");
                    assert!(d.is_allowed(), "{ctx}: not admitted after idling: {d:?}");
                    let full = suite.full_quota(&after);
                    assert_eq!(d.remaining, Some(full - 1), "{ctx}: not back to full quota {full}: {d:?}");
                });
            }
        }
    }
}
