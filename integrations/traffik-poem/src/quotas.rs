//! "What are my quotas?" as an endpoint.

use std::fmt;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::{Endpoint, Request, Response};
use traffik::{Context, ThrottleRegistry};

use crate::view::request_view;

type ContextFn = dyn Fn(&Request) -> Context + Send + Sync;

/// Serves the caller's quotas across a registry as JSON ([`ThrottleRegistry::quotas`]): a
/// snapshot of every throttle there that limits the request, charging nothing.
///
/// ```
/// use poem::Route;
/// use traffik::{InMemoryBackend, Throttle, ThrottleRegistry, rate, strategy::FixedWindow};
/// use traffik_poem::QuotasEndpoint;
///
/// let registry = ThrottleRegistry::new();
/// let api = Throttle::builder().uid("api").rate(rate!("100/min")).backend(InMemoryBackend::new())
///     .strategy(FixedWindow).registry(&registry).build()?;
/// let app = Route::new().at("/me/quotas", QuotasEndpoint::new(registry));
/// # let _ = (app, api);
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct QuotasEndpoint {
    registry: ThrottleRegistry,
    context: Option<Arc<ContextFn>>,
}

impl fmt::Debug for QuotasEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotasEndpoint").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl QuotasEndpoint {
    /// Quotas across `registry`.
    pub fn new(registry: ThrottleRegistry) -> Self {
        QuotasEndpoint { registry, context: None }
    }

    /// Builds the [`Context`] the snapshots are taken with (the same as the throttles' own
    /// middleware builds, so that identities and tiers resolve alike).
    #[must_use]
    pub fn context(mut self, f: impl Fn(&Request) -> Context + Send + Sync + 'static) -> Self {
        self.context = Some(Arc::new(f));
        self
    }
}

impl Endpoint for QuotasEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let ctx = self.context.as_ref().map_or_else(Context::new, |f| f(&req));
        let quotas = self.registry.quotas(&request_view(&req), &ctx).await;
        Ok(match serde_json::to_vec(&quotas) {
            Ok(body) => Response::builder().content_type("application/json").body(body),
            Err(error) => {
                tracing::debug!(%error, "quotas could not be serialized");
                Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).finish()
            }
        })
    }
}
