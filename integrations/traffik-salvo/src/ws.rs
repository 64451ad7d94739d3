//! Per-message throttling inside `salvo::websocket` handlers.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use salvo::Request;
use salvo::http::uri::Uri;
use salvo::http::{HeaderMap, Method};
use salvo::websocket::{Message, WebSocket};
use traffik::reply::WsVerdict;
use traffik::{Context, Decision, Error, Outcome, RequestView, Throttle};

use crate::view::peer_addr;

/// The WebSocket close code for a policy violation.
pub const POLICY_VIOLATION: u16 = 1008;

/// WebSocket close code 1011 (internal error): the rate limiter could not decide.
pub const INTERNAL_ERROR: u16 = 1011;

type MessageFn = Arc<dyn Fn(&Decision) -> Message + Send + Sync>;

#[derive(Clone)]
enum Reaction {
    Notify,
    Close,
    Custom(MessageFn),
}

/// A throttle for messages on WebSocket connections.
///
/// Throttle the *upgrade* with an ordinary [`SalvoThrottle`](crate::SalvoThrottle) hoop on the
/// route (a denied client gets a 429 before the handshake); throttle *messages* with this.
/// Capture a [`WsConnection`] from the request before upgrading and call
/// [`WsConnection::hit`] for each message. When a message is denied the client is told, by
/// default with a JSON text message
/// `{"type":"rate_limit","error":"rate_limited","message":...,"retry_after_ms":...}`, and the
/// socket stays open; [`close_on_throttle`](Self::close_on_throttle) closes it with code 1008
/// instead. A throttle in shadow mode ([`Throttle::set_shadow`]) never refuses a message: every
/// verdict is [`WsVerdict::Allowed`], whose decision says what the throttle decided.
///
/// ```no_run
/// use salvo::prelude::*;
/// use salvo::websocket::WebSocketUpgrade;
/// use traffik_salvo::WsThrottle;
///
/// struct Chat(WsThrottle);
///
/// #[async_trait]
/// impl Handler for Chat {
///     async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
///         let conn = self.0.connection(req);
///         let upgraded = WebSocketUpgrade::new()
///             .upgrade(req, res, move |mut ws| async move {
///                 while let Some(Ok(msg)) = ws.recv().await {
///                     let verdict = conn.hit(&mut ws).await;
///                     if verdict.is_closed() {
///                         return;
///                     }
///                     if verdict.is_allowed() && ws.send(msg).await.is_err() {
///                         return;
///                     }
///                 }
///             })
///             .await;
///         if let Err(e) = upgraded {
///             res.render(e);
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct WsThrottle {
    throttle: Throttle,
    reaction: Reaction,
    cost: Option<u64>,
}

impl WsThrottle {
    /// Wraps a throttle; denied messages are answered with a JSON text message.
    pub fn new(throttle: Throttle) -> Self {
        WsThrottle { throttle, reaction: Reaction::Notify, cost: None }
    }

    /// Closes the socket with code 1008 (policy violation) when a message is denied.
    #[must_use]
    pub fn close_on_throttle(mut self) -> Self {
        self.reaction = Reaction::Close;
        self
    }

    /// Sends the message `f` builds when a message is denied (instead of the JSON default);
    /// a close message closes the connection.
    #[must_use]
    pub fn on_throttled(mut self, f: impl Fn(&Decision) -> Message + Send + Sync + 'static) -> Self {
        self.reaction = Reaction::Custom(Arc::new(f));
        self
    }

    /// Charges every message `cost` instead of the throttle's own cost.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// The wrapped throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Captures what the throttle needs from the upgrade request (peer, method, URI, headers,
    /// route), so it can be moved into the upgrade callback.
    pub fn connection(&self, req: &Request) -> WsConnection {
        let matched = req.matched_path();
        WsConnection {
            ws: self.clone(),
            peer: peer_addr(req),
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            route: (!matched.is_empty()).then(|| matched.to_owned()),
        }
    }
}

impl fmt::Debug for WsThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reaction = match self.reaction {
            Reaction::Notify => "notify",
            Reaction::Close => "close",
            Reaction::Custom(_) => "custom",
        };
        f.debug_struct("WsThrottle")
            .field("throttle", &self.throttle)
            .field("reaction", &reaction)
            .field("cost", &self.cost)
            .finish()
    }
}

/// A [`WsThrottle`] bound to one connection's upgrade request.
#[derive(Clone)]
pub struct WsConnection {
    ws: WsThrottle,
    peer: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    route: Option<String>,
}

impl fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnection")
            .field("throttle", &self.ws)
            .field("peer", &self.peer)
            .field("uri", &self.uri)
            .finish()
    }
}

/// The JSON text a denied message gets by default: the core's notice,
/// `{"type":"rate_limit","error":..,"message":..,"retry_after_ms":..}` (`error` is
/// `"cost_exceeds_limit"`, with `cost` and `limit`, and `retry_after_ms` is `null` when the
/// cost can never fit), the same in every integration.
pub fn ws_throttled_message(decision: &Decision) -> Message {
    Message::text(traffik::reply::ReplyBody::for_decision(decision).to_notice_json())
}

impl WsConnection {
    /// A view of the upgrade request, for calling the throttle directly.
    pub fn view(&self) -> RequestView<'_> {
        RequestView::new(&self.method, &self.uri, &self.headers).peer(self.peer).route(self.route.as_deref())
    }

    /// Charges one message and reacts on `ws` when it is denied.
    pub async fn hit(&self, ws: &mut WebSocket) -> WsVerdict {
        match self.ws.cost {
            Some(cost) => self.hit_with(ws, &Context::new().cost(cost)).await,
            None => self.react(ws, self.ws.throttle.hit(&self.view()).await).await,
        }
    }

    /// Charges one message with per-message options (for example a scope per room, or a cost
    /// from the payload size) and reacts on `ws` when it is denied.
    pub async fn hit_with(&self, ws: &mut WebSocket, ctx: &Context) -> WsVerdict {
        let ctx = match self.ws.cost {
            Some(cost) if ctx.cost_override().is_none() => ctx.clone().cost(cost),
            _ => ctx.clone(),
        };
        let result = self.ws.throttle.hit_with(&self.view(), &ctx).await;
        self.react(ws, result).await
    }

    async fn react(&self, ws: &mut WebSocket, result: Result<Decision, Error>) -> WsVerdict {
        let decision = match result {
            Ok(d) => d,
            Err(error) => {
                // The throttle counts and logs backend incidents itself, once a second at most.
                tracing::debug!(throttle = self.ws.throttle.uid(), %error, "rate limiter unavailable");
                let body = traffik::reply::ReplyBody::unavailable().to_notice_json();
                // A failed send shows up on the handler's next receive.
                if ws.send(Message::text(body)).await.is_ok() {
                    let _ = ws.send(Message::close_with(INTERNAL_ERROR, "rate limiter unavailable")).await;
                }
                return WsVerdict::Failed(error);
            }
        };
        if !decision.is_refused() {
            crate::hoop::delay(decision.hold()).await;
            return WsVerdict::Allowed(decision);
        }
        let message = match &self.ws.reaction {
            Reaction::Notify => ws_throttled_message(&decision),
            Reaction::Close => {
                let reason = match decision.outcome {
                    Outcome::Never => "message cost exceeds the rate limit",
                    _ => "rate limit exceeded",
                };
                Message::close_with(POLICY_VIOLATION, reason)
            }
            Reaction::Custom(f) => f(&decision),
        };
        let closing = message.is_close();
        if ws.send(message).await.is_err() || closing {
            return WsVerdict::Closed(decision);
        }
        WsVerdict::Throttled(decision)
    }
}
