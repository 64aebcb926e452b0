//! Counters: fixed windows, checked and updated atomically for all the descriptors of one
//! call, so a call that does not fit changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What to do with one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add if it fits under the limit (all `Check`s of a call fit, or none is added).
    Check,
    /// Add regardless (usage that went over its reservation).
    Force,
    /// Subtract (a refund), never below zero.
    Refund,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Counter key, window included.
    pub key: String,
    pub limit: u64,
    pub hits: u64,
    pub mode: Mode,
    /// Seconds the counter must live (its window's remaining time, at least 1).
    pub ttl: u64,
}

impl Op {
    pub fn new(key: impl Into<String>, limit: u64, hits: u64, mode: Mode, ttl: u64) -> Self {
        Self {
            key: key.into(),
            limit,
            hits,
            mode,
            ttl,
        }
    }
}

/// Result of a call: whether the `Check`s fit, and each counter's value after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub fits: bool,
    pub used: Vec<u64>,
}

#[derive(Debug)]
pub enum StorageError {
    Unavailable(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "storage unavailable: {why}"),
        }
    }
}

impl std::error::Error for StorageError {}

pub enum Storage {
    Memory(Memory),
    Redis(Redis),
}

impl Storage {
    pub async fn apply(&self, ops: &[Op], now: u64) -> Result<Applied, StorageError> {
        match self {
            Self::Memory(m) => Ok(m.apply(ops, now)),
            Self::Redis(r) => r.apply(ops).await,
        }
    }
}

/// In one process: a map of counters with their expiry, swept as it grows.
#[derive(Default)]
pub struct Memory {
    counters: Mutex<HashMap<String, (u64, u64)>>,
}

impl Memory {
    fn apply(&self, ops: &[Op], now: u64) -> Applied {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, expires)| *expires > now);
        }
        let current = |map: &HashMap<String, (u64, u64)>, k: &str| {
            map.get(k)
                .filter(|(_, exp)| *exp > now)
                .map_or(0, |(v, _)| *v)
        };
        let fits = ops
            .iter()
            .filter(|o| o.mode == Mode::Check)
            .all(|o| current(&map, &o.key).saturating_add(o.hits) <= o.limit);
        let mut used = Vec::with_capacity(ops.len());
        for o in ops {
            let cur = current(&map, &o.key);
            let next = match o.mode {
                Mode::Check if fits => cur + o.hits,
                Mode::Check => cur,
                Mode::Force => cur.saturating_add(o.hits),
                Mode::Refund => cur.saturating_sub(o.hits),
            };
            if next != cur || !map.contains_key(&o.key) {
                map.insert(o.key.clone(), (next, now + o.ttl));
            }
            used.push(next);
        }
        Applied { fits, used }
    }
}

/// Shared by every replica of the service and every Envoy: a Lua script makes each call
/// atomic in Redis.
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

const SCRIPT: &str = r"
local n = #KEYS
local cur = {}
local fits = 1
for i = 1, n do
  local b = (i - 1) * 4
  cur[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if ARGV[b + 3] == 'check' and cur[i] + tonumber(ARGV[b + 2]) > tonumber(ARGV[b + 1]) then
    fits = 0
  end
end
local out = {fits}
for i = 1, n do
  local b = (i - 1) * 4
  local hits = tonumber(ARGV[b + 2])
  local mode = ARGV[b + 3]
  local ttl = tonumber(ARGV[b + 4])
  local v = cur[i]
  if mode == 'refund' then
    if v > 0 then
      v = math.max(0, v - hits)
      redis.call('SET', KEYS[i], v, 'KEEPTTL')
    end
  elseif mode == 'force' or (mode == 'check' and fits == 1) then
    v = redis.call('INCRBY', KEYS[i], hits)
    if v == hits then redis.call('EXPIRE', KEYS[i], ttl) end
  end
  out[i + 1] = v
end
return out
";

impl Redis {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StorageError> {
        let conn = sluice_service::redis_connection(url, timeout)
            .await
            .map_err(StorageError::Unavailable)?;
        Ok(Self {
            conn,
            script: redis::Script::new(SCRIPT),
            timeout,
        })
    }

    async fn apply(&self, ops: &[Op]) -> Result<Applied, StorageError> {
        let mut invocation = self.script.prepare_invoke();
        for o in ops {
            let mode = match o.mode {
                Mode::Check => "check",
                Mode::Force => "force",
                Mode::Refund => "refund",
            };
            invocation
                .key(&o.key)
                .arg(o.limit)
                .arg(o.hits)
                .arg(mode)
                .arg(o.ttl.max(1));
        }
        let mut conn = self.conn.clone();
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let out = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StorageError::Unavailable("redis timed out".into()))?
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let (fits, used) = out
            .split_first()
            .ok_or_else(|| StorageError::Unavailable("empty reply".into()))?;
        Ok(Applied {
            fits: *fits == 1,
            used: used
                .iter()
                .map(|v| u64::try_from(*v).unwrap_or(0))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, limit: u64, hits: u64, mode: Mode) -> Op {
        Op::new(key, limit, hits, mode, 60)
    }

    #[test]
    fn all_or_nothing_and_refunds() {
        let m = Memory::default();
        let a = m.apply(
            &[op("a", 10, 6, Mode::Check), op("b", 5, 5, Mode::Check)],
            0,
        );
        assert_eq!(
            a,
            Applied {
                fits: true,
                used: vec![6, 5]
            }
        );
        // b is full: a must not move either.
        let a = m.apply(
            &[op("a", 10, 1, Mode::Check), op("b", 5, 1, Mode::Check)],
            1,
        );
        assert_eq!(
            a,
            Applied {
                fits: false,
                used: vec![6, 5]
            }
        );
        let a = m.apply(
            &[op("b", 5, 3, Mode::Refund), op("a", 10, 9, Mode::Force)],
            2,
        );
        assert_eq!(a.used, vec![2, 15]);
        // Expired windows count from zero.
        assert_eq!(m.apply(&[op("a", 10, 1, Mode::Check)], 100).used, vec![1]);
    }
}
