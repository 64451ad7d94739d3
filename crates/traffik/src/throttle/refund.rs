//! Giving back what an admission took, and settling its cost once the work is done.

use crate::backend::{Amend, Mode, Operation, SharedBackend};
use crate::decision::Decision;
use crate::error::Error;
use crate::key::Key;
use crate::lease::holder;
use crate::strategy::{Input, Verdict, VerdictKind};

use super::{Config, Throttle, bounded};

/// What [`Throttle::settle`] did to bring an admission's charge to the actual cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// Cost given back (the actual cost was lower than the charge).
    pub refunded: u64,
    /// Cost charged on top (the actual cost was higher): as much of the excess as the key could
    /// still take, so the key is left empty rather than in debt.
    pub charged: u64,
    /// The part of the excess the key could not take.
    pub uncharged: u64,
}

impl Throttle {
    /// Gives back everything `decision` charged, as if the hit had not happened: for the
    /// windows and the log, the cost comes off the window or entry that counted it (nothing
    /// when that window has passed); for the meters (token and leaky buckets, GCRA) the
    /// theoretical arrival time moves back by `cost · T`, never before now; a
    /// [`Concurrency`](crate::strategy::Concurrency) lease is released. README's strategy
    /// table says it per strategy.
    ///
    /// `Ok(true)` when the key's state changed; `Ok(false)` when there was nothing to give
    /// back: the decision charged nothing ([`Decision::is_charged`]: skipped, refused, let
    /// through by the error policy), the state is gone or the window passed. A decision made
    /// by the fallback backend is refunded there. Run once per decision: a second refund of
    /// the same decision gives back again whatever the key still holds. A group member's
    /// decision is refunded through [`ThrottleGroup::refund`](crate::ThrottleGroup::refund).
    ///
    /// ```
    /// use traffik::{rate, InMemoryBackend, RequestView, Throttle, strategy::FixedWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let t = Throttle::builder()
    ///     .uid("exports")
    ///     .rate(rate!("2/min"))
    ///     .backend(InMemoryBackend::new())
    ///     .strategy(FixedWindow)
    ///     .build()?;
    /// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
    /// let first = t.hit(&req).await?;
    /// // ... the export failed on our side: it should not count.
    /// assert!(t.refund(&first).await?);
    /// assert_eq!(t.hit(&req).await?.remaining, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refund(&self, decision: &Decision) -> Result<bool, Error> {
        self.refund_cost(decision, decision.cost).await
    }

    /// Gives back `cost` of what `decision` charged (at most [`Decision::cost`]); see
    /// [`refund`](Self::refund).
    pub async fn refund_cost(&self, decision: &Decision, cost: u64) -> Result<bool, Error> {
        self.refund_under(decision, cost, None).await
    }

    /// [`refund_cost`](Self::refund_cost); for a group member's decision, `group` is the
    /// group's tag and the member whose backend the group decided on (its first).
    pub(crate) async fn refund_under(
        &self,
        decision: &Decision,
        cost: u64,
        group: Option<(&str, &Throttle)>,
    ) -> Result<bool, Error> {
        let cost = cost.min(decision.cost);
        let (true, Some(key), Some(rate)) = (decision.is_charged() && cost > 0, &decision.key, decision.rate) else {
            return Ok(false);
        };
        let config = self.inner.config.load_full();
        let (tag, charged) = match group {
            None => (None, self.charged_backend(&config, decision)?),
            Some((tag, decider)) => {
                let decider_config = decider.inner.config.load_full();
                (Some(tag), decider.charged_backend(&decider_config, decision)?)
            }
        };
        let Some(backend) = charged else {
            return Ok(false);
        };
        let input = Input { now_us: self.inner.clock.now_us(), rate, cost };
        let op = Operation { key, strategy: &config.strategy, input, mode: Mode::Consume };
        let amend = Amend::Refund { charged_at_us: decision.charged_at_us };
        let result = match backend.amend_now(&op, amend, tag) {
            Some(done) => done,
            None => bounded(backend.kind(), config.timeout, backend.amend(op, amend, tag)).await,
        };
        result.map_err(|source| Error::Backend { uid: self.inner.uid.clone(), source })
    }

    /// Brings what `decision` charged to `actual`, the cost the work turned out to have (a
    /// response's size, rows exported): below the charge, the difference is
    /// [refunded](Self::refund_cost); above it, the excess is charged on the same key, as much
    /// of it as the key can still take (a key that cannot take it all is left empty, never in
    /// debt: the rest is reported as [`Settlement::uncharged`]). Charge the largest expected
    /// cost up front (the throttle's [`cost`](crate::ThrottleBuilder::cost)) and settle down
    /// to the actual one; a decision that charged nothing is left as it is.
    pub async fn settle(&self, decision: &Decision, actual: u64) -> Result<Settlement, Error> {
        let mut done = Settlement::default();
        if !decision.is_charged() || actual == decision.cost {
            return Ok(done);
        }
        if actual < decision.cost {
            let give = decision.cost - actual;
            if self.refund_cost(decision, give).await? {
                done.refunded = give;
            }
            return Ok(done);
        }
        let (Some(key), Some(rate)) = (&decision.key, decision.rate) else {
            return Ok(done);
        };
        let config = self.inner.config.load_full();
        let Some(backend) = self.charged_backend(&config, decision)? else {
            return Ok(done);
        };
        let mut excess = actual - decision.cost;
        let decide = |cost, mode| self.decide_direct(&config, &backend, key, Input { now_us: 0, rate, cost }, mode);
        // At most twice: the excess, else what the key says it can still take.
        for _ in 0..2 {
            let verdict = decide(excess, Mode::Consume).await?;
            if verdict.is_admitted() {
                done.charged += excess;
                return Ok(done);
            }
            let left = match verdict.kind {
                VerdictKind::Never => {
                    // The excess can never fit at once; what is left for unit hits can.
                    let peek = decide(1, Mode::Peek).await?;
                    if peek.is_admitted() { peek.remaining.saturating_add(1) } else { 0 }
                }
                _ => verdict.remaining,
            };
            let fits = left.min(excess);
            if fits == 0 || fits == excess {
                break;
            }
            done.uncharged += excess - fits;
            excess = fits;
        }
        done.uncharged += excess;
        Ok(done)
    }

    /// One decision on `key` straight from `backend` (no rules, policy or counters), at the
    /// throttle's time now.
    async fn decide_direct(
        &self,
        config: &Config,
        backend: &SharedBackend,
        key: &Key,
        input: Input,
        mode: Mode,
    ) -> Result<Verdict, Error> {
        let input = Input { now_us: self.inner.clock.now_us(), ..input };
        let op = Operation { key, strategy: &config.strategy, input, mode };
        let verdict = match backend.decide_now(&op) {
            Some(done) => done,
            None => bounded(backend.kind(), config.timeout, backend.decide(op)).await,
        };
        verdict.map_err(|source| Error::Backend { uid: self.inner.uid.clone(), source })
    }

    /// The backend that charged `decision`: the primary or the error policy's fallback.
    fn charged_backend(&self, config: &Config, decision: &Decision) -> Result<Option<SharedBackend>, Error> {
        let primary = self.backend(config)?;
        Ok(holder(config, &primary, decision.source))
    }
}
