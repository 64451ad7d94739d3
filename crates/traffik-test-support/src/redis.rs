//! `redis-server` for tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

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

/// Sends one command to `addr` and returns the reply's text (bulk, simple or integer), or an
/// error reply / I/O problem as `Err`. Enough RESP for test setup; no client library needed.
fn redis_command(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[1..eol]).into_owned();
        match buf[0] {
            b'+' | b':' => return Ok(head),
            b'-' => return Err(head),
            b'$' => {
                let len: usize = head.parse().map_err(|_| format!("bad bulk length {head}"))?;
                if buf.len() >= eol + 2 + len {
                    return Ok(String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]).into_owned());
                }
            }
            other => return Err(format!("unsupported reply type {:?}", other as char)),
        }
    }
}

/// Starts `redis-server` with `extra` arguments on a free port and checks that the server
/// answering on that port is the one just started (two tests racing for one free port would
/// otherwise share a server).
fn spawn_server(extra: &[String]) -> (u16, ProcessGuard) {
    let bin = require_binary("redis-server", "redis-server");
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        cmd.args(["--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"]);
        cmd.args(extra);
        let mut guard = ProcessGuard::spawn(cmd, "redis-server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_port(addr, guard.child(), "redis-server");
        let pid = guard.child().id();
        match redis_command(addr, &["INFO", "server"]) {
            Ok(info) if info.lines().any(|l| l.trim() == format!("process_id:{pid}")) => return (port, guard),
            Ok(_) => last = format!("port {port} was taken by another redis-server"),
            Err(e) => last = e,
        }
        guard.stop();
    }
    panic!("could not start redis-server on a free port: {last}");
}

/// Starts `redis-server` on a free loopback port with persistence off, or returns the server at
/// `TRAFFIK_REDIS_URL`.
pub fn redis_server() -> RedisServer {
    if let Ok(url) = std::env::var("TRAFFIK_REDIS_URL") {
        return RedisServer { url, port: 0, guard: None };
    }
    let (port, guard) = spawn_server(&[]);
    RedisServer { url: format!("redis://127.0.0.1:{port}/"), port, guard: Some(guard) }
}
