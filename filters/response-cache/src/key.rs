//! Whether a request may be answered from the cache, and its entry's key.
//!
//! The key is SHA-256 over the scope (the tenant or the key, or nothing for a rule that
//! shares its models' answers), the API, the upstream model and the canonical request: the
//! body as it goes upstream, without the fields that do not change the answer, its object
//! members in sorted order. So two requests that would make the backend say the same thing
//! share an entry, and nothing else does.

use crate::config::{Rule, Scope, Settings, When};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_common::Api;

/// Request fields that change how the answer is delivered or recorded, not what it says.
const IGNORED_FIELDS: [&str; 8] = [
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

/// An entry's key.
pub type Key = [u8; 32];

/// What the client's `Cache-Control` asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientControl {
    /// `no-cache`: do not answer from the cache (the answer may still be stored).
    pub no_cache: bool,
    /// `no-store`: do not store the answer.
    pub no_store: bool,
}

impl ClientControl {
    pub fn parse(header: Option<&str>) -> Self {
        let mut c = Self::default();
        for directive in header.unwrap_or("").split(',') {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-cache") {
                c.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                c.no_store = true;
            }
        }
        c
    }
}

/// Why a request does not use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// No rule covers its API and model.
    NotCacheable,
    /// Its rule caches only deterministic requests and this one samples.
    Sampled,
    /// The client said `no-cache` and `no-store`.
    Client,
    /// No tenant or key to scope it by.
    NoIdentity,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCacheable => "not_cacheable",
            Self::Sampled => "sampled",
            Self::Client => "client",
            Self::NoIdentity => "no_identity",
        }
    }
}

/// The cache's part in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: Key,
    /// Whose entries these are (`tenant:<t>`, `key:<id>`, or `shared`).
    pub scope: String,
    pub ttl_s: u64,
    /// Answer from the cache when it holds the entry.
    pub lookup: bool,
    /// Store the answer when it is complete and successful.
    pub store: bool,
}

/// What is known of a request when its body is read.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub api: Api,
    /// The body as it goes upstream.
    pub body: &'a Value,
    pub requested_model: &'a str,
    pub upstream_model: &'a str,
    pub tenant: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub control: ClientControl,
}

/// The fields the cache decides on before it keys a request, read from the body's bytes
/// without building its tree: most generations are sampled and never keyed, and a 2 KB
/// body's tree cost more than the rest of the filter's work on them.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    temperature: Option<Value>,
    /// `null` reads as absent.
    #[serde(default)]
    seed: Option<Value>,
}

impl Sampling {
    /// The fields as the body holds them (`None`: not a JSON object with them where they
    /// can be read alone, e.g. a repeated member).
    pub fn read(body: &[u8]) -> Option<Self> {
        // A derived struct also reads a JSON array, as its fields in order: not a request.
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        object.then(|| serde_json::from_slice(body).ok()).flatten()
    }

    /// The fields as a parsed request holds them, as [`Sampling::read`] reads them from its
    /// bytes (`null` fields absent).
    fn of(body: &Value) -> Self {
        let field = |k: &str| body.get(k).filter(|v| !v.is_null()).cloned();
        Self {
            model: field("model"),
            temperature: field("temperature"),
            seed: field("seed"),
        }
    }

    /// [`Sampling::of`] a parsed request (`None`: not a JSON object).
    pub fn of_request(body: &Value) -> Option<Self> {
        body.is_object().then(|| Self::of(body))
    }

    /// The answer does not depend on sampling: an API that does not sample,
    /// `temperature: 0`, or a `seed`.
    pub fn deterministic(&self, api: Api) -> bool {
        !api.generates()
            || self.temperature.as_ref().and_then(Value::as_f64) == Some(0.0)
            || self.seed.is_some()
    }
}

/// The rule that caches a request of `api` for these models, unless none does or the
/// request samples where the rule wants determinism.
fn admit<'s>(
    settings: &'s Settings,
    api: Api,
    requested_model: &str,
    upstream_model: &str,
    sampling: &Sampling,
) -> Result<&'s Rule, Bypass> {
    let rule = settings
        .rule(api, requested_model, upstream_model)
        .ok_or(Bypass::NotCacheable)?;
    if rule.when == When::Deterministic && !sampling.deterministic(api) {
        return Err(Bypass::Sampled);
    }
    Ok(rule)
}

/// Why a request is not cached, when its model and its sampling say so before its key is
/// made (the rest of [`plan`]'s reasons need the whole body).
pub fn early_bypass(
    settings: &Settings,
    api: Api,
    requested_model: &str,
    upstream_model: &str,
    sampling: &Sampling,
) -> Option<Bypass> {
    admit(settings, api, requested_model, upstream_model, sampling).err()
}

/// Decide; `Err` says why the cache is not used.
pub fn plan(settings: &Settings, r: &RequestFacts) -> Result<Plan, Bypass> {
    let sampling = Sampling::of(r.body);
    let rule = admit(
        settings,
        r.api,
        r.requested_model,
        r.upstream_model,
        &sampling,
    )?;
    if r.control.no_cache && r.control.no_store {
        return Err(Bypass::Client);
    }
    let scope = if rule.shared {
        "shared".to_string()
    } else {
        let (kind, id) = match settings.scope {
            Scope::Tenant => ("tenant", r.tenant),
            Scope::Key => ("key", r.key_id),
        };
        match id.filter(|id| !id.is_empty()) {
            Some(id) => format!("{kind}:{id}"),
            None => return Err(Bypass::NoIdentity),
        }
    };
    Ok(Plan {
        key: entry_key(&scope, r.api, r.upstream_model, r.body),
        scope,
        ttl_s: rule.ttl_s.unwrap_or(settings.ttl_s),
        lookup: !r.control.no_cache,
        store: !r.control.no_store,
    })
}

/// SHA-256 of the parts, each with its length first (no two part lists hash alike).
pub fn entry_key(scope: &str, api: Api, upstream_model: &str, body: &Value) -> Key {
    hash_request(b"sluice-cache-v1", scope, api, upstream_model, body, &[])
}

/// The semantic index a request's prompt is looked up in: like its key, but without the
/// prompt, so requests that differ only in how the question is put share an index (and
/// requests with other parameters, tools or models never do).
pub fn semantic_index(scope: &str, api: Api, upstream_model: &str, body: &Value) -> Key {
    hash_request(
        b"sluice-semantic-v1",
        scope,
        api,
        upstream_model,
        body,
        api.prompt_fields(),
    )
}

/// The text a request's prompt is embedded as, when the semantic tier may answer it: one
/// turn (a user message after any system prompt), unless `multi_turn`; never embeddings.
pub fn semantic_text(api: Api, body: &Value, multi_turn: bool) -> Option<String> {
    let roles = |field: &str| -> Vec<String> {
        body.get(field)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|m| {
                        m.get("role")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let one_turn = match api {
        Api::Chat => {
            let r = roles("messages");
            r.iter().filter(|r| *r == "user").count() == 1
                && r.iter()
                    .all(|r| matches!(r.as_str(), "user" | "system" | "developer"))
        }
        Api::Messages => roles("messages") == ["user"],
        Api::Responses => match body.get("input") {
            Some(Value::String(_)) => true,
            Some(Value::Array(_)) => roles("input") == ["user"],
            _ => false,
        },
        Api::Completions => body.get("prompt").is_some_and(Value::is_string),
        Api::Embeddings | Api::CountTokens => return None,
    };
    if !(one_turn || multi_turn) {
        return None;
    }
    sluice_common::api::check_request(api, body).ok()?;
    let text = sluice_common::api::strings_at_all(body, api.request_text_paths()).join("\n");
    (!text.trim().is_empty()).then_some(text)
}

fn hash_request(
    domain: &[u8],
    scope: &str,
    api: Api,
    upstream_model: &str,
    body: &Value,
    also_ignored: &[&str],
) -> Key {
    let mut canonical = Vec::with_capacity(256);
    match body {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m
                .iter()
                .filter(|(k, _)| {
                    !IGNORED_FIELDS.contains(&k.as_str()) && !also_ignored.contains(&k.as_str())
                })
                .collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            write_members(&members, &mut canonical);
        }
        other => write_canonical(other, &mut canonical),
    }
    let mut h = Sha256::new();
    for part in [
        domain,
        scope.as_bytes(),
        api.as_str().as_bytes(),
        upstream_model.as_bytes(),
        &canonical,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn write_members(members: &[(&String, &Value)], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(&Value::String((*k).clone()), out);
        out.push(b':');
        write_canonical(v, out);
    }
    out.push(b'}');
}

/// JSON with every object's members sorted by name.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            write_members(&members, out);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// A key as text (shared-tier requests, logs).
pub fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_common::parse_config;

    fn settings(json: &str) -> Settings {
        Settings::new(parse_config(json.as_bytes()).unwrap()).unwrap()
    }

    fn facts<'a>(api: Api, body: &'a Value, tenant: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            api,
            body,
            requested_model: "m",
            upstream_model: "org/m",
            tenant: Some(tenant),
            key_id: Some("key_1"),
            control: ClientControl::default(),
        }
    }

    #[test]
    fn the_key_ignores_delivery_fields_and_member_order_but_nothing_else() {
        let s = settings(r#"{"rules": [{"models": ["*"], "apis": ["chat"], "when": "always"}]}"#);
        let a = json!({"model": "org/m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.7});
        let b = json!({"temperature": 0.7, "stream": true, "stream_options": {"include_usage": true},
            "user": "u1", "messages": [{"content": "hi", "role": "user"}], "model": "org/m"});
        let c = json!({"model": "org/m", "messages": [{"role": "user", "content": "hi!"}],
            "temperature": 0.7});
        let key = |v: &Value, t: &str| plan(&s, &facts(Api::Chat, v, t)).unwrap().key;
        assert_eq!(key(&a, "team-a"), key(&b, "team-a"));
        assert_ne!(key(&a, "team-a"), key(&c, "team-a"));
        assert_ne!(key(&a, "team-a"), key(&a, "team-b"), "never across tenants");
        assert_ne!(
            entry_key("tenant:team-a", Api::Completions, "org/m", &a),
            key(&a, "team-a")
        );
        assert_ne!(
            entry_key("tenant:team-a", Api::Chat, "org/m2", &a),
            key(&a, "team-a"),
            "another upstream model"
        );
    }

    #[test]
    fn only_one_turn_is_embedded_and_its_index_ignores_the_prompt_alone() {
        let one = json!({"model": "m", "temperature": 0, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]});
        assert_eq!(
            semantic_text(Api::Chat, &one, false).as_deref(),
            Some("Be brief.\nCapital of France?")
        );
        let two = json!({"model": "m", "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Capital of France?"}]});
        assert_eq!(semantic_text(Api::Chat, &two, false), None, "a second turn");
        assert!(semantic_text(Api::Chat, &two, true).is_some());
        assert!(
            semantic_text(Api::Responses, &json!({"model": "m", "input": "x"}), false).is_some()
        );
        assert!(semantic_text(
            Api::Messages,
            &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            false
        )
        .is_some());
        assert_eq!(
            semantic_text(Api::Embeddings, &json!({"input": "x"}), true),
            None
        );
        // Same index: only the question differs; another index: another parameter.
        let mut reworded = one.clone();
        reworded["messages"][1]["content"] = json!("What is France's capital?");
        let mut hotter = one.clone();
        hotter["max_tokens"] = json!(5);
        let index = |b: &Value| semantic_index("tenant:t", Api::Chat, "m", b);
        assert_eq!(index(&one), index(&reworded));
        assert_ne!(index(&one), index(&hotter));
        assert_ne!(
            index(&one),
            semantic_index("tenant:u", Api::Chat, "m", &one)
        );
    }

    /// The decision made from the body's bytes alone agrees with the one made from its
    /// tree, for every body the tree-based policy sees.
    #[test]
    fn the_early_bypass_agrees_with_the_plan() {
        let s = settings(
            r#"{"rules": [{"models": ["m"], "apis": ["chat"]},
                          {"models": ["faq"], "apis": ["chat"], "when": "always"}]}"#,
        );
        let bodies = [
            json!({"model": "m", "messages": [], "temperature": 0.5}),
            json!({"model": "m", "messages": [], "temperature": 0}),
            json!({"model": "m", "messages": [], "temperature": 0.0, "seed": null}),
            json!({"model": "m", "messages": [], "temperature": "0"}),
            json!({"model": "m", "messages": [], "seed": 7}),
            json!({"model": "m", "messages": [], "seed": null}),
            json!({"model": "faq", "messages": [], "temperature": 1.2}),
            json!({"model": "other", "messages": [], "temperature": 0}),
        ];
        for body in &bodies {
            let model = body["model"].as_str().unwrap();
            let mut f = facts(Api::Chat, body, "t");
            f.requested_model = model;
            f.upstream_model = model;
            let sampling = Sampling::read(body.to_string().as_bytes()).unwrap();
            let early = early_bypass(&s, Api::Chat, model, model, &sampling);
            match plan(&s, &f) {
                Ok(_) => assert_eq!(early, None, "{body}"),
                Err(why @ (Bypass::Sampled | Bypass::NotCacheable)) => {
                    assert_eq!(early, Some(why), "{body}")
                }
                Err(_) => assert_eq!(early, None, "{body}"),
            }
        }
        assert_eq!(
            Sampling::read(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
                .and_then(|s| s.model)
                .as_ref()
                .and_then(Value::as_str),
            Some("m")
        );
    }

    #[test]
    fn policy_sampling_client_control_and_scope() {
        let s = settings(
            r#"{"rules": [{"models": ["m"], "apis": ["chat"]},
                          {"models": ["faq"], "apis": ["chat"], "when": "always", "shared": true}]}"#,
        );
        let sampled = json!({"messages": [], "temperature": 0.5});
        let greedy = json!({"messages": [], "temperature": 0});
        let seeded = json!({"messages": [], "seed": 7});
        assert_eq!(
            plan(&s, &facts(Api::Chat, &sampled, "t")),
            Err(Bypass::Sampled)
        );
        assert!(plan(&s, &facts(Api::Chat, &greedy, "t")).is_ok());
        assert!(plan(&s, &facts(Api::Chat, &seeded, "t")).is_ok());
        assert_eq!(
            plan(&s, &facts(Api::Embeddings, &greedy, "t")),
            Err(Bypass::NotCacheable)
        );
        let mut f = facts(Api::Chat, &greedy, "t");
        f.control = ClientControl::parse(Some("no-cache"));
        let p = plan(&s, &f).unwrap();
        assert!(!p.lookup && p.store);
        f.control = ClientControl::parse(Some("max-age=0, No-Store"));
        let p = plan(&s, &f).unwrap();
        assert!(p.lookup && !p.store);
        f.control = ClientControl::parse(Some("no-store, no-cache"));
        assert_eq!(plan(&s, &f), Err(Bypass::Client));
        f.control = ClientControl::default();
        f.tenant = None;
        assert_eq!(plan(&s, &f), Err(Bypass::NoIdentity));
        // A shared rule leaves the tenant out of the key.
        let mut a = facts(Api::Chat, &sampled, "team-a");
        a.requested_model = "faq";
        let mut b = a;
        b.tenant = Some("team-b");
        assert_eq!(plan(&s, &a).unwrap().key, plan(&s, &b).unwrap().key);
    }
}
