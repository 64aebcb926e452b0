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

/// Which OpenAI endpoint is being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
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
    let mut state = prompt.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    (0..n)
        .map(|i| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
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
        Api::Completions => {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        }
    }
}

/// A complete (non-streamed) response body.
pub fn full_response(call: &Call, plan: &Plan, id: &str, created: u64, usage: bool) -> Value {
    let text: String = plan.tokens.concat();
    let (object, choice) = match call.api {
        Api::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": plan.finish_reason}),
        ),
        Api::Completions => (
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
    let object = match call.api {
        Api::Chat => "chat.completion.chunk",
        Api::Completions => "text_completion",
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
        assert!(Call::parse(Api::Chat, br#"{"model":"m"}"#).is_err());
    }
}
