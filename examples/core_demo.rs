//! The core on its own: two clients, one throttle per strategy, printed decisions.
//!
//! `cargo run -p traffik-examples --bin core-demo`

use std::time::Duration;

use traffik::strategy::{FixedWindow, Gcra, LeakyBucketWithQueue, SlidingWindowLog, TokenBucket};
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, StrategyHandle, Throttle, rate};

#[tokio::main]
async fn main() -> Result<(), traffik::Error> {
    let backend = InMemoryBackend::builder().namespace("demo").build();
    let clock = ManualClock::new(1_700_000_000_000_000);
    let strategies: Vec<(&str, StrategyHandle)> = vec![
        ("fixed window", FixedWindow.into()),
        ("sliding log", SlidingWindowLog.into()),
        ("token bucket (burst 2)", TokenBucket::with_burst(2).into()),
        ("GCRA", Gcra::new().into()),
        ("leaky bucket + queue 2", LeakyBucketWithQueue::new(2).into()),
    ];
    let alice = RequestView::empty().peer(Some("198.51.100.1:50000".parse().expect("address")));
    let bob = RequestView::empty().peer(Some("198.51.100.2:50000".parse().expect("address")));
    for (name, strategy) in strategies {
        let throttle = Throttle::builder()
            .uid(format!("demo-{name}"))
            .rate(rate!("4/s"))
            .backend(backend.clone())
            .strategy(strategy)
            .clock(clock.clone())
            .build()?;
        println!("{name}, 4/s:");
        for i in 0..6 {
            let who = if i == 5 { &bob } else { &alice };
            let d = throttle.hit(who).await?;
            println!(
                "  {:<5} -> {:<10} remaining {:<4} wait {:?}",
                if i == 5 { "bob" } else { "alice" },
                format!("{:?}", d.outcome),
                d.remaining.map_or("-".into(), |r| r.to_string()),
                d.wait
            );
            clock.advance(Duration::from_millis(50));
        }
        let big = throttle.hit_with(&alice, &Context::new().cost(100)).await?;
        println!("  alice, cost 100 -> {:?} (Retry-After: {:?})", big.outcome, big.retry_after_secs());
    }
    Ok(())
}
