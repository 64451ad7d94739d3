//! Rates per tier: the tier of a hit comes from a resolver over the request and its context.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::Rate;
use crate::context::Context;
use crate::error::{ConfigError, Error};
use crate::functions::{RateFn, RateSource};
use crate::identity::RequestView;
use crate::strategy::Metadata;
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
    /// The default tier's `Debug` text, for `stat` metadata.
    default_name: String,
    /// How `stat` metadata names the source and its tier (`("tiers", "tier")`, or
    /// `("priorities", "level")` for priority levels).
    names: (&'static str, &'static str),
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

    /// What `stat` shows about one hit's tier (see [`RateFn::describe`]): the tier's `Debug`
    /// text (the default tier's for a hit without a known tier) and whether it was the default.
    pub fn describe_for(&self, req: &RequestView<'_>, ctx: &Context) -> Metadata {
        let (kind, field) = self.names;
        let known = (self.resolve)(req, ctx).filter(|tier| self.rates.contains_key(tier));
        let mut m = Metadata::new();
        m.insert("kind".into(), kind.into());
        m.insert(field.into(), known.as_ref().map_or_else(|| self.default_name.clone(), |t| format!("{t:?}")).into());
        m.insert("default".into(), known.is_none().into());
        m
    }

    /// Levels already checked by the priorities' builder (each level's ceiling as its rate).
    pub(crate) fn priority_levels(
        resolve: Arc<Resolver<K>>,
        rates: HashMap<K, Rate>,
        default: Rate,
        default_name: String,
    ) -> Tiers<K> {
        Tiers { resolve, rates, default, default_name, names: ("priorities", "level") }
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
        let default_name = format!("{default:?}");
        Ok(Tiers { resolve: self.resolve, rates, default: default_rate, default_name, names: ("tiers", "tier") })
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

    fn describe(&self, req: &RequestView<'_>, ctx: &Context) -> Metadata {
        self.describe_for(req, ctx)
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
