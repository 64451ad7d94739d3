//! Concurrency limits on a real backend: exactly N in flight, releases on cancellation, a group
//! of a rate and a concurrency limit, and leases of a killed process coming back. Each check
//! takes throttles the caller built on its backend with the
//! [`Concurrency`](traffik::strategy::Concurrency) strategy and returns what went wrong.
//!
//! Nothing here asserts a duration: a release that runs in a task, or a lease that has to
//! expire, is awaited by asking again until admitted, within a generous bound.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use traffik::{Outcome, RequestView, Throttle, ThrottleGroup};

/// The client every check uses.
pub fn client() -> RequestView<'static> {
    RequestView::empty().peer(Some(SocketAddr::from(([198, 51, 100, 7], 4000))))
}

/// Asks `throttle` for a slot (releasing it at once) until it is admitted, at most `bound` of
/// real time: how many attempts it took.
pub async fn until_admitted(throttle: &Throttle, bound: Duration) -> Result<usize, String> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let permit = throttle.acquire(&client()).await.map_err(|e| e.to_string())?;
        if permit.is_allowed() {
            permit.release().await.map_err(|e| e.to_string())?;
            return Ok(attempts);
        }
        if started.elapsed() > bound {
            return Err(format!("no slot came back within {bound:?} ({attempts} attempts)"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 64 tasks acquire at once and hold what they got until every task has asked: exactly `n`
/// are admitted; they release, and the same again, twice.
pub async fn exactly_n_in_flight(throttle: &Throttle, n: usize) -> Result<(), String> {
    for round in 0..2 {
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (t, barrier, admitted) = (throttle.clone(), barrier.clone(), admitted.clone());
                tokio::spawn(async move {
                    let permit = t.acquire(&client()).await;
                    // Everyone has asked before anyone lets go (even after an error).
                    barrier.wait().await;
                    let permit = permit.map_err(|e| e.to_string())?;
                    if permit.is_allowed() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    permit.release().await.map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let got = admitted.load(Ordering::SeqCst);
        if got != n {
            return Err(format!("round {round}: {got} of 64 clients in flight at once, expected {n}"));
        }
    }
    Ok(())
}

/// A throttle of one slot: a handler future dropped mid-way, an aborted task and a panicking
/// handler each give their slot back (by a release that may run in a task: awaited by asking
/// again, within `bound`).
pub async fn cancelled_requests_release(throttle: &Throttle, bound: Duration) -> Result<(), String> {
    let refused = |what: &'static str| async move {
        let p = throttle.acquire(&client()).await.map_err(|e| e.to_string())?;
        if p.is_allowed() { Err(format!("a slot was free while {what} held it")) } else { Ok(()) }
    };

    // A future dropped mid-handler.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let t = throttle.clone();
    let mut handler = Box::pin(async move {
        let permit = t.acquire(&client()).await;
        let _ = entered_tx.send(permit.as_ref().map(|p| p.is_allowed()).unwrap_or(false));
        std::future::pending::<()>().await;
        drop(permit);
    });
    let entered = tokio::select! {
        _ = &mut handler => return Err("the pending handler finished".into()),
        entered = entered_rx => entered.map_err(|e| e.to_string())?,
    };
    if !entered {
        return Err("the handler was not admitted".into());
    }
    refused("a running handler").await?;
    drop(handler);
    until_admitted(throttle, bound).await?;

    // An aborted task.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let t = throttle.clone();
    let task = tokio::spawn(async move {
        let permit = t.acquire(&client()).await;
        let _ = entered_tx.send(permit.as_ref().map(|p| p.is_allowed()).unwrap_or(false));
        std::future::pending::<()>().await;
        drop(permit);
    });
    if !entered_rx.await.map_err(|e| e.to_string())? {
        return Err("the task was not admitted".into());
    }
    refused("a running task").await?;
    task.abort();
    if !task.await.is_err_and(|e| e.is_cancelled()) {
        return Err("the task was not cancelled".into());
    }
    until_admitted(throttle, bound).await?;

    // A handler that panics.
    let t = throttle.clone();
    let panicked = tokio::spawn(async move {
        let permit = t.acquire(&client()).await;
        assert!(permit.as_ref().is_ok_and(|p| p.is_allowed()), "not admitted");
        panic!("the handler failed");
    })
    .await;
    if panicked.is_ok() {
        return Err("the panicking handler did not panic".into());
    }
    until_admitted(throttle, bound).await?;
    Ok(())
}

/// A group of `rate` (some limit per period, at least 4) and `in_flight` (2 slots): 2 admitted,
/// the third refused by the concurrency member with nothing charged to the rate member; a
/// release lets another in.
pub async fn group_of_rate_and_concurrency(group: &ThrottleGroup, bound: Duration) -> Result<(), String> {
    let req = client();
    let a = group.acquire(&req).await.map_err(|e| e.to_string())?;
    let b = group.acquire(&req).await.map_err(|e| e.to_string())?;
    if !(a.is_allowed() && b.is_allowed() && a.leases() == 1 && b.leases() == 1) {
        return Err(format!("two admissions with one lease each expected: {a:?} {b:?}"));
    }
    let c = group.acquire(&req).await.map_err(|e| e.to_string())?;
    if c.is_allowed() || c.leases() != 0 {
        return Err(format!("a third one in flight: {c:?}"));
    }
    // The refused group says what the rate member would have had left had it admitted: only
    // the 2 admissions were charged.
    let members = &c.decision().members;
    let limit = members.first().and_then(|d| d.rate).map(|r| r.limit());
    let left = members.first().and_then(|d| d.remaining);
    if limit.is_none() || left != limit.map(|l| l - 3) || members.get(1).map(|d| d.outcome) != Some(Outcome::Throttled)
    {
        return Err(format!("after 2 admissions and 1 refusal: {members:?}"));
    }
    a.release().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        let d = group.acquire(&req).await.map_err(|e| e.to_string())?;
        if d.is_allowed() {
            return Ok(());
        }
        if started.elapsed() > bound {
            return Err("the released slot did not come back".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The child's side of [`killed_holder_comes_back`]: acquires `n` slots, prints `READY` and
/// holds them (renewing) until killed.
pub async fn hold_until_killed(throttle: &Throttle, n: usize) -> ! {
    let mut held = Vec::new();
    for _ in 0..n {
        match throttle.acquire(&client()).await {
            Ok(p) if p.is_allowed() => held.push(p),
            other => {
                println!("FAILED {other:?}");
                std::process::exit(1);
            }
        }
    }
    println!("READY");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// The parent's side: `child` runs [`hold_until_killed`] on the same key. Waits for it to hold
/// its slots, checks they are taken, kills it (no destructor runs), and asks until a slot comes
/// back through lease expiry, within `bound`.
pub async fn killed_holder_comes_back(throttle: &Throttle, mut child: Child, bound: Duration) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("the child's stdout is not piped")?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        // The test harness may print the test's name on the same line.
        lines.find_map(|l| l.ok().filter(|l| l.ends_with("READY") || l.contains("FAILED")))
    })
    .await
    .map_err(|e| e.to_string())?;
    if !ready.as_deref().is_some_and(|l| l.ends_with("READY")) {
        let _ = child.kill();
        return Err(format!("the child did not get its slots: {ready:?}"));
    }
    let taken = throttle.acquire(&client()).await.map_err(|e| e.to_string());
    let taken = taken.map(|p| !p.is_allowed());
    child.kill().map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    if taken != Ok(true) {
        return Err(format!("the child's slots were not all taken: {taken:?}"));
    }
    until_admitted(throttle, bound).await.map(|_| ())
}
