//! `redis-server` for tests.

use std::net::SocketAddr;
use std::process::Command;

use crate::{ProcessGuard, free_port, require_binary, wait_for_port};

/// A Redis server for one test (or the one named by `TRAFFIK_REDIS_URL`).
#[derive(Debug)]
pub struct RedisServer {
    /// `redis://127.0.0.1:<port>/`
    pub url: String,
    /// The port (0 when external).
    pub port: u16,
    guard: Option<ProcessGuard>,
}

impl RedisServer {
    /// Stops the server (no-op for an external one).
    pub fn stop(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            g.stop();
        }
    }

    /// Whether this server was started by the test (and can be stopped).
    pub fn is_owned(&self) -> bool {
        self.guard.is_some()
    }
}

/// Starts `redis-server` on a free loopback port with persistence off, or returns the server at
/// `TRAFFIK_REDIS_URL`.
pub fn redis_server() -> RedisServer {
    if let Ok(url) = std::env::var("TRAFFIK_REDIS_URL") {
        return RedisServer {
            url,
            port: 0,
            guard: None,
        };
    }
    let bin = require_binary("redis-server", "redis-server");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    cmd.args([
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]);
    let mut guard = ProcessGuard::spawn(cmd, "redis-server");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_port(addr, guard.child(), "redis-server");
    RedisServer {
        url: format!("redis://127.0.0.1:{port}/"),
        port,
        guard: Some(guard),
    }
}
