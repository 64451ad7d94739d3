//! A rate that changes never strands a client: state written under one rate is read under
//! another (runtime `update_rate`, or a rate function whose answer changes), and every strategy
//! answers with a wait no longer than the new rate can require and lets the client back in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use traffik::strategy::{
    FixedWindow, Gcra, LeakyBucket, LeakyBucketWithQueue, SlidingWindowCounter, SlidingWindowLog, TokenBucket,
    TokenBucketWithDebt,
};
use traffik::{InMemoryBackend, ManualClock, Outcome, Rate, RequestView, StrategyHandle, Throttle, rate};

fn view() -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, 9], 4000))))
}

fn strategies() -> Vec<(&'static str, StrategyHandle)> {
    vec![
        ("fixed_window", FixedWindow.into()),
        ("sliding_window_counter", SlidingWindowCounter.into()),
        ("sliding_window_log", SlidingWindowLog.into()),
        ("token_bucket", TokenBucket::new().into()),
        ("token_bucket_with_debt", TokenBucketWithDebt::new(2).into()),
        ("leaky_bucket", LeakyBucket.into()),
        ("leaky_bucket_with_queue", LeakyBucketWithQueue::new(2).into()),
        ("gcra", Gcra::with_tolerance(Duration::from_millis(400)).into()),
    ]
}

/// The longest wait any hit of unit cost can get under `rate`, whatever the stored state: two
/// periods covers every strategy's own bound (the sliding counter's previous window plus the
/// current one; a meter is never fuller than one period at its own rate plus its queue and
/// debt, here at most two periods).
fn longest_wait(rate: Rate) -> Duration {
    Duration::from_micros(2 * rate.period_us())
}

/// Unit hits a fresh key admits at once under `5/min`.
fn full_quota_at_5_per_min(name: &str) -> u64 {
    match name {
        "token_bucket_with_debt" => 7,
        // A tolerance of 0.4 s is no burst at one hit per 12 s.
        "gcra" => 1,
        _ => 5,
    }
}

/// How the rate changes: through `update_rate`, or a rate function whose answer flips.
#[derive(Clone, Copy, Debug)]
enum Change {
    UpdateRate,
    RateFn,
}

struct Subject {
    throttle: Throttle,
    flip: Arc<AtomicBool>,
    change: Change,
    after: Rate,
}

impl Subject {
    fn new(
        name: &str,
        strategy: StrategyHandle,
        before: Rate,
        after: Rate,
        change: Change,
        clock: &ManualClock,
    ) -> Self {
        let flip = Arc::new(AtomicBool::new(false));
        let builder = Throttle::builder()
            .uid(format!("change-{name}-{change:?}"))
            .backend(InMemoryBackend::new())
            .strategy(strategy)
            .clock(clock.clone());
        let throttle = match change {
            Change::UpdateRate => builder.rate(before).build().unwrap(),
            Change::RateFn => {
                let flipped = Arc::clone(&flip);
                builder
                    .rate_fn(move |_, _| if flipped.load(Ordering::SeqCst) { after } else { before })
                    .build()
                    .unwrap()
            }
        };
        Subject { throttle, flip, change, after }
    }

    fn change(&self) {
        match self.change {
            Change::UpdateRate => self.throttle.update_rate(self.after),
            Change::RateFn => self.flip.store(true, Ordering::SeqCst),
        }
    }
}

/// The observed defect: `5/s` becoming `5/min` answered fixed-window and sliding-counter hits
/// with a wait of 103,250,000,059 s, and once a hit was admitted after the change the client
/// was denied for good. Every strategy, both ways of changing the rate.
#[tokio::test]
async fn five_per_second_becoming_five_per_minute_never_strands_a_client() {
    for change in [Change::UpdateRate, Change::RateFn] {
        for (name, strategy) in strategies() {
            let clock = ManualClock::new(1_700_000_000_250_000);
            let s = Subject::new(name, strategy, rate!("5/s"), rate!("5/min"), change, &clock);
            let req = view();
            // Two hits under 5/s, then the change.
            for _ in 0..2 {
                assert!(s.throttle.hit(&req).await.unwrap().is_allowed(), "{name} {change:?}");
            }
            s.change();
            let bound = longest_wait(s.after);
            for i in 0..12 {
                let d = s.throttle.hit(&req).await.unwrap();
                match d.outcome {
                    Outcome::Allowed | Outcome::Delayed => {}
                    Outcome::Throttled => {
                        assert!(
                            d.wait <= bound,
                            "{name} {change:?}: hit {i} told to wait {:?} under 5/min (at most {bound:?})",
                            d.wait
                        );
                        clock.advance(d.wait);
                        let retry = s.throttle.hit(&req).await.unwrap();
                        assert!(retry.is_allowed(), "{name} {change:?}: not admitted after its wait: {retry:?}");
                    }
                    other => panic!("{name} {change:?}: {other:?}"),
                }
                assert!(d.remaining.is_none_or(|r| r <= 5), "{name} {change:?}: {d:?}");
            }
            // Two idle periods of the new rate bring any client back to its full quota.
            clock.advance(Duration::from_secs(121));
            let d = s.throttle.hit(&req).await.unwrap();
            assert!(d.is_allowed(), "{name} {change:?}: not admitted after idling: {d:?}");
            assert_eq!(d.remaining, Some(full_quota_at_5_per_min(name) - 1), "{name} {change:?}: {d:?}");
        }
    }
}
