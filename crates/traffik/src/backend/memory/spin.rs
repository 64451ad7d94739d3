//! The shard lock: a test-and-test-and-set spin lock. Almost every critical section is one
//! strategy step (tens of nanoseconds), so a waiter is better off spinning than parking; and
//! with no parked waiters to wake, unlocking is a plain store rather than a second atomic
//! read-modify-write. The exceptions are sweeps and evictions, which walk the whole shard
//! (milliseconds for a very large one): a waiter that keeps finding the lock held yields its
//! time slice, then sleeps in growing steps, so it does not burn a core meanwhile.
//!
//! Strategies run while their key's shard is held, so a strategy must not call back into the
//! backend (the [`Strategy`](crate::strategy::Strategy) contract: a pure function of its
//! arguments); one that did would wait for itself.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::lock_api;

/// Failed looks at a held lock before a waiter starts yielding its time slice (the holder
/// may have been descheduled). A waiter never sleeps: it may be an async runtime's worker,
/// and the work done under a shard lock is bounded (one decision, or a new key's look at
/// no more than 64 buckets), so the wait is always short once the holder runs.
const SPINS: u32 = 100;

pub(super) struct RawSpin(AtomicBool);

impl RawSpin {
    #[cold]
    fn lock_contended(&self) {
        let mut looks = 0u32;
        loop {
            while self.0.load(Ordering::Relaxed) {
                if looks < SPINS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                looks = looks.saturating_add(1);
            }
            if lock_api::RawMutex::try_lock(self) {
                return;
            }
        }
    }
}

// SAFETY: `try_lock` succeeds for exactly one caller between unlocks (a compare-and-swap from
// false to true, with Acquire ordering), `lock` returns only after such a success, and
// `unlock` (called only by the holder, per the trait's contract) publishes the holder's
// writes with a Release store of false.
unsafe impl lock_api::RawMutex for RawSpin {
    const INIT: RawSpin = RawSpin(AtomicBool::new(false));
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn is_locked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(super) type Mutex<T> = lock_api::Mutex<RawSpin, T>;
