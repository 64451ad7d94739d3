//! Poem quick start: in-memory throttles as route middleware (one, and two stacked as a group
//! decided as one), the decision read back in a handler, and a direct call with a per-request
//! cost.
//!
//! Run: `cargo run -p traffik-poem-examples --bin quickstart`, then try the printed curl lines
//! from another terminal.

use poem::listener::TcpListener;
use poem::web::{Data, Path};
use poem::{Endpoint, EndpointExt, Request, Response, Route, Server, get, handler, post};
use traffik::strategy::{FixedWindow, SlidingWindowCounter, TokenBucket};
use traffik::{Clock, Context, Decision, InMemoryBackend, StrategyHandle, SystemClock, Throttle, ThrottleGroup, rate};
use traffik::{Headers, When};
use traffik_poem::{GroupExt, ThrottleExt};

const ADDR: &str = "127.0.0.1:3000";

#[handler]
fn hello() -> &'static str {
    "hello from traffik + poem\n"
}

/// The throttle's decision is request data.
#[handler]
fn user(Path(id): Path<u32>, decision: Data<&Decision>) -> String {
    let left = decision.remaining.map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!("user {id}; {left} lookups left this minute (for any user id)\n")
}

/// Throttles itself: one unit of cost per started KiB of the upload.
#[handler]
async fn upload(req: &Request, body: Vec<u8>, Data(uploads): Data<&UploadThrottle>) -> poem::Result<Response> {
    let cost = (body.len() as u64).div_ceil(1024).max(1);
    let decision = traffik_poem::enforce(&uploads.0, req, &Context::new().cost(cost)).await?;
    let mut resp = Response::builder().body(format!("stored {} bytes (cost {cost})\n", body.len()));
    traffik_poem::apply_headers(&uploads.0, req, &decision, &mut resp);
    Ok(resp)
}

/// A newtype so the handler can ask for this throttle by type.
#[derive(Clone)]
struct UploadThrottle(Throttle);

/// One throttle: uid, rate, backend and strategy are what the builder requires; the headers
/// (`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `Retry-After`) are optional.
fn throttle(
    uid: &str,
    rate: traffik::Rate,
    strategy: impl Into<StrategyHandle>,
    backend: &InMemoryBackend,
    clock: &(impl Clock + Clone),
) -> Result<Throttle, traffik::Error> {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        .backend(backend.clone())
        .strategy(strategy)
        .headers(Headers::x_ratelimit(When::Always))
        .clock(clock.clone())
        .build()
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock + Clone) -> Result<impl Endpoint, traffik::Error> {
    let backend = InMemoryBackend::new();
    let hello_limit = throttle("quickstart-hello", rate!("3/10s"), FixedWindow, &backend, &clock)?;
    let burst = throttle("quickstart-burst", rate!("2/s"), TokenBucket::new(), &backend, &clock)?;
    let sustained = throttle("quickstart-sustained", rate!("10/min"), SlidingWindowCounter, &backend, &clock)?;
    // Burst + sustained as one decision: a request the burst limit refuses costs the minute's
    // quota nothing, and a 429 carries the headers of the limit that refused it.
    let data = ThrottleGroup::new("quickstart-data", [burst, sustained])?;
    let users = throttle("quickstart-users", rate!("5/min"), FixedWindow, &backend, &clock)?;
    let uploads = throttle("quickstart-uploads", rate!("64/min"), TokenBucket::new(), &backend, &clock)?;

    Ok(Route::new()
        .at("/hello", get(hello).with(hello_limit.middleware()))
        // Stacked: both limits are enforced, as one decision.
        .at("/data", get(hello).with(data.middleware()))
        // One quota for the route, whatever the id.
        .at("/users/:id", get(user).with(users.middleware()))
        .at("/upload", post(upload).data(UploadThrottle(uploads))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock)?;
    println!("traffik + poem quick start on http://{ADDR}");
    println!("  curl -i http://{ADDR}/hello                  # 3 per 10 s, then 429 with Retry-After");
    println!("  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{ADDR}/data; done");
    println!("                                               # burst 2/s and 10/min, decided as one");
    println!("  curl http://{ADDR}/users/1; curl http://{ADDR}/users/2   # one quota per route");
    println!("  head -c 20000 /dev/zero | curl -i --data-binary @- http://{ADDR}/upload");
    println!("                                               # costs 20 of 64/min");
    println!("  head -c 100000 /dev/zero | curl -i --data-binary @- http://{ADDR}/upload");
    println!("                                               # costs 98: can never fit, 429 without Retry-After");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;
    use poem::test::TestClient;

    #[tokio::test]
    async fn the_quick_start_limits_what_it_says() {
        let cli = TestClient::new(app(traffik::ManualClock::new(0)).unwrap());
        for _ in 0..3 {
            cli.get("/hello").send().await.assert_status_is_ok();
        }
        let denied = cli.get("/hello").send().await;
        denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
        denied.assert_header_exist("retry-after");

        cli.get("/data").send().await.assert_status_is_ok();
        cli.get("/data").send().await.assert_header("x-ratelimit-remaining", "0");
        let refused = cli.get("/data").send().await;
        refused.assert_status(StatusCode::TOO_MANY_REQUESTS);
        // The burst limit refused: the 429 carries its headers.
        refused.assert_header("x-ratelimit-limit", "2");
        refused.assert_header("retry-after", "1");

        cli.get("/users/1").send().await.assert_text("user 1; 4 lookups left this minute (for any user id)\n").await;
        cli.get("/users/2").send().await.assert_text("user 2; 3 lookups left this minute (for any user id)\n").await;

        cli.post("/upload").body(vec![0u8; 20_000]).send().await.assert_header("x-ratelimit-remaining", "44");
        let never = cli.post("/upload").body(vec![0u8; 100_000]).send().await;
        never.assert_status(StatusCode::TOO_MANY_REQUESTS);
        never.assert_header_is_not_exist("retry-after");
    }
}
