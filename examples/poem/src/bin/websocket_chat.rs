//! WebSocket chat with per-message limits.
//!
//! * The upgrade request is throttled like any route (10 connections per minute per IP): a
//!   client over it gets a 429 before the handshake.
//! * Every chat message is charged to the sender in its room (5 per 10 s): a message over the
//!   limit is dropped and the sender gets `{"type":"rate_limit",...,"retry_after_ms":..}`,
//!   and the socket stays open. With `?strict=1` the server closes with 1008 instead.
//!
//! Run: `cargo run -p traffik-poem-examples --bin websocket_chat`, then connect with a
//! WebSocket client, e.g. `websocat ws://127.0.0.1:3000/ws/lobby` (twice, to chat), and type
//! quickly.

use futures_util::{SinkExt, StreamExt};
use poem::listener::TcpListener;
use poem::web::websocket::{Message, WebSocket};
use poem::web::{Data, Path};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Route, Server, get, handler};
use tokio::sync::broadcast;
use traffik::strategy::{FixedWindow, SlidingWindowLog};
use traffik::{Clock, Context, InMemoryBackend, SystemClock, Throttle, rate};
use traffik_poem::{ThrottleExt, WsThrottle};

const ADDR: &str = "127.0.0.1:3000";

/// Shared state: the chat bus and the per-message throttle.
#[derive(Clone)]
struct Chat {
    bus: broadcast::Sender<(String, String)>,
    per_message: Throttle,
}

#[handler]
fn room(ws: WebSocket, req: &Request, Path(room): Path<String>, chat: Data<&Chat>) -> impl IntoResponse {
    let strict = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "strict=1"));
    let mut limiter = WsThrottle::new(chat.per_message.clone(), req);
    if strict {
        limiter = limiter.close_on_throttle();
    }
    let who = traffik_poem::peer_addr(req).map_or_else(|| "someone".to_owned(), |a| a.to_string());
    let chat = chat.clone();
    ws.on_upgrade(move |mut socket| async move {
        let mut inbox = chat.bus.subscribe();
        // Each room has its own quota per sender.
        let ctx = Context::new().scope(room.clone());
        loop {
            tokio::select! {
                incoming = socket.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    match limiter.hit(&mut socket, &ctx).await {
                        Ok(v) if v.is_allowed() => {
                            // Nobody listening is fine.
                            let _ = chat.bus.send((room.clone(), format!("{who}: {text}")));
                        }
                        Ok(v) if v.is_closed() => break,
                        Ok(_) => {} // told the sender; keep the socket
                        Err(_) => break,
                    }
                }
                line = inbox.recv() => match line {
                    Ok((r, line)) if r == room => {
                        if socket.send(Message::text(line)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    })
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock + Clone) -> Result<impl Endpoint, traffik::Error> {
    let backend = InMemoryBackend::new();
    let connections = Throttle::builder()
        .uid("chat-connections")
        .rate(rate!("10/min"))
        .backend(backend.clone())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()?;
    let per_message = Throttle::builder()
        .uid("chat-messages")
        .rate(rate!("5/10s"))
        .backend(backend)
        .strategy(SlidingWindowLog)
        .clock(clock)
        .build()?;
    let (bus, _) = broadcast::channel(256);
    Ok(Route::new().at("/ws/:room", get(room).with(connections.middleware())).data(Chat { bus, per_message }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock)?;
    println!("traffik + poem WebSocket chat on ws://{ADDR}/ws/<room>");
    println!("  websocat ws://{ADDR}/ws/lobby            # 5 messages per 10 s, then a rate_limit notice");
    println!("  websocat 'ws://{ADDR}/ws/lobby?strict=1' # over the limit: closed with 1008");
    println!("  (the 11th connection within a minute gets HTTP 429 before the handshake)");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::listener::TcpAcceptor;
    use tokio_tungstenite::tungstenite::Message as Client;

    #[tokio::test]
    async fn messages_over_the_limit_get_a_notice() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app(traffik::ManualClock::new(0)).unwrap();
        tokio::spawn(Server::new_with_acceptor(TcpAcceptor::from_tokio(listener).unwrap()).run(app));
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/test")).await.unwrap();
        let mut texts = Vec::new();
        for i in 0..6 {
            socket.send(Client::text(format!("m{i}"))).await.unwrap();
            match socket.next().await {
                Some(Ok(Client::Text(t))) => texts.push(t.to_string()),
                other => panic!("expected text, got {other:?}"),
            }
        }
        assert!(texts[4].ends_with(": m4"), "{texts:?}");
        let notice: serde_json::Value = serde_json::from_str(&texts[5]).unwrap();
        assert_eq!(notice["type"], "rate_limit");
        assert_eq!(notice["retry_after_ms"], 10_000);
    }
}
