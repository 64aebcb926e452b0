//! The mock's replies: deterministic text derived from the prompt, as OpenAI JSON or SSE.

use serde_json::{json, Value};
use sluice_common::openai::Usage;

const WORDS: [&str; 32] = [
    "the",
    "model",
    "answers",
    "with",
    "tokens",
    "from",
    "a",
    "small",
    "fixed",
    "vocabulary",
    "so",
    "every",
    "reply",
    "is",
    "repeatable",
    "and",
    "tests",
    "can",
    "predict",
    "it",
    "GPU",
    "pool",
    "stream",
    "chunk",
    "gateway",
    "latency",
    "budget",
    "prompt",
    "cache",
    "kernel",
    "batch",
    "done",
];

/// Which endpoint is being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
    /// OpenAI Responses (`/v1/responses`), as vLLM serves it.
    Responses,
    /// Anthropic Messages (`/v1/messages`), as vLLM and SGLang serve it.
    Messages,
}

/// The parts of a request the mock's reply depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub api: Api,
    pub model: String,
    pub prompt_text: String,
    pub messages: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
}

impl Call {
    /// Read a request body; `Err` is the message of a 400.
    pub fn parse(api: Api, body: &[u8]) -> Result<Self, String> {
        match api {
            Api::Chat => {
                let req: sluice_common::openai::ChatCompletionRequest =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let prompt_text = req
                    .messages
                    .iter()
                    .filter_map(|m| m.content.as_ref().map(|c| c.text()))
                    .collect::<Vec<_>>()
                    .join("\n");
                Ok(Self {
                    api,
                    stream: req.is_stream(),
                    include_usage: req.include_usage(),
                    max_tokens: req.output_cap(),
                    messages: req.messages.len() as u64,
                    model: req.model,
                    prompt_text,
                })
            }
            Api::Completions => {
                let req: sluice_common::openai::CompletionRequest =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                Ok(Self {
                    api,
                    stream: req.is_stream(),
                    include_usage: req.include_usage(),
                    max_tokens: req.max_tokens,
                    messages: 0,
                    prompt_text: req.prompt.map(|p| p.text()).unwrap_or_default(),
                    model: req.model,
                })
            }
            Api::Responses | Api::Messages => {
                let common_api = match api {
                    Api::Responses => sluice_common::Api::Responses,
                    _ => sluice_common::Api::Messages,
                };
                let view =
                    sluice_common::RequestView::parse(common_api, body).map_err(|e| e.message)?;
                let items = match view.body.get(if api == Api::Responses {
                    "input"
                } else {
                    "messages"
                }) {
                    Some(Value::Array(a)) => a.len() as u64,
                    Some(Value::String(_)) => 1,
                    _ => 0,
                };
                Ok(Self {
                    api,
                    model: view.model().map_err(|e| e.message)?.to_string(),
                    prompt_text: view.texts().join("\n"),
                    messages: items,
                    stream: view.stream(),
                    include_usage: true,
                    max_tokens: view.output_cap(),
                })
            }
        }
    }

    /// A stand-in prompt count (words plus OpenAI's per-message overhead). A real backend
    /// counts with its tokenizer; the gateway must not rely on this number being exact.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_text.split_whitespace().count() as u64 + 3 * self.messages
    }
}

/// The reply's tokens: `n` words picked by a generator seeded with the prompt's FNV-1a hash.
pub fn reply_tokens(prompt: &str, n: u64) -> Vec<String> {
    let mut state = sluice_common::hash::fnv1a(prompt.as_bytes()) | 1;
    (0..n)
        .map(|i| {
            state = sluice_common::hash::xorshift64(state);
            let word = WORDS
                .get((state % WORDS.len() as u64) as usize)
                .copied()
                .unwrap_or("x");
            if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// The planned reply of a call: its tokens and why it ended.
pub struct Plan {
    pub tokens: Vec<String>,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

pub fn plan(call: &Call, reply_len: u64) -> Plan {
    let (n, finish_reason) = match call.max_tokens {
        Some(cap) if cap < reply_len => (cap, "length"),
        _ => (reply_len, "stop"),
    };
    let tokens = reply_tokens(&call.prompt_text, n);
    planned(tokens, finish_reason, call)
}

/// A reply of fixed text, cut every `chunk` characters (max_tokens caps the pieces).
pub fn plan_text(call: &Call, text: &str, chunk: usize) -> Plan {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens: Vec<String> = chars
        .chunks(chunk.max(1))
        .map(|c| c.iter().collect())
        .collect();
    let mut finish_reason = "stop";
    if let Some(cap) = call.max_tokens {
        if (cap as usize) < tokens.len() {
            tokens.truncate(cap as usize);
            finish_reason = "length";
        }
    }
    planned(tokens, finish_reason, call)
}

fn planned(tokens: Vec<String>, finish_reason: &'static str, call: &Call) -> Plan {
    Plan {
        usage: Usage::new(call.prompt_tokens(), tokens.len() as u64),
        tokens,
        finish_reason,
    }
}

fn choice(call: &Call, text: Option<&str>, finish: Option<&str>, first: bool) -> Value {
    match call.api {
        Api::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        _ => {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        }
    }
}

fn responses_usage(plan: &Plan) -> Value {
    json!({"input_tokens": plan.usage.prompt_tokens, "output_tokens": plan.usage.completion_tokens,
           "total_tokens": plan.usage.total_tokens,
           "input_tokens_details": {"cached_tokens": 0},
           "output_tokens_details": {"reasoning_tokens": 0}})
}

/// A Responses object; `output_text` `None` for the in-progress shape of a stream's start.
fn response_object(call: &Call, plan: &Plan, id: &str, created: u64, done: bool) -> Value {
    let text: String = plan.tokens.concat();
    let output = if done {
        json!([{"type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}])
    } else {
        json!([])
    };
    let incomplete = done && plan.finish_reason == "length";
    let status = match (done, incomplete) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    };
    json!({"id": format!("resp_{id}"), "object": "response", "created_at": created, "status": status,
           "model": call.model, "output": output,
           "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
           "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
           "max_output_tokens": call.max_tokens, "error": null,
           "usage": if done { responses_usage(plan) } else { Value::Null }})
}

fn anthropic_stop(plan: &Plan) -> &'static str {
    if plan.finish_reason == "length" {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// A complete (non-streamed) response body.
pub fn full_response(call: &Call, plan: &Plan, id: &str, created: u64, usage: bool) -> Value {
    let text: String = plan.tokens.concat();
    match call.api {
        Api::Responses => return response_object(call, plan, id, created, true),
        Api::Messages => {
            return json!({"id": format!("msg_{id}"), "type": "message", "role": "assistant",
                          "model": call.model, "content": [{"type": "text", "text": text}],
                          "stop_reason": anthropic_stop(plan), "stop_sequence": null,
                          "usage": {"input_tokens": plan.usage.prompt_tokens,
                                    "output_tokens": plan.usage.completion_tokens}})
        }
        Api::Chat | Api::Completions => {}
    }
    let (object, choice) = match call.api {
        Api::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": plan.finish_reason}),
        ),
        _ => (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": null,
                   "finish_reason": plan.finish_reason}),
        ),
    };
    let usage = usage.then(|| json!(plan.usage));
    let mut body = json!({"id": id, "object": object, "created": created,
                          "model": call.model, "choices": [choice], "usage": usage});
    if let Some(fields) = body.as_object_mut().filter(|_| usage.is_none()) {
        fields.remove("usage");
    }
    body
}

/// The SSE events of a streamed response, `data: [DONE]` included, in order. The first
/// event opens the message, one event per token, one with the finish reason, then the
/// usage-only chunk when asked for and enabled.
pub fn stream_events(call: &Call, plan: &Plan, id: &str, created: u64, usage: bool) -> Vec<String> {
    match call.api {
        Api::Responses => return responses_events(call, plan, id, created),
        Api::Messages => return messages_events(call, plan, id),
        Api::Chat | Api::Completions => {}
    }
    let object = match call.api {
        Api::Chat => "chat.completion.chunk",
        _ => "text_completion",
    };
    let with_usage = usage && call.include_usage;
    let chunk = |choices: Value, usage_value: Option<Value>| {
        let mut c = json!({"id": id, "object": object, "created": created,
                           "model": call.model, "choices": choices,
                           "usage": usage_value.unwrap_or(Value::Null)});
        // The `usage` field is present (null until the last chunk) only when asked for.
        if let Some(fields) = c.as_object_mut().filter(|_| !with_usage) {
            fields.remove("usage");
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::with_capacity(plan.tokens.len() + 4);
    if call.api == Api::Chat {
        events.push(chunk(json!([choice(call, Some(""), None, true)]), None));
    }
    for t in &plan.tokens {
        events.push(chunk(json!([choice(call, Some(t), None, false)]), None));
    }
    events.push(chunk(
        json!([choice(call, None, Some(plan.finish_reason), false)]),
        None,
    ));
    if with_usage {
        events.push(chunk(json!([]), Some(json!(plan.usage))));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn named(kind: &str, data: &Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// The Responses stream: created, in_progress, item and part added, one text delta per
/// token, then text / part / item done and `response.completed` with usage; every event
/// named and numbered.
fn responses_events(call: &Call, plan: &Plan, id: &str, created: u64) -> Vec<String> {
    let item = format!("msg_{id}");
    let text: String = plan.tokens.concat();
    let mut events: Vec<(String, Value)> = vec![
        (
            "response.created".into(),
            json!({"response": response_object(call, plan, id, created, false)}),
        ),
        (
            "response.in_progress".into(),
            json!({"response": response_object(call, plan, id, created, false)}),
        ),
        (
            "response.output_item.added".into(),
            json!({"output_index": 0,
            "item": {"type": "message", "id": item, "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        (
            "response.content_part.added".into(),
            json!({"item_id": item, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for t in &plan.tokens {
        events.push((
            "response.output_text.delta".into(),
            json!({"item_id": item, "output_index": 0,
            "content_index": 0, "delta": t, "logprobs": []}),
        ));
    }
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    events.push((
        "response.output_text.done".into(),
        json!({"item_id": item, "output_index": 0,
        "content_index": 0, "text": text, "logprobs": []}),
    ));
    events.push((
        "response.content_part.done".into(),
        json!({"item_id": item, "output_index": 0,
        "content_index": 0, "part": part}),
    ));
    events.push(("response.output_item.done".into(), json!({"output_index": 0,
        "item": {"type": "message", "id": item, "status": "completed", "role": "assistant", "content": [part]}})));
    let last = if plan.finish_reason == "length" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push((
        last.into(),
        json!({"response": response_object(call, plan, id, created, true)}),
    ));
    events
        .into_iter()
        .enumerate()
        .map(|(n, (kind, mut data))| {
            if let Some(o) = data.as_object_mut() {
                o.insert("type".into(), json!(kind));
                o.insert("sequence_number".into(), json!(n));
            }
            named(&kind, &data)
        })
        .collect()
}

/// The Anthropic Messages stream: message_start (input usage), one text block with a delta
/// per token, message_delta (stop reason, output usage), message_stop.
fn messages_events(call: &Call, plan: &Plan, id: &str) -> Vec<String> {
    let mut events = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": call.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": plan.usage.prompt_tokens, "output_tokens": 1}}}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        named("ping", &json!({"type": "ping"})),
    ];
    for t in &plan.tokens {
        events.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": t}}),
        ));
    }
    events.push(named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": anthropic_stop(plan), "stop_sequence": null},
        "usage": {"output_tokens": plan.usage.completion_tokens}}),
    ));
    events.push(named("message_stop", &json!({"type": "message_stop"})));
    events
}

/// `/v1/messages/count_tokens`: the mock's prompt count of a Messages body.
pub fn count_tokens(body: &[u8]) -> Result<Value, String> {
    let view = sluice_common::RequestView::parse(sluice_common::Api::CountTokens, body)
        .map_err(|e| e.message)?;
    let messages = view
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| m.len() as u64);
    let words: u64 = view
        .texts()
        .iter()
        .map(|t| t.split_whitespace().count() as u64)
        .sum();
    Ok(json!({"input_tokens": words + 3 * messages}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(stream: bool, include_usage: bool, max_tokens: Option<u64>) -> Call {
        Call {
            api: Api::Chat,
            model: "m".into(),
            prompt_text: "hello there".into(),
            messages: 1,
            stream,
            include_usage,
            max_tokens,
        }
    }

    #[test]
    fn replies_are_deterministic_and_prompt_dependent() {
        assert_eq!(reply_tokens("a", 8), reply_tokens("a", 8));
        assert_ne!(reply_tokens("a", 8), reply_tokens("b", 8));
        assert_eq!(reply_tokens("a", 0).len(), 0);
    }

    #[test]
    fn fixed_text_is_cut_into_pieces() {
        let p = plan_text(&chat(true, false, None), "héllo world", 4);
        assert_eq!(p.tokens, ["héll", "o wo", "rld"]);
        assert_eq!(p.finish_reason, "stop");
        let p = plan_text(&chat(true, false, Some(2)), "héllo world", 4);
        assert_eq!((p.tokens.len(), p.finish_reason), (2, "length"));
    }

    #[test]
    fn max_tokens_caps_the_reply() {
        let p = plan(&chat(false, false, Some(3)), 16);
        assert_eq!((p.tokens.len(), p.finish_reason), (3, "length"));
        assert_eq!(p.usage, Usage::new(5, 3));
        let p = plan(&chat(false, false, Some(100)), 16);
        assert_eq!((p.tokens.len(), p.finish_reason), (16, "stop"));
    }

    #[test]
    fn stream_with_and_without_usage() {
        let call = chat(true, true, Some(2));
        let p = plan(&call, 16);
        let events = stream_events(&call, &p, "id", 0, true);
        // role, 2 tokens, finish, usage, DONE
        assert_eq!(events.len(), 6);
        let usage: Value =
            serde_json::from_str(events[4].trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(events[5], "data: [DONE]\n\n");
        let text: String = events[1..3]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e.trim_start_matches("data: ").trim()).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, p.tokens.concat());
        // A pool that never reports usage ignores include_usage.
        let no_usage = stream_events(&call, &p, "id", 0, false);
        assert_eq!(no_usage.len(), 5);
        assert!(no_usage.iter().all(|e| !e.contains("\"usage\"")));
    }

    #[test]
    fn typed_streams_carry_usage_and_text() {
        for api in [Api::Responses, Api::Messages] {
            let call = Call {
                api,
                ..chat(true, false, Some(4))
            };
            let p = plan(&call, 16);
            let events = stream_events(&call, &p, "id", 0, false);
            let mut text = String::new();
            let mut usage = None;
            for e in &events {
                let (name, data) = e.trim_end().split_once('\n').unwrap();
                let v: Value = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
                assert_eq!(name.trim_start_matches("event: "), v["type"]);
                let common = if api == Api::Responses {
                    sluice_common::Api::Responses
                } else {
                    sluice_common::Api::Messages
                };
                let seen = sluice_common::api::stream_event(common, &v);
                text.extend(seen.texts);
                if seen.usage.completion.is_some() {
                    usage = Some(seen.usage.completion);
                }
            }
            assert_eq!(text, p.tokens.concat(), "{api:?}");
            assert_eq!(usage, Some(Some(4)), "{api:?}");
        }
    }

    #[test]
    fn parses_both_apis() {
        let c = Call::parse(
            Api::Completions,
            br#"{"model":"m","prompt":["a b","c"],"max_tokens":4,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.prompt_text.as_str(), c.max_tokens, c.stream),
            ("a b\nc", Some(4), true)
        );
        assert!(Call::parse(Api::Chat, b"{not json").is_err());
        let r = Call::parse(
            Api::Responses,
            br#"{"model":"m","instructions":"be brief","input":"a b","max_output_tokens":3,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            (r.prompt_text.as_str(), r.max_tokens, r.stream),
            ("be brief\na b", Some(3), true)
        );
        assert!(
            Call::parse(Api::Messages, br#"{"model":"m","messages":[]}"#).is_err(),
            "max_tokens is required"
        );
        assert!(Call::parse(Api::Chat, br#"{"model":"m"}"#).is_err());
    }
}
