//! What a request really cost, decided once its response is ready: a [`Settle`] rule, shared
//! by every integration (`traffik-poem`'s `PoemThrottle::settle`, `traffik-salvo`'s
//! `SalvoThrottle::settle`), so both frameworks settle alike.
//!
//! A throttle charges its cost when it admits a request, before the handler runs. Some costs
//! are only known afterwards: a failure on the server's side should not count against the
//! client, a download should cost what it sent. The integrations describe the response as a
//! [`Served`] (its status, its body's length when known), ask the rule for the actual cost,
//! and bring the charge to it with [`Throttle::settle`] (a refund below the charge, the excess
//! charged above it, as far as the key can take it).
//!
//! | rule | actual cost |
//! |---|---|
//! | [`Settle::refund_server_errors`] | 0 for a 5xx, else the charge |
//! | [`Settle::refund_when`] | 0 when the predicate holds for the status, else the charge |
//! | [`Settle::by_body_size`] | the body's length in units, rounded up; the charge when the length is unknown |
//! | [`Settle::new`] | whatever the function answers (`None` keeps the charge) |
//!
//! Settling applies to rate strategies. A throttle that holds leases
//! ([`Concurrency`](crate::strategy::Concurrency)) is left alone: its permit is given back
//! when the request ends anyway, whatever the response. A [`ThrottleGroup`] is settled by
//! refunds only ([`Settle::apply_group`]).

use std::fmt;
use std::sync::Arc;

use crate::decision::Decision;
use crate::error::{ConfigError, Error};
use crate::group::{GroupDecision, ThrottleGroup};
use crate::throttle::{Settlement, Throttle};

/// What an integration knows of a response once it is ready.
///
/// ```
/// use traffik::Served;
///
/// let served = Served::new(200).with_body_len(Some(1_500)).with_charged(4);
/// assert_eq!((served.status, served.body_len, served.charged), (200, Some(1_500), 4));
/// assert!(!served.is_server_error());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Served {
    /// The response's HTTP status; an error a handler returned counts with its status.
    pub status: u16,
    /// The body's length in bytes, when known exactly (a `Content-Length`, a body of known
    /// size); `None` for a streamed body, or one the framework writes later.
    pub body_len: Option<u64>,
    /// What the admission charged ([`Decision::cost`]; for a group, the binding member's).
    /// [`Settle::apply`] and [`Settle::apply_group`] fill it in.
    pub charged: u64,
}

impl Served {
    /// A response with this status, nothing else known.
    pub fn new(status: u16) -> Self {
        Served { status, body_len: None, charged: 0 }
    }

    /// With the body's length, when known.
    #[must_use]
    pub fn with_body_len(mut self, len: Option<u64>) -> Self {
        self.body_len = len;
        self
    }

    /// With the cost the admission charged.
    #[must_use]
    pub fn with_charged(mut self, cost: u64) -> Self {
        self.charged = cost;
        self
    }

    /// Whether the status is a server error (500 to 599).
    pub fn is_server_error(&self) -> bool {
        (500..600).contains(&self.status)
    }
}

type ActualFn = dyn Fn(&Served) -> Option<u64> + Send + Sync;

/// A rule deciding, once the response is ready, what the request really cost. Cheap to clone
/// (clones share the rule). See the [module docs](crate::settle) for the built-in rules.
///
/// ```
/// use traffik::{Served, Settle};
///
/// let rule = Settle::refund_server_errors();
/// assert_eq!(rule.actual(&Served::new(503).with_charged(1)), Some(0));
/// assert_eq!(rule.actual(&Served::new(404).with_charged(1)), None); // keeps the charge
///
/// // One unit per started kilobyte; an unknown length keeps the charge.
/// let rule = Settle::by_body_size(1024)?;
/// assert_eq!(rule.actual(&Served::new(200).with_body_len(Some(1025))), Some(2));
/// assert_eq!(rule.actual(&Served::new(200)), None);
///
/// // Anything else: a function of the response.
/// let rule = Settle::new(|s: &Served| (s.status == 304).then_some(s.charged / 2));
/// assert_eq!(rule.actual(&Served::new(304).with_charged(10)), Some(5));
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct Settle {
    actual: Arc<ActualFn>,
    name: &'static str,
}

impl fmt::Debug for Settle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Settle").field(&self.name).finish()
    }
}

impl Settle {
    /// A rule from a function of the response: `Some(actual)` is the request's actual cost,
    /// `None` keeps what was charged.
    pub fn new(f: impl Fn(&Served) -> Option<u64> + Send + Sync + 'static) -> Self {
        Settle { actual: Arc::new(f), name: "custom" }
    }

    /// Server errors (5xx) cost nothing: a request the service failed does not count against
    /// the client. Every other response keeps its charge.
    pub fn refund_server_errors() -> Self {
        Settle { actual: Arc::new(|s: &Served| s.is_server_error().then_some(0)), name: "refund_server_errors" }
    }

    /// Responses whose status satisfies `pred` cost nothing; the others keep their charge.
    /// `Settle::refund_when(|status| status >= 400)` refunds every error.
    pub fn refund_when(pred: impl Fn(u16) -> bool + Send + Sync + 'static) -> Self {
        Settle { actual: Arc::new(move |s: &Served| pred(s.status).then_some(0)), name: "refund_when" }
    }

    /// The body's size is the cost: one unit per `unit_bytes` bytes, rounded up (an empty body
    /// costs nothing). A body whose length is unknown (streamed) keeps the charge. Charge the
    /// largest size expected up front (the throttle's or the middleware's `cost`): a smaller
    /// body gets the difference back, a larger one is charged the excess as far as the key
    /// can take it ([`Throttle::settle`]).
    ///
    /// A unit of 0 bytes is refused with [`ConfigError::OutOfRange`]: no size is a number of
    /// empty units.
    pub fn by_body_size(unit_bytes: u64) -> Result<Self, Error> {
        if unit_bytes == 0 {
            return Err(ConfigError::OutOfRange {
                parameter: "body size unit",
                expected: "at least 1 byte",
                value: "0".to_owned(),
            }
            .into());
        }
        let actual = move |s: &Served| s.body_len.map(|len| len.div_ceil(unit_bytes));
        Ok(Settle { actual: Arc::new(actual), name: "by_body_size" })
    }

    /// The actual cost of `served` by this rule; `None` keeps the charge.
    pub fn actual(&self, served: &Served) -> Option<u64> {
        (self.actual)(served)
    }

    /// Settles `decision`, `throttle`'s admission of the request that got `served`: asks the
    /// rule for the actual cost (with [`Served::charged`] set to the decision's cost) and brings
    /// the charge to it with [`Throttle::settle`]. Nothing is done, and `Ok` returns an empty
    /// [`Settlement`], when the decision charged nothing ([`Decision::is_charged`]), the rule
    /// keeps the charge, or the throttle holds leases (a concurrency limit, whose permit is
    /// given back when the request ends).
    ///
    /// ```
    /// use traffik::{rate, InMemoryBackend, RequestView, Served, Settle, Throttle, strategy::FixedWindow};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let t = Throttle::builder()
    ///     .uid("settle-doc")
    ///     .rate(rate!("3/min"))
    ///     .backend(InMemoryBackend::new())
    ///     .strategy(FixedWindow)
    ///     .build()?;
    /// let req = RequestView::empty().peer(Some(([192, 0, 2, 1], 5000).into()));
    /// let decision = t.hit(&req).await?;
    /// let done = Settle::refund_server_errors().apply(&t, &decision, Served::new(500)).await?;
    /// assert_eq!(done.refunded, 1);
    /// assert_eq!(t.hit(&req).await?.remaining, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply(&self, throttle: &Throttle, decision: &Decision, served: Served) -> Result<Settlement, Error> {
        if !decision.is_charged() || throttle.holds_leases() {
            return Ok(Settlement::default());
        }
        match self.actual(&served.with_charged(decision.cost)) {
            Some(actual) => throttle.settle(decision, actual).await,
            None => Ok(Settlement::default()),
        }
    }

    /// Settles a group's admission by refunds only: when the rule's actual cost (with
    /// [`Served::charged`] set to the binding member's cost) is 0, every member's charge is
    /// given back ([`ThrottleGroup::refund`]); any other answer keeps the charges, since one
    /// actual cost does not say how to share a change among members charged differently.
    /// A group with a member that holds leases is left alone, as in [`apply`](Self::apply).
    /// The number of members whose state changed.
    pub async fn apply_group(
        &self,
        group: &ThrottleGroup,
        decided: &GroupDecision,
        served: Served,
    ) -> Result<usize, Error> {
        if !decided.is_allowed() || group.members().iter().any(Throttle::holds_leases) {
            return Ok(0);
        }
        let charged = decided.binding.and_then(|i| decided.members.get(i)).map_or(0, |d| d.cost);
        match self.actual(&served.with_charged(charged)) {
            Some(0) => group.refund(decided).await,
            _ => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn server_errors_cost_nothing_and_the_rest_keeps_its_charge() {
        let rule = Settle::refund_server_errors();
        for status in [500, 502, 503, 599] {
            assert_eq!(rule.actual(&Served::new(status).with_charged(3)), Some(0), "{status}");
        }
        for status in [200, 204, 301, 404, 429, 499, 600] {
            assert_eq!(rule.actual(&Served::new(status).with_charged(3)), None, "{status}");
        }
    }

    #[test]
    fn refund_when_asks_the_predicate_about_the_status() {
        let rule = Settle::refund_when(|s| s == 404 || s >= 500);
        assert_eq!(rule.actual(&Served::new(404)), Some(0));
        assert_eq!(rule.actual(&Served::new(500)), Some(0));
        assert_eq!(rule.actual(&Served::new(403)), None);
        assert_eq!(rule.actual(&Served::new(200)), None);
    }

    #[test]
    fn body_size_rounds_up_to_whole_units_and_unknown_keeps_the_charge() {
        let bytes = Settle::by_body_size(1).unwrap();
        assert_eq!(bytes.actual(&Served::new(200).with_body_len(Some(10))), Some(10));
        let kib = Settle::by_body_size(1024).unwrap();
        let cases = [(0, 0), (1, 1), (1023, 1), (1024, 1), (1025, 2), (u64::MAX, u64::MAX.div_ceil(1024))];
        for (len, units) in cases {
            assert_eq!(kib.actual(&Served::new(200).with_body_len(Some(len))), Some(units), "{len}");
        }
        assert_eq!(kib.actual(&Served::new(200).with_charged(7)), None);
    }

    #[test]
    fn a_unit_of_zero_bytes_is_refused() {
        let err = Settle::by_body_size(0).unwrap_err();
        assert!(matches!(err, Error::Config(ConfigError::OutOfRange { parameter: "body size unit", .. })), "{err}");
    }

    #[test]
    fn custom_rules_see_the_charge_and_clones_share_the_rule() {
        let rule = Settle::new(|s: &Served| s.body_len.map(|l| l.min(s.charged)));
        let copy = rule.clone();
        assert_eq!(copy.actual(&Served::new(200).with_body_len(Some(9)).with_charged(4)), Some(4));
        assert_eq!(rule.actual(&Served::new(200).with_body_len(Some(2)).with_charged(4)), Some(2));
        assert_eq!(format!("{rule:?}"), "Settle(\"custom\")");
        assert_eq!(format!("{:?}", Settle::refund_server_errors()), "Settle(\"refund_server_errors\")");
    }
}

#[cfg(test)]
mod applied {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::strategy::{Concurrency, FixedWindow};
    use crate::{Context, InMemoryBackend, RequestView, rate};

    fn throttle(uid: &str, r: crate::Rate) -> Throttle {
        Throttle::builder().uid(uid).rate(r).backend(InMemoryBackend::new()).strategy(FixedWindow).build().unwrap()
    }

    fn client() -> RequestView<'static> {
        RequestView::empty().peer(Some(([192, 0, 2, 7], 4000).into()))
    }

    /// What is left on `t` for the client, charging nothing.
    async fn left(t: &Throttle) -> Option<u64> {
        t.stat(&client()).await.unwrap().into_limited().map(|s| s.remaining)
    }

    #[tokio::test]
    async fn a_server_error_is_refunded_and_a_success_keeps_its_charge() {
        let t = throttle("settle-5xx", rate!("3/min"));
        let rule = Settle::refund_server_errors();
        let d = t.hit(&client()).await.unwrap();
        assert_eq!(rule.apply(&t, &d, Served::new(500)).await.unwrap().refunded, 1);
        assert_eq!(left(&t).await, Some(3));
        let d = t.hit(&client()).await.unwrap();
        assert_eq!(rule.apply(&t, &d, Served::new(200)).await.unwrap(), Settlement::default());
        assert_eq!(left(&t).await, Some(2));
    }

    #[tokio::test]
    async fn the_body_size_settles_down_and_up_as_far_as_the_key_can_take() {
        let t = throttle("settle-bytes", rate!("100/min"));
        let rule = Settle::by_body_size(1).unwrap();
        let reserve = Context::new().cost(50);
        let d = t.hit_with(&client(), &reserve).await.unwrap();
        let done = rule.apply(&t, &d, Served::new(200).with_body_len(Some(10))).await.unwrap();
        assert_eq!(done.refunded, 40);
        assert_eq!(left(&t).await, Some(90));
        let d = t.hit_with(&client(), &reserve).await.unwrap();
        let done = rule.apply(&t, &d, Served::new(200).with_body_len(Some(200))).await.unwrap();
        assert_eq!((done.charged, done.uncharged), (40, 110));
        assert_eq!(left(&t).await, Some(0));
    }

    #[tokio::test]
    async fn refused_decisions_and_concurrency_limits_are_left_alone() {
        let t = throttle("settle-refused", rate!("1/min"));
        let _first = t.hit(&client()).await.unwrap();
        let refused = t.hit(&client()).await.unwrap();
        assert!(refused.is_refused());
        let rule = Settle::refund_server_errors();
        assert_eq!(rule.apply(&t, &refused, Served::new(500)).await.unwrap(), Settlement::default());
        assert_eq!(left(&t).await, Some(0));

        let uploads = Throttle::builder()
            .uid("settle-leases")
            .rate(rate!("1/min"))
            .backend(InMemoryBackend::new())
            .strategy(Concurrency)
            .build()
            .unwrap();
        let permit = uploads.acquire(&client()).await.unwrap();
        assert!(permit.decision().is_charged());
        assert_eq!(rule.apply(&uploads, permit.decision(), Served::new(500)).await.unwrap(), Settlement::default());
        // The slot is still held: a second upload is refused until the permit goes.
        assert!(uploads.acquire(&client()).await.unwrap().decision().is_refused());
        drop(permit);
    }

    #[tokio::test]
    async fn a_group_is_refunded_when_the_actual_cost_is_zero_and_kept_otherwise() {
        let group = ThrottleGroup::new(
            "settle-group",
            [throttle("settle-g-minute", rate!("3/min")), throttle("settle-g-hour", rate!("10/h"))],
        )
        .unwrap();
        let decided = group.hit(&client()).await.unwrap();
        let bytes = Settle::by_body_size(1).unwrap();
        assert_eq!(bytes.apply_group(&group, &decided, Served::new(200).with_body_len(Some(5))).await.unwrap(), 0);
        assert_eq!(Settle::refund_server_errors().apply_group(&group, &decided, Served::new(502)).await.unwrap(), 2);
        let after = group.stat(&client()).await.unwrap();
        let remaining: Vec<_> = after.into_iter().map(|s| s.into_limited().map(|s| s.remaining)).collect();
        assert_eq!(remaining, [Some(3), Some(10)]);
    }
}
