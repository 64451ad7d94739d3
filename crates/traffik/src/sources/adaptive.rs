//! A limit that follows the service's load: an AIMD controller over signals that are not the
//! client's own traffic.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Rate;
use crate::clock::Clock;
use crate::context::Context;
use crate::error::{ConfigError, Error};
use crate::functions::{RateFn, RateSource};
use crate::identity::RequestView;
use crate::strategy::Metadata;
use futures_core::future::BoxFuture;

/// What the application says about its load (see [`Adaptive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Struggling: the next step of the controller cuts the limit.
    Overloaded,
    /// Fine: the next step lets the limit recover.
    Normal,
}

/// A limit that follows the service's load, not the client's own traffic: an AIMD controller
/// (multiplicative cut, additive recovery, a floor, never above the base rate).
///
/// Signals come from the application: [`signal`](Self::signal) at any time (a handler that
/// timed out, a queue that is too long), [`observe_latency`](Self::observe_latency) against a
/// target, or a gauge ([`AdaptiveBuilder::gauge`]) read once per step; and from the responses
/// the service gives: the Poem and Salvo crates' `ObserveLoad` middleware (or your own code,
/// through [`begin`](Self::begin)) reports each response's latency and status, and a step in
/// which too many were slow or failed is an overloaded step (see
/// [`AdaptiveBuilder::latency_target`] and [`AdaptiveBuilder::max_error_share`]). Every
/// [`interval`](AdaptiveBuilder::interval) (default one second) the controller takes one step:
/// if anything reported overload during the step, the factor becomes
/// `max(floor, factor · decrease)`; otherwise `min(1, factor + increase)`. The rate of a hit is
/// the base rate's limit times the factor (rounded down, at least 1) over the same period, so
/// under the fixed window a client keeps the hits it made this window when the limit moves
/// (README, "When the rate changes"). A client's own requests never count as load.
///
/// ```
/// use std::time::Duration;
/// use traffik::sources::{Adaptive, Load};
/// use traffik::{ManualClock, rate};
///
/// let clock = ManualClock::new(0);
/// let adaptive = Adaptive::builder(rate!("100/min")).decrease(0.5)?.increase(0.1)?.floor(0.2)?
///     .interval(Duration::from_secs(1)).clock(clock.clone()).build();
/// adaptive.signal(Load::Overloaded);
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(adaptive.rate(), rate!("50/min"));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(adaptive.rate(), rate!("60/min"));
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct Adaptive {
    inner: Arc<AdaptiveInner>,
}

type Gauge = dyn Fn() -> Load + Send + Sync;

/// How observed responses turn into load: a step is overloaded when the share of slow
/// responses is above `max_slow_share` (with a latency target) or the share of failed ones
/// above `max_error_share` (when set).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Judge {
    latency_target_us: Option<u64>,
    max_slow_share: f64,
    max_error_share: Option<f64>,
}

impl Judge {
    fn overloaded(&self, seen: u64, slow: u64, failed: u64) -> bool {
        if seen == 0 {
            return false;
        }
        let share = |n: u64| n as f64 / seen as f64;
        (self.latency_target_us.is_some() && share(slow) > self.max_slow_share)
            || self.max_error_share.is_some_and(|max| share(failed) > max)
    }
}

#[derive(Debug, Default)]
struct Tally {
    seen: AtomicU64,
    slow: AtomicU64,
    failed: AtomicU64,
}

/// One response being observed for an [`Adaptive`] limit, from [`Adaptive::begin`]: give it
/// the response's status with [`finish`](Self::finish). Dropped unfinished (the handler's
/// future was cancelled: a timeout layer gave up on it, or the client went away), it counts as
/// failed, and as slow if it ran past the latency target.
#[must_use = "an observation dropped at once counts as a failed response"]
#[derive(Debug)]
pub struct Observation {
    adaptive: Option<Adaptive>,
    started_us: u64,
}

impl Observation {
    /// Reports the response: a status of 500 or more counts as failed; the time since
    /// [`Adaptive::begin`], on the adaptive limit's clock, is compared with the latency target.
    pub fn finish(mut self, status: u16) {
        if let Some(adaptive) = self.adaptive.take() {
            adaptive.record(self.started_us, status >= 500);
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if let Some(adaptive) = self.adaptive.take() {
            adaptive.record(self.started_us, true);
        }
    }
}

struct AdaptiveInner {
    base: Rate,
    floor: f64,
    decrease: f64,
    increase: f64,
    interval_us: u64,
    clock: Arc<dyn Clock>,
    gauge: Option<Box<Gauge>>,
    /// The factor in force, as `f64` bits.
    factor: AtomicU64,
    /// When the step in progress ends (µs since the epoch).
    step_ends_us: AtomicU64,
    /// Whether overload was reported during the step in progress.
    overloaded: std::sync::atomic::AtomicBool,
    /// What responses count as slow or failed, and how many may be.
    judge: Judge,
    /// Responses observed, slow and failed during the step in progress.
    responses: Tally,
    /// Serializes steps (rare: once per interval).
    stepping: parking_lot::Mutex<()>,
}

impl fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Adaptive")
            .field("base", &i.base)
            .field("factor", &self.factor())
            .field("floor", &i.floor)
            .field("decrease", &i.decrease)
            .field("increase", &i.increase)
            .field("interval_us", &i.interval_us)
            .finish_non_exhaustive()
    }
}

impl Adaptive {
    /// Starts an adaptive limit that never exceeds `base` (defaults: decrease 0.5, increase
    /// 0.05, floor 0.1, one-second steps, the system clock).
    pub fn builder(base: Rate) -> AdaptiveBuilder {
        AdaptiveBuilder {
            base,
            floor: 0.1,
            decrease: 0.5,
            increase: 0.05,
            interval: std::time::Duration::from_secs(1),
            clock: crate::clock::system(),
            gauge: None,
            judge: Judge { latency_target_us: None, max_slow_share: 0.0, max_error_share: None },
        }
    }

    /// Reports the load now; an overload anywhere in a step cuts the limit at its end.
    pub fn signal(&self, load: Load) {
        self.step();
        if load == Load::Overloaded {
            self.inner.overloaded.store(true, Ordering::Relaxed);
        }
    }

    /// Reports one handler's latency against a target: slower than `target` is an overload.
    pub fn observe_latency(&self, latency: std::time::Duration, target: std::time::Duration) {
        self.signal(if latency > target { Load::Overloaded } else { Load::Normal });
    }

    /// Starts observing one response (see [`Observation`]); what counts as slow or failed is
    /// set on the builder ([`latency_target`](AdaptiveBuilder::latency_target),
    /// [`max_error_share`](AdaptiveBuilder::max_error_share)).
    pub fn begin(&self) -> Observation {
        Observation { adaptive: Some(self.clone()), started_us: self.inner.clock.now_us() }
    }

    /// Counts one observed response.
    fn record(&self, started_us: u64, failed: bool) {
        self.step();
        let i = &self.inner;
        let elapsed = i.clock.now_us().saturating_sub(started_us);
        i.responses.seen.fetch_add(1, Ordering::Relaxed);
        if i.judge.latency_target_us.is_some_and(|target| elapsed > target) {
            i.responses.slow.fetch_add(1, Ordering::Relaxed);
        }
        if failed {
            i.responses.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The factor in force (between the floor and 1).
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.inner.factor.load(Ordering::Relaxed))
    }

    /// The rate in force now.
    pub fn rate(&self) -> Rate {
        self.step();
        let i = &self.inner;
        // A hair above the product before rounding down: 0.5 + 0.1 is a little under 0.6 in
        // binary, and 100 · that must still be 60.
        let limit = ((i.base.limit() as f64) * self.factor() + 1e-9).floor().max(1.0);
        // The limit never exceeds the base limit, which is a valid rate's.
        let limit = u32::try_from(limit as u64).unwrap_or(u32::MAX);
        Rate::per_millis(limit, i.base.period_ms()).unwrap_or(i.base)
    }

    /// Takes the controller's steps that are due.
    fn step(&self) {
        let i = &self.inner;
        let now = i.clock.now_us();
        if now < i.step_ends_us.load(Ordering::Acquire) {
            return;
        }
        let _stepping = i.stepping.lock();
        let ends = i.step_ends_us.load(Ordering::Acquire);
        if now < ends {
            return;
        }
        let gauge = i.gauge.as_ref().is_some_and(|g| g() == Load::Overloaded);
        let seen = i.responses.seen.swap(0, Ordering::Relaxed);
        let slow = i.responses.slow.swap(0, Ordering::Relaxed);
        let failed = i.responses.failed.swap(0, Ordering::Relaxed);
        let responses = i.judge.overloaded(seen, slow, failed);
        let overloaded = i.overloaded.swap(false, Ordering::Relaxed) || gauge || responses;
        let before = self.factor();
        let mut factor = if overloaded { (before * i.decrease).max(i.floor) } else { (before + i.increase).min(1.0) };
        // Steps missed while nothing asked (no traffic) were steps without overload.
        let missed = (now - ends) / i.interval_us;
        if missed > 0 {
            factor = (factor + i.increase * missed as f64).min(1.0);
        }
        i.factor.store(factor.to_bits(), Ordering::Relaxed);
        i.step_ends_us.store(now.saturating_add(i.interval_us), Ordering::Release);
        #[cfg(feature = "tracing")]
        if factor != before {
            tracing::info!(
                base = %i.base, from = before, to = factor, overloaded, responses = seen, slow, failed,
                "adaptive limit moved"
            );
        }
    }
}

/// Builds an [`Adaptive`] limit; every parameter is checked ([`Error::Config`] for NaN,
/// infinities and values out of range).
pub struct AdaptiveBuilder {
    base: Rate,
    floor: f64,
    decrease: f64,
    increase: f64,
    interval: std::time::Duration,
    clock: Arc<dyn Clock>,
    gauge: Option<Box<Gauge>>,
    judge: Judge,
}

impl fmt::Debug for AdaptiveBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveBuilder")
            .field("base", &self.base)
            .field("floor", &self.floor)
            .field("decrease", &self.decrease)
            .field("increase", &self.increase)
            .field("interval", &self.interval)
            .field("judge", &self.judge)
            .finish_non_exhaustive()
    }
}

fn fraction(name: &'static str, v: f64, zero_ok: bool, one_ok: bool) -> Result<f64, Error> {
    let expected = match (zero_ok, one_ok) {
        (false, false) => "a number in (0, 1)",
        (false, true) => "a number in (0, 1]",
        (true, false) => "a number in [0, 1)",
        (true, true) => "a number in [0, 1]",
    };
    let ok = v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && (v < 1.0 || (one_ok && v == 1.0));
    if ok { Ok(v) } else { Err(ConfigError::OutOfRange { parameter: name, expected, value: v.to_string() }.into()) }
}

impl AdaptiveBuilder {
    /// The lowest factor, in (0, 1] (default 0.1): the limit never falls below `floor · base`.
    pub fn floor(mut self, floor: f64) -> Result<Self, Error> {
        self.floor = fraction("adaptive floor", floor, false, true)?;
        Ok(self)
    }

    /// The multiplicative cut on overload, in (0, 1) (default 0.5).
    pub fn decrease(mut self, decrease: f64) -> Result<Self, Error> {
        self.decrease = fraction("adaptive decrease", decrease, false, false)?;
        Ok(self)
    }

    /// The additive recovery per calm step, in [0, 1] (default 0.05).
    pub fn increase(mut self, increase: f64) -> Result<Self, Error> {
        self.increase = fraction("adaptive increase", increase, true, true)?;
        Ok(self)
    }

    /// The length of a controller step (default one second; at least a millisecond).
    #[must_use]
    pub fn interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval.max(std::time::Duration::from_millis(1));
        self
    }

    /// The clock the controller reads (give it the throttle's in tests).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A gauge read once per step (a queue length against a bound, a CPU reading): an
    /// overload it reports cuts the limit like a [`signal`](Adaptive::signal).
    #[must_use]
    pub fn gauge(mut self, gauge: impl Fn() -> Load + Send + Sync + 'static) -> Self {
        self.gauge = Some(Box::new(gauge));
        self
    }

    /// Observed responses slower than `target` are slow (measured on the limit's
    /// [`clock`](Self::clock) from [`Adaptive::begin`] to [`Observation::finish`]); a step in
    /// which more than [`max_slow_share`](Self::max_slow_share) of them were slow is
    /// overloaded. Without a target, latency is not judged.
    #[must_use]
    pub fn latency_target(mut self, target: std::time::Duration) -> Self {
        self.judge.latency_target_us = Some(crate::clock::to_us(target));
        self
    }

    /// The share of observed responses in a step, in [0, 1), that may be slow before the step
    /// counts as overloaded (default 0: any slow response; 0.05 is "the 95th percentile within
    /// the target").
    pub fn max_slow_share(mut self, share: f64) -> Result<Self, Error> {
        self.judge.max_slow_share = fraction("adaptive max_slow_share", share, true, false)?;
        Ok(self)
    }

    /// The share of observed responses in a step, in [0, 1), that may fail (status 500 or
    /// more, or abandoned: see [`Observation`]) before the step counts as overloaded. Without
    /// it, failures are not judged.
    pub fn max_error_share(mut self, share: f64) -> Result<Self, Error> {
        self.judge.max_error_share = Some(fraction("adaptive max_error_share", share, true, false)?);
        Ok(self)
    }

    /// The adaptive limit, at its base rate.
    pub fn build(self) -> Adaptive {
        let interval_us = crate::clock::to_us(self.interval).max(1);
        let now = self.clock.now_us();
        Adaptive {
            inner: Arc::new(AdaptiveInner {
                base: self.base,
                floor: self.floor,
                decrease: self.decrease,
                increase: self.increase,
                interval_us,
                clock: self.clock,
                gauge: self.gauge,
                factor: AtomicU64::new(1.0f64.to_bits()),
                step_ends_us: AtomicU64::new(now.saturating_add(interval_us)),
                overloaded: std::sync::atomic::AtomicBool::new(false),
                judge: self.judge,
                responses: Tally::default(),
                stepping: parking_lot::Mutex::new(()),
            }),
        }
    }
}

impl RateFn for Adaptive {
    fn rate<'a>(&'a self, _req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Rate> {
        let rate = Adaptive::rate(self);
        Box::pin(async move { rate })
    }

    fn rate_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<Rate> {
        Some(Adaptive::rate(self))
    }

    fn describe(&self, _req: &RequestView<'_>, _ctx: &Context) -> Metadata {
        let rate = Adaptive::rate(self);
        let mut m = Metadata::new();
        m.insert("kind".into(), "adaptive".into());
        m.insert("factor".into(), self.factor().into());
        m.insert("base_limit".into(), self.inner.base.limit().into());
        m.insert("limit".into(), rate.limit().into());
        m
    }
}

impl From<Adaptive> for RateSource {
    fn from(adaptive: Adaptive) -> Self {
        RateSource::Dynamic(Arc::new(adaptive))
    }
}
