//! rate-limit configuration. One wasm module, two stages in the chain (see lib.rs).
//!
//! ```json
//! {"stage": "tokens",
//!  "window_seconds": 60, "day_seconds": 86400,
//!  "default_max_tokens": 512, "max_output_reservation": 32768,
//!  "limits": [
//!    {"name": "team-a", "scope": "tenant", "match": ["team-a"], "tokens_per_minute": 100000},
//!    {"name": "big-models", "scope": "model", "match": ["llama-3.1-405b*"], "max_parallel": 8},
//!    {"name": "all", "scope": "global", "requests_per_minute": 6000}
//!  ]}
//! ```

use serde::{Deserialize, Serialize};
use sluice_common::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Right after key-auth, on headers only: request counts and requests in flight for
    /// the key, its tenant and global rules. An over-rate key costs no body buffering.
    Admission,
    /// After token-counter: token reservations (and model-scoped request / concurrency
    /// limits), reconciled with the real usage at the end of the response.
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The key's own limits (from its policy, never written in a rule): one budget per key.
    #[serde(skip)]
    Key,
    /// One budget per tenant.
    Tenant,
    /// One budget per model.
    Model,
    /// One budget per key and model.
    KeyModel,
    /// One budget for everything the rule matches.
    Global,
}

impl Scope {
    /// Whether the model must be known to apply the rule (then it belongs to the tokens
    /// stage).
    pub fn needs_model(self) -> bool {
        matches!(self, Self::Model | Self::KeyModel)
    }
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// In this Envoy's shared data: exact across its workers, no network.
    #[default]
    Local,
    /// In sluice-ratelimit (RLS v3): one budget across Envoys and service replicas.
    Global,
}

/// What to do when the rate-limit service fails or does not answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// 503 with `retry-after`.
    #[default]
    Deny,
    /// Let the request through (global limits unchecked).
    Allow,
    /// Check the global limits in the local tier instead.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Envoy cluster of sluice-ratelimit (HTTP/2).
    pub cluster: String,
    #[serde(default = "domain")]
    pub domain: String,
    /// A call slower than this counts as a failure.
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureMode,
}

fn domain() -> String {
    "sluice".into()
}
fn timeout_ms() -> u64 {
    50
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Shown in `sluice_ratelimit` when this rule decides.
    pub name: String,
    pub scope: Scope,
    /// Globs on the subject: the tenant for `tenant`, the model for the other scopes.
    #[serde(default = "everything", rename = "match")]
    pub matches: Vec<String>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub max_parallel: Option<u64>,
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    #[serde(default)]
    pub tier: Tier,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Absent: taken from the filter's `root_id` (`....admission` / `....tokens`), so both
    /// instances can share one rules file.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Length of the "minute" of per-minute limits (shorter only in tests).
    #[serde(default = "minute")]
    pub window_seconds: u64,
    /// Length of the "day" of daily budgets.
    #[serde(default = "day")]
    pub day_seconds: u64,
    /// Output tokens reserved when a request sets no `max_tokens` / `max_completion_tokens`.
    #[serde(default = "default_output")]
    pub default_max_tokens: u64,
    /// Most output tokens reserved for one request, whatever it asks.
    #[serde(default = "output_cap")]
    pub max_output_reservation: u64,
    #[serde(default)]
    pub limits: Vec<LimitRule>,
    /// Where the key's own limits (from its policy) are counted.
    #[serde(default)]
    pub key_tier: Tier,
    /// The rate-limit service, needed when any limit is `global`.
    #[serde(default)]
    pub global: Option<GlobalConfig>,
    /// Whether an answer from the response cache counts against token budgets (its
    /// prompt and completion tokens, charged when it ends). Off: a hit costs no tokens, only
    /// a request (the admission stage still counts it).
    #[serde(default)]
    pub charge_cache_hits: bool,
}

fn minute() -> u64 {
    60
}
fn day() -> u64 {
    86_400
}
fn default_output() -> u64 {
    512
}
fn output_cap() -> u64 {
    32_768
}

impl RateLimitConfig {
    /// Fix the stage from the config or, failing that, the filter's root id.
    pub fn resolve_stage(&mut self, root_id: &str) -> Result<Stage, ConfigError> {
        let from_root = if root_id.ends_with("admission") {
            Some(Stage::Admission)
        } else if root_id.ends_with("tokens") {
            Some(Stage::Tokens)
        } else {
            None
        };
        let stage = self.stage.or(from_root).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "no stage: set \"stage\" or use a root_id ending in admission or tokens (got {root_id:?})"
            ))
        })?;
        self.stage = Some(stage);
        Ok(stage)
    }

    pub fn stage(&self) -> Stage {
        self.stage.unwrap_or(Stage::Tokens)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.window_seconds == 0 || self.day_seconds == 0 {
            return bad("window_seconds and day_seconds must be at least 1".into());
        }
        if self.max_output_reservation == 0 {
            return bad("max_output_reservation must be at least 1".into());
        }
        let uses_global =
            self.key_tier == Tier::Global || self.limits.iter().any(|r| r.tier == Tier::Global);
        if uses_global {
            if self.global.is_none() {
                return bad("a limit is global but there is no \"global\" service section".into());
            }
            if sluice_common::rls::unit_of(self.window_seconds).is_none()
                || sluice_common::rls::unit_of(self.day_seconds).is_none()
            {
                return bad(
                    "global limits need window_seconds and day_seconds of 1, 60, 3600 or 86400"
                        .into(),
                );
            }
            if self
                .limits
                .iter()
                .any(|r| r.tier == Tier::Global && r.max_parallel.is_some())
            {
                return bad("max_parallel is counted locally; it cannot be global".into());
            }
        }
        if self
            .global
            .as_ref()
            .is_some_and(|g| g.timeout_ms == 0 || g.cluster.is_empty())
        {
            return bad("global: cluster must be set and timeout_ms at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.limits {
            if r.name.is_empty() || r.name == "key" || !names.insert(r.name.as_str()) {
                return bad(format!(
                    "limit names must be unique, non-empty and not \"key\": {:?}",
                    r.name
                ));
            }
            let values = [
                r.requests_per_minute,
                r.tokens_per_minute,
                r.max_parallel,
                r.daily_tokens,
            ];
            if values.iter().all(Option::is_none) {
                return bad(format!("limit {:?} sets no limit", r.name));
            }
            if values.contains(&Some(0)) {
                return bad(format!(
                    "limit {:?}: a limit of 0 refuses everything",
                    r.name
                ));
            }
            if r.matches.is_empty() {
                return bad(format!("limit {:?}: match must not be empty", r.name));
            }
        }
        Ok(())
    }
}
