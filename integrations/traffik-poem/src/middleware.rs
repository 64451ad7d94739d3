//! Per-route middleware: [`PoemThrottle`] wraps a [`Throttle`] so `route.at("/x", get(h).with(..))`
//! enforces it.

use std::fmt;
use std::sync::Arc;

use poem::http::HeaderMap;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use traffik::{Context, Decision, Outcome, RequestView, Settle, Throttle};

use crate::response::{add_missing, error_response, throttled_response};
use crate::view::request_view;

type ContextFn = dyn Fn(&Request) -> Context + Send + Sync;

struct Options {
    refusal_status: Option<poem::http::StatusCode>,
    cost: Option<u64>,
    per_path: bool,
    per_route: bool,
    shadow: bool,
    context: Option<Arc<ContextFn>>,
    settle: Option<Settle>,
}

/// A [`Throttle`] usable as Poem middleware (a newtype: Poem's `Middleware` trait and
/// `traffik::Throttle` are both foreign to this crate).
///
/// Cheap to clone; clones share the throttle's state. Stack several on one endpoint and all are
/// enforced (the outermost runs first):
///
/// ```
/// use poem::{EndpointExt, Route, get, handler};
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_poem::PoemThrottle;
///
/// #[handler]
/// fn data() -> &'static str { "data" }
///
/// let build = |uid: &str, r| {
///     Throttle::builder().uid(uid).rate(r).backend(InMemoryBackend::new())
///         .strategy(FixedWindow).build()
/// };
/// let burst = PoemThrottle::new(build("burst", rate!("10/min"))?);
/// let sustained = PoemThrottle::new(build("sustained", rate!("100/hour"))?);
/// let app = Route::new().at("/data", get(data).with(burst).with(sustained));
/// # let _ = app;
/// # Ok::<(), traffik::Error>(())
/// ```
///
/// Per request: the throttle is hit (with this wrapper's [`cost`](Self::cost) and
/// [`context`](Self::context) if set). A rejection answers 429 ([`throttled_response`]) without
/// calling the endpoint; a backend failure the error policy raised answers 503
/// ([`error_response`]); a delayed decision (`LeakyBucketWithQueue`) waits
/// [`Decision::wait`] and then calls the endpoint. In shadow mode ([`Throttle::set_shadow`],
/// [`shadow`](Self::shadow)) neither happens: the endpoint is called at once, and sees the
/// refusal or delay in the decision ([`Decision::shadow`]). The endpoint sees the [`Decision`] as request
/// data (`Data<&Decision>`, the innermost throttle's) and every throttle's decision in
/// [`ThrottleDecisions`]; the throttle's headers that apply to allowed requests
/// ([`traffik::When::Always`]) are added to its response where it does not set them already (a
/// header the endpoint or an inner throttle set is never replaced; errors returned by the
/// endpoint pass through untouched).
///
/// Keys hold the client identity and never the path, so a route with path parameters
/// (`/users/:id`) is limited per client for the whole route; [`per_path`](Self::per_path)
/// gives each concrete path its own quota instead.
#[derive(Clone)]
pub struct PoemThrottle {
    throttle: Throttle,
    uid: Arc<str>,
    opts: Arc<Options>,
}

impl fmt::Debug for PoemThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoemThrottle")
            .field("throttle", &self.throttle)
            .field("cost", &self.opts.cost)
            .field("per_path", &self.opts.per_path)
            .field("per_route", &self.opts.per_route)
            .field("shadow", &self.opts.shadow)
            .field("settle", &self.opts.settle)
            .finish()
    }
}

impl From<Throttle> for PoemThrottle {
    fn from(throttle: Throttle) -> Self {
        PoemThrottle::new(throttle)
    }
}

impl PoemThrottle {
    /// Wraps a throttle.
    pub fn new(throttle: Throttle) -> Self {
        let uid = Arc::from(throttle.uid());
        PoemThrottle {
            throttle,
            uid,
            opts: Arc::new(Options {
                refusal_status: None,
                cost: None,
                per_path: false,
                per_route: false,
                shadow: false,
                context: None,
                settle: None,
            }),
        }
    }

    fn with_opts(mut self, f: impl FnOnce(&mut Options)) -> Self {
        let old = &self.opts;
        let mut next = Options {
            refusal_status: old.refusal_status,
            cost: old.cost,
            per_path: old.per_path,
            per_route: old.per_route,
            shadow: old.shadow,
            context: old.context.clone(),
            settle: old.settle.clone(),
        };
        f(&mut next);
        self.opts = Arc::new(next);
        self
    }

    /// The status of a refusal, instead of `429 Too Many Requests`: e.g. `503 Service
    /// Unavailable` for a concurrency limit that protects a scarce resource. Headers and body
    /// stay the same (`Retry-After` included when a retry can pass).
    #[must_use]
    pub fn refusal_status(self, status: poem::http::StatusCode) -> Self {
        self.with_opts(|o| o.refusal_status = Some(status))
    }

    fn refused(&self, req: &Request, decision: &Decision) -> Response {
        let mut resp = throttled_response(&self.throttle, req, decision);
        if let Some(status) = self.opts.refusal_status {
            resp.set_status(status);
        }
        resp
    }

    /// Acquires a permit for `req` with this wrapper's options ([`Throttle::acquire`]): what
    /// the middleware does for throttles that hold leases.
    pub async fn acquire(&self, req: &Request) -> Result<traffik::lease::Permit, traffik::Error> {
        let view = request_view(req);
        match self.context_for(req) {
            None => self.throttle.acquire(&view).await,
            Some(ctx) => self.throttle.acquire_with(&view, &ctx).await,
        }
    }

    /// Overrides the throttle's cost for requests through this middleware.
    #[must_use]
    pub fn cost(self, cost: u64) -> Self {
        self.with_opts(|o| o.cost = Some(cost))
    }

    /// Gives every concrete path its own quota (the path becomes a key scope via
    /// [`Context::scope`]). Off by default: a route is limited per client as a whole.
    ///
    /// Each distinct path a client requests then keeps its own state, so a client can create
    /// as many keys as it can invent paths; the in-memory backend's key cap bounds that, and
    /// keys are encoded so no path can change a key's structure.
    #[must_use]
    pub fn per_path(self, yes: bool) -> Self {
        self.with_opts(|o| o.per_path = yes)
    }

    /// Gives every route pattern its own quota (`/users/:id` is one route, whatever the id): a
    /// throttle shared by several routes then limits each route apart, as `traffik-salvo`'s
    /// `per_route` does. Outside a [`Route`](poem::Route) there is no pattern and nothing is
    /// added. Off by default: one throttle limits a client across every route it guards.
    #[must_use]
    pub fn per_route(self, yes: bool) -> Self {
        self.with_opts(|o| o.per_route = yes)
    }

    /// Shadow mode for hits through this middleware only: the throttle decides, records and
    /// counts as usual, but a refusal still reaches the endpoint (which can tell with
    /// [`is_throttled`] and [`Decision::shadow`]) and a delay is not waited. It is the
    /// throttle's own shadow mode ([`Throttle::set_shadow`]) for this route, through
    /// [`Context::shadow`]: the same headers (no `Retry-After`), the same count
    /// ([`Throttle::shadow_refusals`]) and log line. Default `false`.
    #[must_use]
    pub fn shadow(self, yes: bool) -> Self {
        self.with_opts(|o| o.shadow = yes)
    }

    /// `enforce(false)` is [`shadow(true)`](Self::shadow).
    #[deprecated(since = "0.1.0", note = "use `shadow(!yes)`: the same per-middleware option under its shared name")]
    #[must_use]
    pub fn enforce(self, yes: bool) -> Self {
        self.shadow(!yes)
    }

    /// Builds the per-request [`Context`] (cost override, scope parts, typed values for the
    /// throttle's identifier, rules, cost and rate functions) from the request, e.g. a user an
    /// earlier middleware put in the request's extensions. [`cost`](Self::cost) and
    /// [`per_path`](Self::per_path) are applied on top of it.
    #[must_use]
    pub fn context(self, f: impl Fn(&Request) -> Context + Send + Sync + 'static) -> Self {
        self.with_opts(|o| o.context = Some(Arc::new(f)))
    }

    /// Settles each admission once the endpoint has answered: `rule` says from the response
    /// (its status; its body's length, from `Content-Length` or the body's exact size) what the
    /// request really cost, and the charge is brought to it ([`Settle::apply`],
    /// [`Throttle::settle`]): [`Settle::refund_server_errors`] gives a failed request's cost
    /// back, [`Settle::by_body_size`] charges what was sent. An error the endpoint returned
    /// counts with its status (and an unknown body). Settling never changes the response (its
    /// limit headers describe the admission); a backend failure while settling is logged
    /// (`warn`) and the charge stands. A throttle that holds leases
    /// ([`Concurrency`](traffik::strategy::Concurrency)) is not settled: its permit is given
    /// back when the request ends anyway.
    ///
    /// ```
    /// use poem::{EndpointExt, Route, get, handler, http::StatusCode, test::TestClient};
    /// use traffik::{rate, InMemoryBackend, Settle, Throttle, strategy::FixedWindow};
    /// use traffik_poem::PoemThrottle;
    ///
    /// #[handler]
    /// fn flaky() -> StatusCode { StatusCode::INTERNAL_SERVER_ERROR }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let throttle = Throttle::builder().uid("poem-doc-settle").rate(rate!("1/min"))
    ///     .backend(InMemoryBackend::new()).strategy(FixedWindow).build()?;
    /// let limit = PoemThrottle::new(throttle).settle(Settle::refund_server_errors());
    /// let cli = TestClient::new(Route::new().at("/", get(flaky).with(limit)));
    /// for _ in 0..3 {
    ///     // Every failure is refunded: never a 429.
    ///     cli.get("/").send().await.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn settle(self, rule: Settle) -> Self {
        self.with_opts(|o| o.settle = Some(rule))
    }

    /// The wrapped throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Unwraps the throttle.
    pub fn into_inner(self) -> Throttle {
        self.throttle
    }

    fn context_for(&self, req: &Request) -> Option<Context> {
        let o = &self.opts;
        if o.cost.is_none() && !o.per_path && !o.per_route && !o.shadow && o.context.is_none() {
            return None;
        }
        let mut ctx = o.context.as_ref().map_or_else(Context::new, |f| f(req));
        if o.shadow {
            ctx = ctx.shadow(true);
        }
        if let Some(cost) = o.cost {
            ctx = ctx.cost(cost);
        }
        if o.per_route
            && let Some(pattern) = req.data::<poem::PathPattern>()
        {
            ctx = ctx.scope(format!("route:{}", pattern.0));
        }
        if o.per_path {
            ctx = ctx.scope(crate::view::full_uri(req).path());
        }
        Some(ctx)
    }

    /// Hits the throttle for `req` with this wrapper's options.
    pub async fn hit(&self, req: &Request) -> Result<Decision, traffik::Error> {
        let view = request_view(req);
        match self.context_for(req) {
            None => self.throttle.hit(&view).await,
            Some(ctx) => self.throttle.hit_with(&view, &ctx).await,
        }
    }
}

impl<E: Endpoint> Middleware<E> for PoemThrottle {
    type Output = ThrottleEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ThrottleEndpoint { inner: ep, throttle: self.clone() }
    }
}

/// The endpoint [`PoemThrottle`] wraps around another.
#[derive(Debug)]
pub struct ThrottleEndpoint<E> {
    inner: E,
    throttle: PoemThrottle,
}

impl<E: Endpoint> Endpoint for ThrottleEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let t = &self.throttle;
        if t.throttle.holds_leases() {
            return Box::pin(self.call_leased(req)).await;
        }
        let decision = match t.hit(&req).await {
            Ok(d) => d,
            Err(e) => return Ok(error_response(&t.uid, &e)),
        };
        if decision.is_refused() {
            return Ok(t.refused(&req, &decision));
        }
        hold(&decision).await;
        let headers = HeadersFor::admitted(&t.throttle, &req, &decision);
        let kept = matches!(headers, HeadersFor::AfterCall).then(|| decision.clone());
        // Boxed, as the settling below: the endpoint's future carries one word for it when no rule is set.
        let settling =
            t.opts.settle.as_ref().filter(|_| decision.is_charged()).map(|rule| (rule, Box::new(decision.clone())));
        record_shared(&mut req, &t.uid, decision);
        let mut answer = self.inner.call(req).await.map(IntoResponse::into_response);
        if let Some((rule, charged)) = settling {
            let served = crate::settle::served_answer(&mut answer);
            Box::pin(crate::settle::settle(rule, &t.throttle, &charged, served)).await;
        }
        let mut resp = answer?;
        headers.add_to(&t.throttle, kept.as_ref(), &mut resp);
        Ok(resp)
    }
}

impl<E: Endpoint> ThrottleEndpoint<E> {
    /// A throttle with leases (a concurrency limit): the permit is held until the endpoint has
    /// answered, and released when this future ends, however it ends (an answer, an error, a
    /// panic, or the connection going away and the future being dropped).
    async fn call_leased(&self, mut req: Request) -> poem::Result<Response> {
        let t = &self.throttle;
        let permit = match t.acquire(&req).await {
            Ok(p) => p,
            Err(e) => return Ok(error_response(&t.uid, &e)),
        };
        let decision = permit.decision().clone();
        if decision.is_refused() {
            return Ok(t.refused(&req, &decision));
        }
        hold(&decision).await;
        let headers = HeadersFor::admitted(&t.throttle, &req, &decision);
        let kept = matches!(headers, HeadersFor::AfterCall).then(|| decision.clone());
        record_shared(&mut req, &t.uid, decision);
        // The endpoint may take the permit ([`take_permit`]) to keep it longer (a WebSocket).
        let held = HeldPermit(Arc::new(std::sync::Mutex::new(Some(permit))));
        req.extensions_mut().insert(held.clone());
        let answer = self.inner.call(req).await;
        drop(held.take());
        let mut resp = answer?.into_response();
        headers.add_to(&t.throttle, kept.as_ref(), &mut resp);
        Ok(resp)
    }
}

/// The permit a concurrency limit's middleware holds for a request, in the request's
/// extensions until the endpoint has answered; see [`take_permit`].
#[derive(Clone)]
pub struct HeldPermit(Arc<std::sync::Mutex<Option<traffik::lease::Permit>>>);

impl fmt::Debug for HeldPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeldPermit")
    }
}

impl HeldPermit {
    fn take(&self) -> Option<traffik::lease::Permit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// Takes the permit the innermost concurrency-limit middleware holds for `req` (a throttle with
/// the [`Concurrency`](traffik::strategy::Concurrency) strategy), so that it lives as long as
/// the value it is moved into rather than until the endpoint answers: move it into a
/// WebSocket's `on_upgrade` task and the slot is held until the socket closes.
///
/// ```
/// use poem::{IntoResponse, Request, handler, web::websocket::WebSocket};
///
/// #[handler]
/// fn feed(ws: WebSocket, req: &Request) -> impl IntoResponse {
///     let permit = traffik_poem::take_permit(req);
///     ws.on_upgrade(move |socket| async move {
///         let _held = permit; // released when the socket's task ends
///         let _ = socket;
///     })
/// }
/// ```
pub fn take_permit(req: &Request) -> Option<traffik::lease::Permit> {
    req.extensions().get::<HeldPermit>().and_then(HeldPermit::take)
}

/// A throttle's headers for an admitted request, added to the response once the endpoint has
/// answered (where the response does not set them already).
pub(crate) enum HeadersFor {
    /// None apply.
    Nothing,
    /// Resolved before the endpoint took the request (some header reads the request).
    Resolved(HeaderMap),
    /// Resolved from the decision alone, straight into the response: no map in between.
    AfterCall,
}

impl HeadersFor {
    pub(crate) fn admitted(throttle: &Throttle, req: &Request, decision: &Decision) -> Self {
        let headers = throttle.headers();
        if matches!(decision.outcome, Outcome::Skipped(_)) || headers.is_empty() {
            return HeadersFor::Nothing;
        }
        if !headers.reads_request() {
            return HeadersFor::AfterCall;
        }
        match allowed_headers(throttle, req, decision) {
            Some(map) => HeadersFor::Resolved(map),
            None => HeadersFor::Nothing,
        }
    }

    /// Adds the headers to `resp`; `decision` is the one they were chosen for (needed for
    /// [`HeadersFor::AfterCall`]).
    pub(crate) fn add_to(self, throttle: &Throttle, decision: Option<&Decision>, resp: &mut Response) {
        match self {
            HeadersFor::Nothing => {}
            HeadersFor::Resolved(map) => add_missing(resp.headers_mut(), map),
            HeadersFor::AfterCall => {
                if let Some(d) = decision {
                    throttle.headers().apply_missing(&RequestView::empty(), d, resp.headers_mut());
                }
            }
        }
    }
}

/// Waits out a delayed decision (not one that shadow mode lets through: [`Decision::hold`]).
pub(crate) async fn hold(decision: &Decision) {
    let wait = decision.hold();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// The throttle's headers for a response to a request it let through (None when there are
/// none): allowed, delayed, or refused in shadow mode (then without `Retry-After`).
pub(crate) fn allowed_headers(throttle: &Throttle, req: &Request, decision: &Decision) -> Option<HeaderMap> {
    if matches!(decision.outcome, Outcome::Skipped(_)) {
        return None;
    }
    let headers = throttle.headers();
    if headers.is_empty() {
        return None;
    }
    let map = headers.resolve(&request_view(req), decision);
    (!map.is_empty()).then_some(map)
}

/// Every decision the throttles on a request's way made, in the order they ran (outermost
/// first). Read it in a handler with `Data<&ThrottleDecisions>` or [`decisions`].
#[derive(Clone, Debug, Default)]
pub struct ThrottleDecisions {
    // Most requests meet one throttle: keep it inline, no vector allocation.
    first: Option<(Arc<str>, Decision)>,
    rest: Vec<(Arc<str>, Decision)>,
}

impl ThrottleDecisions {
    fn entries(&self) -> impl DoubleEndedIterator<Item = &(Arc<str>, Decision)> {
        self.first.iter().chain(self.rest.iter())
    }

    /// The decision of the throttle with this uid (its latest, if it ran twice).
    pub fn get(&self, uid: &str) -> Option<&Decision> {
        self.entries().rev().find(|(u, _)| &**u == uid).map(|(_, d)| d)
    }

    /// `(uid, decision)` pairs in the order the throttles ran.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Decision)> {
        self.entries().map(|(u, d)| (&**u, d))
    }

    /// How many decisions were recorded.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Whether any recorded decision rejected the request.
    pub fn is_throttled(&self) -> bool {
        self.entries().any(|(_, d)| d.is_throttled())
    }

    fn push(&mut self, entry: (Arc<str>, Decision)) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.rest.push(entry);
        }
    }
}

/// Stores `decision` in the request: as the request's [`Decision`] (replacing an earlier one)
/// and appended to its [`ThrottleDecisions`]. The middlewares call this; call it yourself after
/// a direct [`hit`](crate::hit) if later code should see the decision.
pub fn record(req: &mut Request, uid: &str, decision: Decision) {
    record_shared(req, &Arc::from(uid), decision);
}

pub(crate) fn record_shared(req: &mut Request, uid: &Arc<str>, decision: Decision) {
    let ext = req.extensions_mut();
    let entry = (Arc::clone(uid), decision.clone());
    match ext.get_mut::<ThrottleDecisions>() {
        Some(all) => all.push(entry),
        None => {
            ext.insert(ThrottleDecisions { first: Some(entry), rest: Vec::new() });
        }
    }
    ext.insert(decision);
}

/// The latest throttle decision recorded on `req`, if any.
pub fn decision(req: &Request) -> Option<&Decision> {
    req.extensions().get::<Decision>()
}

/// Every throttle decision recorded on `req`, if any.
pub fn decisions(req: &Request) -> Option<&ThrottleDecisions> {
    req.extensions().get::<ThrottleDecisions>()
}

/// Whether any throttle recorded on `req` refused it, enforced or not: a request that reaches
/// a handler with this `true` was let through by shadow mode ([`Throttle::set_shadow`],
/// [`PoemThrottle::shadow`]) or recorded with [`record`].
pub fn is_throttled(req: &Request) -> bool {
    decisions(req).is_some_and(ThrottleDecisions::is_throttled)
}

/// Hits `throttle` for `req` from inside a handler, with a per-call [`Context`] (cost override,
/// scope, values). Returns the decision as a value; nothing is sent.
pub async fn hit(throttle: &Throttle, req: &Request, ctx: &Context) -> Result<Decision, traffik::Error> {
    throttle.hit_with(&request_view(req), ctx).await
}

/// Hits `throttle` for `req` from inside a handler and turns a "no" into an error response:
/// `Err` holds the 429 ([`throttled_response`]) or 503 ([`error_response`]) to return with `?`.
/// A delayed decision waits [`Decision::wait`] before returning `Ok`. A throttle in shadow mode
/// returns `Ok` at once, whatever it decided.
///
/// ```
/// use poem::{Request, handler, web::Data};
/// use traffik::{Context, Throttle};
///
/// #[handler]
/// async fn upload(req: &Request, body: Vec<u8>, uploads: Data<&Throttle>) -> poem::Result<String> {
///     // One unit of cost per started megabyte.
///     let cost = (body.len() as u64).div_ceil(1 << 20).max(1);
///     traffik_poem::enforce(&uploads, req, &Context::new().cost(cost)).await?;
///     Ok(format!("stored {} bytes", body.len()))
/// }
/// ```
pub async fn enforce(throttle: &Throttle, req: &Request, ctx: &Context) -> poem::Result<Decision> {
    let decision = match hit(throttle, req, ctx).await {
        Ok(d) => d,
        Err(e) => {
            return Err(poem::Error::from_response(error_response(throttle.uid(), &e)));
        }
    };
    if decision.is_refused() {
        return Err(poem::Error::from_response(throttled_response(throttle, req, &decision)));
    }
    hold(&decision).await;
    Ok(decision)
}

/// Adds `throttle`'s headers for an admitted `decision` to `resp` (what the middleware does for
/// allowed requests); for handlers that call [`hit`] or [`enforce`] themselves.
pub fn apply_headers(throttle: &Throttle, req: &Request, decision: &Decision, resp: &mut Response) {
    if let Some(h) = allowed_headers(throttle, req, decision) {
        add_missing(resp.headers_mut(), h);
    }
}

/// Poem conveniences on [`Throttle`].
pub trait ThrottleExt {
    /// The throttle as Poem middleware: `get(h).with(throttle.middleware())`.
    fn middleware(&self) -> PoemThrottle;
}

impl ThrottleExt for Throttle {
    fn middleware(&self) -> PoemThrottle {
        PoemThrottle::new(self.clone())
    }
}
