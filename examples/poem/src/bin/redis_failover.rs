//! Production setup: a Redis backend shared by every app instance, with failover to an
//! in-process backend behind a circuit breaker when Redis is down, and a health endpoint that
//! shows the breaker and the incident counters.
//!
//! Run: start Redis (`redis-server --port 6379`), then
//! `cargo run -p traffik-poem-examples --bin redis_failover`
//! (`REDIS_URL` overrides `redis://127.0.0.1:6379/`). Stop Redis while it runs and requests
//! keep being limited, by the in-memory fallback.

use std::time::Duration;

use poem::listener::TcpListener;
use poem::web::{Data, Json};
use poem::{Endpoint, EndpointExt, Route, Server, get, handler};
use serde_json::{Value, json};
use traffik::policy::BreakerConfig;
use traffik::strategy::SlidingWindowCounter;
use traffik::{CircuitBreaker, Decision, ErrorPolicy, Failover, InMemoryBackend, Throttle, rate};
use traffik::{Headers, When};
use traffik_poem::ThrottleExt;
use traffik_redis::RedisBackend;

const ADDR: &str = "127.0.0.1:3000";

#[handler]
fn data(decision: Data<&Decision>) -> String {
    format!("data (decided by {:?}; {} left)\n", decision.source, decision.remaining.unwrap_or(0))
}

/// What operators want to see: is Redis healthy, and how often did the fallback step in?
#[handler]
fn health(Data(state): Data<&Health>) -> Json<Value> {
    let breaker = state.breaker.info();
    let incidents = state.throttle.incidents();
    Json(json!({ "breaker": breaker, "incidents": incidents }))
}

#[derive(Clone)]
struct Health {
    throttle: Throttle,
    breaker: CircuitBreaker,
}

fn app(redis_url: &str) -> Result<impl Endpoint + use<>, Box<dyn std::error::Error>> {
    let redis = RedisBackend::builder().url(redis_url).namespace("poem-example").build()?;
    // Ten failures open the circuit for a minute; three good probes close it again.
    let breaker = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 10,
        recovery_timeout: Duration::from_secs(60),
        success_threshold: 3,
    });
    let fallback = InMemoryBackend::builder().namespace("fallback").build();
    let failover = Failover::new(fallback, breaker.clone()).max_retries(2).retry_delay(Duration::from_millis(20));
    let throttle = Throttle::builder()
        .uid("poem-redis-api")
        .rate(rate!("10/min"))
        .backend(redis)
        .strategy(SlidingWindowCounter)
        .headers(Headers::x_ratelimit(When::Always))
        .timeout(Duration::from_millis(250))
        .on_error(ErrorPolicy::failover(failover))
        .build()?;
    Ok(Route::new()
        .at("/api/data", get(data).with(throttle.middleware()))
        .at("/health", get(health))
        .data(Health { throttle, breaker }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let app = app(&url)?;
    println!("traffik + poem with Redis ({url}) on http://{ADDR}");
    println!("  curl -i http://{ADDR}/api/data      # 10/min per client, shared by every instance");
    println!("  curl -s http://{ADDR}/health        # breaker state and fallback counters");
    println!("  stop Redis: requests are still limited, now by the in-memory fallback");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;
    use poem::test::TestClient;

    #[tokio::test]
    async fn limits_through_redis_then_fall_back_when_it_stops() {
        let mut server = traffik_test_support::redis_server();
        let cli = TestClient::new(app(&server.url).unwrap());
        cli.get("/api/data").send().await.assert_text("data (decided by Backend; 9 left)\n").await;
        if !server.is_owned() {
            return; // an external server cannot be stopped from here
        }
        server.stop();
        let resp = cli.get("/api/data").send().await;
        resp.assert_status(StatusCode::OK);
        resp.assert_text("data (decided by Fallback; 9 left)\n").await;
        let report = cli.get("/health").send().await.json().await;
        report.value().object().get("incidents").object().get("fallbacks").assert_i64(1);
    }
}
