//! pii-redaction: PII and secrets never reach the model, and never leak back through a stream.

pub mod body;
pub mod checks;
pub mod config;
pub mod detect;
pub mod entity;
pub mod events;
pub mod redact;
pub mod stream;

pub use body::{redact_response, scan_request, NotScanned, RequestOutcome};
pub use config::{Action, Api, PiiConfig, Settings, Unscannable};
pub use detect::{scan, Found};
pub use entity::{BuiltIn, EntitySet};
pub use events::SseRedactor;
pub use redact::{find, redact_text, Blocked, Direction, Finding, Kind, Redactor};
pub use stream::StreamText;
