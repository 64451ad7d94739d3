//! Salvo quick start: in-memory throttles as hoops, a global middleware, a direct call with a
//! cost, and the decision read back from the depot.
//!
//! Run: `cargo run -p traffik-salvo-examples --bin salvo-quickstart`, then try the printed curl
//! lines from another terminal.

use std::time::Duration;

use salvo::http::Method;
use salvo::prelude::*;
use traffik::strategy::{FixedWindow, SlidingWindowCounter, TokenBucket};
use traffik::{Context, InMemoryBackend, Throttle, rate};
use traffik::{Headers, When};
use traffik_salvo::{DepotExt, MiddlewareThrottle, SalvoThrottle, ThrottleExt, ThrottleMiddleware};

const ADDR: &str = "127.0.0.1:3001";

#[handler]
async fn index() -> &'static str {
    "hello from traffik + salvo\n"
}

/// Reads what the throttles decided for this request.
#[handler]
async fn item(req: &mut Request, depot: &mut Depot) -> String {
    let id = req.param::<String>("id").unwrap_or_default();
    let left = depot.throttle_decision().and_then(|d| d.remaining).map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!("item {id}; {left} requests left this minute\n")
}

#[handler]
async fn create() -> &'static str {
    "created\n"
}

/// Throttles itself: the cost comes from the `rows` query parameter (1 per 100 rows).
struct Export(SalvoThrottle);

#[async_trait]
impl Handler for Export {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let rows = req.query::<u64>("rows").unwrap_or(100);
        let cost = rows.div_ceil(100).max(1);
        if !self.0.apply_with(req, depot, res, Context::new().cost(cost)).await {
            return; // 429 already written
        }
        res.render(format!("exported {rows} rows (cost {cost})\n"));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = InMemoryBackend::new();

    // Per-client limits on the item routes, with rate-limit headers on every response.
    let items = Throttle::builder()
        .uid("quickstart-items")
        .rate(rate!("5/min"))
        .backend(backend.clone())
        .strategy(SlidingWindowCounter)
        .headers(Headers::x_ratelimit(When::Always))
        .build()?;
    // A burst limit for the whole API, as a global middleware for writes only.
    let writes = Throttle::builder()
        .uid("quickstart-writes")
        .rate(rate!("3/10s"))
        .backend(backend.clone())
        .strategy(TokenBucket::new())
        .min_wait(Duration::from_secs(1))
        .build()?;
    let exports = Throttle::builder()
        .uid("quickstart-exports")
        .rate(rate!("10/min"))
        .backend(backend)
        .strategy(FixedWindow)
        .build()?;

    let middleware = ThrottleMiddleware::new([MiddlewareThrottle::new(writes)
        .methods([Method::POST, Method::PUT, Method::DELETE])
        .path("/api/**")?]);
    let router = Router::new().hoop(middleware).get(index).push(
        Router::with_path("api")
            // Reads: 5 per minute per client on the route (whatever the id).
            .push(Router::with_path("items/{id}").hoop(items.hoop()).get(item))
            // Writes: only the global middleware's limit.
            .push(Router::with_path("items/{id}").post(create))
            .push(Router::with_path("export").get(Export(exports.hoop()))),
    );

    println!("listening on http://{ADDR}");
    println!("try:");
    println!("  curl -i http://{ADDR}/api/items/1            # 5 per minute per client, any id");
    println!("  for i in $(seq 7); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{ADDR}/api/items/$i; done");
    println!("  for i in $(seq 5); do curl -s -X POST http://{ADDR}/api/items/1; done   # 3 writes per 10 s");
    println!("  curl -i 'http://{ADDR}/api/export?rows=600'  # costs 6 of 10 per minute");
    let acceptor = TcpListener::new(ADDR).bind().await;
    Server::new(acceptor).serve(router).await;
    Ok(())
}
