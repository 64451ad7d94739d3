//! Shared helpers for the integration tests: a real memcached per test and small utilities.

#![allow(dead_code, unused_imports, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub use traffik_test_support::memcached_server;

/// A multi-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// A unique prefix for this test run (so an external server needs no flush).
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{name}-{:x}-{}", nanos as u64, std::process::id())
}

/// Runs the text command `stats` on `addr` and returns one statistic.
pub fn stat(addr: &str, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect for stats");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    stream.write_all(b"stats\r\n").expect("write stats");
    let mut reader = BufReader::new(stream);
    let mut found = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read stats") == 0 {
            break;
        }
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        let mut parts = line.split(' ');
        if parts.next() == Some("STAT") && parts.next() == Some(name) {
            found = parts.next().and_then(|v| v.parse().ok());
        }
    }
    found.unwrap_or_else(|| panic!("memcached at {addr} reported no `{name}`"))
}

/// Sends one text command and returns its first reply line.
pub fn command(addr: &str, cmd: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    stream.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read");
    line.trim_end().to_owned()
}
