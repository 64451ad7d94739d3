//! What a client is told when a throttle refuses a request or cannot decide, in one place for
//! every integration: the status, the headers and the body, shared by HTTP responses and
//! WebSocket notices. `traffik-poem` and `traffik-salvo` only convert a [`Reply`] into their
//! response type, so both frameworks answer alike.
//!
//! | case | status | headers | body (`error`) |
//! |---|---|---|---|
//! | throttled | 429 | the throttle's configured headers, `Retry-After` (whole seconds, rounded up) | `rate_limited`, with `retry_after_ms` |
//! | the cost can never fit | 429 | the configured headers, never `Retry-After` | `cost_exceeds_limit`, with `cost` and `limit` |
//! | the backend failed and the error policy raised | 503 | none | `rate_limiter_unavailable` |
//!
//! Bodies name no throttle, key or backend: what clients may learn is the wait and the cost.
//! A request that was let through gets no reply: its response is the application's, to which
//! integrations add the configured headers the response does not already have
//! ([`add_missing_headers`]); `Retry-After` is never among them.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Outcome};
use crate::headers::Headers;
use crate::identity::RequestView;

/// A refusal or failure as the client sees it.
#[derive(Clone, Debug)]
pub struct Reply {
    /// 429 or 503.
    pub status: StatusCode,
    /// `Retry-After` and the configured headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: ReplyBody,
}

/// The JSON body of a [`Reply`], tagged by `error`.
///
/// ```json
/// {"error":"rate_limited","message":"Too many requests. Retry in 2 seconds.","retry_after_ms":1500}
/// {"error":"cost_exceeds_limit","message":"...","cost":10,"limit":5,"retry_after_ms":null}
/// {"error":"rate_limiter_unavailable","message":"..."}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplyBody {
    /// Throttled: a retry after `retry_after_ms` passes.
    RateLimited {
        /// For people.
        message: String,
        /// The exact wait, in milliseconds rounded up.
        retry_after_ms: u64,
    },
    /// The request's cost is more than the rate can ever admit.
    CostExceedsLimit {
        /// For people.
        message: String,
        /// The request's cost.
        cost: u64,
        /// The rate's limit, when known.
        limit: Option<u64>,
        /// Always `null`: no wait helps.
        retry_after_ms: Option<u64>,
    },
    /// The backend failed and the throttle's error policy raised.
    RateLimiterUnavailable {
        /// For people.
        message: String,
    },
}

/// The message of a 503.
const UNAVAILABLE: &str = "The rate limiter could not decide. Please try again later.";

impl ReplyBody {
    /// The body for a refused `decision` (throttled or never fitting).
    pub fn for_decision(decision: &Decision) -> ReplyBody {
        match decision.outcome {
            Outcome::Never => {
                let rate = decision.rate.map_or_else(|| "the configured rate".to_owned(), |r| r.to_string());
                ReplyBody::CostExceedsLimit {
                    message: format!(
                        "This request costs {} but the rate limit is {rate}; it can never be admitted, so retrying \
                         will not help.",
                        decision.cost
                    ),
                    cost: decision.cost,
                    limit: decision.rate.map(|r| r.limit()),
                    retry_after_ms: None,
                }
            }
            _ => {
                let secs = decision.retry_after_secs().unwrap_or(1);
                let unit = if secs == 1 { " second." } else { " seconds." };
                // Built by hand: this runs for every refused request, and the formatting
                // machinery cost more than the rest of the reply.
                let mut message = String::with_capacity(48);
                message.push_str("Too many requests. Retry in ");
                push_u64(&mut message, secs);
                message.push_str(unit);
                ReplyBody::RateLimited { message, retry_after_ms: ceil_millis(decision.wait) }
            }
        }
    }

    /// The body of a 503.
    pub fn unavailable() -> ReplyBody {
        ReplyBody::RateLimiterUnavailable { message: UNAVAILABLE.to_owned() }
    }

    /// The `error` tag.
    pub fn error(&self) -> &'static str {
        match self {
            ReplyBody::RateLimited { .. } => "rate_limited",
            ReplyBody::CostExceedsLimit { .. } => "cost_exceeds_limit",
            ReplyBody::RateLimiterUnavailable { .. } => "rate_limiter_unavailable",
        }
    }

    /// The body as JSON (what `serde_json` writes for it, without its overhead on a flood's hot
    /// path: every string in a body is ours and needs no escaping beyond what is done here).
    pub fn to_json(&self) -> String {
        self.json_with(None)
    }

    /// The body as a WebSocket notice: `{"type":"rate_limit", ...the body}`.
    pub fn to_notice_json(&self) -> String {
        self.json_with(Some("rate_limit"))
    }

    fn json_with(&self, kind: Option<&str>) -> String {
        let mut out = String::with_capacity(192);
        out.push('{');
        if let Some(kind) = kind {
            out.push_str("\"type\":");
            push_json_str(&mut out, kind);
            out.push(',');
        }
        out.push_str("\"error\":");
        push_json_str(&mut out, self.error());
        out.push_str(",\"message\":");
        // Writing to a String cannot fail.
        match self {
            ReplyBody::RateLimited { message, retry_after_ms } => {
                push_json_str(&mut out, message);
                out.push_str(",\"retry_after_ms\":");
                push_u64(&mut out, *retry_after_ms);
            }
            ReplyBody::CostExceedsLimit { message, cost, limit, retry_after_ms } => {
                push_json_str(&mut out, message);
                let _ = write!(out, ",\"cost\":{cost},\"limit\":");
                push_opt(&mut out, *limit);
                out.push_str(",\"retry_after_ms\":");
                push_opt(&mut out, *retry_after_ms);
            }
            ReplyBody::RateLimiterUnavailable { message } => push_json_str(&mut out, message),
        }
        out.push('}');
        out
    }
}

fn push_opt(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
/// Appends `v` in decimal.
fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // The common case (every message of ours): nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Milliseconds, rounded up, saturating.
fn ceil_millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms.saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
}

impl Reply {
    /// The reply to a request refused with `decision` (throttled, or a cost that can never
    /// fit): 429, the `configured` headers that apply to it, `Retry-After` when a retry can
    /// pass (never when the cost can never fit, whatever the configuration says).
    pub fn refused(decision: &Decision, configured: &Headers, req: &RequestView<'_>) -> Reply {
        let mut headers = if configured.is_empty() { HeaderMap::new() } else { configured.resolve(req, decision) };
        match decision.retry_after_secs() {
            Some(secs) if !headers.contains_key(header::RETRY_AFTER) => {
                headers.insert(header::RETRY_AFTER, crate::headers::int_value(secs));
            }
            Some(_) => {}
            None => {
                headers.remove(header::RETRY_AFTER);
            }
        }
        Reply { status: StatusCode::TOO_MANY_REQUESTS, headers, body: ReplyBody::for_decision(decision) }
    }

    /// The reply when the backend failed and the error policy raised: 503 and a body that
    /// names nothing internal. (The throttle counts and logs backend incidents itself, once a
    /// second at most; integrations add no log line per reply beyond `debug`.)
    pub fn unavailable() -> Reply {
        Reply { status: StatusCode::SERVICE_UNAVAILABLE, headers: HeaderMap::new(), body: ReplyBody::unavailable() }
    }

    /// The `Content-Type` of [`ReplyBody::to_json`].
    pub const CONTENT_TYPE: &'static str = "application/json";
}

/// What a WebSocket handler does with the message it just received, after an integration's
/// per-message throttle (`traffik_poem::WsThrottle`, `traffik_salvo::WsConnection`) reacted on
/// the socket. The same in every integration.
#[derive(Debug)]
#[must_use]
pub enum WsVerdict {
    /// Process the message (a shaping delay has already been waited out).
    Allowed(Decision),
    /// Drop the message: the client was sent a notice ([`ReplyBody::to_notice_json`]) and the
    /// socket stays open.
    Throttled(Decision),
    /// The socket was closed (1008, the close reaction to a message over the limit) or could
    /// not be written to: stop reading.
    Closed(Decision),
    /// The rate limiter failed and its error policy raised: the client was sent the
    /// `rate_limiter_unavailable` notice and the socket closed with 1011: stop reading.
    Failed(crate::Error),
}

impl WsVerdict {
    /// Whether the message may be processed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, WsVerdict::Allowed(_))
    }

    /// Whether the message was over the limit (dropped, or the socket closed for it).
    pub fn is_throttled(&self) -> bool {
        match self {
            WsVerdict::Throttled(_) => true,
            WsVerdict::Closed(d) => d.is_throttled(),
            WsVerdict::Allowed(_) | WsVerdict::Failed(_) => false,
        }
    }

    /// Whether the socket is closed and the handler should stop.
    pub fn is_closed(&self) -> bool {
        matches!(self, WsVerdict::Closed(_) | WsVerdict::Failed(_))
    }

    /// The throttle's decision, when it reached one.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            WsVerdict::Allowed(d) | WsVerdict::Throttled(d) | WsVerdict::Closed(d) => Some(d),
            WsVerdict::Failed(_) => None,
        }
    }

    /// The failure, when the rate limiter could not decide.
    pub fn error(&self) -> Option<&crate::Error> {
        match self {
            WsVerdict::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// A response for refused requests, of an integration's own type, stored in a throttle (the
/// builder's [`throttled_handler`](crate::ThrottleBuilder::throttled_handler),
/// [`Throttle::update_throttled_handler`](crate::Throttle::update_throttled_handler)) and read
/// back by that integration. Only handler types implement it, so a bare closure or a value
/// no integration reads does not compile where a handler is expected.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a throttled handler",
    label = "expected an integration's handler type",
    note = "wrap the closure: `traffik_poem::ThrottledHandler::new(..)` or `traffik_salvo::ThrottledHandler::from_fn(..)`"
)]
pub trait RefusalHandler: std::any::Any + Send + Sync {}

/// Adds the headers of `extra` that `out` does not have, with all their values: a header that
/// the application, a handler or an inner layer set is never replaced.
pub fn add_missing_headers(out: &mut HeaderMap, extra: HeaderMap) {
    // The name whose values are being added (None: its values are skipped).
    let mut adding = None;
    for (name, value) in extra {
        if let Some(name) = name {
            adding = (!out.contains_key(&name)).then_some(name);
        }
        if let Some(name) = &adding {
            out.append(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Skip;
    use crate::headers::When;
    use crate::rate::Rate;
    use http::HeaderValue;

    fn decision(outcome: Outcome, cost: u64, wait: Duration) -> Decision {
        let mut d = Decision::skipped(Skip::Disabled);
        d.outcome = outcome;
        d.cost = cost;
        d.wait = wait;
        d.rate = Rate::parse("5/min").ok();
        d.remaining = Some(0);
        d
    }

    #[test]
    fn hand_written_json_is_what_serde_writes() {
        let bodies = [
            ReplyBody::for_decision(&decision(Outcome::Throttled, 1, Duration::from_micros(1_500_001))),
            ReplyBody::for_decision(&decision(Outcome::Throttled, 1, Duration::from_millis(200))),
            ReplyBody::for_decision(&decision(Outcome::Never, 9, Duration::ZERO)),
            ReplyBody::unavailable(),
            ReplyBody::RateLimited { message: "quote \" backslash \\ newline \n tab \t é".into(), retry_after_ms: 7 },
        ];
        for body in bodies {
            let ours: serde_json::Value = serde_json::from_str(&body.to_json()).unwrap_or_default();
            let theirs = serde_json::to_value(&body).unwrap_or_default();
            assert_eq!(ours, theirs, "{}", body.to_json());
            let back: ReplyBody = serde_json::from_value(ours).unwrap_or_else(|_| ReplyBody::unavailable());
            assert_eq!(back, body);
            let notice: serde_json::Value = serde_json::from_str(&body.to_notice_json()).unwrap_or_default();
            assert_eq!(notice["type"], "rate_limit");
            assert_eq!(notice["error"], body.error());
        }
    }

    #[test]
    fn messages_and_fields() {
        let throttled = ReplyBody::for_decision(&decision(Outcome::Throttled, 1, Duration::from_micros(1_500_001)));
        assert_eq!(
            throttled,
            ReplyBody::RateLimited { message: "Too many requests. Retry in 2 seconds.".into(), retry_after_ms: 1501 }
        );
        let one = ReplyBody::for_decision(&decision(Outcome::Throttled, 1, Duration::from_millis(200)));
        assert!(one.to_json().contains("Retry in 1 second."), "{}", one.to_json());
        let never = ReplyBody::for_decision(&decision(Outcome::Never, 9, Duration::ZERO));
        let v: serde_json::Value = serde_json::from_str(&never.to_json()).unwrap_or_default();
        assert_eq!((v["cost"].as_u64(), v["limit"].as_u64()), (Some(9), Some(5)));
        assert!(v["retry_after_ms"].is_null());
    }

    #[test]
    fn refusals_carry_retry_after_only_when_a_retry_can_pass() {
        let req = RequestView::empty();
        let r = Reply::refused(&decision(Outcome::Throttled, 1, Duration::from_millis(1500)), &Headers::new(), &req);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers[header::RETRY_AFTER], "2");
        let r = Reply::refused(
            &decision(Outcome::Throttled, 1, Duration::from_millis(1500)),
            &Headers::x_ratelimit(When::Always),
            &req,
        );
        assert_eq!(r.headers[header::RETRY_AFTER], "2");
        assert_eq!(r.headers["x-ratelimit-limit"], "5");
        let never =
            Reply::refused(&decision(Outcome::Never, 9, Duration::ZERO), &Headers::x_ratelimit(When::Always), &req);
        assert!(!never.headers.contains_key(header::RETRY_AFTER));
        let down = Reply::unavailable();
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!down.body.to_json().contains("throttle"));
    }

    #[test]
    fn missing_headers_are_added_and_present_ones_kept() {
        let mut out = HeaderMap::new();
        out.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        let mut extra = HeaderMap::new();
        extra.insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
        extra.append("x-many", HeaderValue::from_static("a"));
        extra.append("x-many", HeaderValue::from_static("b"));
        add_missing_headers(&mut out, extra);
        assert_eq!(out[header::RETRY_AFTER], "120");
        assert_eq!(out.get_all("x-many").iter().count(), 2);
    }
}
