//! How far the sliding window counter's estimate strays from the exact sliding log, on the same
//! deterministic traffic. The numbers printed here are the ones stated in the
//! `SlidingWindowCounter` docs; the assertions pin the guarantees (aligned windows <= L, any
//! sliding window < 2L) and that the measured error stays within what the docs say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use traffik::strategy::{Input, SlidingWindowCounter, SlidingWindowLog, Strategy};
use traffik::{Rate, rate};

/// A small deterministic generator (xorshift64*), so the stated numbers are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Arrival times: `per_window` requests per window on average, over `windows` windows; with
/// `bursty`, half of each window's requests arrive in its last tenth.
fn arrivals(rng: &mut Rng, rate: Rate, per_window: u64, windows: u64, bursty: bool) -> Vec<u64> {
    let w = rate.period_us();
    let start = 1_700_000_000_000_000 / w * w;
    let mut times = Vec::new();
    for k in 0..windows {
        for _ in 0..per_window {
            let offset = if bursty && rng.below(2) == 0 { w - 1 - rng.below(w / 10) } else { rng.below(w) };
            times.push(start + k * w + offset);
        }
    }
    times.sort_unstable();
    times
}

/// Admitted times under a strategy.
fn admitted<S: Strategy>(strategy: &S, rate: Rate, times: &[u64]) -> Vec<u64> {
    let mut state = None;
    let mut out = Vec::new();
    for &t in times {
        let step = strategy.decide(state.as_ref(), &Input { now_us: t, rate, cost: 1 });
        if let Some(w) = step.write {
            state = Some(w.state);
        }
        if step.verdict.is_admitted() {
            out.push(t);
        }
    }
    out
}

/// The most admissions in any sliding window `(t - W, t]`.
fn peak_sliding(times: &[u64], w: u64) -> u64 {
    let mut peak = 0;
    let mut lo = 0;
    for (hi, &t) in times.iter().enumerate() {
        while times[lo] + w <= t {
            lo += 1;
        }
        peak = peak.max((hi - lo + 1) as u64);
    }
    peak
}

#[test]
fn sliding_window_counter_error_against_the_exact_log() {
    let rate = rate!("100/min");
    let l = rate.limit();
    let w = rate.period_us();
    println!("traffic                      counter peak/L  log peak/L  counter/log admitted");
    for (name, per_window, bursty) in
        [("steady, 1.5x the limit", 150, false), ("steady, 3x the limit", 300, false), ("bursty, 1.5x", 150, true)]
    {
        let mut worst_peak = 0.0f64;
        let mut ratios = Vec::new();
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let times = arrivals(&mut rng, rate, per_window, 30, bursty);
            let counter = admitted(&SlidingWindowCounter, rate, &times);
            let log = admitted(&SlidingWindowLog, rate, &times);
            let peak = peak_sliding(&counter, w);
            assert!(peak < 2 * l, "{name}: a sliding window saw {peak} >= 2L");
            assert!(peak_sliding(&log, w) <= l, "the log is exact");
            worst_peak = worst_peak.max(peak as f64 / l as f64);
            ratios.push(counter.len() as f64 / log.len() as f64);
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        println!("{name:<28} {worst_peak:>14.2} {:>11.2} {mean:>20.3}", 1.0);
        // The figures the docs state (measured 1.09, 1.03 and 1.30 times L; admissions within
        // 1% of the log): a worst sliding window within 10% of L for steady traffic and within
        // 35% for bursts at window ends.
        let allowed_peak = if bursty { 1.35 } else { 1.1 };
        assert!(worst_peak <= allowed_peak, "{name}: worst sliding window {worst_peak:.2}L");
        assert!((0.98..=1.02).contains(&mean), "{name}: admitted {mean:.3}x the log");
    }
}
