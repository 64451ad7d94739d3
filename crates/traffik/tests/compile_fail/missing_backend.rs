use traffik::strategy::FixedWindow;
use traffik::{Throttle, rate};

fn main() {
    let _ = Throttle::builder().uid("x").rate(rate!("1/s")).strategy(FixedWindow).build();
}
