//! Concurrency limits in Poem: a slot is held while the endpoint runs and given back when it
//! answers, when its future is dropped (the client went away), and, for a WebSocket whose
//! handler takes the permit, when the socket closes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::test::TestClient;
use poem::web::Data;
use poem::web::websocket::WebSocket;
use poem::{EndpointExt, IntoResponse, Request, Route, Server, get, handler};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{self, Message};
use traffik::strategy::Concurrency;
use traffik::{InMemoryBackend, ManualClock, Throttle};
use traffik_poem::ThrottleExt;

fn one_in_flight() -> Throttle {
    Throttle::builder()
        .uid("uploads")
        .rate("1/30s")
        .backend(InMemoryBackend::new())
        .strategy(Concurrency)
        .clock(ManualClock::new(1_700_000_000_000_000))
        .build()
        .unwrap()
}

#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    finish: Arc<Notify>,
}

#[handler]
async fn slow(gate: Data<&Gate>) -> &'static str {
    let _ = gate.entered.send(());
    gate.finish.notified().await;
    "done"
}

#[tokio::test]
async fn a_request_dropped_mid_handler_gives_its_slot_back() {
    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let gate = Gate { entered: tx, finish: Arc::clone(&finish) };
    let cli = TestClient::new(Route::new().at("/upload", get(slow).with(one_in_flight().middleware())).data(gate));

    let mut first = Box::pin(cli.get("/upload").send());
    tokio::select! {
        _ = &mut first => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    let refused = cli.get("/upload").send().await;
    refused.assert_status(poem::http::StatusCode::TOO_MANY_REQUESTS);
    refused.assert_header("retry-after", "30");
    // The client goes away: the endpoint's future is dropped with the permit in it.
    drop(first);
    let mut again = Box::pin(cli.get("/upload").send());
    tokio::select! {
        _ = &mut again => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    finish.notify_one();
    again.await.assert_status_is_ok();
}

#[handler]
fn feed(ws: WebSocket, req: &Request) -> impl IntoResponse {
    let permit = traffik_poem::take_permit(req);
    ws.on_upgrade(move |mut socket| async move {
        let _held = permit;
        while let Some(Ok(msg)) = socket.next().await {
            if let poem::web::websocket::Message::Text(t) = msg {
                let _ = socket.send(poem::web::websocket::Message::Text(t)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_holds_its_slot_until_it_closes() {
    let app = Route::new().at("/feed", get(feed).with(one_in_flight().middleware()));
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    let url = format!("ws://{addr}/feed");

    let (mut first, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    first.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(60), first.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("hi"));
    // Open and past its handler: still holding the only slot.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert_eq!(resp.headers()["retry-after"], "30");
        }
        other => panic!("expected an HTTP 429, got {other:?}"),
    }
    first.close(None).await.unwrap();
    drop(first);
    // The server's socket task ends once it reads the close: ask until admitted.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(resp)) if resp.status() == 429 && attempts < 3000 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("after {attempts} attempts: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_group_of_a_rate_and_a_concurrency_limit_holds_its_lease_while_the_handler_runs() {
    use traffik::ThrottleGroup;
    use traffik::strategy::FixedWindow;
    use traffik_poem::GroupExt;

    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let gate = Gate { entered: tx, finish: Arc::clone(&finish) };
    let rate = Throttle::builder()
        .uid("per-minute")
        .rate("100/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_700_000_000_000_000))
        .build()
        .unwrap();
    let group = ThrottleGroup::new("uploads", [rate, one_in_flight()]).unwrap();
    let cli = TestClient::new(Route::new().at("/upload", get(slow).with(group.middleware())).data(gate));
    let mut first = Box::pin(cli.get("/upload").send());
    tokio::select! {
        _ = &mut first => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    let refused = cli.get("/upload").send().await;
    refused.assert_status(poem::http::StatusCode::TOO_MANY_REQUESTS);
    refused.assert_header("retry-after", "30");
    finish.notify_one();
    first.await.assert_status_is_ok();
    let mut again = Box::pin(cli.get("/upload").send());
    tokio::select! {
        _ = &mut again => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    finish.notify_one();
    again.await.assert_status_is_ok();
    // The rate member was charged for the two admissions only.
    let stats = group.stat(&traffik::RequestView::empty()).await.unwrap();
    assert_eq!(stats[0].limited().unwrap().remaining, 98);
}

/// The app-wide `ThrottleMiddleware` holds a concurrency limit's permit until the endpoint
/// answers and gives the slot back then (it used to hit, taking a lease nobody released until
/// it expired), and while the endpoint runs a second request is refused.
#[tokio::test]
async fn the_app_wide_middleware_holds_and_returns_a_concurrency_slot() {
    use traffik_poem::{MiddlewareThrottle, ThrottleMiddleware};
    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let gate = Gate { entered: tx, finish: Arc::clone(&finish) };
    let app = Route::new()
        .at("/upload", get(slow))
        .with(ThrottleMiddleware::new([MiddlewareThrottle::new(one_in_flight())]))
        .data(gate);
    let cli = TestClient::new(app);
    for round in 0..3 {
        let mut first = Box::pin(cli.get("/upload").send());
        tokio::select! {
            _ = &mut first => panic!("the handler cannot finish yet"),
            _ = entered.recv() => {}
        }
        let refused = cli.get("/upload").send().await;
        assert_eq!(refused.0.status(), poem::http::StatusCode::TOO_MANY_REQUESTS, "round {round}");
        finish.notify_one();
        assert_eq!(first.await.0.status(), poem::http::StatusCode::OK, "round {round}: the slot came back");
    }
}
