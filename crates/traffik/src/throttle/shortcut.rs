//! The shortcut for the common configuration (client address, fixed rate and cost, the
//! in-memory backend): a per-thread copy of the configuration and a hit on concrete types.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Throttle;
use super::config::{Config, DISABLED, FastPlan};
use super::events::denial_event;
use super::prepare::Ready;
use crate::backend::{InMemoryBackend, Mode};
use crate::clock::us;
use crate::decision::{Decision, Outcome, Skip, Source};
use crate::error::BackendError;
use crate::identity::RequestView;
use crate::key::Key;
use crate::strategy::{Input, VerdictKind};

impl Throttle {
    /// The denial event of the shortcut (never in shadow mode: shadow mode takes the general
    /// path), out of line and with plain arguments, so that the admitted path stays as it was.
    #[cold]
    #[inline(never)]
    pub(super) fn fast_denial(&self, kind: VerdictKind, wait_us: u64) {
        let config = self.inner.config.load();
        let cost = config.fast.as_ref().map_or(0, |f| f.cost);
        let wait = if kind == VerdictKind::Deny { us(wait_us).max(config.min_wait) } else { Duration::ZERO };
        denial_event(&self.inner.uid, &config, kind.outcome(), Source::Backend, cost, wait);
    }

    /// No shortcut any more: lets go of this thread's copy of an older configuration.
    #[cold]
    #[inline(never)]
    pub(super) fn forget_cached(&self) {
        let _ = CONFIG_CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                cache.forget(self.inner.id);
            }
        });
    }

    /// Runs [`hit_fast`](Self::hit_fast) on this thread's cached copy of the configuration
    /// (no atomic read-modify-write on the hot path); `None` sends the hit down the general path.
    pub(super) fn try_fast(
        &self,
        req: &RequestView<'_>,
        failed: &mut Option<(Ready, BackendError)>,
    ) -> Option<Decision> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        // `with`, not `try_with`: the fallible form costs about 10 ns per hit here (its result
        // is copied through one more layer). `with` panics only when called from a thread-local
        // destructor after this cache was destroyed, which `hit` documents.
        CONFIG_CACHE.with(|cache| {
            // Busy only if a clock or identifier re-entered a throttle: use the general path.
            let mut cache = cache.try_borrow_mut().ok()?;
            let config = cache.get(self.inner.id, generation, || self.inner.config.load_full())?;
            let fast = config.fast.as_ref()?;
            self.hit_fast(config, fast, req, failed)
        })
    }

    /// [`FastPlan`]'s hit: the steps of `prepare_now`, `finish` and the backend call for that
    /// configuration, on concrete types. `None`, with the key, input and error in `failed`,
    /// when the backend failed (nothing was applied: the in-memory backend fails only when it
    /// refuses a new key), so that the caller runs the error policy.
    #[inline]
    pub(super) fn hit_fast(
        &self,
        config: &Config,
        fast: &FastPlan,
        req: &RequestView<'_>,
        failed: &mut Option<(Ready, BackendError)>,
    ) -> Option<Decision> {
        let flags = self.inner.flags.load(Ordering::Relaxed);
        if flags != 0 {
            if flags & DISABLED != 0 {
                self.count(config, Outcome::Skipped(Skip::Disabled), Source::None);
                return Some(Decision::skipped(Skip::Disabled));
            }
            // Shadow mode: the general path marks, counts and logs what it lets through, so
            // that the shortcut pays nothing for it.
            return None;
        }
        let mut key = self.inner.key_prefix.clone();
        fast.client_ip.identity(req).append_to(&mut key, false);
        let input = Input { now_us: self.inner.clock.now_us(), rate: fast.rate, cost: fast.cost };
        let prepared = fast.memory.prepare(&key, &config.strategy);
        match fast.memory.decide_prepared(prepared, &config.strategy, &input, Mode::Consume) {
            Ok(verdict) => {
                // Counted before the decision is built, so that it is built in place.
                #[cfg(feature = "metrics")]
                if !config.counters.count_verdict(verdict.kind) {
                    self.recount(verdict.kind.outcome(), Source::Backend);
                }
                if matches!(verdict.kind, VerdictKind::Deny | VerdictKind::Never) {
                    self.fast_denial(verdict.kind, verdict.wait_us);
                }
                Some(config.decision(verdict, key, &input, Source::Backend, false))
            }
            Err(error) => {
                *failed = Some((Ready { key, input }, error));
                None
            }
        }
    }

    /// The in-memory backend of the common configuration's shortcut, if the configuration has it.
    pub(crate) fn planned_memory(config: &Config) -> Option<&InMemoryBackend> {
        config.fast.as_ref().map(|f| &f.memory)
    }

    /// For a plain hit on the common configuration ([`FastPlan`]): pushes onto `out` a pending
    /// decision holding the key (starting with `prefix`) the general path would build, and
    /// returns the input, without dynamic dispatch. The key is written where the decision
    /// stays, never moved. `None` (perhaps after pushing) when the shortcut does not apply or
    /// the throttle is disabled: the caller takes the general path.
    ///
    /// `like`: the first member's configuration and prefix, whose decision is `out[0]`. When
    /// both identify clients alike, the identity part of that key is copied rather than worked
    /// out and written again.
    #[inline]
    pub(crate) fn prepare_planned_into(
        &self,
        config: &Config,
        prefix: &Key,
        req: &RequestView<'_>,
        like: Option<(&Config, &Key)>,
        now_us: Option<u64>,
        out: &mut Vec<Decision>,
    ) -> Option<Input> {
        let fast = config.fast.as_ref()?;
        if self.is_disabled() {
            return None;
        }
        out.push(Decision::pending(prefix.clone(), fast.rate, fast.cost));
        let at = out.len().checked_sub(1)?;
        let (earlier, last) = out.split_at_mut(at);
        let key = last.first_mut()?.key.as_mut()?;
        let same = like.and_then(|(other, other_prefix)| {
            let other_fast = other.fast.as_ref()?;
            let other_key = earlier.first()?.key.as_ref()?;
            let identity = other_key.as_bytes().get(other_prefix.as_bytes().len()..)?;
            fast.client_ip.same_as(&other_fast.client_ip).then_some(identity)
        });
        match same {
            Some(identity) => key.text_mut().push_ascii(identity),
            None => fast.client_ip.identity(req).append_to(key, false),
        }
        let now_us = now_us.unwrap_or_else(|| self.inner.clock.now_us());
        Some(Input { now_us, rate: fast.rate, cost: fast.cost })
    }

    /// Whether this throttle and `other` read the very same clock.
    pub(crate) fn same_clock(&self, other: &Throttle) -> bool {
        Arc::ptr_eq(&self.inner.clock, &other.inner.clock)
    }

    /// The throttle's clock, now.
    pub(crate) fn now_us(&self) -> u64 {
        self.inner.clock.now_us()
    }
}

/// Configurations this thread used recently, by throttle id and generation: reading one costs
/// no atomic read-modify-write, unlike loading from the `ArcSwap`. Each thread keeps at most
/// [`ConfigCache::SLOTS`] of them (the oldest is replaced), so a configuration that was swapped
/// out, or whose throttle was dropped, stays referenced by a thread until that thread reuses
/// the slot or exits.
pub(super) struct ConfigCache {
    slots: [(u64, u64, Option<Arc<Config>>); ConfigCache::SLOTS],
    next: usize,
}

impl ConfigCache {
    const SLOTS: usize = 4;

    /// Drops the copy held for throttle `id`, if any.
    fn forget(&mut self, id: u64) {
        for slot in self.slots.iter_mut().filter(|s| s.0 == id) {
            *slot = (0, 0, None);
        }
    }

    /// The configuration of throttle `id` at `generation`, loading it on a miss.
    #[inline]
    fn get(&mut self, id: u64, generation: u64, load: impl FnOnce() -> Arc<Config>) -> Option<&Arc<Config>> {
        let i = match self.slots.iter().position(|s| s.0 == id) {
            Some(i) => {
                if self.slots[i].1 != generation {
                    self.slots[i] = (id, generation, Some(load()));
                }
                i
            }
            None => {
                let i = self.next;
                self.next = (i + 1) % Self::SLOTS;
                self.slots[i] = (id, generation, Some(load()));
                i
            }
        };
        self.slots[i].2.as_ref()
    }
}

thread_local! {
    static CONFIG_CACHE: RefCell<ConfigCache> =
        const { RefCell::new(ConfigCache { slots: [(0, 0, None), (0, 0, None), (0, 0, None), (0, 0, None)], next: 0 }) };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::functions::Cost;
    use crate::identity::{ClientIp, Identity, RequestView};
    use crate::policy::ErrorPolicy;
    use crate::strategy::FixedWindow;
    use crate::throttle::Throttle;
    use crate::{InMemoryBackend, Rate};

    fn throttle() -> Throttle {
        Throttle::builder()
            .uid("plan")
            .rate(Rate::per_millis(5, 1000).unwrap_or_else(|_| Rate::unlimited()))
            .backend(InMemoryBackend::new())
            .strategy(FixedWindow)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn planned(t: &Throttle) -> bool {
        let has_plan = t.inner.config.load().fast.is_some();
        assert_eq!(has_plan, t.inner.fast.load(Ordering::Acquire), "flag and plan agree");
        has_plan
    }

    #[test]
    fn the_shortcut_is_planned_only_for_the_common_configuration() {
        let t = throttle();
        assert!(planned(&t), "client address, fixed rate and cost, in-memory backend");
        let generation = t.inner.generation.load(Ordering::Acquire);
        t.update_cost(Cost::Fixed(2));
        assert!(planned(&t));
        assert!(t.inner.generation.load(Ordering::Acquire) > generation, "every update bumps the generation");
        t.update_identifier(|_: &RequestView<'_>| Identity::Anonymous);
        assert!(!planned(&t), "custom identifier");
        t.update_identifier(ClientIp::new());
        assert!(planned(&t));
        t.update_rate(Rate::unlimited());
        assert!(!planned(&t), "unlimited rate");
        t.update_rate(Rate::per_millis(5, 1000).unwrap_or_else(|_| Rate::unlimited()));
        t.update_error_policy(Some(ErrorPolicy::circuit_breaker(
            crate::policy::CircuitBreaker::new(crate::policy::BreakerConfig::default()),
            Duration::from_secs(1),
        )));
        assert!(!planned(&t), "a breaker counts calls on the general path");
    }

    /// A stand-in for an integration's handler type.
    #[derive(Clone)]
    struct Marker(#[allow(dead_code)] Arc<()>);

    impl crate::reply::RefusalHandler for Marker {}

    #[tokio::test]
    async fn a_thread_lets_go_of_a_replaced_configuration() {
        let (first, second) = (Arc::new(()), Arc::new(()));
        let t = throttle();
        let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 1).into()));
        // Staying on the shortcut: the next plain hit replaces this thread's copy.
        t.update_throttled_handler(Marker(Arc::clone(&first)));
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        t.update_throttled_handler(Marker(Arc::clone(&second)));
        assert_eq!(Arc::strong_count(&first), 2, "the replaced configuration, cached by this thread");
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        assert_eq!(Arc::strong_count(&first), 1);
        // Leaving it: the next plain hit drops the copy.
        t.update_identifier(|_: &RequestView<'_>| Identity::Anonymous);
        t.update_throttled_handler(Marker(Arc::clone(&first)));
        assert_eq!(Arc::strong_count(&second), 2, "cached by this thread");
        assert!(t.hit(&req).await.is_ok_and(|d| d.is_allowed()));
        assert_eq!(Arc::strong_count(&second), 1);
    }
}
