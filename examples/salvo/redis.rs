//! Salvo with a Redis backend: every app instance shares one quota per client. If Redis goes
//! down, decisions fall back to an in-process backend instead of failing requests.
//!
//! Run: start Redis (`redis-server --port 6379`), then
//! `cargo run -p traffik-salvo-examples --bin salvo-redis`
//! (`REDIS_URL` overrides `redis://127.0.0.1:6379/`).

use salvo::prelude::*;
use traffik::strategy::TokenBucket;
use traffik::{ErrorPolicy, InMemoryBackend, Throttle, rate};
use traffik::{Headers, When};
use traffik_redis::RedisBackend;
use traffik_salvo::{DepotExt, SalvoThrottle};

const ADDR: &str = "127.0.0.1:3002";

#[handler]
async fn data(depot: &mut Depot) -> String {
    let source = depot.throttle_decision().map_or_else(|| "none".to_owned(), |d| format!("{:?}", d.source));
    format!("data (decided by: {source})\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let redis = RedisBackend::builder().url(url.as_str()).namespace("salvo-example").build()?;
    if let Err(e) = redis.ready_check().await {
        eprintln!("warning: Redis at {url} is not reachable yet ({e}); using the fallback");
    }
    let throttle = Throttle::builder()
        .uid("salvo-redis-api")
        .rate(rate!("10/min"))
        .backend(redis)
        .strategy(TokenBucket::new()) // bursts of up to 10, refilled at 10/min
        .headers(Headers::x_ratelimit(When::Always))
        .on_error(ErrorPolicy::fallback(InMemoryBackend::new()))
        .build()?;

    let router = Router::with_path("api/data").hoop(SalvoThrottle::new(throttle).with_stat(true)).get(data);

    println!("listening on http://{ADDR} (Redis: {url})");
    println!("try:");
    println!("  curl -i http://{ADDR}/api/data");
    println!("  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{ADDR}/api/data; done");
    println!("run a second instance on another port and both share the same 10/min");
    let acceptor = TcpListener::new(ADDR).bind().await;
    Server::new(acceptor).serve(router).await;
    Ok(())
}
