//! Concurrency limits through both integrations on real listeners: a Poem app and a Salvo app
//! built alike, each with a route limited to one request in flight (429) and one answering 503
//! instead. A request holds its slot while its handler runs, and gives it back when the handler
//! has answered; a refusal says when the slot's lease expires at the latest (`Retry-After`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use traffik::strategy::Concurrency;
use traffik::{InMemoryBackend, ManualClock, Throttle};

/// The handlers' gate: a handler says it has started, then waits for a permit to finish.
#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    go: Arc<Semaphore>,
}

impl Gate {
    async fn pass(&self) {
        let _ = self.entered.send(());
        self.go.acquire().await.unwrap().forget();
    }
}

fn one_in_flight(uid: &str) -> Throttle {
    // Time stands still: a lease taken now expires 30 s later, unless renewed or released.
    Throttle::builder()
        .uid(uid)
        .rate("1/30s")
        .backend(InMemoryBackend::new())
        .strategy(Concurrency)
        .clock(ManualClock::new(1_700_000_000_000_000))
        .build()
        .unwrap()
}

mod poem_app {
    use poem::http::StatusCode;
    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::web::Data;
    use poem::{EndpointExt, Route, Server, get, handler};
    use traffik_poem::{PoemThrottle, ThrottleExt};

    use super::{Gate, SocketAddr, one_in_flight};

    #[handler]
    async fn upload(gate: Data<&Gate>) -> &'static str {
        gate.pass().await;
        "stored"
    }

    pub(crate) async fn serve(gate: Gate) -> SocketAddr {
        let app = Route::new()
            .at("/upload", get(upload).with(one_in_flight("uploads").middleware()))
            .at(
                "/upload-503",
                get(upload).with(
                    PoemThrottle::new(one_in_flight("uploads-503")).refusal_status(StatusCode::SERVICE_UNAVAILABLE),
                ),
            )
            .data(gate);
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        addr
    }
}

mod salvo_app {
    use salvo::http::StatusCode;
    use salvo::prelude::*;
    use traffik_salvo::{SalvoThrottle, ThrottleExt};

    use super::{Gate, SocketAddr, one_in_flight};

    struct Upload(Gate);

    #[async_trait]
    impl Handler for Upload {
        async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
            self.0.pass().await;
            res.render("stored");
        }
    }

    pub(crate) async fn serve(gate: Gate) -> SocketAddr {
        let router = Router::new()
            .push(Router::with_path("upload").hoop(one_in_flight("uploads").hoop()).get(Upload(gate.clone())))
            .push(
                Router::with_path("upload-503")
                    .hoop(
                        SalvoThrottle::new(one_in_flight("uploads-503"))
                            .refusal_status(StatusCode::SERVICE_UNAVAILABLE),
                    )
                    .get(Upload(gate)),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(Server::new(acceptor).serve(router));
        addr
    }
}

/// One request: status, `Retry-After` and the JSON body if any.
async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, Option<String>, Option<Value>) {
    let resp = client.get(format!("http://{addr}{path}")).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let json = resp.json::<Value>().await.ok();
    (status, retry, json)
}

async fn one_framework(name: &str, addr: SocketAddr, entered: &mut mpsc::UnboundedReceiver<()>, go: &Semaphore) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (path, refusal) in [("/upload", 429), ("/upload-503", 503)] {
        // A first upload starts and holds the only slot.
        let first = tokio::spawn({
            let client = client.clone();
            async move { get(&client, addr, path).await }
        });
        entered.recv().await.unwrap();
        let (status, retry, body) = get(&client, addr, path).await;
        assert_eq!(status, refusal, "{name} {path}: a second upload while the first runs");
        assert_eq!(retry.as_deref(), Some("30"), "{name} {path}: Retry-After is the lease's expiry");
        assert_eq!(body.as_ref().map(|b| b["error"].clone()), Some("rate_limited".into()), "{name} {path}");
        // The first finishes: its slot is free again.
        go.add_permits(1);
        assert_eq!(first.await.unwrap().0, 200, "{name} {path}: the first upload");
        go.add_permits(1);
        let (status, retry, _) = get(&client, addr, path).await;
        assert_eq!((status, retry), (200, None), "{name} {path}: an upload after the first finished");
        entered.recv().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_integrations_hold_a_slot_while_the_handler_runs() {
    for framework in ["poem", "salvo"] {
        let (tx, mut entered) = mpsc::unbounded_channel();
        let go = Arc::new(Semaphore::new(0));
        let gate = Gate { entered: tx, go: Arc::clone(&go) };
        let addr = match framework {
            "poem" => poem_app::serve(gate).await,
            _ => salvo_app::serve(gate).await,
        };
        tokio::time::timeout(Duration::from_secs(600), one_framework(framework, addr, &mut entered, &go))
            .await
            .expect("the conversation finished");
    }
}
