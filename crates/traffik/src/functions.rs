//! Cost, rate and identity functions: static values, sync closures or async closures.

use std::future::Future;
use std::sync::Arc;

use crate::Rate;
use crate::context::Context;
use crate::identity::{Identifier, Identity, RequestView};
use crate::strategy::Metadata;
use futures_core::future::BoxFuture;

/// Computes the cost of a hit from the request and context.
pub trait CostFn: Send + Sync + 'static {
    /// The cost.
    fn cost<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, u64>;
    /// The cost without awaiting, when possible.
    fn cost_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<u64> {
        None
    }
}

/// Computes the rate of a hit (e.g. by tenant tier).
pub trait RateFn: Send + Sync + 'static {
    /// The rate.
    fn rate<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, Rate>;
    /// The rate without awaiting, when possible.
    fn rate_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<Rate> {
        None
    }

    /// What the source knows about one hit's rate, for `stat` snapshots: the tier it picked,
    /// the factor in force, the window open now. [`Throttle::stat`](crate::Throttle::stat)
    /// puts a non-empty answer under `metadata.source`. Nothing by default.
    fn describe(&self, _req: &RequestView<'_>, _ctx: &Context) -> Metadata {
        Metadata::new()
    }
}

/// Adapts a sync closure `Fn(&RequestView, &Context) -> T`.
#[derive(Clone, Copy, Debug)]
pub struct SyncFn<F>(pub F);

/// Adapts an async closure `Fn(&RequestView, &Context) -> impl Future<Output = T> + 'static`.
#[derive(Clone, Copy, Debug)]
pub struct AsyncFn<F>(pub F);

macro_rules! adapters {
    ($trait:ident, $method:ident, $now:ident, $out:ty) => {
        impl<F> $trait for SyncFn<F>
        where
            F: Fn(&RequestView<'_>, &Context) -> $out + Send + Sync + 'static,
        {
            fn $method<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, $out> {
                let v = (self.0)(req, ctx);
                Box::pin(async move { v })
            }
            fn $now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<$out> {
                Some((self.0)(req, ctx))
            }
        }

        impl<F, Fut> $trait for AsyncFn<F>
        where
            F: Fn(&RequestView<'_>, &Context) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = $out> + Send + 'static,
        {
            fn $method<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, $out> {
                Box::pin((self.0)(req, ctx))
            }
        }
    };
}

adapters!(CostFn, cost, cost_now, u64);
adapters!(RateFn, rate, rate_now, Rate);
adapters!(Identifier, identify, identify_now, Identity);

/// A throttle's cost: a constant or a function.
#[derive(Clone)]
pub enum Cost {
    /// The same cost for every hit.
    Fixed(u64),
    /// Computed per hit.
    Dynamic(Arc<dyn CostFn>),
}

/// A throttle's rate: a constant or a function.
#[derive(Clone)]
pub enum RateSource {
    /// The same rate for every hit.
    Fixed(Rate),
    /// Computed per hit.
    Dynamic(Arc<dyn RateFn>),
}

impl Cost {
    pub(crate) async fn resolve(&self, req: &RequestView<'_>, ctx: &Context) -> u64 {
        if let Some(c) = ctx.cost_override() {
            return c;
        }
        match self {
            Cost::Fixed(c) => *c,
            Cost::Dynamic(f) => match f.cost_now(req, ctx) {
                Some(c) => c,
                None => f.cost(req, ctx).await,
            },
        }
    }
}

impl Cost {
    #[inline]
    pub(crate) fn resolve_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<u64> {
        if let Some(c) = ctx.cost_override() {
            return Some(c);
        }
        match self {
            Cost::Fixed(c) => Some(*c),
            Cost::Dynamic(f) => f.cost_now(req, ctx),
        }
    }
}

impl RateSource {
    #[inline]
    pub(crate) fn resolve_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<Rate> {
        match self {
            RateSource::Fixed(r) => Some(*r),
            RateSource::Dynamic(f) => f.rate_now(req, ctx),
        }
    }

    pub(crate) async fn resolve(&self, req: &RequestView<'_>, ctx: &Context) -> Rate {
        match self {
            RateSource::Fixed(r) => *r,
            RateSource::Dynamic(f) => match f.rate_now(req, ctx) {
                Some(r) => r,
                None => f.rate(req, ctx).await,
            },
        }
    }
}

impl std::fmt::Debug for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cost::Fixed(c) => write!(f, "Cost::Fixed({c})"),
            Cost::Dynamic(_) => f.write_str("Cost::Dynamic"),
        }
    }
}

impl std::fmt::Debug for RateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateSource::Fixed(r) => write!(f, "RateSource::Fixed({r})"),
            RateSource::Dynamic(_) => f.write_str("RateSource::Dynamic"),
        }
    }
}
