//! token-counter: exact token accounting, streamed responses included.
//!
//! Request: counts the prompt of the body sent upstream (an open model's own tokenizer and
//! chat template, or OpenAI's message formula and encoding) and publishes `sluice_prompt_tokens` before the request leaves; asks
//! streams for usage (`stream_options.include_usage`) when the client did not.
//! Response: reads `usage` from JSON bodies and SSE streams as chunks pass (nothing is held
//! back but an incomplete event that must be edited), hides the usage chunk from clients
//! that did not ask for it, and counts the generated text when the backend reports none or
//! the stream is cut. Publishes `sluice_completion_tokens` and `sluice_usage_source`.
//!
//! The policy is in plain modules ([`request`], [`response`], [`prompt`]); [`lifecycle`]
//! applies it to a request through the host boundary. All of it is tested natively and in V8.

pub mod config;
pub mod lifecycle;
pub mod prompt;
pub mod request;
pub mod response;

// The wasm entry point. It imports Envoy's host functions, so it is left out of unit-test
// builds, which then run anywhere (natively, and compiled to wasm32 under Node).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::TokenCounter);

pub use config::{Api, Settings, TokenCounterConfig};
pub use request::{plan_request, RequestPlan};
pub use response::{CompletionUsage, ResponseTracker, UsageSource};

pub use sluice_common::metrics::label;
