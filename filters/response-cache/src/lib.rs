//! response-cache: a repeated request answered without reaching a GPU.
//!
//! After token-counter (so the request is the one that would go upstream: routed, redacted,
//! counted) and before rate-limit's tokens stage (so a hit reserves no tokens and never
//! counts as backend load). The key is the tenant (or key), the API, the upstream model and
//! the canonical request without the fields that do not change the answer ([`key`]); what
//! may be cached is policy ([`config`]); entries live in a bounded ring in Envoy shared data
//! ([`store`]); a stream is stored as the complete response it assembles into and replayed
//! in the API's own events (`sluice_common::replay`). [`lifecycle`] applies it through the
//! host boundary. Publishes `sluice_cache`; answers carry `x-sluice-cache`.

pub mod config;
pub mod key;
pub mod lifecycle;
pub mod store;

// The wasm entry point (left out of unit-test builds: it imports Envoy's host functions).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::ResponseCache);

pub use config::{CacheConfig, Settings};

/// The response header that says what the cache did: `hit`, `miss` or `bypass`.
pub const CACHE_HEADER: &str = "x-sluice-cache";
/// How long sluice-cache keeps an entry (ms), on a store.
pub const TTL_HEADER: &str = "x-sluice-ttl-ms";
/// How similar a semantic match's prompt was, on sluice-cache's answer.
pub const SIMILARITY_HEADER: &str = "x-sluice-similarity";
