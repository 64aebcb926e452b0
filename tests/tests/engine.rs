//! Sluice in front of a real inference engine: llama.cpp's `llama-server` (built by
//! `scripts/engine.sh` from the llama.cpp tree in PyPI's llama-cpp-python 0.3.36), two
//! servers of four slots in one pool, a tiny random-weight model around Llama 3's real
//! vocabulary. The cases the mock never showed: a burst of long streams, an invalid request
//! the engine answers with 500, a CJK stream (no spaces), a context overflow, the usage log
//! against the engine's own usage, the alias name in responses, and a Messages stream the
//! engine sends without `message_start`.
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_e2e::engine::{Engine, Variant};
use sluice_e2e::{key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::time::{Duration, Instant};

const KEY: &str = "sk-sluice-e2e-engine-0123456789abcdefghijk";
const CHAT: &str = "/v1/chat/completions";
const SLOTS: usize = 4;

/// One engine stack at a time: two llama-servers and Envoy share two cores, and the
/// latency case must not compete with a burst.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stack(engine: &Engine) -> Stack {
    let mut k = key_record("key_engine", KEY, "team-engine");
    // A token budget, so every request is reserved and settled (never reached here).
    k.limits.tokens_per_minute = Some(10_000_000);
    let s = Stack::start(StackOptions {
        pools: vec!["pool-gpu"],
        engines: vec![("pool-gpu", engine.ports.clone())],
        pool_options: vec![(
            "pool-gpu",
            json!({"max_concurrency": SLOTS, "max_requests_per_connection": 1}),
        )],
        keys: KeyAuthConfig {
            keys: vec![k],
            ..Default::default()
        },
        vars: vec![(
            "model_router_config".into(),
            json!({"models": {
                "llama-3.1-8b": {"targets": [{"pool": "pool-gpu", "model": "tiny-llama"}]},
                "tiny-llama": {"targets": [{"pool": "pool-gpu"}]}
            }}),
        )],
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    s
}

fn chat(model: &str, content: &str, max_tokens: u64, stream: bool) -> Value {
    let mut body = json!({"model": model, "max_tokens": max_tokens, "stream": stream,
                          "messages": [{"role": "user", "content": content}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A finished stream: its content events, the usage it reported, whether it ended with
/// `[DONE]`, and when (since the request) the first content arrived.
struct Streamed {
    status: u16,
    content_events: usize,
    text: String,
    usage: Option<Value>,
    done: bool,
    first_content: Option<Duration>,
    model: Option<String>,
}

async fn stream(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    id: &str,
    body: &Value,
) -> Streamed {
    let started = Instant::now();
    let mut req = client.post(url).header("x-request-id", id).json(body);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.unwrap();
    let mut out = Streamed {
        status: r.status().as_u16(),
        content_events: 0,
        text: String::new(),
        usage: None,
        done: false,
        first_content: None,
        model: None,
    };
    let mut bytes = r.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                out.done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(m) = v["model"].as_str() {
                out.model = Some(m.to_string());
            }
            if !v["usage"].is_null() {
                out.usage = Some(v["usage"].clone());
            }
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                if !c.is_empty() {
                    out.content_events += 1;
                    out.text.push_str(c);
                    out.first_content.get_or_insert(started.elapsed());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_burst_of_50_streams_of_400_tokens_has_no_errors_and_the_log_matches_the_engine() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 2, SLOTS, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let client = reqwest::Client::new();
    let url = format!("{}{CHAT}", s.gateway);
    let started = Instant::now();
    let results = futures::future::join_all((0..50).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = chat(
                "tiny-llama",
                &format!("Tell me a long story, number {i}."),
                400,
                true,
            );
            stream(&client, &url, Some(KEY), &format!("burst-{i}"), &body).await
        }
    }))
    .await;
    println!("50 streams of 400 tokens in {:?}", started.elapsed());
    let failed: Vec<(usize, u16)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != 200 || !r.done)
        .map(|(i, r)| (i, r.status))
        .collect();
    assert!(failed.is_empty(), "failed streams: {failed:?}");
    for (i, r) in results.iter().enumerate() {
        let usage = r
            .usage
            .as_ref()
            .unwrap_or_else(|| panic!("stream {i} reported no usage"));
        assert_eq!(usage["completion_tokens"], 400, "stream {i}");
        // The usage log holds exactly what the engine reported.
        let line = s.log_line(&format!("burst-{i}")).await;
        assert_eq!(line["status"], 200);
        assert_eq!(
            log_number(&line, "completion_tokens"),
            usage["completion_tokens"].as_u64()
        );
        assert_eq!(
            log_number(&line, "prompt_tokens"),
            usage["prompt_tokens"].as_u64()
        );
        assert_eq!(line["usage_source"], "backend");
    }
    // Both engines served, no connection failed, nothing was retried or overflowed.
    let clusters = s.clusters().await;
    for port in &engine.ports {
        let prefix = format!("pool-gpu::127.0.0.1:{port}::rq_total::");
        let n: u64 = clusters
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        println!("engine on {port} served {n} requests");
        assert!(n > 0, "engine on {port} served nothing");
    }
    assert_eq!(s.stat("cluster.pool-gpu.upstream_cx_connect_fail").await, 0);
    assert_eq!(s.stat("cluster.pool-gpu.upstream_rq_retry").await, 0);
    assert_eq!(
        s.stat("cluster.pool-gpu.upstream_rq_pending_overflow")
            .await,
        0
    );
    // The burst waited in Envoy's queue (at most `max_concurrency` per engine), not in the
    // engines' accept queues.
    assert!(s.stat("cluster.pool-gpu.upstream_cx_overflow").await > 0);
}

#[tokio::test]
async fn an_invalid_request_is_answered_once_with_a_400_and_ejects_no_engine() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 2, SLOTS, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    // An image to a text-only model: llama.cpp answers 500 ("image input is not supported").
    let image = json!({"model": "tiny-llama", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}}]}]});
    for i in 0..6 {
        let id = format!("image-{i}");
        let r = s.post_json(CHAT, KEY, &id, &image).await;
        assert_eq!(r.status(), 400, "request {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image input is not supported"));
        let line = s.log_line(&id).await;
        assert!(line["error"].as_str().unwrap().contains("image input"));
        let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
        assert_eq!(
            record["tokens"]["reconciled"], 0,
            "an engine error is not charged"
        );
    }
    // Each reached an engine exactly once; no engine was ejected.
    assert_eq!(s.stat("cluster.pool-gpu.upstream_rq_total").await, 6);
    assert_eq!(s.stat("cluster.pool-gpu.upstream_rq_retry").await, 0);
    assert_eq!(
        s.stat("cluster.pool-gpu.outlier_detection.ejections_enforced_total")
            .await,
        0
    );
    for i in 0..4 {
        let r = s
            .post_json(
                CHAT,
                KEY,
                &format!("after-{i}"),
                &chat("tiny-llama", "Hello", 8, false),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn a_cjk_stream_is_not_held_back() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Cjk, 1, 1, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let client = reqwest::Client::new();
    let body = chat("tiny-llama", "请用中文写一个故事。", 200, true);
    // Warm both paths (connections, the engine's prompt cache), then alternate runs.
    stream(
        &client,
        &format!("{}{CHAT}", engine.url(0)),
        None,
        "warm-d",
        &body,
    )
    .await;
    stream(
        &client,
        &format!("{}{CHAT}", s.gateway),
        Some(KEY),
        "warm-g",
        &body,
    )
    .await;
    let (mut direct, mut gateway) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let d = stream(
            &client,
            &format!("{}{CHAT}", engine.url(0)),
            None,
            &format!("d{i}"),
            &body,
        )
        .await;
        let g = stream(
            &client,
            &format!("{}{CHAT}", s.gateway),
            Some(KEY),
            &format!("g{i}"),
            &body,
        )
        .await;
        assert_eq!((d.status, g.status), (200, 200));
        assert!(
            g.text
                .chars()
                .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
                .count()
                > 50,
            "{}",
            g.text
        );
        assert!(
            !g.text.contains(' '),
            "the CJK model's text has no spaces: {}",
            g.text
        );
        // The stream arrives as the engine sends it, not as one event at the end.
        assert!(
            g.content_events * 10 >= d.content_events * 9,
            "gateway {} content events, direct {}",
            g.content_events,
            d.content_events
        );
        direct.push(d.first_content.unwrap());
        gateway.push(g.first_content.unwrap());
    }
    direct.sort();
    gateway.sort();
    let (d, g) = (direct[2], gateway[2]);
    println!("first content, median of 5: direct {d:?}, through Sluice {g:?}");
    assert!(
        g <= d + Duration::from_millis(20),
        "first content: direct {d:?}, gateway {g:?}"
    );
}

#[tokio::test]
async fn a_context_overflow_is_an_error_in_the_log_and_not_charged() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 1, 1, 512, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let long = "hello world ".repeat(600);
    let client = reqwest::Client::new();
    let r = stream(
        &client,
        &format!("{}{CHAT}", s.gateway),
        Some(KEY),
        "overflow",
        &chat("tiny-llama", &long, 16, true),
    )
    .await;
    assert_eq!(r.status, 400);
    let line = s.log_line("overflow").await;
    assert_eq!(line["status"], 400);
    assert!(
        line["error"].as_str().unwrap().contains("context size"),
        "{line}"
    );
    let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
    assert_eq!(record["tokens"]["reconciled"], 0);
    // The client's error says what happened, with OpenAI's code for it.
    let v: Value = s
        .post_json(
            CHAT,
            KEY,
            "overflow-json",
            &chat("tiny-llama", &long, 16, false),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

/// Decided: a response names the model that served it (the upstream name), as OpenAI's own
/// aliases do (`gpt-4o` answers as `gpt-4o-2024-08-06`); JSON and streams agree; the name the
/// client asked for is in the access log (`model_requested`). See docs/filters/model-router.md.
#[tokio::test]
async fn an_alias_answers_with_the_served_models_name_in_json_and_streams() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 1, 2, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let r = s
        .post_json(
            CHAT,
            KEY,
            "alias-json",
            &chat("llama-3.1-8b", "Hello", 4, false),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "tiny-llama");
    let client = reqwest::Client::new();
    let st = stream(
        &client,
        &format!("{}{CHAT}", s.gateway),
        Some(KEY),
        "alias-stream",
        &chat("llama-3.1-8b", "Hello", 4, true),
    )
    .await;
    assert_eq!(st.model.as_deref(), Some("tiny-llama"));
    for id in ["alias-json", "alias-stream"] {
        let line = s.log_line(id).await;
        assert_eq!(
            (line["model_requested"].as_str(), line["model"].as_str()),
            (Some("llama-3.1-8b"), Some("tiny-llama"))
        );
    }
}

/// The Anthropic Messages and OpenAI Responses APIs of llama-server through the whole chain:
/// the usage log equals the engine's usage (for Messages, input counted with the cached part
/// the engine reports apart: `input_tokens + cache_read_input_tokens`).
#[tokio::test]
async fn messages_and_responses_log_the_engines_usage() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 1, 2, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let client = reqwest::Client::new();
    let post = |path: &str, id: &str, body: Value| {
        client
            .post(format!("{}{path}", s.gateway))
            .header("x-api-key", KEY)
            .header("x-request-id", id)
            .json(&body)
            .send()
    };
    let input = |u: &Value| {
        [
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .filter_map(|k| u[*k].as_u64())
        .sum::<u64>()
    };
    let messages = json!({"model": "tiny-llama", "max_tokens": 12,
                          "messages": [{"role": "user", "content": "Hello there, engine."}]});
    // Twice: the second reads the prompt from the engine's cache.
    for id in ["msg-1", "msg-2"] {
        let v: Value = post("/v1/messages", id, messages.clone())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let line = s.log_line(id).await;
        assert_eq!(
            log_number(&line, "prompt_tokens"),
            Some(input(&v["usage"])),
            "{v}"
        );
        assert_eq!(
            log_number(&line, "completion_tokens"),
            v["usage"]["output_tokens"].as_u64()
        );
    }
    let mut streamed = messages.clone();
    streamed["stream"] = json!(true);
    let text = post("/v1/messages", "msg-stream", streamed)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut prompt, mut output) = (None, None);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("message_start") => prompt = Some(input(&v["message"]["usage"])),
            Some("message_delta") => output = v["usage"]["output_tokens"].as_u64(),
            _ => {}
        }
    }
    let line = s.log_line("msg-stream").await;
    assert_eq!(
        (
            log_number(&line, "prompt_tokens"),
            log_number(&line, "completion_tokens")
        ),
        (prompt, output),
        "{text}"
    );
    let v: Value = post(
        "/v1/responses",
        "resp",
        json!({"model": "tiny-llama", "max_output_tokens": 12, "input": "Hello there, engine."}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let line = s.log_line("resp").await;
    assert_eq!(
        log_number(&line, "prompt_tokens"),
        v["usage"]["input_tokens"].as_u64(),
        "{v}"
    );
    assert_eq!(
        log_number(&line, "completion_tokens"),
        v["usage"]["output_tokens"].as_u64()
    );
}

/// llama-server sends a Messages stream's `message_start` with the first generated token,
/// and leaves it out when that token is an incomplete UTF-8 sequence (about one stream in
/// sixty with this model); Anthropic's SDKs refuse such a stream. Through Sluice every
/// stream opens with `message_start`: the engine's own, or one made by token-counter (its id
/// is `msg_<request id>`) carrying the prompt count that was charged.
#[tokio::test]
async fn every_messages_stream_opens_with_message_start() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 1, 2, 1024, "tiny-llama").await else {
        return;
    };
    let s = stack(&engine).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "tiny-llama", "max_tokens": 2, "stream": true,
                      "messages": [{"role": "user", "content": "Hello there, engine."}]});
    let (mut engines, mut made) = (0, 0);
    for n in 0..1500 {
        if made > 0 && n >= 50 {
            break;
        }
        let id = format!("start-{n}");
        let text = client
            .post(format!("{}/v1/messages", s.gateway))
            .header("x-api-key", KEY)
            .header("x-request-id", &id)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let first = &events[0];
        assert_eq!(first["type"], "message_start", "{text}");
        assert_eq!(
            events
                .iter()
                .filter(|e| e["type"] == "message_start")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(events.last().unwrap()["type"], "message_stop", "{text}");
        if first["message"]["id"] == format!("msg_{id}") {
            made += 1;
            let line = s.log_line(&id).await;
            assert_eq!(first["message"]["model"], "tiny-llama");
            assert_eq!(
                log_number(&line, "prompt_tokens"),
                first["message"]["usage"]["input_tokens"].as_u64(),
                "{text}"
            );
        } else {
            engines += 1;
        }
    }
    assert!(
        made > 0,
        "the engine sent message_start in all {engines} streams: has llama-server changed?"
    );
    eprintln!("message_start: {engines} from the engine, {made} made by Sluice");
}

/// The response cache in front of the real engine: llama-server's own stream is stored as
/// it passes and replayed, streamed and not, with the same text and the engine's usage.
#[tokio::test]
async fn the_engines_answers_are_cached_and_replayed_streamed_and_not() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = Engine::start(Variant::Plain, 1, 2, 1024, "tiny-llama").await else {
        return;
    };
    let s = Stack::start(StackOptions {
        pools: vec!["pool-gpu"],
        engines: vec![("pool-gpu", engine.ports.clone())],
        pool_options: vec![("pool-gpu", json!({"max_requests_per_connection": 1}))],
        keys: KeyAuthConfig {
            keys: vec![key_record("key_engine", KEY, "team-engine")],
            ..Default::default()
        },
        vars: vec![
            (
                "model_router_config".into(),
                json!({"models": {"tiny-llama": {"targets": [{"pool": "pool-gpu"}]}}}),
            ),
            (
                "response_cache".into(),
                json!({"rules": [{"models": ["*"], "apis": ["chat", "responses", "messages"]}]}),
            ),
        ],
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    let client = reqwest::Client::new();
    let url = format!("{}{CHAT}", s.gateway);
    let mut body = chat("tiny-llama", "Tell me about rivers and the sea.", 24, true);
    body["temperature"] = json!(0);
    let first = stream(&client, &url, Some(KEY), "cache-1", &body).await;
    assert!(first.done && !first.text.is_empty() && first.usage.is_some());
    let again = stream(&client, &url, Some(KEY), "cache-2", &body).await;
    assert_eq!(
        (again.text.as_str(), again.done),
        (first.text.as_str(), true)
    );
    assert_eq!(again.usage, first.usage, "the engine's usage, replayed");
    body["stream"] = json!(false);
    let json_hit: Value = client
        .post(&url)
        .header("x-api-key", KEY)
        .header("x-request-id", "cache-3")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        json_hit["choices"][0]["message"]["content"],
        first.text.as_str()
    );
    let results: Vec<String> = {
        let mut out = Vec::new();
        for id in ["cache-1", "cache-2", "cache-3"] {
            let line = s.log_line(id).await;
            let fact: Value = serde_json::from_str(line["cache"].as_str().unwrap()).unwrap();
            out.push(fact["result"].as_str().unwrap().to_string());
            assert_eq!(
                log_number(&line, "completion_tokens"),
                first
                    .usage
                    .as_ref()
                    .and_then(|u| u["completion_tokens"].as_u64()),
                "{line}"
            );
        }
        out
    };
    assert_eq!(results, ["stored", "hit", "hit"]);
    // Responses: llama-server's event stream assembles into its response.completed.
    let responses = json!({"model": "tiny-llama", "input": "Name a colour.", "temperature": 0,
                           "max_output_tokens": 12, "stream": true});
    let mut texts = Vec::new();
    for id in ["resp-cache-1", "resp-cache-2"] {
        let r = client
            .post(format!("{}/v1/responses", s.gateway))
            .header("x-api-key", KEY)
            .header("x-request-id", id)
            .json(&responses)
            .send()
            .await
            .unwrap();
        let said = r
            .headers()
            .get("x-sluice-cache")
            .map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        let completed = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["type"] == "response.completed")
            .unwrap_or_else(|| panic!("no response.completed: {text}"));
        texts.push((said, completed["response"]["output"].clone()));
    }
    assert_eq!(texts[0].0.as_deref(), Some("miss"));
    assert_eq!(texts[1].0.as_deref(), Some("hit"), "{texts:?}");
    assert_eq!(texts[0].1, texts[1].1);
}
