use super::*;
use crate::strategy::{FixedWindow, VerdictKind};
use crate::{Rate, rate};

fn input(now: u64) -> Input {
    Input { now_us: now, rate: rate!("2/s"), cost: 1 }
}

#[test]
fn state_expires_and_is_swept() {
    let b = InMemoryBackend::new();
    let s = StrategyHandle::new(FixedWindow);
    let k = b.prepare(&Key::builder("t").part(b"a").build(), &s);
    assert!(b.decide_prepared(k, &s, &input(0), Mode::Consume).is_ok());
    assert_eq!(b.len(), 1);
    b.decide_prepared(b.prepare(&Key::builder("t").part(b"b").build(), &s), &s, &input(1_000_000), Mode::Consume).ok();
    b.sweep();
    assert_eq!(b.len(), 1, "only the second key, written at 1 s, is still live");
}

#[test]
fn new_keys_sweep_expired_ones_and_old_keys_move_the_sweep_clock() {
    let s = StrategyHandle::new(FixedWindow);
    let b = InMemoryBackend::builder().shards(1).build();
    let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
    // 4,000 keys live for the first second, then 4,000 new keys at 10 s: the new keys'
    // sweeps drop the expired ones without any explicit call.
    for i in 0..4_000 {
        b.decide_prepared(key(i), &s, &input(0), Mode::Consume).unwrap();
    }
    for i in 4_000..8_000 {
        b.decide_prepared(key(i), &s, &input(10_000_000), Mode::Consume).unwrap();
    }
    assert!(b.len() <= 4_001, "{} stored", b.len());
    // Hits on an existing key alone advance the clock an explicit sweep uses.
    let b = InMemoryBackend::builder().shards(1).build();
    let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
    b.decide_prepared(key(1), &s, &input(0), Mode::Consume).unwrap();
    b.decide_prepared(key(2), &s, &input(0), Mode::Consume).unwrap();
    b.decide_prepared(key(2), &s, &input(5_000_000), Mode::Consume).unwrap();
    b.sweep();
    assert_eq!(b.len(), 1, "key 1 expired at 1 s; the shard saw 5 s through key 2");
}

#[test]
fn at_the_cap_expired_keys_are_replaced_and_live_ones_kept() {
    let s = StrategyHandle::new(FixedWindow);
    let b = InMemoryBackend::builder().shards(1).max_keys(10).build();
    let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
    for i in 0..10u32 {
        assert!(b.decide_prepared(key(i), &s, &input(0), Mode::Consume).is_ok());
    }
    // Every key is live: new keys are refused, and the live ones keep their state.
    for i in 10..100u32 {
        let r = b.decide_prepared(key(i), &s, &input(500_000), Mode::Consume);
        assert!(matches!(r, Err(BackendError::Full { max_keys: 10 })), "{r:?}");
    }
    assert_eq!((b.len(), b.evictions(), b.refusals()), (10, 0, 90));
    for i in 0..10u32 {
        let v = b.decide_prepared(key(i), &s, &input(600_000), Mode::Consume).unwrap();
        assert_eq!((v.kind, v.remaining), (VerdictKind::Admit, 0), "key {i} kept its usage");
    }
    // A window later they have expired, and ten new keys replace them; the next are refused.
    for i in 100..190u32 {
        let r = b.decide_prepared(key(i), &s, &input(1_500_000), Mode::Consume);
        assert_eq!(r.is_ok(), i < 110, "key {i}: {r:?}");
    }
    // (Expired keys go to the incremental sweep or, failing that, to the cap's scan.)
    assert_eq!((b.len(), b.refusals()), (10, 170));
    assert!(b.evictions() <= 10);
}

#[test]
fn a_decision_touches_one_line_of_its_shard() {
    let padded =
        Padded(Mutex::new(Shard { high_water: 0, hand: 0, table: HashTable::new(), boxes: Boxes::default(), cap: 1 }));
    let base = std::ptr::from_ref(&padded) as usize;
    let shard = padded.0.lock();
    let end_of_table = std::ptr::from_ref(&shard.table) as usize + std::mem::size_of::<HashTable<Entry>>();
    let counters = std::ptr::from_ref(&shard.high_water) as usize;
    assert!(end_of_table - base <= 64, "lock, counters and table header in the first line");
    assert!(counters > base);
}

#[test]
fn entries_are_half_a_cache_line() {
    assert_eq!(std::mem::size_of::<Entry>(), 32);
    assert_eq!(std::mem::align_of::<Entry>(), 32);
}

#[test]
fn boxed_states_are_freed_and_their_slots_reused() {
    use crate::strategy::SlidingWindowLog;
    let s = StrategyHandle::new(SlidingWindowLog);
    let b = InMemoryBackend::builder().shards(1).max_keys(4).build();
    let key = |i: u32| b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
    // Replacing an expired key at the cap releases its box: one window after another, four
    // keys at a time.
    for i in 0..20u32 {
        let now = u64::from(i / 4) * 1_000_000;
        assert_eq!(b.decide_prepared(key(i), &s, &input(now), Mode::Consume).unwrap().kind, VerdictKind::Admit);
    }
    let boxes = |b: &InMemoryBackend| {
        let shard = b.inner.shards[0].0.lock();
        (shard.boxes.slots.iter().filter(|s| s.is_some()).count(), shard.boxes.slots.len())
    };
    assert_eq!(b.len(), 4);
    assert_eq!(boxes(&b), (4, 4), "one live box per key: replaced keys free theirs for reuse");
    let input = |now: u64| input(now + 4_000_000);
    // A live key keeps its state through repeated decisions: 2/s admits two, then denies.
    let k = key(19);
    assert_eq!(b.decide_prepared(k, &s, &input(1), Mode::Consume).unwrap().kind, VerdictKind::Admit);
    assert_eq!(b.decide_prepared(k, &s, &input(2), Mode::Consume).unwrap().kind, VerdictKind::Deny);
    assert_eq!(b.decide_prepared(k, &s, &input(3), Mode::Peek).unwrap().kind, VerdictKind::Deny);
    // Expired state reads as absent, and sweeping frees every box.
    assert_eq!(b.decide_prepared(k, &s, &input(5_000_000), Mode::Peek).unwrap().kind, VerdictKind::Admit);
    b.decide_prepared(key(100), &s, &input(5_000_000), Mode::Consume).unwrap();
    b.sweep();
    assert_eq!(b.len(), 1);
    assert_eq!(boxes(&b).0, 1);
    b.clear();
    assert_eq!(boxes(&b), (0, 0));
}

#[test]
fn max_keys_is_a_hard_cap_whatever_the_shard_count() {
    let s = StrategyHandle::new(FixedWindow);
    for max_keys in [1, 3, 5, 7, 64, 100] {
        for eviction in [Eviction::RejectNew] {
            let b = InMemoryBackend::builder().max_keys(max_keys).eviction(eviction).build();
            for i in 0..1_000u32 {
                let k = b.prepare(&Key::builder("t").part(&i.to_be_bytes()).build(), &s);
                let _ = b.decide_prepared(k, &s, &input(0), Mode::Consume);
            }
            assert!(b.len() <= max_keys, "{max_keys} {eviction:?}: {} stored", b.len());
        }
    }
}

#[test]
fn clocks_past_2_pow_63_still_limit() {
    let s = StrategyHandle::new(FixedWindow);
    let b = InMemoryBackend::new();
    let k = b.prepare(&Key::builder("t").build(), &s);
    for now in [(1u64 << 63) + 5, (1u64 << 63) + 86_400_000_000] {
        let kinds: Vec<_> =
            (0..4).map(|_| b.decide_prepared(k, &s, &input(now), Mode::Consume).unwrap().kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == VerdictKind::Admit).count(), 2, "2/s at {now}: {kinds:?}");
        b.clear();
    }
}

#[test]
fn shard_count_is_a_power_of_two() {
    for (asked, got) in [(1, 1), (3, 2), (64, 64), (100, 64)] {
        let b = InMemoryBackend::builder().shards(asked).build();
        assert_eq!(b.inner.shards.len(), got);
    }
    assert_eq!(InMemoryBackend::builder().shards(64).max_keys(5).build().inner.shards.len(), 4);
}

#[test]
fn threads_on_one_key_admit_exactly_the_limit() {
    // The shard lock is the only thing between racing decisions on one key: 4 threads
    // making 30,000 attempts each against a limit of 100,000 in one window must see
    // exactly 100,000 admitted.
    let s = StrategyHandle::new(FixedWindow);
    let b = InMemoryBackend::builder().shards(1).build();
    let k = b.prepare(&Key::builder("t").build(), &s);
    let rate = Rate::per_millis(100_000, 60_000).unwrap();
    let admitted: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..30_000)
                        .filter(|_| {
                            let input = Input { now_us: 1, rate, cost: 1 };
                            b.decide_prepared(k, &s, &input, Mode::Consume).unwrap().kind == VerdictKind::Admit
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(admitted, 100_000);
}

#[test]
fn a_waiter_outlasts_a_long_hold_and_then_decides() {
    use std::sync::atomic::AtomicBool;
    let s = StrategyHandle::new(FixedWindow);
    let b = InMemoryBackend::builder().shards(1).build();
    let k = b.prepare(&Key::builder("t").build(), &s);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let held = b.inner.shards[0].0.lock();
        let waiter = scope.spawn(|| {
            let kind = b.decide_prepared(k, &s, &input(0), Mode::Consume).unwrap().kind;
            done.store(true, Ordering::SeqCst);
            kind
        });
        // Long enough for the waiter to go through spinning and yielding into sleeping.
        for _ in 0..5_000 {
            std::thread::yield_now();
        }
        assert!(!done.load(Ordering::SeqCst), "decided while the shard was held");
        drop(held);
        assert_eq!(waiter.join().unwrap(), VerdictKind::Admit);
    });
    assert_eq!(b.len(), 1);
}

#[test]
fn a_panicking_strategy_releases_its_shard() {
    use crate::strategy::Step;

    #[derive(Debug)]
    struct Panics;
    impl crate::strategy::Strategy for Panics {
        type State = u64;
        fn name(&self) -> &str {
            "panics"
        }
        fn decide(&self, _: Option<&u64>, _: &Input) -> Step<u64> {
            panic!("strategy bug")
        }
    }
    let b = InMemoryBackend::builder().shards(1).build();
    let bad = StrategyHandle::new(Panics);
    let k = b.prepare(&Key::builder("t").build(), &bad);
    let unwound =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.decide_prepared(k, &bad, &input(0), Mode::Consume)));
    assert!(unwound.is_err());
    // The one shard is free again: another strategy's decision goes through.
    let s = StrategyHandle::new(FixedWindow);
    let k = b.prepare(&Key::builder("t").build(), &s);
    assert_eq!(b.decide_prepared(k, &s, &input(0), Mode::Consume).unwrap().kind, VerdictKind::Admit);
}

#[test]
fn peek_writes_nothing() {
    let b = InMemoryBackend::new();
    let s = StrategyHandle::new(FixedWindow);
    let k = b.prepare(&Key::builder("t").build(), &s);
    for _ in 0..5 {
        let v = b.decide_prepared(k, &s, &input(0), Mode::Peek).unwrap();
        assert_eq!(v.kind, VerdictKind::Admit);
    }
    assert_eq!(b.len(), 0);
}
