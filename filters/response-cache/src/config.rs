//! response-cache configuration.
//!
//! ```json
//! {"scope": "tenant", "ttl_s": 3600, "max_entry_bytes": 1048576,
//!  "local": {"max_bytes": 67108864, "slots": 4096},
//!  "rules": [
//!    {"models": ["*"], "apis": ["embeddings"]},
//!    {"models": ["llama-3.1-8b"], "apis": ["chat", "responses", "messages"],
//!     "when": "deterministic", "ttl_s": 600},
//!    {"models": ["faq-bot"], "apis": ["chat"], "when": "always", "shared": true}],
//!  "shared": {"cluster": "sluice_cache", "timeout_ms": 50}}
//! ```
//!
//! A request is cacheable when a rule names its API and its model (as the client asked for
//! it or as it goes upstream; globs); the first such rule decides. Without `rules`:
//! embeddings only.

use serde::{Deserialize, Serialize};
use sluice_common::glob::glob_match;
use sluice_common::{Api, ConfigError};

/// Whose requests share entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every key of a tenant (the usual: one team's evaluations repeat each other).
    #[default]
    Tenant,
    /// Each key alone.
    Key,
}

/// Which requests of a rule may be answered from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Only requests whose answer does not depend on sampling: `temperature: 0`, or a
    /// `seed`, or an API that does not sample (embeddings).
    #[default]
    Deterministic,
    /// Every request (the operator accepts one sampled answer for all).
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Model globs, matched against the model asked for and the upstream model.
    pub models: Vec<String>,
    /// The APIs it covers.
    pub apis: Vec<Api>,
    #[serde(default)]
    pub when: When,
    /// The entries' lifetime; absent: the filter's `ttl_s`.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// One cache for every tenant of these models (an operator's explicit choice, for
    /// public answers): the tenant is left out of the key.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalTier {
    /// The most bytes the entries take in each Envoy's shared data; the oldest go first.
    pub max_bytes: usize,
    /// The most entries (each a shared-data slot; the index has twice as many).
    pub slots: u64,
}

impl Default for LocalTier {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            slots: 4096,
        }
    }
}

/// The shared tier: sluice-cache, behind an Envoy cluster, asked when the local tier
/// misses and told every entry stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedTier {
    /// The Envoy cluster of sluice-cache.
    pub cluster: String,
    /// The longest a lookup may take; past it the request is a miss (and goes upstream).
    #[serde(default = "default_shared_timeout")]
    pub timeout_ms: u64,
}

fn default_shared_timeout() -> u64 {
    50
}

/// The semantic tier: a request whose exact key misses is answered with the stored answer
/// of the nearest earlier prompt (same tenant, API, model and other fields), when its
/// embedding is at least `threshold` similar. The embedding comes from the operator's own
/// embedding model (an Envoy cluster serving `/v1/embeddings`); the index lives in
/// sluice-cache (the `shared` tier's cluster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticTier {
    /// The Envoy cluster of the embedding model's pool.
    pub cluster: String,
    /// The embedding model, as that pool names it.
    pub model: String,
    /// Cosine similarity at or above which a prompt counts as the same question.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Conversations past their first turn too (off: a second turn never matches an
    /// earlier conversation's answer).
    #[serde(default)]
    pub multi_turn: bool,
    /// The longest the embedding call may take; past it the request is a miss.
    #[serde(default = "default_semantic_timeout")]
    pub timeout_ms: u64,
}

fn default_threshold() -> f64 {
    0.95
}

fn default_semantic_timeout() -> u64 {
    500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// The largest response stored; a larger one passes and is not stored.
    #[serde(default = "default_max_entry")]
    pub max_entry_bytes: usize,
    #[serde(default)]
    pub local: LocalTier,
    #[serde(default = "default_rules")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub shared: Option<SharedTier>,
    #[serde(default)]
    pub semantic: Option<SemanticTier>,
}

fn default_ttl() -> u64 {
    3600
}

fn default_max_entry() -> usize {
    1 << 20
}

fn default_rules() -> Vec<Rule> {
    vec![Rule {
        models: vec!["*".into()],
        apis: vec![Api::Embeddings],
        when: When::Deterministic,
        ttl_s: None,
        shared: false,
    }]
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub scope: Scope,
    pub ttl_s: u64,
    pub max_entry_bytes: usize,
    pub local: LocalTier,
    pub rules: Vec<Rule>,
    pub shared: Option<SharedTier>,
    pub semantic: Option<SemanticTier>,
}

impl Settings {
    pub fn new(c: CacheConfig) -> Result<Self, ConfigError> {
        if c.ttl_s == 0 || c.rules.iter().any(|r| r.ttl_s == Some(0)) {
            return Err(ConfigError::invalid("ttl_s must be at least 1"));
        }
        if c.max_entry_bytes == 0 || c.max_entry_bytes > c.local.max_bytes {
            return Err(ConfigError::invalid(
                "max_entry_bytes must be between 1 and local.max_bytes",
            ));
        }
        if c.local.slots == 0 || c.local.slots > 1 << 20 {
            return Err(ConfigError::invalid("local.slots must be 1 to 1048576"));
        }
        for (i, r) in c.rules.iter().enumerate() {
            if r.models.is_empty() || r.apis.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "rules[{i}] must name at least one model and one API"
                )));
            }
            if r.apis.contains(&Api::CountTokens) {
                return Err(ConfigError::invalid(format!(
                    "rules[{i}]: count_tokens is answered by the gateway, not cached"
                )));
            }
        }
        if let Some(shared) = &c.shared {
            if shared.cluster.is_empty() || !(1..=10_000).contains(&shared.timeout_ms) {
                return Err(ConfigError::invalid(
                    "shared needs a cluster and a timeout_ms of 1 to 10000",
                ));
            }
        }
        if let Some(sem) = &c.semantic {
            if c.shared.is_none() {
                return Err(ConfigError::invalid(
                    "semantic needs the shared tier (its index lives in sluice-cache)",
                ));
            }
            if sem.cluster.is_empty()
                || sem.model.is_empty()
                || !(sem.threshold > 0.0 && sem.threshold <= 1.0)
                || !(1..=10_000).contains(&sem.timeout_ms)
            {
                return Err(ConfigError::invalid(
                    "semantic needs a cluster, a model, a threshold in (0, 1] and a timeout_ms of 1 to 10000",
                ));
            }
        }
        Ok(Self {
            scope: c.scope,
            shared: c.shared,
            semantic: c.semantic,
            ttl_s: c.ttl_s,
            max_entry_bytes: c.max_entry_bytes,
            local: c.local,
            rules: c.rules,
        })
    }

    /// The rule that makes a request of `api` for these models cacheable.
    pub fn rule(&self, api: Api, requested: &str, upstream: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.apis.contains(&api)
                && r.models
                    .iter()
                    .any(|m| glob_match(m, requested) || glob_match(m, upstream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::parse_config;

    fn settings(json: &str) -> Result<Settings, ConfigError> {
        Settings::new(parse_config(json.as_bytes())?)
    }

    #[test]
    fn embeddings_only_by_default_and_rules_match_either_model_name() {
        let s = settings("{}").unwrap();
        assert!(s.rule(Api::Embeddings, "e5", "intfloat/e5").is_some());
        assert!(s.rule(Api::Chat, "llama", "meta/llama").is_none());
        let s =
            settings(r#"{"rules": [{"models": ["llama-*"], "apis": ["chat"], "when": "always"}]}"#)
                .unwrap();
        assert!(s.rule(Api::Chat, "llama-3", "x").is_some());
        assert!(s.rule(Api::Chat, "alias", "llama-3").is_some());
        assert!(s.rule(Api::Embeddings, "llama-3", "x").is_none());
    }

    #[test]
    fn impossible_settings_are_refused_naming_the_field() {
        for (json, field) in [
            (r#"{"ttl_s": 0}"#, "ttl_s"),
            (
                r#"{"max_entry_bytes": 100, "local": {"max_bytes": 10}}"#,
                "max_entry_bytes",
            ),
            (r#"{"local": {"slots": 0}}"#, "slots"),
            (
                r#"{"rules": [{"models": [], "apis": ["chat"]}]}"#,
                "rules[0]",
            ),
            (
                r#"{"rules": [{"models": ["*"], "apis": ["count_tokens"]}]}"#,
                "count_tokens",
            ),
            (r#"{"shared": {"cluster": "", "timeout_ms": 5}}"#, "shared"),
            (
                r#"{"semantic": {"cluster": "e", "model": "m"}}"#,
                "semantic needs the shared tier",
            ),
            (
                r#"{"shared": {"cluster": "c"}, "semantic": {"cluster": "e", "model": "m", "threshold": 1.5}}"#,
                "threshold",
            ),
        ] {
            let e = settings(json).unwrap_err().to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
        assert!(settings(r#"{"ttl": 5}"#).is_err(), "unknown field");
    }
}
