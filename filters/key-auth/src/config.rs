//! The key-auth filter configuration (the JSON document in `envoy.yaml` / the ECDS key file).
//!
//! ```json
//! {"keys": [{"id": "key_3f9a1c", "sha256": "<64 hex>", "tenant": "team-a",
//!            "enabled": true, "expires_at": "2027-01-01T00:00:00Z",
//!            "models": ["llama-3*"],
//!            "limits": {"requests_per_minute": 60, "tokens_per_minute": 100000,
//!                       "max_parallel": 4, "daily_tokens": 2000000},
//!            "prefix": "sk-sluice-Ab3x", "created_at": "2026-11-21T10:00:00Z"}]}
//! ```

use serde::{Deserialize, Serialize};
use sluice_common::{Limits, Priority};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// The secret sluice-batch signs its owner assertions with (at least 32 bytes; see
    /// `sluice_common::batch`). Without it no assertion is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_secret: Option<String>,
}

/// One API key. Only the SHA-256 digest of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public id: what logs, metrics and the CLI show.
    pub id: String,
    /// Hex SHA-256 of the whole key string.
    pub sha256: String,
    pub tenant: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// RFC 3339; the key is refused from this instant on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Model globs; default: all models.
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// `interactive` (default) or `batch`: a batch key's requests wait behind interactive
    /// ones when a pool is saturated.
    #[serde(default, skip_serializing_if = "Priority::is_interactive")]
    pub priority: Priority,
    /// The first characters of the key, so a person can tell keys apart. Display only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

fn default_true() -> bool {
    true
}

fn all_models() -> Vec<String> {
    vec!["*".to_string()]
}
