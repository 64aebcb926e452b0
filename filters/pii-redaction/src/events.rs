//! Streamed responses (SSE): each choice's content, and each tool call's arguments, is one
//! [`StreamText`]; events pass as they come with the text that is safe so far, and a
//! choice's held-back tail goes out in its finishing event (or, if the stream ends without
//! one, in one last event before `[DONE]`).

use crate::config::{Api, Settings};
use crate::redact::{redact_text, Direction, Redactor};
use crate::stream::StreamText;
use serde_json::{json, Map, Value};
use sluice_common::sse::{encode, SseParser};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    /// `delta.content` (chat) or `text` (completions).
    Content,
    /// `delta.tool_calls[index=i].function.arguments`.
    ToolArguments(u64),
}

#[derive(Debug)]
pub struct SseRedactor {
    api: Api,
    parser: SseParser,
    fields: BTreeMap<(u64, Field), StreamText>,
    /// `id`, `object`, `created`, `model` of the last event, for an event made here.
    template: Map<String, Value>,
    passthrough: bool,
    /// Responses and Anthropic Messages: typed events, one text per delta kind and index.
    named: NamedStreams,
}

/// One streamed text of a typed-event API and the last delta event that carried it (the
/// template of the event that releases its held tail).
#[derive(Debug)]
struct NamedText {
    text: StreamText,
    event: Option<String>,
    template: Value,
    /// Where the delta string sits in the template.
    pointer: &'static str,
}

/// Held texts of a Responses or Messages stream, keyed by
/// `<delta kind>:<output or block index>:<content index>`.
#[derive(Debug, Default)]
struct NamedStreams {
    texts: BTreeMap<String, NamedText>,
}

/// A Responses delta event: its text field, and the `.done` event that closes it.
fn responses_delta(kind: &str) -> Option<&'static str> {
    match kind {
        "response.output_text.delta" => Some("response.output_text.done"),
        "response.refusal.delta" => Some("response.refusal.done"),
        "response.function_call_arguments.delta" => Some("response.function_call_arguments.done"),
        "response.reasoning_summary_text.delta" => Some("response.reasoning_summary_text.done"),
        "response.reasoning_text.delta" => Some("response.reasoning_text.done"),
        _ => None,
    }
}

/// Full-text repeats in Responses events (redacted whole, never held).
const RESPONSES_REPEATS: [&str; 12] = [
    "text",
    "refusal",
    "arguments",
    "part.text",
    "item.content.*.text",
    "item.summary.*.text",
    "item.arguments",
    "response.output.*.content.*.text",
    "response.output.*.summary.*.text",
    "response.output.*.arguments",
    "content_block.text",
    "message.content.*.text",
];

/// The `type` of a typed event (Responses, Anthropic Messages).
fn event_type(v: &Value) -> String {
    v.get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Redact every string at `path` under `v` as one whole text (a repeat of streamed text).
/// A copy of the redactor does it: the same values get the same placeholders, and nothing
/// is counted twice.
fn redact_repeats(s: &Settings, r: &Redactor, v: &mut Value, paths: &[&str]) -> bool {
    let mut shadow = r.clone();
    let mut scratch = Vec::new();
    let mut changed = false;
    for path in paths {
        let steps: Vec<_> = crate::body::steps(path).collect();
        let _ = crate::body::visit(v, &steps, &mut |text: &mut String| {
            if let Ok(Some(new)) = redact_text(
                s,
                &mut shadow,
                text,
                Direction::Response,
                false,
                &mut scratch,
            ) {
                *text = new;
                changed = true;
            }
            Ok::<(), ()>(())
        });
    }
    changed
}

impl NamedStreams {
    /// A delta: the text that may go now replaces the delta's text.
    fn delta(
        &mut self,
        s: &Settings,
        r: &mut Redactor,
        key: String,
        event: Option<&str>,
        v: &mut Value,
        pointer: &'static str,
    ) -> bool {
        let Some(Value::String(piece)) = v.pointer(pointer).cloned() else {
            return false;
        };
        let entry = self.texts.entry(key).or_insert_with(|| NamedText {
            text: StreamText::default(),
            event: None,
            template: Value::Null,
            pointer,
        });
        entry.event = event.map(str::to_string);
        entry.template = v.clone();
        let out = entry.text.push(s, r, &piece);
        if out == piece {
            return false;
        }
        if let Some(slot) = v.pointer_mut(pointer) {
            *slot = Value::String(out);
        }
        true
    }

    /// Release the held tails of the keys starting with `prefix` as delta events.
    fn release(&mut self, s: &Settings, r: &mut Redactor, prefix: &str) -> Vec<u8> {
        let keys: Vec<String> = self
            .texts
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            let Some(mut t) = self.texts.remove(&key) else {
                continue;
            };
            let rest = t.text.finish(s, r);
            if rest.is_empty() {
                continue;
            }
            if let Some(slot) = t.template.pointer_mut(t.pointer) {
                *slot = Value::String(rest);
            }
            out.extend(encode(t.event.as_deref(), &t.template.to_string()));
        }
        out
    }
}

impl SseRedactor {
    pub fn new(api: Api, max_event: usize) -> Self {
        Self {
            api,
            parser: SseParser::new(max_event),
            fields: BTreeMap::new(),
            template: Map::new(),
            passthrough: false,
            named: NamedStreams::default(),
        }
    }

    /// Bytes of text held back right now (all fields).
    pub fn held(&self) -> usize {
        self.fields.values().map(StreamText::held).sum::<usize>()
            + self
                .named
                .texts
                .values()
                .map(|t| t.text.held())
                .sum::<usize>()
    }

    /// Feed a chunk of the response; returns the bytes to send on now.
    pub fn on_chunk(&mut self, s: &Settings, r: &mut Redactor, chunk: &[u8], end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        if self.passthrough {
            out.extend_from_slice(chunk);
            return out;
        }
        for ev in self.parser.push(chunk) {
            match ev.data.as_deref() {
                None => out.extend_from_slice(&ev.raw),
                Some(d) if d.trim() == "[DONE]" => {
                    out.extend(self.flush(s, r));
                    out.extend_from_slice(&ev.raw);
                }
                Some(d) => match serde_json::from_str::<Value>(d) {
                    Ok(mut v) => {
                        let changed = match self.api {
                            Api::Responses => {
                                self.responses_event(s, r, ev.event.as_deref(), &mut v, &mut out)
                            }
                            Api::Messages | Api::CountTokens => {
                                self.messages_event(s, r, ev.event.as_deref(), &mut v, &mut out)
                            }
                            _ => self.event(s, r, &mut v),
                        };
                        if changed {
                            out.extend(encode(ev.event.as_deref(), &v.to_string()));
                        } else {
                            out.extend_from_slice(&ev.raw);
                        }
                    }
                    Err(_) => out.extend_from_slice(&ev.raw),
                },
            }
        }
        if self.parser.error().is_some() {
            // Not SSE after all (an event over the limit): stop editing, lose nothing held.
            self.passthrough = true;
            out.extend(self.flush(s, r));
            out.extend(self.parser.take_pending());
        }
        if end {
            out.extend(self.flush(s, r));
            out.extend(self.parser.take_pending());
        }
        out
    }

    /// A Responses event: deltas stream with a hold-back, a `.done` event first releases
    /// its text's tail (as one more delta), full-text repeats are redacted whole.
    fn responses_event(
        &mut self,
        s: &Settings,
        r: &mut Redactor,
        name: Option<&str>,
        v: &mut Value,
        before: &mut Vec<u8>,
    ) -> bool {
        let kind = event_type(v);
        let index = format!(
            "{}:{}",
            num(v, "output_index"),
            num(v, "content_index").max(num(v, "summary_index"))
        );
        if let Some(done) = responses_delta(&kind) {
            return self
                .named
                .delta(s, r, format!("{done}:{index}|"), name, v, "/delta");
        }
        if kind.ends_with(".done") && responses_delta(&kind.replace(".done", ".delta")).is_some() {
            before.extend(self.named.release(s, r, &format!("{kind}:{index}|")));
        }
        if matches!(
            kind.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        ) {
            before.extend(self.named.release(s, r, ""));
        }
        redact_repeats(s, r, v, &RESPONSES_REPEATS)
    }

    /// An Anthropic Messages event: `content_block_delta` streams with a hold-back,
    /// `content_block_stop` first releases that block's tail, `message_delta` / `message_stop`
    /// release everything left.
    fn messages_event(
        &mut self,
        s: &Settings,
        r: &mut Redactor,
        name: Option<&str>,
        v: &mut Value,
        before: &mut Vec<u8>,
    ) -> bool {
        let kind = event_type(v);
        let index = num(v, "index");
        match kind.as_str() {
            "content_block_delta" => {
                let (delta_kind, pointer) = match v.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => ("text", "/delta/text"),
                    Some("thinking_delta") => ("thinking", "/delta/thinking"),
                    Some("input_json_delta") => ("json", "/delta/partial_json"),
                    _ => return false,
                };
                self.named
                    .delta(s, r, format!("{index}:{delta_kind}"), name, v, pointer)
            }
            "content_block_stop" => {
                before.extend(self.named.release(s, r, &format!("{index}:")));
                false
            }
            "message_delta" | "message_stop" => {
                before.extend(self.named.release(s, r, ""));
                false
            }
            _ => redact_repeats(s, r, v, &RESPONSES_REPEATS),
        }
    }

    /// Redact one event in place; true when it changed.
    fn event(&mut self, s: &Settings, r: &mut Redactor, v: &mut Value) -> bool {
        let Some(obj) = v.as_object_mut() else {
            return false;
        };
        for k in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(x) = obj.get(k) {
                self.template.insert(k.to_string(), x.clone());
            }
        }
        let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) else {
            return false;
        };
        let mut changed = false;
        for (pos, choice) in choices.iter_mut().enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            match self.api {
                Api::Chat => {
                    if let Some(delta) = choice.get_mut("delta") {
                        changed |=
                            self.text_at(s, r, (idx, Field::Content), delta.get_mut("content"));
                        if let Some(calls) =
                            delta.get_mut("tool_calls").and_then(Value::as_array_mut)
                        {
                            for (k, call) in calls.iter_mut().enumerate() {
                                let ti = call
                                    .get("index")
                                    .and_then(Value::as_u64)
                                    .unwrap_or(k as u64);
                                let args = call.pointer_mut("/function/arguments");
                                changed |=
                                    self.text_at(s, r, (idx, Field::ToolArguments(ti)), args);
                            }
                        }
                    }
                }
                _ => {
                    changed |= self.text_at(s, r, (idx, Field::Content), choice.get_mut("text"));
                }
            }
            if finished {
                changed |= self.finish_choice(s, r, idx, choice);
            }
        }
        changed
    }

    fn text_at(
        &mut self,
        s: &Settings,
        r: &mut Redactor,
        key: (u64, Field),
        slot: Option<&mut Value>,
    ) -> bool {
        let Some(Value::String(text)) = slot else {
            return false;
        };
        let out = self.fields.entry(key).or_default().push(s, r, text);
        if out == *text {
            return false;
        }
        *text = out;
        true
    }

    /// A choice ended: its held text joins this event.
    fn finish_choice(
        &mut self,
        s: &Settings,
        r: &mut Redactor,
        idx: u64,
        choice: &mut Value,
    ) -> bool {
        let keys: Vec<(u64, Field)> = self
            .fields
            .range((idx, Field::Content)..)
            .take_while(|(k, _)| k.0 == idx)
            .map(|(k, _)| *k)
            .collect();
        let mut changed = false;
        for key in keys {
            let Some(rest) = self.fields.remove(&key).map(|mut t| t.finish(s, r)) else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            changed = true;
            append(self.api, choice, key.1, &rest);
        }
        changed
    }

    /// The stream is ending: one event with every held tail (none when nothing is held).
    fn flush(&mut self, s: &Settings, r: &mut Redactor) -> Vec<u8> {
        if !self.named.texts.is_empty() {
            return self.named.release(s, r, "");
        }
        let mut choices: Vec<Value> = Vec::new();
        for ((idx, field), mut t) in std::mem::take(&mut self.fields) {
            let rest = t.finish(s, r);
            if rest.is_empty() {
                continue;
            }
            let mut choice = match self.api {
                Api::Completions => json!({"index": idx, "text": "", "finish_reason": null}),
                _ => json!({"index": idx, "delta": {}, "finish_reason": null}),
            };
            append(self.api, &mut choice, field, &rest);
            choices.push(choice);
        }
        if choices.is_empty() {
            return Vec::new();
        }
        let mut ev = self.template.clone();
        ev.insert("choices".into(), Value::Array(choices));
        format!("data: {}\n\n", Value::Object(ev)).into_bytes()
    }
}

/// Append `text` to a choice's field, creating the field when the event has none.
fn append(api: Api, choice: &mut Value, field: Field, text: &str) {
    let Some(choice) = choice.as_object_mut() else {
        return;
    };
    let target = match api {
        Api::Completions => choice.entry("text").or_insert_with(|| json!("")),
        _ => {
            let delta = choice.entry("delta").or_insert_with(|| json!({}));
            let Some(delta) = delta.as_object_mut() else {
                return;
            };
            match field {
                Field::Content => delta.entry("content").or_insert_with(|| json!("")),
                Field::ToolArguments(ti) => {
                    let calls = delta.entry("tool_calls").or_insert_with(|| json!([]));
                    let Some(calls) = calls.as_array_mut() else {
                        return;
                    };
                    let pos = calls
                        .iter()
                        .position(|c| c.get("index").and_then(Value::as_u64) == Some(ti));
                    let call = match pos {
                        Some(p) => calls.get_mut(p),
                        None => {
                            calls.push(json!({"index": ti, "function": {"arguments": ""}}));
                            calls.last_mut()
                        }
                    };
                    let Some(function) = call
                        .and_then(|c| c.as_object_mut())
                        .map(|c| c.entry("function").or_insert_with(|| json!({})))
                    else {
                        return;
                    };
                    let Some(function) = function.as_object_mut() else {
                        return;
                    };
                    function.entry("arguments").or_insert_with(|| json!(""))
                }
            }
        }
    };
    match target {
        Value::String(s) => s.push_str(text),
        // `content: null` in a finishing event
        other => *other = Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiConfig;

    fn settings() -> Settings {
        Settings::new(sluice_common::parse_config::<PiiConfig>(b"{}").unwrap()).unwrap()
    }

    fn chunk(content: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
    }

    fn finish() -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
    }

    /// The text a client reassembles from the events.
    fn client_text(bytes: &[u8]) -> String {
        let mut p = SseParser::new(1 << 20);
        let mut text = String::new();
        for ev in p.push(bytes) {
            let Some(d) = ev.data else { continue };
            if d == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&d).unwrap();
            for c in v["choices"].as_array().unwrap() {
                if let Some(t) = c["delta"]["content"].as_str() {
                    text.push_str(t);
                }
                if let Some(t) = c["text"].as_str() {
                    text.push_str(t);
                }
            }
        }
        text
    }

    #[test]
    fn pii_split_across_events_and_chunks() {
        let s = settings();
        let mut r = Redactor::default();
        let mut red = SseRedactor::new(Api::Chat, 1 << 20);
        let stream = [
            chunk("Write to jane"),
            chunk(".doe@exa"),
            chunk("mple.org or call "),
            chunk("+1 415 555 "),
            chunk("2671"),
            finish(),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        // Cut the bytes anywhere too: mid-event, mid-JSON.
        let bytes = stream.as_bytes();
        let mut out = Vec::new();
        for piece in bytes.chunks(7) {
            out.extend(red.on_chunk(&s, &mut r, piece, false));
        }
        out.extend(red.on_chunk(&s, &mut r, b"", true));
        let text = client_text(&out);
        assert_eq!(text, "Write to [EMAIL_1] or call [PHONE_1]");
        let raw = String::from_utf8(out).unwrap();
        assert!(!raw.contains("jane") && !raw.contains("2671"), "{raw}");
        assert!(raw.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn stream_cut_without_finish_still_flushes_redacted() {
        let s = settings();
        let mut r = Redactor::default();
        let mut red = SseRedactor::new(Api::Chat, 1 << 20);
        let mut out = red.on_chunk(&s, &mut r, chunk("ip 10.0.").as_bytes(), false);
        out.extend(red.on_chunk(&s, &mut r, chunk("0.1").as_bytes(), true));
        assert_eq!(client_text(&out), "ip [IPV4_1]");
    }

    #[test]
    fn completions_and_tool_arguments() {
        let s = settings();
        let mut r = Redactor::default();
        let mut red = SseRedactor::new(Api::Completions, 1 << 20);
        let ev = |t: &str, f: Value| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "text": t, "finish_reason": f}]})
            )
        };
        let mut out = red.on_chunk(&s, &mut r, ev("ssn 123-4", Value::Null).as_bytes(), false);
        out.extend(red.on_chunk(&s, &mut r, ev("5-6789", json!("stop")).as_bytes(), false));
        assert_eq!(client_text(&out), "ssn [SSN_1]");

        let mut red = SseRedactor::new(Api::Chat, 1 << 20);
        let call = |args: &str, f: Value| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": args}}]}, "finish_reason": f}]})
            )
        };
        let mut out = red.on_chunk(
            &s,
            &mut r,
            call("{\"to\":\"bo", Value::Null).as_bytes(),
            false,
        );
        out.extend(red.on_chunk(
            &s,
            &mut r,
            call("b@x.io\"}", json!("tool_calls")).as_bytes(),
            false,
        ));
        let raw = String::from_utf8(out).unwrap();
        assert!(!raw.contains("bob@x.io"), "{raw}");
        assert!(raw.contains("[EMAIL_1]"), "{raw}");
    }

    /// Text deltas of a typed-event stream, reassembled as a client SDK does.
    fn typed_text(bytes: &[u8]) -> (String, Vec<String>) {
        let mut p = SseParser::new(1 << 20);
        let mut text = String::new();
        let mut names = Vec::new();
        for ev in p.push(bytes) {
            let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
            let kind = v["type"].as_str().unwrap().to_string();
            assert_eq!(ev.event.as_deref(), Some(kind.as_str()), "event line kept");
            match kind.as_str() {
                "content_block_delta" => text.push_str(v["delta"]["text"].as_str().unwrap()),
                "response.output_text.delta" => text.push_str(v["delta"].as_str().unwrap()),
                _ => {}
            }
            names.push(kind);
        }
        (text, names)
    }

    fn named(kind: &str, v: Value) -> String {
        String::from_utf8(encode(Some(kind), &v.to_string())).unwrap()
    }

    fn anthropic_stream(pieces: &[&str]) -> String {
        let mut out = named(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        );
        out += &named(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        for p in pieces {
            out += &named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
            );
        }
        out += &named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        out += &named(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
        );
        out += &named("message_stop", json!({"type": "message_stop"}));
        out
    }

    fn responses_stream(pieces: &[&str]) -> String {
        let full: String = pieces.concat();
        let mut out = named(
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": {"id": "r", "output": []}}),
        );
        for p in pieces {
            out += &named(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "item_id": "i", "output_index": 0, "content_index": 0, "delta": p}),
            );
        }
        out += &named(
            "response.output_text.done",
            json!({"type": "response.output_text.done", "item_id": "i", "output_index": 0, "content_index": 0, "text": full}),
        );
        out += &named(
            "response.content_part.done",
            json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": full}}),
        );
        out += &named(
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "message", "content": [{"type": "output_text", "text": full}]}}),
        );
        out += &named(
            "response.completed",
            json!({"type": "response.completed", "response": {"id": "r", "output": [{"type": "message", "content": [{"type": "output_text", "text": full}]}], "usage": {"input_tokens": 2, "output_tokens": 4}}}),
        );
        out
    }

    /// Any split of an Anthropic or Responses stream: the client reassembles exactly the
    /// redacted text, the address never passes, every event keeps its `event:` line, and
    /// the full-text repeats carry the same placeholders.
    #[test]
    fn typed_streams_any_split_equals_the_whole() {
        let s = settings();
        let pieces = [
            "Write to jane.d",
            "oe@exam",
            "ple.org or call ",
            "+1 415 555 2671",
            " today.",
        ];
        let want = "Write to [EMAIL_1] or call [PHONE_1] today.";
        for (api, input) in [
            (Api::Messages, anthropic_stream(&pieces)),
            (Api::Responses, responses_stream(&pieces)),
        ] {
            for cut in 0..input.len() {
                let mut r = Redactor::default();
                let mut red = SseRedactor::new(api, 1 << 20);
                let mut out = red.on_chunk(&s, &mut r, &input.as_bytes()[..cut], false);
                out.extend(red.on_chunk(&s, &mut r, &input.as_bytes()[cut..], true));
                let raw = String::from_utf8(out.clone()).unwrap();
                assert!(
                    !raw.contains("jane.doe") && !raw.contains("555 2671"),
                    "{api:?} cut {cut}: {raw}"
                );
                let (text, names) = typed_text(&out);
                assert_eq!(text, want, "{api:?} cut {cut}");
                if api == Api::Responses {
                    assert_eq!(
                        raw.matches(want).count(),
                        4,
                        "each repeat redacted alike: {raw}"
                    );
                    assert!(
                        names.iter().position(|n| n == "response.output_text.done")
                            > names
                                .iter()
                                .rposition(|n| n == "response.output_text.delta")
                    );
                } else {
                    assert!(
                        names.iter().position(|n| n == "content_block_stop")
                            > names.iter().rposition(|n| n == "content_block_delta")
                    );
                }
                // Counted once, not once per repeat.
                assert_eq!(
                    r.report(None),
                    r#"{"response":{"email":{"redact":1},"phone":{"redact":1}}}"#,
                    "{api:?}"
                );
            }
        }
    }
}
