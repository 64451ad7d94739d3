//! Concurrency limits in Salvo: a slot is held while the rest of the chain runs and given back
//! when it has answered, when its future is dropped (the client went away), and, for a
//! WebSocket whose handler takes the permit, when the socket closes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{get, header};
use futures_util::{SinkExt, StreamExt};
use salvo::prelude::*;
use salvo::websocket::WebSocketUpgrade;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{self, Message};
use traffik::strategy::Concurrency;
use traffik::{InMemoryBackend, ManualClock, Throttle};
use traffik_salvo::ThrottleExt;

const A: &str = "198.51.100.1:5000";

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

struct Slow {
    entered: mpsc::UnboundedSender<()>,
    finish: Arc<Notify>,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let _ = self.entered.send(());
        self.finish.notified().await;
        res.render("done");
    }
}

#[tokio::test]
async fn a_request_dropped_mid_handler_gives_its_slot_back() {
    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let router =
        Router::with_path("upload").hoop(one_in_flight().hoop()).get(Slow { entered: tx, finish: Arc::clone(&finish) });
    let service = Service::new(router);

    let mut first = Box::pin(get(&service, "/upload", A));
    tokio::select! {
        _ = &mut first => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    let refused = get(&service, "/upload", A).await;
    assert_eq!(refused.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("30"));
    // The client goes away: the chain's future is dropped with the permit in it.
    drop(first);
    let mut again = Box::pin(get(&service, "/upload", A));
    tokio::select! {
        _ = &mut again => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    finish.notify_one();
    assert_eq!(again.await.status_code, Some(StatusCode::OK));
}

#[handler]
async fn feed(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), StatusError> {
    let permit = traffik_salvo::take_permit(depot);
    WebSocketUpgrade::new()
        .upgrade(req, res, move |mut ws| async move {
            let _held = permit;
            while let Some(Ok(msg)) = ws.recv().await {
                if let Ok(text) = msg.as_str().map(str::to_owned)
                    && ws.send(salvo::websocket::Message::text(text)).await.is_err()
                {
                    return;
                }
            }
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_holds_its_slot_until_it_closes() {
    let addr = common::serve(Router::with_path("feed").hoop(one_in_flight().hoop()).goal(feed)).await;
    let url = format!("ws://{addr}/feed");

    let (mut first, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    first.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(60), first.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("hi"));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert_eq!(resp.headers()["retry-after"], "30");
        }
        other => panic!("expected an HTTP 429, got {other:?}"),
    }
    first.close(None).await.unwrap();
    drop(first);
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
async fn a_group_of_a_rate_and_a_concurrency_limit_holds_its_lease_while_the_chain_runs() {
    use traffik::ThrottleGroup;
    use traffik::strategy::FixedWindow;
    use traffik_salvo::GroupExt;

    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let rate = Throttle::builder()
        .uid("per-minute")
        .rate("100/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_700_000_000_000_000))
        .build()
        .unwrap();
    let group = ThrottleGroup::new("uploads", [rate, one_in_flight()]).unwrap();
    let router = Router::with_path("upload").hoop(group.hoop()).get(Slow { entered: tx, finish: Arc::clone(&finish) });
    let service = Service::new(router);
    let mut first = Box::pin(get(&service, "/upload", A));
    tokio::select! {
        _ = &mut first => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    let refused = get(&service, "/upload", A).await;
    assert_eq!(refused.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("30"));
    finish.notify_one();
    assert_eq!(first.await.status_code, Some(StatusCode::OK));
    let mut again = Box::pin(get(&service, "/upload", A));
    tokio::select! {
        _ = &mut again => panic!("the handler cannot finish yet"),
        _ = entered.recv() => {}
    }
    finish.notify_one();
    assert_eq!(again.await.status_code, Some(StatusCode::OK));
}

/// The app-wide `ThrottleMiddleware` holds a concurrency limit's permit while the rest of the
/// chain runs and gives the slot back when it answers (it used to hit, taking a lease nobody
/// released until it expired), and while the handler runs a second request is refused.
#[tokio::test]
async fn the_app_wide_middleware_holds_and_returns_a_concurrency_slot() {
    use traffik_salvo::{MiddlewareThrottle, ThrottleMiddleware};
    let (tx, mut entered) = mpsc::unbounded_channel();
    let finish = Arc::new(Notify::new());
    let router = Router::new()
        .hoop(ThrottleMiddleware::new([MiddlewareThrottle::new(one_in_flight())]))
        .push(Router::with_path("upload").get(Slow { entered: tx, finish: Arc::clone(&finish) }));
    let service = Service::new(router);
    for round in 0..3 {
        let mut first = Box::pin(get(&service, "/upload", A));
        tokio::select! {
            _ = &mut first => panic!("the handler cannot finish yet"),
            _ = entered.recv() => {}
        }
        let refused = get(&service, "/upload", A).await;
        assert_eq!(refused.status_code, Some(StatusCode::TOO_MANY_REQUESTS), "round {round}");
        finish.notify_one();
        assert_eq!(first.await.status_code, Some(StatusCode::OK), "round {round}: the slot came back");
    }
}
