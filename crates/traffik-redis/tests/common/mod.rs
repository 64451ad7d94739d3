//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use traffik::SharedBackend;
use traffik_redis::RedisBackend;

/// How long a test waits for the server: generous, so that a machine busy with other builds and
/// tests (4 processes x 64 tasks here, CI's parallel test binaries) does not turn a slow answer
/// into a failure. The fault suites set their own, short timeouts.
pub const PATIENT: Duration = Duration::from_secs(30);

/// A backend on `url` in client-clock mode, with keys kept long enough for any test.
pub fn client_clock(url: &str) -> RedisBackend {
    RedisBackend::builder()
        .url(url)
        .namespace("t")
        .use_client_clock(true)
        .connection_timeout(PATIENT)
        .command_timeout(PATIENT)
        .min_ttl(Duration::from_secs(600))
        .build()
        .expect("backend")
}

/// The same over a bb8 pool.
pub fn client_clock_pooled(url: &str, size: u32) -> RedisBackend {
    RedisBackend::builder()
        .url(url)
        .namespace("t")
        .pooled(size)
        .use_client_clock(true)
        .connection_timeout(PATIENT)
        .command_timeout(PATIENT)
        .min_ttl(Duration::from_secs(600))
        .build()
        .expect("backend")
}

/// Shared form.
pub fn shared(b: RedisBackend) -> SharedBackend {
    Arc::new(b)
}

pub mod cluster;

/// A synchronous admin connection for assertions.
pub fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).expect("client").get_connection().expect("admin connection")
}

/// Asserts that every key on the server has a time to live (`PTTL` > 0, or -2: expired since
/// `SCAN` listed it; -1, no time to live, is a bug) and returns how many keys it saw.
pub fn assert_every_key_expires(admin: &mut redis::Connection) -> usize {
    let mut cursor = 0u64;
    let mut seen = 0;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(100).query(admin).expect("scan");
        for k in batch {
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query(admin).expect("pttl");
            assert!(ttl > 0 || ttl == -2, "key {k} has PTTL {ttl}");
            seen += 1;
        }
        cursor = next;
        if cursor == 0 {
            return seen;
        }
    }
}

/// A redis-server of this test's own, even when `TRAFFIK_REDIS_URL` names a shared one: for
/// tests that assert on server-wide counters (`INFO commandstats`, `DBSIZE`, `KEYS *`) or stop
/// the server.
pub struct PrivateServer {
    /// `redis://127.0.0.1:<port>/`
    pub url: String,
    /// The port.
    pub port: u16,
    /// The process.
    pub guard: traffik_test_support::ProcessGuard,
}

/// Starts `redis-server` on `port` (persistence off).
pub fn start_redis_on(port: u16) -> traffik_test_support::ProcessGuard {
    let mut cmd = std::process::Command::new(traffik_test_support::require_binary("redis-server", "redis-server"));
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut g = traffik_test_support::ProcessGuard::spawn(cmd, "redis-server");
    traffik_test_support::wait_for_port(([127, 0, 0, 1], port).into(), g.child(), "redis-server");
    g
}

/// Starts a private server on a free port, checking that the server answering is ours.
pub fn private_server() -> PrivateServer {
    for _ in 0..10 {
        let port = traffik_test_support::free_port();
        let mut guard = start_redis_on(port);
        let url = format!("redis://127.0.0.1:{port}/");
        let pid = guard.child().id();
        let ours = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
            .is_ok_and(|info| info.lines().any(|l| l.trim() == format!("process_id:{pid}")));
        if ours {
            return PrivateServer { url, port, guard };
        }
        guard.stop();
    }
    panic!("could not start a private redis-server on a free port");
}

/// Unique per test run, so that a shared server (`TRAFFIK_REDIS_URL`) never hands a run the
/// state of an earlier one.
pub fn run_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// How many times the server has run command `name` (INFO commandstats), 0 if never.
pub fn calls(c: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).expect("INFO commandstats");
    info.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(&format!("cmdstat_{name}:"))?;
            rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()
        })
        .unwrap_or(0)
}
