//! A real Salvo server on 127.0.0.1 with real HTTP (reqwest) and WebSocket
//! (tokio-tungstenite) clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use salvo::prelude::*;
use salvo::websocket::{Message as ServerMessage, WebSocketUpgrade};
use serde_json::Value;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::{self, Message};
use traffik::{ClientIp, Context, ManualClock, TrustedProxies, rate};
use traffik::{Headers, When};
use traffik_salvo::{ThrottleExt, WsThrottle};

#[handler]
async fn hello() -> &'static str {
    "hello"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_requests_get_429_retry_after_headers_and_json() {
    let throttle =
        throttle!(rate!("2/h")).clock(ManualClock::new(0)).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let addr = common::serve(Router::with_path("api").hoop(throttle.hoop()).get(hello)).await;
    let url = format!("http://{addr}/api");
    let client = reqwest::Client::new();
    for left in ["1", "0"] {
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-remaining"], left);
        assert_eq!(res.text().await.unwrap(), "hello");
    }
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "3600");
    assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_ms"], 3_600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_peers_and_forwarding_headers() {
    // 127.0.0.1 is a trusted proxy here: each forwarded client is limited separately.
    let trusting = ClientIp::new().trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap());
    let behind_proxy = throttle!(rate!("1/h")).identifier(trusting).build().unwrap();
    // Nobody is trusted here: the header is ignored and the socket peer is the client.
    let direct = throttle!(rate!("1/h")).build().unwrap();
    let addr = common::serve(
        Router::new()
            .push(Router::with_path("proxied").hoop(behind_proxy.hoop()).get(hello))
            .push(Router::with_path("direct").hoop(direct.hoop()).get(hello)),
    )
    .await;
    let client = reqwest::Client::new();
    let call =
        |path: &str, xff: &str| client.get(format!("http://{addr}/{path}")).header("x-forwarded-for", xff).send();
    assert_eq!(call("proxied", "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(call("proxied", "203.0.113.2").await.unwrap().status(), 200);
    assert_eq!(call("proxied", "203.0.113.1").await.unwrap().status(), 429);

    assert_eq!(call("direct", "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(call("direct", "203.0.113.2").await.unwrap().status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_against_limit_n_admit_exactly_n() {
    const CLIENTS: usize = 64;
    const LIMIT: usize = 10;
    let throttle = throttle!(rate!("10/h")).build().unwrap();
    let addr = common::serve(Router::new().hoop(throttle.hoop()).get(hello)).await;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            // One client (and so one connection) each.
            let client = reqwest::Client::new();
            barrier.wait().await;
            client.get(format!("http://{addr}/")).send().await.unwrap().status()
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for task in tasks {
        match task.await.unwrap().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, LIMIT);
    assert_eq!(limited, CLIENTS - LIMIT);
}

/// Echoes text messages, each one charged to a per-message throttle; `"huge"` costs 1000.
struct Echo(WsThrottle);

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let conn = self.0.connection(req);
        let upgraded = WebSocketUpgrade::new()
            .upgrade(req, res, move |mut ws| async move {
                while let Some(Ok(msg)) = ws.recv().await {
                    let Ok(text) = msg.as_str().map(str::to_owned) else {
                        continue;
                    };
                    let verdict = if text == "huge" {
                        conn.hit_with(&mut ws, &Context::new().cost(1000)).await
                    } else {
                        conn.hit(&mut ws).await
                    };
                    if verdict.is_closed() {
                        return;
                    }
                    if verdict.is_allowed() && ws.send(ServerMessage::text(text)).await.is_err() {
                        return;
                    }
                }
            })
            .await;
        if let Err(e) = upgraded {
            res.render(e);
        }
    }
}

async fn ws_server(messages: WsThrottle, upgrades: traffik::Throttle) -> String {
    let addr = common::serve(Router::with_path("ws").hoop(upgrades.hoop()).goal(Echo(messages))).await;
    format!("ws://{addr}/ws")
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_throttled_and_the_socket_stays_open() {
    let messages = WsThrottle::new(throttle!(rate!("2/h")).build().unwrap());
    let url = ws_server(messages, throttle!(rate!("100/h")).build().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for word in ["one", "two"] {
        ws.send(Message::text(word)).await.unwrap();
        assert_eq!(next_text(&mut ws).await, word);
    }
    for _ in 0..2 {
        ws.send(Message::text("three")).await.unwrap();
        let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(reply["type"], "rate_limit");
        assert_eq!(reply["error"], "rate_limited");
        assert!(reply["retry_after_ms"].as_u64().unwrap() > 0);
    }
    // A cost that can never fit says so, without a retry time.
    ws.send(Message::text("huge")).await.unwrap();
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(reply["error"], "cost_exceeds_limit");
    assert_eq!(reply["retry_after_ms"], Value::Null);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_on_throttle_sends_1008() {
    let messages = WsThrottle::new(throttle!(rate!("1/h")).build().unwrap()).close_on_throttle();
    let url = ws_server(messages, throttle!(rate!("100/h")).build().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "one");
    ws.send(Message::text("two")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), "rate limit exceeded");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A backend failure the error policy raises: the core's notice, then a 1011 close (as in
/// `traffik-poem`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_throttle_closes_the_websocket_with_1011() {
    let failing = traffik::Throttle::builder()
        .uid(common::uid("salvo-ws-broken"))
        .rate(rate!("2/min"))
        .backend(common::broken())
        .strategy(traffik::strategy::FixedWindow)
        .on_error(traffik::ErrorPolicy::raise())
        .build()
        .unwrap();
    let url = ws_server(WsThrottle::new(failing), throttle!(rate!("100/h")).build().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("a")).await.unwrap();
    let notice: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(
        notice,
        serde_json::from_str::<Value>(&traffik::reply::ReplyBody::unavailable().to_notice_json()).unwrap()
    );
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_upgrade_is_429_before_the_handshake() {
    let messages = WsThrottle::new(throttle!(rate!("100/h")).build().unwrap());
    let upgrades = throttle!(rate!("1/h")).clock(ManualClock::new(0)).build().unwrap();
    let url = ws_server(messages, upgrades).await;
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    drop(ws);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 429);
            assert_eq!(res.headers()["retry-after"], "3600");
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "rate_limited");
        }
        Err(other) => panic!("expected an HTTP error, got {other}"),
        Ok(_) => panic!("the second upgrade should be throttled"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_custom_reaction_and_cost() {
    let messages = WsThrottle::new(throttle!(rate!("3/h")).build().unwrap())
        .cost(2)
        .on_throttled(|d| ServerMessage::text(format!("wait {} ms", d.wait.as_millis().min(1))));
    let url = ws_server(messages, throttle!(rate!("100/h")).build().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // Each message costs 2 of 3: the second is denied with the custom text.
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "one");
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "wait 1 ms");
    ws.close(None).await.unwrap();
}
