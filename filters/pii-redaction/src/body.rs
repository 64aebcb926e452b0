//! Whole JSON bodies: the request the client sent, and non-streamed responses.

use crate::config::{Api, PathStep, Settings, Unscannable};
use crate::redact::{redact_text, Blocked, Direction, Finding, Redactor};
use serde_json::Value;
use sluice_common::{ErrorKind, OpenAiError};

pub(crate) fn steps(path: &str) -> impl Iterator<Item = PathStep> + '_ {
    path.split('.').map(|s| match s {
        "*" => PathStep::Each,
        k => PathStep::Key(k.to_string()),
    })
}

/// Call `f` on every string at `path` under `v`.
pub(crate) fn visit<E>(
    v: &mut Value,
    path: &[PathStep],
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    let Some((step, rest)) = path.split_first() else {
        if let Value::String(s) = v {
            f(s)?;
        }
        return Ok(());
    };
    match (step, v) {
        (PathStep::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get_mut(k) {
                visit(child, rest, f)?;
            }
        }
        (PathStep::Each, Value::Array(items)) => {
            for child in items {
                visit(child, rest, f)?;
            }
        }
        (PathStep::Each, Value::Object(m)) => {
            for child in m.values_mut() {
                visit(child, rest, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why a body was not scanned (published in `sluice_pii` as `unscanned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotScanned {
    NotJson,
    TooLarge,
}

impl NotScanned {
    pub fn as_str(self) -> &'static str {
        match self {
            NotScanned::NotJson => "not_json",
            NotScanned::TooLarge => "too_large",
        }
    }
}

/// What becomes of a request body.
#[derive(Debug, PartialEq)]
pub enum RequestOutcome {
    /// Nothing found: forward as it is.
    Unchanged,
    /// Forward this body instead.
    Rewritten(Vec<u8>),
    /// Answer the client with this error; nothing goes upstream.
    Refused(OpenAiError),
    /// Could not be scanned, and the configuration says block: answer with this error.
    RefusedUnscanned(OpenAiError, NotScanned),
    /// Could not be scanned, and the configuration says pass.
    Passed(NotScanned),
}

fn rewrite(
    s: &Settings,
    r: &mut Redactor,
    v: &mut Value,
    paths: impl Iterator<Item = Vec<PathStep>>,
    dir: Direction,
) -> Result<bool, Blocked> {
    let mut changed = false;
    let mut scratch: Vec<Finding> = Vec::new();
    let may_block = dir == Direction::Request;
    for path in paths {
        visit(v, &path, &mut |text: &mut String| {
            if let Some(new) = redact_text(s, r, text, dir, may_block, &mut scratch)? {
                *text = new;
                changed = true;
            }
            Ok(())
        })?;
    }
    Ok(changed)
}

/// The outcome for a body that cannot be scanned, per `on_unscannable`.
pub fn unscannable(s: &Settings, why: NotScanned) -> RequestOutcome {
    match (s.on_unscannable, why) {
        (Unscannable::Pass, _) => RequestOutcome::Passed(why),
        (Unscannable::Block, NotScanned::TooLarge) => RequestOutcome::RefusedUnscanned(
            OpenAiError::new(
                ErrorKind::PayloadTooLarge,
                "The request body is too large to be checked for personal data.",
            ),
            why,
        ),
        (Unscannable::Block, NotScanned::NotJson) => RequestOutcome::RefusedUnscanned(
            OpenAiError::new(
                ErrorKind::InvalidRequest,
                "The request body is not valid JSON.",
            ),
            why,
        ),
    }
}

/// Scan a request body of `api`: its messages / prompt and the configured extra fields.
pub fn scan_request(s: &Settings, r: &mut Redactor, api: Api, body: &[u8]) -> RequestOutcome {
    if body.len() > s.max_body_bytes {
        return unscannable(s, NotScanned::TooLarge);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return unscannable(s, NotScanned::NotJson);
    };
    if !v.is_object() {
        return unscannable(s, NotScanned::NotJson);
    }
    // The request model lists the prompt text of every API.
    let fixed = api.request_text_paths();
    let paths = fixed
        .iter()
        .map(|p| steps(p).collect())
        .chain(s.request_fields.iter().cloned());
    match rewrite(s, r, &mut v, paths, Direction::Request) {
        Err(b) => RequestOutcome::Refused(OpenAiError::new(
            ErrorKind::Permission,
            format!(
                "The request was blocked: it contains {} data, which this gateway does not send to models.",
                b.entity
            ),
        )),
        Ok(false) => RequestOutcome::Unchanged,
        Ok(true) => match serde_json::to_vec(&v) {
            Ok(bytes) => RequestOutcome::Rewritten(bytes),
            // Serializing a Value cannot fail; if it did, nothing unredacted may pass.
            Err(_) => RequestOutcome::Refused(OpenAiError::new(
                ErrorKind::Unavailable,
                "The request could not be redacted.",
            )),
        },
    }
}

/// A non-streamed response body, redacted; `None` when unchanged (or not JSON: a response
/// that has started cannot be refused, and an error body from the backend has no text).
pub fn redact_response(s: &Settings, r: &mut Redactor, api: Api, body: &[u8]) -> Option<Vec<u8>> {
    let mut v = serde_json::from_slice::<Value>(body).ok()?;
    // Embeddings and token counts: no text comes back.
    let fixed = api.response_text_paths();
    if fixed.is_empty() {
        return None;
    }
    let changed = rewrite(
        s,
        r,
        &mut v,
        fixed.iter().map(|p| steps(p).collect()),
        Direction::Response,
    )
    .ok()?;
    changed.then(|| serde_json::to_vec(&v).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiConfig;
    use serde_json::json;

    fn settings(json: &str) -> Settings {
        Settings::new(sluice_common::parse_config::<PiiConfig>(json.as_bytes()).unwrap()).unwrap()
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn rewritten(o: RequestOutcome) -> Value {
        match o {
            RequestOutcome::Rewritten(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("not rewritten: {other:?}"),
        }
    }

    #[test]
    fn chat_messages_parts_and_tool_arguments() {
        let s = settings(r#"{"request_fields": ["metadata.note"]}"#);
        let mut r = Redactor::default();
        let req = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "I am jo@x.io"},
                {"role": "user", "content": [{"type": "text", "text": "again jo@x.io"},
                                              {"type": "image_url", "image_url": {"url": "http://a@b.io"}}]},
                {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"ip\":\"10.0.0.1\"}"}}]}
            ],
            "metadata": {"note": "call +1 415 555 2671"},
            "user": "kept@x.io"
        });
        let v = rewritten(scan_request(&s, &mut r, Api::Chat, &body(req)));
        assert_eq!(v["messages"][0]["content"], "be brief");
        assert_eq!(v["messages"][1]["content"], "I am [EMAIL_1]");
        assert_eq!(v["messages"][2]["content"][0]["text"], "again [EMAIL_1]");
        assert_eq!(
            v["messages"][2]["content"][1]["image_url"]["url"],
            "http://a@b.io"
        );
        assert_eq!(
            v["messages"][3]["tool_calls"][0]["function"]["arguments"],
            "{\"ip\":\"[IPV4_1]\"}"
        );
        assert_eq!(v["metadata"]["note"], "call [PHONE_1]");
        assert_eq!(v["user"], "kept@x.io", "only the configured fields");
        assert_eq!(
            r.report(None),
            r#"{"request":{"email":{"redact":2},"ipv4":{"redact":1},"phone":{"redact":1}}}"#
        );
    }

    #[test]
    fn completions_prompts() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let v = rewritten(scan_request(
            &s,
            &mut r,
            Api::Completions,
            &body(json!({"model": "m", "prompt": ["a 123-45-6789", "b"]})),
        ));
        assert_eq!(v["prompt"], json!(["a [SSN_1]", "b"]));
        let clean = body(json!({"model": "m", "prompt": "hello"}));
        assert_eq!(
            scan_request(&s, &mut r, Api::Completions, &clean),
            RequestOutcome::Unchanged
        );
    }

    #[test]
    fn embeddings_inputs() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let v = rewritten(scan_request(
            &s,
            &mut r,
            Api::Embeddings,
            &body(json!({"model": "e", "input": ["a@b.io", "plain"]})),
        ));
        assert_eq!(v["input"], json!(["[EMAIL_1]", "plain"]));
        assert_eq!(
            redact_response(&s, &mut r, Api::Embeddings, b"{\"data\":[]}"),
            None
        );
    }

    #[test]
    fn block_and_unscannable() {
        let s = settings(r#"{"entities": {"private_key": "block"}, "max_body_bytes": 200}"#);
        let mut r = Redactor::default();
        let req = body(json!({"messages": [{"role": "user",
            "content": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"}]}));
        match scan_request(&s, &mut r, Api::Chat, &req) {
            RequestOutcome::Refused(e) => {
                assert_eq!(e.status(), 403);
                assert!(e.body().contains("private_key") && !e.body().contains("MIIB"));
            }
            other => panic!("{other:?}"),
        }
        let RequestOutcome::RefusedUnscanned(e, NotScanned::NotJson) =
            scan_request(&s, &mut r, Api::Chat, b"not json")
        else {
            panic!()
        };
        assert_eq!(e.status(), 400);
        let big = vec![b' '; 201];
        let RequestOutcome::RefusedUnscanned(e, NotScanned::TooLarge) =
            scan_request(&s, &mut r, Api::Chat, &big)
        else {
            panic!()
        };
        assert_eq!(e.status(), 413);
        let pass = settings(r#"{"on_unscannable": "pass"}"#);
        assert_eq!(
            scan_request(&pass, &mut r, Api::Chat, b"[1]"),
            RequestOutcome::Passed(NotScanned::NotJson)
        );
    }

    #[test]
    fn json_responses() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let resp = body(
            json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": "write to jo@x.io"}}], "usage": {"prompt_tokens": 1}}),
        );
        let out: Value =
            serde_json::from_slice(&redact_response(&s, &mut r, Api::Chat, &resp).unwrap())
                .unwrap();
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "write to [EMAIL_1]"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 1);
        let resp = body(json!({"choices": [{"text": "fine"}]}));
        assert_eq!(redact_response(&s, &mut r, Api::Completions, &resp), None);
        assert_eq!(redact_response(&s, &mut r, Api::Chat, b"oops"), None);
    }
}
