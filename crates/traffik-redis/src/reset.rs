//! Resetting a namespace: every master of a cluster (or the one server) scanned for the
//! namespace's keys, which are deleted in batches.

use redis::Value;
use traffik::BackendError;

use crate::conn::Call;
use crate::{KIND, RedisBackend, state};

/// Escapes glob characters for `SCAN MATCH`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBackend {
    /// The masters of the cluster as `(host, port)`, or `None` for a standalone server.
    pub(crate) async fn masters(&self) -> Result<Option<Vec<(String, u16)>>, BackendError> {
        if !self.inner.conn.is_cluster() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let reply = self.inner.conn.run(&Call::Plain(cmd), self.inner.timeouts).await?;
        let text = match &reply {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            Value::SimpleString(s) => s.clone(),
            other => {
                return Err(BackendError::command(KIND, format!("unexpected CLUSTER NODES reply {other:?}")));
            }
        };
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let addr = addr.split(['@', ',']).next().unwrap_or_default();
            if let Some((host, port)) = addr.rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                masters.push((host.to_owned(), port));
            }
        }
        Ok(Some(masters))
    }

    pub(crate) async fn reset_node(&self, node: Option<(&str, u16)>) -> Result<(), BackendError> {
        let pattern = format!("{}:*", glob_escape(&self.inner.namespace));
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let reply = self.on_node(scan, node).await?;
            let items = state::items(&reply)?;
            let [next, keys, ..] = items else {
                return Err(BackendError::command(KIND, "short SCAN reply"));
            };
            cursor = state::int(next)?;
            let keys = state::items(keys)?.iter().map(state::bytes).collect::<Result<Vec<_>, _>>()?;
            let keys: Vec<Vec<u8>> = keys.into_iter().flatten().collect();
            if !keys.is_empty() {
                if node.is_some() {
                    // Keys in a cluster sit in many slots; unlink one by one.
                    for k in keys {
                        let mut unlink = redis::cmd("UNLINK");
                        unlink.arg(k);
                        self.on_node(unlink, node).await?;
                    }
                } else {
                    let mut unlink = redis::cmd("UNLINK");
                    for k in keys {
                        unlink.arg(k);
                    }
                    self.on_node(unlink, None).await?;
                }
            }
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    pub(crate) async fn on_node(&self, cmd: redis::Cmd, node: Option<(&str, u16)>) -> Result<Value, BackendError> {
        match node {
            Some((host, port)) => self.inner.conn.run_on_node(cmd, host, port, self.inner.timeouts).await,
            None => self.inner.conn.run(&Call::Plain(cmd), self.inner.timeouts).await,
        }
    }

    pub(crate) async fn reset_impl(&self) -> Result<(), BackendError> {
        self.check_open()?;
        match self.masters().await? {
            None => self.reset_node(None).await,
            Some(masters) => {
                for (host, port) in &masters {
                    self.reset_node(Some((host, *port))).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
