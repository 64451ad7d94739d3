//! Time sources. Strategies never read a clock; the throttle reads one and passes `now` down.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in integer microseconds since the Unix epoch.
///
/// Implementations must be cheap: the throttle reads the clock once per decision.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The wall clock.
///
/// Reading the operating system's wall clock costs a few tens of nanoseconds, a noticeable part
/// of an in-memory decision. `SystemClock` instead reads the CPU's monotonic counter (through
/// `quanta`, which falls back to the OS clock where that counter is unreliable) and adds an offset
/// to the wall clock that is re-measured every second, so it tracks `SystemTime::now()` to within
/// microseconds, including its steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The one `SystemClock` every throttle built without a clock shares, so a group can tell that
/// its members read the same clock (and read it once per decision).
static SHARED_SYSTEM: LazyLock<Arc<dyn Clock>> = LazyLock::new(|| Arc::new(SystemClock));

/// The shared system clock.
pub(crate) fn system() -> Arc<dyn Clock> {
    Arc::clone(&SHARED_SYSTEM)
}

struct Anchored {
    clock: quanta::Clock,
    /// Raw counter value at the anchor.
    start: u64,
    /// Wall-clock microseconds minus monotonic microseconds since `start`.
    offset_us: AtomicU64,
    /// Monotonic microseconds at which to re-measure the offset.
    next_sync_us: AtomicU64,
}

const RESYNC_US: u64 = 1_000_000;

static WALL: LazyLock<Anchored> = LazyLock::new(|| {
    let clock = quanta::Clock::new();
    let start = clock.raw();
    Anchored { clock, start, offset_us: AtomicU64::new(os_now_us()), next_sync_us: AtomicU64::new(RESYNC_US) }
});

/// Microseconds since the epoch from the operating system.
pub(crate) fn os_now_us() -> u64 {
    // A clock set before 1970 reads as the epoch rather than failing a request.
    SystemTime::now().duration_since(UNIX_EPOCH).map(to_us).unwrap_or(0)
}

impl Anchored {
    /// Monotonic microseconds since the anchor.
    fn mono_us(&self) -> u64 {
        self.clock.delta_as_nanos(self.start, self.clock.raw()) / 1_000
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        let w = &*WALL;
        let mono = w.mono_us();
        let due = w.next_sync_us.load(Ordering::Relaxed);
        if mono >= due
            && w.next_sync_us.compare_exchange(due, mono + RESYNC_US, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let mono = w.mono_us();
            w.offset_us.store(os_now_us().saturating_sub(mono), Ordering::Relaxed);
        }
        mono.saturating_add(w.offset_us.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to: for tests and simulations.
///
/// Clones share the same time.
///
/// ```
/// use traffik::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_millis(2));
/// assert_eq!(clock.now_us(), 3_000);
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start_us` microseconds.
    pub fn new(start_us: u64) -> Self {
        ManualClock { now: Arc::new(AtomicU64::new(start_us)) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let us = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.advance_us(us);
    }

    /// Moves the clock forward by `us` microseconds.
    pub fn advance_us(&self, us: u64) {
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(us)));
    }

    /// Sets the clock (it may move backwards, as real clocks sometimes do).
    pub fn set_us(&self, us: u64) {
        self.now.store(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").field("now_us", &self.now_us()).finish()
    }
}

/// Converts microseconds to a [`Duration`].
pub(crate) fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// Converts a [`Duration`] to whole microseconds, saturating.
pub(crate) fn to_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_tracks_the_wall_clock() {
        // Bracketed by two OS readings, so a thread descheduled between the calls cannot fail
        // it; and a reading is taken again if one was (the bracket is then wide).
        let mut last = (0, 0, 0);
        let close = (0..50).any(|_| {
            let before = os_now_us();
            let ours = SystemClock.now_us();
            let after = os_now_us();
            last = (before, ours, after);
            after - before < 1_000 && ours + 20_000 >= before && ours <= after + 20_000
        });
        assert!(close, "SystemClock far from the OS clock: (before, ours, after) = {last:?}");
        let a = SystemClock.now_us();
        let b = SystemClock.now_us();
        assert!(b + 1_000 >= a);
    }
}
