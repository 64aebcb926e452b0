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

pub mod config;
pub mod decide;
pub mod rls;
pub mod store;

// The proxy-wasm glue needs Envoy's host functions: it is left out of unit-test builds.
#[cfg(all(target_arch = "wasm32", not(test)))]
mod filter;

pub use config::{RateLimitConfig, Stage};

/// `reset` header value: seconds, as OpenAI writes it (`"23s"`).
pub fn reset_header(seconds: u64) -> String {
    format!("{seconds}s")
}
