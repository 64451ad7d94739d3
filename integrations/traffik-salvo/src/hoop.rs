//! The throttle as a Salvo [`Handler`]: the hoop, direct calls and the throttled response.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use salvo::handler::Skipper;
use salvo::http::header::{CONTENT_TYPE, RETRY_AFTER};
use salvo::http::{HeaderValue, StatusCode};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use traffik::lease::Permit;
use traffik::reply::{Reply, ReplyBody};
use traffik::{Context, Decision, Error, Outcome, Settle, Throttle};

use crate::depot::{ThrottleRecord, record};
use crate::permit::HeldPermit;
use crate::view::request_view;

type ContextFn = Arc<dyn Fn(&Request, &Depot) -> Context + Send + Sync>;
type ResponderFn = Arc<dyn Fn(&Decision, &mut Response) + Send + Sync>;

/// Per-hoop options (shared by clones).
#[derive(Clone, Default)]
pub(crate) struct Options {
    refusal_status: Option<StatusCode>,
    cost: Option<u64>,
    context: Option<ContextFn>,
    per_route: bool,
    per_path: bool,
    skipper: Option<Arc<dyn Skipper>>,
    with_stat: bool,
    shadow: bool,
    settle: Option<Settle>,
}

/// A [`Throttle`] as a Salvo [`Handler`]: use it as a hoop at any router level, stack several,
/// or call [`apply`](Self::apply) inside a handler.
///
/// Cloning is cheap; clones share the throttle's configuration and state (and the throttle can
/// still be reconfigured at runtime through [`throttle`](Self::throttle)).
///
/// What the hoop does with each [`Decision`]:
///
/// | outcome | response |
/// |---|---|
/// | `Allowed`, `Skipped` | continues; headers configured `When::Always` are added |
/// | `Delayed` | waits [`Decision::wait`], then continues |
/// | `Throttled` | `429`, `Retry-After` (whole seconds, rounded up), configured headers, the throttled handler or a JSON body; the rest of the chain is skipped |
/// | `Never` | `429` saying the cost can never fit, no `Retry-After` |
/// | `Err(_)` | `503` with a JSON body (only when the error policy raises) |
///
/// In shadow mode ([`Throttle::set_shadow`], or [`shadow`](Self::shadow) for this hoop) a
/// `Throttled`, `Never` or `Delayed` decision continues at once, with the headers of an allowed
/// request (never `Retry-After`).
///
/// Every decision is recorded in the [`Depot`] (read it with [`DepotExt`](crate::DepotExt)).
///
/// ```
/// use salvo::prelude::*;
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_salvo::SalvoThrottle;
///
/// #[handler]
/// async fn hello() -> &'static str {
///     "hello"
/// }
///
/// let throttle = Throttle::builder()
///     .uid("salvo-doc-hoop")
///     .rate(rate!("100/min"))
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .build()?;
/// let router = Router::with_path("api").hoop(SalvoThrottle::new(throttle)).get(hello);
/// # let _ = router;
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct SalvoThrottle {
    throttle: Throttle,
    uid: Arc<str>,
    opts: Arc<Options>,
}

impl SalvoThrottle {
    /// Wraps a throttle.
    pub fn new(throttle: Throttle) -> Self {
        SalvoThrottle { uid: Arc::from(throttle.uid()), throttle, opts: Arc::new(Options::default()) }
    }

    fn edit(mut self, f: impl FnOnce(&mut Options)) -> Self {
        f(Arc::make_mut(&mut self.opts));
        self
    }

    /// Charges every request routed through this hoop `cost` instead of the throttle's own
    /// cost.
    #[must_use]
    pub fn cost(self, cost: u64) -> Self {
        self.edit(|o| o.cost = Some(cost))
    }

    /// The status of a refusal, instead of `429 Too Many Requests`: e.g. `503 Service
    /// Unavailable` for a concurrency limit that protects a scarce resource. Headers and body
    /// stay the same (`Retry-After` included when a retry can pass).
    #[must_use]
    pub fn refusal_status(self, status: StatusCode) -> Self {
        self.edit(|o| o.refusal_status = Some(status))
    }

    /// Builds the per-hit [`Context`] (cost override, scope parts, typed values for the
    /// throttle's identifier, rules, cost and rate functions) from the request and the depot,
    /// e.g. the user an authentication hoop stored in the [`Depot`]. A
    /// [`cost`](Self::cost) set on the hoop applies when the context sets none.
    #[must_use]
    pub fn context(self, f: impl Fn(&Request, &Depot) -> Context + Send + Sync + 'static) -> Self {
        self.edit(|o| o.context = Some(Arc::new(f)))
    }

    /// Lets requests the `skipper` picks through without a hit, as Salvo's own middlewares do
    /// (`|req: &mut Request, depot: &Depot| ...`, or any [`Skipper`]): they are not counted,
    /// get no headers and record no decision. [`apply`](Self::apply) ignores it.
    #[must_use]
    pub fn skipper(self, skipper: impl Skipper) -> Self {
        self.edit(|o| o.skipper = Some(Arc::new(skipper)))
    }

    /// Gives every route its own quota: the matched route pattern (e.g. `users/{id}`, never the
    /// concrete path) is added to the key. Off by default, so one throttle shared by several
    /// routes limits a client across all of them.
    #[must_use]
    pub fn per_route(self, yes: bool) -> Self {
        self.edit(|o| o.per_route = yes)
    }

    /// Gives every concrete path its own quota (`/items/1` and `/items/2` apart), as
    /// `traffik-poem`'s `per_path` does. Each distinct path a client requests then keeps its own
    /// state, so a client can create as many keys as it can invent paths; the in-memory
    /// backend's key cap bounds that. Off by default.
    #[must_use]
    pub fn per_path(self, yes: bool) -> Self {
        self.edit(|o| o.per_path = yes)
    }

    /// Also stores a [`Stat`](traffik::Stat) snapshot in the depot after each limited hit. This
    /// costs one more backend round trip per request, so it is off by default.
    #[must_use]
    pub fn with_stat(self, yes: bool) -> Self {
        self.edit(|o| o.with_stat = yes)
    }

    /// Shadow mode for hits through this hoop only: the throttle decides, records and counts as
    /// usual, but a refusal continues down the chain (handlers read it from the depot, with
    /// [`Decision::shadow`] set) and a delay is not waited. It is the throttle's own shadow mode
    /// ([`Throttle::set_shadow`]) for this route, through [`Context::shadow`]: the same headers
    /// (no `Retry-After`), the same count ([`Throttle::shadow_refusals`]) and log line, as
    /// `traffik-poem`'s `PoemThrottle::shadow`. Default `false`.
    #[must_use]
    pub fn shadow(self, yes: bool) -> Self {
        self.edit(|o| o.shadow = yes)
    }

    /// Settles each admission once the rest of the chain has answered: `rule` says from the
    /// response (its status, `200` when none was set; its body's length, from `Content-Length`
    /// or the body's exact size) what the request really cost, and the charge is brought to it
    /// ([`Settle::apply`], [`Throttle::settle`]): [`Settle::refund_server_errors`] gives a
    /// failed request's cost back, [`Settle::by_body_size`] charges what was sent. A status a
    /// handler set counts with it; a body left for Salvo's catcher to write is of unknown
    /// length. Settling never changes the response (its limit headers describe the admission);
    /// a backend failure while settling is logged (`warn`) and the charge stands. A throttle
    /// that holds leases ([`Concurrency`](traffik::strategy::Concurrency)) is not settled: its
    /// permit is given back when the request ends anyway. [`apply`](Self::apply) ignores it.
    ///
    /// ```
    /// use salvo::prelude::*;
    /// use salvo::test::TestClient;
    /// use traffik::{rate, InMemoryBackend, Settle, Throttle, strategy::FixedWindow};
    /// use traffik_salvo::SalvoThrottle;
    ///
    /// #[handler]
    /// async fn flaky(res: &mut Response) { res.status_code(StatusCode::INTERNAL_SERVER_ERROR); }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), traffik::Error> {
    /// let throttle = Throttle::builder().uid("salvo-doc-settle").rate(rate!("1/min"))
    ///     .backend(InMemoryBackend::new()).strategy(FixedWindow).build()?;
    /// let limit = SalvoThrottle::new(throttle).settle(Settle::refund_server_errors());
    /// let service = Service::new(Router::new().hoop(limit).get(flaky));
    /// for _ in 0..3 {
    ///     // Every failure is refunded: never a 429.
    ///     let res = TestClient::get("http://127.0.0.1/").send(&service).await;
    ///     assert_eq!(res.status_code, Some(StatusCode::INTERNAL_SERVER_ERROR));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn settle(self, rule: Settle) -> Self {
        self.edit(|o| o.settle = Some(rule))
    }

    /// The wrapped throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Throttles `req` from inside a handler: records the decision in the depot, adds the
    /// configured headers, waits for `Delayed` decisions, and on denial writes the throttled
    /// response. Returns whether the handler may go on (always, in shadow mode).
    ///
    /// ```
    /// use salvo::prelude::*;
    /// use traffik_salvo::SalvoThrottle;
    ///
    /// struct Exports(SalvoThrottle);
    ///
    /// #[async_trait]
    /// impl Handler for Exports {
    ///     async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
    ///         if !self.0.apply(req, depot, res).await {
    ///             return; // the 429 is already written
    ///         }
    ///         res.render("export started");
    ///     }
    /// }
    /// ```
    pub async fn apply(&self, req: &mut Request, depot: &mut Depot, res: &mut Response) -> bool {
        let mut ctrl = FlowCtrl::new(Vec::new());
        self.run(req, depot, res, &mut ctrl, None).await
    }

    /// Like [`apply`](Self::apply) with an explicit [`Context`] for this hit (cost, scope,
    /// values); it replaces the hoop's context function, and its cost wins over the hoop's.
    pub async fn apply_with(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctx: Context) -> bool {
        let mut ctrl = FlowCtrl::new(Vec::new());
        self.run(req, depot, res, &mut ctrl, Some(ctx)).await
    }

    fn build_context(&self, req: &Request, depot: &Depot, given: Option<Context>) -> Option<Context> {
        let o = &*self.opts;
        if given.is_none() && o.context.is_none() && o.cost.is_none() && !o.per_route && !o.per_path && !o.shadow {
            return None;
        }
        let mut ctx = match (given, &o.context) {
            (Some(ctx), _) => ctx,
            (None, Some(f)) => f(req, depot),
            (None, None) => Context::new(),
        };
        if let Some(cost) = o.cost.filter(|_| ctx.cost_override().is_none()) {
            ctx = ctx.cost(cost);
        }
        if o.per_route {
            ctx = ctx.scope(format!("route:/{}", req.matched_path()));
        }
        if o.per_path {
            ctx = ctx.scope(req.uri().path());
        }
        if o.shadow {
            ctx = ctx.shadow(true);
        }
        Some(ctx)
    }

    /// The whole flow; `true` means continue.
    pub(crate) async fn run(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
        given: Option<Context>,
    ) -> bool {
        self.run_with(req, depot, res, ctrl, given, false).await.is_some()
    }

    /// [`run`](Self::run), `None` meaning stop; with `acquire`, the throttle is
    /// [acquired](Throttle::acquire) and the permit handed to the caller to hold.
    pub(crate) async fn run_with(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
        given: Option<Context>,
        acquire: bool,
    ) -> Option<Admitted> {
        let mut admitted = Admitted::default();
        let permit = acquire.then_some(&mut admitted.permit);
        let ctx = self.build_context(req, depot, given);
        let (decision, stat) = {
            let view = request_view(req);
            let result = match (permit, &ctx) {
                (Some(slot), ctx) => {
                    let acquired = match ctx {
                        Some(ctx) => self.throttle.acquire_with(&view, ctx).await,
                        None => self.throttle.acquire(&view).await,
                    };
                    acquired.map(|p| {
                        let d = p.decision().clone();
                        *slot = Some(Box::new(p));
                        d
                    })
                }
                (None, Some(ctx)) => self.throttle.hit_with(&view, ctx).await,
                (None, None) => self.throttle.hit(&view).await,
            };
            let decision = match result {
                Ok(d) => d,
                Err(error) => {
                    unavailable(self.throttle.uid(), &error, res);
                    return None;
                }
            };
            let stat = if self.opts.with_stat && !matches!(decision.outcome, Outcome::Skipped(_)) {
                let empty = Context::new();
                match self.throttle.stat_with(&view, ctx.as_ref().unwrap_or(&empty)).await {
                    Ok(snapshot) => snapshot.into_limited(),
                    Err(error) => {
                        tracing::debug!(throttle = self.throttle.uid(), %error, "stat snapshot failed");
                        None
                    }
                }
            } else {
                None
            };
            self.throttle.headers().apply(&view, &decision, None, res.headers_mut());
            (decision, stat)
        };
        let uid = Arc::clone(&self.uid);
        if decision.is_refused() {
            refuse(&self.throttle, ThrottleRecord { uid, decision, stat }, req, depot, res, ctrl).await;
            if let Some(status) = self.opts.refusal_status {
                res.status_code(status);
            }
            return None;
        }
        let wait = decision.hold();
        if self.opts.settle.is_some() && decision.is_charged() && !acquire {
            admitted.to_settle = Some(Box::new(decision.clone()));
        }
        record(depot, ThrottleRecord { uid, decision, stat });
        delay(wait).await;
        Some(admitted)
    }

    /// Settles `admitted`'s decision, if it has one to settle, by the hoop's rule, once the
    /// chain has answered with `res`.
    pub(crate) async fn settle_after(&self, admitted: &mut Admitted, res: &mut Response) {
        if let (Some(rule), Some(decision)) = (&self.opts.settle, admitted.to_settle.take()) {
            crate::settle::settle(rule, &self.throttle, &decision, crate::settle::served(res)).await;
        }
    }
}

/// What an admission leaves for the rest of a hoop's work.
#[derive(Default)]
pub(crate) struct Admitted {
    /// The permit of a throttle that holds leases, when acquired. Boxed, as the decision
    /// below, so that what every request's future carries stays two words.
    pub(crate) permit: Option<Box<Permit>>,
    /// The decision to settle once the chain has answered: the hoop has a
    /// [`settle`](SalvoThrottle::settle) rule and the decision charged. Boxed: the hoop's
    /// future carries this word on every request, the decision only when there is a rule.
    pub(crate) to_settle: Option<Box<Decision>>,
}

/// Answers a refusal of `throttle`: 429, `Retry-After` when a retry can help, then the
/// throttle's [`ThrottledHandler`] (which reads the decision from the depot) or the core's body.
pub(crate) async fn refuse(
    throttle: &Throttle,
    refused: ThrottleRecord,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
    ctrl: &mut FlowCtrl,
) {
    set_retry_after(&refused.decision, res);
    match throttle.throttled_handler::<ThrottledHandler>() {
        Some(handler) => {
            let decision = refused.decision.clone();
            record(depot, refused);
            handler.respond(&decision, req, depot, res, ctrl).await;
        }
        None => {
            if throttle.has_throttled_handler() {
                foreign_handler(throttle.uid());
            }
            write_throttled(&refused.decision, res);
            record(depot, refused);
        }
    }
}

/// Says once per process that a throttle's handler is of another integration's type (say a
/// `traffik_poem::ThrottledHandler`), which Salvo cannot run: the default reply is sent.
fn foreign_handler(uid: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            throttle = uid,
            "the throttle's throttled handler is not a traffik_salvo::ThrottledHandler; sending the default 429"
        );
    }
}

/// 429 with `Retry-After` when a retry can help, without it when the cost can never fit.
fn set_retry_after(decision: &Decision, res: &mut Response) {
    res.status_code(StatusCode::TOO_MANY_REQUESTS);
    match decision.retry_after_secs() {
        Some(secs) => {
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        None => {
            res.headers_mut().remove(RETRY_AFTER);
        }
    }
}

pub(crate) async fn delay(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

impl fmt::Debug for SalvoThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalvoThrottle")
            .field("throttle", &self.throttle)
            .field("cost", &self.opts.cost)
            .field("per_route", &self.opts.per_route)
            .field("per_path", &self.opts.per_path)
            .field("with_stat", &self.opts.with_stat)
            .field("shadow", &self.opts.shadow)
            .field("settle", &self.opts.settle)
            .finish()
    }
}

impl From<Throttle> for SalvoThrottle {
    fn from(throttle: Throttle) -> Self {
        SalvoThrottle::new(throttle)
    }
}

#[async_trait]
impl Handler for SalvoThrottle {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        if let Some(skipper) = &self.opts.skipper
            && skipper.skipped(req, depot)
        {
            return;
        }
        if self.throttle.holds_leases() {
            // A concurrency limit: the permit is held while the rest of the chain runs, and
            // released when this future ends, however it ends (the handlers answered, one
            // panicked, or the connection went away and the future was dropped).
            // Boxed, as settling below: the common path's future stays small.
            Box::pin(async {
                let Some(admitted) = self.run_with(req, depot, res, ctrl, None, true).await else {
                    ctrl.skip_rest();
                    return;
                };
                // The handlers may take it ([`take_permit`](crate::take_permit)) to keep it
                // longer.
                let held = admitted.permit.map(|p| HeldPermit::new(*p));
                if let Some(held) = &held {
                    depot.insert_typed(held.clone());
                }
                ctrl.call_next(req, depot, res).await;
                drop(held.and_then(|h| h.take()));
            })
            .await;
            return;
        }
        let Some(mut admitted) = self.run_with(req, depot, res, ctrl, None, false).await else {
            ctrl.skip_rest();
            return;
        };
        if admitted.to_settle.is_some() {
            // Boxed: the settling futures are large, and would otherwise make every request's
            // future (moved whole into the handler's box) larger.
            Box::pin(async {
                ctrl.call_next(req, depot, res).await;
                self.settle_after(&mut admitted, res).await;
            })
            .await;
        }
    }
}

/// The JSON body of a denial: the core's [`ReplyBody`](traffik::reply::ReplyBody),
/// `{"error":"rate_limited","message":..,"retry_after_ms":..}`, or, when the cost can never fit,
/// `{"error":"cost_exceeds_limit","message":..,"cost":..,"limit":..,"retry_after_ms":null}`.
pub fn throttled_body(decision: &Decision) -> serde_json::Value {
    serde_json::to_value(ReplyBody::for_decision(decision)).unwrap_or_default()
}

/// Writes the default throttled response body ([`throttled_body`]) as JSON with status 429.
/// The hoop has already set `Retry-After` and the configured headers when it calls this.
pub fn write_throttled(decision: &Decision, res: &mut Response) {
    res.status_code(StatusCode::TOO_MANY_REQUESTS);
    write_body(res, &ReplyBody::for_decision(decision));
}

fn write_body(res: &mut Response, body: &ReplyBody) {
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(Reply::CONTENT_TYPE));
    res.body(body.to_json());
}

/// 503 for a backend failure the error policy chose to raise. The throttle counts and logs
/// backend incidents itself (once a second at most), so each reply adds only a `debug` event.
pub(crate) fn unavailable(uid: &str, error: &Error, res: &mut Response) {
    tracing::debug!(throttle = uid, %error, "rate limiter unavailable; answering 503");
    let reply = Reply::unavailable();
    res.status_code(reply.status);
    write_body(res, &reply.body);
}

/// What a throttled request gets instead of the default JSON body.
///
/// Store one on the throttle with the builder's
/// [`throttled_handler`](traffik::ThrottleBuilder::throttled_handler) or with
/// [`Throttle::update_throttled_handler`]; the hoop reads it back with
/// `throttle.throttled_handler::<ThrottledHandler>()`. When it runs, the response already has
/// status 429, `Retry-After` (unless the cost can never fit) and the configured headers, and
/// the decision is in the depot ([`DepotExt::throttle_decision`](crate::DepotExt)).
///
/// ```
/// use salvo::prelude::*;
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_salvo::{DepotExt, ThrottledHandler};
///
/// #[handler]
/// async fn slow_down(depot: &mut Depot, res: &mut Response) {
///     let wait = depot.throttle_decision().map(|d| d.wait.as_secs()).unwrap_or(1);
///     res.render(format!("slow down, {wait} s"));
/// }
///
/// let throttle = Throttle::builder()
///     .uid("salvo-doc-handler")
///     .rate(rate!("10/min"))
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .throttled_handler(ThrottledHandler::handler(slow_down))
///     .build()?;
/// // or a plain closure:
/// throttle.update_throttled_handler(ThrottledHandler::from_fn(|decision, res| {
///     res.render(format!("{} ms", decision.wait.as_millis()));
/// }));
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct ThrottledHandler {
    kind: Responder,
}

#[derive(Clone)]
enum Responder {
    Handler(Arc<dyn Handler>),
    Fn(ResponderFn),
}

impl ThrottledHandler {
    /// Any Salvo handler (e.g. a `#[handler]` function).
    pub fn handler(handler: impl Handler) -> Self {
        ThrottledHandler { kind: Responder::Handler(Arc::new(handler)) }
    }

    /// A closure over the decision and the response.
    pub fn from_fn(f: impl Fn(&Decision, &mut Response) + Send + Sync + 'static) -> Self {
        ThrottledHandler { kind: Responder::Fn(Arc::new(f)) }
    }

    pub(crate) async fn respond(
        &self,
        decision: &Decision,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        match &self.kind {
            Responder::Handler(h) => h.handle(req, depot, res, ctrl).await,
            Responder::Fn(f) => f(decision, res),
        }
    }
}

impl traffik::reply::RefusalHandler for ThrottledHandler {}

impl fmt::Debug for ThrottledHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Responder::Handler(_) => "ThrottledHandler(handler)",
            Responder::Fn(_) => "ThrottledHandler(fn)",
        })
    }
}

/// Salvo conveniences on [`traffik::Throttle`] (which cannot be a Salvo [`Handler`] itself).
pub trait ThrottleExt {
    /// The throttle as a hoop ([`SalvoThrottle`]).
    fn hoop(&self) -> SalvoThrottle;

    /// One hit for a Salvo request, returning the raw decision (nothing is written to the
    /// response; see [`SalvoThrottle::apply`] for that).
    fn hit_request<'a>(
        &'a self,
        req: &'a Request,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'a;
}

impl ThrottleExt for Throttle {
    fn hoop(&self) -> SalvoThrottle {
        SalvoThrottle::new(self.clone())
    }

    async fn hit_request(&self, req: &Request, ctx: &Context) -> Result<Decision, Error> {
        self.hit_with(&request_view(req), ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(outcome: Outcome, wait: Duration, cost: u64) -> Decision {
        Decision {
            outcome,
            key: None,
            rate: Some(traffik::rate!("2/h")),
            cost,
            remaining: Some(0),
            wait,
            reset: Duration::from_secs(3600),
            source: traffik::Source::Backend,
            shadow: false,
            charged_at_us: 0,
        }
    }

    #[tokio::test]
    async fn the_body_is_the_cores_json() {
        use salvo::test::ResponseExt;
        for d in [
            decision(Outcome::Throttled, Duration::from_micros(1_500_001), 1),
            decision(Outcome::Never, Duration::ZERO, 5),
        ] {
            let mut res = Response::new();
            write_throttled(&d, &mut res);
            let text = res.take_string().await.unwrap_or_default();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(parsed, throttled_body(&d), "{text}");
        }
        let never = throttled_body(&decision(Outcome::Never, Duration::ZERO, 5));
        assert_eq!(never["retry_after_ms"], serde_json::Value::Null);
        let throttled = throttled_body(&decision(Outcome::Throttled, Duration::from_micros(1_500_001), 1));
        assert_eq!(throttled["retry_after_ms"], 1501);
        assert_eq!(throttled["message"], "Too many requests. Retry in 2 seconds.");
    }
}
