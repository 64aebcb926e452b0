//! The request side: parse the body once, count it, and ask streams for usage.

use crate::config::{Api, Settings};
use crate::prompt::{prompt_tokens_for, CountMemos, Counter};
use serde_json::{Map, Value};
use sluice_common::{ErrorKind, OpenAiError, RequestView};
use sluice_tokenizer::Tokenizer;

/// What the filter learned from a request body and what it changes in it.
pub struct RequestPlan {
    pub api: Api,
    pub model: String,
    pub tokenizer: &'static Tokenizer,
    pub prompt_tokens: u64,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage` was added by us: the usage chunk must be hidden
    /// from the client.
    pub injected_usage: bool,
    /// The body to send upstream when it differs from the client's.
    pub new_body: Option<Vec<u8>>,
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> OpenAiError {
    let e = OpenAiError::new(ErrorKind::InvalidRequest, message);
    match param {
        Some(p) => e.with_param(p),
        None => e,
    }
}

/// Plan a request from its complete body, with the counts of texts seen lately in `memos`.
/// `Err` is the 400 to answer.
pub fn plan_request(
    settings: &Settings,
    api: Api,
    body: &[u8],
    now_unix_secs: u64,
    memos: Option<&CountMemos>,
) -> Result<RequestPlan, OpenAiError> {
    // Parsed through the thread's kept tree: response-cache and rate-limit, after this
    // filter, read the same tree instead of parsing the body again.
    let mut view = RequestView::parse_shared(api, body)?;
    let model = view.model()?.to_string();
    let tokenizer = settings.tokenizer_for(&model);
    let rule = settings.rule_for(&model);
    let template = rule.and_then(|r| r.template.as_ref());
    let defaults = rule.and_then(|r| r.template_kwargs.as_ref());
    let prompt_tokens = prompt_tokens_for(
        api,
        &view.body,
        &Counter::new(tokenizer, memos),
        template.map(|t| (t, defaults)),
        now_unix_secs,
    )
    .map_err(|b| invalid(b.message, Some(b.param)))?;
    let stream = view.stream();
    let max_output_tokens = view.output_cap();
    let inject =
        stream && !view.include_usage() && settings.inject_include_usage && api.usage_on_request();
    let mut new_body = None;
    if inject {
        // The body changes: the kept tree is no longer the one the next filter reads, and
        // this view, its only holder then, changes it in place.
        sluice_common::parsed::forget_body();
        if let Some(fields) = view.body_mut().as_object_mut() {
            let options = fields
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Some(o) = options.as_object_mut() {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        new_body = serde_json::to_vec(&*view.body).ok();
    }
    Ok(RequestPlan {
        api,
        model,
        tokenizer,
        prompt_tokens,
        max_output_tokens,
        stream,
        injected_usage: new_body.is_some(),
        new_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenCounterConfig;
    use serde_json::json;

    fn settings() -> Settings {
        Settings::new(TokenCounterConfig::default()).unwrap()
    }

    fn plan(body: Value) -> Result<RequestPlan, OpenAiError> {
        plan_request(&settings(), Api::Chat, body.to_string().as_bytes(), 0, None)
    }

    #[test]
    fn injects_include_usage_and_keeps_everything_else() {
        let body = json!({"model": "m", "stream": true, "temperature": 0.5,
                          "messages": [{"role": "user", "content": "hi"}]});
        let p = plan(body.clone()).unwrap();
        assert!(p.stream && p.injected_usage);
        assert_eq!(p.max_output_tokens, None);
        let sent: Value = serde_json::from_slice(p.new_body.as_ref().unwrap()).unwrap();
        let mut want = body;
        want["stream_options"] = json!({"include_usage": true});
        assert_eq!(sent, want);
        // Key order is the client's, the new field last.
        let text = String::from_utf8(p.new_body.unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"model":"m","stream":true,"temperature":0.5"#),
            "{text}"
        );
    }

    #[test]
    fn leaves_bodies_alone_when_nothing_is_needed() {
        for body in [
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
        ] {
            let p = plan(body).unwrap();
            assert!(p.new_body.is_none() && !p.injected_usage);
        }
        let p = plan(
            json!({"model": "m", "max_tokens": 9, "max_completion_tokens": 7, "messages": []}),
        )
        .unwrap();
        assert_eq!(
            p.max_output_tokens,
            Some(7),
            "max_completion_tokens supersedes max_tokens"
        );
        let p = plan(json!({"model": "m", "stream": true, "stream_options": {"include_usage": false}, "messages": []})).unwrap();
        assert!(
            p.injected_usage,
            "include_usage false means the client does not want it"
        );
    }

    #[test]
    fn bad_bodies_are_400s() {
        let s = settings();
        for (body, param) in [
            (&b"{not json"[..], None),
            (b"[1,2]", None),
            (br#"{"messages":[]}"#, Some("model")),
            (br#"{"model":7,"messages":[]}"#, Some("model")),
            (
                br#"{"model":"m","messages":[{"role":"user","content":42}]}"#,
                Some("messages"),
            ),
        ] {
            let e = plan_request(&s, Api::Chat, body, 0, None)
                .err()
                .expect("a 400");
            assert_eq!(e.status(), 400);
            assert_eq!(e.param.as_deref(), param);
        }
    }
}
