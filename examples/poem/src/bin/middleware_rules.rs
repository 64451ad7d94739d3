//! App-wide throttling with rules: one `ThrottleMiddleware` on the whole app, each throttle
//! narrowed by a path glob, a regex, methods or a predicate (checked in that cheap-to-expensive
//! order: method, path, predicate), applied in the order listed.
//!
//! Run: `cargo run -p traffik-poem-examples --bin middleware_rules`, then try the printed curl
//! lines from another terminal.

use poem::http::Method;
use poem::listener::TcpListener;
use poem::web::{Data, Path};
use poem::{Endpoint, EndpointExt, Route, Server, get, handler};
use traffik::strategy::{FixedWindow, SlidingWindowLog};
use traffik::{Clock, Context, InMemoryBackend, Rate, RequestView, StrategyHandle, SystemClock, Throttle, rate};
use traffik::{Headers, When};
use traffik_poem::{MiddlewareThrottle, ThrottleDecisions, ThrottleMiddleware};

const ADDR: &str = "127.0.0.1:3000";

#[handler]
fn ok() -> &'static str {
    "ok\n"
}

/// Lists the throttles that applied to this request and what each has left.
#[handler]
fn report(all: Option<Data<&ThrottleDecisions>>) -> String {
    match all {
        None => "no throttle applied\n".to_owned(),
        Some(all) => all.iter().map(|(uid, d)| format!("{uid}: {} left\n", d.remaining.unwrap_or(0))).collect(),
    }
}

#[handler]
fn file(Path(name): Path<String>) -> String {
    format!("here is {name}\n")
}

fn throttle(
    uid: &str,
    rate: Rate,
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

fn is_authenticated(req: &RequestView<'_>, _: &Context) -> bool {
    req.headers().contains_key("authorization")
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock + Clone) -> Result<impl Endpoint, traffik::Error> {
    let backend = InMemoryBackend::new();
    let rules = ThrottleMiddleware::new([
        // Path-based: the admin area is tight.
        MiddlewareThrottle::new(throttle("rules-admin", rate!("5/min"), FixedWindow, &backend, &clock)?)
            .path("/admin/**")?,
        // Regex: downloads of archives and PDFs.
        MiddlewareThrottle::new(throttle("rules-downloads", rate!("3/min"), SlidingWindowLog, &backend, &clock)?)
            .path_regex(r"^/files/.*\.(pdf|zip|tar\.gz)$")?,
        // Method-based: writes anywhere under /api, each costing 2.
        MiddlewareThrottle::new(throttle("rules-writes", rate!("10/min"), FixedWindow, &backend, &clock)?)
            .path("/api/**")?
            .methods([Method::POST, Method::PUT, Method::DELETE])
            .cost(2),
        // Predicate-based: authenticated callers get a separate, larger allowance.
        MiddlewareThrottle::new(throttle("rules-authenticated", rate!("200/min"), FixedWindow, &backend, &clock)?)
            .path("/api/**")?
            .predicate(is_authenticated),
        // Everything else under /api.
        MiddlewareThrottle::new(throttle("rules-anonymous", rate!("20/min"), FixedWindow, &backend, &clock)?)
            .path("/api/**")?
            .predicate(|req: &RequestView<'_>, ctx: &Context| !is_authenticated(req, ctx)),
    ]);
    Ok(Route::new()
        .at("/admin/report", get(report))
        .at("/api/items", get(report).post(report).delete(report))
        .at("/files/:name", get(file))
        .at("/health", get(ok))
        .with(rules))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock)?;
    println!("traffik + poem middleware rules on http://{ADDR}");
    println!("  curl -i http://{ADDR}/admin/report                       # 5/min");
    println!("  curl -i http://{ADDR}/files/report.pdf                   # 3/min (regex); .txt is unlimited");
    println!("  curl -i -X POST http://{ADDR}/api/items                  # writes: cost 2 of 10/min");
    println!("  curl -i -H 'Authorization: Bearer t' http://{ADDR}/api/items   # 200/min");
    println!("  curl -i http://{ADDR}/api/items                          # anonymous: 20/min");
    println!("  curl -i http://{ADDR}/health                             # never limited");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;
    use poem::test::TestClient;

    #[tokio::test]
    async fn rules_pick_the_right_throttles() {
        let cli = TestClient::new(app(traffik::ManualClock::new(0)).unwrap());
        cli.get("/health").send().await.assert_text("ok\n").await;
        cli.get("/admin/report").send().await.assert_text("rules-admin: 4 left\n").await;
        cli.post("/api/items").send().await.assert_text("rules-writes: 8 left\nrules-anonymous: 19 left\n").await;
        cli.get("/api/items")
            .header("authorization", "Bearer t")
            .send()
            .await
            .assert_text("rules-authenticated: 199 left\n")
            .await;
        for _ in 0..3 {
            cli.get("/files/a.pdf").send().await.assert_status_is_ok();
        }
        cli.get("/files/b.zip").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
        cli.get("/files/notes.txt").send().await.assert_status_is_ok();
    }
}
