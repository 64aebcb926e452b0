//! `sluice-mock-llm`: an OpenAI-compatible stand-in for a GPU backend (vLLM, TGI, ...).
//!
//! JSON and SSE replies derived deterministically from the prompt, usage on or off,
//! latency / time-to-first-token / per-token delay, failure injection, `/health`,
//! vLLM-style `/metrics`, a record of every LLM request at `GET /_mock/requests`, and an
//! engine simulation (batch slots, queue, prefill and decode cost, prefix cache: `sim`).

pub mod app;
pub mod config;
pub mod listener;
pub mod reply;
pub mod sim;

pub use app::{router, App};
pub use config::MockConfig;
