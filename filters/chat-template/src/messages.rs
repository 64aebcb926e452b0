//! The chat messages a request becomes before its template renders, as llama.cpp's server
//! builds them (`server_chat_convert_anthropic_to_oai`, `messages_inp_normalizer`): text
//! content parts joined with newlines (the templates here read `content` as a string), a
//! missing or null content as `""`, Anthropic blocks as OpenAI messages.

use serde_json::{json, Map, Value};

/// Text parts joined with `\n`; other parts (images, audio) left out.
fn joined_text(parts: &[Value]) -> String {
    let mut text = String::new();
    for part in parts {
        if part.get("type").and_then(Value::as_str) != Some("text") {
            continue;
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
    }
    text
}

/// One message with its content as a string.
fn normalised(message: &Value) -> Value {
    let mut m = message.clone();
    if let Some(obj) = m.as_object_mut() {
        let text = match obj.get("content") {
            Some(Value::String(_)) => None,
            Some(Value::Array(parts)) => Some(joined_text(parts)),
            _ => Some(String::new()),
        };
        if let Some(text) = text {
            obj.insert("content".into(), Value::String(text));
        }
    }
    m
}

/// The messages of an OpenAI chat completions body.
pub fn from_openai_chat(body: &Value) -> Vec<Value> {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(normalised).collect())
        .unwrap_or_default()
}

/// An Anthropic Messages body as chat messages and OpenAI tool definitions.
pub fn from_anthropic(body: &Value) -> (Vec<Value>, Option<Value>) {
    let mut out = Vec::new();
    match body.get("system") {
        Some(Value::String(s)) => out.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: String = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            out.push(json!({"role": "system", "content": text}));
        }
        _ => {}
    }
    for msg in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        let Some(blocks) = msg.get("content").and_then(Value::as_array) else {
            if msg.get("content").is_none() && role == "assistant" {
                continue;
            }
            out.push(normalised(msg));
            continue;
        };
        let mut texts = Vec::new();
        let mut tool_calls = Vec::new();
        let mut results = Vec::new();
        let mut reasoning = String::new();
        for block in blocks {
            let s = |k: &str| {
                block
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            match block.get("type").and_then(Value::as_str) {
                Some("text") => texts.push(block.clone()),
                Some("thinking") => reasoning.push_str(&s("thinking")),
                Some("tool_use") => tool_calls.push(json!({
                    "id": s("id"),
                    "type": "function",
                    "function": {
                        "name": s("name"),
                        "arguments": block.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                    }
                })),
                Some("tool_result") => {
                    let content = match block.get("content") {
                        Some(Value::String(c)) => c.clone(),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect(),
                        _ => String::new(),
                    };
                    results.push(json!({"role": "tool", "tool_call_id": s("tool_use_id"), "content": content}));
                }
                _ => {}
            }
        }
        if !texts.is_empty() || !tool_calls.is_empty() || !reasoning.is_empty() {
            let mut m = Map::new();
            m.insert("role".into(), Value::String(role.to_string()));
            m.insert("content".into(), Value::String(joined_text(&texts)));
            if !tool_calls.is_empty() {
                m.insert("tool_calls".into(), Value::Array(tool_calls));
            }
            if !reasoning.is_empty() {
                m.insert("reasoning_content".into(), Value::String(reasoning));
            }
            out.push(Value::Object(m));
        }
        out.extend(results);
    }
    let tools = body.get("tools").and_then(Value::as_array).map(|tools| {
        Value::Array(
            tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.get("name").and_then(Value::as_str).unwrap_or(""),
                        "description": t.get("description").and_then(Value::as_str).unwrap_or(""),
                        "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({})),
                    }})
                })
                .collect(),
        )
    });
    (out, tools)
}

/// Tool-call arguments sent as a JSON string become the object they encode.
pub fn parse_tool_arguments(messages: &mut [Value]) {
    for m in messages {
        let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        for call in calls {
            let Some(args) = call.pointer_mut("/function/arguments") else {
                continue;
            };
            if let Some(parsed) = args
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
            {
                *args = parsed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn openai_parts_are_joined() {
        let body = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}
        ]});
        let m = from_openai_chat(&body);
        assert_eq!(m[0]["content"], "a\nb");
        assert_eq!(m[1]["content"], "");
        let mut m = m;
        parse_tool_arguments(&mut m);
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
    }

    #[test]
    fn anthropic_becomes_chat() {
        let body = json!({
            "system": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r"}]}]}
            ]
        });
        let (m, tools) = from_anthropic(&body);
        assert_eq!(m[0], json!({"role": "system", "content": "S1S2"}));
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "r"})
        );
        assert_eq!(m.len(), 4);
        assert_eq!(
            tools.unwrap()[0]["function"]["parameters"],
            json!({"type": "object"})
        );
    }
}
