//! endpoint-picker: each request to the endpoint of its pool that will serve it fastest.
//!
//! Envoy balances a pool by the requests it has open to each host; what decides an LLM
//! request's latency on a GPU is the engine's queue, its KV cache, and whether it already
//! holds the prompt's prefix. This filter reads each engine's own metrics ([`engine`], on a
//! timer, through HTTP callouts from the proxy: no extra hop per request), blends them with
//! what the gateway knows at once (its requests in flight to each endpoint, shared by all
//! workers), keeps a bounded index of which endpoint served which prompt prefix
//! ([`prefix`]), and ranks the endpoints ([`pick`]). The order goes to Envoy in
//! `x-sluice-endpoint` for its `override_host` load-balancing policy, so health checks,
//! outlier detection, retries (down the list) and failover keep working; without fresh
//! metrics Envoy's own balancer decides.

pub mod config;
pub mod engine;
pub mod flow;
pub mod lifecycle;
pub mod pick;
pub mod prefix;
pub mod recent;

pub use config::PickerConfig;
pub use engine::{Engine, EngineLoad};

// The wasm entry point (left out of unit-test builds: it imports Envoy's host functions).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::EndpointPicker);
