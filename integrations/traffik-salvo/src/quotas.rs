//! "What are my quotas?" as a handler.

use std::fmt;
use std::sync::Arc;

use salvo::http::StatusCode;
use salvo::http::header::{CONTENT_TYPE, HeaderValue};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use traffik::{Context, ThrottleRegistry};

use crate::view::request_view;

type ContextFn = Arc<dyn Fn(&Request, &Depot) -> Context + Send + Sync>;

/// Serves the caller's quotas across a registry as JSON ([`ThrottleRegistry::quotas`]): a
/// snapshot of every throttle there that limits the request, charging nothing.
///
/// ```
/// use salvo::Router;
/// use traffik::{InMemoryBackend, Throttle, ThrottleRegistry, rate, strategy::FixedWindow};
/// use traffik_salvo::QuotasHandler;
///
/// let registry = ThrottleRegistry::new();
/// let api = Throttle::builder().uid("api").rate(rate!("100/min")).backend(InMemoryBackend::new())
///     .strategy(FixedWindow).registry(&registry).build()?;
/// let router = Router::with_path("me/quotas").get(QuotasHandler::new(registry));
/// # let _ = (router, api);
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct QuotasHandler {
    registry: ThrottleRegistry,
    context: Option<ContextFn>,
}

impl fmt::Debug for QuotasHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotasHandler").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl QuotasHandler {
    /// Quotas across `registry`.
    pub fn new(registry: ThrottleRegistry) -> Self {
        QuotasHandler { registry, context: None }
    }

    /// Builds the [`Context`] the snapshots are taken with from the request and the depot
    /// (the same as the throttles' own hoops build, so that identities and tiers resolve alike).
    #[must_use]
    pub fn context(mut self, f: impl Fn(&Request, &Depot) -> Context + Send + Sync + 'static) -> Self {
        self.context = Some(Arc::new(f));
        self
    }
}

#[async_trait]
impl Handler for QuotasHandler {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, _ctrl: &mut FlowCtrl) {
        let ctx = self.context.as_ref().map_or_else(Context::new, |f| f(req, depot));
        let quotas = self.registry.quotas(&request_view(req), &ctx).await;
        match serde_json::to_vec(&quotas) {
            Ok(body) => {
                res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                res.body(body);
            }
            Err(error) => {
                tracing::debug!(%error, "quotas could not be serialized");
                res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    }
}
