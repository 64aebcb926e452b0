//! Streamed responses (SSE): each choice's content, and each tool call's arguments, is one
//! [`StreamText`]; events pass as they come with the text that is safe so far, and a
//! choice's held-back tail goes out in its finishing event (or, if the stream ends without
//! one, in one last event before `[DONE]`).

use crate::config::{Api, Settings};
use crate::redact::Redactor;
use crate::stream::StreamText;
use serde_json::{json, Map, Value};
use sluice_common::sse::SseParser;
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
}

impl SseRedactor {
    pub fn new(api: Api, max_event: usize) -> Self {
        Self {
            api,
            parser: SseParser::new(max_event),
            fields: BTreeMap::new(),
            template: Map::new(),
            passthrough: false,
        }
    }

    /// Bytes of text held back right now (all fields).
    pub fn held(&self) -> usize {
        self.fields.values().map(StreamText::held).sum()
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
                        if self.event(s, r, &mut v) {
                            out.extend_from_slice(b"data: ");
                            out.extend_from_slice(v.to_string().as_bytes());
                            out.extend_from_slice(b"\n\n");
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
                Api::Completions | Api::Embeddings => {
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
        let mut choices: Vec<Value> = Vec::new();
        for ((idx, field), mut t) in std::mem::take(&mut self.fields) {
            let rest = t.finish(s, r);
            if rest.is_empty() {
                continue;
            }
            let mut choice = match self.api {
                Api::Chat => json!({"index": idx, "delta": {}, "finish_reason": null}),
                Api::Completions | Api::Embeddings => {
                    json!({"index": idx, "text": "", "finish_reason": null})
                }
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
        Api::Completions | Api::Embeddings => choice.entry("text").or_insert_with(|| json!("")),
        Api::Chat => {
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
}
