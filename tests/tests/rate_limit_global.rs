//! rate-limit, global tier: real Envoy, real sluice-ratelimit, real Redis.
use serde_json::{json, Value};
use sluice_e2e::{chat_body, eventually, key_record, log_number, RedisServer, Stack, StackOptions};
use sluice_key_auth::{KeyAuthConfig, KeyRecord};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";
const KEY: &str = "sk-sluice-e2e-global-0123456789abcdefghijkl";

fn global_config(failure_mode: &str, timeout_ms: u64) -> Value {
    json!({"key_tier": "global", "limits": [],
           "global": {"cluster": "sluice_ratelimit", "timeout_ms": timeout_ms, "failure_mode": failure_mode}})
}

fn key(rpm: Option<u64>, tpm: Option<u64>) -> KeyRecord {
    let mut k = key_record("key_global", KEY, "tg");
    k.limits.requests_per_minute = rpm;
    k.limits.tokens_per_minute = tpm;
    k
}

async fn stack(k: KeyRecord, config: Value, redis: Option<String>) -> Stack {
    Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![k],
            ..Default::default()
        },
        vars: vec![("rate_limit_config".into(), config)],
        redis,
        ..StackOptions::default()
    })
    .await
}

async fn burst(gateways: &[&str], n: usize) -> Vec<u16> {
    sluice_e2e::burst(gateways, &[KEY], n).await
}

#[tokio::test]
async fn exactly_20_of_100_concurrent_requests_in_the_global_tier() {
    let s = stack(key(Some(20), None), global_config("deny", 1000), None).await;
    sluice_e2e::away_from_window_end(60, 15).await;
    let statuses = burst(&[&s.gateway], 100).await;
    assert_eq!(
        statuses.iter().filter(|c| **c == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|c| **c == 429).count(), 80);
    assert_eq!(s.pool("pool-a").requests().await.len(), 20);
    assert_eq!(s.filter_stat("sluice.rate_limit.global.ok").await, 20);
    assert_eq!(
        s.filter_stat("sluice.rate_limit.global.over_limit").await,
        80
    );
}

#[tokio::test]
async fn two_envoys_and_two_service_replicas_share_one_budget_in_redis() {
    let redis = RedisServer::start().await;
    let a = stack(
        key(Some(20), None),
        global_config("deny", 1000),
        Some(redis.url()),
    )
    .await;
    let b = stack(
        key(Some(20), None),
        global_config("deny", 1000),
        Some(redis.url()),
    )
    .await;
    sluice_e2e::away_from_window_end(60, 15).await;
    let statuses = burst(&[&a.gateway, &b.gateway], 100).await;
    assert_eq!(
        statuses.iter().filter(|c| **c == 200).count(),
        20,
        "{statuses:?}"
    );
    let served = a.pool("pool-a").requests().await.len() + b.pool("pool-a").requests().await.len();
    assert_eq!(served, 20);
}

#[tokio::test]
async fn global_token_reservations_are_refunded_exactly() {
    let redis = RedisServer::start().await;
    let s = stack(
        key(None, Some(2000)),
        global_config("deny", 1000),
        Some(redis.url()),
    )
    .await;
    let mut body = chat_body(true);
    body["max_tokens"] = json!(500);
    let r = s.post_json(CHAT, KEY, "g-1", &body).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let line = s.log_line("g-1").await;
    // Settled with the backend's usage; the next request reserves the gateway's count.
    let used = log_number(&line, "prompt_tokens").unwrap()
        + log_number(&line, "completion_tokens").unwrap();
    let prompt = log_number(&line, "prompt_tokens_estimated").unwrap();
    // Once the refund (500 reserved, 16 generated) reaches the service, exactly
    // 2000 - used is left: a request reserving all of it fits, and leaves 0.
    let left = 2000 - used;
    let mut fits = chat_body(false);
    fits["max_tokens"] = json!(left - prompt);
    let remaining = eventually(
        "the refund to reach the service",
        Duration::from_secs(5),
        || async {
            let r = s.post_json(CHAT, KEY, "g-fit", &fits).await;
            (r.status() == 200).then(|| {
                r.headers()["x-ratelimit-remaining-tokens"]
                    .to_str()
                    .unwrap()
                    .to_string()
            })
        },
    )
    .await;
    assert_eq!(remaining, "0", "the budget after refund is not exact");
}

#[tokio::test]
async fn service_down_deny_answers_503_fast() {
    let mut s = stack(key(Some(1000), None), global_config("deny", 50), None).await;
    assert_eq!(burst(&[&s.gateway], 1).await, [200]);
    s.kill("ratelimit");
    let started = Instant::now();
    let r = s.post_json(CHAT, KEY, "down", &chat_body(false)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hung for {:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        s.filter_stat("sluice.rate_limit.global.failure.denied")
            .await
            >= 1
    );
}

#[tokio::test]
async fn service_down_local_falls_back_to_local_limits_and_allow_lets_through() {
    let mut s = stack(key(Some(20), None), global_config("local", 50), None).await;
    s.kill("ratelimit");
    let statuses = burst(&[&s.gateway], 60).await;
    assert_eq!(
        statuses.iter().filter(|c| **c == 200).count(),
        20,
        "{statuses:?}"
    );
    assert!(
        s.filter_stat("sluice.rate_limit.global.failure.local")
            .await
            >= 20
    );

    let mut s = stack(key(Some(5), None), global_config("allow", 50), None).await;
    s.kill("ratelimit");
    let statuses = burst(&[&s.gateway], 10).await;
    assert!(statuses.iter().all(|c| *c == 200), "{statuses:?}");
}

#[tokio::test]
async fn redis_down_makes_the_service_unavailable_and_the_filter_deny() {
    let mut redis = RedisServer::start().await;
    let s = stack(
        key(Some(1000), None),
        global_config("deny", 1000),
        Some(redis.url()),
    )
    .await;
    assert_eq!(burst(&[&s.gateway], 3).await, [200, 200, 200]);
    redis.stop();
    let started = Instant::now();
    let r = s
        .post_json(CHAT, KEY, "redis-down", &chat_body(false))
        .await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hung for {:?}",
        started.elapsed()
    );
    assert!(
        s.logs().contains("unavailable"),
        "the service should answer UNAVAILABLE"
    );
}
