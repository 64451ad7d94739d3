//! Observing the service's responses for an adaptive limit.

use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use traffik::sources::Adaptive;

/// A hoop that reports every response of the handlers after it to an [`Adaptive`] limit: its
/// latency (from the hoop to the end of the handlers after it, on the limit's clock) and its
/// status (none set counts as 200; a request whose handling is cancelled, by a timeout or a
/// client that went away, counts as failed). What counts as overload is set on the limit's
/// builder ([`latency_target`](traffik::sources::AdaptiveBuilder::latency_target),
/// [`max_error_share`](traffik::sources::AdaptiveBuilder::max_error_share)).
///
/// Hoop it after the throttles it feeds, so refused requests (answered in microseconds) do not
/// count as fast responses:
///
/// ```
/// use std::time::Duration;
/// use salvo::prelude::*;
/// use traffik::sources::Adaptive;
/// use traffik::{InMemoryBackend, Throttle, rate, strategy::FixedWindow};
/// use traffik_salvo::{ObserveLoad, SalvoThrottle};
///
/// #[handler]
/// async fn search() -> &'static str { "results" }
///
/// let load = Adaptive::builder(rate!("100/s")).latency_target(Duration::from_millis(250))
///     .max_slow_share(0.05)?.max_error_share(0.1)?.build();
/// let throttle = Throttle::builder().uid("search").rate_source(load.clone().into())
///     .backend(InMemoryBackend::new()).strategy(FixedWindow).build()?;
/// let router = Router::with_path("search")
///     .hoop(SalvoThrottle::new(throttle))
///     .hoop(ObserveLoad::new(load))
///     .get(search);
/// # let _ = router;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ObserveLoad {
    adaptive: Adaptive,
}

impl ObserveLoad {
    /// Observes responses for `adaptive`.
    pub fn new(adaptive: Adaptive) -> Self {
        ObserveLoad { adaptive }
    }
}

#[async_trait]
impl Handler for ObserveLoad {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let seen = self.adaptive.begin();
        ctrl.call_next(req, depot, res).await;
        seen.finish(res.status_code.map_or(200, |s| s.as_u16()));
    }
}
