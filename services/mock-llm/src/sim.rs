//! Engine simulation: a GPU engine's behaviour, close enough to tell balancing modes apart.
//!
//! At most `sim_slots` sequences run at once (the batch); more wait in a queue. A request's
//! prefill costs time per prompt token not already in the endpoint's prefix cache (an LRU of
//! 64-byte prompt blocks, chained like an engine's block hashes); each output token costs
//! decode time that grows with the batch. `/metrics` reports vLLM's gauges (requests
//! waiting and running, KV-cache use) and prefix-cache counters, refreshed at most every
//! `sim_metrics_lag_ms`, as a real engine's scrape lags.

use crate::config::MockConfig;
use sluice_common::hash::fnv1a_parts;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of prompt text per cache block (about 16 tokens, vLLM's block).
pub const BLOCK_BYTES: usize = 64;
/// Tokens per KV block, for the utilisation gauge.
const BLOCK_TOKENS: u64 = 16;

#[derive(Default)]
pub struct Sim {
    slots: OnceLock<Arc<Semaphore>>,
    waiting: AtomicI64,
    running: AtomicI64,
    /// KV tokens held by running sequences (prompt + output cap).
    kv_tokens: AtomicI64,
    cache: Mutex<Lru>,
    /// Prompt tokens prefilled (not found in the prefix cache), and found in it.
    pub prefilled_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    snapshot: Mutex<Option<(Instant, String)>>,
}

/// Block hashes, least recently used first.
#[derive(Default)]
struct Lru {
    order: VecDeque<u64>,
    present: HashSet<u64>,
}

impl Lru {
    fn touch(&mut self, key: u64, capacity: usize) {
        if self.present.contains(&key) {
            self.order.retain(|k| *k != key);
        } else {
            self.present.insert(key);
        }
        self.order.push_back(key);
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.present.remove(&old);
            }
        }
    }
}

/// A running sequence: its batch slot and its KV tokens, given back when dropped (the
/// response finished or the client left).
pub struct Ticket {
    sim: Arc<Sim>,
    _permit: OwnedSemaphorePermit,
    kv: i64,
    /// Prefill time of this request.
    pub prefill: Duration,
    /// Decode time per output token, at the batch size it joined.
    pub per_token: Duration,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.sim.running.fetch_sub(1, Ordering::Relaxed);
        self.sim.kv_tokens.fetch_sub(self.kv, Ordering::Relaxed);
    }
}

/// The chained block keys of a prompt (whole blocks only).
fn block_keys(prompt: &str) -> Vec<u64> {
    let mut key = 0u64;
    prompt
        .as_bytes()
        .chunks_exact(BLOCK_BYTES)
        .map(|block| {
            key = fnv1a_parts(&[&key.to_le_bytes(), block]);
            key
        })
        .collect()
}

impl Sim {
    /// Wait for a batch slot, then cost the prefill. `None` when simulation is off.
    pub async fn admit(
        self: &Arc<Self>,
        config: &MockConfig,
        prompt: &str,
        output_cap: u64,
    ) -> Option<Ticket> {
        let slots = config.sim_slots?;
        let semaphore = self
            .slots
            .get_or_init(|| Arc::new(Semaphore::new(slots.max(1))))
            .clone();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = semaphore.acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.ok()?;
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        // The prefix cache: leading blocks already held cost nothing to prefill.
        let keys = block_keys(prompt);
        let cached_blocks = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let hit = keys
                .iter()
                .take_while(|k| cache.present.contains(k))
                .count();
            for k in &keys {
                cache.touch(*k, config.sim_cache_blocks.max(1));
            }
            hit
        };
        let prompt_tokens = (prompt.len() as u64).div_ceil(4).max(1);
        let cached = ((cached_blocks * BLOCK_BYTES) as u64 / 4).min(prompt_tokens);
        let prefill_tokens = prompt_tokens - cached;
        self.prefilled_tokens
            .fetch_add(prefill_tokens, Ordering::Relaxed);
        self.cached_tokens.fetch_add(cached, Ordering::Relaxed);
        let kv = i64::try_from(prompt_tokens + output_cap).unwrap_or(i64::MAX);
        self.kv_tokens.fetch_add(kv, Ordering::Relaxed);
        let slowdown = 100 + config.sim_batch_slowdown_pct * (running.max(1) as u64 - 1);
        Some(Ticket {
            sim: self.clone(),
            _permit: permit,
            kv,
            prefill: Duration::from_micros(prefill_tokens * config.sim_prefill_us_per_token),
            per_token: Duration::from_micros(config.sim_decode_us_per_token * slowdown / 100),
        })
    }

    /// vLLM's load gauges and prefix-cache counters, refreshed at most every
    /// `sim_metrics_lag_ms`.
    pub fn metrics(&self, config: &MockConfig) -> String {
        let lag = Duration::from_millis(config.sim_metrics_lag_ms);
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, text)) = snapshot.as_ref() {
            if at.elapsed() < lag {
                return text.clone();
            }
        }
        let name = &config.name;
        let capacity = config
            .sim_kv_tokens
            .unwrap_or(config.sim_cache_blocks.max(1) as u64 * BLOCK_TOKENS)
            .max(1) as f64;
        let kv = (self.kv_tokens.load(Ordering::Relaxed).max(0) as f64 / capacity).min(1.0);
        let prefilled = self.prefilled_tokens.load(Ordering::Relaxed);
        let cached = self.cached_tokens.load(Ordering::Relaxed);
        let text = format!(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{model_name=\"{name}\"}} {}\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{model_name=\"{name}\"}} {}\n\
             # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
             # TYPE vllm:kv_cache_usage_perc gauge\n\
             vllm:kv_cache_usage_perc{{model_name=\"{name}\"}} {kv}\n\
             # HELP vllm:prefix_cache_queries_total Prefix cache queries, in tokens.\n\
             # TYPE vllm:prefix_cache_queries_total counter\n\
             vllm:prefix_cache_queries_total{{model_name=\"{name}\"}} {}\n\
             # HELP vllm:prefix_cache_hits_total Prefix cache hits, in tokens.\n\
             # TYPE vllm:prefix_cache_hits_total counter\n\
             vllm:prefix_cache_hits_total{{model_name=\"{name}\"}} {cached}\n\
             # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
             # TYPE vllm:prompt_tokens_total counter\n\
             vllm:prompt_tokens_total{{model_name=\"{name}\"}} {prefilled}\n",
            self.running.load(Ordering::Relaxed),
            self.waiting.load(Ordering::Relaxed),
            prefilled + cached,
        );
        *snapshot = Some((Instant::now(), text.clone()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(slots: usize) -> MockConfig {
        MockConfig {
            sim_slots: Some(slots),
            sim_prefill_us_per_token: 100,
            sim_decode_us_per_token: 1_000,
            sim_batch_slowdown_pct: 50,
            sim_cache_blocks: 8,
            sim_metrics_lag_ms: 0,
            ..MockConfig::default()
        }
    }

    #[tokio::test]
    async fn a_cached_prefix_is_not_prefilled_again_and_the_batch_slows_decoding() {
        let sim = Arc::new(Sim::default());
        let c = config(2);
        let prompt = "x".repeat(256); // 4 blocks, 64 tokens
        let a = sim.admit(&c, &prompt, 10).await.unwrap();
        assert_eq!(a.prefill, Duration::from_micros(64 * 100));
        assert_eq!(a.per_token, Duration::from_micros(1_000));
        // Same prompt: all four blocks cached; the second in the batch decodes 50% slower.
        let b = sim.admit(&c, &prompt, 10).await.unwrap();
        assert_eq!(b.prefill, Duration::ZERO);
        assert_eq!(b.per_token, Duration::from_micros(1_500));
        let m = sim.metrics(&c);
        assert!(
            m.contains("vllm:num_requests_running{model_name=\"mock\"} 2\n"),
            "{m}"
        );
        assert!(
            m.contains("vllm:prefix_cache_hits_total{model_name=\"mock\"} 64\n"),
            "{m}"
        );
        drop((a, b));
        assert!(sim
            .metrics(&c)
            .contains("vllm:num_requests_running{model_name=\"mock\"} 0\n"));
    }

    #[tokio::test]
    async fn past_the_slots_requests_wait_in_the_queue() {
        let sim = Arc::new(Sim::default());
        let c = config(1);
        let first = sim.admit(&c, "hi", 1).await.unwrap();
        let waiter = {
            let sim = sim.clone();
            let c = c.clone();
            tokio::spawn(async move { sim.admit(&c, "hi", 1).await.map(|t| t.prefill) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(sim
            .metrics(&c)
            .contains("vllm:num_requests_waiting{model_name=\"mock\"} 1\n"));
        drop(first);
        assert!(waiter.await.unwrap().is_some());
    }

    #[test]
    fn the_cache_is_bounded_and_least_recently_used_goes_first() {
        let mut lru = Lru::default();
        for k in 0..10 {
            lru.touch(k, 4);
        }
        lru.touch(7, 4);
        assert_eq!(lru.order, [6, 8, 9, 7]);
        assert_eq!(lru.present.len(), 4);
    }
}
