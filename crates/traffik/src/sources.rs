//! Rate sources beyond one fixed rate: a rate per tier (a user's plan, an API key's class) and
//! rates by local time of day, and a limit that follows the service's load.
//!
//! A source decides the [`Rate`] of each hit; the strategy and its state stay the same, so a
//! client whose tier changes keeps its usage under the strategy's rate-change rule (README,
//! "When the rate changes"): moving from `100/min` to `1000/min` within a minute keeps the hits
//! already made.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Rate;
use crate::clock::Clock;
use crate::context::Context;
use crate::error::{ConfigError, Error};
use crate::functions::{RateFn, RateSource};
use crate::identity::RequestView;
use futures_core::future::BoxFuture;

pub(crate) type Resolver<K> = dyn Fn(&RequestView<'_>, &Context) -> Option<K> + Send + Sync;

/// A rate per tier. The tier of a hit comes from a resolver over the request and its
/// [`Context`] (never from the storage key, so no path or identity a client sends can pick a
/// tier); a hit whose tier is unknown, or that has none, gets the default tier's rate.
///
/// ```
/// use traffik::sources::Tiers;
/// use traffik::{Context, InMemoryBackend, RequestView, Throttle, rate, strategy::FixedWindow};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// enum Plan { Free, Pro }
///
/// let tiers = Tiers::builder(|_req: &RequestView<'_>, ctx: &Context| ctx.get::<Plan>().cloned())
///     .tier(Plan::Free, rate!("10/min"))
///     .tier(Plan::Pro, rate!("1000/min"))
///     .default_tier(Plan::Free)
///     .build()?;
/// assert_eq!(tiers.rate_of(&Plan::Pro), Some(rate!("1000/min")));
/// let throttle = Throttle::builder()
///     .uid("api")
///     .rate_source(tiers.into())
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .build()?;
/// # let _ = throttle;
/// # Ok::<(), traffik::Error>(())
/// ```
pub struct Tiers<K> {
    resolve: Arc<Resolver<K>>,
    rates: HashMap<K, Rate>,
    default: Rate,
}

impl<K> fmt::Debug for Tiers<K>
where
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tiers").field("rates", &self.rates).field("default", &self.default).finish()
    }
}

impl<K> Tiers<K>
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// Starts a set of tiers whose tier per hit `resolve` tells (`None`: the default tier).
    pub fn builder(
        resolve: impl Fn(&RequestView<'_>, &Context) -> Option<K> + Send + Sync + 'static,
    ) -> TiersBuilder<K> {
        TiersBuilder { resolve: Arc::new(resolve), rates: Vec::new(), default: None }
    }

    /// The rate of `tier`, if it is one of the tiers.
    pub fn rate_of(&self, tier: &K) -> Option<Rate> {
        self.rates.get(tier).copied()
    }

    /// The default tier's rate: for hits without a tier or with an unknown one.
    pub fn default_rate(&self) -> Rate {
        self.default
    }

    /// The rate for one hit.
    pub fn rate_for(&self, req: &RequestView<'_>, ctx: &Context) -> Rate {
        (self.resolve)(req, ctx).and_then(|tier| self.rates.get(&tier).copied()).unwrap_or(self.default)
    }

    /// Tiers already checked by another builder (the priority levels' ceilings).
    pub(crate) fn from_parts(resolve: Arc<Resolver<K>>, rates: HashMap<K, Rate>, default: Rate) -> Tiers<K> {
        Tiers { resolve, rates, default }
    }
}

/// Builds [`Tiers`]: every tier with its rate, then the default tier.
pub struct TiersBuilder<K> {
    resolve: Arc<Resolver<K>>,
    rates: Vec<(K, Rate)>,
    default: Option<K>,
}

impl<K> fmt::Debug for TiersBuilder<K>
where
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiersBuilder").field("rates", &self.rates).field("default", &self.default).finish()
    }
}

impl<K> TiersBuilder<K>
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// Adds a tier and its rate.
    #[must_use]
    pub fn tier(mut self, tier: K, rate: Rate) -> Self {
        self.rates.push((tier, rate));
        self
    }

    /// The tier whose rate applies to hits without a known tier (required).
    #[must_use]
    pub fn default_tier(mut self, tier: K) -> Self {
        self.default = Some(tier);
        self
    }

    /// The tiers, or [`Error::Config`] when there are none, a tier is given twice, or the
    /// default tier is missing or not one of them.
    pub fn build(self) -> Result<Tiers<K>, Error> {
        let mut rates = HashMap::with_capacity(self.rates.len());
        for (tier, rate) in self.rates {
            let text = format!("{tier:?}");
            if rates.insert(tier, rate).is_some() {
                return Err(ConfigError::DuplicateTier { tier: text }.into());
            }
        }
        let Some(default) = self.default else {
            return Err(ConfigError::NoDefaultTier.into());
        };
        let Some(&default_rate) = rates.get(&default) else {
            return Err(ConfigError::UnknownDefaultTier { tier: format!("{default:?}") }.into());
        };
        Ok(Tiers { resolve: self.resolve, rates, default: default_rate })
    }
}

impl<K> RateFn for Tiers<K>
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    fn rate<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, Rate> {
        let rate = self.rate_for(req, ctx);
        Box::pin(async move { rate })
    }

    fn rate_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<Rate> {
        Some(self.rate_for(req, ctx))
    }
}

impl<K> From<Tiers<K>> for RateSource
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    fn from(tiers: Tiers<K>) -> Self {
        RateSource::Dynamic(Arc::new(tiers))
    }
}

/// Rates by local time of day: windows of minutes (`"09:00"` to `"17:00"`, or across midnight,
/// `"22:00"` to `"06:00"`) each with a rate, and a rate for the rest of the day.
///
/// Local time is UTC, a fixed offset ([`utc_offset`](ScheduleBuilder::utc_offset)) or an IANA
/// zone ([`zone`](ScheduleBuilder::zone), with its daylight-saving changes; the zone database is
/// built in). The schedule reads its own clock, the system clock unless
/// [`clock`](ScheduleBuilder::clock) gives it another (give it the throttle's in tests). When
/// a window opens or closes the next hit gets the new rate, and the client's usage carries over
/// under the strategy's rate-change rule (README, "When the rate changes"); windows on whole
/// minutes never cut a fixed window of a minute or a divisor of it in two.
///
/// ```
/// use traffik::sources::Schedule;
/// use traffik::{ManualClock, RequestView, Context, rate};
///
/// // 2026-07-01 08:30 UTC is 10:30 in Berlin (summer time).
/// let clock = ManualClock::new(1_782_894_600_000_000);
/// let schedule = Schedule::builder(rate!("300/min"))
///     .window("09:00", "17:00", rate!("100/min"))?
///     .zone("Europe/Berlin")?
///     .clock(clock.clone())
///     .build();
/// assert_eq!(schedule.rate_for(&RequestView::empty(), &Context::new()), rate!("100/min"));
/// # Ok::<(), traffik::Error>(())
/// ```
pub struct Schedule {
    windows: Vec<Window>,
    otherwise: Rate,
    zone: jiff::tz::TimeZone,
    clock: Arc<dyn Clock>,
    /// The last answer: the UTC minute it holds for (bits 16..) and the index of its rate (0: the
    /// rate otherwise, i: window i - 1), so a hit converts time only once a minute.
    last: AtomicU64,
}

/// A window of local minutes of the day, `[start, end)`, wrapping past midnight when
/// `end <= start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    start: u16,
    end: u16,
    rate: Rate,
}

impl Window {
    fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    fn minutes(&self) -> impl Iterator<Item = u16> + '_ {
        (0..MINUTES_PER_DAY).filter(|&m| self.contains(m))
    }
}

const MINUTES_PER_DAY: u16 = 24 * 60;
const NO_ANSWER: u64 = u64::MAX;

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("windows", &self.windows)
            .field("otherwise", &self.otherwise)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl Schedule {
    /// Starts a schedule whose rate outside every window is `otherwise`.
    pub fn builder(otherwise: Rate) -> ScheduleBuilder {
        ScheduleBuilder { windows: Vec::new(), otherwise, zone: jiff::tz::TimeZone::UTC, clock: crate::clock::system() }
    }

    /// The rate at `now_us` (microseconds since the Unix epoch).
    pub fn rate_at(&self, now_us: u64) -> Rate {
        let minute = now_us / 60_000_000;
        let last = self.last.load(Ordering::Relaxed);
        let index = if last != NO_ANSWER && last >> 16 == minute {
            (last & 0xffff) as usize
        } else {
            let index = self.index_at(now_us);
            // Minutes since 1970 fit in 48 bits for eight million years.
            if minute < 1 << 48 {
                self.last.store(minute << 16 | index as u64, Ordering::Relaxed);
            }
            index
        };
        match index.checked_sub(1).and_then(|i| self.windows.get(i)) {
            Some(w) => w.rate,
            None => self.otherwise,
        }
    }

    /// The rate for one hit, at the schedule's clock's time.
    pub fn rate_for(&self, _req: &RequestView<'_>, _ctx: &Context) -> Rate {
        self.rate_at(self.clock.now_us())
    }

    /// 0 for the rate otherwise, i for window i - 1.
    fn index_at(&self, now_us: u64) -> usize {
        let local = self.local_minute(now_us);
        self.windows.iter().position(|w| w.contains(local)).map_or(0, |i| i + 1)
    }

    /// The local minute of the day at `now_us`.
    fn local_minute(&self, now_us: u64) -> u16 {
        let seconds = i64::try_from(now_us / 1_000_000).unwrap_or(i64::MAX);
        // Offsets are read for times jiff can represent (years -9999 to 9999); beyond, the
        // offset of the last representable instant stands.
        let at =
            jiff::Timestamp::from_second(seconds.min(jiff::Timestamp::MAX.as_second())).unwrap_or(jiff::Timestamp::MAX);
        let offset = i64::from(self.zone.to_offset(at).seconds());
        let local = seconds.saturating_add(offset).rem_euclid(86_400);
        (local / 60) as u16
    }
}

/// Builds a [`Schedule`].
pub struct ScheduleBuilder {
    windows: Vec<Window>,
    otherwise: Rate,
    zone: jiff::tz::TimeZone,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ScheduleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleBuilder")
            .field("windows", &self.windows)
            .field("otherwise", &self.otherwise)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

/// Parses `"HH:MM"` (24-hour, `"24:00"` for the end of the day) into minutes of the day.
fn minute_of_day(text: &str) -> Result<u16, Error> {
    let bad = || Error::Config(ConfigError::TimeOfDay { text: text.to_owned() });
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl ScheduleBuilder {
    /// Adds a window from `start` to `end` (local `"HH:MM"`, the end excluded; an end before the
    /// start wraps past midnight, an end equal to the start covers the whole day) with its
    /// rate. A bad time or a window overlapping an earlier one is [`Error::Config`].
    pub fn window(mut self, start: &str, end: &str, rate: Rate) -> Result<Self, Error> {
        // A window whose end is its start covers the whole day.
        let (start, end) = (minute_of_day(start)? % MINUTES_PER_DAY, minute_of_day(end)? % MINUTES_PER_DAY);
        let window = Window { start, end, rate };
        if let Some(other) = self.windows.iter().find(|w| window.minutes().any(|m| w.contains(m))) {
            let text =
                |w: &Window| format!("{:02}:{:02}-{:02}:{:02}", w.start / 60, w.start % 60, w.end / 60, w.end % 60);
            return Err(ConfigError::OverlappingWindows { window: text(&window), other: text(other) }.into());
        }
        if self.windows.len() >= usize::from(u16::MAX) - 1 {
            return Err(ConfigError::TooManyWindows.into());
        }
        self.windows.push(window);
        Ok(self)
    }

    /// Local time is UTC shifted by `minutes` (e.g. `-300` for UTC-05:00), all year round.
    pub fn utc_offset(mut self, minutes: i32) -> Result<Self, Error> {
        let offset = minutes
            .checked_mul(60)
            .and_then(|s| jiff::tz::Offset::from_seconds(s).ok())
            .ok_or(ConfigError::UtcOffset { minutes })?;
        self.zone = jiff::tz::TimeZone::fixed(offset);
        Ok(self)
    }

    /// Local time is that of the IANA zone `name` (e.g. `"America/New_York"`), daylight saving
    /// included. An unknown zone is [`Error::Config`].
    pub fn zone(mut self, name: &str) -> Result<Self, Error> {
        self.zone = jiff::tz::TimeZone::get(name)
            .map_err(|e| ConfigError::TimeZone { name: name.to_owned(), reason: e.to_string() })?;
        Ok(self)
    }

    /// The clock the schedule reads (the system clock by default).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The schedule.
    pub fn build(self) -> Schedule {
        Schedule {
            windows: self.windows,
            otherwise: self.otherwise,
            zone: self.zone,
            clock: self.clock,
            last: AtomicU64::new(NO_ANSWER),
        }
    }
}

impl RateFn for Schedule {
    fn rate<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, Rate> {
        let rate = self.rate_for(req, ctx);
        Box::pin(async move { rate })
    }

    fn rate_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<Rate> {
        Some(self.rate_for(req, ctx))
    }
}

impl From<Schedule> for RateSource {
    fn from(schedule: Schedule) -> Self {
        RateSource::Dynamic(Arc::new(schedule))
    }
}

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
/// target, or a gauge ([`AdaptiveBuilder::gauge`]) read once per step. Every
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
        let overloaded = i.overloaded.swap(false, Ordering::Relaxed) || gauge;
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
            tracing::info!(base = %i.base, from = before, to = factor, overloaded, "adaptive limit moved");
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
}

impl fmt::Debug for AdaptiveBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveBuilder")
            .field("base", &self.base)
            .field("floor", &self.floor)
            .field("decrease", &self.decrease)
            .field("increase", &self.increase)
            .field("interval", &self.interval)
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
}

impl From<Adaptive> for RateSource {
    fn from(adaptive: Adaptive) -> Self {
        RateSource::Dynamic(Arc::new(adaptive))
    }
}
