//! What a client sees when a throttle says no (429), or cannot decide (503).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use poem::http::{HeaderMap, HeaderValue, StatusCode, header};
use poem::{Request, Response};
use serde_json::json;
use traffik::{Decision, Outcome, Throttle};

use crate::view::request_view;

type HandlerFn = dyn Fn(&Request, &Decision) -> Response + Send + Sync;

/// A custom response for throttled requests, stored in the throttle itself.
///
/// Set it with the builder's `.throttled_handler(ThrottledHandler::new(..))` or at runtime with
/// [`Throttle::update_throttled_handler`]; the middleware and [`throttled_response`] read it
/// with `throttle.throttled_handler::<ThrottledHandler>()`. The handler gets the request and
/// the [`Decision`] (throttled or [`Outcome::Never`]) and returns the whole response; the
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
///     .no_registry()
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

impl fmt::Debug for ThrottledHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThrottledHandler(..)")
    }
}

/// Milliseconds, rounded up, saturating.
pub(crate) fn ceil_millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms.saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
}

/// The JSON body of the default 429 response, or (with `notice`) of the WebSocket notice.
///
/// Throttled: `{"error":"rate_limited","message":..,"retry_after_ms":..}`.
/// Never: `{"error":"cost_exceeds_limit","message":..,"cost":..,"limit":..}` (no wait: a retry
/// cannot succeed; the notice says `"retry_after_ms":null`). Notices start with
/// `"type":"rate_limit"`.
///
/// Written by hand (this is the hot path of a rejection): every string in it is ours, made of
/// ASCII letters, digits, spaces and `.;/`, so nothing needs escaping.
pub(crate) fn rejection_json(decision: &Decision, notice: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(160);
    out.push('{');
    if notice {
        out.push_str(r#""type":"rate_limit","#);
    }
    // Writing to a String cannot fail.
    let _ = match decision.outcome {
        Outcome::Never => {
            let rate = decision.rate.map_or_else(|| "the configured rate".to_owned(), |r| r.to_string());
            let limit = decision.rate.map_or_else(|| "null".to_owned(), |r| r.limit().to_string());
            write!(
                out,
                r#""error":"cost_exceeds_limit","message":"This request costs {cost} but the rate limit is {rate}; it can never be admitted, so retrying will not help.","cost":{cost},"limit":{limit}{tail}}}"#,
                cost = decision.cost,
                tail = if notice { r#","retry_after_ms":null"# } else { "" },
            )
        }
        _ => {
            let secs = decision.retry_after_secs().unwrap_or(1);
            let unit = if secs == 1 { "second" } else { "seconds" };
            write!(
                out,
                r#""error":"rate_limited","message":"Too many requests. Retry in {secs} {unit}.","retry_after_ms":{}}}"#,
                ceil_millis(decision.wait)
            )
        }
    };
    out
}

fn json_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body)
}

/// The default response for a rejected request, without any throttle configuration:
/// `429 Too Many Requests`, a JSON body (see the [crate docs](crate)) and, when throttled (not
/// [`Outcome::Never`]), `Retry-After` in whole seconds rounded up.
pub fn default_throttled_response(decision: &Decision) -> Response {
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, rejection_json(decision, false));
    if let Some(secs) = decision.retry_after_secs() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The response for a request `throttle` rejected with `decision`: the throttle's
/// [`ThrottledHandler`] if it has one, else [`default_throttled_response`]; plus the throttle's
/// configured headers ([`Throttle::headers`]) and `Retry-After` where the response does not set
/// them already. [`Outcome::Never`] never gets `Retry-After` from here.
pub fn throttled_response(throttle: &Throttle, req: &Request, decision: &Decision) -> Response {
    let mut resp = match throttle.throttled_handler::<ThrottledHandler>() {
        Some(handler) => handler.respond(req, decision),
        None => default_throttled_response(decision),
    };
    let configured = throttle.headers();
    if !configured.is_empty() {
        let extra = configured.resolve(&request_view(req), decision);
        add_missing(resp.headers_mut(), extra, decision);
    }
    if let Some(secs) = decision.retry_after_secs()
        && !resp.headers().contains_key(header::RETRY_AFTER)
    {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Inserts the headers of `extra` that `out` does not have (never `Retry-After` for a
/// decision that can never pass).
fn add_missing(out: &mut HeaderMap, extra: HeaderMap, decision: &Decision) {
    let mut last = None;
    for (name, value) in extra {
        if let Some(n) = name {
            last = Some(n);
        }
        let Some(name) = &last else { continue };
        if decision.outcome == Outcome::Never && name == header::RETRY_AFTER {
            continue;
        }
        if !out.contains_key(name) {
            out.insert(name.clone(), value);
        }
    }
}

/// The response when a throttle could not decide because its backend failed and its error
/// policy raised: `503 Service Unavailable` with
/// `{"error":"rate_limiter_unavailable","message":..,"throttle":<uid>}`. The backend's error
/// is not sent to the client; the throttle already counts and logs backend incidents (see
/// [`Throttle::incidents`]), so this adds only a `debug` event per response.
pub fn error_response(uid: &str, error: &traffik::Error) -> Response {
    tracing::debug!(throttle = uid, %error, "rate limiter failed; answering 503");
    let body = json!({
        "error": "rate_limiter_unavailable",
        "message": "The rate limiter could not reach its backend. Please try again later.",
        "throttle": uid,
    });
    json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(ceil_millis(Duration::from_micros(1_500_001)), 1501);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }

    fn decision(outcome: Outcome, cost: u64, wait: Duration) -> Decision {
        // Build a real decision through a throttle, then adjust it.
        let throttle = Throttle::builder()
            .uid("response-unit")
            .rate(traffik::rate!("5/min"))
            .backend(traffik::InMemoryBackend::new())
            .strategy(traffik::strategy::FixedWindow)
            .no_registry()
            .build();
        let Ok(throttle) = throttle else { unreachable!("valid configuration") };
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let Ok(rt) = rt else { unreachable!("a runtime starts") };
        let Ok(mut d) = rt.block_on(throttle.hit(&traffik::RequestView::empty())) else {
            unreachable!("in-memory hits do not fail")
        };
        d.outcome = outcome;
        d.cost = cost;
        d.wait = wait;
        d
    }

    #[test]
    fn hand_written_json_is_valid_json() {
        for notice in [false, true] {
            let throttled = rejection_json(&decision(Outcome::Throttled, 1, Duration::from_micros(1_500_001)), notice);
            let v: serde_json::Value = serde_json::from_str(&throttled).unwrap_or_default();
            assert_eq!(v["error"], "rate_limited", "{throttled}");
            assert_eq!(v["retry_after_ms"], 1501);
            assert_eq!(v["message"], "Too many requests. Retry in 2 seconds.");
            assert_eq!(v.get("type").is_some(), notice);

            let never = rejection_json(&decision(Outcome::Never, 9, Duration::ZERO), notice);
            let v: serde_json::Value = serde_json::from_str(&never).unwrap_or_default();
            assert_eq!(v["error"], "cost_exceeds_limit", "{never}");
            assert_eq!((v["cost"].as_u64(), v["limit"].as_u64()), (Some(9), Some(5)));
            assert_eq!(v.get("retry_after_ms").is_some(), notice);
            assert!(v["retry_after_ms"].is_null());
        }
    }
}
