use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Throttle};

fn main() {
    let _ = Throttle::builder().uid("x").backend(InMemoryBackend::new()).strategy(FixedWindow).build();
}
