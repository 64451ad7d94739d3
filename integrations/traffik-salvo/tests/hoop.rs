//! The hoop, the middleware and direct calls, driven through `salvo::test` (which lets each
//! request pick its peer address).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{broken, get, header, json, send};
use salvo::http::{HeaderName, HeaderValue, Method, StatusCode};
use salvo::prelude::*;
use salvo::test::ResponseExt;
use serde_json::json;
use traffik::Headers;
use traffik::headers::Header;
use traffik::strategy::LeakyBucketWithQueue;
use traffik::{
    ClientIp, Context, ErrorPolicy, Identity, ManualClock, Outcome, RequestView, TrustedProxies, When, rate,
};
use traffik_salvo::{DepotExt, MiddlewareThrottle, SalvoThrottle, ThrottleExt, ThrottleMiddleware, ThrottledHandler};

const A: &str = "198.51.100.1:5000";
const B: &str = "198.51.100.2:5000";

/// Counts calls, answers "ok".
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Handler for Counter {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        self.0.fetch_add(1, Ordering::SeqCst);
        res.render("ok");
    }
}

/// Renders what the throttles left in the depot.
#[handler]
async fn report(depot: &mut Depot, res: &mut Response) {
    let records: Vec<_> = depot
        .throttle_records()
        .map(|r| r.all().to_vec())
        .unwrap_or_default()
        .into_iter()
        .map(|r| json!({"uid": &*r.uid, "decision": r.decision, "stat": r.stat}))
        .collect();
    res.render(Json(json!({ "records": records })));
}

#[tokio::test]
async fn allows_then_answers_429_with_retry_after_headers_and_json() {
    let throttle =
        throttle!(rate!("2/h")).clock(ManualClock::new(0)).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let counter = Counter::default();
    let service = Service::new(Router::with_path("api").hoop(SalvoThrottle::new(throttle)).get(counter.clone()));

    let res = get(&service, "/api", A).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("1"));
    let res = get(&service, "/api", A).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("0"));

    let mut res = get(&service, "/api", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    // The window is aligned to the epoch and the clock reads 0: exactly one hour to wait.
    assert_eq!(header(&res, "retry-after").as_deref(), Some("3600"));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert!(header(&res, "content-type").unwrap().starts_with("application/json"));
    let body = json(&mut res).await;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_ms"], 3_600_000);
    assert!(body["message"].as_str().unwrap().contains("3600"));
    assert_eq!(counter.calls(), 2, "the handler does not run on denial");

    // Another client has its own quota.
    assert_eq!(get(&service, "/api", B).await.status_code, Some(StatusCode::OK));
}

#[tokio::test]
async fn retry_after_rounds_up_and_throttled_only_headers_stay_off_allowed_responses() {
    let clock = ManualClock::new(0);
    let throttle =
        throttle!(rate!("1/10s")).clock(clock.clone()).headers(Headers::x_ratelimit(When::Throttled)).build().unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(Counter::default()));
    let res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(header(&res, "x-ratelimit-limit"), None);
    clock.advance(Duration::from_millis(2_500));
    let mut res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    // 7.5 s left: Retry-After rounds up to 8, the body keeps milliseconds.
    assert_eq!(header(&res, "retry-after").as_deref(), Some("8"));
    assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(json(&mut res).await["retry_after_ms"], 7_500);
}

#[tokio::test]
async fn stacked_hoops_run_in_order_and_the_first_denial_stops() {
    let outer = throttle!(rate!("3/h")).build().unwrap();
    let inner = throttle!(rate!("1/h")).build().unwrap();
    let (outer_uid, inner_uid) = (outer.uid().to_owned(), inner.uid().to_owned());
    let service = Service::new(
        Router::new()
            .hoop(outer.hoop())
            .push(Router::with_path("a").hoop(inner.hoop()).get(report))
            .push(Router::with_path("b").get(report)),
    );
    let mut res = get(&service, "/a", A).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let body = json(&mut res).await;
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["uid"], outer_uid.as_str());
    assert_eq!(records[1]["uid"], inner_uid.as_str());

    // The inner throttle denies; the outer one still counted the hit.
    let res = get(&service, "/a", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(get(&service, "/b", A).await.status_code, Some(StatusCode::OK));
    // Outer: 3 hits used; now it denies before the inner one runs.
    let res = get(&service, "/b", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn routes_with_parameters_are_limited_per_client_not_per_path() {
    let shared = throttle!(rate!("2/h")).build().unwrap();
    let service = Service::new(Router::with_path("users/{id}").hoop(shared.hoop()).get(Counter::default()));
    assert_eq!(get(&service, "/users/1", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/users/2", A).await.status_code, Some(StatusCode::OK));
    let res = get(&service, "/users/3", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));

    // per_route: each route pattern gets its own quota, still shared across its parameters.
    let t = throttle!(rate!("1/h")).build().unwrap();
    let hoop = SalvoThrottle::new(t).per_route(true);
    let service = Service::new(
        Router::new()
            .push(Router::with_path("users/{id}").hoop(hoop.clone()).get(report))
            .push(Router::with_path("items/{id}").hoop(hoop).get(report)),
    );
    let mut res = get(&service, "/users/1", A).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let key = json(&mut res).await["records"][0]["decision"]["key"].to_string();
    // Key parts are percent-encoded: `users/{id}`.
    assert!(key.contains("users%2F%7Bid%7D"), "the pattern, not the path: {key}");
    assert_eq!(get(&service, "/items/1", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/users/2", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(get(&service, "/items/2", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn middleware_filters_by_method_path_and_predicate_with_cost() {
    let writes = throttle!(rate!("3/h")).build().unwrap();
    let admin = throttle!(rate!("1/h")).build().unwrap();
    let authed = throttle!(rate!("1/h")).build().unwrap();
    let middleware = ThrottleMiddleware::new([
        MiddlewareThrottle::new(writes).methods([Method::POST]).path("/api/**").unwrap().cost(2),
        MiddlewareThrottle::new(admin).path("/admin/*").unwrap(),
        MiddlewareThrottle::new(authed)
            .predicate_async(|req: &Request, _: &Depot| {
                let has = req.headers().contains_key("authorization");
                async move { has }
            })
            .path("/auth/**")
            .unwrap(),
    ]);
    let service =
        Service::new(Router::new().hoop(middleware).push(Router::with_path("{**rest}").goal(Counter::default())));
    let status = |res: Response| res.status_code.unwrap();

    // GETs are not writes; POST costs 2 of 3.
    for _ in 0..3 {
        assert_eq!(status(get(&service, "/api/x", A).await), StatusCode::OK);
    }
    assert_eq!(status(send(&service, Method::POST, "/api/x", A, &[]).await), StatusCode::OK);
    let res = send(&service, Method::POST, "/api/y/z", A, &[]).await;
    assert_eq!(status(res), StatusCode::TOO_MANY_REQUESTS);
    // Outside /api/** POSTs are free.
    assert_eq!(status(send(&service, Method::POST, "/other", A, &[]).await), StatusCode::OK);

    // `*` is one segment.
    assert_eq!(status(get(&service, "/admin/a", A).await), StatusCode::OK);
    assert_eq!(status(get(&service, "/admin/a", A).await), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status(get(&service, "/admin/a/b", A).await), StatusCode::OK);

    // The predicate gates the third throttle.
    let auth = [("authorization", "Bearer x")];
    for _ in 0..3 {
        assert_eq!(status(get(&service, "/auth/me", A).await), StatusCode::OK);
    }
    assert_eq!(status(send(&service, Method::GET, "/auth/me", A, &auth).await), StatusCode::OK);
    let res = send(&service, Method::GET, "/auth/me", A, &auth).await;
    assert_eq!(status(res), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn middleware_applies_throttles_in_the_order_given() {
    let first = throttle!(rate!("1/h")).build().unwrap();
    let second = throttle!(rate!("5/h")).build().unwrap();
    let second_handle = second.clone();
    let service = Service::new(
        Router::new()
            .hoop(ThrottleMiddleware::new([
                MiddlewareThrottle::new(first).predicate(|_, _| true),
                MiddlewareThrottle::new(second),
            ]))
            .get(report),
    );
    let mut res = get(&service, "/", A).await;
    let body = json(&mut res).await;
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    // The first denies: the second is not charged.
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    let view = RequestView::empty().peer(Some(A.parse().unwrap()));
    let stat = second_handle.stat(&view).await.unwrap().into_limited().unwrap();
    assert_eq!(stat.remaining, 4);
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let trusting = ClientIp::new().trusted_proxies(TrustedProxies::new(["10.0.0.0/8"]).unwrap());
    let throttle = throttle!(rate!("1/h")).identifier(trusting).build().unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(Counter::default()));
    let xff = |ip| [("x-forwarded-for", ip)];
    let status = |res: Response| res.status_code.unwrap();

    // An untrusted client cannot pick a fresh bucket with a header.
    let res = send(&service, Method::GET, "/", A, &xff("203.0.113.1")).await;
    assert_eq!(status(res), StatusCode::OK);
    let res = send(&service, Method::GET, "/", A, &xff("203.0.113.2")).await;
    assert_eq!(status(res), StatusCode::TOO_MANY_REQUESTS);

    // Behind the trusted proxy each forwarded client has its own quota.
    let proxy = "10.1.2.3:80";
    let res = send(&service, Method::GET, "/", proxy, &xff("203.0.113.7")).await;
    assert_eq!(status(res), StatusCode::OK);
    let res = send(&service, Method::GET, "/", proxy, &xff("203.0.113.8")).await;
    assert_eq!(status(res), StatusCode::OK);
    let res = send(&service, Method::GET, "/", proxy, &xff("203.0.113.7")).await;
    assert_eq!(status(res), StatusCode::TOO_MANY_REQUESTS);

    // With no proxy configured, even a private peer's header is ignored.
    let plain = throttle!(rate!("1/h")).build().unwrap();
    let service = Service::new(Router::new().hoop(plain.hoop()).get(Counter::default()));
    let res = send(&service, Method::GET, "/", proxy, &xff("203.0.113.7")).await;
    assert_eq!(status(res), StatusCode::OK);
    let res = send(&service, Method::GET, "/", proxy, &xff("203.0.113.8")).await;
    assert_eq!(status(res), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_cost_that_can_never_fit_is_429_without_retry_after() {
    let throttle = throttle!(rate!("2/h")).cost(5).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let counter = Counter::default();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(counter.clone()));
    let mut res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(header(&res, "retry-after"), None);
    let body = json(&mut res).await;
    assert_eq!(body["error"], "cost_exceeds_limit");
    assert_eq!(body["retry_after_ms"], serde_json::Value::Null);
    assert!(body["message"].as_str().unwrap().contains("never"));
    assert_eq!(counter.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn delayed_requests_wait_then_proceed() {
    let throttle =
        throttle!(rate!("1/s")).strategy(LeakyBucketWithQueue::new(5)).clock(ManualClock::new(0)).build().unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(report));
    let mut res = get(&service, "/", A).await;
    assert_eq!(json(&mut res).await["records"][0]["decision"]["outcome"], "allowed");

    let started = tokio::time::Instant::now();
    let mut res = get(&service, "/", A).await;
    let waited = started.elapsed();
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let body = json(&mut res).await;
    let decision = &body["records"][0]["decision"];
    assert_eq!(decision["outcome"], "delayed");
    let wait_ms = decision["wait"].as_u64().unwrap();
    assert!(wait_ms > 0);
    assert!(
        waited >= Duration::from_millis(wait_ms) - Duration::from_millis(1),
        "held {waited:?}, decision said {wait_ms} ms"
    );
}

#[handler]
async fn slow_down(depot: &mut Depot, res: &mut Response) {
    let wait = depot.throttle_decision().map_or(0, |d| d.wait.as_secs());
    res.headers_mut().insert("x-custom", HeaderValue::from_static("yes"));
    res.render(format!("slow down for {wait} s"));
}

#[tokio::test]
async fn custom_throttled_handlers_replace_the_body() {
    let throttle = throttle!(rate!("1/h"))
        .clock(ManualClock::new(0))
        .throttled_handler(ThrottledHandler::handler(slow_down))
        .build()
        .unwrap();
    assert!(throttle.throttled_handler::<ThrottledHandler>().is_some());
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(Counter::default()));
    get(&service, "/", A).await;
    let mut res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(header(&res, "retry-after").as_deref(), Some("3600"));
    assert_eq!(header(&res, "x-custom").as_deref(), Some("yes"));
    assert_eq!(res.take_string().await.unwrap(), "slow down for 3600 s");

    // Swapped at runtime, as a closure.
    throttle.update_throttled_handler(ThrottledHandler::from_fn(|decision, res| {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        res.render(format!("busy, cost {}", decision.cost));
    }));
    let mut res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(res.take_string().await.unwrap(), "busy, cost 1");
}

#[tokio::test]
async fn the_depot_holds_the_decision_and_an_opt_in_stat() {
    let plain = throttle!(rate!("5/h")).build().unwrap();
    let service = Service::new(Router::new().hoop(plain.hoop()).get(report));
    let mut res = get(&service, "/", A).await;
    let body = json(&mut res).await;
    let record = &body["records"][0];
    assert_eq!(record["decision"]["outcome"], "allowed");
    assert_eq!(record["decision"]["remaining"], 4);
    assert_eq!(record["stat"], serde_json::Value::Null, "stat is opt-in");

    let with_stat = throttle!(rate!("5/h")).build().unwrap();
    let hoop = SalvoThrottle::new(with_stat).with_stat(true);
    let service = Service::new(Router::new().hoop(hoop).get(report));
    get(&service, "/", A).await;
    let mut res = get(&service, "/", A).await;
    let body = json(&mut res).await;
    let stat = &body["records"][0]["stat"];
    assert_eq!(stat["remaining"], 3);
    assert_eq!(stat["admissible"], true);
}

#[tokio::test]
async fn a_raised_backend_error_is_503_json() {
    let throttle = traffik::Throttle::builder()
        .uid(common::uid("salvo-broken"))
        .rate(rate!("5/h"))
        .backend(broken())
        .strategy(traffik::strategy::FixedWindow)
        .on_error(ErrorPolicy::raise())
        .build()
        .unwrap();
    let counter = Counter::default();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(counter.clone()));
    let mut res = get(&service, "/", A).await;
    assert_eq!(res.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
    let body = json(&mut res).await;
    assert_eq!(body["error"], "rate_limiter_unavailable");
    assert!(!body.to_string().contains("always down"), "no backend details leak");
    assert_eq!(body, serde_json::to_value(traffik::reply::ReplyBody::unavailable()).unwrap(), "the core's body");
    assert_eq!(counter.calls(), 0);
}

/// A handler that throttles itself, with a cost from the query string.
struct Export(SalvoThrottle);

#[async_trait]
impl Handler for Export {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let cost = req.query::<u64>("cost").unwrap_or(1);
        if !self.0.apply_with(req, depot, res, Context::new().cost(cost)).await {
            return;
        }
        let left = depot.throttle_decision().and_then(|d| d.remaining).unwrap_or(0);
        res.render(format!("exported, {left} left"));
    }
}

#[tokio::test]
async fn direct_calls_inside_a_handler() {
    let throttle = throttle!(rate!("10/h")).build().unwrap();
    let service = Service::new(Router::new().get(Export(throttle.hoop())));
    let mut res = get(&service, "/?cost=4", A).await;
    assert_eq!(res.take_string().await.unwrap(), "exported, 6 left");
    let mut res = get(&service, "/?cost=7", A).await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(json(&mut res).await["error"], "rate_limited");

    // The raw decision, nothing written.
    let mut req = Request::default();
    *req.remote_addr_mut() = std::net::SocketAddr::from(([198, 51, 100, 1], 1)).into();
    let d = throttle.hit_request(&req, &Context::new().cost(6)).await.unwrap();
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.remaining, Some(0));
}

#[tokio::test]
async fn exempted_requests_get_no_headers() {
    let throttle = throttle!(rate!("1/h"))
        .identifier(
            |req: &RequestView<'_>| {
                if req.headers().contains_key("x-internal") { Identity::Exempted } else { Identity::Anonymous }
            },
        )
        .headers(Headers::x_ratelimit(When::Always).with(
            HeaderName::from_static("x-policy"),
            Header::fixed(HeaderValue::from_static("default"), When::Always),
        ))
        .build()
        .unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(report));
    let internal = [("x-internal", "1")];
    for _ in 0..3 {
        let mut res = send(&service, Method::GET, "/", A, &internal).await;
        assert_eq!(res.status_code, Some(StatusCode::OK));
        assert_eq!(header(&res, "x-policy"), None);
        let body = json(&mut res).await;
        assert_eq!(body["records"][0]["decision"]["outcome"], json!({"skipped": "exempted"}));
    }
    let res = get(&service, "/", A).await;
    assert_eq!(header(&res, "x-policy").as_deref(), Some("default"));
}

#[tokio::test]
async fn a_service_level_middleware_also_counts_unmatched_paths() {
    let t = throttle!(rate!("1/h")).build().unwrap();
    let service = Service::new(Router::with_path("known").get(Counter::default()))
        .hoop(ThrottleMiddleware::new([MiddlewareThrottle::new(t)]));
    assert_eq!(get(&service, "/nope", A).await.status_code, Some(StatusCode::NOT_FOUND));
    assert_eq!(get(&service, "/known", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn a_context_function_scopes_and_prices_each_request() {
    let t = throttle!(rate!("4/h")).build().unwrap();
    let hoop = SalvoThrottle::new(t).cost(2).context(|req: &Request, _: &Depot| {
        let tenant = req.header::<String>("x-tenant").unwrap_or_default();
        let ctx = Context::new().scope(tenant);
        if req.query::<bool>("bulk").unwrap_or(false) { ctx.cost(4) } else { ctx }
    });
    let service = Service::new(Router::new().hoop(hoop).get(report));
    let call = |tenant: &'static str, path: &'static str| {
        let service = &service;
        async move { send(service, Method::GET, path, A, &[("x-tenant", tenant)]).await.status_code.unwrap() }
    };
    // The hoop's cost (2) applies when the context sets none: two calls per tenant.
    assert_eq!(call("acme", "/").await, StatusCode::OK);
    assert_eq!(call("acme", "/").await, StatusCode::OK);
    assert_eq!(call("acme", "/").await, StatusCode::TOO_MANY_REQUESTS);
    // Another tenant has its own quota; the context's cost (4) wins over the hoop's.
    assert_eq!(call("globex", "/?bulk=true").await, StatusCode::OK);
    assert_eq!(call("globex", "/").await, StatusCode::TOO_MANY_REQUESTS);
}

#[handler]
async fn unavailable(res: &mut Response) {
    res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    res.headers_mut().insert("retry-after", HeaderValue::from_static("120"));
    res.render("maintenance");
}

/// Stacked hoops: the inner throttle's 429 says what the inner throttle decided; an
/// application's own `Retry-After` survives; an admitted request never gets `Retry-After`.
#[tokio::test]
async fn headers_tell_the_truth_on_stacked_hoops_and_application_responses() {
    let clock = ManualClock::new(0);
    let outer =
        throttle!(rate!("10/min")).clock(clock.clone()).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let inner =
        throttle!(rate!("3/min")).clock(clock.clone()).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let service = Service::new(
        Router::new()
            .push(
                Router::with_path("data")
                    .hoop(SalvoThrottle::new(outer))
                    .hoop(SalvoThrottle::new(inner))
                    .get(Counter::default()),
            )
            .push(
                Router::with_path("down")
                    .hoop(SalvoThrottle::new(
                        throttle!(rate!("10/min"))
                            .clock(clock)
                            .headers(Headers::x_ratelimit(When::Always))
                            .build()
                            .unwrap(),
                    ))
                    .get(unavailable),
            ),
    );
    for _ in 0..3 {
        let ok = get(&service, "/data", A).await;
        assert_eq!(ok.status_code, Some(StatusCode::OK));
        assert_eq!(header(&ok, "retry-after"), None, "Retry-After on a 200");
    }
    let mut denied = get(&service, "/data", A).await;
    assert_eq!(denied.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("60"));
    assert_eq!(header(&denied, "x-ratelimit-limit").as_deref(), Some("3"));
    let body = json(&mut denied).await;
    assert!(body["message"].as_str().unwrap().contains("60 seconds"), "{body}");
    let down = get(&service, "/down", A).await;
    assert_eq!(down.status_code, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(header(&down, "retry-after").as_deref(), Some("120"));
    assert_eq!(header(&down, "x-ratelimit-limit").as_deref(), Some("10"));
}

/// Stacked limits as one decision on a route: `10/min` over `3/min` as a group hoop. After 3
/// admitted and 3 refused requests the outer limit has 7 left, each refusal is the binding
/// member's 429, and the depot holds both members' decisions, the binding one last.
#[tokio::test]
async fn a_group_hoop_charges_no_member_for_a_refusal() {
    use traffik_salvo::GroupExt;
    let clock = ManualClock::new(0);
    let backend = traffik::InMemoryBackend::new();
    let member = |uid: &str, r| {
        traffik::Throttle::builder()
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
    let service = Service::new(Router::with_path("data").hoop(group.hoop()).get(report));
    for left in [2, 1, 0] {
        let mut ok = get(&service, "/data", A).await;
        assert_eq!(ok.status_code, Some(StatusCode::OK));
        assert_eq!(header(&ok, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header(&ok, "retry-after"), None);
        let body = json(&mut ok).await;
        let uids: Vec<&str> = body["records"].as_array().unwrap().iter().map(|r| r["uid"].as_str().unwrap()).collect();
        assert_eq!(uids, ["outer", "inner"], "{body}");
        assert_eq!(body["records"][1]["decision"]["remaining"], left);
    }
    for _ in 0..3 {
        let denied = get(&service, "/data", A).await;
        assert_eq!(denied.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(header(&denied, "retry-after").as_deref(), Some("60"));
        assert_eq!(header(&denied, "x-ratelimit-limit").as_deref(), Some("3"));
    }
    let view = RequestView::empty().peer(Some(A.parse().unwrap()));
    let stats = group.stat(&view).await.unwrap();
    let left: Vec<u64> = stats.iter().map(|s| s.limited().unwrap().remaining).collect();
    assert_eq!(left, [7, 0]);
}

/// `per_path` keys the concrete path (as `traffik-poem`'s does): `/items/1` and `/items/2`
/// have quotas of their own.
#[tokio::test]
async fn per_path_keys_the_concrete_path() {
    let throttle = throttle!(rate!("1/min")).build().unwrap();
    let service = Service::new(
        Router::with_path("items/{id}").hoop(SalvoThrottle::new(throttle).per_path(true)).get(Counter::default()),
    );
    assert_eq!(get(&service, "/items/1", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/items/1", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(get(&service, "/items/2", A).await.status_code, Some(StatusCode::OK));
}

/// Three health checks the hoop's skipper picks pass uncounted, without headers or records;
/// then the hour's one request passes and the next is refused.
async fn skipped_requests_are_uncounted(hoop: impl Handler) {
    let service = Service::new(Router::new().hoop(hoop).get(report));
    for _ in 0..3 {
        let mut res = send(&service, Method::GET, "/", A, &[("x-health-check", "1")]).await;
        assert_eq!(res.status_code, Some(StatusCode::OK));
        assert_eq!(header(&res, "x-ratelimit-limit"), None, "a skipped request gets no headers");
        assert_eq!(json(&mut res).await["records"], json!([]));
    }
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::OK), "the hour's one request is left");
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
}

/// Salvo users get a skipper, as Salvo's own middlewares offer: skipped requests are not
/// counted and record nothing.
#[tokio::test]
async fn a_skipper_lets_picked_requests_through_uncounted() {
    let throttle = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let hoop = SalvoThrottle::new(throttle)
        .skipper(|req: &mut Request, _: &Depot| req.headers().contains_key("x-health-check"));
    skipped_requests_are_uncounted(hoop).await;
}

/// A group hoop has the same skipper: skipped requests charge no member, get no headers and
/// record nothing.
#[tokio::test]
async fn a_group_hoop_has_a_skipper_too() {
    use traffik_salvo::GroupExt;
    let member =
        |uid: &str| throttle!(rate!("1/h")).uid(uid).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let group = traffik::ThrottleGroup::new("skipped-group", [member("skip-a"), member("skip-b")]).unwrap();
    let hoop = group.hoop().skipper(|req: &mut Request, _: &Depot| req.headers().contains_key("x-health-check"));
    skipped_requests_are_uncounted(hoop).await;
}

#[tokio::test]
async fn shadow_mode_lets_refusals_through_and_switches_at_run_time() {
    let throttle = throttle!(rate!("1/h")).headers(Headers::x_ratelimit(When::Always)).build().unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(report));
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    throttle.set_shadow(true);
    let mut shadowed = get(&service, "/", A).await;
    assert_eq!(shadowed.status_code, Some(StatusCode::OK));
    assert_eq!(header(&shadowed, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(&shadowed, "retry-after"), None);
    let body = json(&mut shadowed).await;
    assert_eq!(body["records"][0]["decision"]["outcome"], "throttled");
    assert_eq!(body["records"][0]["decision"]["shadow"], true);
    throttle.set_shadow(false);
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(throttle.shadow_refusals(), 1);
}

#[tokio::test]
async fn a_shadow_hoop_shadows_only_its_route() {
    let throttle = throttle!(rate!("1/h")).build().unwrap();
    let service = Service::new(
        Router::new()
            .push(Router::with_path("soft").hoop(throttle.hoop().shadow(true)).get(report))
            .push(Router::with_path("hard").hoop(throttle.hoop()).get(report)),
    );
    assert_eq!(get(&service, "/soft", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/soft", A).await.status_code, Some(StatusCode::OK));
    assert_eq!(get(&service, "/hard", A).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(throttle.shadow_refusals(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shadow_delay_is_not_held() {
    // One an hour with a queue of one: the second request is delayed an hour.
    let throttle = throttle!(rate!("1/h")).strategy(LeakyBucketWithQueue::new(1)).shadow(true).build().unwrap();
    let service = Service::new(Router::new().hoop(throttle.hoop()).get(report));
    assert_eq!(get(&service, "/", A).await.status_code, Some(StatusCode::OK));
    // Paused time jumps over a sleep: had the hoop held the request, an hour would show here.
    let start = tokio::time::Instant::now();
    let mut second = get(&service, "/", A).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "not held");
    let body = json(&mut second).await;
    assert_eq!(body["records"][0]["decision"]["outcome"], "delayed");
    assert_eq!(body["records"][0]["decision"]["shadow"], true);
}
