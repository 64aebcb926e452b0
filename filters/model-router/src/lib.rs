//! model-router: which model, on which GPU pool.
//!
//! Reads `model` from the body, maps the public name (an alias, a glob, or `auto`) to a
//! target pool and upstream model (weighted, optionally sticky), enforces the key's model
//! allow-list, rewrites the body's `model`, sets `x-sluice-route` (and `x-sluice-affinity`
//! for consistent-hash pools) and clears Envoy's route cache, so Envoy's route table picks
//! the pool and Envoy balances, health-checks, retries and fails over. Answers
//! `GET /v1/models` itself. Publishes `sluice_model_requested`, `sluice_model`,
//! `sluice_route`.
//!
//! The decision is plain Rust ([`route`]) tested natively and in wasm; `filter` (wasm32
//! only) is the proxy-wasm glue.

pub mod config;
pub mod route;

#[cfg(all(target_arch = "wasm32", not(test)))]
mod filter;

pub use config::{Api, RouterConfig, Settings};
pub use route::{models_list, route, Decision, RequestFacts};

/// The header the route table matches: the pool.
pub const AFFINITY_HEADER: &str = "x-sluice-affinity";
