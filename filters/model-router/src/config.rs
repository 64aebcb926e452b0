//! model-router configuration.
//!
//! ```json
//! {"models": {
//!    "llama-3.1-8b": {"targets": [{"pool": "pool-small", "model": "meta-llama/Llama-3.1-8B-Instruct"}]},
//!    "qwen-2.5-72b": {"targets": [
//!        {"pool": "pool-large", "model": "Qwen/Qwen2.5-72B-Instruct", "weight": 95},
//!        {"pool": "pool-large-canary", "model": "Qwen/Qwen2.5-72B-Instruct-AWQ", "weight": 5}],
//!      "sticky": "key"},
//!    "auto": {"auto": {"rules": [
//!        {"has_images": true, "model": "qwen-2.5-72b"},
//!        {"last_user_matches": "(?i)\\b(sql|rust|python)\\b", "model": "qwen-2.5-72b"},
//!        {"max_prompt_tokens": 2000, "has_tools": false, "model": "llama-3.1-8b"}],
//!      "default": "qwen-2.5-72b"}},
//!    "legacy-*": {"targets": [{"pool": "pool-small"}]}},
//!  "affinity": {"from": ["session", "user", "prefix"], "prefix_bytes": 1024},
//!  "session_header": "x-session-id"}
//! ```

use regex::Regex;
use serde::{Deserialize, Serialize};
use sluice_common::ConfigError;
use std::collections::{BTreeMap, HashMap};

use sluice_common::openai::default_api_paths;
pub use sluice_common::openai::Api;

/// How a weighted alias picks among its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// Each request draws anew.
    #[default]
    None,
    /// The same key always gets the same target.
    Key,
    /// The same session (header) gets the same target; without the header, a fresh draw.
    Session,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The Envoy cluster (pool) the route table sends to.
    pub pool: String,
    /// The model name sent upstream; absent: the name the client sent.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRule {
    #[serde(default)]
    pub min_prompt_tokens: Option<u64>,
    #[serde(default)]
    pub max_prompt_tokens: Option<u64>,
    #[serde(default)]
    pub has_tools: Option<bool>,
    #[serde(default)]
    pub has_images: Option<bool>,
    /// A regex over the text of the last user message.
    #[serde(default)]
    pub last_user_matches: Option<String>,
    /// The alias this rule picks (a non-`auto` alias).
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoConfig {
    pub rules: Vec<AutoRule>,
    pub default: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub sticky: Sticky,
    #[serde(default)]
    pub auto: Option<AutoConfig>,
}

/// What feeds the affinity hash, first available wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AffinitySource {
    /// The session header.
    Session,
    /// The body's `user` field.
    User,
    /// The first `prefix_bytes` of the prompt: the system prompt, or the first message.
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    pub from: Vec<AffinitySource>,
    #[serde(default = "default_prefix_bytes")]
    pub prefix_bytes: usize,
}

fn default_prefix_bytes() -> usize {
    1024
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Public model names (exact, or globs with `*` / `?`) and where they go.
    pub models: BTreeMap<String, AliasConfig>,
    #[serde(default)]
    pub affinity: Option<AffinityConfig>,
    #[serde(default = "default_session_header")]
    pub session_header: String,
    /// Request paths (query excluded) routed by model.
    #[serde(default = "default_api_paths")]
    pub paths: BTreeMap<String, Api>,
    /// Answered by the gateway with the public models the key may use.
    #[serde(default = "default_models_path")]
    pub models_path: String,
}

fn default_session_header() -> String {
    "x-session-id".into()
}

fn default_models_path() -> String {
    "/v1/models".into()
}

/// A validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: String,
    pub model: Option<String>,
    pub weight: u32,
}

#[derive(Debug)]
pub struct Rule {
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub has_tools: Option<bool>,
    pub has_images: Option<bool>,
    pub last_user_matches: Option<Regex>,
    pub model: String,
}

impl Rule {
    /// Does this rule need the messages read?
    pub fn needs_text(&self) -> bool {
        self.last_user_matches.is_some()
            || self.min_prompt_tokens.is_some()
            || self.max_prompt_tokens.is_some()
    }
}

#[derive(Debug)]
pub enum AliasKind {
    Targets {
        targets: Vec<Target>,
        total_weight: u64,
        sticky: Sticky,
    },
    Auto {
        rules: Vec<Rule>,
        default: String,
    },
}

#[derive(Debug)]
pub struct Alias {
    pub name: String,
    pub kind: AliasKind,
}

/// The validated configuration, shared by every request of a VM.
#[derive(Debug)]
pub struct Settings {
    exact: HashMap<String, Alias>,
    globs: Vec<Alias>,
    pub affinity: Option<AffinityConfig>,
    pub session_header: String,
    pub paths: BTreeMap<String, Api>,
    pub models_path: String,
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// A pool name is put in a header and matched by the route table.
fn valid_pool(pool: &str) -> bool {
    !pool.is_empty()
        && pool.len() <= 128
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Settings {
    pub fn new(c: RouterConfig) -> Result<Self, ConfigError> {
        if c.models.is_empty() {
            return Err(ConfigError::invalid("models: at least one alias is needed"));
        }
        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        for (name, a) in &c.models {
            let kind = match (&a.auto, a.targets.is_empty()) {
                (Some(_), false) => {
                    return Err(ConfigError::invalid(format!(
                        "models.{name}: either targets or auto, not both"
                    )))
                }
                (None, true) => {
                    return Err(ConfigError::invalid(format!("models.{name}: no targets")));
                }
                (Some(auto), true) => {
                    if is_glob(name) {
                        return Err(ConfigError::invalid(format!(
                            "models.{name}: an auto alias needs an exact name"
                        )));
                    }
                    let mut rules = Vec::with_capacity(auto.rules.len());
                    for (i, r) in auto.rules.iter().enumerate() {
                        let last_user_matches = match &r.last_user_matches {
                            Some(p) => Some(
                                regex::RegexBuilder::new(p)
                                    .size_limit(1 << 20)
                                    .build()
                                    .map_err(|e| {
                                        ConfigError::invalid(format!(
                                            "models.{name}.auto.rules[{i}]: {e}"
                                        ))
                                    })?,
                            ),
                            None => None,
                        };
                        rules.push(Rule {
                            min_prompt_tokens: r.min_prompt_tokens,
                            max_prompt_tokens: r.max_prompt_tokens,
                            has_tools: r.has_tools,
                            has_images: r.has_images,
                            last_user_matches,
                            model: r.model.clone(),
                        });
                    }
                    for m in rules.iter().map(|r| &r.model).chain([&auto.default]) {
                        let ok = c
                            .models
                            .get(m)
                            .is_some_and(|t| t.auto.is_none() && !is_glob(m));
                        if !ok {
                            return Err(ConfigError::invalid(format!(
                                "models.{name}.auto: {m:?} is not an alias with targets"
                            )));
                        }
                    }
                    AliasKind::Auto {
                        rules,
                        default: auto.default.clone(),
                    }
                }
                (None, false) => {
                    let mut targets = Vec::with_capacity(a.targets.len());
                    for t in &a.targets {
                        if !valid_pool(&t.pool) {
                            return Err(ConfigError::invalid(format!(
                                "models.{name}: pool {:?} must be 1-128 of [A-Za-z0-9._-]",
                                t.pool
                            )));
                        }
                        if t.model.as_deref() == Some("") {
                            return Err(ConfigError::invalid(format!(
                                "models.{name}: empty upstream model"
                            )));
                        }
                        targets.push(Target {
                            pool: t.pool.clone(),
                            model: t.model.clone(),
                            weight: t.weight,
                        });
                    }
                    let total_weight: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
                    if total_weight == 0 {
                        return Err(ConfigError::invalid(format!(
                            "models.{name}: weights sum to 0"
                        )));
                    }
                    AliasKind::Targets {
                        targets,
                        total_weight,
                        sticky: a.sticky,
                    }
                }
            };
            let alias = Alias {
                name: name.clone(),
                kind,
            };
            if is_glob(name) {
                globs.push(alias);
            } else {
                exact.insert(name.clone(), alias);
            }
        }
        if let Some(aff) = &c.affinity {
            if aff.from.is_empty() || aff.prefix_bytes == 0 {
                return Err(ConfigError::invalid(
                    "affinity: `from` needs a source and prefix_bytes must be positive",
                ));
            }
        }
        if c.session_header.is_empty() || c.session_header.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::invalid(
                "session_header must be a lower-case header name",
            ));
        }
        Ok(Self {
            exact,
            globs,
            affinity: c.affinity,
            session_header: c.session_header,
            paths: c.paths,
            models_path: c.models_path,
        })
    }

    /// The alias of a public model name: exact first, then the first glob (in name order).
    pub fn alias(&self, model: &str) -> Option<&Alias> {
        self.exact.get(model).or_else(|| {
            self.globs
                .iter()
                .find(|a| sluice_common::glob::glob_match(&a.name, model))
        })
    }

    /// Exact public names, sorted (what `/v1/models` lists).
    pub fn public_models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.exact.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The API of a governed request (`POST` on a configured path).
    pub fn api(&self, method: &str, path: &str) -> Option<Api> {
        sluice_common::api::api_for(&self.paths, method, path)
    }

    pub fn is_models_path(&self, path: &str) -> bool {
        path.split(['?', '#']).next() == Some(self.models_path.as_str())
    }

    /// Does any auto alias (or prefix affinity) need the messages read?
    pub fn needs_messages(&self, alias: &Alias) -> bool {
        let prefix = self
            .affinity
            .as_ref()
            .is_some_and(|a| a.from.contains(&AffinitySource::Prefix));
        prefix || matches!(alias.kind, AliasKind::Auto { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings(json: &str) -> Result<Settings, ConfigError> {
        sluice_common::parse_config::<RouterConfig>(json.as_bytes()).and_then(Settings::new)
    }

    #[test]
    fn aliases_exact_and_glob() {
        let s = settings(
            r#"{"models": {"a": {"targets": [{"pool": "p1", "model": "A"}]},
                           "b-*": {"targets": [{"pool": "p2"}]}}}"#,
        )
        .unwrap();
        assert_eq!(s.alias("a").unwrap().name, "a");
        assert_eq!(s.alias("b-7").unwrap().name, "b-*");
        assert!(s.alias("c").is_none());
        assert_eq!(s.public_models(), ["a"]);
        assert_eq!(s.api("POST", "/v1/embeddings?x"), Some(Api::Embeddings));
        assert!(s.is_models_path("/v1/models"));
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            r#"{"models": {}}"#,
            r#"{"models": {"a": {}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "bad pool"}]}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p", "weight": 0}]}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p", "model": ""}]}}}"#,
            r#"{"models": {"a": {"auto": {"rules": [], "default": "zz"}}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}]}, "x": {"auto": {"rules": [{"model": "a", "last_user_matches": "("}], "default": "a"}}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}]}, "x": {"auto": {"rules": [{"model": "x"}], "default": "a"}}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}], "auto": {"rules": [], "default": "a"}}}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}]}}, "affinity": {"from": []}}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}]}}, "session_header": "X-S"}"#,
            r#"{"models": {"a": {"targets": [{"pool": "p"}]}}, "extra": 1}"#,
        ] {
            assert!(settings(bad).is_err(), "{bad}");
        }
    }
}
