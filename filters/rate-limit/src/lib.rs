//! rate-limit: requests, tokens and concurrency per key, tenant, model, key and model, and
//! globally; reserved before the request goes upstream, reconciled with the real usage
//! after, so a budget is never exceeded by concurrent requests.
//!
//! One wasm module runs as two stages (config `stage`):
//! * `admission`, right after key-auth, on headers: request counts and requests in flight
//!   for the key, its tenant and global rules. An over-rate key is refused before its body
//!   is buffered or tokenized.
//! * `tokens`, after token-counter: reserves prompt tokens (`sluice_prompt_tokens`) plus the
//!   expected output (`max_tokens` / `max_completion_tokens`, else a default, capped), and
//!   model-scoped limits; at the end settles with `sluice_completion_tokens`.
//!
//! Counters are fixed windows in Envoy shared data, updated by compare-and-swap (store.rs).
//!
//! The pieces, each doing one thing: [`config`] (validated settings), [`decide`] (which
//! counters apply, taking and settling them), [`store`] (CAS counters in shared data),
//! [`rls`] (the rate-limit service's requests and answers reduced to a verdict), [`reply`]
//! (what the client is told), and [`lifecycle`] (the per-request state machine over the
//! host boundary).

pub mod config;
pub mod decide;
pub mod lifecycle;
pub mod reply;
pub mod rls;
pub mod store;

pub use config::{RateLimitConfig, Stage};

// The wasm entry point (left out of unit-test builds: it imports Envoy's host functions).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::RateLimit);
