//! App-wide middleware: [`ThrottleMiddleware`] applies a list of [`MiddlewareThrottle`]s to every
//! matching request, in order.

use std::sync::{Arc, LazyLock};

use poem::http::{HeaderMap, Method};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use traffik::rules::PathPattern;
use traffik::rules::Predicate;
use traffik::{Context, Decision, Rule, Settle, Throttle};

use crate::middleware::{allowed_headers, hold, record_shared};
use crate::response::{add_missing, error_response, throttled_response};
use crate::view::request_view;

static EMPTY: LazyLock<Context> = LazyLock::new(Context::new);

/// One throttle of a [`ThrottleMiddleware`] and when it applies: a path glob (or regex), a set
/// of methods and a predicate, all of which must match (checked in that cheap-to-expensive
/// order: method, path, predicate), and an optional cost override.
///
/// ```
/// use poem::http::Method;
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_poem::MiddlewareThrottle;
///
/// let writes = Throttle::builder().uid("writes").rate(rate!("10/min"))
///     .backend(InMemoryBackend::new()).strategy(FixedWindow).build()?;
/// let rule = MiddlewareThrottle::new(writes)
///     .path("/api/**")?
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .predicate(|req: &traffik::RequestView<'_>, _: &traffik::Context| {
///         req.headers().contains_key("authorization")
///     })
///     .cost(2);
/// # let _ = rule;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MiddlewareThrottle {
    throttle: Throttle,
    uid: Arc<str>,
    rule: Rule,
    cost: Option<u64>,
    per_path: bool,
    settle: Option<Settle>,
}

impl MiddlewareThrottle {
    /// Applies `throttle` to every request (until narrowed).
    pub fn new(throttle: Throttle) -> Self {
        let uid = Arc::from(throttle.uid());
        MiddlewareThrottle { throttle, uid, rule: Rule::gate(), cost: None, per_path: false, settle: None }
    }

    /// Only paths matching this glob (`*` one segment, `**` any number; see
    /// [`traffik::rules`]). Matched against the request's full original path.
    pub fn path(self, glob: &str) -> Result<Self, traffik::Error> {
        Ok(self.path_pattern(PathPattern::glob(glob)?))
    }

    /// Only paths matching this regex (unanchored unless it uses `^`/`$`).
    pub fn path_regex(self, pattern: &str) -> Result<Self, traffik::Error> {
        Ok(self.path_pattern(PathPattern::regex(pattern)?))
    }

    /// Only paths matching a compiled pattern.
    #[must_use]
    pub fn path_pattern(mut self, pattern: PathPattern) -> Self {
        self.rule = self.rule.path_pattern(pattern);
        self
    }

    /// Only these methods.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.rule = self.rule.methods(methods);
        self
    }

    /// Only requests for which the predicate holds: a sync closure
    /// `Fn(&RequestView, &Context) -> bool` or a [`traffik::rules::AsyncPredicate`]. Runs last, after
    /// the method and path checks passed.
    #[must_use]
    pub fn predicate(mut self, predicate: impl Predicate) -> Self {
        self.rule = self.rule.predicate(predicate);
        self
    }

    /// Overrides the throttle's cost for requests through this middleware.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Gives every concrete path its own quota (see [`PoemThrottle::per_path`]).
    ///
    /// [`PoemThrottle::per_path`]: crate::PoemThrottle::per_path
    #[must_use]
    pub fn per_path(mut self, yes: bool) -> Self {
        self.per_path = yes;
        self
    }

    /// Settles each admission once the endpoint has answered (see [`PoemThrottle::settle`]).
    ///
    /// [`PoemThrottle::settle`]: crate::PoemThrottle::settle
    #[must_use]
    pub fn settle(mut self, rule: Settle) -> Self {
        self.settle = Some(rule);
        self
    }

    /// The throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    fn context(&self, req: &Request) -> Option<Context> {
        if self.cost.is_none() && !self.per_path {
            return None;
        }
        let mut ctx = Context::new();
        if let Some(cost) = self.cost {
            ctx = ctx.cost(cost);
        }
        if self.per_path {
            ctx = ctx.scope(crate::view::full_uri(req).path());
        }
        Some(ctx)
    }
}

/// App-wide throttling: every request is checked against each [`MiddlewareThrottle`] in the
/// order given; each one that matches is hit. The first rejection answers 429 (later throttles
/// are not hit); a backend failure the error policy raised answers 503; a delayed decision waits
/// before the next throttle runs. A throttle in shadow mode ([`Throttle::set_shadow`]) neither
/// refuses nor delays: the next throttle runs at once. Admitted requests carry every hit throttle's
/// [`Decision`] (see [`ThrottleDecisions`](crate::ThrottleDecisions)) and get their headers
/// (applied in order, a later throttle's header replacing an earlier one's of the same name).
///
/// ```
/// use poem::{EndpointExt, Route, get, handler};
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_poem::{MiddlewareThrottle, ThrottleMiddleware};
///
/// #[handler]
/// fn index() -> &'static str { "hi" }
///
/// let build = |uid: &str, r| {
///     Throttle::builder().uid(uid).rate(r).backend(InMemoryBackend::new())
///         .strategy(FixedWindow).build()
/// };
/// let app = Route::new().at("/", get(index)).with(ThrottleMiddleware::new([
///     MiddlewareThrottle::new(build("admin", rate!("5/min"))?).path("/admin/**")?,
///     MiddlewareThrottle::new(build("everything", rate!("1000/min"))?),
/// ]));
/// # let _ = app;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ThrottleMiddleware {
    throttles: Arc<[MiddlewareThrottle]>,
}

impl ThrottleMiddleware {
    /// Applies these throttles, in this order.
    pub fn new(throttles: impl IntoIterator<Item = MiddlewareThrottle>) -> Self {
        ThrottleMiddleware { throttles: throttles.into_iter().collect() }
    }

    /// The throttles, in order.
    pub fn throttles(&self) -> &[MiddlewareThrottle] {
        &self.throttles
    }
}

impl<E: Endpoint> Middleware<E> for ThrottleMiddleware {
    type Output = ThrottleMiddlewareEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ThrottleMiddlewareEndpoint { inner: ep, throttles: Arc::clone(&self.throttles) }
    }
}

/// The endpoint [`ThrottleMiddleware`] wraps around another.
#[derive(Debug)]
pub struct ThrottleMiddlewareEndpoint<E> {
    inner: E,
    throttles: Arc<[MiddlewareThrottle]>,
}

enum Step {
    Skip,
    /// Admitted, with the permit of a throttle that holds leases (a concurrency limit).
    Pass(Decision, Option<Box<traffik::lease::Permit>>),
    Stop(Response),
}

async fn run_one(mt: &MiddlewareThrottle, req: &Request) -> Step {
    let view = request_view(req);
    let own = mt.context(req);
    let ctx = own.as_ref().unwrap_or(&EMPTY);
    if !mt.rule.matches(&view, ctx).await {
        return Step::Skip;
    }
    let (decision, permit) = if mt.throttle.holds_leases() {
        match mt.throttle.acquire_with(&view, ctx).await {
            Ok(p) => (p.decision().clone(), Some(Box::new(p))),
            Err(e) => return Step::Stop(error_response(&mt.uid, &e)),
        }
    } else {
        match mt.throttle.hit_with(&view, ctx).await {
            Ok(d) => (d, None),
            Err(e) => return Step::Stop(error_response(&mt.uid, &e)),
        }
    };
    if decision.is_refused() {
        return Step::Stop(throttled_response(&mt.throttle, req, &decision));
    }
    hold(&decision).await;
    Step::Pass(decision, permit)
}

impl<E: Endpoint> Endpoint for ThrottleMiddlewareEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let mut headers: Option<HeaderMap> = None;
        // Concurrency limits' permits, held until the endpoint has answered and released when
        // this future ends, however it ends (as the per-route middleware does).
        let mut permits = Vec::new();
        // The admissions to settle once the endpoint has answered.
        let mut settling = Vec::new();
        for mt in self.throttles.iter() {
            match run_one(mt, &req).await {
                Step::Skip => {}
                Step::Stop(resp) => return Ok(resp),
                Step::Pass(decision, permit) => {
                    permits.extend(permit);
                    if let Some(h) = allowed_headers(&mt.throttle, &req, &decision) {
                        headers.get_or_insert_with(HeaderMap::new).extend(h);
                    }
                    if let Some(rule) = mt.settle.as_ref().filter(|_| decision.is_charged()) {
                        settling.push((mt, rule, decision.clone()));
                    }
                    record_shared(&mut req, &mt.uid, decision);
                }
            }
        }
        let mut answer = self.inner.call(req).await.map(IntoResponse::into_response);
        drop(permits);
        if !settling.is_empty() {
            let served = crate::settle::served_answer(&mut answer);
            for (mt, rule, decision) in settling {
                crate::settle::settle(rule, &mt.throttle, &decision, served).await;
            }
        }
        let mut resp = answer?;
        if let Some(h) = headers {
            add_missing(resp.headers_mut(), h);
        }
        Ok(resp)
    }
}
