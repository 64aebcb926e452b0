//! Shared pieces of the Sluice filters and services.
//!
//! Everything here is plain Rust with no proxy-wasm dependency, so it is compiled into every
//! filter (wasm32) and into the native services, the CLI and the tests alike.

pub mod api;
pub mod batch;
pub mod chain;
pub mod config;
pub mod engine_error;
pub mod error;
pub mod glob;
pub mod hash;
pub mod host;
pub mod json;
pub mod logging;
pub mod memo;
pub mod metrics;
pub mod openai;
pub mod parsed;
pub mod policy;
pub mod properties;
pub mod replay;
pub mod rls;
pub mod sse;

pub use api::{Api, Family, RequestView};
pub use config::{parse_config, ConfigError};
pub use error::{ErrorKind, OpenAiError};
pub use host::{Flow, Host, Lifecycle, Plugin, Side};
pub use policy::{Limits, Policy, Priority};
