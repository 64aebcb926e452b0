//! Engine errors through real Envoy, with faults the mock makes on cue (the real engine
//! cases are in `engine.rs`): an engine's 500 for an invalid request is answered once, as a
//! 400 in the API's shape, and ejects no host; TGI's 422 shape becomes OpenAI's 400; a 503
//! is retried on the other host; an error event inside a 200 stream reaches the client, is
//! logged as an error and is not charged.
use serde_json::{json, Value};
use sluice_e2e::{chat_body, key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;

const KEY: &str = "sk-sluice-e2e-engine-errors-0123456789abcd";
const CHAT: &str = "/v1/chat/completions";

async fn stack() -> Stack {
    let mut k = key_record("key_err", KEY, "team-err");
    k.limits.tokens_per_minute = Some(100_000);
    let s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        backends: 2,
        keys: KeyAuthConfig {
            keys: vec![k],
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    s
}

async fn served(s: &Stack) -> usize {
    let mut n = 0;
    for m in &s.pools {
        n += m.requests().await.len();
    }
    n
}

#[tokio::test]
async fn an_engines_500_for_an_invalid_request_is_a_400_answered_once() {
    let s = stack().await;
    let llama_500 = json!({"error": {"code": 500, "type": "server_error",
        "message": "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"}});
    for m in &s.pools {
        m.configure(json!({"fail_status": 500, "fail_body": llama_500}))
            .await;
    }
    for i in 0..8 {
        let id = format!("img-{i}");
        let r = s.post_json(CHAT, KEY, &id, &chat_body(false)).await;
        assert_eq!(r.status(), 400, "request {i}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("image input is not supported"));
        let line = s.log_line(&id).await;
        assert_eq!(line["status"], 400);
        assert!(line["error"].as_str().unwrap().contains("image input"));
    }
    // Each went to one engine once: no retry, and no host ejected for the client's mistake.
    assert_eq!(served(&s).await, 8);
    assert_eq!(s.stat("cluster.pool-a.upstream_rq_retry").await, 0);
    assert_eq!(
        s.stat("cluster.pool-a.outlier_detection.ejections_enforced_total")
            .await,
        0
    );
    // The same under the Anthropic API: its own error shape.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages", s.gateway))
        .header("x-api-key", KEY)
        .json(&json!({"model": "mock-model", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    assert_eq!(served(&s).await, 9);
}

#[tokio::test]
async fn tgi_validation_errors_and_server_failures_keep_their_meaning() {
    let s = stack().await;
    let tgi = json!({"error": "Input validation error: `temperature` must be strictly positive",
                     "error_type": "validation"});
    for m in &s.pools {
        m.configure(json!({"fail_status": 422, "fail_body": tgi}))
            .await;
    }
    let r = s.post_json(CHAT, KEY, "tgi", &chat_body(false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("temperature"));
    // A real server failure stays a 500 (and is not retried: the engine read the request).
    let oom = json!({"error": {"code": 500, "message": "CUDA error: out of memory", "type": "server_error"}});
    for m in &s.pools {
        m.clear().await;
        m.configure(json!({"fail_status": 500, "fail_body": oom}))
            .await;
    }
    let r = s.post_json(CHAT, KEY, "oom", &chat_body(false)).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(served(&s).await, 1);
    // An error body too large to be one is not buffered whole: the client gets the
    // normalised error from the status alone, as valid JSON.
    let huge =
        json!({"error": {"code": 500, "message": "x".repeat(200_000), "type": "server_error"}});
    for m in &s.pools {
        m.configure(json!({"fail_status": 500, "fail_body": huge}))
            .await;
    }
    let r = s.post_json(CHAT, KEY, "huge", &chat_body(false)).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "The model backend answered 500.");
    // An overloaded engine (503) is retried on the other host.
    s.pools[0]
        .configure(json!({"fail_status": 503, "fail_body": null}))
        .await;
    s.pools[1].configure(json!({"fail_status": null})).await;
    for i in 0..6 {
        let r = s
            .post_json(CHAT, KEY, &format!("busy-{i}"), &chat_body(false))
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Its retry-after is honoured: the retry waits that long (not Envoy's 25 ms back-off).
    // Each engine is overloaded for one answer, so the request is served within its retries.
    for m in &s.pools {
        m.configure(json!({"fail_status": 503, "fail_count": 1, "fail_retry_after": 1}))
            .await;
    }
    let started = std::time::Instant::now();
    let r = s
        .post_json(CHAT, KEY, "after-wait", &chat_body(false))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "retried after {:?}",
        started.elapsed()
    );
    assert!(
        s.stat("cluster.pool-a.upstream_rq_retry_backoff_ratelimited")
            .await
            >= 1
    );
}

#[tokio::test]
async fn an_error_event_in_a_200_stream_is_logged_as_an_error_and_not_charged() {
    let s = stack().await;
    for m in &s.pools {
        m.configure(json!({"stream_error_after": 3})).await;
    }
    let r = s.post_json(CHAT, KEY, "stream-err", &chat_body(true)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    // The client sees the error event in OpenAI's stream error form (the SDKs raise on it).
    assert!(
        text.contains(r#"data: {"error":"#),
        "no error event reached the client: {text}"
    );
    let line = s.log_line("stream-err").await;
    assert_eq!(line["error"], "injected stream error");
    let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
    assert_eq!(record["tokens"]["reconciled"], 0, "charged: {record}");
    assert!(log_number(&line, "completion_tokens").is_some());
    // Older llama.cpp: an `error:` line (not SSE); the client gets OpenAI's form added.
    for m in &s.pools {
        m.configure(json!({"stream_error_legacy": true})).await;
    }
    let r = s.post_json(CHAT, KEY, "legacy-err", &chat_body(true)).await;
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#"data: {"error":{"message":"injected stream error","type":"invalid_request_error""#
        ),
        "{text}"
    );
    assert_eq!(
        s.log_line("legacy-err").await["error"],
        "injected stream error"
    );
    // `sluice usage` counts them as errors and bills none of their tokens.
    let report = s.cli(&[
        "usage",
        "--log",
        s.dir.path().join("access.log").to_str().unwrap(),
        "--window",
        "all",
        "--format",
        "json",
    ]);
    let out: Value = serde_json::from_str(&report).unwrap();
    let row = &out["rows"].as_array().unwrap()[0];
    assert_eq!(
        (row["requests"].as_u64(), row["errors"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(row["total_tokens"], 0);
}

/// Engines with a few HTTP threads and a small accept queue (older llama.cpp servers): past
/// their connections, SYNs are dropped and retried by the kernel a second later. With the
/// pool's `max_concurrency`, Envoy never opens more connections than an engine serves, and
/// a burst waits in Envoy's queue; with the former settings (no per-endpoint limit, 1 s
/// connect timeout, Envoy's 3 concurrent retries) the same burst got 503s.
#[tokio::test]
async fn a_burst_against_engines_with_few_connections_waits_instead_of_failing() {
    async fn burst_of_streams(
        max_concurrency: u64,
        connect_timeout: &str,
        reuse: Value,
    ) -> (usize, u64) {
        let s = Stack::start(StackOptions {
            pools: vec!["pool-a"],
            backends: 2,
            keys: KeyAuthConfig {
                keys: vec![key_record("key_err", KEY, "team-err")],
                ..Default::default()
            },
            // Four slots' worth of connections, one for Envoy's health check, one spare.
            mock_args: ["--max-connections", "6", "--backlog", "1"]
                .map(String::from)
                .to_vec(),
            pool_options: vec![(
                "pool-a",
                json!({"max_concurrency": max_concurrency, "max_requests_per_connection": reuse}),
            )],
            vars: vec![("connect_timeout".into(), json!(connect_timeout))],
            ..StackOptions::default()
        })
        .await;
        s.wait_all_healthy().await;
        for m in &s.pools {
            m.configure(json!({"reply_tokens": 100, "token_delay_ms": 5}))
                .await;
        }
        // A request stuck behind an engine's idle connections would wait for the 300 s
        // stream idle timeout: 30 s is failure enough here.
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        let statuses = futures::future::join_all((0..50).map(|i| {
            let client = client.clone();
            let url = format!("{}{CHAT}", s.gateway);
            async move {
                let mut body = chat_body(true);
                body["max_tokens"] = json!(100);
                let r = client
                    .post(url)
                    .header("authorization", format!("Bearer {KEY}"))
                    .header("x-request-id", format!("b{i}"))
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = r else {
                    return (0, false);
                };
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, text.ends_with("data: [DONE]\n\n"))
            }
        }))
        .await;
        let failed = statuses
            .iter()
            .filter(|(st, done)| *st != 200 || !done)
            .count();
        (
            failed,
            s.stat("cluster.pool-a.upstream_cx_connect_fail").await,
        )
    }
    // Engines with a thread per connection are also held by the gateway's idle kept-alive
    // connections: one request per connection frees their threads.
    let (failed, connect_fails) = burst_of_streams(4, "5s", json!(1)).await;
    println!("max_concurrency 4, connect timeout 5 s: {failed} of 50 failed, {connect_fails} connect failures");
    assert_eq!(failed, 0);
    let (failed, connect_fails) = burst_of_streams(64, "1s", Value::Null).await;
    println!("no per-endpoint limit, connect timeout 1 s: {failed} of 50 failed, {connect_fails} connect failures");
    // The fault is real: without the limit, connections overflow the accept queue.
    assert!(
        connect_fails > 0,
        "the small accept queue was never overflowed"
    );
}
