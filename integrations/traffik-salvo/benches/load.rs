//! Load test of one Salvo endpoint on 127.0.0.1: unthrottled, throttled in memory (the limit is
//! never reached), throttled on Redis (a `redis-server` started on a free loopback port, or
//! `TRAFFIK_REDIS_URL`) and the rejection path (every request answered 429).
//!
//! Run: `cargo bench -p traffik-salvo --bench load` (release profile). It uses `wrk` when it is
//! on the PATH (`apt-get install -y wrk`) and an in-process reqwest load generator otherwise.
//! `TRAFFIK_BENCH_SECS` sets the seconds per measurement (default 3: 6 interleaved rounds of
//! both routes, then the rejection path; about 45 s in all). The throttled/unthrottled ratio is
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

fn throttle(uid: &str, rate: &str) -> Throttle {
    throttle_on(uid, rate, Arc::new(InMemoryBackend::new()))
}

fn throttle_on(uid: &str, rate: &str, backend: SharedBackend) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).shared_backend(backend).strategy(FixedWindow).build().unwrap()
}

fn router(redis: SharedBackend) -> Router {
    Router::new()
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
    let addr: SocketAddr = server.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(Server::new(acceptor).serve(router(redis)));
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
    for path in ["plain", "throttled", "redis", "rejected"] {
        load(path, 1); // warm up (and use up the rejected route's single hit)
    }
    // The machine may be shared: interleave the two routes we compare (ABBA order, so drift
    // hits both alike) and report the median of the per-round ratios next to the totals.
    let (mut plain, mut throttled, mut ratios) = (0.0_f64, 0.0_f64, Vec::new());
    for round in 0..ROUNDS {
        let (p, t) = if round % 2 == 0 {
            let p = load("plain", secs);
            (p, load("throttled", secs))
        } else {
            let t = load("throttled", secs);
            (load("plain", secs), t)
        };
        plain += p / ROUNDS as f64;
        throttled += t / ROUNDS as f64;
        ratios.push(t / p);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let on_redis = load("redis", secs);
    let rejected = load("rejected", secs);
    println!("unthrottled          {plain:>10.0} req/s");
    println!(
        "throttled (allowed)  {throttled:>10.0} req/s  ratio {:.3}, median per-round ratio {median:.3}",
        throttled / plain
    );
    println!("throttled (Redis)    {on_redis:>10.0} req/s  ratio {:.3}", on_redis / plain);
    println!("rejected (429)       {rejected:>10.0} req/s  ratio {:.3}", rejected / plain);
    drop(redis_server);
}
