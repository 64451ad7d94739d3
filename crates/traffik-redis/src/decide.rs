//! Decisions: one script call per decision or group for the built-in strategies, and the
//! compare-and-swap path (read, step, write if unchanged) for custom ones.

use std::time::Duration;

use redis::Value;
use traffik::backend::{GroupOperation, Mode, Operation};
use traffik::strategy::{Builtin, Input, MAX_SLOTS, Metadata, Verdict};
use traffik::{BackendError, StrategyHandle};

use crate::conn::Call;
use crate::scripts::{Lua, SCRIPTS};
use crate::{KIND, MAX_COST, RedisBackend, ScriptMode, state};

/// Waits a little before retrying a lost compare-and-swap: a yield for the first retries, then
/// a random sleep of up to 2^attempt ms (at most 16 ms).
pub(crate) async fn backoff(attempt: u32) {
    if attempt <= 2 {
        tokio::task::yield_now().await;
        return;
    }
    let cap_us = 1000u64 << attempt.min(4);
    let us = fastrand::u64(0..=cap_us);
    tokio::time::sleep(Duration::from_micros(us)).await;
}

impl RedisBackend {
    /// One strategy script: returns the raw reply items.
    pub(crate) async fn run_builtin(
        &self,
        builtin: Builtin,
        op: &Operation<'_>,
        mode: ScriptMode,
    ) -> Result<Vec<Value>, BackendError> {
        self.run_builtin_at(builtin, op, mode, self.storage_key(op.key, op.strategy)).await
    }

    /// [`run_builtin`](Self::run_builtin) on the stored key `key` (a group member's).
    pub(crate) async fn run_builtin_at(
        &self,
        builtin: Builtin,
        op: &Operation<'_>,
        mode: ScriptMode,
        key: String,
    ) -> Result<Vec<Value>, BackendError> {
        let s = &*SCRIPTS;
        let input = &op.input;
        let cost = input.cost.min(MAX_COST);
        let lua: &'static Lua = match builtin {
            Builtin::FixedWindow => &s.fixed_window,
            Builtin::SlidingWindowCounter => &s.sliding_counter,
            Builtin::SlidingWindowLog => &s.sliding_log,
            Builtin::Meter(_) => &s.meter,
            Builtin::QuotaRollover(_) => &s.quota_rollover,
            Builtin::CostAware(_) => &s.cost_aware,
            Builtin::Concurrency => &s.concurrency,
            _ => {
                return Err(BackendError::command(KIND, "unknown built-in strategy (no Lua script)"));
            }
        };
        if self.inner.client_clock && input.now_us >= MAX_COST {
            // Lua numbers are doubles: later timestamps (after the year 2255) are not exact.
            return Err(BackendError::command(KIND, "client timestamp beyond 2^53 microseconds"));
        }
        let mut call = Call::script(lua, &key);
        call.arg(mode.arg()).arg(self.now_arg(input)).arg(self.inner.min_ttl_ms).arg(cost);
        match builtin {
            Builtin::Meter(spec) => {
                let p = spec.params(&input.rate);
                call.arg(p.interval_us).arg(p.capacity_us).arg(p.queue_us).arg(p.period_us);
            }
            Builtin::QuotaRollover(spec) => {
                let limit = input.rate.limit();
                call.arg(limit).arg(input.rate.period_us()).arg(spec.cap(limit));
            }
            Builtin::CostAware(spec) => {
                let p = spec.plain().params(&input.rate);
                call.arg(p.interval_us).arg(p.capacity_us).arg(p.period_us).arg(state::cost_aware_arg(&spec));
            }
            Builtin::Concurrency => {
                call.arg(input.rate.limit().min(MAX_SLOTS)).arg(input.rate.period_us()).arg("").arg(0);
            }
            _ => {
                call.arg(input.rate.limit()).arg(input.rate.period_us());
            }
        }
        if let ScriptMode::Refund { charged_at_us } = mode {
            call.arg(charged_at_us);
        }
        match self.inner.conn.run(&call, self.inner.timeouts).await? {
            Value::Array(items) => Ok(items),
            other => Err(BackendError::command(KIND, format!("unexpected script reply {other:?}"))),
        }
    }

    /// Generic path, read: `(now, state)`.
    pub(crate) async fn read(&self, key: &str, input: &Input) -> Result<(u64, Option<Vec<u8>>), BackendError> {
        let mut call = Call::script(&SCRIPTS.read, key);
        call.arg(self.now_arg(input));
        let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
        let items = state::items(&reply)?;
        let [now, value, ..] = items else {
            return Err(BackendError::command(KIND, "short read reply"));
        };
        Ok((state::int(now)?, state::bytes(value)?))
    }

    /// Generic compare-and-swap path for custom strategies.
    pub(crate) async fn decide_generic(&self, op: &Operation<'_>) -> Result<Verdict, BackendError> {
        let key = self.storage_key(op.key, op.strategy);
        let (mut now, mut current) = self.read(&key, &op.input).await?;
        let mut attempt = 0u32;
        loop {
            let input = Input { now_us: now, ..op.input };
            let step = op.strategy.decide_bytes(current.as_deref(), &input)?;
            let (bytes, ttl_us) = match (op.mode, step.write) {
                (Mode::Consume, Some(w)) => w,
                _ => return Ok(step.verdict),
            };
            let mut call = Call::script(&SCRIPTS.cas, &key);
            call.arg(self.now_arg(&op.input));
            match &current {
                Some(c) => call.arg("1").arg(c.as_slice()),
                None => call.arg("0").arg(""),
            };
            call.arg(bytes).arg(self.ttl_ms(ttl_us));
            let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
            match state::swap(&reply)? {
                state::Swap::Done => return Ok(step.verdict),
                state::Swap::Retry(n, cur) => (now, current) = (n, cur),
            }
            attempt += 1;
            if attempt >= self.inner.cas_attempts {
                return Err(BackendError::Contention { backend: KIND, attempts: attempt });
            }
            crate::telemetry::count_cas_retry();
            backoff(attempt).await;
        }
    }

    pub(crate) async fn decide_impl(&self, op: Operation<'_>) -> Result<Verdict, BackendError> {
        self.check_open()?;
        match op.strategy.builtin() {
            Some(b) => {
                let mode = match op.mode {
                    Mode::Consume => ScriptMode::Consume,
                    Mode::Peek => ScriptMode::Peek,
                };
                let items = self.run_builtin(b, &op, mode).await?;
                state::decision(&items)
            }
            None => self.decide_generic(&op).await,
        }
    }

    /// The storage key of a group member: `<namespace>:{<tag>}:<key>:<strategy name>`, so that
    /// every key of a group shares its hash slot.
    pub fn group_storage_key(&self, tag: &str, key: &traffik::Key, strategy: &StrategyHandle) -> String {
        format!("{}:{{{tag}}}:{}:{}", self.inner.namespace, key.as_str(), strategy.name())
    }

    /// A group: one script, one round trip (see `scripts.rs`, the group script).
    pub(crate) async fn decide_group_impl(&self, group: GroupOperation<'_>) -> Result<Vec<Verdict>, BackendError> {
        self.check_open()?;
        let Some(first) = group.ops.first() else {
            return Ok(Vec::new());
        };
        if self.inner.client_clock && first.input.now_us >= MAX_COST {
            return Err(BackendError::command(KIND, "client timestamp beyond 2^53 microseconds"));
        }
        // An empty tag: the throttles' own keys (a deferred scope), stored as single decisions.
        let keys: Vec<String> = if group.tag.is_empty() {
            group.ops.iter().map(|op| self.storage_key(op.key, op.strategy)).collect()
        } else {
            group.ops.iter().map(|op| self.group_storage_key(group.tag, op.key, op.strategy)).collect()
        };
        let mut call = Call::script_keys(&SCRIPTS.group, &keys);
        let mode = if first.mode == Mode::Consume { ScriptMode::Consume } else { ScriptMode::Peek };
        call.arg(mode.arg()).arg(self.now_arg(&first.input)).arg(self.inner.min_ttl_ms);
        for op in group.ops {
            let input = &op.input;
            let cost = input.cost.min(MAX_COST);
            match op.strategy.builtin() {
                Some(Builtin::Meter(spec)) => {
                    let p = spec.params(&input.rate);
                    call.arg("m").arg(cost).arg(p.interval_us).arg(p.capacity_us).arg(p.queue_us).arg(p.period_us);
                }
                Some(Builtin::QuotaRollover(spec)) => {
                    let (limit, w) = (input.rate.limit(), input.rate.period_us());
                    call.arg("qr").arg(cost).arg(limit).arg(w).arg(spec.cap(limit)).arg(0);
                }
                Some(Builtin::Concurrency) => {
                    let (n, t) = (input.rate.limit().min(MAX_SLOTS), input.rate.period_us());
                    call.arg("cc").arg(cost).arg(n).arg(t).arg("").arg(0);
                }
                Some(Builtin::CostAware(spec)) => {
                    let p = spec.plain().params(&input.rate);
                    call.arg("ca").arg(cost).arg(p.interval_us).arg(p.capacity_us).arg(p.period_us);
                    call.arg(state::cost_aware_arg(&spec));
                }
                Some(b) => {
                    let which = match b {
                        Builtin::FixedWindow => "fw",
                        Builtin::SlidingWindowCounter => "swc",
                        Builtin::SlidingWindowLog => "swl",
                        _ => return Err(BackendError::command(KIND, "unknown built-in strategy (no Lua script)")),
                    };
                    call.arg(which).arg(cost).arg(input.rate.limit()).arg(input.rate.period_us()).arg(0).arg(0);
                }
                None => {
                    return Err(BackendError::Unsupported {
                        backend: KIND,
                        what: "groups with custom strategies (every member must be a built-in strategy)",
                    });
                }
            }
        }
        let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
        let items = state::items(&reply)?;
        // Five fields per member, then the server's time (0 in client-clock mode).
        let (members, [at]) = items.split_at(items.len().saturating_sub(1)) else {
            return Err(BackendError::command(KIND, "an empty group reply"));
        };
        if members.len() != 5 * group.ops.len() {
            return Err(BackendError::command(KIND, format!("a group reply of {} fields", items.len())));
        }
        let at = state::int(at)?;
        members.chunks_exact(5).map(|m| Ok(state::decision(m)?.decided_at(at))).collect()
    }

    /// A snapshot of `op`'s key; with a (non-empty) group tag, of the key a group decided
    /// under that tag.
    pub(crate) async fn stat_impl(
        &self,
        op: Operation<'_>,
        tag: Option<&str>,
    ) -> Result<(Verdict, Metadata), BackendError> {
        self.check_open()?;
        let key = match tag {
            Some(tag) if !tag.is_empty() => self.group_storage_key(tag, op.key, op.strategy),
            _ => self.storage_key(op.key, op.strategy),
        };
        match op.strategy.builtin() {
            Some(b) => {
                let items = self.run_builtin_at(b, &op, ScriptMode::Stat, key).await?;
                let now = match items.get(4) {
                    Some(v) => state::int(v)?,
                    None => return Err(BackendError::command(KIND, "short stat reply")),
                };
                // On the server's clock, the stat names the time it was taken at, as decisions do.
                let at = if self.inner.client_clock { 0 } else { now };
                let verdict = state::verdict(&items)?.decided_at(at);
                let raw = match items.get(5) {
                    Some(v) => state::bytes(v)?,
                    None => None,
                };
                let json = state::state_json(b, raw.as_deref());
                let input = Input { now_us: now, ..op.input };
                let meta = op.strategy.metadata_bytes(json.as_deref(), &input)?;
                Ok((verdict, meta))
            }
            None => {
                let (now, current) = self.read(&key, &op.input).await?;
                let input = Input { now_us: now, ..op.input };
                let step = op.strategy.decide_bytes(current.as_deref(), &input)?;
                let meta = op.strategy.metadata_bytes(current.as_deref(), &input)?;
                Ok((step.verdict, meta))
            }
        }
    }
}
