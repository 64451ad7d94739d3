//! Load test of one Poem endpoint: unthrottled, throttled in memory (limit never reached),
//! throttled on Redis (limit never reached; a `redis-server` is started on a free loopback port,
//! or `TRAFFIK_REDIS_URL` is used) and throttled on its rejection path (every request answered
//! 429). Prints requests per second and the ratio to the unthrottled baseline measured in the
//! same run.
//!
//! `cargo bench -p traffik-poem --bench load`. Traffic goes to 127.0.0.1 only. The servers run
//! on a one-thread Tokio runtime; the client is `wrk` when installed (one thread, 16
//! connections), else a built-in client (16 keep-alive connections on its own thread);
//! `TRAFFIK_BENCH_CLIENT=builtin` forces the latter. `TRAFFIK_BENCH_SECS` sets the seconds per
//! run (default 3; each configuration runs three times, interleaved, each after a 1 s warm-up).
//! Besides requests per second it reports the server's CPU time per request (with `wrk`),
//! which the rest of the machine's load disturbs much less than throughput.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poem::listener::TcpAcceptor;
use poem::{Endpoint, EndpointExt, Route, Server, get, handler};
use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, Rate, SharedBackend, Throttle, rate};
use traffik_poem::ThrottleExt;

#[handler]
fn hello() -> &'static str {
    "hello"
}

/// The parts of the 429 the throttle sends, for the like-with-like baseline of the rejection
/// path: a plain handler that answers with the same status, headers and body.
#[derive(Clone)]
struct Refusal {
    status: poem::http::StatusCode,
    headers: poem::http::HeaderMap,
    body: Vec<u8>,
}

impl Refusal {
    /// The reply a throttle at `1/h` sends to its second request.
    fn sample(rt: &tokio::runtime::Runtime) -> Refusal {
        let t = throttle("bench-sample", rate!("1/h"), Arc::new(InMemoryBackend::new()));
        let view = traffik::RequestView::empty();
        let decision = rt.block_on(async {
            let _ = t.hit(&view).await.unwrap();
            t.hit(&view).await.unwrap()
        });
        assert!(decision.is_refused(), "the second hit at 1/h is refused");
        let resp = traffik_poem::default_throttled_response(&decision);
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = rt.block_on(resp.into_body().into_vec()).unwrap();
        Refusal { status, headers, body }
    }
}

impl Endpoint for Refusal {
    type Output = poem::Response;

    async fn call(&self, _req: poem::Request) -> poem::Result<poem::Response> {
        let mut resp = poem::Response::builder().status(self.status).body(self.body.clone());
        *resp.headers_mut() = self.headers.clone();
        Ok(resp)
    }
}

fn throttle(uid: &str, rate: Rate, backend: SharedBackend) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).shared_backend(backend).strategy(FixedWindow).build().unwrap()
}

fn spawn_server<E: Endpoint + 'static>(rt: &tokio::runtime::Runtime, app: E) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Server::new_with_acceptor(TcpAcceptor::from_tokio(listener).unwrap()).run(app));
        addr
    })
}

fn have_wrk() -> bool {
    std::env::var("TRAFFIK_BENCH_CLIENT").map_or(true, |c| c != "builtin")
        && Command::new("wrk").arg("--version").output().is_ok()
}

/// This process's CPU time (user + system) so far, from `/proc/self/stat` (Linux; 10 ms ticks).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// One run: requests per second, and (with `wrk`, whose work is in another process) the
/// server's CPU time per request, which other load on the machine disturbs far less.
struct Run {
    rps: f64,
    cpu_per_request: Option<Duration>,
}

/// Requests per second and requests served, from `wrk` (one thread, 16 connections).
fn wrk(addr: SocketAddr, secs: u64) -> (f64, u64) {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s"), &format!("http://{addr}/")])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    (rps, requests)
}

/// Requests per second from 16 keep-alive connections on a separate runtime.
fn builtin(addr: SocketAddr, secs: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{addr}/");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (done, stop, url) = (Arc::clone(&done), Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().no_proxy().build().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let resp = client.get(&url).send().await.unwrap();
                        let _ = resp.bytes().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let n = done.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        n as f64 / elapsed
    })
}

fn main() {
    let secs: u64 = std::env::var("TRAFFIK_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let use_wrk = have_wrk();
    let measure = |addr: SocketAddr, secs: u64| {
        if !use_wrk {
            return Run { rps: builtin(addr, secs), cpu_per_request: None };
        }
        let before = cpu_time();
        let (rps, requests) = wrk(addr, secs);
        let cpu = before.zip(cpu_time()).map(|(b, a)| a.saturating_sub(b));
        Run { rps, cpu_per_request: cpu.map(|c| c / u32::try_from(requests.max(1)).unwrap_or(u32::MAX)) }
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    let memory: SharedBackend = Arc::new(InMemoryBackend::new());
    let redis_server = traffik_test_support::redis_server();
    let redis: SharedBackend =
        Arc::new(traffik_redis::RedisBackend::builder().url(&redis_server.url).namespace("bench").build().unwrap());
    // Like with like: every row is the same route and handler, the throttled ones with the
    // middleware added.
    let targets: Vec<(&str, SocketAddr)> = vec![
        ("unthrottled", spawn_server(&server_rt, Route::new().at("/", get(hello)))),
        (
            "throttled, in memory (never limited)",
            spawn_server(
                &server_rt,
                Route::new().at(
                    "/",
                    get(hello).with(throttle("bench-open", rate!("4000000000/h"), Arc::clone(&memory)).middleware()),
                ),
            ),
        ),
        (
            "throttled, Redis (never limited)",
            spawn_server(
                &server_rt,
                Route::new()
                    .at("/", get(hello).with(throttle("bench-redis", rate!("4000000000/h"), redis).middleware())),
            ),
        ),
        ("unthrottled, the same 429", spawn_server(&server_rt, Route::new().at("/", get(Refusal::sample(&server_rt))))),
        (
            "throttled, rejection path (429)",
            spawn_server(
                &server_rt,
                Route::new().at("/", get(hello).with(throttle("bench-closed", rate!("1/h"), memory).middleware())),
            ),
        ),
    ];

    let rounds = 3;
    println!(
        "client: {}; {secs} s per run, {rounds} interleaved rounds",
        if use_wrk { "wrk -t1 -c16" } else { "built-in" }
    );
    let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _round in 0..rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            let _ = measure(*addr, 1); // warm up connections and caches
            results[i].push(measure(*addr, secs));
        }
    }
    let mean_rps = |runs: &[Run]| runs.iter().map(|r| r.rps).sum::<f64>() / runs.len() as f64;
    // The least disturbed run is the best estimate of the cost of a request.
    let min_cpu = |runs: &[Run]| runs.iter().filter_map(|r| r.cpu_per_request).min();
    let base_rps = mean_rps(&results[0]);
    let base_cpu = min_cpu(&results[0]);
    println!(
        "{:<40} {:>10} {:>7} {:>14} {:>7} {:>10}",
        "endpoint", "req/s", "ratio", "server CPU/req", "ratio", "added CPU"
    );
    for ((name, _), runs) in targets.iter().zip(&results) {
        let rps = mean_rps(runs);
        let (cpu, cpu_ratio) = match (min_cpu(runs), base_cpu) {
            (Some(c), Some(b)) if !c.is_zero() => {
                (format!("{:.2} us", c.as_secs_f64() * 1e6), format!("{:.2}x", b.as_secs_f64() / c.as_secs_f64()))
            }
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let added = match (min_cpu(runs), base_cpu) {
            (Some(c), Some(b)) => format!("{:+.2} us", (c.as_secs_f64() - b.as_secs_f64()) * 1e6),
            _ => "-".to_owned(),
        };
        println!("{name:<40} {rps:>10.0} {:>6.2}x {cpu:>14} {cpu_ratio:>7} {added:>10}", rps / base_rps);
    }
    println!("(ratios > 1 are faster than unthrottled; the CPU ratio is baseline CPU/req over this row's)");
    // The rejection path against its own like-with-like baseline: the same 429, unthrottled.
    let row = |name: &str| targets.iter().position(|(n, _)| *n == name).unwrap();
    let (same, rejected) =
        (&results[row("unthrottled, the same 429")], &results[row("throttled, rejection path (429)")]);
    let cpu = match (min_cpu(same), min_cpu(rejected)) {
        (Some(b), Some(c)) => format!(", added CPU {:+.2} us", (c.as_secs_f64() - b.as_secs_f64()) * 1e6),
        _ => String::new(),
    };
    println!("rejection path vs the same 429 unthrottled: {:.2}x{cpu}", mean_rps(rejected) / mean_rps(same));
    drop(redis_server);
}
