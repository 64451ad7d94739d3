//! Observing the service's responses for an adaptive limit.

use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use traffik::sources::Adaptive;

/// Reports every response of the endpoints it wraps to an [`Adaptive`] limit: its latency
/// (from the request reaching this middleware to the endpoint's answer, on the limit's clock)
/// and its status (an error the endpoint returns counts with its status; a request whose
/// handling is cancelled, by a timeout layer outside or a client that went away, counts as
/// failed). What counts as overload is set on the limit's builder
/// ([`latency_target`](traffik::sources::AdaptiveBuilder::latency_target),
/// [`max_error_share`](traffik::sources::AdaptiveBuilder::max_error_share)).
///
/// Put it inside the throttles it feeds, so refused requests (answered in microseconds) do not
/// count as fast responses:
///
/// ```
/// use std::time::Duration;
/// use poem::{EndpointExt, Route, get, handler};
/// use traffik::sources::Adaptive;
/// use traffik::{InMemoryBackend, Throttle, rate, strategy::FixedWindow};
/// use traffik_poem::{ObserveLoad, PoemThrottle};
///
/// #[handler]
/// fn search() -> &'static str { "results" }
///
/// let load = Adaptive::builder(rate!("100/s")).latency_target(Duration::from_millis(250))
///     .max_slow_share(0.05)?.max_error_share(0.1)?.build();
/// let throttle = Throttle::builder().uid("search").rate_source(load.clone().into())
///     .backend(InMemoryBackend::new()).strategy(FixedWindow).build()?;
/// let app = Route::new().at("/search", get(search).with(ObserveLoad::new(load)).with(PoemThrottle::new(throttle)));
/// # let _ = app;
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

impl<E: Endpoint> Middleware<E> for ObserveLoad {
    type Output = ObserveLoadEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveLoadEndpoint { inner, adaptive: self.adaptive.clone() }
    }
}

/// The endpoint [`ObserveLoad`] wraps.
#[derive(Debug)]
pub struct ObserveLoadEndpoint<E> {
    inner: E,
    adaptive: Adaptive,
}

impl<E: Endpoint> Endpoint for ObserveLoadEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let seen = self.adaptive.begin();
        match self.inner.call(req).await {
            Ok(output) => {
                let response = output.into_response();
                seen.finish(response.status().as_u16());
                Ok(response)
            }
            Err(err) => {
                seen.finish(err.status().as_u16());
                Err(err)
            }
        }
    }
}
