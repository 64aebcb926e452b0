//! The request model: every governed LLM API, what its requests, responses and stream events
//! look like to the gateway, and the error shape its clients expect.
//!
//! This is the one place that knows the APIs. Filters ask it which API a request is
//! ([`api_for_path`]), read a request through [`RequestView`], find the text of requests and
//! responses at [`Api::request_text_paths`] / [`Api::response_text_paths`], read usage with
//! [`usage_of`] / [`StreamEventView`], and answer errors in [`Family`]'s shape.
//!
//! APIs (all `POST`):
//!
//! | API | path | text | output cap | usage |
//! |---|---|---|---|---|
//! | `chat` | `/v1/chat/completions` | `messages` | `max_completion_tokens`, `max_tokens` | `prompt_tokens` / `completion_tokens` |
//! | `completions` | `/v1/completions` | `prompt` | `max_tokens` | same |
//! | `embeddings` | `/v1/embeddings` | `input` | none (0) | `prompt_tokens` |
//! | `responses` | `/v1/responses` | `instructions`, `input` | `max_output_tokens` | `input_tokens` / `output_tokens` |
//! | `messages` | `/v1/messages` | `system`, `messages` | `max_tokens` (required) | `input_tokens` / `output_tokens` |
//! | `count_tokens` | `/v1/messages/count_tokens` | as `messages` | none (0) | `input_tokens` |

use crate::error::{ErrorKind, OpenAiError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;

/// One governed API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI chat completions.
    Chat,
    /// OpenAI (legacy) completions.
    Completions,
    /// OpenAI embeddings.
    Embeddings,
    /// OpenAI Responses.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// Anthropic Messages token counting (`/v1/messages/count_tokens`).
    CountTokens,
}

/// Whose conventions a client follows: decides the error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenAi,
    Anthropic,
}

/// The governed paths and their APIs: the default `paths` of every filter's config.
pub const GOVERNED_PATHS: [(&str, Api); 6] = [
    ("/v1/chat/completions", Api::Chat),
    ("/v1/completions", Api::Completions),
    ("/v1/embeddings", Api::Embeddings),
    ("/v1/responses", Api::Responses),
    ("/v1/messages", Api::Messages),
    ("/v1/messages/count_tokens", Api::CountTokens),
];

/// The one method the governed APIs take.
pub const GOVERNED_METHOD: &str = "POST";

impl Api {
    /// The value of `sluice_api`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
            Self::CountTokens => "count_tokens",
        }
    }

    pub const fn family(self) -> Family {
        match self {
            Self::Messages | Self::CountTokens => Family::Anthropic,
            _ => Family::OpenAi,
        }
    }

    /// Whether the API generates text (and so has an output cap and completion usage).
    pub const fn generates(self) -> bool {
        !matches!(self, Self::Embeddings | Self::CountTokens)
    }

    /// Whether a stream without usage can be made to carry it by asking
    /// (`stream_options.include_usage`). Responses and Messages always report usage.
    pub const fn usage_on_request(self) -> bool {
        matches!(self, Self::Chat | Self::Completions)
    }

    /// The top-level request fields that make the prompt, in the order an engine reads
    /// them (Anthropic's `system` before `messages`, wherever the client put it): a prompt
    /// prefix that two requests share is a prefix of these fields' JSON.
    pub const fn prompt_fields(self) -> &'static [&'static str] {
        match self {
            Self::Chat => &["messages"],
            Self::Completions => &["prompt"],
            Self::Embeddings => &["input"],
            Self::Responses => &["instructions", "input"],
            Self::Messages | Self::CountTokens => &["system", "messages"],
        }
    }

    /// Dotted paths (`*`: every element or member) of the strings in a request that carry
    /// prompt text: what is scanned for PII and counted.
    pub const fn request_text_paths(self) -> &'static [&'static str] {
        match self {
            Self::Chat => &[
                "messages.*.content",
                "messages.*.content.*.text",
                "messages.*.tool_calls.*.function.arguments",
            ],
            Self::Completions => &["prompt", "prompt.*"],
            Self::Embeddings => &["input", "input.*"],
            Self::Responses => &[
                "instructions",
                "input",
                "input.*.content",
                "input.*.content.*.text",
                "input.*.arguments",
                "input.*.output",
            ],
            Self::Messages | Self::CountTokens => &[
                "system",
                "system.*.text",
                "messages.*.content",
                "messages.*.content.*.text",
                "messages.*.content.*.content",
                "messages.*.content.*.content.*.text",
            ],
        }
    }

    /// Dotted paths of the generated text in a complete (non-streamed) response.
    pub const fn response_text_paths(self) -> &'static [&'static str] {
        match self {
            Self::Chat => &[
                "choices.*.message.content",
                "choices.*.message.content.*.text",
                "choices.*.message.reasoning_content",
                "choices.*.message.refusal",
                "choices.*.message.tool_calls.*.function.arguments",
            ],
            Self::Completions => &["choices.*.text"],
            Self::Embeddings | Self::CountTokens => &[],
            Self::Responses => &[
                "output.*.content.*.text",
                "output.*.summary.*.text",
                "output.*.arguments",
            ],
            Self::Messages => &["content.*.text", "content.*.thinking"],
        }
    }
}

/// The default path table (see [`GOVERNED_PATHS`]).
pub fn default_api_paths() -> BTreeMap<String, Api> {
    GOVERNED_PATHS
        .iter()
        .map(|(p, a)| ((*p).to_string(), *a))
        .collect()
}

/// The path without query string or fragment.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The API a request path serves (query string and fragment ignored).
pub fn api_for_path(paths: &BTreeMap<String, Api>, path: &str) -> Option<Api> {
    paths.get(path_only(path)).copied()
}

/// The API of a governed path by the built-in table, without building a map (for a filter
/// that needs it once, off its configured paths).
pub fn governed_api(path: &str) -> Option<Api> {
    let p = path_only(path);
    GOVERNED_PATHS
        .iter()
        .find(|(g, _)| *g == p)
        .map(|(_, api)| *api)
}

/// The API of a governed request: `POST` on a path of the table.
pub fn api_for(paths: &BTreeMap<String, Api>, method: &str, path: &str) -> Option<Api> {
    if method != GOVERNED_METHOD {
        return None;
    }
    api_for_path(paths, path)
}

/// The error shape a client of `path` expects: Anthropic's under `/v1/messages`, OpenAI's
/// everywhere else (including paths that are not governed).
pub fn family_for_path(path: &str) -> Family {
    let p = path_only(path);
    if p == "/v1/messages" || p.starts_with("/v1/messages/") {
        Family::Anthropic
    } else {
        Family::OpenAi
    }
}

fn invalid(message: impl Into<String>, param: &str) -> OpenAiError {
    OpenAiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// A request body of one API, parsed once, read through the API's rules.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub api: Api,
    /// Shared with [`crate::parsed`] when parsed through it ([`RequestView::parse_shared`]);
    /// [`RequestView::body_mut`] to change it.
    pub body: Rc<Value>,
}

fn unparsable(e: &serde_json::Error) -> OpenAiError {
    OpenAiError::new(
        ErrorKind::InvalidRequest,
        format!("We could not parse the JSON body of your request ({e})."),
    )
}

impl RequestView {
    /// Parse and check a complete request body. `Err` is the 400 to answer: not JSON, not
    /// an object, a missing or non-string `model`, or a field the API requires missing or of
    /// the wrong type.
    pub fn parse(api: Api, bytes: &[u8]) -> Result<Self, OpenAiError> {
        let body: Value = serde_json::from_slice(bytes).map_err(|e| unparsable(&e))?;
        Self::from_value(api, body)
    }

    /// [`RequestView::parse`] through the thread's kept tree ([`crate::parsed`]): the tree
    /// an earlier filter built of exactly these bytes, else one built now and kept for the
    /// filters after this one. For the chain's filters; the same answer as `parse`.
    pub fn parse_shared(api: Api, bytes: &[u8]) -> Result<Self, OpenAiError> {
        let body = crate::parsed::parsed_body(bytes).map_err(|e| unparsable(&e))?;
        Self::from_value(api, body)
    }

    pub fn from_value(api: Api, body: impl Into<Rc<Value>>) -> Result<Self, OpenAiError> {
        let body = body.into();
        check_request(api, &body)?;
        Ok(Self { api, body })
    }

    /// The body to change: in place when this view is its only holder, else a copy.
    pub fn body_mut(&mut self) -> &mut Value {
        Rc::make_mut(&mut self.body)
    }

    /// `model`: required, a non-empty string, for every API.
    pub fn model(&self) -> Result<&str, OpenAiError> {
        model_of(&self.body)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.body.get(key).filter(|v| !v.is_null())
    }

    /// `stream: true` (never for embeddings or token counting).
    pub fn stream(&self) -> bool {
        self.api.generates() && self.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// Whether the client asked for the usage chunk (`stream_options.include_usage`).
    pub fn include_usage(&self) -> bool {
        self.body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The most output tokens the request may generate, as the API spells it: `Some(0)`
    /// for APIs that generate nothing, `None` when the client set no cap.
    pub fn output_cap(&self) -> Option<u64> {
        let field = |k: &str| self.get(k).and_then(Value::as_u64);
        match self.api {
            Api::Chat => field("max_completion_tokens").or_else(|| field("max_tokens")),
            Api::Completions | Api::Messages => field("max_tokens"),
            Api::Responses => field("max_output_tokens"),
            Api::Embeddings | Api::CountTokens => Some(0),
        }
    }

    /// Tool (and legacy function) definitions, when the request has any.
    pub fn tools(&self) -> impl Iterator<Item = &Value> {
        ["tools", "functions"]
            .into_iter()
            .filter_map(|k| self.get(k))
            .filter(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    }

    /// Every prompt string, in request order of the API's text paths.
    pub fn texts(&self) -> Vec<&str> {
        strings_at_all(&self.body, self.api.request_text_paths())
    }
}

/// The rules [`RequestView`] checks of a parsed body: a JSON object with a non-empty string
/// `model` and the API's fields of the right types (for readers that only need to know the
/// body would pass, without owning a view of it).
pub fn check_request(api: Api, body: &Value) -> Result<(), OpenAiError> {
    if !body.is_object() {
        return Err(OpenAiError::new(
            ErrorKind::InvalidRequest,
            "The request body must be a JSON object.",
        ));
    }
    model_of(body)?;
    check_fields(api, body)
}

/// The user-visible structure rules each API enforces before anything is sent.
fn check_fields(api: Api, body: &Value) -> Result<(), OpenAiError> {
    let array_of_objects = |key: &str| -> Result<(), OpenAiError> {
        match body.get(key) {
            Some(Value::Array(items)) if items.iter().all(Value::is_object) => Ok(()),
            Some(Value::Array(_)) => {
                Err(invalid(format!("Each of '{key}' must be an object."), key))
            }
            _ => Err(invalid(format!("'{key}' must be an array."), key)),
        }
    };
    // A field of the right JSON type; `optional`: absent or null passes too.
    let field = |key: &str,
                 optional: bool,
                 ok: fn(&Value) -> bool,
                 message: &str|
     -> Result<(), OpenAiError> {
        match body.get(key) {
            None | Some(Value::Null) if optional => Ok(()),
            Some(v) if ok(v) => Ok(()),
            _ => Err(invalid(message, key)),
        }
    };
    let cap = |key: &str, required: bool| -> Result<(), OpenAiError> {
        match body.get(key) {
            None | Some(Value::Null) if !required => Ok(()),
            Some(v) if v.as_u64().is_some() => Ok(()),
            None | Some(Value::Null) => Err(invalid(format!("'{key}' is required."), key)),
            Some(_) => Err(invalid(
                format!("'{key}' must be a non-negative integer."),
                key,
            )),
        }
    };
    match api {
        Api::Chat => {
            array_of_objects("messages")?;
            cap("max_tokens", false)?;
            cap("max_completion_tokens", false)
        }
        Api::Completions => cap("max_tokens", false),
        Api::Embeddings => field(
            "input",
            false,
            |v| matches!(v, Value::String(_) | Value::Array(_)),
            "'input' must be a string or an array of strings or token ids.",
        ),
        Api::Responses => {
            field(
                "input",
                true,
                |v| matches!(v, Value::String(_) | Value::Array(_)),
                "'input' must be a string or an array of input items.",
            )?;
            field(
                "instructions",
                true,
                Value::is_string,
                "'instructions' must be a string.",
            )?;
            cap("max_output_tokens", false)
        }
        Api::Messages | Api::CountTokens => {
            array_of_objects("messages")?;
            field(
                "system",
                true,
                |v| matches!(v, Value::String(_) | Value::Array(_)),
                "'system' must be a string or an array of text blocks.",
            )?;
            cap("max_tokens", api == Api::Messages)
        }
    }
}

/// `model` of a request body: required, a non-empty string.
/// The raw JSON of a body's top-level `fields`, in the order given (absent and null ones
/// left out), found by one scan that builds no tree: for readers that need only where the
/// prompt is, not what it says (endpoint-picker's prefix keys). `None` when the body is not
/// a JSON object.
pub fn raw_fields<'a>(body: &'a [u8], fields: &[&str]) -> Option<Vec<&'a [u8]>> {
    let members: BTreeMap<std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue> =
        serde_json::from_slice(body).ok()?;
    Some(
        fields
            .iter()
            .filter_map(|f| members.get(*f))
            .map(|v| v.get().as_bytes())
            .filter(|raw| *raw != b"null")
            .collect(),
    )
}

pub fn model_of(body: &Value) -> Result<&str, OpenAiError> {
    check_model(body.get("model"))
}

/// The `model` rule on the field's value (for filters that parse only a few fields).
pub fn check_model(model: Option<&Value>) -> Result<&str, OpenAiError> {
    match model {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        None | Some(Value::Null) => Err(invalid("You must provide a model parameter.", "model")),
        Some(_) => Err(invalid("'model' must be a non-empty string.", "model")),
    }
}

/// The strings at each of `paths`, in order (an API's request or response text paths).
pub fn strings_at_all<'a>(v: &'a Value, paths: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in paths {
        strings_at(v, path, &mut out);
    }
    out
}

/// Collect the strings at a dotted path (`*`: every element or member).
pub fn strings_at<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a str>) {
    fn walk<'a>(v: &'a Value, steps: &[&str], out: &mut Vec<&'a str>) {
        let Some((step, rest)) = steps.split_first() else {
            if let Value::String(s) = v {
                out.push(s);
            }
            return;
        };
        match (*step, v) {
            ("*", Value::Array(items)) => items.iter().for_each(|c| walk(c, rest, out)),
            ("*", Value::Object(m)) => m.values().for_each(|c| walk(c, rest, out)),
            (k, Value::Object(m)) => {
                if let Some(c) = m.get(k) {
                    walk(c, rest, out);
                }
            }
            _ => {}
        }
    }
    let steps: Vec<&str> = path.split('.').collect();
    walk(v, &steps, out);
}

/// Token usage a backend reported; either side may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedUsage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl ReportedUsage {
    /// Later reports win field by field (Anthropic streams report input first, output last).
    pub fn merge(&mut self, other: ReportedUsage) {
        self.prompt = other.prompt.or(self.prompt);
        self.completion = other.completion.or(self.completion);
    }

    pub fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.completion.is_none()
    }
}

/// Usage from a `usage` object of any governed API.
pub fn usage_from(u: &Value) -> ReportedUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let prompt = n("prompt_tokens").or_else(|| {
        // Anthropic counts cached input apart from `input_tokens`; all of it was input.
        n("input_tokens").map(|i| {
            i + n("cache_creation_input_tokens").unwrap_or(0)
                + n("cache_read_input_tokens").unwrap_or(0)
        })
    });
    let completion = n("completion_tokens").or_else(|| n("output_tokens"));
    ReportedUsage { prompt, completion }
}

/// Usage in a complete response body of `api`.
pub fn usage_of(api: Api, body: &Value) -> ReportedUsage {
    match api {
        // `{"input_tokens": N}` at the top level.
        Api::CountTokens => ReportedUsage {
            prompt: body.get("input_tokens").and_then(Value::as_u64),
            completion: Some(0),
        },
        _ => body.get("usage").map(usage_from).unwrap_or_default(),
    }
}

/// What one parsed stream event of an API carries for the gateway.
#[derive(Debug, Default, PartialEq)]
pub struct StreamEventView<'a> {
    /// Generated text in this event (deltas only: never the full-text repeats that some
    /// APIs send when a part ends, so a count of all events' text counts each token once).
    pub texts: Vec<&'a str>,
    pub usage: ReportedUsage,
    /// The event reports a failure of the generation.
    pub error: bool,
    /// The OpenAI chat / completions usage-only chunk (`choices: []` with `usage`).
    pub usage_only: bool,
}

/// Anthropic Messages: the `message_start` event that opens every stream, made here for a
/// stream whose engine left it out. llama-server sends it with the first generated token,
/// and not at all when that token is an incomplete UTF-8 sequence (a byte of a longer
/// character, about one stream in sixty with a byte-level BPE vocabulary); Anthropic's SDKs
/// refuse a stream that does not open with it.
pub fn messages_start_event(id: &str, model: &str, input_tokens: u64) -> Vec<u8> {
    let data = serde_json::json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0}
        }
    });
    crate::sse::encode(Some("message_start"), &data.to_string())
}

/// Read one stream event (`data` parsed as JSON) of `api`.
pub fn stream_event(api: Api, event: &Value) -> StreamEventView<'_> {
    let mut v = StreamEventView::default();
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    match api {
        Api::Chat | Api::Completions | Api::Embeddings => {
            if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
                v.usage = usage_from(u);
                v.usage_only = event
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
            }
            for path in [
                "choices.*.delta.content",
                "choices.*.delta.reasoning_content",
                "choices.*.delta.refusal",
                "choices.*.delta.tool_calls.*.function.name",
                "choices.*.delta.tool_calls.*.function.arguments",
                "choices.*.delta.function_call.name",
                "choices.*.delta.function_call.arguments",
                "choices.*.text",
            ] {
                strings_at(event, path, &mut v.texts);
            }
            v.error = event.get("error").is_some_and(|e| !e.is_null());
        }
        Api::Responses => match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta"
            | "response.function_call_arguments.delta" => {
                strings_at(event, "delta", &mut v.texts);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(u) = event.pointer("/response/usage").filter(|u| u.is_object()) {
                    v.usage = usage_from(u);
                }
                v.error = kind == "response.failed";
            }
            "error" => v.error = true,
            _ => {}
        },
        Api::Messages | Api::CountTokens => match kind {
            "message_start" => {
                if let Some(u) = event.pointer("/message/usage") {
                    // `output_tokens` here is a placeholder: the final count comes in
                    // `message_delta`.
                    v.usage.prompt = usage_from(u).prompt;
                }
            }
            "content_block_delta" => {
                for path in ["delta.text", "delta.thinking", "delta.partial_json"] {
                    strings_at(event, path, &mut v.texts);
                }
            }
            "message_delta" => {
                if let Some(u) = event.get("usage") {
                    let u = usage_from(u);
                    v.usage.completion = u.completion;
                    // Newer servers repeat the (final) input count here.
                    v.usage.prompt = event
                        .pointer("/usage/input_tokens")
                        .and_then(Value::as_u64)
                        .and(u.prompt);
                }
            }
            "error" => v.error = true,
            _ => {}
        },
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(api: Api, v: Value) -> Result<RequestView, OpenAiError> {
        RequestView::parse(api, v.to_string().as_bytes())
    }

    #[test]
    fn paths_methods_and_families() {
        let t = default_api_paths();
        assert_eq!(
            api_for(&t, "POST", "/v1/responses?x=1"),
            Some(Api::Responses)
        );
        assert_eq!(api_for(&t, "POST", "/v1/messages"), Some(Api::Messages));
        assert_eq!(
            api_for(&t, "POST", "/v1/messages/count_tokens"),
            Some(Api::CountTokens)
        );
        assert_eq!(api_for(&t, "GET", "/v1/chat/completions"), None);
        assert_eq!(api_for(&t, "POST", "/v1/chat/completions/"), None);
        assert_eq!(api_for(&t, "POST", "/V1/chat/completions"), None);
        assert_eq!(family_for_path("/v1/messages?beta=true"), Family::Anthropic);
        assert_eq!(
            family_for_path("/v1/messages/count_tokens"),
            Family::Anthropic
        );
        assert_eq!(family_for_path("/v1/messagesx"), Family::OpenAi);
        assert_eq!(family_for_path("/metrics"), Family::OpenAi);
        assert_eq!(governed_api("/v1/responses?x"), Some(Api::Responses));
        assert_eq!(governed_api("/v1/other"), None);
        for (path, api) in GOVERNED_PATHS {
            let name = serde_json::to_value(api).unwrap();
            assert_eq!(name, api.as_str(), "{path}");
        }
    }

    #[test]
    fn the_same_model_rule_for_every_api() {
        for (_, api) in GOVERNED_PATHS {
            for (body, param) in [
                (json!({"messages": []}), "model"),
                (json!({"model": 7}), "model"),
                (json!({"model": ""}), "model"),
            ] {
                let e = view(api, body).unwrap_err();
                assert_eq!(
                    (e.status(), e.param.as_deref()),
                    (400, Some(param)),
                    "{api:?}"
                );
            }
            assert_eq!(view(api, json!([1])).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn output_caps_as_each_api_spells_them() {
        let cap = |api, v: Value| view(api, v).unwrap().output_cap();
        let m = |extra: Value| {
            let mut b = json!({"model": "m", "messages": []});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            b
        };
        assert_eq!(
            cap(
                Api::Chat,
                m(json!({"max_tokens": 9, "max_completion_tokens": 7}))
            ),
            Some(7)
        );
        assert_eq!(cap(Api::Chat, m(json!({"max_tokens": 9}))), Some(9));
        assert_eq!(cap(Api::Chat, m(json!({}))), None);
        assert_eq!(
            cap(Api::Completions, json!({"model": "m", "max_tokens": 4})),
            Some(4)
        );
        assert_eq!(
            cap(Api::Embeddings, json!({"model": "m", "input": "x"})),
            Some(0)
        );
        assert_eq!(
            cap(
                Api::Responses,
                json!({"model": "m", "input": "x", "max_output_tokens": 5})
            ),
            Some(5)
        );
        assert_eq!(cap(Api::Messages, m(json!({"max_tokens": 3}))), Some(3));
        assert_eq!(cap(Api::CountTokens, m(json!({}))), Some(0));
        let e = view(Api::Messages, m(json!({}))).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("max_tokens"),
            "required by Anthropic"
        );
        let e = view(Api::Chat, m(json!({"max_tokens": -1}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn prompt_fields_in_the_order_an_engine_reads_them() {
        let raw = |api: Api, body: &str| -> Option<Vec<String>> {
            raw_fields(body.as_bytes(), api.prompt_fields()).map(|parts| {
                parts
                    .into_iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
        };
        // Anthropic's system prompt first, wherever the client put it; bytes as sent.
        assert_eq!(
            raw(
                Api::Messages,
                r#"{"messages": [{"role":"user","content":"hi"}], "model":"m", "system":"be \"brief\""}"#
            ),
            Some(vec![
                r#""be \"brief\"""#.to_string(),
                r#"[{"role":"user","content":"hi"}]"#.to_string()
            ])
        );
        // Other fields (a cap that changes every turn) are not part of it; null is absent.
        assert_eq!(
            raw(
                Api::Chat,
                r#"{"max_tokens": 7, "messages": [{"role":"user","content":"a"}]}"#
            ),
            raw(
                Api::Chat,
                r#"{"max_tokens": 9, "messages": [{"role":"user","content":"a"}]}"#
            )
        );
        assert_eq!(
            raw(Api::Responses, r#"{"instructions": null, "input": "x"}"#),
            Some(vec![r#""x""#.to_string()])
        );
        assert_eq!(raw(Api::Chat, "[1, 2]"), None);
        assert_eq!(raw(Api::Chat, "{not json"), None);
    }

    #[test]
    fn texts_of_each_api() {
        let v = view(
            Api::Responses,
            json!({"model": "m", "instructions": "be brief",
                   "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                             {"type": "function_call_output", "call_id": "c", "output": "42"},
                             {"role": "user", "content": "again"}]}),
        )
        .unwrap();
        assert_eq!(v.texts(), ["be brief", "again", "hi", "42"]);
        let v = view(
            Api::Messages,
            json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "sys"}],
                   "messages": [{"role": "user", "content": "hello"},
                                {"role": "user", "content": [{"type": "text", "text": "part"},
                                    {"type": "tool_result", "tool_use_id": "t", "content": "res"}]}]}),
        )
        .unwrap();
        assert_eq!(v.texts(), ["sys", "hello", "part", "res"]);
        let v = view(Api::Responses, json!({"model": "m", "input": "just text"})).unwrap();
        assert_eq!(v.texts(), ["just text"]);
    }

    #[test]
    fn usage_in_bodies_and_events() {
        let u = |p, c| ReportedUsage {
            prompt: p,
            completion: c,
        };
        assert_eq!(
            usage_of(
                Api::Chat,
                &json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
            ),
            u(Some(3), Some(4))
        );
        assert_eq!(
            usage_of(
                Api::Responses,
                &json!({"usage": {"input_tokens": 3, "output_tokens": 4}})
            ),
            u(Some(3), Some(4))
        );
        assert_eq!(
            usage_of(
                Api::Messages,
                &json!({"usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 4}})
            ),
            u(Some(13), Some(4))
        );
        assert_eq!(
            usage_of(Api::CountTokens, &json!({"input_tokens": 8})),
            u(Some(8), Some(0))
        );
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}});
        assert_eq!(stream_event(Api::Messages, &start).usage, u(Some(9), None));
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}});
        assert_eq!(stream_event(Api::Messages, &delta).usage, u(None, Some(12)));
        let text = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}});
        assert_eq!(stream_event(Api::Messages, &text).texts, ["Hi"]);
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 2, "output_tokens": 5}}});
        assert_eq!(
            stream_event(Api::Responses, &done).usage,
            u(Some(2), Some(5))
        );
        let d = json!({"type": "response.output_text.delta", "delta": "x"});
        assert_eq!(stream_event(Api::Responses, &d).texts, ["x"]);
        let full = json!({"type": "response.output_text.done", "text": "xyz"});
        assert!(
            stream_event(Api::Responses, &full).texts.is_empty(),
            "repeats are not text"
        );
        let chunk = json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
        let e = stream_event(Api::Chat, &chunk);
        assert!(e.usage_only && e.usage == u(Some(1), Some(2)));
        assert!(stream_event(Api::Messages, &json!({"type": "error", "error": {}})).error);
    }
}
