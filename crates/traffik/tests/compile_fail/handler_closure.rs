use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Throttle, rate};

fn main() {
    // A bare closure is no integration's handler: it used to compile and never run.
    let _ = Throttle::builder()
        .uid("x")
        .rate(rate!("1/s"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .throttled_handler(|| "slow down");
}
