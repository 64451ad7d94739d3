//! Load test of one Salvo endpoint on 127.0.0.1: unthrottled, throttled in memory (the limit is
//! never reached), throttled on Redis (a `redis-server` started on a free loopback port, or
//! `TRAFFIK_REDIS_URL`) and the rejection path (every request answered 429), which is compared
//! with its like-with-like baseline: an unthrottled handler answering the same 429 (status,
//! headers and body captured from the throttle's own reply).
//!
//! Run: `cargo bench -p traffik-salvo --bench load` (release profile). It uses `wrk` when it is
//! on the PATH (`apt-get install -y wrk`) and an in-process reqwest load generator otherwise.
//! `TRAFFIK_BENCH_SECS` sets the seconds per measurement (default 3: 6 interleaved rounds of
//! both routes, then 6 of the rejection path and its baseline; about 80 s in all). The throttled/unthrottled ratio is
//! the number to watch (target: at least 0.9); on a busy machine trust the median of the
//! per-round ratios more than the ratio of the averages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use salvo::prelude::*;
use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, SharedBackend, Throttle};
use traffik_salvo::ThrottleExt;

#[handler]
async fn hello() -> &'static str {
    "hello"
}

/// Interleaved measurement rounds of the unthrottled and throttled routes.
const ROUNDS: usize = 6;

/// The 429 the throttle sends, for the like-with-like baseline of the rejection path: a plain
/// handler that answers with the same status, headers and body.
#[derive(Clone)]
struct Refusal {
    status: StatusCode,
    headers: salvo::http::HeaderMap,
    body: String,
}

impl Refusal {
    /// The reply a hoop at `1/h` sends to its second request.
    fn sample(rt: &tokio::runtime::Runtime) -> Refusal {
        use salvo::test::{ResponseExt, TestClient};
        let service = Service::new(Router::with_path("x").hoop(throttle("bench-sample", "1/h").hoop()).get(hello));
        rt.block_on(async {
            let _ = TestClient::get("http://127.0.0.1/x").send(&service).await;
            let mut res = TestClient::get("http://127.0.0.1/x").send(&service).await;
            assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS), "the second hit at 1/h is refused");
            let headers = res.headers().clone();
            let body = res.take_string().await.unwrap();
            Refusal { status: StatusCode::TOO_MANY_REQUESTS, headers, body }
        })
    }
}

#[async_trait]
impl Handler for Refusal {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        res.status_code(self.status);
        *res.headers_mut() = self.headers.clone();
        res.body(self.body.clone());
    }
}

fn throttle(uid: &str, rate: &str) -> Throttle {
    throttle_on(uid, rate, Arc::new(InMemoryBackend::new()))
}

fn throttle_on(uid: &str, rate: &str, backend: SharedBackend) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).shared_backend(backend).strategy(FixedWindow).build().unwrap()
}

fn router(redis: SharedBackend, same_429: Refusal) -> Router {
    Router::new()
        .push(Router::with_path("same429").get(same_429))
        .push(Router::with_path("redis").hoop(throttle_on("bench-redis", "1000000000/h", redis).hoop()).get(hello))
        .push(Router::with_path("plain").get(hello))
        .push(Router::with_path("throttled").hoop(throttle("bench-throttled", "1000000000/h").hoop()).get(hello))
        .push(Router::with_path("rejected").hoop(throttle("bench-rejected", "1/h").hoop()).get(hello))
}

fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Requests per second reported by wrk.
fn wrk(url: &str, secs: u64) -> f64 {
    let out = Command::new("wrk").args(["-t1", "-c32", &format!("-d{secs}s"), url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("could not read wrk output:\n{text}"))
}

/// Requests per second from 32 in-process keep-alive clients.
fn in_process(url: &str, secs: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (done, url) = (Arc::clone(&done), url.to_owned());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while Instant::now() < deadline {
                    if client.get(&url).send().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / secs as f64
    })
}

fn main() {
    let secs: u64 = std::env::var("TRAFFIK_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let server = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let redis_server = traffik_test_support::redis_server();
    let redis: SharedBackend =
        Arc::new(traffik_redis::RedisBackend::builder().url(&redis_server.url).namespace("bench").build().unwrap());
    let same_429 = Refusal::sample(&server);
    let addr: SocketAddr = server.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(Server::new(acceptor).serve(router(redis, same_429)));
        addr
    });
    let use_wrk = wrk_available();
    let load = |path: &str, secs: u64| {
        let url = format!("http://{addr}/{path}");
        if use_wrk { wrk(&url, secs) } else { in_process(&url, secs) }
    };
    println!(
        "salvo load test: 1 server worker, 32 connections, {secs} s per run, {ROUNDS} rounds, client: {}",
        if use_wrk { "wrk -t1" } else { "in-process reqwest" }
    );
    for path in ["plain", "throttled", "redis", "rejected", "same429"] {
        load(path, 1); // warm up (and use up the rejected route's single hit)
    }
    // The machine may be shared: interleave the two routes we compare (ABBA order, so drift
    // hits both alike) and report the median of the per-round ratios next to the totals.
    let compare = |base: &str, other: &str| {
        let (mut b_mean, mut o_mean, mut ratios) = (0.0_f64, 0.0_f64, Vec::new());
        for round in 0..ROUNDS {
            let (b, o) = if round % 2 == 0 {
                let b = load(base, secs);
                (b, load(other, secs))
            } else {
                let o = load(other, secs);
                (load(base, secs), o)
            };
            b_mean += b / ROUNDS as f64;
            o_mean += o / ROUNDS as f64;
            ratios.push(o / b);
        }
        ratios.sort_by(f64::total_cmp);
        (b_mean, o_mean, ratios[ratios.len() / 2])
    };
    let (plain, throttled, median) = compare("plain", "throttled");
    let on_redis = load("redis", secs);
    let (same_429, rejected, median_429) = compare("same429", "rejected");
    println!("unthrottled          {plain:>10.0} req/s");
    println!(
        "throttled (allowed)  {throttled:>10.0} req/s  ratio {:.3}, median per-round ratio {median:.3}",
        throttled / plain
    );
    println!("throttled (Redis)    {on_redis:>10.0} req/s  ratio {:.3}", on_redis / plain);
    println!("unthrottled, same 429 {same_429:>9.0} req/s");
    println!(
        "rejected (429)       {rejected:>10.0} req/s  ratio {:.3} to the same 429 unthrottled, median per-round ratio {median_429:.3}",
        rejected / same_429
    );
    drop(redis_server);
}
