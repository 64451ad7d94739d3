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

/// A `redis-server` that also listens with TLS, with a throwaway certificate authority.
#[derive(Debug)]
pub struct RedisTlsServer {
    /// `rediss://127.0.0.1:<tls port>/`
    pub url: String,
    /// The plain-text URL of the same server (for setup and inspection).
    pub plain_url: String,
    /// PEM of the certificate authority that signed the server's certificate.
    pub ca_pem: Vec<u8>,
    _guard: ProcessGuard,
    dir: std::path::PathBuf,
}

impl Drop for RedisTlsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its output if it fails.
fn openssl(bin: &std::path::Path, dir: &std::path::Path, args: &[&str]) {
    let out =
        Command::new(bin).current_dir(dir).args(args).output().unwrap_or_else(|e| panic!("could not run openssl: {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `redis-server` with TLS on one free loopback port (and plain text on another), its
/// certificate issued for `127.0.0.1` by a certificate authority made for this test with the
/// `openssl` command. Never external: TLS needs certificates the test controls.
pub fn redis_tls_server() -> RedisTlsServer {
    let openssl_bin = require_binary("openssl", "openssl");
    let dir = std::env::temp_dir().join(format!("traffik-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("could not create {}: {e}", dir.display()));
    let days = ["-days", "2"];
    openssl(
        &openssl_bin,
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=traffik test CA",
            days[0],
            days[1],
        ],
    );
    openssl(
        &openssl_bin,
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap_or_else(|e| panic!("could not write the certificate extensions: {e}"));
    openssl(
        &openssl_bin,
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
            days[0],
            days[1],
        ],
    );
    let ca_pem = std::fs::read(dir.join("ca.crt")).unwrap_or_else(|e| panic!("could not read ca.crt: {e}"));
    let path = |f: &str| dir.join(f).display().to_string();
    let tls_port = free_port();
    let extra = [
        "--tls-port".to_owned(),
        tls_port.to_string(),
        "--tls-cert-file".to_owned(),
        path("server.crt"),
        "--tls-key-file".to_owned(),
        path("server.key"),
        "--tls-ca-cert-file".to_owned(),
        path("ca.crt"),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ];
    // Redis opens every listener before it accepts on any, so the plain port answering
    // (checked by spawn_server) means the TLS port is open too.
    let (port, guard) = spawn_server(&extra);
    RedisTlsServer {
        url: format!("rediss://127.0.0.1:{tls_port}/"),
        plain_url: format!("redis://127.0.0.1:{port}/"),
        ca_pem,
        _guard: guard,
        dir,
    }
}
