//! Burst + sustained: two limits on one client, decided as one.
//!
//! `cargo run -p traffik-examples --bin group-demo`
//!
//! A client may send 3 requests in any second (a token bucket) and 10 in any minute (a fixed
//! window). As a group, a request the burst limit refuses costs the minute's quota nothing.

use std::time::Duration;

use traffik::strategy::{FixedWindow, TokenBucket};
use traffik::{InMemoryBackend, ManualClock, RequestView, Throttle, ThrottleGroup, rate};

#[tokio::main]
async fn main() -> Result<(), traffik::Error> {
    let backend = InMemoryBackend::new();
    // A manual clock makes the printed timeline the same on every run.
    let clock = ManualClock::new(1_700_000_000_000_000);
    let burst = Throttle::builder()
        .uid("burst")
        .rate(rate!("3/s"))
        .backend(backend.clone())
        .strategy(TokenBucket::new())
        .clock(clock.clone())
        .build()?;
    let sustained = Throttle::builder()
        .uid("sustained")
        .rate(rate!("10/min"))
        .backend(backend)
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()?;
    let api = ThrottleGroup::new("api", [burst, sustained])?;
    let client = RequestView::empty().peer(Some("198.51.100.7:50000".parse().expect("address")));
    // Five requests at once, then one every 400 ms.
    for i in 0..16 {
        if i >= 5 {
            clock.advance(Duration::from_millis(400));
        }
        let d = api.hit(&client).await?;
        let left: Vec<String> = d.members.iter().map(|m| m.remaining.map_or("-".into(), |r| r.to_string())).collect();
        // A refused hit charged nobody: each member says what it would have had left.
        let label = if d.is_throttled() { "would leave" } else { "left" };
        println!(
            "t={:>5} ms  {:<9}  binding: {:<9}  {label:>11} (burst, sustained): {:<6}  Retry-After: {}",
            if i < 5 { 0 } else { (i - 4) * 400 },
            format!("{:?}", d.outcome),
            d.binding_member().map_or("-", Throttle::uid),
            left.join(", "),
            d.retry_after_secs().map_or("-".into(), |s| s.to_string()),
        );
    }
    Ok(())
}
