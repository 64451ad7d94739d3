//! Decisions by compare-and-swap: read the state and its CAS token, step the strategy, write
//! if nothing changed meanwhile; retries wait their turn in a per-key queue, and a group's
//! members written before a conflict are given back.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memcache::exp::{AsyncMemcache, Get, Meta};
use traffik::BackendError;
use traffik::backend::{Mode, Operation};
use traffik::strategy::Verdict;

use crate::ttl::memcached_exptime;
use crate::{
    BASE_BACKOFF_US, KIND, MAX_BACKOFF_US, MemcachedBackend, RETRY_QUEUES, keys, parse_version, wall_clock_secs,
};

/// A state read: the server's namespace version and the state with its CAS token.
pub(crate) struct Read {
    pub(crate) version: Option<u64>,
    pub(crate) state: Option<(Vec<u8>, u64)>,
}

/// What one decision computed.
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    pub(crate) state: Option<Vec<u8>>,
}

/// Full jitter over an exponentially growing cap.
pub(crate) async fn backoff(attempt: u32) {
    let cap = BASE_BACKOFF_US.saturating_mul(1 << attempt.min(10)).min(MAX_BACKOFF_US);
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=cap))).await;
}

impl MemcachedBackend {
    /// One pipelined read of server `i`'s version and the state under `key`.
    pub(crate) async fn read(&self, client: &AsyncMemcache, i: usize, key: &str) -> Result<Read, BackendError> {
        let started = Instant::now();
        let mut results = client
            .meta()
            .run_many([Get::new(&self.inner.version_keys[i]), Get::new(key).meta(Meta::NONE.cas())])
            .await
            .map_err(|e| self.map_err(e, started))?
            .into_iter();
        let (Some(version), Some(state)) = (results.next(), results.next()) else {
            return Err(BackendError::command(KIND, "a pipelined read returned too few answers"));
        };
        let version = version.map_err(|e| self.map_err(e, started))?;
        let state = state.map_err(|e| self.map_err(e, started))?;
        let version = match version.value {
            Some(v) if version.hit() => Some(parse_version(&v)?),
            _ => None,
        };
        let state = match (state.hit(), state.value, state.item.cas) {
            (true, Some(v), Some(cas)) => Some((v, cas)),
            (true, _, _) => return Err(BackendError::command(KIND, "a state read returned no value or CAS token")),
            _ => None,
        };
        Ok(Read { version, state })
    }

    /// Stores `bytes` under `key` if the state is still the one read (`cas`), or still absent.
    pub(crate) async fn store(
        &self,
        client: &AsyncMemcache,
        key: &str,
        bytes: &[u8],
        exptime: u32,
        cas: Option<u64>,
    ) -> Result<bool, BackendError> {
        let request = client.meta().set(key, bytes).ttl_raw(exptime);
        let request = match cas {
            Some(cas) => request.compare_cas(cas),
            None => request.add(),
        };
        let started = Instant::now();
        let result = request.send().await.map_err(|e| self.map_err(e, started))?;
        Ok(result.applied())
    }

    /// Reads the current state of `op`'s key, following the namespace version of its server:
    /// the storage key and what it holds (value and CAS token).
    pub(crate) async fn load(
        &self,
        client: &AsyncMemcache,
        op: &Operation<'_>,
        attempts: &mut u32,
    ) -> Result<(String, Read), BackendError> {
        let inner = &self.inner;
        let tail = keys::key_tail(&inner.namespace, op.key.as_str(), op.strategy.name());
        let server = inner.router.index_of_tail(tail.as_bytes());
        loop {
            *attempts += 1;
            let version = self.version(client, server).await?;
            let key = keys::state_key(&inner.namespace, version, &tail);
            let read = self.read(client, server, &key).await?;
            if read.version == Some(version) {
                return Ok((key, read));
            }
            // A reset (or a lost version key): follow the server's version.
            match read.version {
                Some(v) => inner.versions[server].store(v, Ordering::Release),
                None => {
                    self.refresh_version(client, server).await?;
                }
            }
            if *attempts >= inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts: *attempts });
            }
        }
    }

    /// Decides a group (see the crate docs, "Groups"): reads and decides every member; if all
    /// admit, writes them one by one with compare-and-swap; a member that now refuses (its
    /// state changed since it was read) gets the members already written refunded.
    pub(crate) async fn run_group(&self, ops: &[Operation<'_>]) -> Result<Vec<Verdict>, BackendError> {
        let client = self.client().await?;
        let write = ops.first().is_some_and(|op| op.mode == Mode::Consume);
        let mut attempts = 0u32;
        let mut members = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, read) = self.load(&client, op, &mut attempts).await?;
            let step = op.strategy.decide_bytes(read.state.as_ref().map(|(b, _)| b.as_slice()), &op.input)?;
            members.push((key, read, step));
        }
        let mut verdicts: Vec<Verdict> = members.iter().map(|m| m.2.verdict).collect();
        if !write || !verdicts.iter().all(Verdict::is_admitted) {
            return Ok(verdicts);
        }
        let mut applied: Vec<usize> = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let mut tries = 0u32;
            loop {
                let (key, read, step) = &members[i];
                let Some((bytes, ttl_us)) = &step.write else {
                    break;
                };
                let exptime = memcached_exptime(*ttl_us, self.inner.min_ttl_secs, wall_clock_secs());
                let cas = read.state.as_ref().map(|(_, cas)| *cas);
                match self.store(&client, key, bytes, exptime, cas).await {
                    Ok(true) => {
                        applied.push(i);
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.refund_all(&client, ops, &applied, &verdicts).await;
                        return Err(e);
                    }
                }
                // Someone wrote the member since it was read: decide it again.
                tries += 1;
                if tries >= self.inner.cas_attempts {
                    self.refund_all(&client, ops, &applied, &verdicts).await;
                    return Err(BackendError::Contention { backend: KIND, attempts: tries });
                }
                crate::telemetry::count_cas_retry();
                backoff(tries).await;
                let again = match self.load(&client, op, &mut attempts).await {
                    Ok((key, read)) => {
                        let current = read.state.as_ref().map(|(b, _)| b.as_slice());
                        match op.strategy.decide_bytes(current, &op.input) {
                            Ok(step) => Ok((key, read, step)),
                            Err(e) => Err(BackendError::from(e)),
                        }
                    }
                    Err(e) => Err(e),
                };
                match again {
                    Ok(member) => members[i] = member,
                    Err(e) => {
                        self.refund_all(&client, ops, &applied, &verdicts).await;
                        return Err(e);
                    }
                }
                verdicts[i] = members[i].2.verdict;
                if !verdicts[i].is_admitted() {
                    // The group is refused after all: give back what was charged.
                    self.refund_all(&client, ops, &applied, &verdicts).await;
                    return Ok(verdicts);
                }
            }
        }
        Ok(verdicts)
    }

    /// Group members given back their cost so far, because another member of the group
    /// refused after they had been written (see the crate docs, "Groups").
    pub fn group_refunds(&self) -> u64 {
        self.inner.refunds.load(Ordering::Relaxed)
    }

    /// Gives back each applied member's cost, by compare-and-swap ([`StrategyHandle::refund_bytes`]);
    /// best effort: a member that cannot be refunded (a custom strategy without refunds, a
    /// server that fails) stays charged, which never admits more than the limits.
    /// A member's admission is named by its lease stamp when it took one (a concurrency
    /// limit), else by the time of the decision.
    pub(crate) async fn refund_all(
        &self,
        client: &AsyncMemcache,
        ops: &[Operation<'_>],
        applied: &[usize],
        verdicts: &[Verdict],
    ) {
        for &i in applied {
            let op = &ops[i];
            let charged_at = match verdicts.get(i) {
                Some(v) if v.lease_us != 0 => v.lease_us,
                _ => op.input.now_us,
            };
            let mut attempts = 0u32;
            while attempts < self.inner.cas_attempts {
                let Ok((key, read)) = self.load(client, op, &mut attempts).await else {
                    break;
                };
                let Some((current, cas)) = &read.state else {
                    break;
                };
                let refund = match op.strategy.refund_bytes(current, charged_at, &op.input) {
                    Ok(Some(r)) => r,
                    _ => break,
                };
                let exptime = memcached_exptime(refund.1, self.inner.min_ttl_secs, wall_clock_secs());
                match self.store(client, &key, &refund.0, exptime, Some(*cas)).await {
                    Ok(false) => {
                        crate::telemetry::count_cas_retry();
                        backoff(attempts).await;
                    }
                    Ok(true) => {
                        self.inner.refunds.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// The retry queue of `op`'s key.
    pub(crate) fn retry_queue(&self, op: &Operation<'_>) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((op.key.as_str(), op.strategy.name()));
        let i = usize::try_from(hash % RETRY_QUEUES as u64).unwrap_or(0);
        &self.inner.retry_queues[i]
    }

    /// The compare-and-swap loop shared by decide, peek and stat. The first attempt goes
    /// straight to the server; after a lost race the task retries in its key's queue (see the
    /// crate docs, "Contention").
    pub(crate) async fn run(&self, op: &Operation<'_>, write: bool) -> Result<Outcome, BackendError> {
        let inner = &self.inner;
        let client = self.client().await?;
        let mut attempts = 0u32;
        let mut turn = None;
        loop {
            let (key, read) = self.load(&client, op, &mut attempts).await?;
            let current = read.state.as_ref().map(|(bytes, _)| bytes.as_slice());
            let step = op.strategy.decide_bytes(current, &op.input)?;
            let Some((bytes, ttl_us)) = step.write.filter(|_| write) else {
                return Ok(Outcome { verdict: step.verdict, state: read.state.map(|(b, _)| b) });
            };
            let exptime = memcached_exptime(ttl_us, inner.min_ttl_secs, wall_clock_secs());
            let cas = read.state.as_ref().map(|(_, cas)| *cas);
            if self.store(&client, &key, &bytes, exptime, cas).await? {
                return Ok(Outcome { verdict: step.verdict, state: Some(bytes) });
            }
            if attempts >= inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts });
            }
            crate::telemetry::count_cas_retry();
            if turn.is_none() {
                // Waiting in the queue spaces the retries of this process; the state has
                // changed by the time our turn comes, so read it again at once.
                turn = Some(self.retry_queue(op).lock().await);
            } else {
                // Lost to another process while holding the turn: back off.
                backoff(attempts).await;
            }
        }
    }
}
