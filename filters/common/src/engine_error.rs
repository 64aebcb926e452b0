//! Engine errors, normalised: each inference engine's error bodies and misused statuses
//! become the right status and the called API's own error shape.
//!
//! What engines send (read from their servers' sources and seen in trials):
//! - llama.cpp `llama-server`: `{"error":{"code":500,"message":"...","type":"server_error"}}`;
//!   it answers several client mistakes with 500 (an image to a text-only model, a parameter
//!   it does not support, `tools` without `--jinja`), and a prompt over the context with
//!   400 `exceed_context_size_error`.
//! - vLLM / SGLang: `{"error":{"message","type":"BadRequestError","param","code":400}}`, or
//!   the older flat `{"object":"error","message","type","param","code":400}`.
//! - TGI: `{"error":"...","error_type":"validation"}` with 422 for validation errors.
//! - FastAPI-based servers: `{"detail":"..."}`.
//!
//! Only the status and shape change; the engine's message is kept (bounded), because it is
//! what tells the client what to fix.

use crate::api::Family;
use crate::error::{ErrorKind, OpenAiError};
use serde_json::Value;

/// Longest engine message passed on; past it the message is cut at a char boundary.
const MAX_MESSAGE: usize = 1024;

/// Messages of client mistakes that llama.cpp reports with status 500 (its handlers turn
/// `std::runtime_error` into 500). Matched case-insensitively as substrings.
const CLIENT_MISTAKES_AS_500: [&str; 10] = [
    "is not supported",
    "unsupported param",
    "requires --jinja",
    "only one completion choice",
    "exceeds the available context",
    "exceed_context_size",
    "invalid ",
    "must be ",
    "expected ",
    "missing ",
];

/// An engine's error answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// The status the client gets.
    pub status: u16,
    pub error: OpenAiError,
}

impl EngineError {
    /// The body in the error shape of `family`.
    pub fn body(&self, family: Family) -> String {
        self.error.body_for(family)
    }
}

/// Normalise an engine's error answer (`status` >= 400 and its body). Returns the status
/// the client gets and the error in the gateway's shape.
pub fn normalise(status: u16, body: &[u8]) -> EngineError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (message, engine_type) = match &parsed {
        Some(v) => read_error(v),
        None => (String::from_utf8_lossy(body).trim().to_string(), None),
    };
    let message = if message.is_empty() {
        format!("The model backend answered {status}.")
    } else {
        bounded(message)
    };
    let lower = message.to_ascii_lowercase();
    let engine_type = engine_type.unwrap_or_default().to_ascii_lowercase();
    let context_exceeded = lower.contains("context size")
        || lower.contains("context length")
        || lower.contains("maximum context")
        || engine_type.contains("exceed_context");
    let status = match status {
        // llama.cpp's 500 for a request it cannot serve as sent.
        500 if context_exceeded || CLIENT_MISTAKES_AS_500.iter().any(|p| lower.contains(p)) => 400,
        // TGI's validation errors; OpenAI answers these with 400.
        422 => 400,
        s => s,
    };
    let kind = match status {
        400 | 405 | 409 | 415 | 422 => ErrorKind::InvalidRequest,
        401 => ErrorKind::Authentication,
        403 => ErrorKind::Permission,
        404 => ErrorKind::ModelNotFound,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::RateLimited,
        503 => ErrorKind::Unavailable,
        s if s < 500 => ErrorKind::InvalidRequest,
        _ => ErrorKind::ServerError,
    };
    let mut error = OpenAiError::new(kind, message);
    if context_exceeded && status == 400 {
        // OpenAI's code for the same mistake, which clients already handle.
        error = error.with_code("context_length_exceeded");
    }
    EngineError { status, error }
}

/// Normalise an error object sent inside a stream (older llama.cpp's `error:` line, vLLM's
/// flat `{"object": "error", ...}`): its status is its own `code` when that is one, else 500.
pub fn normalise_stream_error(body: &[u8]) -> EngineError {
    let status = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code")?.as_u64())
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(500);
    normalise(status, body)
}

/// The message and the engine's error type from any of the known shapes.
fn read_error(v: &Value) -> (String, Option<String>) {
    let text = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
    if let Some(e) = v.get("error") {
        if let Some(s) = e.as_str() {
            // TGI: {"error": "...", "error_type": "..."}
            return (s.to_string(), text(v.get("error_type")));
        }
        if e.is_object() {
            return (
                text(e.get("message")).unwrap_or_default(),
                text(e.get("type")),
            );
        }
    }
    if let Some(m) = text(v.get("message")) {
        return (m, text(v.get("type")));
    }
    if let Some(d) = text(v.get("detail")) {
        return (d, None);
    }
    (String::new(), None)
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The error message of a stream's error event, if `data` is one: the OpenAI / vLLM /
/// llama.cpp `{"error": ...}` chunk, vLLM's flat `{"object":"error",...}`, or an
/// Anthropic / Responses `{"type":"error",...}` event. `None` for any other event.
pub fn stream_error_message(data: &Value) -> Option<String> {
    let is_error = data.get("error").is_some_and(|e| !e.is_null())
        || data.get("object").and_then(Value::as_str) == Some("error")
        || data.get("type").and_then(Value::as_str) == Some("error");
    if !is_error {
        return None;
    }
    let (message, _) = read_error(data);
    Some(bounded(if message.is_empty() {
        "The model backend reported an error in the stream.".to_string()
    } else {
        message
    }))
}

/// An error as one stream event in the form of `api`'s streams: OpenAI chat / completions
/// `data: {"error": {...}}` (the SDKs raise on it), Anthropic's `event: error`, the Responses
/// API's `event: error`.
pub fn stream_error_event(api: crate::api::Api, e: &EngineError) -> Vec<u8> {
    use crate::api::Api;
    match api {
        Api::Messages | Api::CountTokens => {
            crate::sse::encode(Some("error"), &e.body(Family::Anthropic))
        }
        Api::Responses => {
            let data = serde_json::json!({
                "type": "error",
                "code": e.error.code,
                "message": e.error.message,
                "param": null,
            });
            crate::sse::encode(Some("error"), &data.to_string())
        }
        _ => crate::sse::encode(None, &e.body(Family::OpenAi)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_500_for_a_client_mistake_becomes_400() {
        let body = br#"{"error":{"code":500,"message":"image input is not supported - hint: if this is unexpected, you may need to provide the mmproj","type":"server_error"}}"#;
        let e = normalise(500, body);
        assert_eq!(e.status, 400);
        assert_eq!(e.error.kind, ErrorKind::InvalidRequest);
        assert!(e.error.message.starts_with("image input is not supported"));
        let v: Value = serde_json::from_str(&e.body(Family::OpenAi)).unwrap_or_default();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: Value = serde_json::from_str(&e.body(Family::Anthropic)).unwrap_or_default();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn a_real_server_failure_stays_500() {
        let body = br#"{"error":{"code":500,"message":"CUDA error: out of memory","type":"server_error"}}"#;
        let e = normalise(500, body);
        assert_eq!(e.status, 500);
        assert_eq!(e.error.kind, ErrorKind::ServerError);
        assert_eq!(e.error.message, "CUDA error: out of memory");
    }

    #[test]
    fn context_overflow_gets_openais_code() {
        let body = br#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":1024}}"#;
        let e = normalise(400, body);
        assert_eq!(e.status, 400);
        assert_eq!(e.error.code.as_deref(), Some("context_length_exceeded"));
    }

    #[test]
    fn vllm_tgi_and_fastapi_shapes() {
        let flat = br#"{"object":"error","message":"This model's maximum context length is 2048 tokens.","type":"BadRequestError","param":null,"code":400}"#;
        let e = normalise(400, flat);
        assert_eq!(
            (e.status, e.error.code.as_deref()),
            (400, Some("context_length_exceeded"))
        );
        let nested = br#"{"error":{"message":"temperature must be >= 0","type":"BadRequestError","param":null,"code":400}}"#;
        assert_eq!(
            normalise(400, nested).error.message,
            "temperature must be >= 0"
        );
        let tgi = br#"{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}"#;
        let e = normalise(422, tgi);
        assert_eq!((e.status, e.error.kind), (400, ErrorKind::InvalidRequest));
        let overloaded = br#"{"error":"Model is overloaded","error_type":"overloaded"}"#;
        assert_eq!(
            normalise(429, overloaded).error.kind,
            ErrorKind::RateLimited
        );
        let detail = br#"{"detail":"Not Found"}"#;
        assert_eq!(normalise(404, detail).error.message, "Not Found");
        let text = b"upstream exploded";
        let e = normalise(502, text);
        assert_eq!(
            (e.status, e.error.message.as_str()),
            (502, "upstream exploded")
        );
        assert_eq!(
            normalise(503, b"").error.message,
            "The model backend answered 503."
        );
    }

    #[test]
    fn long_messages_are_bounded_at_a_char_boundary() {
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "語".repeat(1000));
        let e = normalise(500, long.as_bytes());
        assert!(e.error.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(e.error.message.ends_with('…'));
    }

    #[test]
    fn stream_error_events_in_each_apis_form() {
        let e = normalise(
            400,
            br#"{"code":400,"message":"too long","type":"invalid_request_error"}"#,
        );
        let chat =
            String::from_utf8(stream_error_event(crate::api::Api::Chat, &e)).unwrap_or_default();
        assert!(
            chat.starts_with("data: {\"error\":{\"message\":\"too long\""),
            "{chat}"
        );
        assert!(chat.ends_with("\n\n"));
        let msg = String::from_utf8(stream_error_event(crate::api::Api::Messages, &e))
            .unwrap_or_default();
        assert!(
            msg.starts_with("event: error\ndata: {\"type\":\"error\""),
            "{msg}"
        );
        let resp = String::from_utf8(stream_error_event(crate::api::Api::Responses, &e))
            .unwrap_or_default();
        assert!(resp.contains("\"message\":\"too long\""), "{resp}");
    }

    #[test]
    fn stream_error_events() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_default();
        assert_eq!(
            stream_error_message(&v(
                r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#
            )),
            Some("boom".into())
        );
        assert_eq!(
            stream_error_message(&v(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
            )),
            Some("busy".into())
        );
        assert_eq!(
            stream_error_message(&v(r#"{"object":"error","message":"bad","code":400}"#)),
            Some("bad".into())
        );
        assert_eq!(
            stream_error_message(&v(r#"{"choices":[],"error":null}"#)),
            None
        );
        assert_eq!(
            stream_error_message(&v(r#"{"choices":[{"delta":{"content":"x"}}]}"#)),
            None
        );
    }
}
