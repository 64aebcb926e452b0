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
//! The decision is plain Rust ([`route`]); [`lifecycle`] applies it to a request through
//! the host boundary. Both are tested natively and in V8.

pub mod config;
pub mod lifecycle;
pub mod route;

// The wasm entry point (left out of unit-test builds: it imports Envoy's host functions).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::ModelRouter);

pub use config::{Api, RouterConfig, Settings};
pub use route::{models_list, route, Decision, RequestFacts};

/// The header a consistent-hash pool's balancer hashes (its `hash_policy`); the route table
/// matches `x-sluice-route` ([`sluice_common::properties::ROUTE_HEADER`]).
pub const AFFINITY_HEADER: &str = "x-sluice-affinity";
