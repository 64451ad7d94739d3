//! Salvo WebSocket: the upgrade is throttled like any request (a 429 before the handshake) and
//! each message is throttled per client, per room.
//!
//! Run: `cargo run -p traffik-salvo-examples --bin salvo-websocket`, open
//! http://127.0.0.1:3003/ in a browser (or use `websocat ws://127.0.0.1:3003/ws/lobby`) and type
//! faster than 5 messages per 10 seconds.

use salvo::prelude::*;
use salvo::websocket::{Message, WebSocketUpgrade};
use traffik::strategy::{FixedWindow, TokenBucket};
use traffik::{Context, InMemoryBackend, Throttle, rate};
use traffik_salvo::{ThrottleExt, WsThrottle};

const ADDR: &str = "127.0.0.1:3003";

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>traffik + salvo websocket</title>
<input id="m" placeholder="type and press enter" autofocus><pre id="log"></pre>
<script>
const ws = new WebSocket(`ws://${location.host}/ws/lobby`);
const log = (t) => document.getElementById("log").textContent += t + "\n";
ws.onmessage = (e) => log("< " + e.data);
ws.onclose = (e) => log(`closed ${e.code} ${e.reason}`);
document.getElementById("m").onkeydown = (e) => {
  if (e.key === "Enter") { ws.send(e.target.value); log("> " + e.target.value); e.target.value = ""; }
};
</script>"#;

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(PAGE));
}

/// Echoes messages; each one is charged to the sender in the room named in the path.
struct Room(WsThrottle);

#[async_trait]
impl Handler for Room {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let room = req.param::<String>("room").unwrap_or_default();
        let conn = self.0.connection(req);
        let upgraded = WebSocketUpgrade::new()
            .upgrade(req, res, move |mut ws| async move {
                let ctx = Context::new().scope(room.clone());
                while let Some(Ok(msg)) = ws.recv().await {
                    let Ok(text) = msg.as_str().map(str::to_owned) else {
                        continue; // pings, pongs, binary
                    };
                    let verdict = conn.hit_with(&mut ws, &ctx).await;
                    if verdict.is_closed() {
                        return;
                    }
                    if !verdict.is_allowed() {
                        continue; // the client got a rate_limit message
                    }
                    let reply = Message::text(format!("[{room}] {text}"));
                    if ws.send(reply).await.is_err() {
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = InMemoryBackend::new();
    let upgrades = Throttle::builder()
        .uid("ws-upgrades")
        .rate(rate!("20/min"))
        .backend(backend.clone())
        .strategy(FixedWindow)
        .build()?;
    let messages = Throttle::builder()
        .uid("ws-messages")
        .rate(rate!("5/10s"))
        .backend(backend)
        .strategy(TokenBucket::new())
        .build()?;
    // `.close_on_throttle()` would close the socket with 1008 instead of warning the client.
    let messages = WsThrottle::new(messages);

    let router =
        Router::new().get(page).push(Router::with_path("ws/{room}").hoop(upgrades.hoop()).goal(Room(messages)));
    println!("listening on http://{ADDR}");
    println!("open http://{ADDR}/ in a browser, or:");
    println!("  websocat ws://{ADDR}/ws/lobby");
    println!(
        "  for i in $(seq 22); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{ADDR}/ws/lobby; done   # plain GETs are not handshakes (400) but count: 20/min, then 429"
    );
    let acceptor = TcpListener::new(ADDR).bind().await;
    Server::new(acceptor).serve(router).await;
    Ok(())
}
