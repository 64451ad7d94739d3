//! The backend's counter through the `metrics` facade (feature `metrics`, on by default):
//! `traffik_cas_retries_total{backend="memcached"}`. No label holds a key or an identity.

/// Counts a lost compare-and-swap that is tried again.
#[cold]
pub(crate) fn count_cas_retry() {
    #[cfg(feature = "metrics")]
    metrics::counter!("traffik_cas_retries_total", "backend" => crate::KIND).increment(1);
}
