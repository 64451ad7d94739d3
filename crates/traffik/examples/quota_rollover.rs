//! A daily quota whose unused part rolls into the next day, capped at half a day's quota; the
//! snapshot shows the rollover from the first second of a day, before any request.
//!
//! ```sh
//! cargo run -p traffik --example quota_rollover
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use traffik::strategy::QuotaRollover;
use traffik::{InMemoryBackend, ManualClock, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory call waited"),
    }
}

fn main() -> Result<(), traffik::Error> {
    const DAY: Duration = Duration::from_secs(86_400);
    // Midnight UTC, 2026-12-03.
    let clock = ManualClock::new(1_796_256_000_000_000);
    let throttle = Throttle::builder()
        .uid("daily-exports")
        .rate(rate!("10/day"))
        .backend(InMemoryBackend::new())
        .strategy(QuotaRollover::builder().max_percent(50).build()?)
        .clock(clock.clone())
        .build()?;
    let client = RequestView::empty().peer(Some(([192, 0, 2, 7], 1000).into()));
    // Requests made each day: a busy day, a quiet one, an idle one, then a busy one again.
    for (day, asked) in [(1, 20), (2, 4), (3, 0), (4, 20)] {
        let stat = now_or_never(throttle.stat(&client))?.into_limited().expect("limited");
        let rollover = stat.metadata.get("rollover").cloned().unwrap_or_default();
        let admitted = (0..asked).filter(|_| now_or_never(throttle.hit(&client)).unwrap().is_allowed()).count();
        println!(
            "day {day}: starts with rollover {rollover} ({} left), {admitted} of {asked} admitted",
            stat.remaining
        );
        clock.advance(DAY);
    }
    Ok(())
}
