//! Behaviour of one mock pool; set at start by flags and changed at run time through
//! `PUT /_mock/config` (a JSON object whose fields replace the current ones).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Pool name, echoed in `x-mock-pool` so tests can tell pools apart.
    pub name: String,
    /// Models listed by `/v1/models` (any model is served).
    pub models: Vec<String>,
    /// Report `usage` (false: like TGI, never report it, even when asked).
    pub usage: bool,
    /// Tokens in a reply when `max_tokens` does not cap it.
    pub reply_tokens: u64,
    /// Delay before the response headers.
    pub delay_ms: u64,
    /// Delay before the first token of a stream (after the headers).
    pub ttft_ms: u64,
    /// Delay between tokens of a stream.
    pub token_delay_ms: u64,
    /// `/health` answers 200 when true, 503 when false.
    pub healthy: bool,
    /// Answer LLM calls with this status and an OpenAI error body.
    pub fail_status: Option<u16>,
    /// How many calls fail before the pool recovers; absent: all of them.
    pub fail_count: Option<u64>,
    /// The body of an injected failure, as an engine sends it (e.g. llama.cpp's
    /// `{"error":{"code":500,...}}` or TGI's `{"error":"...","error_type":"validation"}`);
    /// absent: an OpenAI error body.
    pub fail_body: Option<serde_json::Value>,
    /// A `retry-after` (seconds) on the injected failure, as an overloaded engine sends.
    pub fail_retry_after: Option<u64>,
    /// After this many content chunks, a stream reports an error event (vLLM's
    /// `data: {"error": {...}}`) and ends, inside its 200 response.
    pub stream_error_after: Option<u64>,
    /// Report that stream error as older llama.cpp servers did: an `error: {...}` line,
    /// which is not SSE (clients ignore it).
    pub stream_error_legacy: bool,
    /// Cut a stream's connection after this many content chunks.
    pub disconnect_after: Option<u64>,
    /// Send every stream event in two writes, 20 ms apart, cut mid-JSON: the gateway
    /// must put split events back together.
    pub split_events: bool,
    /// Reply with this text instead of generated words, cut into pieces of `reply_chunk`
    /// characters (one stream event each): tests put values split across events in it.
    pub reply_text: Option<String>,
    pub reply_chunk: usize,
    /// Engine simulation (see `sim.rs`): at most this many sequences run at once, the rest
    /// wait; absent: off. Set at start (the batch size of the first request holds).
    pub sim_slots: Option<usize>,
    /// Prefill cost per prompt token not in the prefix cache.
    pub sim_prefill_us_per_token: u64,
    /// Decode cost per output token with a batch of one.
    pub sim_decode_us_per_token: u64,
    /// How much slower each token decodes per other running sequence, in percent.
    pub sim_batch_slowdown_pct: u64,
    /// Prefix cache size, in 64-byte prompt blocks (LRU).
    pub sim_cache_blocks: usize,
    /// How stale `/metrics` may be (a real engine's gauges lag).
    pub sim_metrics_lag_ms: u64,
    /// The KV cache's size in tokens, for `kv_cache_usage_perc` (the running sequences'
    /// tokens over it); absent: the prefix cache's size. A real engine's KV cache holds
    /// many batches' worth: a small prefix cache that forces evictions must not also read
    /// as a KV cache full at every full batch.
    pub sim_kv_tokens: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            name: "mock".into(),
            models: vec!["mock-model".into()],
            usage: true,
            reply_tokens: 16,
            delay_ms: 0,
            ttft_ms: 0,
            token_delay_ms: 0,
            healthy: true,
            fail_status: None,
            fail_count: None,
            fail_body: None,
            fail_retry_after: None,
            stream_error_after: None,
            stream_error_legacy: false,
            disconnect_after: None,
            split_events: false,
            reply_text: None,
            reply_chunk: 4,
            sim_slots: None,
            sim_prefill_us_per_token: 200,
            sim_decode_us_per_token: 5_000,
            sim_batch_slowdown_pct: 10,
            sim_cache_blocks: 1024,
            sim_metrics_lag_ms: 250,
            sim_kv_tokens: None,
        }
    }
}

impl MockConfig {
    /// Apply a JSON patch: each field present replaces the current value (null clears an
    /// optional one). Unknown fields are refused so a typo in a test fails loudly.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Self, String> {
        let mut merged = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let (Some(target), Some(fields)) = (merged.as_object_mut(), patch.as_object()) else {
            return Err("the patch must be a JSON object".into());
        };
        for (k, v) in fields {
            target.insert(k.clone(), v.clone());
        }
        serde_json::from_value(merged).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_replaces_and_clears() {
        let c = MockConfig::default()
            .patched(&json!({"fail_status": 500, "fail_count": 2}))
            .unwrap();
        assert_eq!((c.fail_status, c.fail_count), (Some(500), Some(2)));
        let c = c.patched(&json!({"fail_status": null})).unwrap();
        assert_eq!(c.fail_status, None);
        assert!(c.patched(&json!({"no_such": 1})).is_err());
        assert!(c.patched(&json!([1])).is_err());
    }
}
