//! Real servers for tests: starts `redis-server` / `memcached` on free loopback ports, or uses
//! `TRAFFIK_REDIS_URL` / `TRAFFIK_MEMCACHED` when set. A missing binary is a loud failure with
//! instructions, never a skipped test. Servers are killed when their guard drops. A loopback
//! TCP fault proxy ([`FaultProxy`]) puts latency, dropped and reset connections and half-open
//! peers between a client and a server.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod memcached;
mod proxy;
mod redis;

pub use memcached::{MemcachedServer, memcached_server};
pub use proxy::{Fault, FaultProxy};
pub use redis::{RedisServer, RedisTlsServer, redis_server, redis_tls_server};

/// A free TCP port on 127.0.0.1 (the OS picks it; a race with another process is possible but
/// unlikely, and shows up as a start failure).
pub fn free_port() -> u16 {
    // ok: test support; a machine that cannot bind loopback cannot run these tests at all.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"); // ok: see above
    listener.local_addr().expect("local addr").port() // ok: see above
}

/// Finds `name` on PATH or in the usual system directories, or panics saying how to install it.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is required by this test but was not found on PATH. Install it \
         (`apt-get install -y {package}`, or run scripts/test which does) or point the tests at a running \
         server with the environment variable documented in README.md."
    );
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before accepting connections on {addr}: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not accept connections on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Option<Child>,
}

impl ProcessGuard {
    /// Spawns `cmd` with output discarded.
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        // Output is discarded: an unread pipe could fill up and stall the server.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {what}: {e}"));
        ProcessGuard { child: Some(child) }
    }

    /// The child.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("process already stopped") // ok: test support, misuse is a test bug
    }

    /// Sends `SIGSTOP`: the process stops answering but keeps its sockets (the kernel still
    /// accepts connections and buffers requests), like a server stuck in a long pause.
    pub fn pause(&mut self) {
        self.signal("STOP");
    }

    /// Sends `SIGCONT` after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal("CONT");
    }

    fn signal(&mut self, name: &str) {
        let pid = self.child().id().to_string();
        let kill = require_binary("kill", "procps");
        let status = Command::new(kill)
            .args([format!("-{name}"), pid.clone()])
            .status()
            .unwrap_or_else(|e| panic!("could not run kill -{name} {pid}: {e}"));
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// Kills the process now (to test a backend that goes down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
