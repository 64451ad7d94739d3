//! Refunds and lease renewals ([`Amend`]): one script call for every built-in strategy (the
//! strategy's own script, in refund mode `r`, or the concurrency script's release and renewal
//! modes), the generic compare-and-swap path for custom strategies.

use traffik::BackendError;
use traffik::backend::{Amend, Operation};
use traffik::strategy::{Builtin, Input, MAX_SLOTS};

use crate::conn::Call;
use crate::decide::backoff;
use crate::scripts::SCRIPTS;
use crate::{KIND, MAX_COST, RedisBackend, ScriptMode, state};

impl RedisBackend {
    /// Applies `amend` to the key of `op` (under the group's tag for a group member's
    /// admission; a member of a group with an empty tag is stored under its own key).
    ///
    /// Built-ins: a refund is one call of the strategy's script in refund mode (`Strategy::refund`
    /// ported to Lua, on the server's time unless the backend uses the client's clock); a lease
    /// is released or renewed by one call of the concurrency script. Only leases can be renewed:
    /// renewing another built-in's admission changes nothing (`Ok(false)`, no call), as in
    /// memory. Custom strategies: read, amend, compare-and-swap.
    pub(crate) async fn amend_impl(
        &self,
        op: Operation<'_>,
        amend: Amend,
        tag: Option<&str>,
    ) -> Result<bool, BackendError> {
        self.check_open()?;
        // An empty tag: a group decided on the throttles' own keys (as `decide_group` and
        // `stat` read it).
        let key = match tag {
            Some(tag) if !tag.is_empty() => self.group_storage_key(tag, op.key, op.strategy),
            _ => self.storage_key(op.key, op.strategy),
        };
        match op.strategy.builtin() {
            Some(Builtin::Concurrency) => self.amend_leases(&key, &op, amend).await,
            Some(builtin) => self.refund_builtin(builtin, key, &op, amend).await,
            None => self.amend_generic(&key, &op, amend).await,
        }
    }

    /// One call of a built-in's script in refund mode: `{changed}`.
    async fn refund_builtin(
        &self,
        builtin: Builtin,
        key: String,
        op: &Operation<'_>,
        amend: Amend,
    ) -> Result<bool, BackendError> {
        let charged_at_us = match amend {
            Amend::Refund { charged_at_us } => charged_at_us,
            // `Strategy::renew` is `None` for every built-in but the concurrency strategy.
            Amend::Renew { .. } => return Ok(false),
            _ => return Err(BackendError::Unsupported { backend: KIND, what: "this change to an admission" }),
        };
        let charged_at_us = if charged_at_us < MAX_COST {
            charged_at_us
        } else {
            match builtin {
                // The meters only bound what they give back by the admission's time: one that
                // late still holds everything it took.
                Builtin::Meter(_) | Builtin::CostAware(_) => MAX_COST - 1,
                // No window, entry or state is that late (Lua numbers are doubles, and the
                // scripts write nothing beyond 2^53): nothing to give back.
                _ => return Ok(false),
            }
        };
        let items = self.run_builtin_at(builtin, op, ScriptMode::Refund { charged_at_us }, key).await?;
        match items.as_slice() {
            [changed, ..] => Ok(state::int(changed)? == 1),
            [] => Err(BackendError::command(KIND, "empty reply to a refund")),
        }
    }

    /// One call of the concurrency script in `r` (release) or `n` (renew) mode.
    async fn amend_leases(&self, key: &str, op: &Operation<'_>, amend: Amend) -> Result<bool, BackendError> {
        let input = &op.input;
        if self.inner.client_clock && input.now_us >= MAX_COST {
            return Err(BackendError::command(KIND, "client timestamp beyond 2^53 microseconds"));
        }
        let which = match amend {
            Amend::Refund { .. } => "r",
            Amend::Renew { .. } => "n",
            _ => return Err(BackendError::Unsupported { backend: KIND, what: "this change to an admission" }),
        };
        let stamp = amend.charged_at_us();
        if stamp >= MAX_COST {
            // No lease is stamped that late (Lua numbers are doubles): nothing to change.
            return Ok(false);
        }
        let mut call = Call::script(&SCRIPTS.concurrency, key);
        call.arg("c").arg(self.now_arg(input)).arg(self.inner.min_ttl_ms).arg(1);
        call.arg(input.rate.limit().min(MAX_SLOTS)).arg(input.rate.period_us()).arg(which).arg(stamp);
        let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
        match state::items(&reply)? {
            [changed, ..] => Ok(state::int(changed)? == 1),
            [] => Err(BackendError::command(KIND, "empty reply to a release or renewal")),
        }
    }

    /// Custom strategies: read, [`StrategyHandle::amend_bytes`](traffik::StrategyHandle::amend_bytes),
    /// write if unchanged, as decisions on the generic path.
    async fn amend_generic(&self, key: &str, op: &Operation<'_>, amend: Amend) -> Result<bool, BackendError> {
        let (mut now, mut current) = self.read(key, &op.input).await?;
        let mut attempt = 0u32;
        loop {
            let Some(bytes) = current.as_deref() else {
                return Ok(false);
            };
            let input = Input { now_us: now, ..op.input };
            let Some((new, ttl_us)) = op.strategy.amend_bytes(bytes, amend, &input)? else {
                return Ok(false);
            };
            let mut call = Call::script(&SCRIPTS.cas, key);
            call.arg(self.now_arg(&op.input)).arg("1").arg(bytes).arg(new).arg(self.ttl_ms(ttl_us));
            let reply = self.inner.conn.run(&call, self.inner.timeouts).await?;
            match state::swap(&reply)? {
                state::Swap::Done => return Ok(true),
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
}
