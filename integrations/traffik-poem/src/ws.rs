//! Per-message throttling inside `poem::web::websocket` handlers.
//!
//! Throttling the upgrade request itself needs nothing special: put a [`PoemThrottle`] on the
//! WebSocket route and a client over its limit gets a 429 before the handshake.
//!
//! [`PoemThrottle`]: crate::PoemThrottle

use std::fmt;
use std::net::SocketAddr;

use futures_util::{Sink, SinkExt};
use poem::PathPattern;
use poem::Request;
use poem::http::{Extensions, HeaderMap, Method, Uri};
use poem::web::websocket::{CloseCode, Message};
use traffik::reply::WsVerdict;
use traffik::{Context, Decision, Outcome, RequestView, Throttle};

use crate::view::peer_addr;

/// What [`WsThrottle::hit`] does when a message is over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WsReaction {
    /// Send a JSON text message
    /// `{"type":"rate_limit","error":"rate_limited","message":..,"retry_after_ms":..}` and keep
    /// the socket open (the default).
    #[default]
    Notify,
    /// Send a close frame with code 1008 (policy violation).
    Close,
}

/// A throttle bound to one WebSocket connection: it remembers the upgrade request (peer,
/// headers, URI, extensions) so each message is charged to the same client identity the HTTP
/// throttles would use.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use poem::{IntoResponse, Request, handler, web::{Data, websocket::{Message, WebSocket}}};
/// use traffik::{Context, Throttle};
/// use traffik_poem::WsThrottle;
///
/// #[handler]
/// fn chat(ws: WebSocket, req: &Request, per_message: Data<&Throttle>) -> impl IntoResponse {
///     let limiter = WsThrottle::new(per_message.clone(), req);
///     ws.on_upgrade(move |mut socket| async move {
///         while let Some(Ok(msg)) = socket.next().await {
///             match limiter.hit(&mut socket, &Context::new()).await {
///                 Ok(v) if v.is_allowed() => { /* handle msg */ let _ = msg; }
///                 Ok(v) if v.is_closed() => break,
///                 Ok(_) => continue, // told the client; keep reading
///                 Err(_) => break,   // the socket failed
///             }
///         }
///     })
/// }
/// ```
pub struct WsThrottle {
    throttle: Throttle,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    peer: Option<SocketAddr>,
    route: Option<std::sync::Arc<str>>,
    reaction: WsReaction,
}

impl fmt::Debug for WsThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsThrottle")
            .field("throttle", &self.throttle)
            .field("uri", &self.uri)
            .field("peer", &self.peer)
            .field("reaction", &self.reaction)
            .finish()
    }
}

impl WsThrottle {
    /// Binds `throttle` to the connection upgraded from `req`.
    pub fn new(throttle: Throttle, req: &Request) -> Self {
        WsThrottle {
            throttle,
            method: req.method().clone(),
            uri: crate::view::full_uri(req).clone(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
            peer: peer_addr(req),
            route: req.data::<PathPattern>().map(|p| p.0.clone()),
            reaction: WsReaction::Notify,
        }
    }

    /// Sets the reaction to a message over the limit.
    #[must_use]
    pub fn reaction(mut self, reaction: WsReaction) -> Self {
        self.reaction = reaction;
        self
    }

    /// Close with 1008 instead of notifying (shorthand for
    /// `.reaction(WsReaction::Close)`).
    #[must_use]
    pub fn close_on_throttle(self) -> Self {
        self.reaction(WsReaction::Close)
    }

    /// The throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// The upgrade request as the throttle sees it.
    pub fn view(&self) -> RequestView<'_> {
        RequestView::new(&self.method, &self.uri, &self.headers)
            .peer(self.peer)
            .route(self.route.as_deref())
            .extensions(&self.extensions)
    }

    /// Hits the throttle for one message without sending anything.
    pub async fn decide(&self, ctx: &Context) -> Result<Decision, traffik::Error> {
        self.throttle.hit_with(&self.view(), ctx).await
    }

    /// Hits the throttle for one message (use `ctx` for a per-message cost or a scope such as
    /// a room) and reacts on `socket`: admitted → [`WsVerdict::Allowed`] (after waiting a
    /// shaping delay); over the limit → the [`WsReaction`], except in shadow mode
    /// ([`Throttle::set_shadow`]), where every message is [`WsVerdict::Allowed`] at once and
    /// nothing is sent (the decision inside says what the throttle decided); throttle failure (the error policy
    /// raised) → a `{"type":"rate_limit","error":"rate_limiter_unavailable",..}` notice, a 1011
    /// close and [`WsVerdict::Failed`]. The verdict is the core's, the same as in
    /// `traffik-salvo`. `Err` only when sending on the socket failed.
    pub async fn hit<S>(&self, socket: &mut S, ctx: &Context) -> Result<WsVerdict, S::Error>
    where
        S: Sink<Message> + Unpin,
    {
        let decision = match self.decide(ctx).await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(throttle = self.throttle.uid(), %error,
                    "rate limiter failed; closing WebSocket with 1011");
                let body = traffik::reply::ReplyBody::unavailable().to_notice_json();
                socket.send(Message::text(body)).await?;
                socket.send(Message::close_with(CloseCode::Error, "rate limiter unavailable")).await?;
                return Ok(WsVerdict::Failed(error));
            }
        };
        if !decision.is_refused() {
            crate::middleware::hold(&decision).await;
            return Ok(WsVerdict::Allowed(decision));
        }
        match self.reaction {
            WsReaction::Notify => {
                socket.send(Message::text(notice(&decision))).await?;
                Ok(WsVerdict::Throttled(decision))
            }
            WsReaction::Close => {
                let reason = if decision.outcome == Outcome::Never {
                    "message cost exceeds the rate limit"
                } else {
                    "rate limit exceeded"
                };
                socket.send(Message::close_with(CloseCode::Policy, reason)).await?;
                Ok(WsVerdict::Closed(decision))
            }
        }
    }
}

/// The JSON text of a rate-limit notice for `decision`:
/// `{"type":"rate_limit","error":..,"message":..,"retry_after_ms":..}` (`retry_after_ms` is
/// `null` when the cost can never fit).
pub fn notice(decision: &Decision) -> String {
    traffik::reply::ReplyBody::for_decision(decision).to_notice_json()
}
