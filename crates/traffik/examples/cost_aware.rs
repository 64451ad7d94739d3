//! A cost-aware token bucket next to a plain one: the same burst and rate, but a client whose
//! requests are expensive on average gets its tokens back more slowly.
//!
//! ```sh
//! cargo run -p traffik --example cost_aware
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use traffik::strategy::{CostAwareTokenBucket, TokenBucket};
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, StrategyHandle, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory call waited"),
    }
}

fn main() -> Result<(), traffik::Error> {
    let cost_aware = CostAwareTokenBucket::builder().reference_cost(1.0).max_slowdown(4.0).window(5).build()?;
    for (name, strategy) in
        [("plain token bucket", StrategyHandle::from(TokenBucket::new())), ("cost-aware", cost_aware.into())]
    {
        let clock = ManualClock::new(1_796_256_000_000_000);
        let throttle = Throttle::builder()
            .uid(format!("search-{name}"))
            .rate(rate!("60/min"))
            .backend(InMemoryBackend::new())
            .strategy(strategy)
            .clock(clock.clone())
            .build()?;
        // Two clients over two minutes, one request a second: one asks for cheap lookups
        // (cost 1), the other for expensive exports (cost 5).
        for (who, cost) in [("cheap", 1u64), ("heavy", 5)] {
            let req = RequestView::empty().peer(Some(([192, 0, 2, cost as u8], 1000).into()));
            let ctx = Context::new().cost(cost);
            let mut admitted = 0;
            for _ in 0..120 {
                if now_or_never(throttle.hit_with(&req, &ctx)).unwrap().is_allowed() {
                    admitted += cost;
                }
                clock.advance(Duration::from_secs(1));
            }
            let stat = now_or_never(throttle.stat_with(&req, &ctx))?.into_limited().expect("limited");
            let slowdown = match stat.metadata.get("slowdown_milli").and_then(|v| v.as_u64()) {
                Some(milli) => format!(", refill slowed {:.1}x", milli as f64 / 1000.0),
                None => String::new(),
            };
            println!("{name:>18}, {who} client: {admitted} units admitted in 2 min{slowdown}");
        }
    }
    Ok(())
}
