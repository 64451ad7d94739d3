//! [`Rate`]: how many hits a client may make in how long.
//!
//! One parser serves every entry point: [`Rate::parse`], `str::parse::<Rate>()`, serde, and the
//! [`rate!`](crate::rate!) macro, which runs the same `const fn` at compile time so a bad literal
//! is a compile error.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

const MS_PER_SECOND: u64 = 1_000;
const MS_PER_MINUTE: u64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: u64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: u64 = 24 * MS_PER_HOUR;

/// A rate limit: at most `limit` units of cost per `period`.
///
/// `Rate::unlimited()` (written `"0/0"`) admits everything and never touches a backend.
///
/// ```
/// use traffik::{rate, Rate};
/// use std::time::Duration;
///
/// let r: Rate = "100/min".parse()?;
/// assert_eq!(r.limit(), 100);
/// assert_eq!(r.period(), Duration::from_secs(60));
/// assert_eq!(r, rate!("100 per minute"));
/// assert_eq!(r.to_string(), "100/min");
/// # Ok::<(), traffik::RateError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    limit: u32,
    period_ms: u64,
    /// [`Rate::emission_interval_us`], computed once (strategies need it on every decision).
    interval_us: u64,
}

impl Rate {
    /// The longest period a rate may have: 3660 days (about ten years).
    pub const MAX_PERIOD: Duration = Duration::from_millis(Self::MAX_PERIOD_MS);
    const MAX_PERIOD_MS: u64 = 3660 * MS_PER_DAY;

    /// The one constructor: every other goes through it, so `interval_us` is always derived.
    const fn raw(limit: u32, period_ms: u64) -> Rate {
        let interval_us = if limit == 0 {
            0
        } else {
            let t = (period_ms * 1000).div_ceil(limit as u64);
            if t == 0 { 1 } else { t }
        };
        Rate { limit, period_ms, interval_us }
    }

    /// A rate that admits everything (`"0/0"`).
    pub const fn unlimited() -> Rate {
        Rate::raw(0, 0)
    }

    /// `limit` per second.
    pub const fn per_second(limit: NonZeroU32) -> Rate {
        Rate::raw(limit.get(), MS_PER_SECOND)
    }

    /// `limit` per minute.
    pub const fn per_minute(limit: NonZeroU32) -> Rate {
        Rate::raw(limit.get(), MS_PER_MINUTE)
    }

    /// `limit` per hour.
    pub const fn per_hour(limit: NonZeroU32) -> Rate {
        Rate::raw(limit.get(), MS_PER_HOUR)
    }

    /// `limit` per day.
    pub const fn per_day(limit: NonZeroU32) -> Rate {
        Rate::raw(limit.get(), MS_PER_DAY)
    }

    /// `limit` per `period_ms` milliseconds.
    ///
    /// `(0, 0)` is [`Rate::unlimited`]. A zero period with a non-zero limit, a zero limit with a
    /// non-zero period and periods longer than [`Rate::MAX_PERIOD`] are rejected.
    pub const fn per_millis(limit: u32, period_ms: u64) -> Result<Rate, RateError> {
        Self::checked(limit, period_ms, 0)
    }

    /// `limit` per `period`; the period must be a whole number of milliseconds.
    pub fn new(limit: u32, period: Duration) -> Result<Rate, RateError> {
        if !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(RateError::new(RateErrorKind::SubMillisecondPeriod, 0));
        }
        let ms = u64::try_from(period.as_millis()).map_err(|_| RateError::new(RateErrorKind::PeriodTooLong, 0))?;
        Self::checked(limit, ms, 0)
    }

    const fn checked(limit: u32, period_ms: u64, at: usize) -> Result<Rate, RateError> {
        if limit == 0 && period_ms == 0 {
            return Ok(Rate::unlimited());
        }
        if period_ms == 0 {
            return Err(RateError::new(RateErrorKind::ZeroPeriod, at));
        }
        if limit == 0 {
            return Err(RateError::new(RateErrorKind::ZeroLimit, at));
        }
        if period_ms > Self::MAX_PERIOD_MS {
            return Err(RateError::new(RateErrorKind::PeriodTooLong, at));
        }
        Ok(Rate::raw(limit, period_ms))
    }

    /// Parses a rate string; see the [crate docs](crate#rate-strings) for the accepted forms.
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        Self::parse_const(text)
    }

    /// The `const` parser behind [`Rate::parse`] and [`rate!`](crate::rate!).
    pub const fn parse_const(text: &str) -> Result<Rate, RateError> {
        let b = text.as_bytes();
        let mut i = skip_ws(b, 0);
        if i == b.len() {
            return Err(RateError::new(RateErrorKind::Empty, 0));
        }
        // limit
        let (limit, next) = match number(b, i) {
            Ok(v) => v,
            Err(e) => return Err(e),
        };
        if limit > u32::MAX as u64 {
            return Err(RateError::new(RateErrorKind::NumberTooLarge, i));
        }
        i = skip_ws(b, next);
        // separator: "/" or "per"
        if i < b.len() && b[i] == b'/' {
            i += 1;
        } else if starts_with_ignore_case(b, i, b"per") {
            i += 3;
        } else {
            return Err(RateError::new(RateErrorKind::MissingSeparator, i));
        }
        i = skip_ws(b, i);
        // optional period count
        let mut count: u64 = 1;
        let mut has_count = false;
        let count_at = i;
        if i < b.len() && (b[i].is_ascii_digit() || b[i] == b'-' || b[i] == b'+' || b[i] == b'.') {
            let (c, next) = match number(b, i) {
                Ok(v) => v,
                Err(e) => return Err(e),
            };
            count = c;
            has_count = true;
            i = skip_ws(b, next);
        }
        // unit
        let unit_at = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms = if unit_at == i {
            if has_count && count == 0 {
                0
            } else if has_count {
                return Err(RateError::new(RateErrorKind::MissingUnit, unit_at));
            } else if unit_at == b.len() {
                return Err(RateError::new(RateErrorKind::MissingPeriod, unit_at));
            } else {
                return Err(RateError::new(RateErrorKind::UnexpectedCharacter, unit_at));
            }
        } else {
            match unit_millis(b, unit_at, i) {
                Some(ms) => ms,
                None => return Err(RateError::new(RateErrorKind::UnknownUnit, unit_at)),
            }
        };
        let end = skip_ws(b, i);
        if end != b.len() {
            return Err(RateError::new(RateErrorKind::TrailingCharacters, end));
        }
        let period_ms = match count.checked_mul(unit_ms) {
            Some(ms) => ms,
            None => return Err(RateError::new(RateErrorKind::PeriodTooLong, count_at)),
        };
        Self::checked(limit as u32, period_ms, count_at)
    }

    /// Most cost admitted per period (0 when unlimited).
    pub const fn limit(&self) -> u64 {
        self.limit as u64
    }

    /// Length of one period ([`Duration::ZERO`] when unlimited).
    pub const fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// Length of one period in milliseconds (the seed's `expire`).
    pub const fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Length of one period in microseconds, the unit strategies compute in.
    pub const fn period_us(&self) -> u64 {
        self.period_ms * 1_000
    }

    /// Whether this rate admits everything.
    pub const fn is_unlimited(&self) -> bool {
        self.limit == 0
    }

    /// Whether the period is shorter than one second.
    pub const fn is_subsecond(&self) -> bool {
        !self.is_unlimited() && self.period_ms < MS_PER_SECOND
    }

    /// Requests per second (`f64::INFINITY` when unlimited).
    pub fn rps(&self) -> f64 {
        self.per(MS_PER_SECOND)
    }

    /// Requests per minute.
    pub fn rpm(&self) -> f64 {
        self.per(MS_PER_MINUTE)
    }

    /// Requests per hour.
    pub fn rph(&self) -> f64 {
        self.per(MS_PER_HOUR)
    }

    /// Requests per day.
    pub fn rpd(&self) -> f64 {
        self.per(MS_PER_DAY)
    }

    fn per(&self, span_ms: u64) -> f64 {
        if self.is_unlimited() {
            return f64::INFINITY;
        }
        self.limit as f64 * span_ms as f64 / self.period_ms as f64
    }

    /// Microseconds between two unit-cost admissions at this rate, rounded up so that rounding
    /// never admits more than the rate allows. Always at least 1.
    pub const fn emission_interval_us(&self) -> u64 {
        self.interval_us
    }
}

impl Default for Rate {
    fn default() -> Self {
        Rate::unlimited()
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({self})")
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("0/0");
        }
        let ms = self.period_ms;
        let (count, unit) = if ms.is_multiple_of(MS_PER_DAY) {
            (ms / MS_PER_DAY, "d")
        } else if ms.is_multiple_of(MS_PER_HOUR) {
            (ms / MS_PER_HOUR, "h")
        } else if ms.is_multiple_of(MS_PER_MINUTE) {
            (ms / MS_PER_MINUTE, "min")
        } else if ms.is_multiple_of(MS_PER_SECOND) {
            (ms / MS_PER_SECOND, "s")
        } else {
            (ms, "ms")
        };
        if count == 1 { write!(f, "{}/{}", self.limit, unit) } else { write!(f, "{}/{}{}", self.limit, count, unit) }
    }
}

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s)
    }
}

impl TryFrom<&str> for Rate {
    type Error = RateError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Rate::parse(s)
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a rate could not be built, and at which byte of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateError {
    kind: RateErrorKind,
    position: usize,
}

/// The kinds of [`RateError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateErrorKind {
    /// The string is empty or only whitespace.
    Empty,
    /// A number was expected.
    ExpectedNumber,
    /// Negative numbers are not rates.
    NegativeNumber,
    /// Only whole numbers are accepted.
    NotAnInteger,
    /// The number does not fit (limits are at most `u32::MAX`).
    NumberTooLarge,
    /// Neither `/` nor `per` follows the limit.
    MissingSeparator,
    /// Nothing follows the separator.
    MissingPeriod,
    /// A period count without a unit, such as `"5/10"`.
    MissingUnit,
    /// The unit is not one of ms, s, m, h, d and their long forms.
    UnknownUnit,
    /// A character that cannot start a period.
    UnexpectedCharacter,
    /// Text after a complete rate.
    TrailingCharacters,
    /// A non-zero limit over a zero period.
    ZeroPeriod,
    /// A zero limit over a non-zero period (`"0/0"` is the unlimited rate).
    ZeroLimit,
    /// The period is longer than [`Rate::MAX_PERIOD`].
    PeriodTooLong,
    /// The period is not a whole number of milliseconds.
    SubMillisecondPeriod,
}

impl RateError {
    const fn new(kind: RateErrorKind, position: usize) -> Self {
        RateError { kind, position }
    }

    /// What is wrong.
    pub const fn kind(&self) -> RateErrorKind {
        self.kind
    }

    /// Byte offset in the input where the problem was found.
    pub const fn position(&self) -> usize {
        self.position
    }

    /// A sentence describing the problem (usable in `const` contexts).
    pub const fn message(&self) -> &'static str {
        match self.kind {
            RateErrorKind::Empty => "the rate is empty; expected something like \"100/min\"",
            RateErrorKind::ExpectedNumber => "expected a whole number",
            RateErrorKind::NegativeNumber => "negative numbers are not allowed in a rate",
            RateErrorKind::NotAnInteger => "only whole numbers are allowed in a rate",
            RateErrorKind::NumberTooLarge => "the number is too large (limits are at most 4294967295)",
            RateErrorKind::MissingSeparator => "expected '/' or 'per' after the limit",
            RateErrorKind::MissingPeriod => "expected a period such as 's', '5m' or '2 hours' after the separator",
            RateErrorKind::MissingUnit => "the period needs a unit (ms, s, m, h or d)",
            RateErrorKind::UnknownUnit => {
                "unknown unit; use ms, s, sec, second(s), m, min, minute(s), h, hr, hour(s), d or day(s)"
            }
            RateErrorKind::UnexpectedCharacter => "unexpected character where the period should start",
            RateErrorKind::TrailingCharacters => "unexpected text after the rate",
            RateErrorKind::ZeroPeriod => "a non-zero limit needs a non-zero period",
            RateErrorKind::ZeroLimit => "a zero limit needs a zero period (\"0/0\" means unlimited)",
            RateErrorKind::PeriodTooLong => "the period is longer than the 3660 days a rate may span",
            RateErrorKind::SubMillisecondPeriod => "the period must be a whole number of milliseconds",
        }
    }
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rate at byte {}: {}", self.position, self.message())
    }
}

impl std::error::Error for RateError {}

const fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Parses an unsigned integer at `i`; returns the value and the index after it.
const fn number(b: &[u8], i: usize) -> Result<(u64, usize), RateError> {
    if i < b.len() && b[i] == b'-' {
        return Err(RateError::new(RateErrorKind::NegativeNumber, i));
    }
    let mut j = i;
    let mut value: u64 = 0;
    while j < b.len() && b[j].is_ascii_digit() {
        let digit = (b[j] - b'0') as u64;
        value = match value.checked_mul(10) {
            Some(v) => match v.checked_add(digit) {
                Some(v) => v,
                None => return Err(RateError::new(RateErrorKind::NumberTooLarge, i)),
            },
            None => return Err(RateError::new(RateErrorKind::NumberTooLarge, i)),
        };
        j += 1;
    }
    if j < b.len() && (b[j] == b'.' || b[j] == b',') && j + 1 < b.len() && b[j + 1].is_ascii_digit() {
        return Err(RateError::new(RateErrorKind::NotAnInteger, i));
    }
    if j == i {
        if i < b.len() && b[i] == b'.' {
            return Err(RateError::new(RateErrorKind::NotAnInteger, i));
        }
        return Err(RateError::new(RateErrorKind::ExpectedNumber, i));
    }
    Ok((value, j))
}

const fn starts_with_ignore_case(b: &[u8], at: usize, word: &[u8]) -> bool {
    if at + word.len() > b.len() {
        return false;
    }
    let mut k = 0;
    while k < word.len() {
        if b[at + k].to_ascii_lowercase() != word[k] {
            return false;
        }
        k += 1;
    }
    true
}

const fn eq_ignore_case(b: &[u8], start: usize, end: usize, word: &[u8]) -> bool {
    end - start == word.len() && starts_with_ignore_case(b, start, word)
}

const UNITS: &[(&[u8], u64)] = &[
    (b"ms", 1),
    (b"msec", 1),
    (b"msecs", 1),
    (b"millisecond", 1),
    (b"milliseconds", 1),
    (b"s", MS_PER_SECOND),
    (b"sec", MS_PER_SECOND),
    (b"secs", MS_PER_SECOND),
    (b"second", MS_PER_SECOND),
    (b"seconds", MS_PER_SECOND),
    (b"m", MS_PER_MINUTE),
    (b"min", MS_PER_MINUTE),
    (b"mins", MS_PER_MINUTE),
    (b"minute", MS_PER_MINUTE),
    (b"minutes", MS_PER_MINUTE),
    (b"h", MS_PER_HOUR),
    (b"hr", MS_PER_HOUR),
    (b"hrs", MS_PER_HOUR),
    (b"hour", MS_PER_HOUR),
    (b"hours", MS_PER_HOUR),
    (b"d", MS_PER_DAY),
    (b"day", MS_PER_DAY),
    (b"days", MS_PER_DAY),
];

const fn unit_millis(b: &[u8], start: usize, end: usize) -> Option<u64> {
    let mut k = 0;
    while k < UNITS.len() {
        if eq_ignore_case(b, start, end, UNITS[k].0) {
            return Some(UNITS[k].1);
        }
        k += 1;
    }
    None
}

/// Builds a [`Rate`] from a string literal, checked at compile time.
///
/// ```
/// let r = traffik::rate!("2/5s");
/// assert_eq!(r.limit(), 2);
/// ```
///
/// A bad literal does not compile:
///
/// ```compile_fail
/// let r = traffik::rate!("5/fortnight");
/// ```
#[macro_export]
macro_rules! rate {
    ($text:literal) => {{
        const RATE: $crate::Rate = match $crate::Rate::parse_const($text) {
            ::core::result::Result::Ok(rate) => rate,
            ::core::result::Result::Err(error) => ::core::panic!("{}", error.message()),
        };
        RATE
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (u64, u64) {
        let r = Rate::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        (r.limit(), r.period_ms())
    }

    fn err(s: &str) -> RateErrorKind {
        match Rate::parse(s) {
            Ok(r) => panic!("{s:?} parsed as {r}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn accepts_every_seed_form() {
        assert_eq!(ok("5/m"), (5, 60_000));
        assert_eq!(ok("2/5s"), (2, 5_000));
        assert_eq!(ok("10/30 seconds"), (10, 30_000));
        assert_eq!(ok("2 per second"), (2, 1_000));
        assert_eq!(ok("2 persecond"), (2, 1_000));
        assert_eq!(ok("1000/500ms"), (1000, 500));
        assert_eq!(ok("20 per 2 mins"), (20, 120_000));
        assert_eq!(ok("100/minute"), (100, 60_000));
        assert_eq!(ok("5/10seconds"), (5, 10_000));
        assert_eq!(ok("5 per hour"), (5, 3_600_000));
        assert_eq!(ok("3/d"), (3, 86_400_000));
        assert_eq!(ok("3/2days"), (3, 172_800_000));
        assert_eq!(ok("1/hr"), (1, 3_600_000));
        assert_eq!(ok("7/3 milliseconds"), (7, 3));
        assert!(Rate::parse("0/0").unwrap().is_unlimited());
        assert!(Rate::parse("0/0s").unwrap().is_unlimited());
    }

    #[test]
    fn is_case_insensitive_and_trims() {
        assert_eq!(ok("  10 PER Minute  "), (10, 60_000));
        assert_eq!(ok("\t4/5S\n"), (4, 5_000));
        assert_eq!(ok("4 PerSecond"), (4, 1_000));
    }

    #[test]
    fn rejects_bad_input_with_kind_and_position() {
        assert_eq!(err(""), RateErrorKind::Empty);
        assert_eq!(err("   "), RateErrorKind::Empty);
        assert_eq!(err("abc"), RateErrorKind::ExpectedNumber);
        assert_eq!(err("-5/m"), RateErrorKind::NegativeNumber);
        assert_eq!(err("5/-1m"), RateErrorKind::NegativeNumber);
        assert_eq!(err("1.5/s"), RateErrorKind::NotAnInteger);
        assert_eq!(err("5/1.5s"), RateErrorKind::NotAnInteger);
        assert_eq!(err("5/.5s"), RateErrorKind::NotAnInteger);
        assert_eq!(err("5 m"), RateErrorKind::MissingSeparator);
        assert_eq!(err("5"), RateErrorKind::MissingSeparator);
        assert_eq!(err("5/"), RateErrorKind::MissingPeriod);
        assert_eq!(err("5/10"), RateErrorKind::MissingUnit);
        assert_eq!(err("5/fortnight"), RateErrorKind::UnknownUnit);
        assert_eq!(err("5/m extra"), RateErrorKind::TrailingCharacters);
        assert_eq!(err("5/m/s"), RateErrorKind::TrailingCharacters);
        assert_eq!(err("5/0s"), RateErrorKind::ZeroPeriod);
        assert_eq!(err("5/0"), RateErrorKind::ZeroPeriod);
        assert_eq!(err("0/5s"), RateErrorKind::ZeroLimit);
        assert_eq!(err("4294967296/s"), RateErrorKind::NumberTooLarge);
        assert_eq!(err("99999999999999999999999/s"), RateErrorKind::NumberTooLarge);
        assert_eq!(err("1/99999999999999999 days"), RateErrorKind::PeriodTooLong);
        assert_eq!(err("1/3661d"), RateErrorKind::PeriodTooLong);
        assert_eq!(err("5/#"), RateErrorKind::UnexpectedCharacter);
        let e = Rate::parse("10/5 parsecs").unwrap_err();
        assert_eq!(e.position(), 5);
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for s in ["100/min", "2/5s", "1000/500ms", "3/d", "7/2h", "0/0", "1/90s", "9/1500ms"] {
            let r = Rate::parse(s).unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(Rate::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn accessors() {
        let r = rate!("120/min");
        assert_eq!(r.rps(), 2.0);
        assert_eq!(r.rpm(), 120.0);
        assert_eq!(r.rph(), 7200.0);
        assert_eq!(r.rpd(), 172_800.0);
        assert!(!r.is_subsecond());
        assert!(rate!("10/500ms").is_subsecond());
        assert_eq!(Rate::unlimited().rps(), f64::INFINITY);
        assert_eq!(rate!("3/s").emission_interval_us(), 333_334);
        assert_eq!(rate!("4/s").emission_interval_us(), 250_000);
    }

    #[test]
    fn constructors_validate() {
        let five = NonZeroU32::new(5).unwrap();
        assert_eq!(Rate::per_second(five), rate!("5/s"));
        assert_eq!(Rate::per_minute(five), rate!("5/m"));
        assert_eq!(Rate::per_hour(five), rate!("5/h"));
        assert_eq!(Rate::per_day(five), rate!("5/d"));
        assert_eq!(Rate::per_millis(5, 250).unwrap(), rate!("5/250ms"));
        assert_eq!(Rate::new(5, Duration::from_secs(2)).unwrap(), rate!("5/2s"));
        assert_eq!(Rate::new(5, Duration::from_micros(1500)).unwrap_err().kind(), RateErrorKind::SubMillisecondPeriod);
        assert_eq!(Rate::per_millis(5, 0).unwrap_err().kind(), RateErrorKind::ZeroPeriod);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let r = rate!("2/5s");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"2/5s\"");
        assert_eq!(serde_json::from_str::<Rate>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Rate>("\"2/5 fortnights\"").is_err());
    }
}
