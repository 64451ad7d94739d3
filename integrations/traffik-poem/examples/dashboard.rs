//! A quota dashboard: every throttle (rate, strategy, backend), live decision rates by outcome,
//! incidents and breaker state, and the caller's own quotas as bars that count down and
//! refill; `/metrics` for Prometheus.
//!
//! ```sh
//! cargo run -p traffik-poem --example dashboard
//! # open http://127.0.0.1:3000/ and, in another shell, make some traffic:
//! for i in $(seq 12); do curl -s -o /dev/null http://127.0.0.1:3000/api/search; done
//! curl http://127.0.0.1:3000/metrics
//! ```
//!
//! The page polls `/dashboard/throttles` and `/dashboard/quotas` (JSON) once a second.

#![allow(clippy::expect_used, missing_docs)]

#[path = "dashboard/app.rs"]
mod app;

use metrics_exporter_prometheus::PrometheusBuilder;
use poem::Server;
use poem::listener::TcpListener;
use std::sync::Arc;

use traffik::{InMemoryBackend, SystemClock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("DASHBOARD_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let app = app::app(SystemClock, metrics, Arc::new(InMemoryBackend::new()))?;
    println!("traffik dashboard on http://{addr}/  (metrics on http://{addr}/metrics)");
    println!("  traffic: curl http://{addr}/api/search   /api/upload   /api/reports");
    Server::new(TcpListener::bind(addr)).run(app).await?;
    Ok(())
}
