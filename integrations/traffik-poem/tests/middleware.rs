//! Per-route middleware, direct calls and responses, driven through `poem::test::TestClient`
//! (its requests have no peer address, so every request is the same anonymous client).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{broken, header, json};
use poem::http::StatusCode;
use poem::test::TestClient;
use poem::web::Data;
use poem::{EndpointExt, Request, Response, Route, get, handler, post};
use serde_json::json;
use traffik::strategy::LeakyBucketWithQueue;
use traffik::{Context, Decision, ErrorPolicy, ManualClock, Outcome, Throttle, rate};
use traffik::{Headers, When};
use traffik_poem::{PoemThrottle, ThrottleDecisions, ThrottleExt, ThrottledHandler, is_throttled};

#[handler]
fn hello() -> &'static str {
    "hello"
}

#[tokio::test]
async fn allowed_requests_pass_with_integer_headers_then_429_with_json_and_retry_after_rounded_up() {
    // Windows are aligned to the epoch: at 7.5 s into a 10 s window the wait is 2.5 s.
    let clock = ManualClock::new(7_500_000);
    let throttle = throttle!(rate!("2/10s")).clock(clock).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(Route::new().at("/hello", get(hello).with(throttle.middleware())));

    let first = cli.get("/hello").send().await;
    first.assert_status_is_ok();
    first.assert_header("x-ratelimit-limit", "2");
    first.assert_header("x-ratelimit-remaining", "1");
    first.assert_text("hello").await;
    cli.get("/hello").send().await.assert_header("x-ratelimit-remaining", "0");

    let denied = cli.get("/hello").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    denied.assert_header("retry-after", "3");
    denied.assert_header("x-ratelimit-remaining", "0");
    denied.assert_content_type("application/json");
    let body = json(denied).await;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_ms"], 2500);
    assert!(body["message"].as_str().unwrap().contains("3 seconds"), "{body}");
}

#[tokio::test]
async fn throttled_only_headers_stay_off_allowed_responses() {
    let throttle = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Throttled)).build().unwrap();
    let cli = TestClient::new(get(hello).with(throttle.middleware()));
    let ok = cli.get("/").send().await;
    ok.assert_status_is_ok();
    ok.assert_header_is_not_exist("x-ratelimit-limit");
    let denied = cli.get("/").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    denied.assert_header("x-ratelimit-limit", "1");
}

#[tokio::test]
async fn stacked_throttles_are_all_enforced() {
    let clock = ManualClock::new(0);
    let burst = throttle!(rate!("2/s")).clock(clock.clone()).build().unwrap();
    let sustained = throttle!(rate!("3/h")).clock(clock.clone()).build().unwrap();
    let cli = TestClient::new(get(hello).with(burst.middleware()).with(sustained.middleware()));

    cli.get("/").send().await.assert_status_is_ok();
    cli.get("/").send().await.assert_status_is_ok();
    // The burst limit stops the third request within the second.
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(1));
    // The burst has room again, but the hourly limit (3; the stopped request counted there,
    // since the outer throttle ran first) does not.
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(1));
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_inner_limit_alone_also_stops_requests() {
    let clock = ManualClock::new(0);
    let burst = throttle!(rate!("1/s")).clock(clock.clone()).build().unwrap();
    let sustained = throttle!(rate!("100/h")).clock(clock.clone()).build().unwrap();
    let cli = TestClient::new(get(hello).with(burst.middleware()).with(sustained.middleware()));
    cli.get("/").send().await.assert_status_is_ok();
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(1));
    cli.get("/").send().await.assert_status_is_ok();
}

#[tokio::test]
async fn a_cost_that_can_never_fit_answers_429_without_retry_after() {
    let throttle = throttle!(rate!("5/min")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(get(hello).with(PoemThrottle::new(throttle).cost(10)));
    let resp = cli.get("/").send().await;
    resp.assert_status(StatusCode::TOO_MANY_REQUESTS);
    resp.assert_header_is_not_exist("retry-after");
    let body = json(resp).await;
    assert_eq!(body["error"], "cost_exceeds_limit");
    assert_eq!(body["cost"], 10);
    assert_eq!(body["limit"], 5);
    assert!(body["retry_after_ms"].is_null(), "no wait helps: {body}");
    assert!(body["message"].as_str().unwrap().contains("never"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_decision_holds_the_request_for_its_slot() {
    // A bucket of 1 leaking 1/s with a queue of 1: the 2nd request waits 1 s, the 3rd is refused.
    let throttle = throttle!(rate!("1/s")).strategy(LeakyBucketWithQueue::new(1)).clock(ManualClock::new(0)).build();
    let cli = TestClient::new(get(hello).with(throttle.unwrap().middleware()));

    let start = tokio::time::Instant::now();
    cli.get("/").send().await.assert_status_is_ok();
    assert_eq!(start.elapsed(), Duration::ZERO);
    cli.get("/").send().await.assert_status_is_ok();
    assert_eq!(start.elapsed(), Duration::from_secs(1), "held until its slot");
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_custom_throttled_handler_replaces_the_response_and_keeps_configured_headers() {
    let throttle = throttle!(rate!("1/h"))
        .clock(ManualClock::new(0))
        .headers(Headers::x_ratelimit(When::Always))
        .throttled_handler(ThrottledHandler::new(|req: &Request, d: &Decision| {
            Response::builder()
                .status(StatusCode::IM_A_TEAPOT)
                .header("x-path", req.uri().path())
                .body(format!("wait {} s", d.retry_after_secs().unwrap_or(0)))
        }))
        .build()
        .unwrap();
    let cli = TestClient::new(Route::new().at("/tea", get(hello).with(throttle.middleware())));
    cli.get("/tea").send().await.assert_status_is_ok();
    let resp = cli.get("/tea").send().await;
    resp.assert_status(StatusCode::IM_A_TEAPOT);
    resp.assert_header("x-path", "/tea");
    resp.assert_header("x-ratelimit-limit", "1");
    resp.assert_header_exist("retry-after");
    resp.assert_text("wait 3600 s").await;

    // Swapped at runtime.
    throttle.update_throttled_handler(ThrottledHandler::new(|_: &Request, _: &Decision| {
        Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).finish()
    }));
    cli.get("/tea").send().await.assert_status(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_backend_failure_the_policy_raises_answers_503_json() {
    let throttle = throttle!(rate!("5/min")).backend(broken()).on_error(ErrorPolicy::raise()).build().unwrap();
    let cli = TestClient::new(get(hello).with(throttle.middleware()));
    let resp = cli.get("/").send().await;
    resp.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = json(resp).await;
    assert_eq!(body["error"], "rate_limiter_unavailable");
    assert!(!body.to_string().contains("down for the test"), "backend details stay in the logs");
    // The observed defect: the body named the throttle. It is the core's, naming nothing.
    assert!(!body.to_string().contains(throttle.uid()), "the throttle's uid leaked: {body}");
    assert_eq!(body, serde_json::to_value(traffik::reply::ReplyBody::unavailable()).unwrap());

    // The default policy (throttle) fails closed with a 429 instead.
    let closed = throttle!(rate!("5/min")).backend(broken()).build().unwrap();
    let cli = TestClient::new(get(hello).with(closed.middleware()));
    let resp = cli.get("/").send().await;
    resp.assert_status(StatusCode::TOO_MANY_REQUESTS);
    resp.assert_header("retry-after", "1");
}

#[handler]
fn show_decision(decision: Data<&Decision>, all: Data<&ThrottleDecisions>) -> String {
    let uids: Vec<&str> = all.iter().map(|(uid, _)| uid).collect();
    format!("{:?} remaining={:?} uids={}", decision.outcome, decision.remaining, uids.join(","))
}

#[tokio::test]
async fn the_handler_sees_the_decisions() {
    let inner = throttle!(rate!("5/min")).build().unwrap();
    let outer = throttle!(rate!("9/min")).build().unwrap();
    let expected = format!("Allowed remaining=Some(4) uids={},{}", outer.uid(), inner.uid());
    let cli = TestClient::new(get(show_decision).with(inner.middleware()).with(outer.middleware()));
    cli.get("/").send().await.assert_text(expected).await;
}

#[handler]
fn soft(req: &Request) -> String {
    if is_throttled(req) { "over the limit, served a cached page".into() } else { "fresh page".into() }
}

#[tokio::test]
async fn with_a_shadow_middleware_the_handler_decides() {
    let throttle = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(get(soft).with(PoemThrottle::new(throttle.clone()).shadow(true)));
    cli.get("/").send().await.assert_text("fresh page").await;
    let second = cli.get("/").send().await;
    second.assert_status_is_ok();
    second.assert_header("x-ratelimit-remaining", "0");
    second.assert_header_is_not_exist("retry-after");
    second.assert_text("over the limit, served a cached page").await;
    assert_eq!(throttle.shadow_refusals(), 1, "counted on the throttle");
    assert!(!throttle.is_shadow(), "only this middleware is in shadow mode");
}

#[tokio::test]
#[allow(deprecated)]
async fn enforce_false_is_still_shadow_mode_for_the_middleware() {
    let throttle = throttle!(rate!("1/h")).build().unwrap();
    let cli = TestClient::new(get(soft).with(PoemThrottle::new(throttle.clone()).enforce(false)));
    cli.get("/").send().await.assert_text("fresh page").await;
    cli.get("/").send().await.assert_text("over the limit, served a cached page").await;
    assert_eq!(throttle.shadow_refusals(), 1);
}

#[tokio::test]
async fn shadow_mode_switches_at_run_time() {
    let throttle = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(get(soft).with(throttle.middleware()));
    cli.get("/").send().await.assert_status_is_ok();
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    throttle.set_shadow(true);
    let shadowed = cli.get("/").send().await;
    shadowed.assert_status_is_ok();
    shadowed.assert_header_is_not_exist("retry-after");
    shadowed.assert_text("over the limit, served a cached page").await;
    throttle.set_shadow(false);
    cli.get("/").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttle.shadow_refusals(), 1);
}

#[handler]
fn user(poem::web::Path(id): poem::web::Path<u32>) -> String {
    format!("user {id}")
}

#[tokio::test]
async fn a_route_with_path_parameters_is_limited_as_a_whole_unless_per_path() {
    let whole = throttle!(rate!("1/h")).build().unwrap();
    let cli = TestClient::new(Route::new().at("/users/:id", get(user).with(whole.middleware())));
    cli.get("/users/1").send().await.assert_status_is_ok();
    cli.get("/users/2").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);

    let per_path = throttle!(rate!("1/h")).build().unwrap();
    let cli =
        TestClient::new(Route::new().at("/users/:id", get(user).with(PoemThrottle::new(per_path).per_path(true))));
    cli.get("/users/1").send().await.assert_status_is_ok();
    cli.get("/users/2").send().await.assert_status_is_ok();
    cli.get("/users/1").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_route_pattern_reaches_the_identifier() {
    // An identifier that charges per matched route pattern shows what the view carries.
    let throttle = throttle!(rate!("1/h"))
        .identifier(|req: &traffik::RequestView<'_>| traffik::Identity::named(req.route_pattern().unwrap_or("none")))
        .build()
        .unwrap();
    let mw = throttle.middleware();
    let cli = TestClient::new(Route::new().at("/a/:x", get(hello).with(mw.clone())).at("/b/:x", get(hello).with(mw)));
    cli.get("/a/1").send().await.assert_status_is_ok();
    cli.get("/b/1").send().await.assert_status_is_ok();
    cli.get("/a/2").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
}

/// One unit of cost per started KiB of the body.
#[handler]
async fn upload(req: &Request, body: Vec<u8>, uploads: Data<&Throttle>) -> poem::Result<Response> {
    let cost = (body.len() as u64).div_ceil(1024).max(1);
    let decision = traffik_poem::enforce(&uploads, req, &Context::new().cost(cost)).await?;
    let mut resp = Response::builder().body(format!("stored {} bytes at cost {cost}", body.len()));
    traffik_poem::apply_headers(&uploads, req, &decision, &mut resp);
    Ok(resp)
}

#[tokio::test]
async fn direct_calls_charge_a_per_call_cost_and_reject_with_429() {
    let uploads = throttle!(rate!("4/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(Route::new().at("/upload", post(upload)).data(uploads));
    let big = cli.post("/upload").body(vec![0u8; 3000]).send().await;
    big.assert_status_is_ok();
    big.assert_header("x-ratelimit-remaining", "1");
    big.assert_text("stored 3000 bytes at cost 3").await;
    let too_big = cli.post("/upload").body(vec![0u8; 2000]).send().await;
    too_big.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&too_big, "retry-after").map(|s| s.parse::<u64>().is_ok()), Some(true));
    assert_eq!(json(too_big).await["error"], "rate_limited");
    cli.post("/upload").body(vec![0u8; 10]).send().await.assert_status_is_ok();
    // Bigger than the whole hourly allowance: never.
    let never = cli.post("/upload").body(vec![0u8; 5 * 1024]).send().await;
    never.assert_status(StatusCode::TOO_MANY_REQUESTS);
    never.assert_header_is_not_exist("retry-after");
}

#[tokio::test]
async fn direct_hits_return_decisions_as_values() {
    let throttle = throttle!(rate!("1/h")).build().unwrap();
    let req = Request::builder().uri_str("/x").finish();
    let ctx = Context::new();
    assert!(traffik_poem::hit(&throttle, &req, &ctx).await.unwrap().is_allowed());
    let d = traffik_poem::hit(&throttle, &req, &ctx).await.unwrap();
    assert_eq!(d.outcome, Outcome::Throttled);
    let resp = traffik_poem::throttled_response(&throttle, &req, &d);
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let mut req = req;
    traffik_poem::record(&mut req, throttle.uid(), d);
    assert!(is_throttled(&req));
    assert_eq!(traffik_poem::decision(&req).map(|d| d.outcome), Some(Outcome::Throttled));
}

#[tokio::test]
async fn exempted_clients_get_no_headers_and_no_limit() {
    let throttle = throttle!(rate!("1/h"))
        .headers(Headers::x_ratelimit(When::Always))
        .identifier(|req: &traffik::RequestView<'_>| match req.headers().get("x-api-key") {
            Some(k) if k == "admin" => traffik::Identity::Exempted,
            Some(k) => traffik::Identity::Bytes(k.as_bytes().to_vec()),
            None => traffik::Identity::Anonymous,
        })
        .build()
        .unwrap();
    let cli = TestClient::new(get(hello).with(throttle.middleware()));
    for _ in 0..3 {
        let resp = cli.get("/").header("x-api-key", "admin").send().await;
        resp.assert_status_is_ok();
        resp.assert_header_is_not_exist("x-ratelimit-limit");
    }
    cli.get("/").header("x-api-key", "alice").send().await.assert_status_is_ok();
    cli.get("/").header("x-api-key", "alice").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    cli.get("/").header("x-api-key", "bob").send().await.assert_status_is_ok();
}

mod openapi {
    use std::sync::LazyLock;

    use super::*;
    use poem::Endpoint;
    use poem_openapi::{OpenApi, OpenApiService, payload::PlainText};

    /// The throttle of one operation, reachable from its `transform` function.
    static EXPORTS: LazyLock<PoemThrottle> = LazyLock::new(|| throttle!(rate!("1/h")).build().unwrap().middleware());

    fn limit_exports(ep: impl Endpoint) -> impl Endpoint {
        ep.with(EXPORTS.clone())
    }

    struct Api;

    #[OpenApi]
    impl Api {
        /// Says hello.
        #[oai(path = "/hello", method = "get")]
        async fn hello(&self) -> PlainText<&'static str> {
            PlainText("hello from openapi")
        }

        /// An expensive operation with its own limit.
        #[oai(path = "/export", method = "get", transform = "limit_exports")]
        async fn export(&self) -> PlainText<&'static str> {
            PlainText("exported")
        }
    }

    #[tokio::test]
    async fn poem_openapi_services_take_the_middleware_too() {
        let throttle = throttle!(rate!("2/h")).build().unwrap();
        let service = OpenApiService::new(Api, "test", "1.0");
        let cli = TestClient::new(Route::new().nest("/api", service.with(throttle.middleware())));
        cli.get("/api/hello").send().await.assert_text("hello from openapi").await;
        cli.get("/api/hello").send().await.assert_status_is_ok();
        let denied = cli.get("/api/hello").send().await;
        denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
        denied.assert_header_exist("retry-after");
        let body = json(denied).await;
        assert_eq!(body["error"], json!("rate_limited"));
        assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 3_600_000), "{body}");
    }

    #[tokio::test]
    async fn a_single_operation_can_be_throttled_with_transform() {
        let cli = TestClient::new(Route::new().nest("/api", OpenApiService::new(Api, "test", "1.0")));
        cli.get("/api/export").send().await.assert_text("exported").await;
        cli.get("/api/export").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
        // Other operations are not limited by it.
        for _ in 0..3 {
            cli.get("/api/hello").send().await.assert_status_is_ok();
        }
    }
}

/// The observed defect (README quick start, `/data`): the outer throttle's allowed-headers were
/// applied over the inner throttle's 429, which then said `Retry-After: 0` and
/// `X-RateLimit-Limit: 10` while its body said "Retry in 60 seconds".
#[tokio::test]
async fn an_outer_throttle_never_rewrites_an_inner_429() {
    let clock = ManualClock::new(0);
    let outer =
        throttle!(rate!("10/min")).clock(clock.clone()).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let inner = throttle!(rate!("3/min")).clock(clock).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(get(hello).with(inner.middleware()).with(outer.middleware()));
    for _ in 0..3 {
        cli.get("/").send().await.assert_status_is_ok();
    }
    let denied = cli.get("/").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    denied.assert_header("retry-after", "60");
    denied.assert_header("x-ratelimit-limit", "3");
    denied.assert_header("x-ratelimit-remaining", "0");
    let body = json(denied).await;
    assert!(body["message"].as_str().unwrap().contains("60 seconds"), "{body}");
}

#[handler]
fn unavailable() -> Response {
    Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).header("retry-after", "120").body("maintenance")
}

/// An application's own `Retry-After` (here on its 503) is never rewritten, and an admitted
/// request's response never carries `Retry-After` at all.
#[tokio::test]
async fn the_application_keeps_its_headers_and_2xx_never_get_retry_after() {
    let throttle = throttle!(rate!("10/min")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let cli = TestClient::new(
        Route::new()
            .at("/down", get(unavailable).with(throttle.middleware()))
            .at("/hello", get(hello).with(throttle.middleware())),
    );
    let down = cli.get("/down").send().await;
    down.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    down.assert_header("retry-after", "120");
    down.assert_header("x-ratelimit-limit", "10");
    let ok = cli.get("/hello").send().await;
    ok.assert_status_is_ok();
    ok.assert_header_is_not_exist("retry-after");
    ok.assert_header("x-ratelimit-remaining", "8");
}

/// Stacked limits as one decision on a route: `10/min` over `3/min` as a group. After 3
/// admitted and 3 refused requests the outer limit has 7 left (stacked middlewares left it 4),
/// and each refusal is the binding member's 429.
#[tokio::test]
async fn a_group_on_a_route_charges_no_member_for_a_refusal() {
    use traffik_poem::{GroupExt, ThrottleDecisions};
    let clock = ManualClock::new(0);
    let backend = traffik::InMemoryBackend::new();
    let member = |uid: &str, r| {
        Throttle::builder()
            .uid(uid)
            .rate(r)
            .backend(backend.clone())
            .strategy(traffik::strategy::FixedWindow)
            .clock(clock.clone())
            .headers(Headers::x_ratelimit(When::Always))
            .build()
            .unwrap()
    };
    let group =
        traffik::ThrottleGroup::new("data", [member("outer", rate!("10/min")), member("inner", rate!("3/min"))])
            .unwrap();

    #[handler]
    fn report(decision: Data<&Decision>, all: Data<&ThrottleDecisions>) -> String {
        format!("{} {}", decision.remaining.unwrap_or(99), all.len())
    }
    let cli = TestClient::new(get(report).with(group.middleware()));
    for left in [2, 1, 0] {
        let ok = cli.get("/").send().await;
        ok.assert_status_is_ok();
        ok.assert_header("x-ratelimit-limit", "3");
        ok.assert_header_is_not_exist("retry-after");
        ok.assert_text(format!("{left} 2")).await;
    }
    for _ in 0..3 {
        let denied = cli.get("/").send().await;
        denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
        denied.assert_header("retry-after", "60");
        denied.assert_header("x-ratelimit-limit", "3");
    }
    let stats = group.stat(&traffik::RequestView::empty()).await.unwrap();
    let left: Vec<u64> = stats.iter().map(|s| s.limited().unwrap().remaining).collect();
    assert_eq!(left, [7, 0]);
}

/// `per_route` keys the route pattern (as `traffik-salvo`'s does): every id of `/users/:id`
/// shares one quota, and another route guarded by the same throttle has its own.
#[tokio::test]
async fn per_route_keys_the_route_pattern() {
    let throttle = throttle!(rate!("2/min")).build().unwrap();
    let limit = PoemThrottle::new(throttle).per_route(true);
    let cli = TestClient::new(
        Route::new().at("/users/:id", get(hello).with(limit.clone())).at("/items/:id", get(hello).with(limit)),
    );
    cli.get("/users/1").send().await.assert_status_is_ok();
    cli.get("/users/2").send().await.assert_status_is_ok();
    cli.get("/users/3").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    cli.get("/items/1").send().await.assert_status_is_ok();
}

/// A handler of another integration's type cannot run here: the default 429 is sent (and a
/// warning logged once), never a silent nothing.
#[tokio::test]
async fn a_foreign_throttled_handler_gets_the_default_reply() {
    struct Elsewhere;
    impl traffik::reply::RefusalHandler for Elsewhere {}
    let throttle = throttle!(rate!("1/h")).throttled_handler(Elsewhere).build().unwrap();
    assert!(throttle.has_throttled_handler());
    let cli = TestClient::new(get(hello).with(throttle.middleware()));
    cli.get("/").send().await.assert_status_is_ok();
    let denied = cli.get("/").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(denied).await["error"], "rate_limited");
}

/// A group's 429 through the binding member's own handler: the handler's headers win, the
/// group's draft fields fill in only what it did not set.
#[tokio::test]
async fn a_groups_draft_fields_never_replace_a_handlers_headers() {
    use traffik_poem::GroupExt;
    let backend = traffik::InMemoryBackend::new();
    let member = |uid: &str, r, handler: bool| {
        let b = Throttle::builder()
            .uid(uid)
            .rate(r)
            .backend(backend.clone())
            .strategy(traffik::strategy::FixedWindow)
            .clock(ManualClock::new(0))
            .headers(Headers::ietf_draft10(uid));
        let b = if handler {
            b.throttled_handler(ThrottledHandler::new(|_, _| {
                Response::builder().status(StatusCode::TOO_MANY_REQUESTS).header("ratelimit", "mine").body("slow down")
            }))
        } else {
            b
        };
        b.build().unwrap()
    };
    let group = traffik::ThrottleGroup::new(
        "hg",
        [member("outer", rate!("10/min"), false), member("inner", rate!("1/min"), true)],
    )
    .unwrap();
    let cli = TestClient::new(get(hello).with(group.middleware()));
    let ok = cli.get("/").send().await;
    ok.assert_status_is_ok();
    ok.assert_header("ratelimit", r#""outer";r=9;t=60, "inner";r=0;t=60"#);
    let denied = cli.get("/").send().await;
    denied.assert_status(StatusCode::TOO_MANY_REQUESTS);
    denied.assert_header("ratelimit", "mine");
    denied.assert_header("ratelimit-policy", r#""outer";q=10;w=60, "inner";q=1;w=60"#);
    denied.assert_text("slow down").await;
}

#[tokio::test(start_paused = true)]
async fn a_shadow_delay_is_not_held() {
    // One an hour with a queue of one: the second request is delayed an hour.
    let throttle = throttle!(rate!("1/h")).strategy(LeakyBucketWithQueue::new(1)).shadow(true).build().unwrap();
    let cli = TestClient::new(get(show_decision).with(throttle.middleware()));
    cli.get("/").send().await.assert_status_is_ok();
    // Paused time jumps over a sleep: had the middleware held the request, an hour would show.
    let start = tokio::time::Instant::now();
    let second = cli.get("/").send().await;
    assert_eq!(start.elapsed(), Duration::ZERO, "not held");
    second.assert_status_is_ok();
    let text = second.0.into_body().into_string().await.unwrap();
    assert!(text.starts_with("Delayed"), "{text}");
}
