//! A real Poem server on 127.0.0.1 with real HTTP (reqwest) and WebSocket (tokio-tungstenite)
//! clients: peer addresses, trusted proxies, concurrency and WebSocket messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{http_client, serve};
use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{Message as ServerMessage, WebSocket};
use poem::{EndpointExt, IntoResponse, Request, Route, get, handler};
use serde_json::Value;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::{self, Message};
use traffik::{ClientIp, Context, ManualClock, Throttle, TrustedProxies, rate};
use traffik::{Headers, When};
use traffik_poem::{ThrottleExt, WsThrottle};

#[handler]
fn hello() -> &'static str {
    "hello"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_requests_get_429_retry_after_headers_and_json() {
    let throttle = throttle!(rate!("2/h")).clock(ManualClock::new(0)).headers(Headers::x_ratelimit(When::Always));
    let throttle = throttle.build().unwrap();
    let addr = serve(Route::new().at("/api", get(hello).with(throttle.middleware()))).await;
    let client = http_client();
    let url = format!("http://{addr}/api");

    let ok = client.get(&url).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(ok.text().await.unwrap(), "hello");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let denied = client.get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 429);
    assert_eq!(denied.headers()["retry-after"], "3600");
    assert_eq!(denied.headers()["x-ratelimit-limit"], "2");
    assert_eq!(denied.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(denied.headers()["content-type"], "application/json");
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_ms"], 3_600_000);
}

async fn get_status(client: &reqwest::Client, url: &str, forwarded_for: Option<&str>) -> u16 {
    let mut req = client.get(url);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let untrusted = throttle!(rate!("1/h")).build().unwrap();
    let proxied = throttle!(rate!("1/h"))
        .identifier(ClientIp::new().trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap()))
        .build()
        .unwrap();
    let addr = serve(
        Route::new()
            .at("/direct", get(hello).with(untrusted.middleware()))
            .at("/behind-proxy", get(hello).with(proxied.middleware())),
    )
    .await;
    let client = http_client();

    // An untrusted client (127.0.0.1 is not trusted here) cannot pick a bucket with a header.
    let direct = format!("http://{addr}/direct");
    assert_eq!(get_status(&client, &direct, Some("203.0.113.1")).await, 200);
    assert_eq!(get_status(&client, &direct, Some("203.0.113.2")).await, 429);
    assert_eq!(get_status(&client, &direct, None).await, 429);

    // Behind a trusted proxy, each forwarded client has its own bucket.
    let behind = format!("http://{addr}/behind-proxy");
    assert_eq!(get_status(&client, &behind, Some("203.0.113.1")).await, 200);
    assert_eq!(get_status(&client, &behind, Some("203.0.113.2")).await, 200);
    assert_eq!(get_status(&client, &behind, Some("198.51.100.7, 203.0.113.1")).await, 429);
    assert_eq!(get_status(&client, &behind, None).await, 200, "the proxy's own requests are its own client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_against_a_limit_of_ten_admit_exactly_ten() {
    const CLIENTS: usize = 64;
    const LIMIT: usize = 10;
    let throttle = throttle!(rate!("10/h")).clock(ManualClock::new(0)).build().unwrap();
    let addr = serve(Route::new().at("/", get(hello).with(throttle.middleware()))).await;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let client = http_client();
            let url = format!("http://{addr}/");
            tokio::spawn(async move {
                barrier.wait().await;
                client.get(&url).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (LIMIT, CLIENTS - LIMIT));
}

/// Echoes text messages; each one is charged to `per_message`.
#[handler]
fn chat(ws: WebSocket, req: &Request, per_message: Data<&Throttle>, close: Data<&bool>) -> impl IntoResponse {
    let mut limiter = WsThrottle::new(per_message.clone(), req);
    if **close {
        limiter = limiter.close_on_throttle();
    }
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.next().await {
            let ServerMessage::Text(text) = msg else { continue };
            match limiter.hit(&mut socket, &Context::new()).await {
                Ok(v) if v.is_allowed() => {
                    if socket.send(ServerMessage::text(format!("echo {text}"))).await.is_err() {
                        break;
                    }
                }
                Ok(v) if v.is_closed() => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    })
}

async fn ws_server(per_message: Throttle, close: bool, upgrade: Option<Throttle>) -> String {
    let route = match upgrade {
        Some(t) => Route::new().at("/ws", get(chat).with(t.middleware())),
        None => Route::new().at("/ws", get(chat)),
    };
    let addr = serve(route.data(per_message).data(close)).await;
    format!("ws://{addr}/ws")
}

async fn next_text<S>(socket: &mut S) -> String
where
    S: StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let msg = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    match msg {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_over_the_limit_get_a_rate_limit_message_and_the_socket_stays_usable() {
    let clock = ManualClock::new(0);
    let per_message = throttle!(rate!("2/min")).clock(clock.clone()).build().unwrap();
    let url = ws_server(per_message, false, None).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    for word in ["a", "b"] {
        socket.send(Message::text(word)).await.unwrap();
        assert_eq!(next_text(&mut socket).await, format!("echo {word}"));
    }
    socket.send(Message::text("c")).await.unwrap();
    let notice: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(notice["type"], "rate_limit");
    assert_eq!(notice["error"], "rate_limited");
    assert_eq!(notice["retry_after_ms"], 60_000);

    // Still open: once the window passes, messages flow again.
    clock.advance(Duration::from_secs(60));
    socket.send(Message::text("d")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "echo d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_option_closes_with_1008() {
    let per_message = throttle!(rate!("1/min")).clock(ManualClock::new(0)).build().unwrap();
    let url = ws_server(per_message, true, None).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::text("a")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "echo a");
    socket.send(Message::text("b")).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    let Message::Close(Some(frame)) = msg else { panic!("expected a close frame, got {msg:?}") };
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "rate limit exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_upgrade_request_gets_429_before_the_handshake() {
    let per_message = throttle!(rate!("100/min")).build().unwrap();
    let upgrades = throttle!(rate!("1/h")).clock(ManualClock::new(0)).build().unwrap();
    let url = ws_server(per_message, false, Some(upgrades)).await;
    let (_first, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert_eq!(resp.headers()["retry-after"], "3600");
        }
        other => panic!("expected an HTTP 429, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_that_can_never_fit_says_so_without_a_wait() {
    let per_message = throttle!(rate!("2/min")).cost(5).build().unwrap();
    let url = ws_server(per_message, false, None).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::text("huge")).await.unwrap();
    let notice: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(notice["type"], "rate_limit");
    assert_eq!(notice["error"], "cost_exceeds_limit");
    assert!(notice["retry_after_ms"].is_null(), "{notice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_throttle_closes_the_websocket_with_1011() {
    let per_message =
        throttle!(rate!("2/min")).backend(common::broken()).on_error(traffik::ErrorPolicy::raise()).build().unwrap();
    let url = ws_server(per_message, false, None).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::text("a")).await.unwrap();
    let error: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(
        error,
        serde_json::from_str::<Value>(&traffik::reply::ReplyBody::unavailable().to_notice_json()).unwrap()
    );
    let msg = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    let Message::Close(Some(frame)) = msg else { panic!("expected a close frame, got {msg:?}") };
    assert_eq!(u16::from(frame.code), 1011);
}
