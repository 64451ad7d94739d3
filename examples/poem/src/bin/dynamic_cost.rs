//! Dynamic cost: some requests weigh more than others.
//!
//! * `/api/items?op=read|write|delete`: a cost function on the throttle reads the operation
//!   from the query (read 1, write 5, delete 10) out of 100 per minute.
//! * `/reports`: a fixed cost of 10 per request, set on the middleware.
//! * `/upload`: the handler calls the throttle itself with a cost from the body size (1 per
//!   started KiB); a body bigger than the whole allowance can never fit and gets a 429 without
//!   `Retry-After`.
//!
//! Run: `cargo run -p traffik-poem-examples --bin dynamic_cost`, then try the printed curl
//! lines from another terminal.

use poem::listener::TcpListener;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, Request, Response, Route, Server, get, handler, post};
use traffik::strategy::TokenBucket;
use traffik::{Clock, Context, Decision, InMemoryBackend, RequestView, SystemClock, Throttle, rate};
use traffik::{Headers, When};
use traffik_poem::{PoemThrottle, ThrottleExt};

const ADDR: &str = "127.0.0.1:3000";

/// The cost of an operation named in the `op` query parameter.
fn operation_cost(req: &RequestView<'_>, _: &Context) -> u64 {
    let op = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("op=")).unwrap_or("read");
    match op {
        "write" => 5,
        "delete" => 10,
        _ => 1,
    }
}

#[handler]
fn spent(decision: Data<&Decision>) -> String {
    format!("cost {}; {} left\n", decision.cost, decision.remaining.unwrap_or(0))
}

/// The upload throttle, as request data.
#[derive(Clone)]
struct Uploads(Throttle);

#[handler]
async fn upload(req: &Request, body: Vec<u8>, Data(uploads): Data<&Uploads>) -> poem::Result<Response> {
    let cost = (body.len() as u64).div_ceil(1024).max(1);
    let decision = traffik_poem::enforce(&uploads.0, req, &Context::new().cost(cost)).await?;
    let mut resp = Response::builder().body(format!("stored {} bytes at cost {cost}\n", body.len()));
    traffik_poem::apply_headers(&uploads.0, req, &decision, &mut resp);
    Ok(resp)
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock + Clone) -> Result<impl Endpoint, traffik::Error> {
    let backend = InMemoryBackend::new();
    let build = |uid: &str, rate| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(backend.clone())
            .strategy(TokenBucket::new())
            .headers(Headers::x_ratelimit(When::Always))
            .clock(clock.clone())
    };
    let api = build("cost-api", rate!("100/min")).cost_fn(operation_cost).build()?;
    let reports = build("cost-reports", rate!("30/hour")).build()?;
    let uploads = build("cost-uploads", rate!("256/min")).build()?;
    Ok(Route::new()
        .at("/api/items", get(spent).post(spent).delete(spent).with(api.middleware()))
        .at("/reports", get(spent).with(PoemThrottle::new(reports).cost(10)))
        .at("/upload", post(upload).data(Uploads(uploads))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock)?;
    println!("traffik + poem dynamic cost on http://{ADDR}");
    println!("  curl -i 'http://{ADDR}/api/items?op=read'      # cost 1 of 100/min");
    println!("  curl -i 'http://{ADDR}/api/items?op=delete'    # cost 10");
    println!("  curl -i http://{ADDR}/reports                  # cost 10 of 30/hour: the 4th is refused");
    println!("  head -c 50000 /dev/zero | curl -i --data-binary @- http://{ADDR}/upload    # cost 49 of 256/min");
    println!("  head -c 300000 /dev/zero | curl -i --data-binary @- http://{ADDR}/upload   # can never fit");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;
    use poem::test::TestClient;

    #[tokio::test]
    async fn costs_follow_the_request() {
        let cli = TestClient::new(app(traffik::ManualClock::new(0)).unwrap());
        cli.get("/api/items?op=read").send().await.assert_text("cost 1; 99 left\n").await;
        cli.get("/api/items?op=delete").send().await.assert_text("cost 10; 89 left\n").await;
        cli.get("/api/items?op=write").send().await.assert_text("cost 5; 84 left\n").await;
        for _ in 0..3 {
            cli.get("/reports").send().await.assert_status_is_ok();
        }
        cli.get("/reports").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
        cli.post("/upload").body(vec![0u8; 50_000]).send().await.assert_text("stored 50000 bytes at cost 49\n").await;
        let never = cli.post("/upload").body(vec![0u8; 300_000]).send().await;
        never.assert_status(StatusCode::TOO_MANY_REQUESTS);
        never.assert_header_is_not_exist("retry-after");
    }
}
