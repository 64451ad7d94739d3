//! Decoding script replies and the stored state strings.

use redis::Value;
use traffik::BackendError;
use traffik::strategy::{
    Builtin, ConcurrencyState, CostAwareSpec, CostAwareState, FixedWindowState, Lease, MeterState, QuotaRolloverState,
    SlidingWindowCounterState, SlidingWindowLogState, Verdict, VerdictKind,
};

use crate::KIND;

fn bad_reply(what: &str, v: &Value) -> BackendError {
    BackendError::command(KIND, format!("unexpected reply ({what}): {v:?}"))
}

/// An integer field of a reply.
pub(crate) fn int(v: &Value) -> Result<u64, BackendError> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| bad_reply("negative integer", v)),
        Value::BulkString(b) => {
            std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad_reply("integer", v))
        }
        _ => Err(bad_reply("integer", v)),
    }
}

/// Optional bytes (a bulk string or nil).
pub(crate) fn bytes(v: &Value) -> Result<Option<Vec<u8>>, BackendError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b.clone())),
        Value::SimpleString(s) => Ok(Some(s.as_bytes().to_vec())),
        _ => Err(bad_reply("bytes", v)),
    }
}

/// The items of an array reply.
pub(crate) fn items(v: &Value) -> Result<&[Value], BackendError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(bad_reply("array", v)),
    }
}

/// The cost-aware bucket's last script argument: `"reference_milli max_slowdown_milli window"`.
pub(crate) fn cost_aware_arg(spec: &CostAwareSpec) -> String {
    format!("{} {} {}", spec.reference_milli, spec.max_slowdown_milli, spec.window)
}

/// `{kind, remaining, wait_us, reset_us, ...}` to a verdict.
pub(crate) fn verdict(fields: &[Value]) -> Result<Verdict, BackendError> {
    let [k, remaining, wait, reset, ..] = fields else {
        return Err(BackendError::command(KIND, "short verdict reply"));
    };
    let kind = match int(k)? {
        0 => VerdictKind::Admit,
        1 => VerdictKind::Delay,
        2 => VerdictKind::Deny,
        3 => VerdictKind::Never,
        other => {
            return Err(BackendError::command(KIND, format!("unknown verdict kind {other}")));
        }
    };
    Ok(Verdict { kind, remaining: int(remaining)?, wait_us: int(wait)?, reset_us: int(reset)?, lease_us: 0, at_us: 0 })
}

/// A decision's reply, `{kind, remaining, wait_us, reset_us, lease, at}`, to a verdict: with
/// the lease stamp (the concurrency script's admissions; 0 otherwise) and the server's time
/// when the script read it (0 in client-clock mode), as [`Verdict::at_us`]. A shorter reply
/// (an older script) leaves them 0.
pub(crate) fn decision(fields: &[Value]) -> Result<Verdict, BackendError> {
    let v = verdict(fields)?;
    let lease = match fields.get(4) {
        Some(lease) => int(lease)?,
        None => 0,
    };
    let at = match fields.get(5) {
        Some(at) => int(at)?,
        None => 0,
    };
    Ok(v.with_lease(lease).decided_at(at))
}

fn numbers(raw: &str) -> Option<Vec<u64>> {
    raw.split([' ', ':']).map(|p| p.parse::<u64>().ok()).collect()
}

/// The stored state string of a built-in, as the strategy's serialized (JSON) state; `None`
/// when absent or unreadable (the scripts treat such state as absent too).
pub(crate) fn state_json(builtin: Builtin, raw: Option<&[u8]>) -> Option<Vec<u8>> {
    let raw = std::str::from_utf8(raw?).ok()?;
    let json = match builtin {
        Builtin::FixedWindow => match numbers(raw)?[..] {
            [last_us, used, period_us] => serde_json::to_vec(&FixedWindowState { last_us, used, period_us }),
            _ => return None,
        },
        Builtin::SlidingWindowCounter => match numbers(raw)?[..] {
            [last_us, prev, cur, period_us] => {
                serde_json::to_vec(&SlidingWindowCounterState { last_us, prev, cur, period_us })
            }
            _ => return None,
        },
        Builtin::SlidingWindowLog => {
            let (period, body) = raw.split_once('/')?;
            let n = numbers(body)?;
            if n.len() % 2 != 0 || n.is_empty() {
                return None;
            }
            let entries = n.chunks_exact(2).map(|p| (p[0], p[1])).collect();
            serde_json::to_vec(&SlidingWindowLogState { period_us: period.parse().ok()?, entries })
        }
        Builtin::Meter(_) => match numbers(raw)?[..] {
            [tat] => serde_json::to_vec(&MeterState { tat }),
            _ => return None,
        },
        Builtin::CostAware(_) => match numbers(raw)?[..] {
            [tat, avg_milli, prev_avg_milli] => serde_json::to_vec(&CostAwareState { tat, avg_milli, prev_avg_milli }),
            _ => return None,
        },
        Builtin::Concurrency => {
            let (period, body) = raw.split_once('/')?;
            let n = if body.is_empty() { Vec::new() } else { numbers(body)? };
            if n.len() % 3 != 0 {
                return None;
            }
            let leases = n.chunks_exact(3).map(|l| Lease { at_us: l[0], until_us: l[1], slots: l[2] }).collect();
            serde_json::to_vec(&ConcurrencyState { period_us: period.parse().ok()?, leases })
        }
        Builtin::QuotaRollover(_) => match numbers(raw)?[..] {
            [start_us, used, carried, period_us] => {
                serde_json::to_vec(&QuotaRolloverState { start_us, used, carried, period_us })
            }
            _ => return None,
        },
        _ => return None,
    };
    json.ok()
}

/// What a compare-and-swap script call answered: swapped, or the state to try again on (the
/// server's time and the current state, `None` when the key is absent).
pub(crate) enum Swap {
    Done,
    Retry(u64, Option<Vec<u8>>),
}

/// Reads the `cas` script's reply: `{1}` when it swapped, else `{0, now, current}` (a nil at
/// the end of a Lua table is dropped: `{0, now}` means the key is absent).
pub(crate) fn swap(reply: &Value) -> Result<Swap, BackendError> {
    match items(reply)? {
        [ok] if int(ok)? == 1 => Ok(Swap::Done),
        [_, n, cur, ..] => Ok(Swap::Retry(int(n)?, bytes(cur)?)),
        [_, n] => Ok(Swap::Retry(int(n)?, None)),
        _ => Err(BackendError::command(KIND, "bad compare-and-swap reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_strings_become_strategy_json() {
        let fw = state_json(Builtin::FixedWindow, Some(b"12 3 1000")).unwrap_or_default();
        assert_eq!(fw, br#"{"last_us":12,"used":3,"period_us":1000}"#);
        let swl = state_json(Builtin::SlidingWindowLog, Some(b"1000/5:1 9:2")).unwrap_or_default();
        assert_eq!(swl, br#"{"period_us":1000,"entries":[[5,1],[9,2]]}"#);
        // State written by earlier versions reads as absent.
        assert!(state_json(Builtin::FixedWindow, Some(b"12 3")).is_none());
        assert!(state_json(Builtin::SlidingWindowLog, Some(b"5:1 9:2")).is_none());
        assert!(state_json(Builtin::FixedWindow, Some(b"garbage")).is_none());
        assert!(state_json(Builtin::FixedWindow, None).is_none());
    }
}
