//! endpoint-picker configuration: the pools whose endpoints it picks, rendered by the Envoy
//! template from the same pool descriptions as the clusters.
//!
//! ```json
//! {"pools": [{"name": "pool-a", "engine": "vllm",
//!             "endpoints": [{"address": "10.0.0.5:8000", "metrics_cluster": "sluice_metrics__pool-a__0"}]}],
//!  "scrape_interval_ms": 500, "stale_after_ms": 3000,
//!  "prefix": {"block_bytes": 256, "max_blocks": 256, "slots": 65536},
//!  "weights": {"waiting": 2, "kv_cache": 4, "prefix": 1.5, "saturated_waiting": 2}}
//! ```

use crate::engine::Engine;
use crate::pick::Weights;
use serde::{Deserialize, Serialize};
use sluice_common::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `IP:port`, exactly as the endpoint is in the pool's cluster (Envoy's `override_host`
    /// matches it).
    pub address: String,
    /// A cluster whose one host is this endpoint, for scraping its metrics.
    #[serde(default)]
    pub metrics_cluster: Option<String>,
    /// Its priority in the cluster (0 first; another region's endpoints stand by at 1, 2,
    /// ...): it is picked only while no endpoint of a higher priority reports.
    #[serde(default)]
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's Envoy cluster (what model-router publishes as `sluice_route`).
    pub name: String,
    #[serde(default)]
    pub engine: Engine,
    pub endpoints: Vec<EndpointConfig>,
    /// Requests one endpoint serves at once (its batch slots). When every endpoint has
    /// this many in flight from the gateway (or a queue of `weights.saturated_waiting`),
    /// requests wait in the gateway: flow control. Absent: no flow control.
    #[serde(default)]
    pub max_in_flight: Option<u64>,
}

/// The gateway's queue when a pool is saturated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Queue in the gateway when a pool is full (pools with `max_in_flight`). Off: Envoy's
    /// own pending queue holds what the endpoints' connection limits do not admit.
    pub enabled: bool,
    /// Requests waiting per pool (per Envoy worker); past it, 429 at once.
    pub max_queue: usize,
    /// The longest wait; past it, 429 with `retry-after`.
    pub max_wait_ms: u64,
    /// Slots per endpoint that batch requests leave to interactive ones: a batch request
    /// waits while every endpoint has `max_in_flight - batch_headroom` requests or more
    /// (at least one slot stays open to batch work), so an interactive request arriving
    /// while a batch fills the pool finds a slot at once, not an engine queue.
    pub batch_headroom: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_queue: 1024,
            max_wait_ms: 10_000,
            batch_headroom: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixConfig {
    /// Bytes of prompt text per block (about a quarter as many tokens).
    pub block_bytes: usize,
    /// Blocks indexed per prompt; the rest of a longer prompt is not.
    pub max_blocks: usize,
    /// Entries of the shared index (all pools); older prefixes are overwritten.
    pub slots: u64,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            block_bytes: 256,
            max_blocks: 256,
            slots: 65_536,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PickerConfig {
    pub pools: Vec<PoolConfig>,
    #[serde(default = "scrape_interval")]
    pub scrape_interval_ms: u64,
    /// An engine report older than this is ignored (the gateway's own counts decide; with
    /// no fresh report for any endpoint, Envoy's balancer does).
    #[serde(default = "stale_after")]
    pub stale_after_ms: u64,
    #[serde(default)]
    pub prefix: PrefixConfig,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub flow: FlowConfig,
}

fn scrape_interval() -> u64 {
    500
}
fn stale_after() -> u64 {
    3_000
}

impl PickerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.scrape_interval_ms < 50 || self.stale_after_ms < self.scrape_interval_ms {
            return Err(ConfigError::invalid(
                "scrape_interval_ms must be at least 50 and stale_after_ms at least that",
            ));
        }
        if self.prefix.block_bytes == 0 || self.prefix.slots == 0 {
            return Err(ConfigError::invalid(
                "prefix.block_bytes and prefix.slots must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.pools {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(format!(
                    "pool names must be unique and non-empty: {:?}",
                    p.name
                )));
            }
            if p.max_in_flight == Some(0) {
                return Err(ConfigError::invalid(format!(
                    "pool {:?}: max_in_flight must be at least 1",
                    p.name
                )));
            }
            if p.endpoints.is_empty() || p.endpoints.len() > usize::from(u16::MAX) {
                return Err(ConfigError::invalid(format!(
                    "pool {:?} needs 1 to 65535 endpoints",
                    p.name
                )));
            }
            for e in &p.endpoints {
                if e.address.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::invalid(format!(
                        "pool {:?}: endpoint address {:?} is not IP:port (Envoy's override_host needs one)",
                        p.name, e.address
                    )));
                }
            }
        }
        Ok(())
    }

    /// The in-flight bound flow control holds `pool` to, per endpoint: its `max_in_flight`
    /// when flow control is on (a pool without one is never queued).
    pub fn flow_limit(&self, pool: &PoolConfig) -> Option<u64> {
        pool.max_in_flight.filter(|_| self.flow.enabled)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PickerConfig, ConfigError> {
        let c: PickerConfig = sluice_common::parse_config(json.as_bytes())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults_and_refusals() {
        let c = parse(r#"{"pools": [{"name": "a", "engine": "vllm", "endpoints": [{"address": "127.0.0.1:9001"}]}]}"#).unwrap();
        assert_eq!(
            (c.scrape_interval_ms, c.stale_after_ms, c.prefix.block_bytes),
            (500, 3000, 256)
        );
        assert_eq!(c.pool("a").unwrap().engine, Engine::Vllm);
        for bad in [
            r#"{"pools": [{"name": "a", "endpoints": []}]}"#,
            r#"{"pools": [{"name": "a", "endpoints": [{"address": "gpu-1:8000"}]}]}"#,
            r#"{"pools": [{"name": "a", "engine": "mystery", "endpoints": [{"address": "127.0.0.1:1"}]}]}"#,
            r#"{"pools": [], "scrape_interval_ms": 10}"#,
            r#"{"pools": [], "prefix": {"slots": 0}}"#,
            r#"{"pools": [], "extra": 1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
