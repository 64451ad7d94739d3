//! What a client sees when a throttle says no (429), or cannot decide (503): the core's
//! [`Reply`] as a Poem response.

use std::fmt;
use std::sync::Arc;

use poem::http::{HeaderMap, HeaderValue, header};
use poem::{Request, Response};
use traffik::reply::Reply;
use traffik::reply::add_missing_headers;
use traffik::{Decision, Headers, RequestView, Throttle};

use crate::view::request_view;

type HandlerFn = dyn Fn(&Request, &Decision) -> Response + Send + Sync;

/// A custom response for throttled requests, stored in the throttle itself.
///
/// Set it with the builder's `.throttled_handler(ThrottledHandler::new(..))` or at runtime with
/// [`Throttle::update_throttled_handler`]; the middleware and [`throttled_response`] read it
/// with `throttle.throttled_handler::<ThrottledHandler>()`. The handler gets the request and
/// the [`Decision`] (throttled or [`Outcome::Never`](traffik::Outcome::Never)) and returns the whole response; the
/// throttle's configured headers and `Retry-After` are then added unless the handler already
/// set them.
///
/// ```
/// use poem::{Response, http::StatusCode};
/// use traffik::{rate, InMemoryBackend, Throttle, strategy::FixedWindow};
/// use traffik_poem::ThrottledHandler;
///
/// let throttle = Throttle::builder()
///     .uid("custom-handler-doc")
///     .rate(rate!("10/min"))
///     .backend(InMemoryBackend::new())
///     .strategy(FixedWindow)
///     .throttled_handler(ThrottledHandler::new(|_req, decision| {
///         Response::builder()
///             .status(StatusCode::SERVICE_UNAVAILABLE)
///             .body(format!("slow down for {} ms", decision.wait.as_millis()))
///     }))
///     .build()?;
/// assert!(throttle.throttled_handler::<ThrottledHandler>().is_some());
/// # Ok::<(), traffik::Error>(())
/// ```
#[derive(Clone)]
pub struct ThrottledHandler {
    f: Arc<HandlerFn>,
}

impl ThrottledHandler {
    /// A handler from a closure `Fn(&Request, &Decision) -> Response`.
    pub fn new(f: impl Fn(&Request, &Decision) -> Response + Send + Sync + 'static) -> Self {
        ThrottledHandler { f: Arc::new(f) }
    }

    /// Runs the handler.
    pub fn respond(&self, req: &Request, decision: &Decision) -> Response {
        (self.f)(req, decision)
    }
}

impl traffik::reply::RefusalHandler for ThrottledHandler {}

impl fmt::Debug for ThrottledHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThrottledHandler(..)")
    }
}

/// The core's [`Reply`] as a Poem response: its status, headers and JSON body.
pub(crate) fn into_response(reply: Reply) -> Response {
    let mut resp = Response::builder().status(reply.status).body(reply.body.to_json());
    // The reply's headers become the response's (a fresh response has none to keep).
    *resp.headers_mut() = reply.headers;
    resp.headers_mut().entry(header::CONTENT_TYPE).or_insert(HeaderValue::from_static(Reply::CONTENT_TYPE));
    resp
}

/// The default response for a rejected request, without any throttle configuration:
/// `429 Too Many Requests`, a JSON body (see the [crate docs](crate)) and, when throttled (not
/// [`Outcome::Never`](traffik::Outcome::Never)), `Retry-After` in whole seconds rounded up.
pub fn default_throttled_response(decision: &Decision) -> Response {
    into_response(Reply::refused(decision, &Headers::new(), &RequestView::empty()))
}

/// The response for a request `throttle` rejected with `decision`: the throttle's
/// [`ThrottledHandler`] if it has one, else the core's [`Reply::refused`]; a handler's response
/// gets the throttle's configured headers ([`Throttle::headers`]) and `Retry-After` where it
/// does not set them already. [`Outcome::Never`](traffik::Outcome::Never) never gets
/// `Retry-After` from here.
pub fn throttled_response(throttle: &Throttle, req: &Request, decision: &Decision) -> Response {
    throttled_response_with(throttle, req, decision, |_| {})
}

/// [`throttled_response`], with `edit` applied to the throttle's headers before they are added
/// (a group lists every member in the draft fields there).
pub(crate) fn throttled_response_with(
    throttle: &Throttle,
    req: &Request,
    decision: &Decision,
    edit: impl FnOnce(&mut HeaderMap),
) -> Response {
    let mut reply = Reply::refused(decision, &throttle.headers(), &request_view(req));
    edit(&mut reply.headers);
    match throttle.throttled_handler::<ThrottledHandler>() {
        Some(handler) => {
            let mut resp = handler.respond(req, decision);
            add_missing_headers(resp.headers_mut(), reply.headers);
            resp
        }
        None => {
            if throttle.has_throttled_handler() {
                foreign_handler(throttle.uid());
            }
            into_response(reply)
        }
    }
}

/// Says once per process that a throttle's handler is of another integration's type (say a
/// `traffik_salvo::ThrottledHandler`), which Poem cannot run: the default reply is sent.
fn foreign_handler(uid: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            throttle = uid,
            "the throttle's throttled handler is not a traffik_poem::ThrottledHandler; sending the default 429"
        );
    }
}

/// Adds the headers of `extra` that `out` does not have (see
/// [`traffik::reply::add_missing_headers`]).
pub(crate) fn add_missing(out: &mut HeaderMap, extra: HeaderMap) {
    add_missing_headers(out, extra);
}

/// The response when a throttle could not decide because its backend failed and its error
/// policy raised: `503 Service Unavailable` with the core's
/// `{"error":"rate_limiter_unavailable","message":..}`, which names nothing internal. The
/// backend's error is not sent to the client; the throttle already counts and logs backend
/// incidents (see [`Throttle::incidents`]), so this adds only a `debug` event per response.
pub fn error_response(uid: &str, error: &traffik::Error) -> Response {
    tracing::debug!(throttle = uid, %error, "rate limiter failed; answering 503");
    into_response(Reply::unavailable())
}
