//! Prompt tokens of a request body.
//!
//! An open model with a chat template ([`prompt_tokens_for`]): a chat, Responses or
//! Messages request is rendered with the model's template (as the engine renders it) and the prompt text
//! counted with the model's tokenizer, special tokens included; a completions or
//! embeddings prompt is counted with BOS where the engine adds one.
//!
//! Otherwise, as OpenAI counts them:
//! Chat follows OpenAI's message formula: 3 tokens per message, the tokens of each of its
//! values (role, content, ...), 1 more for a `name`, and 3 to prime the reply. Content may
//! be a string or an array of parts, of which the text parts count. Tool and function
//! definitions and tool calls count as their JSON text.

use crate::config::Api;
use serde_json::Value;
use sluice_chat_template::{messages, ChatInput, ChatTemplate};
use sluice_common::memo::{MemoLimits, TextMemo};
use sluice_tokenizer::Tokenizer;
use std::cell::RefCell;

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// Why a body cannot be counted: the message of a 400, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadField {
    BadField {
        param,
        message: message.into(),
    }
}

/// Token counts of the texts counted lately, per tokenizer: every turn of a conversation
/// resends its history and a tenant's system prompt comes with each request, so each
/// message's text is tokenized once while it keeps coming (exact: a text's count is the
/// same every time, and the memo compares whole texts).
#[derive(Default)]
pub struct CountMemos(RefCell<Vec<(&'static str, TextMemo<u64>)>>);

impl CountMemos {
    fn count(&self, t: &Tokenizer, s: &str) -> u64 {
        let Ok(mut memos) = self.0.try_borrow_mut() else {
            return t.count(s) as u64;
        };
        if !memos.iter().any(|(name, _)| *name == t.name()) {
            memos.push((t.name(), TextMemo::new(MemoLimits::REQUEST_TEXTS)));
        }
        match memos.iter_mut().find(|(name, _)| *name == t.name()) {
            Some((_, memo)) => memo.get_or_insert_with(s, |s| t.count(s) as u64),
            None => t.count(s) as u64,
        }
    }
}

/// The tokenizer a body is counted with, and where counts are remembered (none in tests
/// that compare against the tokenizer itself).
#[derive(Clone, Copy)]
pub struct Counter<'a> {
    tokenizer: &'a Tokenizer,
    memos: Option<&'a CountMemos>,
}

impl<'a> Counter<'a> {
    pub fn new(tokenizer: &'a Tokenizer, memos: Option<&'a CountMemos>) -> Self {
        Self { tokenizer, memos }
    }

    fn count(&self, s: &str) -> u64 {
        match self.memos {
            Some(m) => m.count(self.tokenizer, s),
            None => self.tokenizer.count(s) as u64,
        }
    }

    /// A structured value (tool definitions, tool calls) counts as its JSON text.
    fn count_json(&self, v: &Value) -> u64 {
        self.count(&v.to_string())
    }
}

/// Prompt tokens of a parsed body for a model counted with `t` and, when it has one, the
/// chat `template` its engine renders chat requests with (and the operator's template
/// variables for it). `now_unix_secs` dates the templates that print today's date.
pub fn prompt_tokens_for(
    api: Api,
    body: &Value,
    t: &Counter,
    template: Option<(&ChatTemplate, Option<&Value>)>,
    now_unix_secs: u64,
) -> Result<u64, BadField> {
    if let Some((template, defaults)) = template {
        let rendered = match api {
            Api::Chat => {
                validate_chat(body)?;
                Some(messages::from_openai_chat(body))
            }
            Api::Messages | Api::CountTokens => Some(messages::from_anthropic(body)),
            Api::Responses => messages::from_responses(body),
            _ => None,
        };
        if let Some((messages, tools)) = rendered {
            let input = ChatInput {
                messages,
                tools: tools.as_ref(),
                defaults,
                kwargs: body.get("chat_template_kwargs"),
                now_unix_secs,
            };
            // A request the template refuses (the engine will refuse it too) is counted
            // by the formula below.
            if let Ok(text) = template.render(&input) {
                return Ok(prompt_text_tokens(t, &text));
            }
        }
    }
    prompt_tokens(api, body, t)
}

/// Tokens of a model's whole prompt text: special tokens as such, and BOS where the engine
/// adds it to a text that does not start with it.
pub fn prompt_text_tokens(t: &Counter, text: &str) -> u64 {
    let tokenizer = t.tokenizer;
    let bos = tokenizer
        .bos_token()
        .is_some_and(|b| tokenizer.adds_bos() && !text.starts_with(b));
    tokenizer.count_prompt_by(text, |plain| t.count(plain) as usize) as u64 + u64::from(bos)
}

/// A large disagreement between the estimate a request was admitted with and the backend's
/// own count: more than 5% and more than 3 tokens (an open model counted with its own
/// tokenizer and template agrees exactly; OpenAI's formula for its own models is within a
/// few tokens). Counted in `sluice.llm.prompt_estimate_off`.
pub fn estimate_is_off(estimate: u64, backend: u64) -> bool {
    let diff = estimate.abs_diff(backend);
    diff > 3 && diff * 20 > backend
}

/// Prompt tokens of a parsed body by the OpenAI formulas (an open family's tokenizer
/// counts completions and embeddings prompts as its engine does).
pub fn prompt_tokens(api: Api, body: &Value, t: &Counter) -> Result<u64, BadField> {
    match api {
        Api::Chat => chat(body, t),
        Api::Completions => prompt_like(body.get("prompt"), "prompt", t),
        Api::Embeddings => prompt_like(body.get("input"), "input", t),
        Api::Responses | Api::Messages | Api::CountTokens => Ok(structured(api, body, t)),
    }
}

/// Responses and Anthropic Messages: the chat formula applied to their shapes. Every text
/// the request model lists, 3 per message or input item, 3 to prime the reply, and tool
/// definitions (and Anthropic `tool_use` inputs) as their JSON text.
fn structured(api: Api, body: &Value, t: &Counter) -> u64 {
    let list = match api {
        Api::Responses => body.get("input"),
        _ => body.get("messages"),
    };
    let items = match list {
        Some(Value::Array(a)) => a.len() as u64,
        Some(Value::String(_)) => 1,
        _ => 0,
    };
    let texts = sluice_common::api::strings_at_all(body, api.request_text_paths());
    let mut total = REPLY_PRIMING + TOKENS_PER_MESSAGE * items;
    total += texts.iter().map(|s| t.count(s)).sum::<u64>();
    if let Some(Value::Array(messages)) = body.get("messages") {
        for block in messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
        {
            if let Some(input) = block
                .get("input")
                .filter(|_| block.get("type") == Some(&Value::from("tool_use")))
            {
                total += t.count_json(input);
            }
        }
    }
    if let Some(defs) = body.get("tools").filter(|v| !v.is_null()) {
        total += t.count_json(defs);
    }
    total
}

/// The checks of [`chat`] without the counting: a chat body whose prompt is counted from
/// its template gets the same 400s.
fn validate_chat(body: &Value) -> Result<(), BadField> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "'messages' must be an array of messages."))?;
    for message in messages {
        let fields = message
            .as_object()
            .ok_or_else(|| bad("messages", "Each message must be an object."))?;
        if let Some(c) = fields.get("content").filter(|c| !c.is_null()) {
            content_texts(c)?;
        }
    }
    Ok(())
}

fn chat(body: &Value, t: &Counter) -> Result<u64, BadField> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "'messages' must be an array of messages."))?;
    let mut total = REPLY_PRIMING;
    for message in messages {
        let fields = message
            .as_object()
            .ok_or_else(|| bad("messages", "Each message must be an object."))?;
        total += TOKENS_PER_MESSAGE;
        for (key, value) in fields {
            total += match (key.as_str(), value) {
                (_, Value::Null) => 0,
                ("content", v) => content(v, t)?,
                ("name", Value::String(s)) => t.count(s) + TOKENS_PER_NAME,
                (_, Value::String(s)) => t.count(s),
                // tool_calls, function_call, and anything structured: its JSON text.
                (_, v) => t.count_json(v),
            };
        }
    }
    for key in ["tools", "functions"] {
        if let Some(defs) = body.get(key).filter(|v| !v.is_null()) {
            total += t.count_json(defs);
        }
    }
    Ok(total)
}

fn content(v: &Value, t: &Counter) -> Result<u64, BadField> {
    Ok(content_texts(v)?.into_iter().map(|s| t.count(s)).sum())
}

/// The texts of a message's content: a string, or the text parts of an array (images,
/// audio and files are not text); the 400 for any other shape.
fn content_texts(v: &Value) -> Result<Vec<&str>, BadField> {
    match v {
        Value::String(s) => Ok(vec![s]),
        Value::Array(parts) => parts.iter().try_fold(Vec::new(), |mut texts, part| {
            let kind = part.get("type").and_then(Value::as_str);
            match (kind, part.get("text")) {
                (Some("text"), Some(Value::String(s))) => texts.push(s.as_str()),
                (Some("text"), _) => {
                    return Err(bad(
                        "messages",
                        "A text content part needs a string 'text'.",
                    ))
                }
                (Some(_), _) => {}
                (None, _) => return Err(bad("messages", "Each content part needs a 'type'.")),
            }
            Ok(texts)
        }),
        _ => Err(bad(
            "messages",
            "'content' must be a string or an array of content parts.",
        )),
    }
}

/// `prompt` / `input`: a string, a list of strings, a list of token ids, or a list of lists
/// of token ids. Absent counts 0.
/// A completions or embeddings prompt string: an open model's engine reads its special
/// tokens and adds BOS; OpenAI counts it as text.
fn prompt_string(t: &Counter, s: &str) -> u64 {
    if t.tokenizer.has_specials() {
        prompt_text_tokens(t, s)
    } else {
        t.count(s)
    }
}

fn prompt_like(v: Option<&Value>, param: &'static str, t: &Counter) -> Result<u64, BadField> {
    let wrong = || {
        bad(
            param,
            format!("'{param}' must be a string, an array of strings or an array of token ids."),
        )
    };
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => Ok(prompt_string(t, s)),
        Some(Value::Array(items)) => items.iter().try_fold(0, |acc, item| match item {
            Value::String(s) => Ok(acc + prompt_string(t, s)),
            Value::Number(_) => Ok(acc + 1),
            Value::Array(ids) if ids.iter().all(Value::is_number) => Ok(acc + ids.len() as u64),
            _ => Err(wrong()),
        }),
        Some(_) => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The function under test, counted three ways that must agree: with a fresh memo,
    /// again with that memo (each long text's count now remembered), and without one.
    fn prompt_tokens(api: Api, body: &Value, t: &Tokenizer) -> Result<u64, BadField> {
        let memos = CountMemos::default();
        let remembered = Counter::new(t, Some(&memos));
        let first = super::prompt_tokens(api, body, &remembered);
        assert_eq!(first, super::prompt_tokens(api, body, &remembered));
        assert_eq!(
            first,
            super::prompt_tokens(api, body, &Counter::new(t, None))
        );
        first
    }

    /// [`super::prompt_tokens_for`] counted the three ways of [`prompt_tokens`].
    fn prompt_tokens_for(
        api: Api,
        body: &Value,
        t: &Tokenizer,
        template: Option<(&ChatTemplate, Option<&Value>)>,
        now_unix_secs: u64,
    ) -> Result<u64, BadField> {
        let memos = CountMemos::default();
        let remembered = Counter::new(t, Some(&memos));
        let count = |c: &Counter| super::prompt_tokens_for(api, body, c, template, now_unix_secs);
        let first = count(&remembered);
        assert_eq!(first, count(&remembered));
        assert_eq!(first, count(&Counter::new(t, None)));
        first
    }

    fn o200k() -> &'static Tokenizer {
        sluice_tokenizer::o200k_base().unwrap()
    }

    #[test]
    fn responses_and_messages() {
        let t = o200k();
        let c = |s: &str| t.count(s) as u64;
        let r = json!({"model": "m", "instructions": "Be terse.", "input": "Hello there"});
        assert_eq!(
            prompt_tokens(Api::Responses, &r, t).unwrap(),
            3 + 3 + c("Be terse.") + c("Hello there")
        );
        let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        let m = json!({"model": "m", "max_tokens": 9, "system": "Sys", "tools": tools,
                       "messages": [{"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}]});
        assert_eq!(
            prompt_tokens(Api::Messages, &m, t).unwrap(),
            3 + 6 + c("Sys") + c("Hi") + c(r#"{"a":1}"#) + c(&tools.to_string())
        );
        assert_eq!(
            prompt_tokens(Api::CountTokens, &m, t).unwrap(),
            prompt_tokens(Api::Messages, &m, t).unwrap()
        );
    }

    /// An open model: the chat prompt as its template renders it, counted with its own
    /// vocabulary. 36 and 30 are what llama-server reported for "hello" with these templates
    /// and vocabularies (tests/tests/chat_template.rs checks a whole corpus against it).
    #[test]
    fn open_models_count_their_rendered_prompt() {
        let dec_1_2026 = 1_796_083_200;
        let hello = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
        for (encoding, template, want) in [("llama3", "llama-3.1", 36), ("qwen2", "qwen-2.5", 30)] {
            let (Some(t), Some(src)) = (
                sluice_tokenizer::by_name(encoding),
                sluice_chat_template::builtin(template),
            ) else {
                continue; // not built in (no vocabulary at build time)
            };
            let tmpl =
                ChatTemplate::new(src, t.bos_token().unwrap(), t.eos_token().unwrap()).unwrap();
            let n =
                prompt_tokens_for(Api::Chat, &hello, t, Some((&tmpl, None)), dec_1_2026).unwrap();
            assert_eq!(n, want, "{template}");
            // The same through the Messages API.
            let m = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});
            assert_eq!(
                prompt_tokens_for(Api::Messages, &m, t, Some((&tmpl, None)), dec_1_2026).unwrap(),
                want
            );
            // Shapes are still checked; a completions prompt gets BOS where the engine adds it.
            let bad = json!({"model": "m", "messages": [{"role": "user", "content": 42}]});
            assert!(prompt_tokens_for(Api::Chat, &bad, t, Some((&tmpl, None)), 0).is_err());
            let c = json!({"model": "m", "prompt": "hello"});
            assert_eq!(
                prompt_tokens(Api::Completions, &c, t).unwrap(),
                1 + u64::from(t.adds_bos())
            );
        }
    }

    proptest::proptest! {
        /// Conversations that resend their history, each turn counted with one memo kept
        /// across them (evicting as it fills), count what the tokenizer counts afresh: for
        /// OpenAI's formula and, where its vocabulary is built in, an open model's template.
        #[test]
        fn a_memo_kept_across_requests_counts_exactly(
            turns in proptest::collection::vec(
                (proptest::sample::select(vec!["system", "user", "assistant"]),
                 "[a-zA-Z <>|\n\u{4e00}-\u{4e10}]{0,200}"),
                1..12),
        ) {
            let memos = CountMemos::default();
            let mut families = vec![(o200k(), None)];
            if let (Some(t), Some(src)) = (
                sluice_tokenizer::by_name("qwen2"),
                sluice_chat_template::builtin("qwen-2.5"),
            ) {
                families.push((t, Some(ChatTemplate::new(
                    src,
                    t.bos_token().unwrap_or_default(),
                    t.eos_token().unwrap_or_default(),
                ).unwrap())));
            }
            for (t, template) in &families {
                let mut messages = Vec::new();
                for (role, text) in &turns {
                    messages.push(json!({"role": role, "content": text}));
                    let body = json!({"model": "m", "messages": messages});
                    let tmpl = template.as_ref().map(|t| (t, None));
                    let remembered = super::prompt_tokens_for(
                        Api::Chat, &body, &Counter::new(t, Some(&memos)), tmpl, 0);
                    let fresh = super::prompt_tokens_for(
                        Api::Chat, &body, &Counter::new(t, None), tmpl, 0);
                    proptest::prop_assert_eq!(remembered, fresh);
                }
            }
        }
    }

    #[test]
    fn large_disagreements() {
        assert!(!estimate_is_off(36, 36));
        assert!(!estimate_is_off(33, 36), "3 tokens is close");
        assert!(!estimate_is_off(980, 1000), "2% is close");
        assert!(estimate_is_off(15, 36), "the issue's case");
        assert!(estimate_is_off(1060, 1000));
    }

    #[test]
    fn chat_formula() {
        let t = o200k();
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "name": "bob", "content": [
                {"type": "text", "text": "Hello there"},
                {"type": "image_url", "image_url": {"url": "data:..."}}]}
        ]});
        let want = 3
            + (3 + t.count("system") + t.count("You are terse."))
            + (3 + t.count("user") + t.count("bob") + 1 + t.count("Hello there"));
        assert_eq!(prompt_tokens(Api::Chat, &body, t).unwrap(), want as u64);
    }

    #[test]
    fn tools_and_tool_calls_count_as_json() {
        let t = o200k();
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        let calls =
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        let body = json!({"model": "m", "tools": tools, "messages": [
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}
        ]});
        let want = 3
            + (3 + t.count("assistant") + t.count(&calls.to_string()))
            + (3 + t.count("tool") + t.count("c1") + t.count("42"))
            + t.count(&tools.to_string());
        assert_eq!(prompt_tokens(Api::Chat, &body, t).unwrap(), want as u64);
    }

    #[test]
    fn completion_prompt_forms() {
        let t = o200k();
        let cases = [
            (json!("hello world"), 2),
            (json!(["hello", "world"]), 2),
            (json!([1, 2, 3]), 3),
            (json!([[1, 2], [3]]), 3),
            (Value::Null, 0),
        ];
        for (prompt, want) in cases {
            let body = json!({"model": "m", "prompt": prompt});
            assert_eq!(
                prompt_tokens(Api::Completions, &body, t).unwrap(),
                want,
                "{prompt}"
            );
        }
        let emb = json!({"model": "m", "input": "hello world"});
        assert_eq!(prompt_tokens(Api::Embeddings, &emb, t).unwrap(), 2);
    }

    #[test]
    fn wrong_shapes_name_the_field() {
        let t = o200k();
        let cases = [
            (Api::Chat, json!({"model": "m"}), "messages"),
            (
                Api::Chat,
                json!({"model": "m", "messages": "hi"}),
                "messages",
            ),
            (
                Api::Chat,
                json!({"model": "m", "messages": [{"role": "user", "content": 42}]}),
                "messages",
            ),
            (
                Api::Chat,
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages",
            ),
            (
                Api::Completions,
                json!({"model": "m", "prompt": {"a": 1}}),
                "prompt",
            ),
            (
                Api::Completions,
                json!({"model": "m", "prompt": [true]}),
                "prompt",
            ),
        ];
        for (api, body, param) in cases {
            assert_eq!(
                prompt_tokens(api, &body, t).unwrap_err().param,
                param,
                "{body}"
            );
        }
    }
}
