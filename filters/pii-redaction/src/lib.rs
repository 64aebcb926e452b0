//! pii-redaction: PII and secrets never reach the model, and never leak back through a stream.
//!
//! Request: the body's text fields (chat messages and parts, tool-call arguments,
//! completion prompts, configured paths) are scanned; findings are redacted, masked, hashed
//! or block the request (403). Response: JSON bodies are rewritten whole; SSE streams pass
//! event by event, holding back only the tail of text that could still become a finding
//! ([`stream`]). Publishes `sluice_pii` (counts, never values) and per-entity metrics.
//!
//! Detection ([`detect`], [`checks`]) and policy are plain Rust; [`lifecycle`] applies them
//! to a request through the host boundary. All of it is tested natively and in V8.

#[cfg(test)]
mod accuracy;
pub mod body;
pub mod checks;
pub mod config;
pub mod detect;
pub mod entity;
pub mod events;
pub mod lifecycle;
pub mod redact;
pub mod stream;

// The wasm entry point: left out of unit-test builds and of the throughput example (it
// imports Envoy's host functions).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::PiiRedaction);

pub use body::{redact_response, scan_request, CleanTexts, NotScanned, RequestOutcome};
pub use config::{Action, Api, PiiConfig, Settings, Unscannable};
pub use detect::{scan, scan_after, Found};
pub use entity::{BuiltIn, EntitySet};
pub use events::SseRedactor;
pub use redact::{find, find_after, redact_text, Blocked, Direction, Finding, Kind, Redactor};
pub use stream::StreamText;
