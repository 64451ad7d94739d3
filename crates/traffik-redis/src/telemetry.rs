//! The backend's counters through the `metrics` facade (feature `metrics`, on by default):
//! `traffik_cas_retries_total{backend="redis"}`, `traffik_redis_script_reloads_total` and
//! `traffik_redis_reconnects_total`. No label holds a key or an identity.

/// Counts a lost compare-and-swap (a custom strategy's generic path) that is tried again.
#[cold]
pub(crate) fn count_cas_retry() {
    #[cfg(feature = "metrics")]
    metrics::counter!("traffik_cas_retries_total", "backend" => crate::KIND).increment(1);
}

/// Counts a script the server did not know (`NOSCRIPT`), sent again in full.
#[cold]
pub(crate) fn count_script_reload() {
    #[cfg(feature = "metrics")]
    metrics::counter!("traffik_redis_script_reloads_total").increment(1);
}

/// Counts a connection opened to replace one that broke or stopped answering.
#[cold]
pub(crate) fn count_reconnect() {
    #[cfg(feature = "metrics")]
    metrics::counter!("traffik_redis_reconnects_total").increment(1);
}
