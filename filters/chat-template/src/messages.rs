//! The chat messages a request becomes before its template renders, as llama.cpp's server
//! builds them: every message rebuilt from its parsed form (`common_chat_msg::
//! to_json_oaicompat`: `role`, `content`, `reasoning_content`, `name`, `tool_call_id`,
//! `tool_calls` with `type`, `function` {`name`, `arguments`}, `id` — in that order, other
//! fields dropped), text content parts joined with newlines (the templates here read
//! `content` as a string), a missing or null content as `""`, `developer` as `system`; tool
//! definitions rebuilt as {`type`, `function` {`name`, `description`, `parameters`}};
//! Anthropic and Responses bodies converted to chat messages first.

use serde_json::{json, Map, Value};

/// Text parts joined with `\n`; other parts (images, audio) left out. What a template that
/// reads `content` only as a string gets for an array of parts.
pub fn joined_text(parts: &[Value]) -> String {
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

/// One message as llama.cpp rebuilds it (see the module's comment).
fn normalised(message: &Value) -> Value {
    let field = |k: &str| message.get(k).filter(|v| !v.is_null());
    let text = |k: &str| field(k).and_then(Value::as_str).unwrap_or("");
    let mut m = Map::new();
    let role = match text("role") {
        "developer" => "system",
        other => other,
    };
    m.insert("role".into(), json!(role));
    // Text parts stay parts (a template may read them as such); none is an empty string.
    let content = match field("content") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) => {
            let texts: Vec<Value> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .map(|p| json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")}))
                .collect();
            if texts.is_empty() {
                json!("")
            } else {
                Value::Array(texts)
            }
        }
        _ => json!(""),
    };
    m.insert("content".into(), content);
    for k in ["reasoning_content", "name", "tool_call_id"] {
        if !text(k).is_empty() {
            m.insert(k.into(), json!(text(k)));
        }
    }
    if let Some(calls) = field("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let f = |k: &str| c.pointer(&format!("/function/{k}")).cloned();
                let args = match f("arguments") {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                let mut tc = json!({"type": "function", "function": {
                    "name": f("name").and_then(|n| n.as_str().map(str::to_string)).unwrap_or_default(),
                    "arguments": args}});
                if let (Some(obj), Some(id)) = (
                    tc.as_object_mut(),
                    c.get("id").and_then(Value::as_str).filter(|i| !i.is_empty()),
                ) {
                    obj.insert("id".into(), json!(id));
                }
                tc
            })
            .collect();
        if !calls.is_empty() {
            m.insert("tool_calls".into(), Value::Array(calls));
        }
    }
    Value::Object(m)
}

/// Tool definitions as llama.cpp rebuilds them: function tools only, with `name`,
/// `description` (default `""`) and `parameters` (default `{}`).
pub fn normalised_tools(tools: Option<&Value>) -> Option<Value> {
    let tools: Vec<Value> = tools?
        .as_array()?
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| t.get("function"))
        .map(|f| {
            json!({"type": "function", "function": {
                "name": f.get("name").cloned().unwrap_or(Value::Null),
                "description": f.get("description").and_then(Value::as_str).unwrap_or(""),
                "parameters": f.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or_else(|| json!({})),
            }})
        })
        .collect();
    (!tools.is_empty()).then_some(Value::Array(tools))
}

/// The messages and tools of an OpenAI chat completions body.
pub fn from_openai_chat(body: &Value) -> (Vec<Value>, Option<Value>) {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(normalised).collect())
        .unwrap_or_default();
    (messages, normalised_tools(body.get("tools")))
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
            m.insert("content".into(), Value::Array(texts));
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
    (
        out.iter().map(normalised).collect(),
        normalised_tools(tools.as_ref()),
    )
}

/// An OpenAI Responses body as chat messages and chat tool definitions, as llama.cpp's
/// server converts it (`server_chat_convert_responses_to_chatcmpl`): `instructions` as the
/// system message; input messages' text parts; consecutive assistant items (messages,
/// function calls, reasoning) merged into one assistant message; function call outputs as
/// tool messages; function tools with `strict` (default true). `None` for an input it
/// would refuse (the engine answers 400: the caller counts by formula).
pub fn from_responses(body: &Value) -> Option<(Vec<Value>, Option<Value>)> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(i) = body.get("instructions") {
        out.push(json!({"role": "system", "content": i.as_str().unwrap_or("")}));
    }
    match body.get("input")? {
        Value::String(s) => out.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for item in items {
                let s = |k: &str| item.get(k).and_then(Value::as_str);
                let merge_prev = out
                    .last()
                    .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
                let role = s("role");
                let texts = |key: &str| -> Option<Vec<Value>> {
                    match item.get("content") {
                        Some(Value::String(t)) => Some(vec![json!({"type": "text", "text": t})]),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .map(|p| match p.get("type").and_then(Value::as_str) {
                                Some("input_text" | "output_text") => p
                                    .get("text")
                                    .and_then(Value::as_str)
                                    .map(|t| json!({"type": "text", "text": t})),
                                Some(k) if k == key => Some(json!({"type": k})),
                                _ => None,
                            })
                            .collect(),
                        _ => Some(Vec::new()),
                    }
                };
                if matches!(role, Some("user" | "system" | "developer"))
                    && item.get("content").is_some()
                {
                    let parts = texts("input_image")?;
                    out.push(json!({"role": role, "content": parts}));
                } else if role == Some("assistant") && s("type") == Some("message") {
                    let parts = texts("refusal")?;
                    match out.last_mut().filter(|_| merge_prev) {
                        Some(prev) => append_parts(prev, parts),
                        None => out.push(json!({"role": "assistant", "content": parts})),
                    }
                } else if s("type") == Some("function_call") {
                    let call = json!({"function": {"arguments": s("arguments")?, "name": s("name")?},
                                      "id": s("call_id")?, "type": "function"});
                    match out.last_mut().filter(|_| merge_prev) {
                        Some(prev) => {
                            if let Some(obj) = prev.as_object_mut() {
                                let calls = obj.entry("tool_calls").or_insert_with(|| json!([]));
                                if let Some(a) = calls.as_array_mut() {
                                    a.push(call);
                                }
                            }
                        }
                        None => out.push(
                            json!({"role": "assistant", "content": "", "tool_calls": [call]}),
                        ),
                    }
                } else if s("type") == Some("function_call_output") {
                    let content = match item.get("output")? {
                        Value::String(o) => o.clone(),
                        Value::Array(parts) => joined_text(
                            &parts
                                .iter()
                                .filter(|p| p.get("type").and_then(Value::as_str) == Some("input_text"))
                                .map(|p| json!({"type": "text", "text": p.get("text").cloned().unwrap_or(Value::Null)}))
                                .collect::<Vec<_>>(),
                        ),
                        _ => return None,
                    };
                    out.push(
                        json!({"content": content, "role": "tool", "tool_call_id": s("call_id")?}),
                    );
                } else if s("type") == Some("reasoning") {
                    let text = item.pointer("/content/0/text").and_then(Value::as_str)?;
                    match out.last_mut().filter(|_| merge_prev) {
                        Some(prev) => {
                            if let Some(obj) = prev.as_object_mut() {
                                obj.insert("reasoning_content".into(), json!(text));
                            }
                        }
                        None => out.push(
                            json!({"role": "assistant", "content": "", "reasoning_content": text}),
                        ),
                    }
                } else {
                    return None;
                }
            }
        }
        _ => return None,
    }
    let tools = match body.get("tools") {
        Some(Value::Array(tools)) => {
            let chat: Vec<Value> = tools
                .iter()
                .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
                .filter_map(Value::as_object)
                .map(|t| {
                    let mut f: Map<String, Value> = t
                        .iter()
                        .filter(|(k, _)| *k != "type")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    f.entry("strict").or_insert(Value::Bool(true));
                    json!({"type": "function", "function": f})
                })
                .collect();
            (!chat.is_empty()).then_some(Value::Array(chat))
        }
        _ => None,
    };
    Some((
        out.iter().map(normalised).collect(),
        normalised_tools(tools.as_ref()),
    ))
}

/// Add parts to a message's content (a merged assistant turn).
fn append_parts(message: &mut Value, parts: Vec<Value>) {
    if let Some(obj) = message.as_object_mut() {
        let content = obj.entry("content").or_insert_with(|| json!([]));
        if !content.is_array() {
            let text = content.as_str().unwrap_or("").to_string();
            *content = if text.is_empty() {
                json!([])
            } else {
                json!([{"type": "text", "text": text}])
            };
        }
        if let Some(a) = content.as_array_mut() {
            a.extend(parts);
        }
    }
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
        let (m, _) = from_openai_chat(&body);
        assert_eq!(
            m[0]["content"],
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        );
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
