//! The routing decision for one request: alias, allow-list, `auto` tier, weighted target,
//! affinity hash, and the body with the upstream model name.

use crate::config::{AffinitySource, Alias, AliasKind, Api, Rule, Settings, Sticky, Target};
use serde::Deserialize;
use serde_json::Value;
use sluice_common::glob::glob_match;
use sluice_common::hash::fnv1a_parts;
use sluice_common::{ErrorKind, OpenAiError};

/// What the filter knows besides the body.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub api: Api,
    pub key_id: Option<&'a str>,
    /// The key's model globs (`sluice_policy.models`); `None` when no key-auth ran.
    pub allowed: Option<&'a [String]>,
    pub session: Option<&'a str>,
    /// A fresh random number for weighted draws.
    pub random: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `model` as the client sent it.
    pub requested: String,
    /// The alias that decided (the tier an `auto` request resolved to).
    pub alias: String,
    /// The model name sent upstream.
    pub model: String,
    /// The pool (Envoy cluster).
    pub pool: String,
    /// Hex hash for the pool's consistent-hash balancer.
    pub affinity: Option<String>,
    /// The body to send when the upstream name differs from the requested one.
    pub new_body: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    user: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    /// Anthropic Messages' system prompt (a string or text blocks).
    #[serde(default)]
    system: Option<Value>,
    /// Responses' system prompt.
    #[serde(default)]
    instructions: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
}

/// What `auto` rules and prefix affinity look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PromptFacts {
    /// Bytes of text / 4, rounded up: an estimate (token-counter counts exactly later).
    pub prompt_tokens: u64,
    pub has_tools: bool,
    pub has_images: bool,
    pub last_user: String,
    /// The system prompt, or the first message / prompt text.
    pub first: String,
}

fn text_of(v: &Value, images: &mut bool) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(o) => {
                        if let Some(Value::String(t)) = o.get("text") {
                            out.push_str(t);
                        }
                        if matches!(o.get("type"), Some(Value::String(t)) if t == "image_url" || t == "input_image" || t == "image" || t == "document")
                        {
                            *images = true;
                        }
                    }
                    _ => {}
                }
            }
            out
        }
        _ => String::new(),
    }
}

fn prompt_facts(api: Api, body: &[u8]) -> PromptFacts {
    let Ok(mut b) = serde_json::from_slice::<Body>(body) else {
        return PromptFacts::default();
    };
    let mut f = PromptFacts {
        has_tools: b.tools.as_ref().is_some_and(|t| !t.is_null())
            || b.functions.as_ref().is_some_and(|t| !t.is_null()),
        ..PromptFacts::default()
    };
    // Responses: `input` items are messages (role + content); a string input is one user
    // message.
    if api == Api::Responses {
        match b.input.take() {
            Some(Value::Array(items)) => {
                b.messages = Some(
                    items
                        .into_iter()
                        .map(|item| Message {
                            role: item.get("role").and_then(Value::as_str).map(str::to_string),
                            content: item.get("content").cloned(),
                        })
                        .collect(),
                );
            }
            Some(Value::String(text)) => {
                b.messages = Some(vec![Message {
                    role: Some("user".into()),
                    content: Some(Value::String(text)),
                }]);
            }
            other => b.input = other,
        }
    }
    let system = b
        .system
        .as_ref()
        .or(b.instructions.as_ref())
        .map(|s| text_of(s, &mut f.has_images))
        .filter(|s| !s.is_empty());
    let mut bytes = system.as_ref().map_or(0, String::len);
    if let Some(messages) = &b.messages {
        for (i, m) in messages.iter().enumerate() {
            let text = m
                .content
                .as_ref()
                .map(|c| text_of(c, &mut f.has_images))
                .unwrap_or_default();
            bytes += text.len();
            let role = m.role.as_deref().unwrap_or_default();
            if i == 0 || (f.first.is_empty() && matches!(role, "system" | "developer")) {
                f.first.clone_from(&text);
            }
            if role == "user" {
                f.last_user = text;
            }
        }
    } else if let Some(p) = b.prompt.as_ref().or(b.input.as_ref()) {
        let text = text_of(p, &mut f.has_images);
        bytes = text.len();
        f.first.clone_from(&text);
        f.last_user = text;
    }
    // A separate system prompt comes first (it is what a shared prefix starts with).
    if let Some(system) = system {
        f.first = system;
    }
    f.prompt_tokens = (bytes as u64).div_ceil(4);
    f
}

fn matches(rule: &Rule, f: &PromptFacts) -> bool {
    rule.min_prompt_tokens.is_none_or(|n| f.prompt_tokens >= n)
        && rule.max_prompt_tokens.is_none_or(|n| f.prompt_tokens <= n)
        && rule.has_tools.is_none_or(|t| f.has_tools == t)
        && rule.has_images.is_none_or(|t| f.has_images == t)
        && rule
            .last_user_matches
            .as_ref()
            .is_none_or(|r| r.is_match(&f.last_user))
}

fn allowed(facts: &RequestFacts, model: &str) -> bool {
    facts
        .allowed
        .is_none_or(|globs| globs.iter().any(|g| glob_match(g, model)))
}

fn bad_request(msg: &str) -> OpenAiError {
    OpenAiError::new(ErrorKind::InvalidRequest, msg).with_param("model")
}

fn forbidden(model: &str) -> OpenAiError {
    OpenAiError::new(
        ErrorKind::Permission,
        format!("This key may not use the model `{model}`."),
    )
    .with_code("model_not_allowed")
}

fn pick(targets: &[Target], total: u64, draw: u64) -> Option<&Target> {
    let mut point = draw % total.max(1);
    for t in targets {
        let w = u64::from(t.weight);
        if point < w {
            return Some(t);
        }
        point -= w;
    }
    targets.last()
}

/// Route one request.
pub fn route(s: &Settings, facts: &RequestFacts, body: &[u8]) -> Result<Decision, OpenAiError> {
    let head: Head = serde_json::from_slice(body).map_err(|_| {
        OpenAiError::new(
            ErrorKind::InvalidRequest,
            "The request body is not valid JSON.",
        )
    })?;
    let requested = sluice_common::api::check_model(head.model.as_ref())?.to_string();
    let Some(alias) = s.alias(&requested) else {
        return Err(OpenAiError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{requested}` does not exist."),
        )
        .with_param("model")
        .with_code("model_not_found"));
    };
    if !allowed(facts, &requested) {
        return Err(forbidden(&requested));
    }
    let prompt = if s.needs_messages(alias) && facts.api != Api::Embeddings
        || matches!(alias.kind, AliasKind::Auto { .. })
    {
        Some(prompt_facts(facts.api, body))
    } else {
        None
    };
    let chosen: &Alias = match &alias.kind {
        AliasKind::Targets { .. } => alias,
        AliasKind::Auto { rules, default } => {
            let f = prompt.as_ref();
            let tier = rules
                .iter()
                .filter(|r| allowed(facts, &r.model))
                .find(|r| f.is_some_and(|f| matches(r, f)))
                .map_or(default.as_str(), |r| r.model.as_str());
            if !allowed(facts, tier) {
                return Err(forbidden(tier));
            }
            // Validation guarantees every tier is an alias with targets.
            s.alias(tier)
                .ok_or_else(|| OpenAiError::new(ErrorKind::ModelNotFound, "No tier for `auto`."))?
        }
    };
    let AliasKind::Targets {
        targets,
        total_weight,
        sticky,
    } = &chosen.kind
    else {
        return Err(OpenAiError::new(
            ErrorKind::ModelNotFound,
            "No tier for `auto`.",
        ));
    };
    let draw = match (sticky, facts.key_id, facts.session) {
        (Sticky::Key, Some(k), _) => fnv1a_parts(&[chosen.name.as_bytes(), k.as_bytes()]),
        (Sticky::Session, _, Some(sess)) => fnv1a_parts(&[chosen.name.as_bytes(), sess.as_bytes()]),
        _ => facts.random,
    };
    let target = pick(targets, *total_weight, draw)
        .ok_or_else(|| OpenAiError::new(ErrorKind::ModelNotFound, "No target."))?;
    let model = target.model.clone().unwrap_or_else(|| requested.clone());
    let affinity = s.affinity.as_ref().and_then(|a| {
        let user = match &head.user {
            Some(Value::String(u)) if !u.is_empty() => Some(u.as_str()),
            _ => None,
        };
        a.from.iter().find_map(|src| {
            let value: &str = match src {
                AffinitySource::Session => facts.session.filter(|v| !v.is_empty())?,
                AffinitySource::User => user?,
                AffinitySource::Prefix => {
                    let first = prompt
                        .as_ref()
                        .map(|p| p.first.as_str())
                        .filter(|t| !t.is_empty())?;
                    let mut end = first.len().min(a.prefix_bytes);
                    while !first.is_char_boundary(end) {
                        end -= 1;
                    }
                    first.get(..end)?
                }
            };
            Some(format!("{:016x}", fnv1a_parts(&[value.as_bytes()])))
        })
    });
    let new_body = if model == requested {
        None
    } else {
        Some(
            sluice_common::json::replace_top_level_string(body, "model", &model)
                .ok_or_else(|| bad_request("The `model` parameter must be a string."))?,
        )
    };
    Ok(Decision {
        requested,
        alias: chosen.name.clone(),
        model,
        pool: target.pool.clone(),
        affinity,
        new_body,
    })
}

/// The body of `GET /v1/models`: the public models this key may use.
pub fn models_list(s: &Settings, allowed_globs: Option<&[String]>) -> String {
    let data: Vec<Value> = s
        .public_models()
        .into_iter()
        .filter(|m| allowed_globs.is_none_or(|g| g.iter().any(|p| glob_match(p, m))))
        .map(
            |m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "sluice"}),
        )
        .collect();
    serde_json::json!({"object": "list", "data": data}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouterConfig;
    use serde_json::json;

    fn settings(v: Value) -> Settings {
        Settings::new(serde_json::from_value::<RouterConfig>(v).unwrap()).unwrap()
    }

    fn config() -> Settings {
        settings(json!({
            "models": {
                "small": {"targets": [{"pool": "pool-small", "model": "org/Small-8B"}]},
                "large": {"targets": [{"pool": "pool-large", "model": "org/Large-70B", "weight": 95},
                                      {"pool": "pool-canary", "model": "org/Large-70B-v2", "weight": 5}]},
                "sticky": {"targets": [{"pool": "a"}, {"pool": "b"}], "sticky": "key"},
                "auto": {"auto": {"rules": [
                    {"has_images": true, "model": "large"},
                    {"last_user_matches": "(?i)\\bsql\\b", "model": "large"},
                    {"max_prompt_tokens": 100, "has_tools": false, "model": "small"}],
                    "default": "large"}},
                "legacy-*": {"targets": [{"pool": "pool-small"}]}
            },
            "affinity": {"from": ["session", "user", "prefix"], "prefix_bytes": 16}
        }))
    }

    fn facts<'a>() -> RequestFacts<'a> {
        RequestFacts {
            api: Api::Chat,
            key_id: Some("key_1"),
            allowed: None,
            session: None,
            random: 0,
        }
    }

    fn chat(model: &str, text: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"model": model, "messages": [
            {"role": "system", "content": "You are a SQL helper with a long system prompt."},
            {"role": "user", "content": text}]}))
        .unwrap()
    }

    #[test]
    fn alias_to_pool_and_upstream_model() {
        let s = config();
        let d = route(&s, &facts(), &chat("small", "hi")).unwrap();
        assert_eq!(
            (d.pool.as_str(), d.model.as_str()),
            ("pool-small", "org/Small-8B")
        );
        let body: Value = serde_json::from_slice(d.new_body.as_ref().unwrap()).unwrap();
        assert_eq!(body["model"], "org/Small-8B");
        assert_eq!(body["messages"][1]["content"], "hi");
        // A glob alias without an upstream name keeps the client's.
        let d = route(&s, &facts(), &chat("legacy-7", "hi")).unwrap();
        assert_eq!((d.model.as_str(), d.new_body), ("legacy-7", None));
    }

    #[test]
    fn errors_missing_unknown_forbidden() {
        let s = config();
        let e = |b: &[u8], f: &RequestFacts| route(&s, f, b).unwrap_err();
        assert_eq!(e(br#"{"messages":[]}"#, &facts()).status(), 400);
        assert_eq!(e(br#"{"model":3}"#, &facts()).status(), 400);
        assert_eq!(e(b"{nope", &facts()).status(), 400);
        let unknown = e(&chat("gpt-9", "x"), &facts());
        assert_eq!(unknown.status(), 404);
        assert!(unknown.body().contains("model_not_found"));
        let allowed = vec!["small".to_string(), "auto".to_string()];
        let f = RequestFacts {
            allowed: Some(&allowed),
            ..facts()
        };
        assert_eq!(e(&chat("large", "x"), &f).status(), 403);
        // auto picks only tiers the key may use: "sql" would go large, the key gets small.
        let d = route(&s, &f, &chat("auto", "sql please")).unwrap();
        assert_eq!(d.alias, "small");
    }

    #[test]
    fn auto_rules() {
        let s = config();
        let tier = |body: Value| {
            route(&s, &facts(), &serde_json::to_vec(&body).unwrap())
                .unwrap()
                .alias
        };
        assert_eq!(
            tier(json!({"model": "auto", "messages": [{"role": "user", "content": "hello"}]})),
            "small"
        );
        assert_eq!(
            tier(
                json!({"model": "auto", "messages": [{"role": "user", "content": "run this SQL"}]})
            ),
            "large"
        );
        assert_eq!(
            tier(
                json!({"model": "auto", "messages": [{"role": "user", "content": "x".repeat(1000)}]})
            ),
            "large"
        );
        assert_eq!(
            tier(json!({"model": "auto", "tools": [{"type": "function"}],
                               "messages": [{"role": "user", "content": "hi"}]})),
            "large"
        );
        assert_eq!(
            tier(
                json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "x"}}]}]})
            ),
            "large"
        );
    }

    /// Responses and Anthropic Messages carry their prompt in other fields: `auto` and
    /// prefix affinity read them the same way.
    #[test]
    fn responses_and_messages_prompt_facts() {
        let f = prompt_facts(
            Api::Responses,
            br#"{"model":"auto","instructions":"You are a SQL bot.",
                 "input":[{"role":"user","content":[{"type":"input_text","text":"run this SQL"},
                                                    {"type":"input_image","image_url":"x"}]}]}"#,
        );
        assert_eq!(f.first, "You are a SQL bot.");
        assert_eq!(f.last_user, "run this SQL");
        assert!(f.has_images);
        let f = prompt_facts(Api::Responses, br#"{"model":"m","input":"just this"}"#);
        assert_eq!(
            (f.first.as_str(), f.last_user.as_str()),
            ("just this", "just this")
        );
        let f = prompt_facts(
            Api::Messages,
            br#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"sys"}],
                 "tools":[{"name":"t"}],
                 "messages":[{"role":"user","content":[{"type":"text","text":"hello"}]}]}"#,
        );
        assert_eq!((f.first.as_str(), f.last_user.as_str()), ("sys", "hello"));
        assert!(f.has_tools);
        let s = config();
        let tier = |api, body: Value| {
            let facts = RequestFacts { api, ..facts() };
            route(&s, &facts, &serde_json::to_vec(&body).unwrap())
                .unwrap()
                .alias
        };
        assert_eq!(
            tier(
                Api::Responses,
                json!({"model": "auto", "input": "run this SQL"})
            ),
            "large"
        );
        assert_eq!(
            tier(Api::Responses, json!({"model": "auto", "input": "hello"})),
            "small"
        );
        assert_eq!(
            tier(
                Api::Messages,
                json!({"model": "auto", "max_tokens": 9,
                                        "messages": [{"role": "user", "content": "sql now"}]})
            ),
            "large"
        );
    }

    #[test]
    fn weights_and_stickiness() {
        let s = config();
        let mut canary = 0;
        for i in 0..1000u64 {
            let f = RequestFacts {
                random: fnv1a_parts(&[&i.to_le_bytes()]),
                ..facts()
            };
            if route(&s, &f, &chat("large", "x")).unwrap().pool == "pool-canary" {
                canary += 1;
            }
        }
        assert!(
            (25..=80).contains(&canary),
            "{canary} of 1000 went to the 5% canary"
        );
        let pools: std::collections::HashSet<String> = (0..50u64)
            .map(|i| {
                let f = RequestFacts {
                    random: i,
                    ..facts()
                };
                route(&s, &f, &chat("sticky", "x")).unwrap().pool
            })
            .collect();
        assert_eq!(pools.len(), 1, "sticky per key");
    }

    #[test]
    fn affinity_sources_in_order() {
        let s = config();
        let with_session = RequestFacts {
            session: Some("s-1"),
            ..facts()
        };
        let a = route(&s, &with_session, &chat("small", "x"))
            .unwrap()
            .affinity;
        assert_eq!(a, Some(format!("{:016x}", fnv1a_parts(&[b"s-1"]))));
        let body = serde_json::to_vec(&json!({"model": "small", "user": "u-9",
            "messages": [{"role": "user", "content": "x"}]}))
        .unwrap();
        let a = route(&s, &facts(), &body).unwrap().affinity;
        assert_eq!(a, Some(format!("{:016x}", fnv1a_parts(&[b"u-9"]))));
        // The first 16 bytes of the system prompt: same prefix, same hash.
        let a1 = route(&s, &facts(), &chat("small", "one")).unwrap().affinity;
        let a2 = route(&s, &facts(), &chat("small", "two")).unwrap().affinity;
        assert_eq!(a1, a2);
        assert_eq!(
            a1,
            Some(format!("{:016x}", fnv1a_parts(&[b"You are a SQL he"])))
        );
    }

    #[test]
    fn models_list_is_filtered() {
        let s = config();
        let all: Value = serde_json::from_str(&models_list(&s, None)).unwrap();
        let ids: Vec<&str> = all["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["auto", "large", "small", "sticky"]);
        let globs = vec!["s*".to_string()];
        let some: Value = serde_json::from_str(&models_list(&s, Some(&globs))).unwrap();
        assert_eq!(some["data"].as_array().unwrap().len(), 2);
        assert_eq!(some["object"], "list");
    }
}
