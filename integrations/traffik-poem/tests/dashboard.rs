//! The dashboard example in a real browser: the app runs on 127.0.0.1 (on a manual clock, so
//! the figures stand still however slow the machine is), a few requests are made, headless
//! Chromium loads the page and dumps the DOM it rendered, and every number the page shows must
//! match the JSON the page polls.
//!
//! Needs Chromium (Debian's `chromium`; `scripts/test` installs it when missing). Set
//! `TRAFFIK_CHROMIUM` to use another binary. Fails, never skips, when there is none.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../examples/dashboard/app.rs"]
mod app;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use traffik::ManualClock;

use common::{http_client, serve};

/// Where Chromium is: `TRAFFIK_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("TRAFFIK_CHROMIUM") {
        return PathBuf::from(path);
    }
    let names = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the dashboard browser test needs headless Chromium, and none of {names:?} is on PATH: \
         install Debian's `chromium` package (scripts/test does) or set TRAFFIK_CHROMIUM to a \
         Chromium or Chrome binary"
    );
}

/// The DOM Chromium rendered for `url`, after the page's scripts ran for a few seconds of
/// virtual time (virtual time waits for pending fetches, so the polls complete however slow
/// the machine is).
async fn rendered_dom(url: &str) -> String {
    let browser = chromium();
    let profile = std::env::temp_dir().join(format!("traffik-dashboard-test-{}", std::process::id()));
    let child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            // Chromium refuses to run as root with its sandbox; CI runs as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-proxy-server",
            "--virtual-time-budget=3500",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", browser.display()));
    // A bound for a hung browser, not a timing assertion: a healthy run takes a few seconds.
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within 5 minutes", browser.display()))
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "{} failed ({}): {}",
        browser.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The text of the element whose `data-k` is `key` (the page marks every number it shows).
fn shown(dom: &str, key: &str) -> String {
    let marker = format!("data-k=\"{key}\"");
    let at = dom.find(&marker).unwrap_or_else(|| panic!("the page shows no `{key}`:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    rest[start..end].trim().to_owned()
}

/// A body attribute (`data-polls`, `data-error`).
fn body_attribute(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> reqwest::Response {
    client.get(format!("http://{addr}{path}")).send().await.unwrap()
}

async fn json(client: &reqwest::Client, addr: SocketAddr, path: &str) -> Value {
    get(client, addr, path).await.json().await.unwrap()
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_its_json_says() {
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000);
    // The reports throttle's backend is down: its breaker opens and its incidents count.
    let addr = serve(app::app(clock, metrics, Arc::new(common::broken())).unwrap()).await;
    let client = http_client();

    let mut statuses = Vec::new();
    for (path, times) in [("/api/search", 12), ("/api/upload", 9), ("/api/reports", 7)] {
        for _ in 0..times {
            statuses.push((path, get(&client, addr, path).await.status().as_u16()));
        }
    }
    let refused = |path: &str| statuses.iter().filter(|(p, s)| *p == path && *s == 429).count();
    assert_eq!((refused("/api/search"), refused("/api/upload"), refused("/api/reports")), (2, 2, 7));

    let dom = rendered_dom(&format!("http://{addr}/")).await;
    assert_eq!(body_attribute(&dom, "data-error"), None, "the page's polls failed");
    let polls: u32 = body_attribute(&dom, "data-polls").unwrap().parse().unwrap();
    assert!(polls >= 1, "the page never rendered its data:\n{dom}");

    // What the page polls, read after the browser is done (the clock stands still and the
    // page's polls charge nothing, so it is what the page saw).
    let throttles = json(&client, addr, "/dashboard/throttles").await;
    let quotas = json(&client, addr, "/dashboard/quotas").await;

    let list = throttles["throttles"].as_array().unwrap();
    let uids: Vec<&str> = list.iter().map(|t| t["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["search", "upload", "reports"]);
    for t in list {
        let uid = t["uid"].as_str().unwrap();
        for (field, value) in [
            ("rate", &t["rate"]),
            ("strategy", &t["strategy"]),
            ("backend", &t["backend"]),
            ("allowed", &t["decisions"]["allowed"]),
            ("throttled", &t["decisions"]["throttled"]),
            ("errors", &t["incidents"]["errors"]),
            ("fallbacks", &t["incidents"]["fallbacks"]),
        ] {
            assert_eq!(shown(&dom, &format!("throttle.{uid}.{field}")), as_text(value), "{uid} {field}");
        }
        let failed = format!("{} / {}", t["incidents"]["failed_open"], t["incidents"]["failed_closed"]);
        assert_eq!(shown(&dom, &format!("throttle.{uid}.failed")), failed, "{uid} failed open / closed");
    }
    let breaker = shown(&dom, "throttle.reports.breaker");
    assert!(breaker.starts_with(&as_text(&list[2]["breaker"]["state"])), "breaker shown as {breaker:?}");
    // The page's figures are the app's real ones, not whatever the JSON happens to hold.
    assert_eq!(shown(&dom, "throttle.search.allowed"), "10");
    assert_eq!(shown(&dom, "throttle.search.throttled"), "2");
    assert_eq!(shown(&dom, "throttle.upload.allowed"), "7");
    assert_eq!(shown(&dom, "throttle.reports.backend"), "down");
    assert_eq!(shown(&dom, "throttle.reports.breaker"), "open (opened 1×)");
    assert_eq!(shown(&dom, "throttle.reports.errors"), "5", "the breaker opened after 5 failures");

    let stats = quotas["quotas"].as_array().unwrap();
    assert_eq!(stats.len(), 2, "{quotas}");
    assert_eq!(quotas["unavailable"], serde_json::json!(["reports"]));
    assert_eq!(shown(&dom, "quotas.unavailable"), "reports");
    for q in stats {
        let uid = q["throttle"].as_str().unwrap();
        for field in ["remaining", "capacity", "used"] {
            assert_eq!(shown(&dom, &format!("quota.{uid}.{field}")), as_text(&q[field]), "{uid} {field}");
        }
    }
    assert_eq!(shown(&dom, "quota.search.remaining"), "0");
    // Token bucket with debt under 5/s, 2 of debt, 7 admitted at one instant: all 7 used, 2 owed.
    assert_eq!(shown(&dom, "quota.upload.capacity"), "7");
    assert_eq!(shown(&dom, "quota.upload.max_debt"), "2");
    assert_eq!(shown(&dom, "quota.upload.debt"), "2");

    // The same decisions on /metrics for Prometheus.
    let text = get(&client, addr, "/metrics").await.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l == r#"traffik_decisions_total{throttle="search",outcome="throttled",source="backend"} 2"#),
        "{text}"
    );
}
