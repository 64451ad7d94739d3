//! The app-wide `ThrottleMiddleware`: path globs, methods, predicates, order and cost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::json;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use poem::web::Data;
use poem::{EndpointExt, Route, get, handler};
use traffik::rules::AsyncPredicate;
use traffik::{Context, RequestView, rate};
use traffik::{Headers, When};
use traffik_poem::{MiddlewareThrottle, ThrottleDecisions, ThrottleMiddleware};

#[handler]
fn ok() -> &'static str {
    "ok"
}

fn app(mw: ThrottleMiddleware) -> impl poem::Endpoint {
    Route::new()
        .at("/admin/users", get(ok).post(ok))
        .at("/api/v1/items", get(ok).post(ok).delete(ok))
        .at("/api/v1/items/:id", get(ok))
        .at("/public", get(ok))
        .with(mw)
}

#[tokio::test]
async fn path_globs_pick_the_throttle() {
    let admin = throttle!(rate!("1/h")).build().unwrap();
    let api = throttle!(rate!("2/h")).build().unwrap();
    let cli = TestClient::new(app(ThrottleMiddleware::new([
        MiddlewareThrottle::new(admin).path("/admin/**").unwrap(),
        MiddlewareThrottle::new(api).path("/api/*/items/**").unwrap(),
    ])));
    cli.get("/admin/users").send().await.assert_status_is_ok();
    cli.get("/admin/users").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    // Unmatched paths are never limited.
    for _ in 0..5 {
        cli.get("/public").send().await.assert_status_is_ok();
    }
    // One bucket for everything under the glob (a route is not a key part).
    cli.get("/api/v1/items").send().await.assert_status_is_ok();
    cli.get("/api/v1/items/7").send().await.assert_status_is_ok();
    cli.get("/api/v1/items/8").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn regex_paths_work_too() {
    let items = throttle!(rate!("1/h")).build().unwrap();
    let cli = TestClient::new(app(ThrottleMiddleware::new([MiddlewareThrottle::new(items)
        .path_regex(r"^/api/v1/items/\d+$")
        .unwrap()])));
    cli.get("/api/v1/items").send().await.assert_status_is_ok();
    cli.get("/api/v1/items").send().await.assert_status_is_ok();
    cli.get("/api/v1/items/1").send().await.assert_status_is_ok();
    cli.get("/api/v1/items/2").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn methods_pick_the_throttle() {
    let writes = throttle!(rate!("1/h")).build().unwrap();
    let reads = throttle!(rate!("3/h")).build().unwrap();
    let cli = TestClient::new(app(ThrottleMiddleware::new([
        MiddlewareThrottle::new(writes).methods([Method::POST, Method::DELETE]),
        MiddlewareThrottle::new(reads).methods([Method::GET]),
    ])));
    cli.post("/api/v1/items").send().await.assert_status_is_ok();
    cli.delete("/api/v1/items").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    cli.get("/api/v1/items").send().await.assert_status_is_ok();
    cli.get("/api/v1/items").send().await.assert_status_is_ok();
    cli.get("/public").send().await.assert_status_is_ok();
    cli.get("/public").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn predicates_sync_and_async_pick_the_throttle() {
    let authed = throttle!(rate!("1/h")).build().unwrap();
    let beta = throttle!(rate!("1/h")).build().unwrap();
    let cli = TestClient::new(app(ThrottleMiddleware::new([
        MiddlewareThrottle::new(authed)
            .predicate(|req: &RequestView<'_>, _: &Context| req.headers().contains_key("authorization")),
        MiddlewareThrottle::new(beta).predicate(AsyncPredicate(|req: &RequestView<'_>, _: &Context| {
            let beta = req.headers().get("x-beta").is_some();
            async move { beta }
        })),
    ])));
    for _ in 0..3 {
        cli.get("/public").send().await.assert_status_is_ok();
    }
    cli.get("/public").header("authorization", "Bearer a").send().await.assert_status_is_ok();
    cli.get("/public").header("authorization", "Bearer a").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    cli.get("/public").header("x-beta", "1").send().await.assert_status_is_ok();
    cli.get("/public").header("x-beta", "1").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn combined_conditions_must_all_match_and_cost_overrides() {
    let complex = throttle!(rate!("5/h")).build().unwrap();
    let cli = TestClient::new(app(ThrottleMiddleware::new([MiddlewareThrottle::new(complex)
        .path("/api/**")
        .unwrap()
        .methods([Method::POST])
        .predicate(|req: &RequestView<'_>, _: &Context| req.headers().contains_key("authorization"))
        .cost(3)])));
    // Wrong method, or no credentials: not limited.
    for _ in 0..3 {
        cli.get("/api/v1/items").header("authorization", "x").send().await.assert_status_is_ok();
        cli.post("/api/v1/items").send().await.assert_status_is_ok();
    }
    cli.post("/api/v1/items").header("authorization", "x").send().await.assert_status_is_ok();
    // 3 + 3 > 5.
    let denied = cli.post("/api/v1/items").header("authorization", "x").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(denied).await["error"], "rate_limited");
}

#[handler]
fn list(all: Data<&ThrottleDecisions>) -> String {
    all.iter().map(|(uid, d)| format!("{uid}={:?}", d.remaining)).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn throttles_run_in_order_and_the_first_rejection_stops_the_rest() {
    let first = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let second = throttle!(rate!("10/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let (a, b) = (first.uid().to_owned(), second.uid().to_owned());
    let cli = TestClient::new(
        Route::new()
            .at("/", get(list))
            .with(ThrottleMiddleware::new([MiddlewareThrottle::new(first), MiddlewareThrottle::new(second.clone())])),
    );
    let resp = cli.get("/").send().await;
    // The later throttle's headers replace the earlier one's.
    resp.assert_header("x-ratelimit-limit", "10");
    resp.assert_text(format!("{a}=Some(0) {b}=Some(9)")).await;
    let denied = cli.get("/").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    denied.assert_header("x-ratelimit-limit", "1");
    // The second throttle was not hit by the rejected request.
    let req = traffik::RequestView::empty();
    let stat = second.stat(&req).await.unwrap().into_limited().unwrap();
    assert_eq!(stat.remaining, 9);
}
