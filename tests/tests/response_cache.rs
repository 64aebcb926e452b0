//! response-cache through real Envoy: a repeated request answered without reaching the
//! backend (JSON and streams, either way round), never across tenants, keyed on the
//! redacted prompt, `Cache-Control`, TTL, size, failed and cut answers, the access log and
//! the metrics.
use serde_json::{json, Value};
use sluice_e2e::{eventually, key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::time::Duration;

const KEY_A: &str = "sk-sluice-e2e-cache-team-a-0123456789abcdef";
const KEY_B: &str = "sk-sluice-e2e-cache-team-b-0123456789abcdef";
const CHAT: &str = "/v1/chat/completions";

async fn stack() -> Stack {
    Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![
                key_record("key_a", KEY_A, "team-a"),
                key_record("key_b", KEY_B, "team-b"),
            ],
            ..Default::default()
        },
        vars: vec![(
            "response_cache".into(),
            json!({"max_entry_bytes": 16384, "rules": [
                {"models": ["*"], "apis": ["embeddings"]},
                {"models": ["short-ttl"], "apis": ["chat"], "ttl_s": 1},
                {"models": ["public-faq"], "apis": ["chat"], "shared": true},
                {"models": ["*"], "apis": ["chat", "completions", "responses", "messages"]}]}),
        )],
        ..StackOptions::default()
    })
    .await
}

async fn post(
    s: &Stack,
    path: &str,
    key: &str,
    id: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", s.gateway))
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", id)
        .json(body);
    if let Some(c) = cache_control {
        r = r.header("cache-control", c);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let said = r
        .headers()
        .get("x-sluice-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (status, said, r.text().await.unwrap())
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "mock-model", "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": text}]})
}

/// The content of a chat stream's deltas (or of a JSON answer's message).
fn content(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .into();
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

async fn backend_calls(s: &Stack) -> usize {
    let mut n = 0;
    for b in s.backends("pool-a") {
        n += b.requests().await.len();
    }
    n
}

fn cache_fact(line: &Value) -> Value {
    serde_json::from_str(line["cache"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_same_request_twice_reaches_the_backend_once_streamed_or_not() {
    let s = stack().await;
    // Embeddings, JSON: the second answer is the first, byte for byte.
    let body = json!({"model": "mock-embed", "input": ["the same text"]});
    let first = post(&s, "/v1/embeddings", KEY_A, "emb-1", &body, None).await;
    let second = post(&s, "/v1/embeddings", KEY_A, "emb-2", &body, None).await;
    assert_eq!((first.0, first.1.as_deref()), (200, Some("miss")));
    assert_eq!((second.0, second.1.as_deref()), (200, Some("hit")));
    assert_eq!(first.2, second.2);
    assert_eq!(backend_calls(&s).await, 1);
    // Chat, streamed first: stored when the stream completes; then a stream and a JSON
    // request of the same conversation are both answered from it.
    let streamed = post(&s, CHAT, KEY_A, "chat-1", &chat("Say hi", true), None).await;
    assert_eq!(streamed.1.as_deref(), Some("miss"));
    let text = content(&streamed.2);
    assert!(!text.is_empty());
    let again = post(&s, CHAT, KEY_A, "chat-2", &chat("Say hi", true), None).await;
    assert_eq!(again.1.as_deref(), Some("hit"));
    assert!(again.2.ends_with("data: [DONE]\n\n"), "{}", again.2);
    assert!(
        !again.2.contains("\"usage\""),
        "usage only when asked: {}",
        again.2
    );
    assert_eq!(content(&again.2), text);
    let json_hit = post(&s, CHAT, KEY_A, "chat-3", &chat("Say hi", false), None).await;
    assert_eq!(json_hit.1.as_deref(), Some("hit"));
    assert_eq!(content(&json_hit.2), text);
    assert_eq!(backend_calls(&s).await, 2, "one embedding, one chat");
    // The usage log: a hit is logged with its tokens and what it saved.
    let miss = s.log_line("chat-1").await;
    let hit = s.log_line("chat-3").await;
    assert_eq!(cache_fact(&miss)["result"], "stored");
    assert_eq!(cache_fact(&hit)["result"], "hit");
    assert_eq!(cache_fact(&hit)["tier"], "local");
    assert!(cache_fact(&hit)["saved_ms"].is_u64());
    assert_eq!(
        log_number(&hit, "completion_tokens"),
        log_number(&miss, "completion_tokens")
    );
    assert!(log_number(&hit, "prompt_tokens").unwrap() > 0);
    assert!(
        !hit["upstream_host"]
            .as_str()
            .is_some_and(|h| h.contains(':')),
        "a hit reaches no backend: {hit}"
    );
    let prom = s.prometheus().await;
    assert!(
        prom.lines().any(|l| l.starts_with("sluice_cache_hit{")
            && l.contains("cache_tier=\"local\"")
            && l.ends_with(" 2")),
        "{prom}"
    );
}

#[tokio::test]
async fn tenants_never_share_an_entry() {
    let s = stack().await;
    let body = json!({"model": "mock-embed", "input": "shared text"});
    let a = post(&s, "/v1/embeddings", KEY_A, "t-a", &body, None).await;
    let b = post(&s, "/v1/embeddings", KEY_B, "t-b", &body, None).await;
    assert_eq!(a.1.as_deref(), Some("miss"));
    assert_eq!(
        b.1.as_deref(),
        Some("miss"),
        "another tenant's entry is not served"
    );
    assert_eq!(backend_calls(&s).await, 2);
    // Unless the operator shares a model's answers across tenants.
    let faq = json!({"model": "public-faq", "temperature": 0,
        "messages": [{"role": "user", "content": "Opening hours?"}]});
    let a = post(&s, CHAT, KEY_A, "faq-a", &faq, None).await;
    let b = post(&s, CHAT, KEY_B, "faq-b", &faq, None).await;
    assert_eq!(
        (a.1.as_deref(), b.1.as_deref()),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(backend_calls(&s).await, 3);
}

#[tokio::test]
async fn the_key_is_the_redacted_prompt() {
    let s = stack().await;
    // Two prompts that differ only in an e-mail address redact to the same text: the second
    // is a hit, and neither answer holds an address (the backend never saw one).
    let first = post(
        &s,
        CHAT,
        KEY_A,
        "pii-1",
        &chat("Write to ada@example.com", false),
        None,
    )
    .await;
    let second = post(
        &s,
        CHAT,
        KEY_A,
        "pii-2",
        &chat("Write to bob@example.org", false),
        None,
    )
    .await;
    assert_eq!(first.1.as_deref(), Some("miss"));
    assert_eq!(second.1.as_deref(), Some("hit"));
    for b in s.backends("pool-a") {
        for r in b.requests().await {
            let sent = r["body"].to_string();
            assert!(
                !sent.contains("@example"),
                "PII reached the backend: {sent}"
            );
        }
    }
    assert!(!second.2.contains("ada@example.com"));
}

#[tokio::test]
async fn client_control_ttl_size_and_failures_decide_what_is_stored() {
    let s = stack().await;
    let mock = &s.backends("pool-a")[0];
    // no-cache: not looked up, still stored; no-store: looked up, not stored.
    let body = chat("control", false);
    let r = post(&s, CHAT, KEY_A, "cc-1", &body, Some("no-cache")).await;
    assert_eq!(r.1.as_deref(), Some("bypass"));
    let r = post(&s, CHAT, KEY_A, "cc-2", &body, None).await;
    assert_eq!(
        r.1.as_deref(),
        Some("hit"),
        "stored by the no-cache request"
    );
    let r = post(&s, CHAT, KEY_A, "cc-3", &body, Some("no-cache")).await;
    assert_eq!(r.1.as_deref(), Some("bypass"));
    let body = chat("not stored", false);
    post(&s, CHAT, KEY_A, "ns-1", &body, Some("no-store")).await;
    let r = post(&s, CHAT, KEY_A, "ns-2", &body, None).await;
    assert_eq!(r.1.as_deref(), Some("miss"));
    // A sampled request is not cached (the rule caches deterministic ones only).
    let sampled = json!({"model": "mock-model", "temperature": 0.9,
        "messages": [{"role": "user", "content": "x"}]});
    let r = post(&s, CHAT, KEY_A, "sampled", &sampled, None).await;
    assert_eq!(r.1.as_deref(), Some("bypass"));
    // TTL: the short-ttl model's entries live one second.
    let short =
        json!({"model": "short-ttl", "seed": 1, "messages": [{"role": "user", "content": "t"}]});
    post(&s, CHAT, KEY_A, "ttl-1", &short, None).await;
    assert_eq!(
        post(&s, CHAT, KEY_A, "ttl-2", &short, None)
            .await
            .1
            .as_deref(),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        post(&s, CHAT, KEY_A, "ttl-3", &short, None)
            .await
            .1
            .as_deref(),
        Some("miss")
    );
    // Too large to store (max_entry_bytes 16 KiB): served, not stored.
    mock.configure(json!({"reply_tokens": 6000})).await;
    let big = chat("a long answer", false);
    let r = post(&s, CHAT, KEY_A, "big-1", &big, None).await;
    assert!(r.2.len() > 16384, "{}", r.2.len());
    assert_eq!(
        post(&s, CHAT, KEY_A, "big-2", &big, None)
            .await
            .1
            .as_deref(),
        Some("miss")
    );
    mock.configure(json!({"reply_tokens": 16})).await;
    // A failed answer, a cut stream, an error event in a stream: never stored.
    mock.configure(json!({"fail_status": 500, "fail_count": 1}))
        .await;
    let failing = chat("fails once", false);
    assert_eq!(post(&s, CHAT, KEY_A, "fail-1", &failing, None).await.0, 500);
    let r = post(&s, CHAT, KEY_A, "fail-2", &failing, None).await;
    assert_eq!((r.0, r.1.as_deref()), (200, Some("miss")));
    for (id, fault) in [
        ("cut", json!({"disconnect_after": 2})),
        ("stream-error", json!({"stream_error_after": 2})),
    ] {
        mock.configure(fault).await;
        let body = chat(id, true);
        let _ = reqwest::Client::new()
            .post(format!("{}{CHAT}", s.gateway))
            .header("authorization", format!("Bearer {KEY_A}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
        mock.configure(json!({"disconnect_after": null, "stream_error_after": null}))
            .await;
        let r = post(&s, CHAT, KEY_A, &format!("{id}-2"), &body, None).await;
        assert_eq!(
            r.1.as_deref(),
            Some("miss"),
            "{id}: a broken answer was stored"
        );
    }
    let prom = s.prometheus().await;
    assert!(
        prom.lines()
            .any(|l| l.starts_with("sluice_cache_not_stored{")
                && l.contains("cache_reason=\"too_large\"")),
        "{prom}"
    );
    // Every request above has its access-log line with the cache's fact.
    let lines = eventually("the log lines", Duration::from_secs(10), || {
        let log = s.access_log();
        async move { (log.len() >= 17).then_some(log) }
    })
    .await;
    assert!(
        lines.iter().all(|l| cache_fact(l)["result"].is_string()),
        "{lines:?}"
    );
}

/// A stack whose cache has the shared tier: sluice-cache on `redis`.
async fn shared_stack(redis: &str) -> Stack {
    Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![key_record("key_a", KEY_A, "team-a")],
            ..Default::default()
        },
        cache_service: true,
        cache_redis: Some(redis.into()),
        vars: vec![(
            "response_cache".into(),
            json!({"shared": {"cluster": "sluice_cache", "timeout_ms": 200},
                   "rules": [{"models": ["*"], "apis": ["embeddings", "chat"]}]}),
        )],
        ..StackOptions::default()
    })
    .await
}

#[tokio::test]
async fn two_envoys_share_the_redis_tier_and_an_outage_is_a_miss() {
    let mut redis = sluice_e2e::RedisServer::start().await;
    let a = shared_stack(&redis.url()).await;
    let b = shared_stack(&redis.url()).await;
    // A miss on one Envoy is stored in Redis (sent from the worker's root context within
    // a tick) and is a hit on the other, whose local tier then holds it too.
    let body = chat("shared between gateways", true);
    let first = post(&a, CHAT, KEY_A, "shared-1", &body, None).await;
    assert_eq!(first.1.as_deref(), Some("miss"));
    // (One attempt: a miss here would be stored in b's local tier and hide the shared one.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = post(&b, CHAT, KEY_A, "shared-2", &body, None).await;
    assert_eq!(second.1.as_deref(), Some("hit"));
    assert_eq!(content(&second.2), content(&first.2));
    assert_eq!(backend_calls(&a).await, 1);
    assert_eq!(
        backend_calls(&b).await,
        0,
        "the other Envoy's backend never saw it"
    );
    let line = b.log_line("shared-2").await;
    assert_eq!(cache_fact(&line)["tier"], "shared");
    let third = post(&b, CHAT, KEY_A, "shared-3", &body, None).await;
    assert_eq!(third.1.as_deref(), Some("hit"));
    assert_eq!(cache_fact(&b.log_line("shared-3").await)["tier"], "local");
    // What Redis holds was made from the redacted request: no address a client sent.
    let pii = chat("Forward this to ada@example.com please", false);
    assert_eq!(
        post(&a, CHAT, KEY_A, "shared-pii", &pii, None)
            .await
            .1
            .as_deref(),
        Some("miss")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--no-raw"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let keys: Vec<String> = cli(&["--scan", "--pattern", "sluice:cache:*"])
        .lines()
        .map(|k| k.trim_matches('"').to_string())
        .collect();
    assert_eq!(keys.len(), 2, "the chat and the PII request: {keys:?}");
    for k in &keys {
        let value = cli(&["GET", k]);
        assert!(
            value.contains("choices") && !value.contains("ada@example.com"),
            "{value}"
        );
    }
    // Redis down: every request is still served (a miss), and the errors are counted.
    redis.stop();
    for i in 0..3 {
        let r = post(
            &a,
            CHAT,
            KEY_A,
            &format!("down-{i}"),
            &chat(&format!("down {i}"), false),
            None,
        )
        .await;
        assert_eq!((r.0, r.1.as_deref()), (200, Some("miss")), "{}", r.2);
    }
    let prom = a.prometheus().await;
    assert!(
        prom.lines().any(|l| l.starts_with("sluice_cache_error{")
            && l.contains("cache_tier=\"shared\"")
            && !l.ends_with(" 0")),
        "{prom}"
    );
}

#[tokio::test]
async fn a_paraphrase_hits_the_semantic_tier_an_unrelated_prompt_or_a_second_turn_does_not() {
    // The embedding model is the mock's (a deterministic bag of words: texts sharing most
    // of their words are close) in the same pool, called by the filter directly.
    let s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![
                key_record("key_a", KEY_A, "team-a"),
                key_record("key_b", KEY_B, "team-b"),
            ],
            ..Default::default()
        },
        cache_service: true,
        vars: vec![(
            "response_cache".into(),
            json!({"shared": {"cluster": "sluice_cache", "timeout_ms": 200},
                   "semantic": {"cluster": "pool-a", "model": "mock-embed", "threshold": 0.8},
                   "rules": [{"models": ["*"], "apis": ["chat"]}]}),
        )],
        ..StackOptions::default()
    })
    .await;
    let ask = |text: &str| chat(text, false);
    let first = post(
        &s,
        CHAT,
        KEY_A,
        "sem-1",
        &ask("What is the capital of France?"),
        None,
    )
    .await;
    assert_eq!(first.1.as_deref(), Some("miss"));
    // The answer and its prompt's vector reach sluice-cache within a tick.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paraphrase = post(
        &s,
        CHAT,
        KEY_A,
        "sem-2",
        &ask("what is the capital city of France"),
        None,
    )
    .await;
    assert_eq!(paraphrase.1.as_deref(), Some("hit"), "{}", paraphrase.2);
    assert_eq!(content(&paraphrase.2), content(&first.2));
    let fact = cache_fact(&s.log_line("sem-2").await);
    assert_eq!(fact["tier"], "semantic");
    assert!(fact["similarity"].as_f64().unwrap() >= 0.8, "{fact}");
    // Unrelated: a miss.
    let unrelated = post(
        &s,
        CHAT,
        KEY_A,
        "sem-3",
        &ask("How do I bake sourdough bread?"),
        None,
    )
    .await;
    assert_eq!(unrelated.1.as_deref(), Some("miss"));
    // The same question as a conversation's second turn: not answered from the first one.
    let second_turn = json!({"model": "mock-model", "temperature": 0, "messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "What is the capital of France?"}]});
    let r = post(&s, CHAT, KEY_A, "sem-4", &second_turn, None).await;
    assert_eq!(r.1.as_deref(), Some("miss"));
    // Another tenant's paraphrase: its own index, a miss.
    let other = post(
        &s,
        CHAT,
        KEY_B,
        "sem-5",
        &ask("what is the capital city of France"),
        None,
    )
    .await;
    assert_eq!(other.1.as_deref(), Some("miss"));
    let chats = s.received("pool-a", CHAT).await;
    assert_eq!(
        chats, 4,
        "every request but the paraphrase reached the backend"
    );
}
