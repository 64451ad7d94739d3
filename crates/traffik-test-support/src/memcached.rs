//! `memcached` for tests.

use std::net::SocketAddr;
use std::process::Command;

use crate::{ProcessGuard, free_port, require_binary, wait_for_port};

/// A memcached server for one test (or the one named by `TRAFFIK_MEMCACHED`, `host:port`).
#[derive(Debug)]
pub struct MemcachedServer {
    /// `127.0.0.1:<port>`
    pub addr: String,
    guard: Option<ProcessGuard>,
}

impl MemcachedServer {
    /// Stops the server (no-op for an external one).
    pub fn stop(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            g.stop();
        }
    }

    /// The process, for signals ([`ProcessGuard::pause`]); `None` for an external server.
    pub fn process(&mut self) -> Option<&mut ProcessGuard> {
        self.guard.as_mut()
    }

    /// Whether this server was started by the test.
    pub fn is_owned(&self) -> bool {
        self.guard.is_some()
    }

    /// Starts a `memcached` of this test's own on a free loopback port, even when
    /// `TRAFFIK_MEMCACHED` names a shared one: for tests that stop their server, count its
    /// items or need several servers.
    pub fn spawn() -> MemcachedServer {
        Self::spawn_on(free_port())
    }

    /// Starts a `memcached` of this test's own on `port` (to restart a stopped one where its
    /// clients expect it).
    pub fn spawn_on(port: u16) -> MemcachedServer {
        let bin = require_binary("memcached", "memcached");
        let mut cmd = Command::new(bin);
        cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", "64"]);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let mut guard = ProcessGuard::spawn(cmd, "memcached");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_port(addr, guard.child(), "memcached");
        MemcachedServer { addr: format!("127.0.0.1:{port}"), guard: Some(guard) }
    }
}

/// Starts `memcached` on a free loopback port (as `nobody` when running as root, which
/// memcached requires), or returns the server at `TRAFFIK_MEMCACHED`.
pub fn memcached_server() -> MemcachedServer {
    if let Ok(addr) = std::env::var("TRAFFIK_MEMCACHED") {
        return MemcachedServer { addr, guard: None };
    }
    MemcachedServer::spawn()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
