//! rate-limit (local tier) through real Envoy: exact admission under concurrency, token
//! reservations settled with the real usage, slots freed on abort, early refusal.
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_e2e::{chat_body, eventually, key_record, log_number, Stack, StackOptions};

async fn burst(s: &Stack, keys: &[&str], n: usize) -> Vec<u16> {
    sluice_e2e::burst(&[&s.gateway], keys, n).await
}
use sluice_key_auth::{KeyAuthConfig, KeyRecord};
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";

async fn stack(keys: Vec<KeyRecord>, rate_limit_config: Value) -> Stack {
    Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys,
            ..Default::default()
        },
        vars: vec![("rate_limit_config".into(), rate_limit_config)],
        ..StackOptions::default()
    })
    .await
}

#[tokio::test]
async fn exactly_20_of_100_concurrent_requests_are_admitted() {
    let mut k = key_record("key_rpm", "sk-sluice-e2e-rpm-0123456789abcdefghij", "t1");
    k.limits.requests_per_minute = Some(20);
    // A tenant rule shared by two keys: one budget for both.
    let a = key_record(
        "key_ta",
        "sk-sluice-e2e-tenant-a-0123456789abcdef",
        "shared",
    );
    let b = key_record(
        "key_tb",
        "sk-sluice-e2e-tenant-b-0123456789abcdef",
        "shared",
    );
    let config = json!({"window_seconds": 3600, "limits": [
        {"name": "shared-tenant", "scope": "tenant", "match": ["shared"], "requests_per_minute": 20}
    ]});
    let s = stack(vec![k, a, b], config).await;
    // Every count in this test must stay inside one window (window_seconds: an hour).
    sluice_e2e::away_from_window_end(3600, 30).await;

    let statuses = burst(&s, &["sk-sluice-e2e-rpm-0123456789abcdefghij"], 100).await;
    assert_eq!(
        statuses.iter().filter(|c| **c == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|c| **c == 429).count(), 80);
    assert_eq!(
        s.pool("pool-a").requests().await.len(),
        20,
        "the backend saw exactly the admitted"
    );

    s.pool("pool-a").clear().await;
    let statuses = burst(
        &s,
        &[
            "sk-sluice-e2e-tenant-a-0123456789abcdef",
            "sk-sluice-e2e-tenant-b-0123456789abcdef",
        ],
        100,
    )
    .await;
    assert_eq!(
        statuses.iter().filter(|c| **c == 200).count(),
        20,
        "{statuses:?}"
    );

    // The 429 in the OpenAI shape, with retry-after and the request headers.
    let r = reqwest::Client::new()
        .post(format!("{}{CHAT}", s.gateway))
        .header("x-api-key", "sk-sluice-e2e-rpm-0123456789abcdefghij")
        .header("x-request-id", "over")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(h["x-ratelimit-limit-requests"], "20");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Refused at admission: token-counter never read or counted its body.
    let line = s.log_line("over").await;
    assert_eq!(line["status"], 429);
    assert_eq!(
        line["prompt_tokens"],
        Value::Null,
        "the body of an over-rate request was counted"
    );
    let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
    assert_eq!(record["admission"]["decided_by"], "key:requests_per_minute");
}

#[tokio::test]
async fn token_reservations_settle_with_the_streamed_usage() {
    const KEY: &str = "sk-sluice-e2e-tpm-0123456789abcdefghijklm";
    let mut k = key_record("key_tpm", KEY, "t2");
    k.limits.tokens_per_minute = Some(400);
    // A 4-second "minute" so the window reset is observable.
    let s = stack(vec![k], json!({"window_seconds": 4, "limits": []})).await;
    // Align to the start of a window so the sequence below stays in one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_window = now.as_millis() % 4000;
    tokio::time::sleep(Duration::from_millis(
        (4000 - into_window as u64) % 4000 + 50,
    ))
    .await;

    let mut body = chat_body(true);
    body["max_tokens"] = json!(200);
    let r = s.post_json(CHAT, KEY, "tpm-1", &body).await;
    assert_eq!(r.status(), 200);
    let reserved_remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "400");
    r.text().await.unwrap();
    let line = s.log_line("tpm-1").await;
    // Reserved with the gateway's own count; settled with the backend's usage.
    let prompt = log_number(&line, "prompt_tokens_estimated").unwrap();
    let backend_prompt = log_number(&line, "prompt_tokens").unwrap();
    let completion = log_number(&line, "completion_tokens").unwrap();
    assert_eq!(completion, 16, "the mock's reply, from the injected usage");
    // While streaming, prompt + 200 was held.
    assert_eq!(reserved_remaining, 400 - (prompt + 200));
    let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
    assert_eq!(record["tokens"]["reserved"], prompt + 200);
    assert_eq!(record["tokens"]["reconciled"], backend_prompt + completion);

    // After settling, exactly 400 - (backend prompt + 16) is left: a request reserving
    // exactly that fits, one more token does not.
    let left = 400 - (backend_prompt + completion);
    let mut fits = chat_body(false);
    fits["max_tokens"] = json!(left - prompt);
    let mut too_big = fits.clone();
    too_big["max_tokens"] = json!(left - prompt + 1);
    let r = s.post_json(CHAT, KEY, "tpm-too-big", &too_big).await;
    assert_eq!(r.status(), 429, "reservation {} over {left} left", left + 1);
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{left} left")),
        "{msg}"
    );
    let r = s.post_json(CHAT, KEY, "tpm-fits", &fits).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // The refund of that one (it used 16 of its reservation) makes room again.
    let line = s.log_line("tpm-fits").await;
    let used = log_number(&line, "prompt_tokens").unwrap()
        + log_number(&line, "completion_tokens").unwrap();
    let left_now = left - used;
    let mut again = chat_body(false);
    again["max_tokens"] = json!(left_now - prompt);
    let r = s.post_json(CHAT, KEY, "tpm-refunded", &again).await;
    assert_eq!(r.status(), 200, "the refund was not applied");
    r.text().await.unwrap();

    // The window resets.
    let mut big = chat_body(false);
    big["max_tokens"] = json!(300);
    eventually(
        "the token window to reset",
        Duration::from_secs(6),
        || async {
            let r = s.post_json(CHAT, KEY, "tpm-reset", &big).await;
            (r.status() == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_max_parallel_slot_is_freed_when_the_client_aborts() {
    const KEY: &str = "sk-sluice-e2e-parallel-0123456789abcdefgh";
    let mut k = key_record("key_par", KEY, "t3");
    k.limits.max_parallel = Some(1);
    let s = stack(vec![k], json!({"limits": []})).await;
    s.pool("pool-a")
        .configure(json!({"token_delay_ms": 200, "reply_tokens": 100}))
        .await;
    let r = s.post_json(CHAT, KEY, "slow", &chat_body(true)).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    // The one slot is taken.
    let second = s.post_json(CHAT, KEY, "second", &chat_body(false)).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    drop(stream); // the client aborts mid-stream
    s.pool("pool-a")
        .configure(json!({"token_delay_ms": 0}))
        .await;
    eventually(
        "the slot to be given back",
        Duration::from_secs(5),
        || async {
            let r = s
                .post_json(CHAT, KEY, "after-abort", &chat_body(false))
                .await;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    // And given back again after a normal end: no leak.
    for i in 0..5 {
        let r = s
            .post_json(CHAT, KEY, &format!("seq-{i}"), &chat_body(false))
            .await;
        assert_eq!(r.status(), 200);
    }
}

/// A request without an output cap reserves only what the budget has room for (it passes
/// under a small budget and is settled with its usage); one larger than the whole window is
/// refused with a 429 that says it can never pass and what to change, and no retry-after.
#[tokio::test]
async fn reservations_that_can_succeed_and_refusals_that_say_what_to_change() {
    sluice_e2e::away_from_window_end(60, 10).await;
    const KEY: &str = "sk-sluice-e2e-small-budget-0123456789abcdefg";
    let mut k = key_record("key_small", KEY, "t-small");
    k.limits.tokens_per_minute = Some(300);
    let s = stack(vec![k], json!({"limits": []})).await;
    // No max_tokens: the default (512) would never fit under 300 tokens/minute.
    let r = s.post_json(CHAT, KEY, "uncapped", &chat_body(false)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    r.text().await.unwrap();
    let line = s.log_line("uncapped").await;
    let record: Value = serde_json::from_str(line["ratelimit"].as_str().unwrap()).unwrap();
    let reserved = record["tokens"]["reserved"].as_u64().unwrap();
    assert!(reserved <= 300, "reserved {reserved}");
    // A cap larger than the whole budget: never fits.
    let mut body = chat_body(false);
    body["max_tokens"] = json!(1000);
    let r = s.post_json(CHAT, KEY, "never-fits", &body).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("retry-after").is_none(),
        "a retry cannot help"
    );
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert!(
        msg.contains("can never pass") && msg.contains("lower max_tokens to at most"),
        "{msg}"
    );
}
