use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Throttle, rate};

fn main() {
    let _ = Throttle::builder().rate(rate!("1/s")).backend(InMemoryBackend::new()).strategy(FixedWindow).build();
}
