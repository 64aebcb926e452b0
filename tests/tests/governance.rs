//! Every request is governed, through real Envoy: default deny (admin, metrics and unknown
//! paths never reach a backend), one spelling per path, Envoy's own replies in the error
//! shape, no credential in a log, operator pass-through paths, OpenAI Responses and
//! Anthropic Messages through every filter, and concurrent key edits.
use serde_json::{json, Value};
use sluice_e2e::{eventually, key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::io::{Read, Write};
use std::time::Duration;

const KEY: &str = "sk-sluice-e2e-governance-0123456789abcdef";
const EMAIL: &str = "jane.doe@example.org";

fn keys() -> KeyAuthConfig {
    KeyAuthConfig {
        keys: vec![key_record("key_gov", KEY, "team-gov")],
        ..Default::default()
    }
}

async fn stack() -> Stack {
    Stack::start(StackOptions {
        keys: keys(),
        ..StackOptions::default()
    })
    .await
}

/// Send exactly these bytes (no client-side normalization) and read the whole answer.
fn raw(gateway: &str, request: &[u8]) -> (u16, String) {
    let addr = gateway.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn post_raw(gateway: &str, target: &str, body: &Value, extra: &str) -> (u16, String) {
    let body = body.to_string();
    let req = format!(
        "POST {target} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    raw(gateway, req.as_bytes())
}

fn chat_with_email() -> Value {
    json!({"model": "mock-model", "messages": [{"role": "user", "content": format!("mail {EMAIL}")}]})
}

/// Requests the pool's cluster sent upstream (health checks are not counted).
async fn upstream_requests(s: &Stack) -> u64 {
    s.stat("cluster.pool-a.upstream_rq_total").await
        + s.stat("cluster.pool-b.upstream_rq_total").await
}

#[tokio::test]
async fn every_spelling_of_a_governed_path_is_governed_or_refused() {
    let s = stack().await;
    let spellings = [
        "/v1/chat/completions",
        "/v1/chat%2Fcompletions",
        "/v1/chat%2fcompletions",
        "/v1/chat/%63ompletions",
        "/v1/%63hat/completions",
        "/v1//chat/completions",
        "//v1/chat/completions",
        "/v1/./chat/completions",
        "/v1/x/../chat/completions",
        "/v1/chat/completions/",
        "/V1/CHAT/COMPLETIONS",
        "/v1/chat/completions?x=1",
        "/v1/chat/completions#frag",
        "/v1/chat%5Ccompletions",
        "/v1\\chat\\completions",
        "/v1/chat/completions%00",
        "/v1/chat/completions;x=1",
    ];
    let mut governed = 0;
    for target in spellings {
        let (status, body) = post_raw(&s.gateway, target, &chat_with_email(), "");
        match status {
            200 => governed += 1,
            400 | 404 => {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{target}: not JSON: {body}"));
                assert!(v["error"]["type"].is_string(), "{target}: {body}");
            }
            other => panic!("{target}: unexpected {other} {body}"),
        }
    }
    assert!(
        governed >= 5,
        "the canonical and normalizable spellings pass"
    );
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(
        seen.len(),
        governed,
        "only what was answered 200 reached the backend"
    );
    for r in &seen {
        assert_eq!(
            r["path"], "/v1/chat/completions",
            "one spelling upstream: {r}"
        );
        let body = r["body"].as_str().unwrap();
        assert!(!body.contains(EMAIL), "redacted: {body}");
        assert!(body.contains("[EMAIL_1]"), "{body}");
    }
    // Each one was counted and attributed like the canonical path.
    eventually("the access log", Duration::from_secs(15), || async {
        let lines: Vec<Value> = s
            .access_log()
            .into_iter()
            .filter(|l| l["status"] == 200)
            .collect();
        (lines.len() == governed).then_some(lines)
    })
    .await
    .iter()
    .for_each(|l| {
        assert_eq!(l["api"], "chat", "{l}");
        assert!(log_number(l, "prompt_tokens").is_some(), "{l}");
        assert_eq!(l["key_id"], "key_gov");
    });
}

#[tokio::test]
async fn backend_admin_metrics_and_unknown_paths_never_reach_a_backend() {
    let s = stack().await;
    let client = reqwest::Client::new();
    let cases: [(&str, &str, u16); 14] = [
        ("GET", "/_mock/requests", 404),
        ("DELETE", "/_mock/requests", 404),
        ("PUT", "/_mock/config", 404),
        ("GET", "/metrics", 404),
        ("GET", "/health", 404),
        ("POST", "/tokenize", 404),
        ("GET", "/slots", 404),
        ("GET", "/props", 404),
        ("POST", "/v1/load_lora_adapter", 404),
        ("POST", "/reset_prefix_cache", 404),
        ("POST", "/v1/unknown", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/responses", 405),
        ("GET", "/v1/messages", 405),
    ];
    for (method, path, want) in cases {
        let r = client
            .request(method.parse().unwrap(), format!("{}{path}", s.gateway))
            .header("authorization", format!("Bearer {KEY}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{method} {path}");
        if want == 405 {
            assert_eq!(r.headers()["allow"], "POST");
        }
        let anthropic = path.starts_with("/v1/messages");
        let v: Value = r.json().await.unwrap();
        if anthropic {
            assert_eq!(v["type"], "error", "{method} {path}: {v}");
            assert!(v["error"]["type"].is_string());
        } else {
            assert!(v["error"]["code"].is_string(), "{method} {path}: {v}");
        }
    }
    // Without a key: 401 first, whatever the path.
    let r = client
        .get(format!("{}/metrics", s.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(upstream_requests(&s).await, 0, "nothing was forwarded");
    assert!(s.pool("pool-a").requests().await.is_empty());
}

#[tokio::test]
async fn envoys_own_replies_come_in_the_error_shape() {
    let s = stack().await;
    // A header block over the limit (60 KiB by default): 431.
    let big = "a".repeat(70_000);
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-big: {big}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
    let (status, body) = raw(&s.gateway, req.as_bytes());
    assert_eq!(status, 431);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large");
    // A malformed header (a space in the name; a control character in a value): 400.
    for bad in ["bad header: y", "x-h: a\u{1}b"] {
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n{bad}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        let (status, body) = raw(&s.gateway, req.as_bytes());
        assert_eq!(status, 400, "{bad:?}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
        assert_eq!(v["error"]["code"], "malformed_request", "{bad:?}");
    }
    // An encoded slash under /v1/messages: refused in Anthropic's shape.
    let (status, body) = post_raw(&s.gateway, "/v1/messages%2Fcount_tokens", &json!({}), "");
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(upstream_requests(&s).await, 0);
}

#[tokio::test]
async fn a_key_in_the_query_string_is_never_logged_nor_forwarded() {
    let s = stack().await;
    let secret = "sk-sluice-querysecret-0123456789abcdef";
    for target in [
        format!("/v1/chat/completions?api_key={secret}&x=1"),
        format!("/v1/chat/completions?key={secret}"),
        format!("/nothing?key={secret}"),
    ] {
        let (status, _) = post_raw(&s.gateway, &target, &chat_with_email(), "");
        assert!(status == 200 || status == 404, "{target}: {status}");
    }
    // Also as the only credential: refused, and not logged either.
    let body = chat_with_email().to_string();
    let req = format!(
        "POST /v1/chat/completions?api_key={secret} HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(&s.gateway, req.as_bytes()).0, 401);
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["query"], "x=1", "other parameters pass");
    assert_eq!(seen[1]["query"], "");
    eventually("four log lines", Duration::from_secs(15), || async {
        (s.access_log().len() >= 4).then_some(())
    })
    .await;
    let mut everything = s.logs();
    for entry in std::fs::read_dir(s.dir.path()).unwrap().flatten() {
        if entry.path().is_file() {
            everything.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    assert!(!everything.contains(secret), "a credential reached a log");
    assert!(everything.contains("/v1/chat/completions"));
}

#[tokio::test]
async fn an_operator_pass_through_path_passes_key_auth_only() {
    let s = Stack::start(StackOptions {
        keys: keys(),
        vars: vec![(
            "passthrough".into(),
            json!([{"path": "/tokenize", "pool": "pool-b", "methods": ["POST"]}]),
        )],
        ..StackOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/tokenize", s.gateway);
    let r = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401, "still authenticated");
    let r = client
        .post(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .body(r#"{"prompt":"hi"}"#)
        .send()
        .await
        .unwrap();
    // The mock has no /tokenize: its own 404 proves the request reached it.
    assert_eq!(r.status(), 404);
    let seen = s.pool("pool-b").requests().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["path"], "/tokenize");
    let auth = sluice_e2e::recorded_header(&seen[0], "authorization");
    assert_eq!(auth, None, "the credential is stripped");
    let r = client
        .get(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "only the listed methods");
    assert_eq!(s.pool("pool-b").requests().await.len(), 1);
}

fn upstream(req: &Value) -> Value {
    serde_json::from_str(req["body"].as_str().unwrap()).unwrap()
}

/// Responses and Anthropic Messages through every filter: PII redacted upstream and in
/// streamed replies split across events, the usage the backend reported in the access log,
/// errors in each API's shape.
#[tokio::test]
async fn responses_and_messages_are_governed_like_chat() {
    let s = stack().await;
    let client = reqwest::Client::new();
    let post = |path: &'static str, body: Value, id: &'static str| {
        client
            .post(format!("{}{path}", s.gateway))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header("x-request-id", id)
            .json(&body)
            .send()
    };
    let resp = post(
        "/v1/responses",
        json!({"model": "mock-model", "instructions": format!("reply to {EMAIL}"),
               "input": [{"role": "user", "content": [{"type": "input_text", "text": format!("I am {EMAIL}")}]}],
               "max_output_tokens": 6}),
        "r-json",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let r_usage = v["usage"].clone();
    let msg = post(
        "/v1/messages",
        json!({"model": "mock-model", "max_tokens": 7, "system": [{"type": "text", "text": format!("sys {EMAIL}")}],
               "messages": [{"role": "user", "content": format!("hi {EMAIL}")}]}),
        "m-json",
    )
    .await
    .unwrap();
    assert_eq!(msg.status(), 200);
    let m: Value = msg.json().await.unwrap();
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(seen.len(), 2);
    for r in &seen {
        let body = r["body"].as_str().unwrap();
        assert!(
            !body.contains(EMAIL) && body.contains("[EMAIL_1]"),
            "{body}"
        );
        assert!(sluice_e2e::recorded_header(r, "x-api-key").is_none());
    }
    assert_eq!(upstream(&seen[0])["instructions"], "reply to [EMAIL_1]");
    assert_eq!(upstream(&seen[1])["system"][0]["text"], "sys [EMAIL_1]");
    for (id, api, usage) in [
        ("r-json", "responses", &r_usage),
        ("m-json", "messages", &m["usage"]),
    ] {
        let l = s.log_line(id).await;
        assert_eq!(l["api"], api);
        assert_eq!(l["usage_source"], "backend");
        assert_eq!(
            log_number(&l, "prompt_tokens"),
            usage["input_tokens"].as_u64(),
            "{l}"
        );
        assert_eq!(
            log_number(&l, "completion_tokens"),
            usage["output_tokens"].as_u64(),
            "{l}"
        );
        assert!(log_number(&l, "prompt_tokens_estimated").unwrap() > 0);
    }

    // Streams: the reply carries an address the mock cuts into 3-character pieces, one
    // per event, and half-events per chunk.
    s.pool("pool-a")
        .configure(json!({"reply_text": format!("Contact {EMAIL} now."), "reply_chunk": 3, "split_events": true}))
        .await;
    for (path, body, id) in [
        (
            "/v1/responses",
            json!({"model": "mock-model", "input": "hi", "stream": true}),
            "r-sse",
        ),
        (
            "/v1/messages",
            json!({"model": "mock-model", "max_tokens": 64, "stream": true,
                                "messages": [{"role": "user", "content": "hi"}]}),
            "m-sse",
        ),
    ] {
        let r = post(path, body, id).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains(EMAIL), "{path}: {text}");
        let mut joined = String::new();
        let mut usage = None;
        for ev in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
            let (name, data) = ev.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
            assert_eq!(
                name.trim_start_matches("event: "),
                v["type"],
                "event lines kept"
            );
            match v["type"].as_str().unwrap() {
                "response.output_text.delta" => joined.push_str(v["delta"].as_str().unwrap()),
                "content_block_delta" => joined.push_str(v["delta"]["text"].as_str().unwrap()),
                "response.output_text.done" => assert_eq!(v["text"], "Contact [EMAIL_1] now."),
                "response.completed" => usage = v["response"]["usage"]["output_tokens"].as_u64(),
                "message_delta" => usage = v["usage"]["output_tokens"].as_u64(),
                _ => {}
            }
        }
        assert_eq!(joined, "Contact [EMAIL_1] now.", "{path}");
        let l = s.log_line(id).await;
        assert_eq!(log_number(&l, "completion_tokens"), usage, "{l}");
        assert_eq!(l["usage_source"], "backend");
    }

    // Errors in each API's shape.
    let r = post(
        "/v1/messages",
        json!({"model": "mock-model", "messages": []}),
        "m-400",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "'max_tokens' is required."}})
    );
    let r = post("/v1/responses", json!({"input": "x"}), "r-400")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "model");
    let r = client
        .post(format!("{}/v1/messages", s.gateway))
        .header("x-api-key", "sk-sluice-wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["type"], "error");
    // Token counting is governed too (redacted, counted), and generates nothing.
    let r = post(
        "/v1/messages/count_tokens",
        json!({"model": "mock-model",
        "messages": [{"role": "user", "content": format!("hi {EMAIL}")}]}),
        "ct",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let n = r.json::<Value>().await.unwrap()["input_tokens"].as_u64();
    let l = s.log_line("ct").await;
    assert_eq!(
        (
            l["api"].as_str(),
            log_number(&l, "prompt_tokens"),
            log_number(&l, "completion_tokens")
        ),
        (Some("count_tokens"), n, Some(0))
    );
    let last = s.pool("pool-a").requests().await.pop().unwrap();
    assert!(!last["body"].as_str().unwrap().contains(EMAIL));
}

/// A token budget holds for Responses and Messages: a request that cannot fit is refused
/// before it reaches the backend, in its API's shape, and what passes is charged with the
/// backend's usage.
#[tokio::test]
async fn a_token_limit_holds_for_responses_and_messages() {
    sluice_e2e::away_from_window_end(60, 10).await;
    let mut record = key_record("key_tpm", KEY, "team-tpm");
    record.limits.tokens_per_minute = Some(200);
    let s = Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![record],
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{}{path}", s.gateway))
            .header("x-api-key", KEY)
            .json(&body)
            .send()
    };
    let big_msg = json!({"model": "mock-model", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let r = post("/v1/messages", big_msg).await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error"))
    );
    let big_resp = json!({"model": "mock-model", "max_output_tokens": 500, "input": "hi"});
    let r = post("/v1/responses", big_resp).await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        s.pool("pool-a").requests().await.is_empty(),
        "refused before the backend"
    );
    // Small requests pass until the minute's budget is spent, then are refused.
    let mut passed = 0;
    let mut refused = 0;
    for i in 0..30 {
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/messages",
                json!({"model": "mock-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
            )
        } else {
            (
                "/v1/responses",
                json!({"model": "mock-model", "max_output_tokens": 16, "input": "hi"}),
            )
        };
        match post(path, body).await.unwrap().status().as_u16() {
            200 => passed += 1,
            429 => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert!(
        passed >= 3 && refused > 0,
        "passed {passed}, refused {refused}"
    );
    // What passed was charged with the backend's usage, and never more than the budget.
    let charged: u64 = eventually("the log lines", Duration::from_secs(15), || async {
        let lines: Vec<Value> = s
            .access_log()
            .into_iter()
            .filter(|l| l["status"] == 200)
            .collect();
        (lines.len() == passed).then_some(lines)
    })
    .await
    .iter()
    .map(|l| log_number(l, "prompt_tokens").unwrap() + log_number(l, "completion_tokens").unwrap())
    .sum();
    assert!(charged <= 200, "charged {charged} of a 200-token budget");
}

/// Twenty `sluice keys create` at once and a `revoke` among them: every printed key works,
/// and the revoked one stays revoked.
#[tokio::test]
async fn concurrent_key_edits_are_never_lost() {
    let s = stack().await;
    s.wait_key_updates(1).await;
    let victim = s.cli(&["keys", "create", "--tenant", "victim", "--id", "key_victim"]);
    let victim = victim.trim().to_string();
    let cli = sluice_e2e::cli_bin();
    let file = s.key_file();
    let mut children = Vec::new();
    for i in 0..20 {
        if i == 10 {
            children.push((
                None,
                std::process::Command::new(&cli)
                    .args(["keys", "revoke", "key_victim"])
                    .env("SLUICE_KEY_FILE", &file)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
        }
        children.push((
            Some(i),
            std::process::Command::new(&cli)
                .args([
                    "keys",
                    "create",
                    "--tenant",
                    &format!("t{i}"),
                    "--id",
                    &format!("key_c{i}"),
                ])
                .env("SLUICE_KEY_FILE", &file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let mut secrets = Vec::new();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        if i.is_some() {
            secrets.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
    }
    assert_eq!(secrets.len(), 20);
    let listed = s.cli(&["keys", "list"]);
    assert!(!listed.contains("key_victim"), "{listed}");
    for i in 0..20 {
        assert!(
            listed.contains(&format!("key_c{i} ")),
            "key_c{i} missing: {listed}"
        );
    }
    let client = reqwest::Client::new();
    for secret in &secrets {
        let status = eventually("the new key to work", Duration::from_secs(15), || async {
            let r = client
                .post(format!("{}/v1/chat/completions", s.gateway))
                .header("authorization", format!("Bearer {secret}"))
                .json(&sluice_e2e::chat_body(false))
                .send()
                .await
                .unwrap();
            (r.status() == 200).then_some(200)
        })
        .await;
        assert_eq!(status, 200);
    }
    let r = client
        .post(format!("{}/v1/chat/completions", s.gateway))
        .header("authorization", format!("Bearer {victim}"))
        .json(&sluice_e2e::chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the revoke was not undone");
}
