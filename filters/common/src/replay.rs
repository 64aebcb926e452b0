//! A complete response and its stream, both ways: a streamed answer assembled into the
//! response the same request gets unstreamed (what the response cache stores, so one entry
//! serves both), and a stored response replayed as the API's own stream events.
//!
//! Only a stream that ended as the API says a successful one ends is assembled (chat and
//! completions: a `finish_reason` and `[DONE]`; Responses: `response.completed`; Messages:
//! `message_stop`): a cut or failed stream is never stored.

use crate::api::Api;
use crate::sse::{encode, SseEvent};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// One chat / completions choice as its deltas arrive.
#[derive(Debug, Default)]
struct ChoiceParts {
    role: Option<String>,
    content: Option<String>,
    reasoning_content: Option<String>,
    refusal: Option<String>,
    /// Tool calls by their index: id, type, function name, arguments.
    tool_calls: BTreeMap<u64, (Value, Value, String, String)>,
    finish_reason: Value,
}

fn append(to: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        to.get_or_insert_with(String::new).push_str(s);
    }
}

/// Assembles a stream's events, as they pass, into the complete response.
#[derive(Debug)]
pub struct StreamAssembler {
    api: Api,
    /// Chat / completions: the chunk fields that every chunk repeats (id, created, model...).
    head: Map<String, Value>,
    choices: BTreeMap<u64, ChoiceParts>,
    usage: Option<Value>,
    /// Messages: the message so far and its blocks (a tool call's input as JSON text).
    message: Option<Map<String, Value>>,
    blocks: BTreeMap<u64, (Map<String, Value>, String)>,
    /// The response the stream ended with (Responses), or the assembled one.
    complete: Option<Value>,
    ended: bool,
    failed: bool,
}

impl StreamAssembler {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            head: Map::new(),
            choices: BTreeMap::new(),
            usage: None,
            message: None,
            blocks: BTreeMap::new(),
            complete: None,
            ended: false,
            failed: false,
        }
    }

    /// Take one event.
    pub fn push(&mut self, event: &SseEvent) {
        if event.error.is_some() {
            self.failed = true;
        }
        let Some(data) = event.data.as_deref() else {
            return;
        };
        if data.trim() == "[DONE]" {
            self.ended = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.failed = true;
            return;
        };
        match self.api {
            Api::Chat | Api::Completions => self.push_chunk(&v),
            Api::Responses => self.push_responses(&v),
            Api::Messages => self.push_messages(&v),
            Api::Embeddings | Api::CountTokens => self.failed = true,
        }
    }

    fn push_chunk(&mut self, v: &Value) {
        if v.get("error").is_some_and(|e| !e.is_null()) {
            self.failed = true;
            return;
        }
        for field in ["id", "created", "model", "system_fingerprint"] {
            if let Some(x) = v.get(field).filter(|x| !x.is_null()) {
                self.head.insert(field.into(), x.clone());
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let parts = self.choices.entry(index).or_default();
            if let Some(fr) = c.get("finish_reason").filter(|f| !f.is_null()) {
                parts.finish_reason = fr.clone();
            }
            append(&mut parts.content, c.get("text"));
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                parts.role = Some(role.into());
            }
            append(&mut parts.content, delta.get("content"));
            append(&mut parts.reasoning_content, delta.get("reasoning_content"));
            append(&mut parts.refusal, delta.get("refusal"));
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let entry = parts.tool_calls.entry(i).or_insert_with(|| {
                    (Value::Null, json!("function"), String::new(), String::new())
                });
                if let Some(id) = call.get("id").filter(|x| !x.is_null()) {
                    entry.0 = id.clone();
                }
                if let Some(t) = call.get("type").filter(|x| !x.is_null()) {
                    entry.1 = t.clone();
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    entry.2.push_str(name);
                }
                if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    entry.3.push_str(args);
                }
            }
        }
    }

    fn push_responses(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "response.completed" => {
                self.complete = v.get("response").cloned();
                self.ended = true;
            }
            "response.failed" | "response.incomplete" | "error" => self.failed = true,
            _ => {}
        }
    }

    fn push_messages(&mut self, v: &Value) {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                self.message = v.get("message").and_then(Value::as_object).cloned();
            }
            "content_block_start" => {
                if let Some(block) = v.get("content_block").and_then(Value::as_object) {
                    self.blocks.insert(index, (block.clone(), String::new()));
                }
            }
            "content_block_delta" => {
                let Some((block, json_text)) = self.blocks.get_mut(&index) else {
                    self.failed = true;
                    return;
                };
                let Some(delta) = v.get("delta") else {
                    return;
                };
                let mut extend = |field: &str, add: Option<&Value>| {
                    if let Some(s) = add.and_then(Value::as_str) {
                        let now = block.get(field).and_then(Value::as_str).unwrap_or("");
                        let joined = format!("{now}{s}");
                        block.insert(field.into(), Value::String(joined));
                    }
                };
                match delta.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => extend("text", delta.get("text")),
                    "thinking_delta" => extend("thinking", delta.get("thinking")),
                    "signature_delta" => extend("signature", delta.get("signature")),
                    "input_json_delta" => {
                        if let Some(s) = delta.get("partial_json").and_then(Value::as_str) {
                            json_text.push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let Some(message) = self.message.as_mut() else {
                    self.failed = true;
                    return;
                };
                if let Some(delta) = v.get("delta").and_then(Value::as_object) {
                    for (k, x) in delta {
                        message.insert(k.clone(), x.clone());
                    }
                }
                if let Some(u) = v.get("usage").and_then(Value::as_object) {
                    let usage = message
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(usage) = usage.as_object_mut() {
                        for (k, x) in u {
                            usage.insert(k.clone(), x.clone());
                        }
                    }
                }
            }
            "message_stop" => self.ended = true,
            "error" => self.failed = true,
            _ => {}
        }
    }

    /// The complete response, when the stream ended as a success.
    pub fn finish(self) -> Option<Value> {
        if self.failed || !self.ended {
            return None;
        }
        match self.api {
            Api::Chat | Api::Completions => self.finish_chunks(),
            Api::Responses => self
                .complete
                .filter(|r| r.get("status").and_then(Value::as_str) == Some("completed")),
            Api::Messages => {
                let mut message = self.message?;
                let mut content = Vec::with_capacity(self.blocks.len());
                for (mut block, json_text) in self.blocks.into_values() {
                    if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                        let input = if json_text.trim().is_empty() {
                            block.get("input").cloned().unwrap_or_else(|| json!({}))
                        } else {
                            serde_json::from_str(&json_text).ok()?
                        };
                        block.insert("input".into(), input);
                    }
                    content.push(Value::Object(block));
                }
                message.insert("content".into(), Value::Array(content));
                Some(Value::Object(message))
            }
            Api::Embeddings | Api::CountTokens => None,
        }
    }

    fn finish_chunks(self) -> Option<Value> {
        if self.choices.is_empty() || self.choices.values().any(|c| c.finish_reason.is_null()) {
            return None;
        }
        let mut out = Map::new();
        out.insert(
            "id".into(),
            self.head.get("id").cloned().unwrap_or(Value::Null),
        );
        let object = if self.api == Api::Chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        out.insert("object".into(), json!(object));
        for field in ["created", "model", "system_fingerprint"] {
            if let Some(x) = self.head.get(field) {
                out.insert(field.into(), x.clone());
            }
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                if self.api == Api::Completions {
                    return json!({"index": index, "text": c.content.unwrap_or_default(),
                        "logprobs": null, "finish_reason": c.finish_reason});
                }
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    json!(c.role.unwrap_or_else(|| "assistant".into())),
                );
                message.insert("content".into(), json!(c.content));
                if let Some(r) = c.reasoning_content {
                    message.insert("reasoning_content".into(), json!(r));
                }
                if let Some(r) = c.refusal {
                    message.insert("refusal".into(), json!(r));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .into_values()
                        .map(|(id, kind, name, arguments)| {
                            json!({"id": id, "type": kind,
                                "function": {"name": name, "arguments": arguments}})
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({"index": index, "message": message, "logprobs": null,
                    "finish_reason": c.finish_reason})
            })
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage {
            out.insert("usage".into(), u);
        }
        Some(Value::Object(out))
    }
}

/// A stored response as the stream the API sends: for chat and completions with the usage
/// chunk only when `include_usage` (the request's `stream_options.include_usage`).
/// `None` for an API that does not stream (embeddings) or a response not in its shape.
pub fn replay_stream(api: Api, response: &Value, include_usage: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut emit = |name: Option<&str>, data: &Value| {
        out.extend_from_slice(&encode(name, &data.to_string()));
    };
    match api {
        Api::Chat | Api::Completions => {
            let chat = api == Api::Chat;
            let mut head = Map::new();
            for field in ["id", "created", "model", "system_fingerprint"] {
                if let Some(x) = response.get(field) {
                    head.insert(field.into(), x.clone());
                }
            }
            let object = if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            head.insert("object".into(), json!(object));
            let chunk = |choices: Vec<Value>| {
                let mut c = head.clone();
                c.insert("choices".into(), Value::Array(choices));
                Value::Object(c)
            };
            let choices = response.get("choices")?.as_array()?;
            if chat {
                let opening: Vec<Value> = choices
                    .iter()
                    .map(|c| {
                        let role = c
                            .pointer("/message/role")
                            .cloned()
                            .unwrap_or(json!("assistant"));
                        json!({"index": c.get("index").cloned().unwrap_or(json!(0)),
                            "delta": {"role": role, "content": ""},
                            "logprobs": null, "finish_reason": null})
                    })
                    .collect();
                emit(None, &chunk(opening));
            }
            let mut bodies = Vec::new();
            for c in choices {
                let index = c.get("index").cloned().unwrap_or(json!(0));
                if !chat {
                    bodies.push(
                        json!({"index": index, "text": c.get("text").cloned().unwrap_or(json!("")),
                        "logprobs": null, "finish_reason": null}),
                    );
                    continue;
                }
                let message = c.get("message")?;
                let mut delta = Map::new();
                for field in ["content", "reasoning_content", "refusal"] {
                    if let Some(x) = message.get(field).filter(|x| x.is_string()) {
                        delta.insert(field.into(), x.clone());
                    }
                }
                if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, call)| {
                            json!({"index": i, "id": call.get("id"), "type": call.get("type"),
                                "function": call.get("function")})
                        })
                        .collect();
                    delta.insert("tool_calls".into(), Value::Array(calls));
                }
                if !delta.is_empty() {
                    bodies.push(json!({"index": index, "delta": delta, "logprobs": null,
                        "finish_reason": null}));
                }
            }
            if !bodies.is_empty() {
                emit(None, &chunk(bodies));
            }
            let closing: Vec<Value> = choices
                .iter()
                .map(|c| {
                    let index = c.get("index").cloned().unwrap_or(json!(0));
                    let reason = c.get("finish_reason").cloned().unwrap_or(json!("stop"));
                    if chat {
                        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
                    } else {
                        json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
                    }
                })
                .collect();
            emit(None, &chunk(closing));
            if include_usage {
                if let Some(u) = response.get("usage").filter(|u| u.is_object()) {
                    let mut c = chunk(Vec::new());
                    if let Some(m) = c.as_object_mut() {
                        m.insert("usage".into(), u.clone());
                    }
                    emit(None, &c);
                }
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        Api::Messages => {
            let mut start = response.as_object()?.clone();
            let blocks = start.insert("content".into(), json!([]));
            start.insert("stop_reason".into(), Value::Null);
            start.insert("stop_sequence".into(), Value::Null);
            let usage = response.get("usage").cloned().unwrap_or(json!({}));
            let mut start_usage = usage.clone();
            if let Some(u) = start_usage.as_object_mut() {
                u.insert("output_tokens".into(), json!(0));
            }
            start.insert("usage".into(), start_usage);
            emit(
                Some("message_start"),
                &json!({"type": "message_start", "message": start}),
            );
            for (i, block) in blocks?.as_array()?.iter().enumerate() {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                let (opening, deltas): (Value, Vec<Value>) = match kind {
                    "text" => (
                        json!({"type": "text", "text": ""}),
                        vec![json!({"type": "text_delta", "text": block.get("text")})],
                    ),
                    "thinking" => (
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        vec![
                            json!({"type": "thinking_delta", "thinking": block.get("thinking")}),
                            json!({"type": "signature_delta", "signature": block.get("signature")}),
                        ],
                    ),
                    "tool_use" => {
                        let mut open = block.as_object()?.clone();
                        open.insert("input".into(), json!({}));
                        let input = block.get("input").cloned().unwrap_or(json!({}));
                        (
                            Value::Object(open),
                            vec![json!({"type": "input_json_delta",
                                "partial_json": input.to_string()})],
                        )
                    }
                    _ => (block.clone(), Vec::new()),
                };
                emit(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": i, "content_block": opening}),
                );
                for delta in deltas {
                    emit(
                        Some("content_block_delta"),
                        &json!({"type": "content_block_delta", "index": i, "delta": delta}),
                    );
                }
                emit(
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": i}),
                );
            }
            let output = usage.get("output_tokens").cloned().unwrap_or(json!(0));
            emit(
                Some("message_delta"),
                &json!({"type": "message_delta",
                    "delta": {"stop_reason": response.get("stop_reason"),
                        "stop_sequence": response.get("stop_sequence")},
                    "usage": {"output_tokens": output}}),
            );
            emit(Some("message_stop"), &json!({"type": "message_stop"}));
        }
        Api::Responses => {
            let mut seq = 0u64;
            let mut event = |out: &mut Vec<u8>, kind: &str, mut body: Value| {
                if let Some(m) = body.as_object_mut() {
                    m.insert("type".into(), json!(kind));
                    m.insert("sequence_number".into(), json!(seq));
                }
                seq += 1;
                out.extend_from_slice(&encode(Some(kind), &body.to_string()));
            };
            let mut opening = response.as_object()?.clone();
            opening.insert("status".into(), json!("in_progress"));
            opening.insert("output".into(), json!([]));
            opening.insert("usage".into(), Value::Null);
            event(&mut out, "response.created", json!({"response": opening}));
            for (i, item) in response.get("output")?.as_array()?.iter().enumerate() {
                let id = item.get("id").cloned().unwrap_or(Value::Null);
                let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
                let mut added = item.as_object()?.clone();
                match kind {
                    "message" => {
                        added.insert("content".into(), json!([]));
                        added.insert("status".into(), json!("in_progress"));
                    }
                    "function_call" => {
                        added.insert("arguments".into(), json!(""));
                        added.insert("status".into(), json!("in_progress"));
                    }
                    _ => {}
                }
                event(
                    &mut out,
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                if kind == "message" {
                    let parts = item.get("content").and_then(Value::as_array);
                    for (j, part) in parts.into_iter().flatten().enumerate() {
                        let at = json!({"item_id": id, "output_index": i, "content_index": j});
                        let with = |extra: Value| {
                            let mut m = at.as_object().cloned().unwrap_or_default();
                            if let Some(e) = extra.as_object() {
                                m.extend(e.clone());
                            }
                            Value::Object(m)
                        };
                        let text_part =
                            part.get("type").and_then(Value::as_str) == Some("output_text");
                        let mut empty = part.clone();
                        if text_part {
                            if let Some(m) = empty.as_object_mut() {
                                m.insert("text".into(), json!(""));
                            }
                        }
                        event(
                            &mut out,
                            "response.content_part.added",
                            with(json!({"part": empty})),
                        );
                        if text_part {
                            let text = part.get("text").cloned().unwrap_or(json!(""));
                            event(
                                &mut out,
                                "response.output_text.delta",
                                with(json!({"delta": text})),
                            );
                            event(
                                &mut out,
                                "response.output_text.done",
                                with(json!({"text": text})),
                            );
                        }
                        event(
                            &mut out,
                            "response.content_part.done",
                            with(json!({"part": part})),
                        );
                    }
                } else if kind == "function_call" {
                    let args = item.get("arguments").cloned().unwrap_or(json!(""));
                    let at = json!({"item_id": id, "output_index": i});
                    let mut delta = at.clone();
                    let mut done = at;
                    if let (Some(d), Some(e)) = (delta.as_object_mut(), done.as_object_mut()) {
                        d.insert("delta".into(), args.clone());
                        e.insert("arguments".into(), args);
                    }
                    event(&mut out, "response.function_call_arguments.delta", delta);
                    event(&mut out, "response.function_call_arguments.done", done);
                }
                event(
                    &mut out,
                    "response.output_item.done",
                    json!({"output_index": i, "item": item}),
                );
            }
            event(
                &mut out,
                "response.completed",
                json!({"response": response}),
            );
        }
        Api::Embeddings | Api::CountTokens => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn assemble(api: Api, bytes: &[u8], split: usize) -> Option<Value> {
        let mut parser = SseParser::new(1 << 20);
        let mut a = StreamAssembler::new(api);
        let (x, y) = bytes.split_at(split.min(bytes.len()));
        for chunk in [x, y] {
            for e in parser.push(chunk) {
                a.push(&e);
            }
        }
        a.finish()
    }

    fn chat() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there.",
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
    }

    fn messages() -> Value {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Hi 世界"},
                {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"q": [1, 2]}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 4}})
    }

    fn responses() -> Value {
        json!({"id": "resp_1", "object": "response", "created_at": 3, "status": "completed",
            "model": "m", "output": [
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Hi", "annotations": []}]},
                {"id": "fc_1", "type": "function_call", "call_id": "c", "name": "f",
                 "arguments": "{}", "status": "completed"}],
            "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3}})
    }

    #[test]
    fn a_replayed_response_assembles_back_to_itself_at_every_split() {
        let completions = json!({"id": "cmpl-1", "object": "text_completion", "created": 1,
            "model": "m", "choices": [{"index": 0, "text": "abc", "logprobs": null,
            "finish_reason": "length"}], "usage": {"prompt_tokens": 1, "completion_tokens": 3,
            "total_tokens": 4}});
        for (api, r) in [
            (Api::Chat, chat()),
            (Api::Completions, completions),
            (Api::Messages, messages()),
            (Api::Responses, responses()),
        ] {
            let stream = replay_stream(api, &r, true).unwrap();
            for split in 0..=stream.len() {
                assert_eq!(
                    assemble(api, &stream, split).as_ref(),
                    Some(&r),
                    "{api:?} at {split}"
                );
            }
        }
    }

    #[test]
    fn usage_is_replayed_only_when_asked_and_embeddings_do_not_stream() {
        let without = replay_stream(Api::Chat, &chat(), false).unwrap();
        assert!(!String::from_utf8_lossy(&without).contains("total_tokens"));
        assert!(without.ends_with(b"data: [DONE]\n\n"));
        let with = replay_stream(Api::Chat, &chat(), true).unwrap();
        assert!(String::from_utf8_lossy(&with).contains("\"choices\":[],"));
        assert_eq!(
            replay_stream(Api::Embeddings, &json!({"data": []}), false),
            None
        );
    }

    #[test]
    fn a_cut_or_failed_stream_is_not_assembled() {
        let stream = replay_stream(Api::Chat, &chat(), true).unwrap();
        let cut = &stream[..stream.len() - b"data: [DONE]\n\n".len()];
        assert_eq!(assemble(Api::Chat, cut, 0), None, "no [DONE]");
        let messages = replay_stream(Api::Messages, &messages(), true).unwrap();
        let text = String::from_utf8(messages).unwrap();
        let cut = &text[..text.find("event: message_stop").unwrap()];
        assert_eq!(assemble(Api::Messages, cut.as_bytes(), 0), None);
        let failed = "event: response.failed\ndata: {\"type\":\"response.failed\"}\n\n";
        assert_eq!(assemble(Api::Responses, failed.as_bytes(), 0), None);
        let error = "data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(assemble(Api::Chat, error.as_bytes(), 0), None);
    }

    proptest::proptest! {
        /// Whatever text and tool arguments an answer holds (any Unicode, quotes, newlines,
        /// `data:` lookalikes), its replay assembles back into it, cut anywhere.
        #[test]
        fn any_answer_survives_its_replay(
            text in "\\PC{0,40}(\n\ndata: [DONE]\n)?\\PC{0,10}",
            args in "\\PC{0,20}",
            cut in 0usize..4000,
        ) {
            let mut c = chat();
            c["choices"][0]["message"]["content"] = json!(text);
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!(args);
            let mut m = messages();
            m["content"][1]["text"] = json!(text);
            m["content"][2]["input"] = json!({"q": args});
            let mut r = responses();
            r["output"][0]["content"][0]["text"] = json!(text);
            for (api, answer) in [(Api::Chat, c), (Api::Messages, m), (Api::Responses, r)] {
                let stream = replay_stream(api, &answer, true).unwrap();
                proptest::prop_assert_eq!(assemble(api, &stream, cut), Some(answer));
            }
        }
    }

    #[test]
    fn an_engines_chat_stream_assembles_into_its_response() {
        // vLLM-style chunks: role first, content in pieces, usage in its own chunk.
        let s = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}\n\n",
            "data: [DONE]\n\n"
        );
        let r = assemble(Api::Chat, s.as_bytes(), 0).unwrap();
        assert_eq!(r["choices"][0]["message"]["content"], "Hello");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["usage"]["total_tokens"], 4);
    }
}
