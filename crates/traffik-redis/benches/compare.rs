//! Prints, in one run, against a redis-server it starts itself:
//!
//! * sequential latency per decision of each strategy next to a raw `EVALSHA` of a trivial
//!   script on the same connection (target: <= 1.15x), as medians of single operations
//!   interleaved one by one (so the machine's drift cancels);
//! * throughput with 64 concurrent tasks next to the raw script at the same concurrency
//!   (target: >= 0.8x);
//!
//! for one shared multiplexed connection and for a bb8 pool.
//!
//! `cargo bench -p traffik-redis --bench compare`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use traffik::backend::{Mode, Operation};
use traffik::strategy::Builtin;
use traffik::strategy::{
    CostAwareTokenBucket, FixedWindow, Gcra, Input, LeakyBucketWithQueue, QuotaRollover, SlidingWindowCounter,
    SlidingWindowLog, TokenBucket,
};
use traffik::{Backend, Key, Rate, StrategyHandle};
use traffik_redis::RedisBackend;
use traffik_redis::bb8_redis::RedisConnectionManager;
use traffik_redis::redis::{self, Script};

const SEQ_OPS: usize = 500;
const TASKS: usize = 64;
const OPS_PER_TASK: usize = 100;
const KEYS: usize = 10_000;
/// Concurrent baseline and strategy batches alternate this many times (and sequential rounds
/// of SEQ_OPS interleaved operations run this many times); medians are reported, so load from
/// other processes on the machine hits both sides alike.
const ROUNDS: usize = 21;

/// The raw baselines on the same connection flavour: a trivial script (`sha` = "return 1"),
/// or the strategy's own script invoked by hand (`strategy` set).
#[derive(Clone)]
enum Raw {
    Mux(redis::aio::MultiplexedConnection),
    Pool(traffik_redis::bb8::Pool<RedisConnectionManager>),
}

thread_local! {
    static STRATEGY_ARGS: std::cell::RefCell<Option<(String, Vec<u64>)>> = const { std::cell::RefCell::new(None) };
}

impl Raw {
    async fn call(&self, sha: &str, key: &str) {
        let mut cmd = redis::cmd("EVALSHA");
        match raw_args(sha) {
            None => {
                cmd.arg(sha).arg(1).arg(key);
            }
            Some((sha, args)) => {
                cmd.arg(sha).arg(1).arg(key).arg("c").arg("").arg(1).arg(1);
                for a in args {
                    cmd.arg(a);
                }
            }
        }
        let _: redis::Value = match self {
            Raw::Mux(c) => cmd.query_async(&mut c.clone()).await.unwrap(),
            Raw::Pool(p) => {
                let mut c = p.get().await.unwrap();
                cmd.query_async(&mut *c).await.unwrap()
            }
        };
    }
}

/// `sha` of the form `script:<sha>:<arg>,<arg>...` selects a strategy script with its
/// parameters; anything else is the trivial script.
fn raw_args(sha: &str) -> Option<(&str, Vec<&str>)> {
    let rest = sha.strip_prefix("script:")?;
    let (sha, args) = rest.split_once(':')?;
    Some((sha, args.split(',').collect()))
}

fn keys() -> Vec<Key> {
    (0..KEYS).map(|i| Key::builder("bench").part(format!("client-{i}").as_bytes()).build()).collect()
}

async fn decide(b: &RedisBackend, key: &Key, s: &StrategyHandle, rate: Rate) {
    let op = Operation { key, strategy: s, input: Input { now_us: 0, rate, cost: 1 }, mode: Mode::Consume };
    b.decide(op).await.unwrap();
}

/// Sequential latency samples: the trivial script, the strategy script sent raw, and the
/// backend's decision, interleaved one operation at a time (in rotating order) so that drift in
/// the machine's speed hits all three alike. Each operation is timed on its own.
struct Seq<'a> {
    raw: &'a Raw,
    trivial: &'a str,
    trivial_keys: &'a [String],
    same: &'a str,
    same_keys: &'a [String],
    backend: &'a RedisBackend,
    strategy: &'a StrategyHandle,
    keys: &'a [Key],
    rate: Rate,
}

impl Seq<'_> {
    async fn run(&self, round: usize, samples: &mut [Vec<Duration>; 3]) {
        for i in 0..SEQ_OPS {
            let n = round * SEQ_OPS + i;
            for step in 0..3 {
                let which = (n + step) % 3;
                let t = Instant::now();
                match which {
                    0 => self.raw.call(self.trivial, &self.trivial_keys[n % self.trivial_keys.len()]).await,
                    1 => self.raw.call(self.same, &self.same_keys[n % self.same_keys.len()]).await,
                    _ => decide(self.backend, &self.keys[n % self.keys.len()], self.strategy, self.rate).await,
                }
                samples[which].push(t.elapsed());
            }
        }
    }
}

async fn par_raw(raw: &Raw, sha: &Arc<str>, keys: &Arc<Vec<String>>) -> f64 {
    let t = Instant::now();
    let mut hs = Vec::new();
    for task in 0..TASKS {
        let (raw, sha, keys) = (raw.clone(), Arc::clone(sha), Arc::clone(keys));
        hs.push(tokio::spawn(async move {
            for i in 0..OPS_PER_TASK {
                raw.call(&sha, &keys[(task * OPS_PER_TASK + i) % keys.len()]).await;
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    (TASKS * OPS_PER_TASK) as f64 / t.elapsed().as_secs_f64()
}

async fn par_strategy(b: &RedisBackend, s: &StrategyHandle, keys: &Arc<Vec<Key>>, rate: Rate) -> f64 {
    let t = Instant::now();
    let mut hs = Vec::new();
    for task in 0..TASKS {
        let (b, s, keys) = (b.clone(), s.clone(), Arc::clone(keys));
        hs.push(tokio::spawn(async move {
            for i in 0..OPS_PER_TASK {
                decide(&b, &keys[(task * OPS_PER_TASK + i) % keys.len()], &s, rate).await;
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    (TASKS * OPS_PER_TASK) as f64 / t.elapsed().as_secs_f64()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let server = traffik_test_support::redis_server();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("traffik-redis bench: redis-server at {}", server.url);
    println!("tokio runtime: multi_thread, 2 worker threads; client clock off (scripts read TIME)");
    println!(
        "sequential: median of {} single operations of each kind, interleaved one by one, over {KEYS} keys; \
         concurrent: median of {ROUNDS} alternating rounds of {TASKS} tasks x {OPS_PER_TASK} decisions",
        ROUNDS * SEQ_OPS
    );
    let strategies: Vec<(&str, StrategyHandle)> = vec![
        ("fixed_window", FixedWindow.into()),
        ("sliding_window_counter", SlidingWindowCounter.into()),
        ("sliding_window_log", SlidingWindowLog.into()),
        ("token_bucket", TokenBucket::new().into()),
        ("leaky_bucket_with_queue", LeakyBucketWithQueue::new(10).into()),
        ("gcra", Gcra::new().into()),
        ("quota_rollover", QuotaRollover::builder().max_percent(50).build().unwrap().into()),
        ("cost_aware_token_bucket", CostAwareTokenBucket::builder().build().unwrap().into()),
    ];
    let rate = Rate::per_millis(1_000, 60_000).unwrap();
    rt.block_on(async {
        let client = redis::Client::open(server.url.as_str()).unwrap();
        let trivial = Script::new("return 1");
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let sha: String = trivial.prepare_invoke().load_async(&mut conn).await.unwrap();
        let pool = traffik_redis::bb8::Pool::builder()
            .max_size(16)
            .test_on_check_out(false)
            .build(RedisConnectionManager::new(server.url.as_str()).unwrap())
            .await
            .unwrap();
        let flavours = vec![
            ("multiplexed", Raw::Mux(conn.clone()), RedisBackend::builder().connection(conn.clone()).build().unwrap()),
            ("bb8 pool(16)", Raw::Pool(pool.clone()), RedisBackend::builder().pool(pool.clone()).build().unwrap()),
        ];
        let keys = Arc::new(keys());
        let raw_keys: Arc<Vec<String>> =
            Arc::new(keys.iter().map(|k| format!("traffik:{{{}}}:raw", k.as_str())).collect());
        let sha: Arc<str> = sha.into();
        for (name, raw, backend) in &flavours {
            backend.ready().await.unwrap();
            backend.reset().await.unwrap();
            // Warm up (connections, script cache).
            for (_, s) in &strategies {
                decide(backend, &keys[0], s, rate).await;
            }
            for k in raw_keys.iter().take(SEQ_OPS) {
                raw.call(&sha, k).await;
            }
            println!("\n== {name} ==");
            println!(
                "seq: sequential µs per decision vs a trivial EVALSHA and vs the same strategy script sent raw; \
                 64x: throughput vs the same script sent raw, and the trivial script's; \
                 srv us: server µs per EVALSHA during the 64x rounds (all three mixed)"
            );
            println!(
                "{:<24} {:>7} {:>7} {:>6} {:>8} {:>6}  {:>9} {:>9} {:>6} {:>9} {:>6}",
                "strategy",
                "seq us",
                "trivial",
                "ratio",
                "raw same",
                "ratio",
                "64x op/s",
                "raw same",
                "ratio",
                "trivial",
                "srv us"
            );
            for (sname, s) in &strategies {
                backend.reset().await.unwrap();
                let b = s.builtin().unwrap();
                let script = traffik_redis::lua_script(&b).unwrap();
                let params: Vec<String> = match b {
                    Builtin::Meter(spec) => {
                        let p = spec.params(&rate);
                        [p.interval_us, p.capacity_us, p.queue_us, p.period_us].map(|n| n.to_string()).to_vec()
                    }
                    Builtin::QuotaRollover(spec) => {
                        [rate.limit(), rate.period_us(), spec.cap(rate.limit())].map(|n| n.to_string()).to_vec()
                    }
                    Builtin::CostAware(spec) => {
                        let p = spec.plain().params(&rate);
                        let mut v = [p.interval_us, p.capacity_us, p.period_us].map(|n| n.to_string()).to_vec();
                        v.push(format!("{} {} {}", spec.reference_milli, spec.max_slowdown_milli, spec.window));
                        v
                    }
                    _ => [rate.limit(), rate.period_us()].map(|n| n.to_string()).to_vec(),
                };
                let same: Arc<str> = format!("script:{}:{}", script.sha1, params.join(",")).into();
                let same_keys: Arc<Vec<String>> =
                    Arc::new(keys.iter().map(|k| format!("traffik:{{{}}}:raw-{}", k.as_str(), s.name())).collect());
                let (mut raw_lats, mut same_lats, mut lats): (Vec<Duration>, Vec<Duration>, Vec<Duration>);
                let (mut raw_tps, mut tps, mut same_tps) = (vec![], vec![], vec![]);
                let seq = Seq {
                    raw,
                    trivial: &sha,
                    trivial_keys: &raw_keys,
                    same: &same,
                    same_keys: &same_keys,
                    backend,
                    strategy: s,
                    keys: &keys,
                    rate,
                };
                let mut samples = [vec![], vec![], vec![]];
                for round in 0..ROUNDS {
                    seq.run(round, &mut samples).await;
                }
                let [r, sm, l] = samples;
                (raw_lats, same_lats, lats) = (r, sm, l);
                let mut admin = client.get_multiplexed_async_connection().await.unwrap();
                let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await.unwrap();
                for _ in 0..ROUNDS {
                    raw_tps.push(par_raw(raw, &sha, &raw_keys).await);
                    same_tps.push(par_raw(raw, &same, &same_keys).await);
                    tps.push(par_strategy(backend, s, &keys, rate).await);
                }
                let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await.unwrap();
                let evalsha_us = info
                    .lines()
                    .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
                    .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec_per_call=")))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                let (raw_lat, same_lat, lat) = (median(&mut raw_lats), median(&mut same_lats), median(&mut lats));
                let (raw_tp, tp, same_tp) = (median_f(&mut raw_tps), median_f(&mut tps), median_f(&mut same_tps));
                println!(
                    "{sname:<24} {:>7.1} {:>7.1} {:>5.2}x {:>8.1} {:>5.2}x  {:>9.0} {:>9.0} {:>5.2}x {:>9.0} {:>6.2}",
                    lat.as_secs_f64() * 1e6,
                    raw_lat.as_secs_f64() * 1e6,
                    lat.as_secs_f64() / raw_lat.as_secs_f64(),
                    same_lat.as_secs_f64() * 1e6,
                    lat.as_secs_f64() / same_lat.as_secs_f64(),
                    tp,
                    same_tp,
                    tp / same_tp,
                    raw_tp,
                    evalsha_us,
                );
            }
            backend.reset().await.unwrap();
        }
    });
}
