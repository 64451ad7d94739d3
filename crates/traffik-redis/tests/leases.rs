//! Concurrency limits on a real redis-server, with the server's clock: exactly N in flight
//! under 64 clients, cancelled and panicking handlers release, a group of a rate and a
//! concurrency limit, and a killed process's slots come back after the lease time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use traffik::strategy::{Concurrency, FixedWindow};
use traffik::{Throttle, ThrottleGroup};
use traffik_property_tests::leases;
use traffik_redis::RedisBackend;
use traffik_test_support::redis_server;

const CHILD: &str = "TRAFFIK_LEASE_CHILD";
const KILLED: &str = "a_killed_processs_slots_come_back_after_the_lease_time";
/// Generous: asking again until admitted stops at the first success.
const BOUND: Duration = Duration::from_secs(120);

fn backend(url: &str, namespace: &str) -> RedisBackend {
    RedisBackend::builder().url(url).namespace(namespace).build().expect("backend")
}

fn conc(backend: RedisBackend, uid: &str, rate: &str) -> Throttle {
    Throttle::builder().uid(uid).rate(rate).backend(backend).strategy(Concurrency).build().expect("throttle")
}

fn namespace(name: &str) -> String {
    format!("{name}-{}", common::run_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_in_flight_under_64_concurrent_clients() {
    let server = redis_server();
    let t = conc(backend(&server.url, &namespace("n")), "uploads", "5/30s");
    leases::exactly_n_in_flight(&t, 5).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_aborted_and_panicking_handlers_release() {
    let server = redis_server();
    let t = conc(backend(&server.url, &namespace("c")), "jobs", "1/60s");
    leases::cancelled_requests_release(&t, BOUND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_rate_and_a_concurrency_limit_in_one_script() {
    let server = redis_server();
    let b = backend(&server.url, &namespace("g"));
    let rate = Throttle::builder().uid("per-minute").rate("100/min").backend(b.clone()).strategy(FixedWindow).build();
    let group = ThrottleGroup::new("api", [rate.unwrap(), conc(b, "in-flight", "2/30s")]).unwrap();
    leases::group_of_rate_and_concurrency(&group, BOUND).await.unwrap();
}

/// A child process takes both slots and is killed; they come back once their lease (6 s,
/// renewed every 2 s while the child lived) expires on the server's clock.
#[test]
fn a_killed_processs_slots_come_back_after_the_lease_time() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (url, ns) = spec.split_once('|').expect("url|namespace");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(leases::hold_until_killed(&conc(backend(url, ns), "killed", "2/6s"), 2));
    }
    let server = redis_server();
    let ns = namespace("k");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([KILLED, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}|{ns}", server.url))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let t = conc(backend(&server.url, &ns), "killed", "2/6s");
        leases::killed_holder_comes_back(&t, child, BOUND).await.unwrap();
    });
}

/// Corrupt or hostile stored state (another writer, a bug, a manual edit) never fails an
/// operation and never yields a wait beyond one lease time: unreadable leases are not believed,
/// expiries are capped at now + T, at most 1024 leases are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_lease_state_is_survived_and_bounded() {
    use traffik::backend::{Amend, Mode, Operation};
    use traffik::strategy::{Input, VerdictKind};
    use traffik::{Backend, Key, Rate, StrategyHandle};

    let server = redis_server();
    let b = backend(&server.url, &namespace("corrupt"));
    let mut admin = common::admin(&server.url);
    let strategy = StrategyHandle::new(Concurrency);
    let rate = Rate::per_millis(3, 30_000).unwrap();
    let many = format!("30000000/{}", vec!["1:99999999999999999:1"; 5000].join(" "));
    let huge = "30000000/99999999999999999999999999:99999999999999999999999999:99999999999999999999";
    let states =
        ["", "garbage", "30000000/", "5/1:2", "30000000/1:2:3:4 x:y:z", huge, "99999999999999999999999/1:1:1", &many];
    for (i, raw) in states.iter().enumerate() {
        let key = Key::builder(&format!("corrupt-{i}")).build();
        let stored = b.storage_key(&key, &strategy);
        let _: () = redis::cmd("SET").arg(&stored).arg(*raw).query(&mut admin).unwrap();
        let input = Input { now_us: 0, rate, cost: 1 };
        let op = |mode| Operation { key: &key, strategy: &strategy, input, mode };
        let v = b.decide(op(Mode::Consume)).await.unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        if v.kind == VerdictKind::Deny {
            assert!(v.wait_us <= 30_000_000, "{raw:?}: {v:?}");
        }
        assert!(v.remaining <= 3, "{raw:?}: {v:?}");
        b.stat(op(Mode::Peek)).await.unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        for amend in [Amend::Renew { charged_at_us: 1 }, Amend::Refund { charged_at_us: 1 }] {
            b.amend(op(Mode::Consume), amend, None).await.unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        }
    }
}
