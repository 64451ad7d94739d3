//! Priority with reserved capacity: one shared capacity per key, of which each priority level
//! keeps a reserve that lower levels cannot use.
//!
//! [`Priorities`] resolves a level for every hit (from the request and its [`Context`]: a
//! header, the user's plan, an API key's class) and gives the hit its level's *ceiling*: the
//! capacity L of the base rate less the reserves of every level above it. Paired with the
//! [`Reserved`] strategy ([`Priorities::strategy`]), every level of a client counts in one
//! window of one key: a hit is admitted iff `used + cost <= ceiling(level)`.
//!
//! With levels `0` (highest) to `n - 1`, reserves `r_0 .. r_(n-2)` and
//! `ceiling(i) = L - (r_0 + ... + r_(i-1))`, in any window:
//! * all levels together admit at most L (the top level's ceiling);
//! * level i and the levels below it together admit at most `ceiling(i)`;
//! * a hit of level i is admitted whenever the cost admitted to level i and the levels above
//!   it in that window, plus its own, is at most `r_i`, whatever lower levels sent (they stop
//!   at `ceiling(i + 1) = ceiling(i) - r_i`).
//!
//! ```
//! use traffik::priority::{Priorities, Reserve};
//! use traffik::{Context, InMemoryBackend, RequestView, Throttle, rate};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! enum Lane { Interactive, Batch }
//!
//! let priorities = Priorities::builder(rate!("100/min"), |_req: &RequestView<'_>, ctx: &Context| {
//!     ctx.get::<Lane>().copied()
//! })
//! .level(Lane::Interactive, Reserve::Percent(30))
//! .level(Lane::Batch, Reserve::None)
//! .default_level(Lane::Batch)
//! .build()?;
//! assert_eq!(priorities.ceiling_of(&Lane::Batch), Some(70));
//! let throttle = Throttle::builder()
//!     .uid("api")
//!     .rate_source(priorities.clone().into())
//!     .backend(InMemoryBackend::new())
//!     .strategy(priorities.strategy())
//!     .build()?;
//! # let _ = throttle;
//! # Ok::<(), traffik::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::Rate;
use crate::context::Context;
use crate::functions::RateSource;
use crate::identity::RequestView;
use crate::sources::{Resolver, Tiers};
pub use crate::strategy::Reserved;

/// The capacity a level keeps for itself and the levels above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Nothing (the lowest level has nothing to keep from anyone).
    None,
    /// Units of cost per window.
    Units(u32),
    /// A percentage of the base rate's limit (0 to 100), rounded down.
    Percent(u32),
}

/// [`PrioritiesBuilder::build`] refused the levels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriorityError {
    /// No level was given.
    #[error("priorities need at least one level")]
    NoLevels,
    /// A level was given twice.
    #[error("priority level {level} is given twice")]
    DuplicateLevel {
        /// The level (its `Debug` text).
        level: String,
    },
    /// The default level is missing or not one of the levels.
    #[error("the default priority level {level} is not one of the levels (set one with `default_level`)")]
    UnknownDefault {
        /// The default level (its `Debug` text), empty when none was set.
        level: String,
    },
    /// A percentage above 100.
    #[error("priority level {level} reserves {percent}%, at most 100% is allowed")]
    PercentAbove100 {
        /// The level (its `Debug` text).
        level: String,
        /// The percentage given.
        percent: u32,
    },
    /// The reserves above a level leave it no capacity.
    #[error("priority level {level} gets no capacity: the levels above it reserve all {capacity}")]
    NoCapacityLeft {
        /// The level (its `Debug` text).
        level: String,
        /// The base rate's limit.
        capacity: u64,
    },
    /// The lowest level reserves something, which no level could be kept from.
    #[error("the lowest priority level {level} cannot reserve anything (there is no level below it)")]
    ReserveOnLowest {
        /// The level (its `Debug` text).
        level: String,
    },
    /// The base rate is unlimited: there is no capacity to share.
    #[error("priorities need a limited base rate")]
    Unlimited,
}

impl From<PriorityError> for crate::Error {
    fn from(e: PriorityError) -> Self {
        crate::Error::Config(crate::ConfigError::Priority(e))
    }
}

/// Priority levels sharing one capacity per key, each with a reserve. See the
/// [module docs](self). Cheap to clone.
pub struct Priorities<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    base: Rate,
    /// Each level as a tier whose rate is its ceiling (limit = ceiling, period = the base's):
    /// choosing a level's rate per hit is what tiers already do.
    levels: Arc<Tiers<K>>,
}

impl<K> Clone for Priorities<K> {
    fn clone(&self) -> Self {
        Priorities { inner: Arc::clone(&self.inner) }
    }
}

impl<K: fmt::Debug> fmt::Debug for Priorities<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Priorities")
            .field("base", &self.inner.base)
            .field("levels", &self.inner.levels)
            .finish_non_exhaustive()
    }
}

impl<K> Priorities<K>
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// Starts priorities sharing `base` (capacity L per period W) whose level per hit
    /// `resolve` tells (`None`, or a level not configured: the default level).
    pub fn builder(
        base: Rate,
        resolve: impl Fn(&RequestView<'_>, &Context) -> Option<K> + Send + Sync + 'static,
    ) -> PrioritiesBuilder<K> {
        PrioritiesBuilder { base, resolve: Arc::new(resolve), levels: Vec::new(), default: None }
    }

    /// The strategy that shares one window per key between the levels (see [`Reserved`]).
    pub fn strategy(&self) -> Reserved {
        Reserved::new(self.inner.base.limit())
    }

    /// The base rate: the capacity shared by every level and its period.
    pub fn base(&self) -> Rate {
        self.inner.base
    }

    /// The ceiling of `level`: the base limit less the reserves of the levels above it.
    pub fn ceiling_of(&self, level: &K) -> Option<u64> {
        self.inner.levels.rate_of(level).map(|r| r.limit())
    }

    /// The rate a hit of `level` is decided under (limit: its ceiling; period: the base's).
    pub fn rate_of(&self, level: &K) -> Option<Rate> {
        self.inner.levels.rate_of(level)
    }

    /// The rate for one hit: its level's, or the default level's.
    pub fn rate_for(&self, req: &RequestView<'_>, ctx: &Context) -> Rate {
        self.inner.levels.rate_for(req, ctx)
    }
}

/// Builds [`Priorities`]: levels from the highest to the lowest, then the default level.
pub struct PrioritiesBuilder<K> {
    base: Rate,
    resolve: Arc<Resolver<K>>,
    levels: Vec<(K, Reserve)>,
    default: Option<K>,
}

impl<K: fmt::Debug> fmt::Debug for PrioritiesBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrioritiesBuilder")
            .field("base", &self.base)
            .field("levels", &self.levels)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl<K> PrioritiesBuilder<K>
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// Adds the next level, below those added before, with what it keeps for itself and the
    /// levels above it (the lowest level keeps [`Reserve::None`]).
    #[must_use]
    pub fn level(mut self, level: K, reserve: Reserve) -> Self {
        self.levels.push((level, reserve));
        self
    }

    /// The level of hits without a known level (required).
    #[must_use]
    pub fn default_level(mut self, level: K) -> Self {
        self.default = Some(level);
        self
    }

    /// The priorities, or a [`PriorityError`]: no levels, a level twice, a missing or unknown
    /// default, a percentage above 100, a level left without capacity, a reserve on the
    /// lowest level, an unlimited base rate.
    pub fn build(self) -> Result<Priorities<K>, PriorityError> {
        if self.base.is_unlimited() {
            return Err(PriorityError::Unlimited);
        }
        let capacity = self.base.limit();
        let count = self.levels.len();
        if count == 0 {
            return Err(PriorityError::NoLevels);
        }
        let mut rates = HashMap::with_capacity(count);
        let mut reserved_above = 0u64;
        for (i, (level, reserve)) in self.levels.into_iter().enumerate() {
            let text = format!("{level:?}");
            let ceiling = capacity.saturating_sub(reserved_above);
            if ceiling == 0 {
                return Err(PriorityError::NoCapacityLeft { level: text, capacity });
            }
            let units = match reserve {
                Reserve::None => 0,
                Reserve::Units(u) => u64::from(u),
                Reserve::Percent(p) if p > 100 => {
                    return Err(PriorityError::PercentAbove100 { level: text, percent: p });
                }
                Reserve::Percent(p) => capacity * u64::from(p) / 100,
            };
            if i + 1 == count && units > 0 {
                return Err(PriorityError::ReserveOnLowest { level: text });
            }
            reserved_above = reserved_above.saturating_add(units);
            // The ceiling is at most the base limit, a u32.
            let limit = u32::try_from(ceiling).unwrap_or(u32::MAX);
            let rate = Rate::per_millis(limit, self.base.period_ms())
                .map_err(|_| PriorityError::NoCapacityLeft { level: text.clone(), capacity })?;
            if rates.insert(level, rate).is_some() {
                return Err(PriorityError::DuplicateLevel { level: text });
            }
        }
        let default = match &self.default {
            Some(d) => rates.get(d).copied(),
            None => None,
        };
        let Some(default) = default else {
            let level = self.default.map(|d| format!("{d:?}")).unwrap_or_default();
            return Err(PriorityError::UnknownDefault { level });
        };
        let default_name = self.default.map(|d| format!("{d:?}")).unwrap_or_default();
        let levels = Arc::new(Tiers::priority_levels(self.resolve, rates, default, default_name));
        Ok(Priorities { inner: Arc::new(Inner { base: self.base, levels }) })
    }
}

impl<K> From<Priorities<K>> for RateSource
where
    K: Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    fn from(p: Priorities<K>) -> Self {
        RateSource::Dynamic(Arc::clone(&p.inner.levels) as Arc<dyn crate::functions::RateFn>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate;

    fn by_header() -> impl Fn(&RequestView<'_>, &Context) -> Option<u8> + Send + Sync + 'static {
        |_req, ctx| ctx.get::<u8>().copied()
    }

    #[test]
    fn ceilings_subtract_the_reserves_of_the_levels_above() {
        let p = Priorities::builder(rate!("100/min"), by_header())
            .level(0, Reserve::Units(10))
            .level(1, Reserve::Percent(25))
            .level(2, Reserve::None)
            .default_level(2)
            .build()
            .unwrap();
        assert_eq!([p.ceiling_of(&0), p.ceiling_of(&1), p.ceiling_of(&2)], [Some(100), Some(90), Some(65)]);
        assert_eq!(p.rate_of(&1), Some(rate!("90/min")));
        assert_eq!(p.rate_for(&RequestView::empty(), &Context::new().with(7u8)), rate!("65/min"));
        assert_eq!(p.rate_for(&RequestView::empty(), &Context::new().with(0u8)), rate!("100/min"));
        assert_eq!(p.strategy().capacity(), 100);
    }

    #[test]
    fn bad_levels_are_typed_errors() {
        let base = rate!("10/s");
        let build = |levels: Vec<(u8, Reserve)>, default: Option<u8>| {
            let mut b = Priorities::builder(base, by_header());
            for (l, r) in levels {
                b = b.level(l, r);
            }
            if let Some(d) = default {
                b = b.default_level(d);
            }
            b.build().map(|_| ())
        };
        assert_eq!(build(vec![], Some(0)), Err(PriorityError::NoLevels));
        assert_eq!(
            build(vec![(0, Reserve::None), (0, Reserve::None)], Some(0)),
            Err(PriorityError::DuplicateLevel { level: "0".into() })
        );
        assert_eq!(build(vec![(0, Reserve::None)], None), Err(PriorityError::UnknownDefault { level: String::new() }));
        assert_eq!(build(vec![(0, Reserve::None)], Some(3)), Err(PriorityError::UnknownDefault { level: "3".into() }));
        assert_eq!(
            build(vec![(0, Reserve::Percent(101)), (1, Reserve::None)], Some(1)),
            Err(PriorityError::PercentAbove100 { level: "0".into(), percent: 101 })
        );
        assert_eq!(
            build(vec![(0, Reserve::Units(10)), (1, Reserve::None)], Some(1)),
            Err(PriorityError::NoCapacityLeft { level: "1".into(), capacity: 10 })
        );
        assert_eq!(
            build(vec![(0, Reserve::Units(1)), (1, Reserve::Units(1))], Some(1)),
            Err(PriorityError::ReserveOnLowest { level: "1".into() })
        );
        assert_eq!(build(vec![(0, Reserve::Units(9)), (1, Reserve::None)], Some(1)), Ok(()));
    }
}
