//! The dashboard app: a few throttled routes, the page, the JSON it polls and `/metrics`.
//! Shared by the example's `main` and the browser test, which runs it on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use poem::http::StatusCode;
use poem::web::{Data, Html, Json};
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};
use serde_json::{Value, json};
use traffik::policy::BreakerConfig;
use traffik::strategy::{FixedWindow, SlidingWindowLog, TokenBucketWithDebt};
use traffik::{
    Backend, CircuitBreaker, Clock, ErrorPolicy, InMemoryBackend, SharedBackend, StrategyHandle, Throttle,
    ThrottleRegistry,
};
use traffik_poem::{QuotasEndpoint, ThrottleExt};

/// The page: plain HTML and JavaScript, no build step.
const PAGE: &str = include_str!("index.html");

/// What the page lists about one throttle beyond what the throttle itself tells.
#[derive(Clone)]
struct Listed {
    throttle: Throttle,
    backend: &'static str,
    breaker: Option<CircuitBreaker>,
}

#[derive(Clone)]
struct State {
    listed: Vec<Listed>,
    metrics: PrometheusHandle,
}

/// The app on `clock` (the system clock in the example, a manual one in the test), with
/// decisions counted by the Prometheus recorder behind `metrics`. The `reports` throttle keeps
/// its state in `reports_backend` behind a circuit breaker (the test gives it one that is down).
pub(crate) fn app(
    clock: impl Clock + Clone,
    metrics: PrometheusHandle,
    reports_backend: SharedBackend,
) -> Result<impl Endpoint, traffik::Error> {
    let registry = ThrottleRegistry::new();
    let backend = InMemoryBackend::new();
    let breaker = CircuitBreaker::with_clock(BreakerConfig::default(), Arc::new(clock.clone()));
    let make = |uid: &str, rate: &str, strategy: StrategyHandle, backend: SharedBackend| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(backend)
            .strategy(strategy)
            .clock(clock.clone())
            .registry(&registry)
    };
    let memory: SharedBackend = Arc::new(backend);
    let search = make("search", "10/min", FixedWindow.into(), memory.clone()).build()?;
    let upload = make("upload", "5/s", TokenBucketWithDebt::new(2).into(), memory.clone()).build()?;
    let reports = make("reports", "3/h", SlidingWindowLog.into(), reports_backend.clone())
        .on_error(ErrorPolicy::circuit_breaker(breaker.clone(), Duration::from_secs(5)))
        .build()?;
    let listed = vec![
        Listed { throttle: search.clone(), backend: memory.kind(), breaker: None },
        Listed { throttle: upload.clone(), backend: memory.kind(), breaker: None },
        Listed { throttle: reports.clone(), backend: reports_backend.kind(), breaker: Some(breaker) },
    ];
    let api = Route::new()
        .at("/search", get(work).with(search.middleware()))
        .at("/upload", get(work).with(upload.middleware()))
        .at("/reports", get(work).with(reports.middleware()));
    let dashboard = Route::new()
        .at("/throttles", get(throttles))
        .at("/quotas", QuotasEndpoint::new(registry))
        .data(State { listed, metrics: metrics.clone() });
    Ok(Route::new()
        .at("/", get(page))
        .nest("/api", api)
        .nest("/dashboard", dashboard)
        .at("/metrics", get(prometheus).data(metrics)))
}

#[handler]
fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[handler]
fn work() -> &'static str {
    "done\n"
}

#[handler]
fn prometheus(Data(metrics): Data<&PrometheusHandle>) -> Response {
    Response::builder().status(StatusCode::OK).content_type("text/plain; version=0.0.4").body(metrics.render())
}

/// Every throttle: rate, strategy, backend, decisions by outcome (from the recorder), incidents
/// and breaker state.
#[handler]
fn throttles(Data(state): Data<&State>) -> Json<Value> {
    let decisions = decision_totals(&state.metrics.render());
    let list: Vec<Value> = state
        .listed
        .iter()
        .map(|l| {
            let t = &l.throttle;
            json!({
                "uid": t.uid(),
                "rate": t.rate().map(|r| r.to_string()),
                "strategy": t.strategy().name(),
                "backend": l.backend,
                "disabled": t.is_disabled(),
                "shadow": t.is_shadow(),
                "decisions": decisions.get(t.uid()).cloned().unwrap_or_default(),
                "incidents": t.incidents(),
                "breaker": l.breaker.as_ref().map(CircuitBreaker::info),
            })
        })
        .collect();
    Json(json!({ "throttles": list }))
}

/// `traffik_decisions_total` summed by throttle and outcome, read from the exposition text.
fn decision_totals(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut totals: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("traffik_decisions_total{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        if let (Some(throttle), Some(outcome)) = (label("throttle"), label("outcome")) {
            *totals.entry(throttle).or_default().entry(outcome).or_default() += value as u64;
        }
    }
    totals
}
