//! A multi-step job charged once: an export that calls an upstream API several times and
//! writes to storage is charged on three throttles when it succeeds, all or nothing, and not
//! at all when it fails (unless the failure is one chosen to be charged).
//!
//! `cargo run -p traffik --example scope_job`

use std::fmt;

use traffik::scope::RunError;
use traffik::strategy::{FixedWindow, TokenBucket};
use traffik::{Context, InMemoryBackend, RequestView, Scope, ScopeError, Throttle, rate};

/// Why an export step failed.
#[derive(Debug)]
enum ExportError {
    /// The upstream API failed before anything was produced.
    Upstream,
    /// Some rows were written before the failure: worth charging.
    Partial { rows: u64 },
    /// The scope could not queue an entry.
    Scope(ScopeError),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Upstream => f.write_str("the upstream API failed"),
            ExportError::Partial { rows } => write!(f, "failed after {rows} rows"),
            ExportError::Scope(e) => write!(f, "{e}"),
        }
    }
}

impl From<ScopeError> for ExportError {
    fn from(e: ScopeError) -> Self {
        ExportError::Scope(e)
    }
}

struct Limits {
    exports: Throttle,
    api_calls: Throttle,
    storage: Throttle,
}

/// One export: `pages` upstream calls, then a storage write per 100 rows. The costs are queued
/// as the steps go; `fail` makes a step fail.
async fn export(
    limits: &Limits,
    scope: &Scope,
    req: &RequestView<'_>,
    pages: u64,
    fail: Option<&str>,
) -> Result<u64, ExportError> {
    let _ = scope.add(&limits.exports, req).await?;
    let mut rows: u64 = 0;
    for page in 0..pages {
        // Consecutive calls on one throttle and client aggregate into one entry.
        let _ = scope.add(&limits.api_calls, req).await?;
        if fail == Some("upstream") && page == 1 {
            return Err(ExportError::Upstream);
        }
        rows += 250;
    }
    let writes = rows.div_ceil(100);
    let _ = scope.add_with(&limits.storage, req, &Context::new().cost(writes)).await?;
    if fail == Some("partial") {
        return Err(ExportError::Partial { rows: rows / 2 });
    }
    Ok(rows)
}

async fn show(limits: &Limits, req: &RequestView<'_>) -> Result<(), traffik::Error> {
    let mut parts = Vec::new();
    for t in [&limits.exports, &limits.api_calls, &limits.storage] {
        if let Some(s) = t.stat(req).await?.limited() {
            parts.push(format!("{} {}/{}", s.throttle, s.used, s.capacity));
        }
    }
    println!("    used: {}", parts.join(", "));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = InMemoryBackend::new();
    let build = |uid: &str| Throttle::builder().uid(uid).backend(backend.clone());
    let limits = Limits {
        exports: build("exports").rate(rate!("3/h")).strategy(FixedWindow).build()?,
        api_calls: build("api-calls").rate(rate!("20/min")).strategy(TokenBucket::new()).build()?,
        storage: build("storage-writes").rate(rate!("40/h")).strategy(FixedWindow).build()?,
    };
    let req = RequestView::empty().peer(Some(([203, 0, 113, 9], 50000).into()));

    println!("1. an export of 4 pages succeeds: charged once, at the end");
    let scope = Scope::new();
    let rows = scope.run(export(&limits, &scope, &req, 4, None)).await?;
    println!("    {rows} rows; the scope is {}", scope.state());
    show(&limits, &req).await?;

    println!("2. an export fails at the upstream API: nothing is charged");
    let scope = Scope::new();
    match scope.run(export(&limits, &scope, &req, 4, Some("upstream"))).await {
        Err(RunError::Work(e)) => println!("    {e}; the scope is {}", scope.state()),
        other => println!("    unexpected: {other:?}"),
    }
    show(&limits, &req).await?;

    println!("3. an export fails after writing some rows: that failure is charged");
    let scope = Scope::new();
    let charge_partial = |e: &ExportError| matches!(e, ExportError::Partial { .. });
    match scope.run_with(export(&limits, &scope, &req, 2, Some("partial")), charge_partial).await {
        Err(RunError::Work(e)) => println!("    {e}; the scope is {}", scope.state()),
        other => println!("    unexpected: {other:?}"),
    }
    show(&limits, &req).await?;

    println!("4. an export of 16 pages would pass the export limit but not the API's: check first");
    let scope = Scope::new();
    for _ in 0..16 {
        let _ = scope.add(&limits.api_calls, &req).await?;
    }
    let _ = scope.add(&limits.exports, &req).await?;
    let check = scope.check().await?;
    match check.binding_charge() {
        Some(c) if check.is_throttled() => {
            let secs = check.retry_after_secs().unwrap_or(0);
            println!("    would be refused by {} (retry after {secs} s); not started", c.throttle)
        }
        _ => println!("    would be admitted"),
    }
    scope.cancel()?;
    show(&limits, &req).await?;

    println!("5. the work is done but the charge is refused: the output comes back, nothing is charged");
    let scope = Scope::new();
    let job = async {
        let _ = scope.add_with(&limits.api_calls, &req, &Context::new().cost(15)).await?;
        let _ = scope.add(&limits.exports, &req).await?;
        Ok::<_, ExportError>(15 * 250)
    };
    match scope.run(job).await {
        Err(RunError::Apply { output, error }) => println!("    {output} rows, not charged: {error}"),
        other => println!("    unexpected: {other:?}"),
    }
    show(&limits, &req).await?;
    Ok(())
}
