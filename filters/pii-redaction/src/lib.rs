//! pii-redaction: PII and secrets never reach the model, and never leak back through a stream.

pub mod checks;
pub mod detect;
pub mod entity;

pub use detect::{scan, Found};
pub use entity::{BuiltIn, EntitySet};
