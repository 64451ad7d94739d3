//! `Stat` snapshots agree across backends: every backend hands the strategy's own code the
//! state it stored, so after the same hits at the same times a remote backend's snapshots are
//! the in-memory backend's, figure for figure (metadata included).

use std::time::Duration;

use traffik::{InMemoryBackend, ManualClock, RequestView, SharedBackend, Snapshot, Throttle};

use crate::builtin_suites;

/// Runs the same hits on `backend` and on a fresh in-memory backend for every built-in
/// strategy (on a manual clock, rate 5/s) and compares the snapshots taken along the way.
/// `uid` prefixes the throttles' uids: make it unique per run when the backend's storage is
/// shared. `backend` must decide by the throttle's clock (e.g. Redis with the client clock).
/// Returns the first difference.
pub async fn check_stats_match_memory(backend: SharedBackend, uid: &str) -> Result<(), String> {
    for suite in builtin_suites() {
        let clock = ManualClock::new(1_700_000_000_123_456);
        let make = |backend: SharedBackend| {
            Throttle::builder()
                .uid(format!("{uid}-{}", suite.name))
                .rate("5/s")
                .backend(backend)
                .strategy(suite.strategy.clone())
                .clock(clock.clone())
                .build()
                .map_err(|e| format!("{}: {e}", suite.name))
        };
        let remote = make(backend.clone())?;
        let memory = make(std::sync::Arc::new(InMemoryBackend::new()))?;
        let req = RequestView::empty();
        // (hits, then how far the clock moves before the snapshot)
        let schedule = [(0, 0), (3, 0), (4, 0), (0, 300), (2, 150), (0, 2_000)];
        for (step, (hits, advance_ms)) in schedule.into_iter().enumerate() {
            for _ in 0..hits {
                let (a, b) = (remote.hit(&req).await, memory.hit(&req).await);
                let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
                if a.outcome != b.outcome {
                    return Err(format!(
                        "{} step {step}: hit {:?} here, {:?} in memory",
                        suite.name, a.outcome, b.outcome
                    ));
                }
            }
            clock.advance(Duration::from_millis(advance_ms));
            let (a, b) = (remote.stat(&req).await, memory.stat(&req).await);
            let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
            if !matches!(a, Snapshot::Limited(_)) || a != b {
                return Err(format!("{} step {step}: snapshot\n  {a:?}\nin memory\n  {b:?}", suite.name));
            }
        }
    }
    Ok(())
}
