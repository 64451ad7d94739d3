//! Refunds and lease renewals ([`Amend`]) by compare-and-swap, like decisions.

use traffik::BackendError;
use traffik::backend::{Amend, Operation};

use crate::cas::backoff;
use crate::ttl::memcached_exptime;
use crate::{KIND, MemcachedBackend, wall_clock_secs};

impl MemcachedBackend {
    /// Reads the key's state, runs [`StrategyHandle::amend_bytes`](traffik::StrategyHandle::amend_bytes)
    /// on it and writes the result if the state is unchanged since the read (the same loop, the
    /// same per-key queue after a lost race, as a decision). `false` when there is no state or
    /// nothing to change.
    pub(crate) async fn amend_impl(&self, op: &Operation<'_>, amend: Amend) -> Result<bool, BackendError> {
        let inner = &self.inner;
        let client = self.client().await?;
        let mut attempts = 0u32;
        let mut turn = None;
        loop {
            let (key, read) = self.load(&client, op, &mut attempts).await?;
            let Some((current, cas)) = &read.state else {
                return Ok(false);
            };
            let Some((bytes, ttl_us)) = op.strategy.amend_bytes(current, amend, &op.input)? else {
                return Ok(false);
            };
            let exptime = memcached_exptime(ttl_us, inner.min_ttl_secs, wall_clock_secs());
            if self.store(&client, &key, &bytes, exptime, Some(*cas)).await? {
                return Ok(true);
            }
            if attempts >= inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts });
            }
            crate::telemetry::count_cas_retry();
            if turn.is_none() {
                turn = Some(self.retry_queue(op).lock().await);
            } else {
                backoff(attempts).await;
            }
        }
    }
}
