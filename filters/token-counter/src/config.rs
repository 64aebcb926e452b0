//! token-counter configuration.
//!
//! ```json
//! {"paths": {"/v1/chat/completions": "chat", "/v1/completions": "completions",
//!            "/v1/embeddings": "embeddings"},
//!  "encodings": [{"models": ["gpt-4", "gpt-4-*", "gpt-3.5*"], "encoding": "cl100k_base"},
//!                {"models": ["meta-llama/Llama-3*"], "encoding": "llama3",
//!                 "chat_template": "llama-3.1", "chat_template_engine": "transformers"}],
//!  "default_encoding": "o200k_base",
//!  "inject_include_usage": true,
//!  "metric_models": ["llama-3.1-8b", "qwen2.5-72b"],
//!  "max_counted_bytes": 4194304}
//! ```

use serde::{Deserialize, Serialize};
use sluice_chat_template::ChatTemplate;
use sluice_common::glob::first_match;
use sluice_common::ConfigError;
use sluice_tokenizer::Tokenizer;
use std::collections::{BTreeMap, HashSet};

use sluice_common::openai::default_api_paths;
pub use sluice_common::openai::Api;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingRule {
    /// Model globs (`*`, `?`).
    pub models: Vec<String>,
    /// `o200k_base`, `cl100k_base`, or an open family's vocabulary: `llama3`, `qwen2`,
    /// `gemma4`.
    pub encoding: String,
    /// A built-in chat template (`llama-3.1`, `qwen-3`, ...: see sluice-chat-template); an
    /// open family's encoding comes with a default (`llama3`: `llama-3.1`, `qwen2`:
    /// `qwen-2.5`, `gemma4`: `gemma-4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// The template itself (the `chat_template` of the model's `tokenizer_config.json`),
    /// for a model whose template is not built in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_source: Option<String>,
    /// Template variables for this model, over Sluice's defaults (llama.cpp's server's:
    /// `enable_thinking: true`, `date_string` today) and under a request's own
    /// `chat_template_kwargs`. For an engine that renders with transformers (vLLM, SGLang,
    /// TGI) and a thinking model: `{"enable_thinking": false}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which engine serves the model, for what it does around the template: `llama.cpp`
    /// (the default: today's `date_string`, `enable_thinking` on, its Gemma 4 fix-up) or
    /// `transformers` (vLLM, SGLang, TGI: the template alone).
    #[serde(default)]
    pub chat_template_engine: TemplateEngine,
}

/// See [`EncodingRule::chat_template_engine`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateEngine {
    #[default]
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    #[serde(rename = "transformers")]
    Transformers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCounterConfig {
    /// Request paths (query excluded) that are LLM calls. Other paths pass untouched.
    #[serde(default = "default_api_paths")]
    pub paths: BTreeMap<String, Api>,
    /// Model globs to encodings; the first rule that matches wins.
    #[serde(default)]
    pub encodings: Vec<EncodingRule>,
    #[serde(default = "default_encoding")]
    pub default_encoding: String,
    /// Ask the backend for usage on streams (`stream_options.include_usage`) and hide the
    /// extra chunk from clients that did not ask for it.
    #[serde(default = "sluice_common::config::yes")]
    pub inject_include_usage: bool,
    /// Models reported by name in metrics; any other folds into `other`, so label
    /// cardinality stays bounded whatever clients send.
    #[serde(default)]
    pub metric_models: Vec<String>,
    /// Most generated text kept to count a response whose usage the backend did not report.
    #[serde(default = "default_max_counted")]
    pub max_counted_bytes: usize,
}

fn default_encoding() -> String {
    "o200k_base".into()
}

fn default_max_counted() -> usize {
    4 << 20
}

impl Default for TokenCounterConfig {
    fn default() -> Self {
        Self {
            paths: default_api_paths(),
            encodings: Vec::new(),
            default_encoding: default_encoding(),
            inject_include_usage: true,
            metric_models: Vec::new(),
            max_counted_bytes: default_max_counted(),
        }
    }
}

/// How a model's prompts are counted: its tokenizer and, for an open model, the chat
/// template the engine renders its chat requests with.
pub struct PromptCounter {
    pub tokenizer: &'static Tokenizer,
    pub template: Option<ChatTemplate>,
    /// The rule's `chat_template_kwargs`.
    pub template_kwargs: Option<serde_json::Value>,
}

/// The template an open family's tokenizer comes with when the rule names none.
fn default_template(encoding: &str) -> Option<&'static str> {
    match encoding {
        "llama3" => Some("llama-3.1"),
        "qwen2" => Some("qwen-2.5"),
        "gemma4" => Some("gemma-4"),
        _ => None,
    }
}

impl PromptCounter {
    fn new(rule: &EncodingRule) -> Result<Self, ConfigError> {
        let tokenizer = tokenizer(&rule.encoding)?;
        let source = match (&rule.chat_template_source, &rule.chat_template) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "chat_template and chat_template_source are exclusive".into(),
                ))
            }
            (Some(src), None) => Some(src.as_str()),
            (None, name) => match name.as_deref().or(default_template(&rule.encoding)) {
                Some(name) => Some(sluice_chat_template::builtin(name).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "unknown chat template {name:?} (built in: {})",
                        sluice_chat_template::builtin_names().join(", ")
                    ))
                })?),
                None => None,
            },
        };
        let template = source
            .map(|src| {
                ChatTemplate::new(
                    src,
                    tokenizer.bos_token().unwrap_or(""),
                    tokenizer.eos_token().unwrap_or(""),
                )
                .map(|t| {
                    t.for_engine(match rule.chat_template_engine {
                        TemplateEngine::LlamaCpp => sluice_chat_template::Engine::LlamaCpp,
                        TemplateEngine::Transformers => sluice_chat_template::Engine::Transformers,
                    })
                })
                .map_err(|e| ConfigError::Invalid(format!("{:?}: {e}", rule.models)))
            })
            .transpose()?;
        Ok(Self {
            tokenizer,
            template,
            template_kwargs: rule
                .chat_template_kwargs
                .clone()
                .map(serde_json::Value::Object),
        })
    }
}

/// The validated configuration, ready for requests.
pub struct Settings {
    pub paths: BTreeMap<String, Api>,
    rules: Vec<(Vec<String>, PromptCounter)>,
    default: &'static Tokenizer,
    pub inject_include_usage: bool,
    metric_models: HashSet<String>,
    pub max_counted_bytes: usize,
}

fn tokenizer(name: &str) -> Result<&'static Tokenizer, ConfigError> {
    sluice_tokenizer::by_name(name).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "unknown encoding {name:?} (known: {})",
            sluice_tokenizer::ENCODINGS.join(", ")
        ))
    })
}

impl Settings {
    pub fn new(config: TokenCounterConfig) -> Result<Self, ConfigError> {
        if let Some(p) = config.paths.keys().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::Invalid(format!(
                "path {p:?} must start with '/'"
            )));
        }
        let rules = config
            .encodings
            .iter()
            .map(|r| {
                if r.models.is_empty() {
                    return Err(ConfigError::Invalid(
                        "an encoding rule without models".into(),
                    ));
                }
                Ok((r.models.clone(), PromptCounter::new(r)?))
            })
            .collect::<Result<_, _>>()?;
        if config.max_counted_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_counted_bytes must be at least 1".into(),
            ));
        }
        Ok(Self {
            paths: config.paths,
            rules,
            default: tokenizer(&config.default_encoding)?,
            inject_include_usage: config.inject_include_usage,
            metric_models: config.metric_models.into_iter().collect(),
            max_counted_bytes: config.max_counted_bytes,
        })
    }

    /// The API of a request, if it is an LLM call this filter counts.
    pub fn api(&self, method: &str, path: &str) -> Option<Api> {
        sluice_common::api::api_for(&self.paths, method, path)
    }

    pub fn tokenizer_for(&self, model: &str) -> &'static Tokenizer {
        self.rule_for(model).map_or(self.default, |c| c.tokenizer)
    }

    /// How a model's prompts are counted, if a rule names it.
    pub fn rule_for(&self, model: &str) -> Option<&PromptCounter> {
        self.rules
            .iter()
            .find(|(globs, _)| first_match(globs, model).is_some())
            .map(|(_, c)| c)
    }

    /// The model as a metric label: a configured name, or `other`.
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if self.metric_models.contains(model) {
            model
        } else {
            "other"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, ConfigError> {
        Settings::new(sluice_common::parse_config(json.as_bytes())?)
    }

    #[test]
    fn defaults_and_rules() {
        let s = settings(
            r#"{"encodings":[{"models":["gpt-4","gpt-3.5*"],"encoding":"cl100k_base"}],
                "metric_models":["m1"]}"#,
        )
        .unwrap();
        assert_eq!(s.api("POST", "/v1/chat/completions?x=1"), Some(Api::Chat));
        assert_eq!(s.api("GET", "/v1/chat/completions"), None);
        assert_eq!(s.api("POST", "/v1/models"), None);
        assert_eq!(s.tokenizer_for("gpt-3.5-turbo").name(), "cl100k_base");
        assert_eq!(s.tokenizer_for("gpt-4o").name(), "o200k_base");
        assert_eq!(s.model_label("m1"), "m1");
        assert_eq!(s.model_label("anything-else"), "other");
    }

    #[test]
    fn open_model_rules() {
        if sluice_tokenizer::llama3().is_none() {
            return; // built without the open vocabularies
        }
        let s = settings(
            r#"{"encodings":[{"models":["meta-llama/*"],"encoding":"llama3"},
                             {"models":["vllm-llama"],"encoding":"llama3","chat_template":"llama-3.2",
                              "chat_template_engine":"transformers",
                              "chat_template_kwargs":{"enable_thinking":false}}]}"#,
        )
        .unwrap();
        let r = s.rule_for("meta-llama/Llama-3.1-8B-Instruct").unwrap();
        assert_eq!(r.tokenizer.name(), "llama3");
        assert!(r.template.is_some(), "llama3 comes with llama-3.1");
        let r = s.rule_for("vllm-llama").unwrap();
        assert_eq!(
            r.template_kwargs,
            Some(serde_json::json!({"enable_thinking": false}))
        );
        assert!(s.rule_for("gpt-4o").is_none());
        for (json, want) in [
            (
                r#"{"encodings":[{"models":["m"],"encoding":"llama3","chat_template":"llama-9"}]}"#,
                "unknown chat template",
            ),
            (
                r#"{"encodings":[{"models":["m"],"encoding":"llama3","chat_template":"llama-3.1","chat_template_source":"x"}]}"#,
                "exclusive",
            ),
            (
                r#"{"encodings":[{"models":["m"],"encoding":"llama3","chat_template_source":"{% if %}"}]}"#,
                "does not compile",
            ),
            (
                r#"{"encodings":[{"models":["m"],"encoding":"llama3","chat_template_engine":"vllm"}]}"#,
                "unknown variant",
            ),
        ] {
            let err = settings(json).err().expect(json).to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn bad_configs() {
        for (json, want) in [
            (r#"{"default_encoding":"p50k"}"#, "unknown encoding"),
            (
                r#"{"encodings":[{"models":[],"encoding":"o200k_base"}]}"#,
                "without models",
            ),
            (r#"{"paths":{"v1/x":"chat"}}"#, "must start with"),
            (r#"{"paths":{"/x":"images"}}"#, "unknown variant"),
            (r#"{"typo":1}"#, "unknown field"),
        ] {
            let err = settings(json).err().expect(json).to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
