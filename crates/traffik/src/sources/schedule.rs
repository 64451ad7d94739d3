//! Rates by local time of day.

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

    /// `"HH:MM-HH:MM"`.
    fn text(&self) -> String {
        let (s, e) = (self.start, self.end);
        format!("{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
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

    /// What `stat` shows about the schedule at `now_us`: the window in force (`"09:00-17:00"`,
    /// local time) or `null` outside every window.
    pub fn describe_at(&self, now_us: u64) -> Metadata {
        let window = self.index_at(now_us).checked_sub(1).and_then(|i| self.windows.get(i));
        let mut m = Metadata::new();
        m.insert("kind".into(), "schedule".into());
        m.insert("window".into(), window.map_or(serde_json::Value::Null, |w| w.text().into()));
        m
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
            return Err(ConfigError::OverlappingWindows { window: window.text(), other: other.text() }.into());
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

    fn describe(&self, _req: &RequestView<'_>, _ctx: &Context) -> Metadata {
        self.describe_at(self.clock.now_us())
    }
}

impl From<Schedule> for RateSource {
    fn from(schedule: Schedule) -> Self {
        RateSource::Dynamic(Arc::new(schedule))
    }
}
