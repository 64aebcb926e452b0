//! token-counter through real Envoy: exact prompt counts, completion usage from JSON and
//! SSE (with and without include_usage, injected and stripped), pools without usage, cut
//! streams, split events, metrics and the access log. Expected numbers come from the
//! reference tokenizer (tiktoken-rs), not from the code under test.
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_e2e::{key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

const KEY: &str = "sk-sluice-e2e-token-counter-0123456789abcdef";
const CHAT: &str = "/v1/chat/completions";

fn o200k() -> &'static CoreBPE {
    static T: OnceLock<CoreBPE> = OnceLock::new();
    T.get_or_init(|| tiktoken_rs::o200k_base().unwrap())
}

fn cl100k() -> &'static CoreBPE {
    static T: OnceLock<CoreBPE> = OnceLock::new();
    T.get_or_init(|| tiktoken_rs::cl100k_base().unwrap())
}

fn count(t: &CoreBPE, s: &str) -> u64 {
    t.encode_ordinary(s).len() as u64
}

async fn stack() -> Stack {
    Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![key_record("key_tc", KEY, "team-tc")],
            ..Default::default()
        },
        // The corpus holds e-mail addresses and numbers; counting is checked on the text
        // as sent, so pii-redaction (which runs first) lets everything through here.
        vars: vec![("pii_config".into(), json!({"default_action": "allow"}))],
        ..StackOptions::default()
    })
    .await
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "mock-model", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// The text of an SSE body's content deltas, and whether any event carried usage.
fn read_stream(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut saw_usage = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        saw_usage |= v.get("usage").is_some();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, saw_usage)
}

#[tokio::test]
async fn prompt_counts_equal_the_reference_on_the_corpus() {
    let s = stack().await;
    let corpus: Vec<Value> =
        serde_json::from_str(include_str!("../../filters/tokenizer/tests/corpus.json")).unwrap();
    // mock-model uses o200k_base; gpt-4 is mapped to cl100k_base in envoy/filters/token-counter.json.
    for (model, reference) in [("mock-model", o200k()), ("gpt-4", cl100k())] {
        for (i, entry) in corpus.iter().enumerate() {
            let text = entry["text"].as_str().unwrap();
            let id = format!("corpus-{model}-{i}");
            let body = json!({"model": model, "messages": [
                {"role": "system", "content": "You count tokens."},
                {"role": "user", "name": "tester", "content": [{"type": "text", "text": text}]}
            ]});
            let r = s.post_json(CHAT, KEY, &id, &body).await;
            assert_eq!(r.status(), 200, "{id}");
            let want = 3
                + (3 + count(reference, "system") + count(reference, "You count tokens."))
                + (3 + count(reference, "user")
                    + count(reference, "tester")
                    + 1
                    + count(reference, text));
            // The gateway's own count (the backend's, when it reports one, is prompt_tokens).
            let line = s.log_line(&id).await;
            assert_eq!(
                log_number(&line, "prompt_tokens_estimated"),
                Some(want),
                "{model} {}",
                entry["name"]
            );
        }
    }
}

#[tokio::test]
async fn json_responses_use_backend_usage_or_are_counted() {
    let s = stack().await;
    let r = s
        .post_json(CHAT, KEY, "json-backend", &chat("Hello", false))
        .await;
    let body: Value = r.json().await.unwrap();
    let line = s.log_line("json-backend").await;
    assert_eq!(
        log_number(&line, "completion_tokens"),
        body["usage"]["completion_tokens"].as_u64()
    );
    assert_eq!(line["usage_source"], "backend");

    // A pool that never reports usage (like TGI): the reply is counted.
    s.pool("pool-a").configure(json!({"usage": false})).await;
    let r = s
        .post_json(CHAT, KEY, "json-counted", &chat("Hello again", false))
        .await;
    let body: Value = r.json().await.unwrap();
    assert!(body.get("usage").is_none());
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let line = s.log_line("json-counted").await;
    assert_eq!(
        log_number(&line, "completion_tokens"),
        Some(count(o200k(), content))
    );
    assert_eq!(line["usage_source"], "counted");

    // Completions API, prompt as a list.
    s.pool("pool-a").configure(json!({"usage": true})).await;
    let body = json!({"model": "mock-model", "prompt": ["one two", "three"], "max_tokens": 3});
    let r = s
        .post_json("/v1/completions", KEY, "completions", &body)
        .await;
    assert_eq!(r.status(), 200);
    let line = s.log_line("completions").await;
    assert_eq!(
        log_number(&line, "prompt_tokens_estimated"),
        Some(count(o200k(), "one two") + count(o200k(), "three"))
    );
    let reported: Value = serde_json::from_str(
        s.pool("pool-a").requests().await.last().unwrap()["body"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reported["prompt"], json!(["one two", "three"]));
    // The backend reported usage: its prompt count is the one charged.
    assert_eq!(line["usage_source"], "backend");
    assert_eq!(log_number(&line, "completion_tokens"), Some(3));
}

#[tokio::test]
async fn streams_get_usage_injected_and_hidden_or_passed_on() {
    let s = stack().await;
    // Not asked for: injected upstream, hidden from the client.
    let r = s
        .post_json(CHAT, KEY, "stream-injected", &chat("Tell me", true))
        .await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    let (text, saw_usage) = read_stream(&body);
    assert!(
        !saw_usage,
        "the client did not ask for usage but got it:\n{body}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    let upstream = s.pool("pool-a").requests().await;
    let sent: Value = serde_json::from_str(upstream[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let line = s.log_line("stream-injected").await;
    assert_eq!(line["usage_source"], "backend");
    assert_eq!(
        log_number(&line, "completion_tokens"),
        Some(16),
        "the mock's reply length"
    );
    assert!(!text.is_empty(), "the client got the generated text");

    // Asked for: passed on untouched.
    let mut asked = chat("Tell me", true);
    asked["stream_options"] = json!({"include_usage": true});
    let body = s
        .post_json(CHAT, KEY, "stream-asked", &asked)
        .await
        .text()
        .await
        .unwrap();
    let usage_chunk = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|v| v["choices"] == json!([]))
        .expect("the usage chunk the client asked for");
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 16);
    let line = s.log_line("stream-asked").await;
    assert_eq!(line["usage_source"], "backend");
}

#[tokio::test]
async fn streams_from_a_pool_without_usage_are_counted_even_with_split_events() {
    let s = stack().await;
    // Every event is written in two halves 20 ms apart: Envoy passes them as separate
    // chunks, and each event must be counted exactly once.
    s.pool("pool-a")
        .configure(json!({"usage": false, "split_events": true, "reply_tokens": 12}))
        .await;
    let body = s
        .post_json(CHAT, KEY, "split", &chat("Split me", true))
        .await
        .text()
        .await
        .unwrap();
    let (text, saw_usage) = read_stream(&body);
    assert!(!saw_usage);
    let line = s.log_line("split").await;
    assert_eq!(line["usage_source"], "counted");
    assert_eq!(
        log_number(&line, "completion_tokens"),
        Some(count(o200k(), &text))
    );

    // The same split stream from a pool that reports usage: read once, hidden exactly.
    s.pool("pool-a").configure(json!({"usage": true})).await;
    let body = s
        .post_json(CHAT, KEY, "split-usage", &chat("Split me", true))
        .await
        .text()
        .await
        .unwrap();
    let (_, saw_usage) = read_stream(&body);
    assert!(!saw_usage, "usage leaked through a split stream:\n{body}");
    let line = s.log_line("split-usage").await;
    assert_eq!(
        (
            line["usage_source"].as_str(),
            log_number(&line, "completion_tokens")
        ),
        (Some("backend"), Some(12))
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_backend_still_has_a_usage_record() {
    let s = stack().await;
    s.pool("pool-a")
        .configure(json!({"disconnect_after": 3, "token_delay_ms": 30}))
        .await;
    let r = s
        .post_json(CHAT, KEY, "cut-backend", &chat("Cut", true))
        .await;
    let mut received = String::new();
    let mut stream = r.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (text, _) = read_stream(&received);
    let line = s.log_line("cut-backend").await;
    assert_eq!(line["usage_source"], "counted");
    assert_eq!(
        log_number(&line, "completion_tokens"),
        Some(count(o200k(), &text))
    );
    assert!(log_number(&line, "completion_tokens").unwrap() >= 2);
}

#[tokio::test]
async fn a_stream_cut_by_the_client_still_has_a_usage_record() {
    let s = stack().await;
    s.pool("pool-a")
        .configure(json!({"token_delay_ms": 100, "reply_tokens": 50}))
        .await;
    let r = s
        .post_json(CHAT, KEY, "cut-client", &chat("Long answer", true))
        .await;
    let mut stream = r.bytes_stream();
    let mut received = String::new();
    while received.matches("\"content\"").count() < 4 {
        let chunk = stream.next().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream); // the client goes away mid-stream
    let line = s.log_line("cut-client").await;
    assert_eq!(line["usage_source"], "counted");
    let counted = log_number(&line, "completion_tokens").unwrap();
    assert!(
        (2..50).contains(&counted),
        "counted {counted} of a cut 50-token stream"
    );
    assert!(log_number(&line, "prompt_tokens").unwrap() > 0);
}

#[tokio::test]
async fn bad_bodies_are_rejected_and_other_paths_are_refused() {
    let s = stack().await;
    let client = reqwest::Client::new();
    let send = |path: &str, body: &str| {
        client
            .post(format!("{}{path}", s.gateway))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    for (body, param) in [
        ("{not json", Value::Null),
        (r#"{"messages":[]}"#, json!("model")),
        (
            r#"{"model":"mock-model","messages":[{"role":"user","content":42}]}"#,
            json!("messages"),
        ),
    ] {
        let r = send(CHAT, body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], param);
    }
    assert!(
        s.pool("pool-a").requests().await.is_empty(),
        "a bad body went upstream"
    );
    // Not an LLM path: refused by the gateway (default deny), never forwarded.
    let r = send("/v1/other", "{not json").await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "not_found");
    assert!(s.pool("pool-a").requests().await.is_empty());
    let r = client
        .get(format!("{}/v1/models", s.gateway))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn prometheus_shows_tokens_by_type_model_tenant_and_source() {
    let s = stack().await;
    let r = s.post_json(CHAT, KEY, "m1", &chat("Hello", false)).await;
    let body: Value = r.json().await.unwrap();
    let out = body["usage"]["completion_tokens"].as_u64().unwrap();
    let r = s
        .post_json(CHAT, KEY, "m2", &json!({"model": "some-unlisted-model", "messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let prompt = log_number(&s.log_line("m1").await, "prompt_tokens").unwrap();
    let prom = s.prometheus().await;
    let want = [
        format!("gen_ai_client_token_usage{{gen_ai_token_type=\"input\",gen_ai_request_model=\"mock-model\",tenant=\"team-tc\",usage_source=\"backend\"}} {prompt}"),
        format!("gen_ai_client_token_usage{{gen_ai_token_type=\"output\",gen_ai_request_model=\"mock-model\",tenant=\"team-tc\",usage_source=\"backend\"}} {out}"),
        "sluice_llm_requests{gen_ai_request_model=\"mock-model\",tenant=\"team-tc\",usage_source=\"backend\"} 1".to_string(),
        // Models outside metric_models fold into one label value.
        "sluice_llm_requests{gen_ai_request_model=\"other\",tenant=\"team-tc\",usage_source=\"backend\"} 1".to_string(),
    ];
    for w in want {
        assert!(prom.contains(&w), "missing {w}");
    }
    assert!(!prom.contains("some-unlisted-model"));
}
