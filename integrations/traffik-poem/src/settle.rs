//! Settling an admission once the endpoint has answered ([`PoemThrottle::settle`]): what Poem
//! knows of a response, as the core's [`Served`].
//!
//! [`PoemThrottle::settle`]: crate::PoemThrottle::settle

use poem::Response;
use poem::http::header::CONTENT_LENGTH;
use traffik::{Decision, GroupDecision, Served, Settle, Throttle, ThrottleGroup};

/// The response as the core's rules see it: its status and its body's length, from
/// `Content-Length` or, when that is not set (Poem sets it when the response is written), the
/// body's exact size.
pub(crate) fn served(resp: &mut Response) -> Served {
    let declared = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let len = declared.or_else(|| exact_len(resp));
    Served::new(resp.status().as_u16()).with_body_len(len)
}

/// The body's exact size, when the body knows it (the body is taken out and put back as is).
fn exact_len(resp: &mut Response) -> Option<u64> {
    let body: http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error> = resp.take_body().into();
    let len = http_body::Body::size_hint(&body).exact();
    resp.set_body(poem::Body::from(body));
    len
}

/// What an endpoint answered, as [`Served`]: an error counts with its status (its body is
/// unknown).
pub(crate) fn served_answer(answer: &mut poem::Result<Response>) -> Served {
    match answer {
        Ok(resp) => served(resp),
        Err(error) => Served::new(error.status().as_u16()),
    }
}

/// Settles `decision` by `rule`; a failure is logged and changes nothing else.
pub(crate) async fn settle(rule: &Settle, throttle: &Throttle, decision: &Decision, served: Served) {
    if let Err(error) = rule.apply(throttle, decision, served).await {
        tracing::warn!(throttle = throttle.uid(), %error, "could not settle the request's cost; the charge stands");
    }
}

/// Settles a group's admission by `rule` (refunds only); a failure is logged.
pub(crate) async fn settle_group(rule: &Settle, group: &ThrottleGroup, decided: &GroupDecision, served: Served) {
    if let Err(error) = rule.apply_group(group, decided, served).await {
        tracing::warn!(throttle = group.uid(), %error, "could not settle the request's cost; the charge stands");
    }
}
