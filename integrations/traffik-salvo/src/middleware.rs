//! Global throttling with per-throttle method, path and predicate filters.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use salvo::http::Method;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use traffik::rules::PathPattern;
use traffik::{Error, Rule, Settle, Throttle};

use crate::hoop::SalvoThrottle;

type BoxedBool = Pin<Box<dyn Future<Output = bool> + Send>>;
type SyncPredicate = Arc<dyn Fn(&Request, &Depot) -> bool + Send + Sync>;
type AsyncPredicate = Arc<dyn Fn(&Request, &Depot) -> BoxedBool + Send + Sync>;

#[derive(Clone)]
enum Predicate {
    Sync(SyncPredicate),
    Async(AsyncPredicate),
}

/// One throttle of a [`ThrottleMiddleware`], with the conditions under which it applies.
///
/// Conditions are ANDed and checked cheapest first: method, then path, then predicate. With no
/// condition the throttle applies to every request.
///
/// ```
/// use salvo::http::Method;
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_salvo::MiddlewareThrottle;
///
/// let writes = Throttle::builder()
///     .uid("salvo-doc-writes")
///     .rate(rate!("10/min"))
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .build()?;
/// let entry = MiddlewareThrottle::new(writes)
///     .path("/api/**")?
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .predicate(|req, _depot| req.headers().contains_key("authorization"))
///     .cost(2);
/// # let _ = entry;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct MiddlewareThrottle {
    hoop: SalvoThrottle,
    /// Method and path conditions, matched by the core's rule logic.
    filter: Rule,
    /// A Salvo-specific condition over the request and depot.
    predicate: Option<Predicate>,
}

impl MiddlewareThrottle {
    /// A throttle that applies to every request (a [`Throttle`] or a configured
    /// [`SalvoThrottle`]).
    pub fn new(throttle: impl Into<SalvoThrottle>) -> Self {
        MiddlewareThrottle { hoop: throttle.into(), filter: Rule::gate(), predicate: None }
    }

    /// Applies only to paths matching a glob ([`PathPattern::glob`]: `*` is one segment,
    /// `**` any number of segments, anchored to the whole path).
    pub fn path(self, glob: &str) -> Result<Self, Error> {
        Ok(self.path_pattern(PathPattern::glob(glob)?))
    }

    /// Applies only to paths matching a compiled pattern (glob or regex).
    #[must_use]
    pub fn path_pattern(mut self, pattern: PathPattern) -> Self {
        self.filter = self.filter.path_pattern(pattern);
        self
    }

    /// Applies only to these methods.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.filter = self.filter.methods(methods);
        self
    }

    /// Applies only when `f` holds.
    #[must_use]
    pub fn predicate(mut self, f: impl Fn(&Request, &Depot) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Predicate::Sync(Arc::new(f)));
        self
    }

    /// Applies only when the future returned by `f` yields `true`. `f` reads what it needs
    /// from the request and depot and returns an owned future (for a cache or database lookup).
    #[must_use]
    pub fn predicate_async<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(&Request, &Depot) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let boxed = move |req: &Request, depot: &Depot| -> BoxedBool { Box::pin(f(req, depot)) };
        self.predicate = Some(Predicate::Async(Arc::new(boxed)));
        self
    }

    /// Settles each admission once the rest of the chain has answered (see
    /// [`SalvoThrottle::settle`]).
    #[must_use]
    pub fn settle(mut self, rule: Settle) -> Self {
        self.hoop = self.hoop.settle(rule);
        self
    }

    /// Charges each matching request `cost` instead of the throttle's own cost.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.hoop = self.hoop.cost(cost);
        self
    }

    /// The wrapped throttle.
    pub fn throttle(&self) -> &Throttle {
        self.hoop.throttle()
    }

    /// Whether this throttle applies to `req` (method, then path, then predicate).
    pub async fn matches(&self, req: &Request, depot: &Depot) -> bool {
        if !self.filter.matches_method(req.method()) || !self.filter.matches_path(req.uri().path()) {
            return false;
        }
        match &self.predicate {
            None => true,
            Some(Predicate::Sync(f)) => f(req, depot),
            Some(Predicate::Async(f)) => f(req, depot).await,
        }
    }
}

impl fmt::Debug for MiddlewareThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiddlewareThrottle")
            .field("throttle", &self.hoop)
            .field("filter", &self.filter)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

/// A hoop applying several [`MiddlewareThrottle`]s in the order given; the first denial stops
/// the request.
///
/// For global throttling put it on the root router (it then runs for requests some route
/// matches) or on the service (`Service::new(router).hoop(middleware)`, which also counts
/// requests that end in a 404, such as path scans).
///
/// ```
/// use salvo::prelude::*;
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_salvo::{MiddlewareThrottle, ThrottleMiddleware};
///
/// let build = |uid: &str, r| {
///     Throttle::builder()
///         .uid(uid)
///         .rate(r)
///         .backend(InMemoryBackend::new())
///         .strategy(FixedWindow)
///         .build()
/// };
/// let middleware = ThrottleMiddleware::new([
///     MiddlewareThrottle::new(build("salvo-doc-admin", rate!("5/min"))?).path("/admin/**")?,
///     MiddlewareThrottle::new(build("salvo-doc-public", rate!("1000/min"))?).path("/api/**")?,
/// ]);
/// let router = Router::new().hoop(middleware);
/// # let _ = router;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ThrottleMiddleware {
    entries: Arc<[MiddlewareThrottle]>,
}

impl ThrottleMiddleware {
    /// The throttles, applied in this order.
    pub fn new(entries: impl IntoIterator<Item = MiddlewareThrottle>) -> Self {
        ThrottleMiddleware { entries: entries.into_iter().collect() }
    }

    /// The throttles.
    pub fn entries(&self) -> &[MiddlewareThrottle] {
        &self.entries
    }
}

#[async_trait]
impl Handler for ThrottleMiddleware {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        // Concurrency limits' permits, held while the rest of the chain runs and released when
        // this future ends, however it ends (as the per-route hoop does).
        let mut permits = Vec::new();
        // The admissions to settle once the chain has answered.
        let mut settling = Vec::new();
        for entry in self.entries.iter() {
            if !entry.matches(req, depot).await {
                continue;
            }
            let leased = entry.hoop.throttle().holds_leases();
            let Some(mut admitted) = entry.hoop.run_with(req, depot, res, ctrl, None, leased).await else {
                ctrl.skip_rest();
                return;
            };
            permits.extend(admitted.permit.take().map(|p| *p));
            if admitted.to_settle.is_some() {
                settling.push((entry, admitted));
            }
        }
        if !permits.is_empty() || !settling.is_empty() {
            ctrl.call_next(req, depot, res).await;
            drop(permits);
            for (entry, mut admitted) in settling {
                entry.hoop.settle_after(&mut admitted, res).await;
            }
        }
    }
}
