//! The response side: capture the backend's usage or count the generated text, as chunks
//! pass; hide the usage chunk we asked for from a client that did not.

use crate::config::Api;
use serde::Deserialize;
use sluice_common::api::{strings_at_all, usage_of, ReportedUsage};
use sluice_common::engine_error::{
    normalise_stream_error, stream_error_event, stream_error_message,
};
use sluice_common::json::remove_top_level_null_member;
use sluice_common::sse::SseParser;
use sluice_tokenizer::Tokenizer;
use std::borrow::Cow;

/// Largest single SSE event accepted (a chunk of a stream is small; this bounds memory).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Where the completion count came from (`sluice_usage_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// Reported by the backend.
    Backend,
    /// Tokenized here.
    Counted,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Counted => "counted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionUsage {
    pub completion_tokens: u64,
    pub source: UsageSource,
    /// The prompt tokens the backend reported, when it did: the truth for every charge.
    pub backend_prompt_tokens: Option<u64>,
    /// The backend reported an error inside a successful (200) stream: the request failed,
    /// is logged as failed and is not charged.
    pub stream_error: Option<String>,
}

enum Mode {
    /// A complete JSON body: copied (bounded) as it passes, read at the end.
    Json { body: Vec<u8>, truncated: bool },
    /// Server-sent events, parsed incrementally.
    Sse { parser: SseParser, strip: bool },
}

/// The parts of a response body or stream chunk that matter here, borrowed from the text;
/// everything else is skipped without being built (much cheaper than a `Value`).
#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<UsageView>,
    /// An error chunk (`{"error": {...}}`, or vLLM's flat `{"object": "error", ...}`).
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<MessageView<'a>>,
    #[serde(borrow, default)]
    message: Option<MessageView<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl MessageView<'_> {
    /// Generated text: content, reasoning, refusal, and tool-call names / arguments.
    fn texts(&self) -> impl Iterator<Item = &str> {
        let calls = self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|c| c.function.as_ref());
        [&self.content, &self.reasoning_content, &self.refusal]
            .into_iter()
            .filter_map(|t| t.as_deref())
            .chain(
                calls
                    .chain(self.function_call.as_ref())
                    .flat_map(|f| [f.name.as_deref(), f.arguments.as_deref()])
                    .flatten(),
            )
    }
}

/// Follows one response.
pub struct ResponseTracker {
    api: Api,
    mode: Mode,
    success: bool,
    tokenizer: &'static Tokenizer,
    /// Generated text seen so far (bounded), for counting when the backend reports none.
    text: String,
    max_text: usize,
    /// Tokens of text that no longer fit in `text`, counted as it was dropped.
    overflow_tokens: u64,
    backend_completion: Option<u64>,
    backend_prompt: Option<u64>,
    /// The first error the stream reported (see [`CompletionUsage::stream_error`]).
    stream_error: Option<String>,
    /// The event just read was vLLM's flat `{"object": "error", ...}` chunk, which the
    /// client also gets in OpenAI's stream error form.
    flat_error_seen: bool,
    /// An Anthropic Messages stream that has not shown its first event yet: the
    /// `message_start` to send before it when that event is not one.
    message_start: Option<Vec<u8>>,
    /// Bytes to send before the event just read.
    insert_before: Vec<u8>,
}

/// Whether the fast borrowed views of OpenAI chat / completions chunks apply; the other
/// APIs are read through the request model's event and body views.
fn openai_choices(api: Api) -> bool {
    matches!(api, Api::Chat | Api::Completions)
}

impl ResponseTracker {
    /// `stream`: the request asked for a stream; `strip_usage`: we injected include_usage.
    pub fn new(
        api: Api,
        status: u16,
        content_type: Option<&str>,
        stream: bool,
        strip_usage: bool,
        tokenizer: &'static Tokenizer,
        max_text: usize,
    ) -> Self {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let sse = ct.starts_with("text/event-stream") || (stream && !ct.contains("json"));
        let mode = if sse {
            Mode::Sse {
                parser: SseParser::new(MAX_EVENT_BYTES),
                strip: strip_usage,
            }
        } else {
            Mode::Json {
                body: Vec::new(),
                truncated: false,
            }
        };
        Self {
            api,
            mode,
            success: (200..300).contains(&status),
            tokenizer,
            text: String::new(),
            max_text,
            overflow_tokens: 0,
            backend_completion: None,
            backend_prompt: None,
            stream_error: None,
            flat_error_seen: false,
            message_start: None,
            insert_before: Vec::new(),
        }
    }

    /// A Messages stream must open with `message_start`: when the engine's first event is
    /// another, `start` goes before it (see `api::messages_start_event`).
    pub fn ensure_message_start(&mut self, start: Vec<u8>) {
        if self.api == Api::Messages && self.success && matches!(self.mode, Mode::Sse { .. }) {
            self.message_start = Some(start);
        }
    }

    /// Whether this response's bytes may be rewritten (so `content-length` must go).
    pub fn rewrites(&self) -> bool {
        // Any stream: besides stripping the injected usage chunk, an engine's legacy error
        // line gets the API's stream error added after it.
        matches!(self.mode, Mode::Sse { .. })
    }

    /// Observe a chunk. Returns the bytes to send instead, when they differ.
    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        match &mut self.mode {
            Mode::Json { body, truncated } => {
                if body.len() + chunk.len() <= self.max_text {
                    body.extend_from_slice(chunk);
                } else {
                    *truncated = true;
                }
                None
            }
            Mode::Sse { parser, strip } => {
                let strip = *strip;
                let events = parser.push(chunk);
                let broken = parser.error().is_some();
                // Events are re-sent one by one (not the chunk as it came) while usage is
                // stripped, or until a Messages stream has shown how it opens.
                let rewriting = strip || self.message_start.is_some();
                let mut out = rewriting.then(|| Vec::with_capacity(chunk.len() + 256));
                // Events to add after a passed-through chunk (see the legacy error below).
                let mut appended: Vec<u8> = Vec::new();
                for event in events {
                    let mut keep = true;
                    if let Some(data) = event.data.as_deref() {
                        keep = self.on_event(data) || !strip;
                    }
                    if let Some(legacy) = event.error.as_deref() {
                        self.on_stream_error(legacy);
                    }
                    // An error the client's SDK would not see: older llama.cpp's `error:`
                    // line (not SSE: ignored), or a flat `{"object": "error", ...}` chunk
                    // (the OpenAI SDK raises only on an `error` member). The client gets it
                    // in the API's own stream form as well.
                    let flat = std::mem::take(&mut self.flat_error_seen);
                    let foreign = event
                        .error
                        .as_deref()
                        .or_else(|| event.data.as_deref().filter(|_| flat));
                    if let Some(foreign) = foreign {
                        let e = normalise_stream_error(foreign.as_bytes());
                        let converted = stream_error_event(self.api, &e);
                        match out.as_mut() {
                            Some(out) => out.extend_from_slice(&converted),
                            None => appended.extend_from_slice(&converted),
                        }
                    }
                    if let Some(out) = out.as_mut() {
                        out.append(&mut self.insert_before);
                        if keep {
                            let edited = (strip && event.data_lines == 1)
                                .then(|| remove_top_level_null_member(&event.raw, "usage"))
                                .flatten();
                            out.extend_from_slice(edited.as_deref().unwrap_or(&event.raw));
                        }
                    }
                }
                if let Mode::Sse { parser, .. } = &mut self.mode {
                    // Hand back what cannot be parsed (the stream's tail, or a non-SSE body)
                    // rather than hold it.
                    if let Some(out) = out.as_mut() {
                        if end_of_stream || broken {
                            out.extend_from_slice(&parser.take_pending());
                        } else if !strip && self.message_start.is_none() {
                            // Rewriting ends with this chunk: the next ones pass as they
                            // come, so the start of the event they finish goes now (the
                            // parser keeps its copy to read that event).
                            out.extend_from_slice(parser.pending());
                        }
                    }
                    // Passing the chunk through: an added event may follow it only where
                    // the chunk ends between events.
                    if out.is_none() && !appended.is_empty() && parser.pending_is_empty() {
                        let mut with = chunk.to_vec();
                        with.extend_from_slice(&appended);
                        return Some(with);
                    }
                }
                out
            }
        }
    }

    /// One event's data. Returns false for the usage-only chunk (hidden when stripping).
    fn on_event(&mut self, data: &str) -> bool {
        if data.trim() == "[DONE]" {
            return true;
        }
        if !openai_choices(self.api) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                return true;
            };
            if self.message_start.is_some() {
                match v.get("type").and_then(serde_json::Value::as_str) {
                    Some("message_start") => self.message_start = None,
                    // May come first, before the message exists.
                    Some("ping" | "error") => {}
                    _ => {
                        self.insert_before = self.message_start.take().unwrap_or_default();
                    }
                }
            }
            let e = sluice_common::api::stream_event(self.api, &v);
            if e.error {
                let message = stream_error_message(&v).or_else(|| {
                    // Responses: `response.failed` carries the error in the response.
                    v.pointer("/response/error/message")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                });
                self.record_stream_error(message);
            }
            self.take_usage(e.usage);
            for t in e.texts {
                self.add_text(t);
            }
            return true;
        }
        match serde_json::from_str::<View>(data) {
            Ok(view) => {
                let flat_error = view.object.as_deref() == Some("error") && view.error.is_none();
                if view.error.is_some() || flat_error {
                    self.on_stream_error(data);
                }
                self.flat_error_seen = flat_error;
                self.read_view(&view, true);
                let usage_only =
                    view.choices.as_ref().is_some_and(Vec::is_empty) && view.usage.is_some();
                !usage_only
            }
            Err(_) => {
                // Not an OpenAI chunk: count its text, best effort.
                self.add_text(data);
                true
            }
        }
    }

    /// An error event's data (JSON, or the text of a legacy `error:` line).
    fn on_stream_error(&mut self, data: &str) {
        // The legacy line carries the error object itself: `{"code", "message", "type"}`.
        let message = serde_json::from_str::<serde_json::Value>(data)
            .ok()
            .and_then(|v| {
                stream_error_message(&v).or_else(|| {
                    v.get("message")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                })
            });
        self.record_stream_error(message.or_else(|| Some(data.trim().to_string())));
    }

    fn record_stream_error(&mut self, message: Option<String>) {
        if self.stream_error.is_none() {
            self.stream_error = Some(message.unwrap_or_else(|| {
                "The model backend reported an error in the stream.".to_string()
            }));
        }
    }

    /// Take usage and generated text from a chunk (`delta`) or a whole body (`message`).
    fn take_usage(&mut self, u: ReportedUsage) {
        if let Some(n) = u.completion {
            self.backend_completion = Some(n);
        }
        if let Some(n) = u.prompt {
            self.backend_prompt = Some(n);
        }
    }

    fn read_view(&mut self, view: &View, stream: bool) {
        if let Some(u) = view.usage.as_ref() {
            self.take_usage(ReportedUsage {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
            });
        }
        for choice in view.choices.iter().flatten() {
            let message = if stream {
                &choice.delta
            } else {
                &choice.message
            };
            let texts: Vec<&str> = match (self.api, message) {
                (Api::Chat, Some(m)) => m.texts().collect(),
                (Api::Chat, None) => Vec::new(),
                _ => choice.text.as_deref().into_iter().collect(),
            };
            for t in texts {
                self.add_text(t);
            }
        }
    }

    fn add_text(&mut self, t: &str) {
        if self.text.len() + t.len() <= self.max_text {
            self.text.push_str(t);
        } else {
            // Past the cap, count pieces as they come: rarely exact at the seams, never
            // unbounded in memory.
            self.overflow_tokens += self.tokenizer.count(t) as u64;
        }
    }

    /// The final completion usage. Call once the response ended, normally or not.
    pub fn finish(&mut self) -> CompletionUsage {
        if let Mode::Json { body, truncated } = &mut self.mode {
            let body = std::mem::take(body);
            let truncated = *truncated;
            let parsed = if openai_choices(self.api) {
                serde_json::from_slice::<View>(&body).map(|view| self.read_view(&view, false))
            } else {
                serde_json::from_slice::<serde_json::Value>(&body).map(|v| {
                    self.take_usage(usage_of(self.api, &v));
                    for t in strings_at_all(&v, self.api.response_text_paths()) {
                        self.add_text(t);
                    }
                })
            };
            match parsed {
                Ok(()) => {}
                Err(_) if self.success && !truncated => {
                    // Not JSON: the text is what can be recovered.
                    let text = String::from_utf8_lossy(&body).into_owned();
                    self.add_text(&text);
                }
                Err(_) => {}
            }
        }
        // Vectors and token counts generate nothing: a reported prompt count is the whole
        // backend usage.
        if !self.api.generates() && self.backend_prompt.is_some() {
            self.backend_completion.get_or_insert(0);
        }
        if let Some(n) = self.backend_completion {
            return CompletionUsage {
                completion_tokens: n,
                source: UsageSource::Backend,
                backend_prompt_tokens: self.backend_prompt,
                stream_error: self.stream_error.clone(),
            };
        }
        let counted = if self.success {
            self.tokenizer.count(&self.text) as u64 + self.overflow_tokens
        } else {
            0
        };
        CompletionUsage {
            completion_tokens: counted,
            source: UsageSource::Counted,
            backend_prompt_tokens: self.backend_prompt,
            stream_error: self.stream_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn tok() -> &'static Tokenizer {
        sluice_tokenizer::o200k_base().unwrap()
    }

    fn chunk(content: &str, with_usage_field: bool) -> String {
        let mut c = json!({"id": "x", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
        if with_usage_field {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    }

    fn usage_chunk(completion: u64) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}})
        )
    }

    /// A 200 stream of `api` whose usage was not injected.
    fn typed_sse(api: Api) -> ResponseTracker {
        ResponseTracker::new(
            api,
            200,
            Some("text/event-stream"),
            true,
            false,
            tok(),
            1 << 20,
        )
    }

    fn sse(strip: bool) -> ResponseTracker {
        ResponseTracker::new(
            Api::Chat,
            200,
            Some("text/event-stream"),
            true,
            strip,
            tok(),
            1 << 20,
        )
    }

    #[test]
    fn an_error_event_inside_a_200_stream_is_a_failure() {
        // vLLM / llama.cpp: `data: {"error": ...}` after some content.
        let mut t = sse(true);
        t.on_chunk(chunk("Hello", true).as_bytes(), false);
        t.on_chunk(
            br#"data: {"error":{"code":500,"message":"out of memory","type":"server_error"}}

"#,
            true,
        );
        assert_eq!(t.finish().stream_error.as_deref(), Some("out of memory"));
        // vLLM's flat error object: recorded, and added in OpenAI's form for the SDKs.
        let mut t = sse(false);
        let out = t.on_chunk(
            b"data: {\"object\":\"error\",\"message\":\"bad\",\"code\":400}\n\n",
            true,
        );
        let out = String::from_utf8(out.unwrap_or_default()).unwrap();
        assert!(out.ends_with("data: {\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n\n"), "{out}");
        assert_eq!(t.finish().stream_error.as_deref(), Some("bad"));
        // Older llama.cpp: an `error:` line that SSE clients ignore. The client also gets it
        // as OpenAI's stream error, appended (passing through) or in place (rewriting).
        for strip in [false, true] {
            let mut t = sse(strip);
            let legacy = b"error: {\"code\":400,\"message\":\"the request exceeds the available context size\",\"type\":\"invalid_request_error\"}\n\n";
            let out = t.on_chunk(legacy, true).unwrap_or_default();
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.contains("data: {\"error\":{\"message\":\"the request exceeds the available context size\",\"type\":\"invalid_request_error\""),
                "{out}"
            );
            assert_eq!(
                t.finish().stream_error.as_deref(),
                Some("the request exceeds the available context size")
            );
        }
        let mut t = sse(false);
        t.on_chunk(
            b"error: {\"code\":400,\"message\":\"the request exceeds the available context size\",\"type\":\"invalid_request_error\"}\n\n",
            true,
        );
        assert_eq!(
            t.finish().stream_error.as_deref(),
            Some("the request exceeds the available context size")
        );
        // Anthropic's error event; an ordinary stream has none.
        let mut t = typed_sse(Api::Messages);
        t.on_chunk(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            true,
        );
        assert_eq!(t.finish().stream_error.as_deref(), Some("Overloaded"));
        let mut t = sse(false);
        t.on_chunk(chunk("fine", true).as_bytes(), true);
        assert_eq!(t.finish().stream_error, None);
    }

    /// Responses and Anthropic Messages streams: usage from their own events (both sides),
    /// text counted from the deltas only when no usage comes; nothing is rewritten.
    #[test]
    fn typed_streams_report_usage_from_their_events() {
        let ev = |kind: &str, v: Value| format!("event: {kind}\ndata: {v}\n\n");
        let responses = [
            ev("response.output_text.delta", json!({"type": "response.output_text.delta", "delta": "Hello"})),
            ev("response.output_text.done", json!({"type": "response.output_text.done", "text": "Hello"})),
            ev("response.completed", json!({"type": "response.completed", "response": {"usage": {"input_tokens": 11, "output_tokens": 7}}})),
        ]
        .concat();
        let messages = [
            ev("message_start", json!({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}})),
            ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})),
            ev("message_delta", json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 5}})),
            ev("message_stop", json!({"type": "message_stop"})),
        ]
        .concat();
        for (api, body, want) in [
            (Api::Responses, &responses, (11, 7)),
            (Api::Messages, &messages, (9, 5)),
        ] {
            for split in 0..body.len() {
                let mut t = typed_sse(api);
                assert_eq!(t.on_chunk(&body.as_bytes()[..split], false), None);
                assert_eq!(t.on_chunk(&body.as_bytes()[split..], true), None);
                let u = t.finish();
                assert_eq!(
                    (u.backend_prompt_tokens, u.completion_tokens, u.source),
                    (Some(want.0), want.1, UsageSource::Backend),
                    "{api:?} split {split}"
                );
            }
            // Without the usage events, the deltas (not the full-text repeats) are counted.
            let text_only: String = body
                .split("\n\n")
                .filter(|e| e.contains("delta\"") && !e.contains("usage"))
                .map(|e| format!("{e}\n\n"))
                .collect();
            let mut t = typed_sse(api);
            t.on_chunk(text_only.as_bytes(), true);
            let u = t.finish();
            assert_eq!(
                (u.completion_tokens, u.source),
                (1, UsageSource::Counted),
                "{api:?}"
            );
        }
    }

    /// What the client gets for `body` cut into chunks at `cuts`.
    fn through(t: &mut ResponseTracker, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(body.len());
        let mut client = Vec::new();
        for (i, w) in bounds.windows(2).enumerate() {
            let piece = &body[w[0]..w[1]];
            let end = i + 2 == bounds.len();
            match t.on_chunk(piece, end) {
                Some(replaced) => client.extend_from_slice(&replaced),
                None => client.extend_from_slice(piece),
            }
        }
        client
    }

    /// llama-server's Messages stream when the first token is an incomplete UTF-8 sequence
    /// (captured from the llama-server of llama-cpp-python 0.3.36): no `message_start`.
    /// The client gets one made here before the first event, whatever the chunking; a
    /// stream that has one, or opens with `ping`, is otherwise passed byte for byte.
    #[test]
    fn a_messages_stream_always_opens_with_message_start() {
        let headless = concat!(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\u{fffd}\u{fffd} \u{4f50}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let start = sluice_common::api::messages_start_event("msg_r1", "tiny", 16);
        let ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
        let own_start =
            String::from_utf8(sluice_common::api::messages_start_event("msg_e", "tiny", 9))
                .unwrap();
        let with_ping = format!("{ping}{headless}");
        let whole = format!("{own_start}{headless}");
        let cases = [
            (
                headless.to_string(),
                [start.clone(), headless.as_bytes().to_vec()].concat(),
            ),
            (
                with_ping.clone(),
                [ping.as_bytes(), &start, headless.as_bytes()].concat(),
            ),
            (whole.clone(), whole.as_bytes().to_vec()),
        ];
        for (body, want) in &cases {
            let body = body.as_bytes();
            for a in 0..=body.len() {
                for b in (a..=body.len()).step_by(7) {
                    let mut t = typed_sse(Api::Messages);
                    t.ensure_message_start(start.clone());
                    let got = through(&mut t, body, &[a, b]);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(want),
                        "cuts {a} {b}"
                    );
                    assert_eq!(t.finish().completion_tokens, 3);
                }
            }
        }
        // Not for other APIs, nor for a failed answer.
        let mut t = typed_sse(Api::Responses);
        t.ensure_message_start(start.clone());
        assert_eq!(
            through(&mut t, headless.as_bytes(), &[]),
            headless.as_bytes()
        );
        let mut t = ResponseTracker::new(
            Api::Messages,
            500,
            Some("text/event-stream"),
            true,
            false,
            tok(),
            1 << 20,
        );
        t.ensure_message_start(start);
        assert_eq!(
            through(&mut t, headless.as_bytes(), &[]),
            headless.as_bytes()
        );
    }

    #[test]
    fn stream_without_usage_is_counted() {
        let mut t = sse(false);
        let body = format!(
            "{}{}data: [DONE]\n\n",
            chunk("Hello", false),
            chunk(" world", false)
        );
        assert_eq!(t.on_chunk(body.as_bytes(), true), None);
        let u = t.finish();
        assert_eq!((u.completion_tokens, u.source), (2, UsageSource::Counted));
    }

    #[test]
    fn injected_usage_is_read_and_hidden_exactly() {
        let with = format!(
            "{}{}{}data: [DONE]\n\n",
            chunk("Hello", true),
            chunk(" world", true),
            usage_chunk(7)
        );
        let without = format!(
            "{}{}data: [DONE]\n\n",
            chunk("Hello", false),
            chunk(" world", false)
        );
        // Whatever the chunking, the client gets exactly the stream without usage.
        for split in 0..with.len() {
            let mut t = sse(true);
            let mut out = t.on_chunk(&with.as_bytes()[..split], false).unwrap();
            out.extend(t.on_chunk(&with.as_bytes()[split..], true).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), without, "split at {split}");
            let u = t.finish();
            assert_eq!((u.completion_tokens, u.source), (7, UsageSource::Backend));
        }
    }

    #[test]
    fn asked_for_usage_passes_untouched() {
        let mut t = sse(false);
        let body = format!("{}{}data: [DONE]\n\n", chunk("Hi", true), usage_chunk(1));
        assert_eq!(t.on_chunk(body.as_bytes(), true), None);
        assert_eq!(t.finish().source, UsageSource::Backend);
    }

    #[test]
    fn cut_stream_counts_what_arrived() {
        let mut t = sse(true);
        let body = format!(
            "{}{}data: {{\"id\":",
            chunk("one", true),
            chunk(" two", true)
        );
        let out = t.on_chunk(body.as_bytes(), false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}{}", chunk("one", false), chunk(" two", false))
        );
        let u = t.finish();
        assert_eq!((u.completion_tokens, u.source), (2, UsageSource::Counted));
    }

    #[test]
    fn json_bodies() {
        let with_usage = json!({"choices": [{"message": {"role": "assistant", "content": "Hello world"}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}});
        let without =
            json!({"choices": [{"message": {"role": "assistant", "content": "Hello world"}}]});
        for (body, want) in [
            (with_usage, (9, UsageSource::Backend)),
            (without, (2, UsageSource::Counted)),
        ] {
            let mut t = ResponseTracker::new(
                Api::Chat,
                200,
                Some("application/json"),
                false,
                false,
                tok(),
                1 << 20,
            );
            let bytes = body.to_string();
            let (a, b) = bytes.as_bytes().split_at(bytes.len() / 2);
            assert_eq!(t.on_chunk(a, false), None);
            assert_eq!(t.on_chunk(b, true), None);
            let u = t.finish();
            assert_eq!((u.completion_tokens, u.source), want);
        }
        // Not JSON: the text is counted; an error status counts nothing.
        let mut t = ResponseTracker::new(
            Api::Chat,
            200,
            Some("text/plain"),
            false,
            false,
            tok(),
            1 << 20,
        );
        t.on_chunk(b"Hello world", true);
        assert_eq!(t.finish().completion_tokens, 2);
        let mut t = ResponseTracker::new(
            Api::Chat,
            500,
            Some("application/json"),
            false,
            false,
            tok(),
            1 << 20,
        );
        t.on_chunk(br#"{"error":{"message":"boom"}}"#, true);
        assert_eq!(t.finish().completion_tokens, 0);
    }

    #[test]
    fn tool_call_deltas_count() {
        let mut t = sse(false);
        let c = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}]});
        t.on_chunk(format!("data: {c}\n\ndata: [DONE]\n\n").as_bytes(), true);
        let want = tok().count("get_weather{\"city\":\"Paris\"}") as u64;
        assert_eq!(t.finish().completion_tokens, want);
    }
}
