//! What several fuzz targets share.

use sluice_pii_redaction::{PiiConfig, Settings};
use std::sync::OnceLock;

/// pii-redaction's default settings (every built-in entity, redact), built once.
pub fn pii_settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        let Ok(c) = sluice_common::parse_config::<PiiConfig>(b"{}") else {
            std::process::abort()
        };
        Settings::new(c).unwrap_or_else(|_| std::process::abort())
    })
}
