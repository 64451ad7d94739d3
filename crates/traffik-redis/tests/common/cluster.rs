//! A three-master Redis Cluster on loopback for tests (or `TRAFFIK_REDIS_CLUSTER_URLS`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use traffik_test_support::{ProcessGuard, free_port, require_binary, wait_for_port};

/// The cluster; its servers stop and its directory is removed on drop.
pub struct Cluster {
    /// `redis://127.0.0.1:<port>/` of every master.
    pub urls: Vec<String>,
    guards: Vec<ProcessGuard>,
    dir: Option<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for g in &mut self.guards {
            g.stop();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn node_is_ours(url: &str, pid: u32) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else { return false };
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap_or_default();
    info.lines().any(|l| l.trim() == format!("process_id:{pid}"))
}

/// Starts three `--cluster-enabled yes` masters, joins them with `redis-cli --cluster create`
/// and waits for `cluster_state:ok` on every node.
pub fn redis_cluster() -> Cluster {
    if let Ok(urls) = std::env::var("TRAFFIK_REDIS_CLUSTER_URLS") {
        let urls = urls.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        return Cluster { urls, guards: Vec::new(), dir: None };
    }
    let server = require_binary("redis-server", "redis-server");
    let cli = require_binary("redis-cli", "redis-tools");
    let dir = std::env::temp_dir().join(format!("traffik-redis-cluster-{}-{}", std::process::id(), free_port()));
    let mut guards = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let node_dir = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir).expect("cluster node dir");
        let mut started = None;
        for _ in 0..10 {
            let (port, bus) = (free_port(), free_port());
            let mut cmd = Command::new(&server);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            cmd.args(["--protected-mode", "no", "--loglevel", "warning", "--cluster-enabled", "yes"]);
            cmd.args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]);
            cmd.args(["--cluster-port", &bus.to_string(), "--dir", &node_dir.to_string_lossy()]);
            let mut guard = ProcessGuard::spawn(cmd, "redis-server (cluster)");
            wait_for_port(([127, 0, 0, 1], port).into(), guard.child(), "redis-server (cluster)");
            let pid = guard.child().id();
            if node_is_ours(&format!("redis://127.0.0.1:{port}/"), pid) {
                started = Some((port, guard));
                break;
            }
            guard.stop();
        }
        let (port, guard) = started.expect("could not start a cluster node on a free port");
        ports.push(port);
        guards.push(guard);
    }
    let mut create = Command::new(cli);
    create.args(["--cluster", "create"]);
    for p in &ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    create.args(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = create.output().expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let urls: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in &urls {
        let mut c = redis::Client::open(url.as_str()).expect("client").get_connection().expect("connect");
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
            if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster node {url} not ready: {info}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Cluster { urls, guards, dir: Some(dir) }
}
