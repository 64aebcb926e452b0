//! pii-redaction configuration.
//!
//! ```json
//! {"default_action": "redact",
//!  "entities": {"credit_card": "mask", "private_key": "block", "ipv4": "allow"},
//!  "custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}",
//!              "context": ["employee", "staff"], "action": "hash"}],
//!  "hash_secret": "at least 16 bytes of secret",
//!  "request_fields": ["metadata.notes", "input.*.text"],
//!  "scan_requests": true, "scan_responses": true,
//!  "max_body_bytes": 4194304, "on_unscannable": "block"}
//! ```

use crate::entity::{BuiltIn, EntitySet};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sluice_common::ConfigError;
use std::collections::BTreeMap;

/// What happens to a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A typed placeholder, numbered within the request: `[EMAIL_1]`.
    Redact,
    /// Every letter and digit but the last four becomes `*`: `****-****-****-1111`.
    Mask,
    /// A keyed pseudonym, stable across requests: `[EMAIL:3f2a9c1b7d0e4a55]`.
    Hash,
    /// Refuse the request: 403 `permission_error` naming the entity type.
    Block,
    /// Leave it.
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redact => "redact",
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::Block => "block",
            Action::Allow => "allow",
        }
    }
}

/// What to do with a body that cannot be scanned (not JSON, or over `max_body_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unscannable {
    Block,
    Pass,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomEntityConfig {
    /// `[a-z0-9_]+`, not a built-in name; the placeholder label is its upper case.
    pub name: String,
    /// A regex (Rust `regex` syntax, linear time).
    pub pattern: String,
    /// When set, a match counts only with one of these words (case-insensitive) within
    /// `CONTEXT_WINDOW` bytes before or after it.
    #[serde(default)]
    pub context: Vec<String>,
    /// Defaults to `default_action`.
    #[serde(default)]
    pub action: Option<Action>,
    /// Longest match, needed when the pattern is unbounded (`+`, `*`): streams hold back
    /// this much text so a match split across chunks is still whole when it is judged.
    #[serde(default)]
    pub max_len: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Action of every built-in entity not named in `entities`, and of custom entities
    /// without their own.
    #[serde(default = "default_action")]
    pub default_action: Action,
    /// Per built-in entity (`email`, `phone`, `ssn`, `credit_card`, `iban`, `ipv4`, `ipv6`,
    /// `aws_access_key`, `github_token`, `openai_key`, `anthropic_key`, `google_api_key`,
    /// `slack_token`, `jwt`, `private_key`); `allow` switches one off.
    #[serde(default)]
    pub entities: BTreeMap<String, Action>,
    #[serde(default)]
    pub custom: Vec<CustomEntityConfig>,
    /// HMAC key of the `hash` action (required when any entity hashes).
    #[serde(default)]
    pub hash_secret: Option<String>,
    /// Request paths (query excluded) scanned, and the API each serves.
    #[serde(default = "default_api_paths")]
    pub paths: BTreeMap<String, Api>,
    /// More request fields to scan, as dotted paths; `*` is every element of an array
    /// (or value of an object): `metadata.notes`, `input.*.content`.
    #[serde(default)]
    pub request_fields: Vec<String>,
    #[serde(default = "sluice_common::config::yes")]
    pub scan_requests: bool,
    #[serde(default = "sluice_common::config::yes")]
    pub scan_responses: bool,
    /// Largest body scanned (request, or non-streamed response).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_unscannable")]
    pub on_unscannable: Unscannable,
}

use sluice_common::openai::default_api_paths;
pub use sluice_common::openai::Api;

fn default_action() -> Action {
    Action::Redact
}

fn default_max_body() -> usize {
    4 << 20
}

fn default_unscannable() -> Unscannable {
    Unscannable::Block
}

/// Bytes either side of a custom match searched for its context words.
pub const CONTEXT_WINDOW: usize = 48;
const MIN_SECRET: usize = 16;
const MAX_CUSTOM_LEN: usize = 4096;

/// A validated custom entity.
#[derive(Debug)]
pub struct CustomEntity {
    pub name: String,
    pub label: String,
    pub regex: regex::Regex,
    /// Lower-cased context words.
    pub context: Vec<String>,
    pub action: Action,
    pub max_len: usize,
}

/// One step of a request field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Each,
}

/// The validated configuration, shared by every request of a VM.
#[derive(Debug)]
pub struct Settings {
    actions: [Action; BuiltIn::ALL.len()],
    /// Built-ins whose action is not `allow`.
    pub enabled: EntitySet,
    pub custom: Vec<CustomEntity>,
    hmac: Option<Hmac<Sha256>>,
    pub paths: BTreeMap<String, Api>,
    pub request_fields: Vec<Vec<PathStep>>,
    /// The same paths as configured (dotted), for the one-pass read in place.
    pub request_field_paths: Vec<String>,
    pub scan_requests: bool,
    pub scan_responses: bool,
    pub max_body_bytes: usize,
    pub on_unscannable: Unscannable,
    /// Text a stream must hold back for custom entities (0 without any).
    pub custom_hold: usize,
}

impl Settings {
    pub fn new(c: PiiConfig) -> Result<Self, ConfigError> {
        let mut actions = [c.default_action; BuiltIn::ALL.len()];
        for (name, action) in &c.entities {
            let e = BuiltIn::from_name(name).ok_or_else(|| {
                ConfigError::invalid(format!(
                    "entities: unknown entity {name:?} (built-ins: {})",
                    BuiltIn::ALL.map(BuiltIn::name).join(", ")
                ))
            })?;
            if let Some(slot) = actions.get_mut(e as usize) {
                *slot = *action;
            }
        }
        let enabled = BuiltIn::ALL
            .into_iter()
            .filter(|e| actions.get(*e as usize) != Some(&Action::Allow))
            .collect();
        let mut custom = Vec::with_capacity(c.custom.len());
        for (i, ce) in c.custom.into_iter().enumerate() {
            custom.push(Self::custom(i, ce, c.default_action)?);
        }
        for (i, a) in custom.iter().enumerate() {
            if custom.iter().skip(i + 1).any(|b| b.name == a.name) {
                return Err(ConfigError::invalid(format!(
                    "custom: duplicate name {:?}",
                    a.name
                )));
            }
        }
        let hashes =
            actions.contains(&Action::Hash) || custom.iter().any(|e| e.action == Action::Hash);
        let hmac = match (&c.hash_secret, hashes) {
            (Some(s), _) if s.len() < MIN_SECRET => {
                return Err(ConfigError::invalid(format!(
                    "hash_secret must be at least {MIN_SECRET} bytes"
                )))
            }
            (Some(s), _) => Some(
                Hmac::<Sha256>::new_from_slice(s.as_bytes())
                    .map_err(|_| ConfigError::invalid("hash_secret is not a usable HMAC key"))?,
            ),
            (None, true) => return Err(ConfigError::invalid("the hash action needs hash_secret")),
            (None, false) => None,
        };
        let mut request_fields = Vec::with_capacity(c.request_fields.len());
        for f in &c.request_fields {
            let steps: Vec<PathStep> = f
                .split('.')
                .map(|s| match s {
                    "*" => Ok(PathStep::Each),
                    "" => Err(ConfigError::invalid(format!(
                        "request_fields: empty step in {f:?}"
                    ))),
                    k => Ok(PathStep::Key(k.to_string())),
                })
                .collect::<Result<_, _>>()?;
            request_fields.push(steps);
        }
        if c.max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes must be positive"));
        }
        let custom_hold = custom
            .iter()
            .map(|e| {
                e.max_len
                    + if e.context.is_empty() {
                        0
                    } else {
                        CONTEXT_WINDOW
                    }
            })
            .max()
            .unwrap_or(0);
        Ok(Self {
            actions,
            enabled,
            custom,
            hmac,
            paths: c.paths,
            request_fields,
            request_field_paths: c.request_fields.clone(),
            scan_requests: c.scan_requests,
            scan_responses: c.scan_responses,
            max_body_bytes: c.max_body_bytes,
            on_unscannable: c.on_unscannable,
            custom_hold,
        })
    }

    fn custom(
        i: usize,
        c: CustomEntityConfig,
        default: Action,
    ) -> Result<CustomEntity, ConfigError> {
        let valid_name = !c.name.is_empty()
            && c.name.len() <= 48
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            return Err(ConfigError::invalid(format!(
                "custom[{i}].name must be 1-48 of [a-z0-9_], got {:?}",
                c.name
            )));
        }
        if BuiltIn::from_name(&c.name).is_some() {
            return Err(ConfigError::invalid(format!(
                "custom[{i}].name {:?} is a built-in entity",
                c.name
            )));
        }
        let hir = regex_syntax::Parser::new().parse(&c.pattern).map_err(|e| {
            ConfigError::invalid(format!("custom[{i}] ({}): bad pattern: {e}", c.name))
        })?;
        let longest = hir.properties().maximum_len();
        let max_len = match (c.max_len, longest) {
            (Some(m), _) => m,
            (None, Some(m)) => m,
            (None, None) => {
                return Err(ConfigError::invalid(format!(
                    "custom[{i}] ({}): the pattern has no longest match; set max_len",
                    c.name
                )))
            }
        };
        if max_len == 0 || max_len > MAX_CUSTOM_LEN {
            return Err(ConfigError::invalid(format!(
                "custom[{i}] ({}): max_len must be 1..={MAX_CUSTOM_LEN}",
                c.name
            )));
        }
        if hir.properties().minimum_len() == Some(0) {
            return Err(ConfigError::invalid(format!(
                "custom[{i}] ({}): the pattern matches empty text",
                c.name
            )));
        }
        let regex = regex::RegexBuilder::new(&c.pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                ConfigError::invalid(format!("custom[{i}] ({}): bad pattern: {e}", c.name))
            })?;
        if c.context.iter().any(|w| w.trim().is_empty()) {
            return Err(ConfigError::invalid(format!(
                "custom[{i}] ({}): empty context word",
                c.name
            )));
        }
        Ok(CustomEntity {
            label: c.name.to_ascii_uppercase(),
            name: c.name,
            regex,
            context: c.context.iter().map(|w| w.to_lowercase()).collect(),
            action: c.action.unwrap_or(default),
            max_len,
        })
    }

    pub fn action(&self, e: BuiltIn) -> Action {
        self.actions
            .get(e as usize)
            .copied()
            .unwrap_or(Action::Redact)
    }

    /// The API a request path serves (query string ignored).
    /// The API of a governed request (`POST` on a configured path).
    pub fn api(&self, method: &str, path: &str) -> Option<Api> {
        sluice_common::api::api_for(&self.paths, method, path)
    }

    /// HMAC-SHA256 of `value` under the configured secret, first 8 bytes in hex.
    pub fn pseudonym(&self, value: &str) -> String {
        match &self.hmac {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                hex::encode(digest.get(..8).unwrap_or_default())
            }
            // Unreachable by validation (hash needs a secret); never echo the value.
            None => "0000000000000000".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, ConfigError> {
        sluice_common::parse_config::<PiiConfig>(json.as_bytes()).and_then(Settings::new)
    }

    #[test]
    fn defaults_redact_everything() {
        let s = settings("{}").unwrap();
        assert_eq!(s.enabled, EntitySet::all());
        assert!(BuiltIn::ALL.iter().all(|e| s.action(*e) == Action::Redact));
        assert_eq!(s.api("POST", "/v1/chat/completions?x=1"), Some(Api::Chat));
        assert_eq!(s.api("POST", "/v1/models"), None);
        assert_eq!(s.on_unscannable, Unscannable::Block);
        assert_eq!(s.custom_hold, 0);
    }

    #[test]
    fn per_entity_actions_and_allow() {
        let s = settings(r#"{"entities": {"ipv4": "allow", "credit_card": "mask"}}"#).unwrap();
        assert!(!s.enabled.contains(BuiltIn::Ipv4));
        assert_eq!(s.action(BuiltIn::CreditCard), Action::Mask);
    }

    #[test]
    fn custom_entities_are_validated() {
        let s = settings(
            r#"{"custom": [{"name": "emp", "pattern": "EMP-[0-9]{6}", "context": ["Employee"]}]}"#,
        )
        .unwrap();
        assert_eq!(s.custom[0].max_len, 10);
        assert_eq!(s.custom[0].context, ["employee"]);
        assert_eq!(s.custom_hold, 10 + CONTEXT_WINDOW);
        for bad in [
            r#"{"custom": [{"name": "Emp", "pattern": "x"}]}"#,
            r#"{"custom": [{"name": "email", "pattern": "x"}]}"#,
            r#"{"custom": [{"name": "e", "pattern": "("}]}"#,
            r#"{"custom": [{"name": "e", "pattern": "x+"}]}"#,
            r#"{"custom": [{"name": "e", "pattern": "x*", "max_len": 5}]}"#,
            r#"{"custom": [{"name": "e", "pattern": "x"}, {"name": "e", "pattern": "y"}]}"#,
            r#"{"entities": {"mail": "redact"}}"#,
            r#"{"entities": {"email": "hash"}}"#,
            r#"{"hash_secret": "short"}"#,
            r#"{"request_fields": ["a..b"]}"#,
            r#"{"max_body_bytes": 0}"#,
            r#"{"unknown": 1}"#,
        ] {
            assert!(settings(bad).is_err(), "{bad}");
        }
        let s = settings(r#"{"custom": [{"name": "e", "pattern": "x+", "max_len": 5}]}"#).unwrap();
        assert_eq!(s.custom_hold, 5);
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let a =
            settings(r#"{"hash_secret": "0123456789abcdef", "default_action": "hash"}"#).unwrap();
        let b =
            settings(r#"{"hash_secret": "0123456789abcdeX", "default_action": "hash"}"#).unwrap();
        assert_eq!(a.pseudonym("x"), a.pseudonym("x"));
        assert_eq!(a.pseudonym("x").len(), 16);
        assert_ne!(a.pseudonym("x"), a.pseudonym("y"));
        assert_ne!(a.pseudonym("x"), b.pseudonym("x"));
        let fields = settings(r#"{"request_fields": ["input.*.text"]}"#).unwrap();
        assert_eq!(
            fields.request_fields[0],
            [
                PathStep::Key("input".into()),
                PathStep::Each,
                PathStep::Key("text".into())
            ]
        );
    }
}
