//! The strategy scripts run by hand (`EVAL` with chosen arguments): the exact text of the
//! state they store (with the period it was written under), numbers up to 2^53 - 1 written
//! digit for digit, and the time to live cap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use redis::Value;
use traffik::strategy::{Builtin, MeterSpec};
use traffik_test_support::redis_server;

/// 2^53 - 1: the largest timestamp a client clock may send.
const TOP: u64 = (1 << 53) - 1;

struct Raw {
    conn: redis::Connection,
    prefix: String,
}

impl Raw {
    fn new(url: &str) -> Self {
        Raw { conn: common::admin(url), prefix: format!("scripts-{:x}", common::run_id()) }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{{{name}}}", self.prefix)
    }

    /// Runs `builtin`'s script: `ARGV = mode, now, min_ttl_ms, cost, params...`.
    fn run(&mut self, builtin: Builtin, key: &str, args: &[&str]) -> Vec<i64> {
        let script = traffik_redis::lua_script(&builtin).expect("script");
        let reply: Value =
            redis::cmd("EVAL").arg(script.source).arg(1).arg(key).arg(args).query(&mut self.conn).unwrap();
        let Value::Array(items) = reply else { panic!("reply {reply:?}") };
        items
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i,
                other => panic!("field {other:?}"),
            })
            .collect()
    }

    fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.conn).unwrap()
    }

    fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.conn).unwrap()
    }
}

#[test]
fn the_sliding_log_text_is_rebuilt_exactly() {
    let server = redis_server();
    let mut r = Raw::new(&server.url);
    let k = r.key("log");
    let swl = Builtin::SlidingWindowLog;
    // limit 10 per second; (now, cost) -> stored text.
    let steps: [(u64, u64, &str); 13] = [
        (5, 1, "1000000/5:1"),
        (5, 2, "1000000/5:3"),
        (7, 1, "1000000/5:3 7:1"),
        (7, 1, "1000000/5:3 7:2"),
        (9, 1, "1000000/5:3 7:2 9:1"),
        // A lagging clock: inserted in order, or added to an older entry.
        (6, 1, "1000000/5:3 6:1 7:2 9:1"),
        (5, 1, "1000000/5:4 6:1 7:2 9:1"),
        // The entries at 5 and 6 have expired.
        (1_000_006, 1, "1000000/7:2 9:1 1000006:1"),
        (1_000_006, 2, "1000000/7:2 9:1 1000006:3"),
        (1_000_008, 1, "1000000/9:1 1000006:3 1000008:1"),
        // A period or more ahead of the clock (1000008 at 8) is not believed, and dropped.
        (8, 1, "1000000/8:1 9:1 1000006:3"),
        (1_000_008, 2, "1000000/9:1 1000006:3 1000008:2"),
        (2_000_000, 1, "1000000/1000006:3 1000008:2 2000000:1"),
    ];
    for (now, cost, text) in steps {
        let reply = r.run(swl, &k, &["c", &now.to_string(), "1", &cost.to_string(), "10", "1000000"]);
        assert_eq!(reply[0], 0, "admitted at {now}");
        assert_eq!(r.get(&k).as_deref(), Some(text), "at {now}");
    }
    // Peeks and denials leave the text alone.
    let reply = r.run(swl, &k, &["p", "2000000", "1", "4", "10", "1000000"]);
    assert_eq!(reply, vec![0, 0, 0, 1_000_000, 0, 0]);
    let reply = r.run(swl, &k, &["c", "2000000", "1", "5", "10", "1000000"]);
    assert_eq!(reply, vec![2, 4, 6, 1_000_000, 0, 0]);
    assert_eq!(r.get(&k).as_deref(), Some("1000000/1000006:3 1000008:2 2000000:1"));
    // Refunds (mode `r`, the admission's time last): off the entry at exactly that time, which
    // goes when nothing is left of it; a time with no entry changes nothing.
    let refund = |cost: &'static str, at: &'static str| ["r", "2000001", "1", cost, "10", "1000000", at];
    assert_eq!(r.run(swl, &k, &refund("1", "1000006")), vec![1]);
    assert_eq!(r.get(&k).as_deref(), Some("1000000/1000006:2 1000008:2 2000000:1"));
    assert_eq!(r.run(swl, &k, &refund("5", "1000006")), vec![1]);
    assert_eq!(r.get(&k).as_deref(), Some("1000000/1000008:2 2000000:1"));
    assert_eq!(r.run(swl, &k, &refund("1", "1000007")), vec![0]);
    assert_eq!(r.run(swl, &k, &refund("2", "2000000")), vec![1]);
    assert_eq!(r.run(swl, &k, &refund("2", "1000008")), vec![1]);
    assert_eq!(r.get(&k).as_deref(), Some("1000000/"));
    assert_eq!(r.run(swl, &k, &refund("1", "1000008")), vec![0]);
}

#[test]
fn consume_replies_carry_the_servers_time_when_it_keeps_time() {
    let server = redis_server();
    let mut r = Raw::new(&server.url);
    let k = r.key("at");
    let time = |c: &mut redis::Connection| {
        let (s, us): (u64, u64) = redis::cmd("TIME").query(c).unwrap();
        i64::try_from(s * 1_000_000 + us).unwrap()
    };
    let fw = Builtin::FixedWindow;
    let before = time(&mut r.conn);
    let reply = r.run(fw, &k, &["c", "", "60000", "1", "5", "60000000"]);
    let after = time(&mut r.conn);
    assert_eq!(reply[..5], [0, 4, 0, reply[3], 0]);
    assert!((before..=after).contains(&reply[5]), "{before} <= {} <= {after}", reply[5]);
    // The client's clock: no time of the server's.
    let reply = r.run(fw, &k, &["c", "1000", "60000", "1", "5", "60000000"]);
    assert_eq!(reply[5], 0);
    // A refund named by the server's time of its admission gives the cost back. A window of
    // 2^52 µs (about 143 years): the one now falls in lasts until 2112.
    let w = "4503599627370496";
    let _: () = redis::cmd("DEL").arg(&k).query(&mut r.conn).unwrap();
    let reply = r.run(fw, &k, &["c", "", "60000", "1", "5", w]);
    assert_eq!(reply[..2], [0, 4]);
    let at = reply[5].to_string();
    assert_eq!(r.run(fw, &k, &["r", "", "60000", "1", "5", w, &at]), vec![1]);
    assert_eq!(r.run(fw, &k, &["p", "", "60000", "1", "5", w])[1], 4);
    // Named by a time in another window: nothing to give back.
    assert_eq!(r.run(fw, &k, &["c", "", "60000", "1", "5", w])[1], 4);
    assert_eq!(r.run(fw, &k, &["r", "", "60000", "1", "5", w, w]), vec![0]);
    let _: () = redis::cmd("DEL").arg(&k).query(&mut r.conn).unwrap();
}

#[test]
fn numbers_up_to_2_pow_53_are_stored_digit_for_digit() {
    let server = redis_server();
    let mut r = Raw::new(&server.url);
    let top = TOP.to_string();
    // (strategy, key, parameters, stored text, tokens left)
    let cases: [(Builtin, &str, Vec<&str>, &str, i64); 4] = [
        // period 1 ms: the latest admission is TOP itself.
        (Builtin::FixedWindow, "fw", vec!["5", "1000"], "9007199254740991 1 1000", 4),
        (Builtin::SlidingWindowCounter, "swc", vec!["5", "1000"], "9007199254740991 0 1 1000", 4),
        (Builtin::SlidingWindowLog, "swl", vec!["5", "1000"], "1000/9007199254740991:1", 4),
        // interval 1 µs, capacity 2^50 µs: tat = TOP + 1 = 2^53 is exact too.
        (
            Builtin::Meter(MeterSpec::LeakyBucket),
            "meter",
            vec!["1", "1125899906842624", "0", "1000"],
            "9007199254740992",
            (1 << 50) - 1,
        ),
    ];
    for (builtin, name, params, text, left) in cases {
        let k = r.key(name);
        // A minimum time to live of a minute: the state is read back below, and its own time
        // to live (9 µs for the windows) would let it expire first on a slow machine.
        let mut args = vec!["c", top.as_str(), "60000", "1"];
        args.extend(params);
        let reply = r.run(builtin, &k, &args);
        assert_eq!(reply[..2], [0, left], "{name}");
        assert_eq!(r.get(&k).as_deref(), Some(text), "{name}");
    }
    // A meter whose time to live is exactly known: one hour after a one-hour interval. The
    // hour leaves a minute of slack for a slow machine between the script and PTTL.
    let k = r.key("ttl");
    let hour = "3600000000";
    let reply = r.run(Builtin::Meter(MeterSpec::LeakyBucket), &k, &["c", "1000000", "1", "1", hour, hour, "0", hour]);
    assert_eq!(reply, vec![0, 0, 0, 3_600_000_000, 0, 0]);
    let ttl = r.pttl(&k);
    assert!((3_540_000..=3_600_000).contains(&ttl), "PTTL {ttl}");
    let _: () = redis::cmd("DEL").arg(&k).query(&mut r.conn).unwrap();
}

#[test]
fn the_time_to_live_is_capped_at_max_ttl_ms() {
    let server = redis_server();
    let mut r = Raw::new(&server.url);
    let k = r.key("cap");
    // A minimum time to live beyond the cap, and one exactly at it.
    for min_ttl in ["99999999999999999", "1000000000000000"] {
        let reply = r.run(Builtin::FixedWindow, &k, &["c", "", min_ttl, "1", "1000", "1000"]);
        assert_eq!(reply[0], 0);
        let ttl = r.pttl(&k);
        assert!((1_000_000_000_000_000 - 60_000..=1_000_000_000_000_000).contains(&ttl), "PTTL {ttl}");
    }
    // Not left behind on a shared server for 31,700 years.
    let _: () = redis::cmd("DEL").arg(&k).query(&mut r.conn).unwrap();
}
