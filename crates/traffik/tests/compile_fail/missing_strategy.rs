use traffik::{InMemoryBackend, Throttle, rate};

fn main() {
    let _ = Throttle::builder().uid("x").rate(rate!("1/s")).backend(InMemoryBackend::new()).build();
}
