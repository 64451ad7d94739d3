//! Preparing a hit: rules and exemptions, identity, rate and cost, then the storage key.

use super::Throttle;
use super::config::Config;
use crate::Rate;
use crate::context::Context;
use crate::decision::Skip;
use crate::identity::{Identity, RequestView};
use crate::key::Key;
use crate::strategy::Input;

impl Throttle {
    /// Resolves identity, rate, cost and key without awaiting, when every piece allows it.
    #[inline]
    pub(super) fn prepare_now(
        &self,
        config: &Config,
        prefix: &Key,
        req: &RequestView<'_>,
        ctx: &Context,
    ) -> Option<Prepared> {
        if self.is_disabled() {
            return Some(Prepared::Skip(Skip::Disabled));
        }
        if !config.rules.is_empty() && !config.rules.allows_now(req, ctx)? {
            return Some(Prepared::Skip(Skip::Rules));
        }
        let identity = config.identifier.identify_now(req, ctx)?;
        let rate = config.rate.resolve_now(req, ctx)?;
        let cost = config.cost.resolve_now(req, ctx)?;
        Some(self.finish(config, prefix, ctx, identity, rate, cost))
    }

    /// Resolves identity, rate, cost and key (starting with `prefix`: the throttle's uid, or a
    /// group's member prefix).
    pub(crate) async fn prepare(
        &self,
        config: &Config,
        prefix: &Key,
        req: &RequestView<'_>,
        ctx: &Context,
    ) -> Prepared {
        if self.is_disabled() {
            return Prepared::Skip(Skip::Disabled);
        }
        if !config.rules.is_empty() && !config.rules.allows(req, ctx).await {
            return Prepared::Skip(Skip::Rules);
        }
        let identity = match config.identifier.identify_now(req, ctx) {
            Some(id) => id,
            None => config.identifier.identify(req, ctx).await,
        };
        let rate = config.rate.resolve(req, ctx).await;
        let cost = config.cost.resolve(req, ctx).await;
        self.finish(config, prefix, ctx, identity, rate, cost)
    }

    #[inline]
    pub(super) fn finish(
        &self,
        config: &Config,
        prefix: &Key,
        ctx: &Context,
        identity: Identity,
        rate: Rate,
        cost: u64,
    ) -> Prepared {
        if identity == Identity::Exempted {
            return Prepared::Skip(Skip::Exempted);
        }
        if rate.is_unlimited() {
            return Prepared::Skip(Skip::Unlimited);
        }
        if cost == 0 {
            return Prepared::Skip(Skip::ZeroCost);
        }
        let mut key = identity.write_key(Key::from_encoded(prefix), config.hash_identities);
        for part in config.scope.iter().chain(ctx.scope_parts()) {
            key = key.part(part.as_bytes());
        }
        let input = Input { now_us: self.inner.clock.now_us(), rate, cost };
        Prepared::Go(Ready { key: key.build(), input })
    }
}

pub(crate) struct Ready {
    pub(crate) key: Key,
    pub(crate) input: Input,
}

pub(crate) enum Prepared {
    Skip(Skip),
    Go(Ready),
}
