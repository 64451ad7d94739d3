//! Rates by local time of day: windows in UTC, fixed offsets and IANA zones across daylight
//! saving changes, with a manual clock (no test reads the wall clock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use traffik::sources::Schedule;
use traffik::strategy::FixedWindow;
use traffik::{Clock, ConfigError, Context, Error, InMemoryBackend, ManualClock, Rate, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory hit waited"),
    }
}

const DAY: Rate = rate!("100/min");
const OTHERWISE: Rate = rate!("300/min");

fn us(unix_seconds: u64) -> u64 {
    unix_seconds * 1_000_000
}

fn office_hours() -> traffik::sources::ScheduleBuilder {
    Schedule::builder(OTHERWISE).window("09:00", "17:00", DAY).unwrap()
}

#[test]
fn windows_in_utc_open_and_close_on_the_minute() {
    let s = office_hours().build();
    // 2026-12-03, UTC.
    for (at, want) in [
        (1_796_288_340, OTHERWISE), // 08:59
        (1_796_288_400, DAY),       // 09:00
        (1_796_317_140, DAY),       // 16:59
        (1_796_317_200, OTHERWISE), // 17:00
        (1_796_288_340, OTHERWISE), // back to 08:59: the per-minute answer is not stale
    ] {
        assert_eq!(s.rate_at(us(at)), want, "at {at}");
    }
    assert_eq!(s.rate_at(us(1_796_288_400) + 59_999_999), DAY, "09:00:59.999999");
}

#[test]
fn a_window_can_wrap_past_midnight() {
    let s = Schedule::builder(OTHERWISE).window("22:00", "06:00", DAY).unwrap().build();
    assert_eq!(s.rate_at(us(1_796_340_600)), DAY, "23:30");
    assert_eq!(s.rate_at(us(1_796_363_940)), DAY, "05:59 the next day");
    assert_eq!(s.rate_at(us(1_796_364_000)), OTHERWISE, "06:00");
}

#[test]
fn a_fixed_offset_shifts_every_window() {
    // UTC-05:00: 14:00 UTC is 09:00 local.
    let s = office_hours().utc_offset(-300).unwrap().build();
    assert_eq!(s.rate_at(us(1_796_306_400)), DAY);
    assert_eq!(s.rate_at(us(1_796_306_400 - 60)), OTHERWISE);
}

#[test]
fn a_zone_follows_daylight_saving_time() {
    let s = office_hours().zone("Europe/Berlin").unwrap().build();
    // 07:30 UTC is 08:30 in January (UTC+1) and 09:30 in July (UTC+2).
    assert_eq!(s.rate_at(us(1_768_462_200)), OTHERWISE, "January");
    assert_eq!(s.rate_at(us(1_784_100_600)), DAY, "July");
    // 2026-03-29, clocks go forward at 01:00 UTC: 09:00 local is 07:00 UTC that day.
    assert_eq!(s.rate_at(us(1_774_767_540)), OTHERWISE, "06:59 UTC = 08:59 CEST");
    assert_eq!(s.rate_at(us(1_774_767_600)), DAY, "07:00 UTC = 09:00 CEST");
    // 2026-10-25, clocks go back at 01:00 UTC: 09:00 local is 08:00 UTC that day.
    assert_eq!(s.rate_at(us(1_792_915_140)), OTHERWISE, "07:59 UTC = 08:59 CET");
    assert_eq!(s.rate_at(us(1_792_915_200)), DAY, "08:00 UTC = 09:00 CET");
    // The hour skipped in spring never happens: 01:59 CET is followed by 03:00 CEST.
    let skipped = Schedule::builder(OTHERWISE).window("02:00", "03:00", DAY).unwrap().zone("Europe/Berlin").unwrap();
    let skipped = skipped.build();
    assert_eq!(skipped.rate_at(us(1_774_745_940)), OTHERWISE, "00:59 UTC = 01:59 CET");
    assert_eq!(skipped.rate_at(us(1_774_746_000)), OTHERWISE, "01:00 UTC = 03:00 CEST");
}

#[test]
fn extreme_clocks_still_answer() {
    let s = office_hours().zone("America/New_York").unwrap().build();
    for now in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let r = s.rate_at(now);
        assert!(r == DAY || r == OTHERWISE, "{now}: {r}");
    }
}

#[test]
fn bad_schedules_are_typed_errors() {
    for bad in ["9:5", "25:00", "12:60", "ab:cd", "24:01", "", "12", "-1:00", "1200", "12:000"] {
        let got = Schedule::builder(OTHERWISE).window(bad, "17:00", DAY);
        assert!(matches!(got, Err(Error::Config(ConfigError::TimeOfDay { .. }))), "{bad:?}: {got:?}");
    }
    let overlap = office_hours().window("16:00", "18:00", OTHERWISE);
    assert!(matches!(overlap, Err(Error::Config(ConfigError::OverlappingWindows { .. }))), "{overlap:?}");
    let wrapped_overlap = office_hours().window("20:00", "09:30", OTHERWISE);
    assert!(
        matches!(wrapped_overlap, Err(Error::Config(ConfigError::OverlappingWindows { .. }))),
        "{wrapped_overlap:?}"
    );
    assert!(matches!(office_hours().zone("Mars/Olympus_Mons"), Err(Error::Config(ConfigError::TimeZone { .. }))));
    assert!(matches!(office_hours().utc_offset(i32::MAX), Err(Error::Config(ConfigError::UtcOffset { .. }))));
    assert!(matches!(office_hours().utc_offset(26 * 60), Err(Error::Config(ConfigError::UtcOffset { minutes: 1560 }))));
    // Adjacent windows do not overlap; "24:00" ends the day.
    assert!(office_hours().window("17:00", "24:00", rate!("200/min")).is_ok());
}

/// On a throttle: the schedule and the throttle read the same manual clock; when the window
/// closes, the next minute's window is counted under the evening rate.
#[test]
fn a_throttle_follows_its_schedule() {
    let clock = ManualClock::new(us(1_796_317_140)); // 16:59 UTC
    let schedule = Schedule::builder(rate!("5/min")).window("09:00", "17:00", rate!("2/min")).unwrap();
    let throttle = Throttle::builder()
        .uid("schedule")
        .rate_source(schedule.clock(clock.clone()).build().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let view = RequestView::empty();
    let admitted = || {
        (0..20).take_while(|_| now_or_never(throttle.hit_with(&view, &Context::new())).unwrap().is_allowed()).count()
    };
    assert_eq!(admitted(), 2, "office hours");
    clock.set_us(clock.now_us() + 60_000_000); // 17:00
    assert_eq!(admitted(), 5, "evening");
}

/// `stat` names the window in force (local time), or none outside every window.
#[test]
fn stat_names_the_window_in_force() {
    let clock = ManualClock::new(us(1_796_317_140)); // 16:59 UTC
    let schedule = Schedule::builder(rate!("5/min")).window("09:00", "17:00", rate!("2/min")).unwrap();
    let throttle = Throttle::builder()
        .uid("schedule-stat")
        .rate_source(schedule.clock(clock.clone()).build().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let view = RequestView::empty();
    let source = || now_or_never(throttle.stat(&view)).unwrap().into_limited().unwrap().metadata["source"].clone();
    assert_eq!(source(), serde_json::json!({"kind": "schedule", "window": "09:00-17:00"}));
    clock.set_us(clock.now_us() + 60_000_000); // 17:00
    assert_eq!(source(), serde_json::json!({"kind": "schedule", "window": null}));
}
