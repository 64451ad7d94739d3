//! Settling an admission once the chain has answered ([`SalvoThrottle::settle`]): what Salvo
//! knows of a response, as the core's [`Served`].
//!
//! [`SalvoThrottle::settle`]: crate::SalvoThrottle::settle

use salvo::Response;
use salvo::http::body::{Body, ResBody};
use salvo::http::header::CONTENT_LENGTH;
use traffik::{Decision, GroupDecision, Served, Settle, Throttle, ThrottleGroup};

/// The response as the core's rules see it: its status (`200` when none was set, as Salvo
/// sends it) and its body's length, from `Content-Length` or the body's exact size. A body
/// not set yet (Salvo's catcher writes it later) or an error left for the catcher is of
/// unknown length.
pub(crate) fn served(res: &Response) -> Served {
    let status = res.status_code.map_or(200, |s| s.as_u16());
    let declared = res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let len = declared.or_else(|| match &res.body {
        ResBody::None | ResBody::Error(_) => None,
        body => Body::size_hint(body).exact(),
    });
    Served::new(status).with_body_len(len)
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
