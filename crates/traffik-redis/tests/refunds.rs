//! Refunds on Redis end to end, on the server's clock: a throttle's and a group's refunds give
//! back what their admissions took (the same figures as in memory), a refused decision has
//! nothing to give back, a refund is one `EVALSHA` (counted with `INFO commandstats`), and a
//! refund under an empty group tag finds the throttle's own key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use traffik::backend::{Amend, Mode, Operation};
use traffik::strategy::{
    CostAwareTokenBucket, FixedWindow, Gcra, Input, LeakyBucket, QuotaRollover, Reserved, SlidingWindowCounter,
    SlidingWindowLog, TokenBucket,
};
use traffik::{
    Backend, Clock, Decision, GroupDecision, InMemoryBackend, Key, ManualClock, Rate, RequestView, SharedBackend,
    Snapshot, StrategyHandle, Throttle, ThrottleGroup,
};
use traffik_redis::RedisBackend;
use traffik_test_support::redis_server;

const MINUTE_US: u64 = 60_000_000;

/// 2001-09-09: the throttles' clock.
const PAST_US: u64 = 1_000_000_000_000_000;

/// A backend on the server's clock (the default), with patient timeouts.
fn server_time(url: &str) -> RedisBackend {
    RedisBackend::builder()
        .url(url)
        .namespace(format!("refund-{}", common::run_id()))
        .connection_timeout(common::PATIENT)
        .command_timeout(common::PATIENT)
        .build()
        .expect("backend")
}

fn throttle(
    uid: &str,
    rate: impl traffik::builder::IntoRate,
    strategy: impl Into<StrategyHandle>,
    b: &SharedBackend,
) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        .shared_backend(Arc::clone(b))
        .strategy(strategy)
        .timeout(common::PATIENT)
        // A clock of the throttle's own, years behind the server's: what a decision is named
        // by must come from the server (the script's reply), or its refund finds no window.
        .clock(ManualClock::new(PAST_US))
        .build()
        .expect("throttle")
}

/// The same throttle on `memory`, on a clock that stands still in the middle of a minute.
fn in_memory(
    uid: &str,
    rate: &str,
    strategy: impl Into<StrategyHandle>,
    memory: &SharedBackend,
    clock: &ManualClock,
) -> Throttle {
    Throttle::builder()
        .uid(uid)
        .rate(rate)
        .shared_backend(Arc::clone(memory))
        .strategy(strategy)
        .clock(clock.clone())
        .build()
        .expect("throttle")
}

fn view(i: u8) -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([192, 0, 2, i], 4000))))
}

/// The server's `TIME`, in microseconds.
fn server_now(admin: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(admin).unwrap();
    s * 1_000_000 + us
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// What a 2/min fixed window answers to: hit, hit, refund of the first, hit, hit (refused),
/// refund of the refused one. `(admitted, remaining)` per hit, the refunds' results, and the
/// first decision.
async fn single_scenario(t: &Throttle, req: &RequestView<'_>) -> (Vec<(bool, Option<u64>)>, Vec<bool>, Decision) {
    let mut hits = Vec::new();
    let mut refunds = Vec::new();
    let first = t.hit(req).await.unwrap();
    hits.push((first.is_allowed(), first.remaining));
    let second = t.hit(req).await.unwrap();
    hits.push((second.is_allowed(), second.remaining));
    refunds.push(t.refund(&first).await.unwrap());
    let third = t.hit(req).await.unwrap();
    hits.push((third.is_allowed(), third.remaining));
    let refused = t.hit(req).await.unwrap();
    hits.push((refused.is_allowed(), refused.remaining));
    assert_eq!(refused.charged_at_us, 0, "a refused decision charged nothing");
    refunds.push(t.refund(&refused).await.unwrap());
    (hits, refunds, first)
}

#[test]
fn a_throttles_refund_on_the_servers_clock_gives_back_what_its_admission_took() {
    let server = redis_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend: SharedBackend = Arc::new(server_time(&server.url));
    let t = throttle("exports", "2/min", FixedWindow, &backend);
    let clock = ManualClock::new(28_333_334 * MINUTE_US + MINUTE_US / 2);
    let mem: SharedBackend = Arc::new(InMemoryBackend::new());
    let memory = in_memory("exports", "2/min", FixedWindow, &mem, &clock);
    let (hits, refunds, first) = rt.block_on(single_scenario(&memory, &view(0)));
    assert_eq!(hits, [(true, Some(1)), (true, Some(0)), (true, Some(0)), (false, Some(0))]);
    assert_eq!(refunds, [true, false]);
    assert_eq!(first.charged_at_us, clock.now_us());
    // The windows turn with the server's minutes: a run during which one turned is run again
    // (on another key), so that the figures compared are those of one window.
    for attempt in 1..=5 {
        let before = server_now(&mut admin);
        let (redis_hits, redis_refunds, first) = rt.block_on(single_scenario(&t, &view(attempt)));
        let after = server_now(&mut admin);
        if before / MINUTE_US != after / MINUTE_US {
            continue;
        }
        assert_eq!(redis_hits, hits, "the same figures as in memory");
        assert_eq!(redis_refunds, refunds);
        // Named by the server's time of the admission.
        assert!((before..=after).contains(&first.charged_at_us), "{before} <= {} <= {after}", first.charged_at_us);
        return;
    }
    panic!("a minute turned during each of five runs");
}

/// The members' figures that a refund restores: per member, what is left, and the fixed
/// window's usage or the bucket's theoretical arrival time (absolute, so it does not move
/// with the clock).
fn figures(stats: &[Snapshot]) -> Vec<(u64, u64)> {
    stats
        .iter()
        .map(|s| {
            let s = s.limited().expect("limited");
            let m = &s.metadata;
            (s.remaining, m.get("used").or_else(|| m.get("tat_us")).and_then(|v| v.as_u64()).expect("figure"))
        })
        .collect()
}

struct GroupRun {
    stat_after_one: Vec<(u64, u64)>,
    check_before: bool,
    refunded: usize,
    stat_after_refund: Vec<(u64, u64)>,
    check_after: bool,
    refused_refund: usize,
    first: GroupDecision,
}

/// A group of a 2/min fixed window and a 2/h token bucket: hit, stat, hit, check (refused),
/// refund of the first hit, stat, check (admitted), hit, hit (refused), refund of the refused.
async fn group_scenario(g: &ThrottleGroup, req: &RequestView<'_>) -> GroupRun {
    let first = g.hit(req).await.unwrap();
    assert!(first.is_allowed());
    let stat_after_one = figures(&g.stat(req).await.unwrap());
    assert!(g.hit(req).await.unwrap().is_allowed());
    let check_before = g.check(req).await.unwrap().is_allowed();
    let refunded = g.refund(&first).await.unwrap();
    let stat_after_refund = figures(&g.stat(req).await.unwrap());
    let check_after = g.check(req).await.unwrap().is_allowed();
    assert!(g.hit(req).await.unwrap().is_allowed());
    let refused = g.hit(req).await.unwrap();
    assert!(!refused.is_allowed());
    let refused_refund = g.refund(&refused).await.unwrap();
    GroupRun { stat_after_one, check_before, refunded, stat_after_refund, check_after, refused_refund, first }
}

#[test]
fn a_groups_refund_on_the_servers_clock_restores_every_member() {
    let server = redis_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend: SharedBackend = Arc::new(server_time(&server.url));
    let group = ThrottleGroup::new(
        "api",
        [throttle("window", "2/min", FixedWindow, &backend), throttle("bucket", "2/h", TokenBucket::new(), &backend)],
    )
    .unwrap();
    let clock = ManualClock::new(28_333_334 * MINUTE_US + MINUTE_US / 2);
    let mem: SharedBackend = Arc::new(InMemoryBackend::new());
    let memory = ThrottleGroup::new(
        "api",
        [
            in_memory("window", "2/min", FixedWindow, &mem, &clock),
            in_memory("bucket", "2/h", TokenBucket::new(), &mem, &clock),
        ],
    )
    .unwrap();
    let expected = rt.block_on(group_scenario(&memory, &view(0)));
    assert_eq!(expected.stat_after_refund, expected.stat_after_one);
    assert_eq!((expected.check_before, expected.refunded, expected.check_after), (false, 2, true));
    assert_eq!(expected.refused_refund, 0);
    for attempt in 1..=5 {
        let before = server_now(&mut admin);
        let run = rt.block_on(group_scenario(&group, &view(attempt)));
        let after = server_now(&mut admin);
        if before / MINUTE_US != after / MINUTE_US {
            continue;
        }
        // Both members are back where the first hit left them.
        assert_eq!(run.stat_after_refund, run.stat_after_one);
        assert_eq!((run.check_before, run.refunded, run.check_after), (false, 2, true));
        assert_eq!(run.refused_refund, 0);
        // What is left is what memory says; the bucket's arrival time is on the server's clock.
        let left = |r: &GroupRun| r.stat_after_refund.iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(left(&run), left(&expected));
        for member in &run.first.members {
            let at = member.charged_at_us;
            assert!((before..=after).contains(&at), "every member named by the server's time: {at}");
        }
        return;
    }
    panic!("a minute turned during each of five runs");
}

#[test]
fn a_refund_is_one_evalsha_for_every_built_in() {
    let server = common::private_server();
    let mut admin = common::admin(&server.url);
    let rt = rt();
    let backend: SharedBackend = Arc::new(server_time(&server.url));
    // Windows ten years long (the longest period a rate may have): no boundary falls between
    // a hit and its refund, however slow the machine.
    let rate = Rate::per_millis(3, 3660 * 86_400_000).unwrap();
    let strategies: Vec<StrategyHandle> = vec![
        FixedWindow.into(),
        SlidingWindowCounter.into(),
        SlidingWindowLog.into(),
        TokenBucket::new().into(),
        LeakyBucket.into(),
        Gcra::new().into(),
        QuotaRollover::builder().build().unwrap().into(),
        CostAwareTokenBucket::builder().build().unwrap().into(),
        Reserved::new(5).into(),
    ];
    for (i, s) in strategies.into_iter().enumerate() {
        let name = s.name().to_owned();
        let t = throttle(&format!("t{i}"), rate, s.clone(), &backend);
        let req = view(i as u8);
        let first = rt.block_on(t.hit(&req)).unwrap();
        assert!(first.is_allowed() && first.charged_at_us > PAST_US, "{name}: on the server's clock");
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).unwrap();
        assert!(rt.block_on(t.refund(&first)).unwrap(), "{name}: refunded");
        assert_eq!(common::calls(&mut admin, "evalsha"), 1, "{name}: one script call");
        assert_eq!(common::calls(&mut admin, "eval"), 0, "{name}: the script was loaded by the hit");
        assert_eq!(common::calls(&mut admin, "set"), 1, "{name}: the state written once, in the script");
        // Back to a full quota: what a fresh key says.
        let after = rt.block_on(t.check(&req)).unwrap();
        let fresh = rt.block_on(t.check(&view(200))).unwrap();
        assert_eq!((after.is_allowed(), after.remaining), (fresh.is_allowed(), fresh.remaining), "{name}");
        // Only leases are renewed: no call at all for another built-in.
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).unwrap();
        let key = Key::builder(&format!("renew-{i}")).build();
        let op = Operation { key: &key, strategy: &s, input: Input { now_us: 0, rate, cost: 1 }, mode: Mode::Consume };
        let renewed = rt.block_on(backend.amend(op, Amend::Renew { charged_at_us: first.charged_at_us }, None));
        assert!(!renewed.unwrap(), "{name}");
        assert_eq!(common::calls(&mut admin, "evalsha"), 0, "{name}: a renewal of a non-lease makes no call");
    }
}

#[test]
fn a_refund_under_an_empty_group_tag_finds_the_throttles_own_key() {
    let server = redis_server();
    let rt = rt();
    let backend = common::client_clock(&server.url);
    let s = StrategyHandle::from(FixedWindow);
    let key = Key::builder(&format!("own-{}", common::run_id())).build();
    let rate = Rate::per_millis(3, 60_000).unwrap();
    let now = 1_700_000_040_000_000;
    let op = |mode| Operation { key: &key, strategy: &s, input: Input { now_us: now, rate, cost: 1 }, mode };
    rt.block_on(async {
        assert!(backend.decide(op(Mode::Consume)).await.unwrap().is_admitted());
        let refund = Amend::Refund { charged_at_us: now };
        // A group with a tag keeps its members apart: nothing of theirs under this key.
        assert!(!backend.amend(op(Mode::Consume), refund, Some("elsewhere")).await.unwrap());
        // An empty tag (a deferred scope's group) decided on the throttle's own key.
        assert!(backend.amend(op(Mode::Consume), refund, Some("")).await.unwrap());
        assert_eq!(backend.decide(op(Mode::Peek)).await.unwrap().remaining, 2);
    });
}
