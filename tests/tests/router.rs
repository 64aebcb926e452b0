//! model-router and the GPU pools through real Envoy, two mock backends per pool: aliases to
//! pools and upstream models, canary weights, auto tiers, errors, `/v1/models`, health
//! checks, failover within and across pools, no retry once a stream has begun, and
//! prefix / session affinity on a maglev pool.
use serde_json::{json, Value};
use sluice_e2e::{eventually, key_record, recorded_header, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEY: &str = "sk-sluice-e2e-router-all-0123456789abcdef";
const SMALL_KEY: &str = "sk-sluice-e2e-router-small-0123456789abcd";
const CHAT: &str = "/v1/chat/completions";

/// One router stack at a time: each has five processes of its own, and on two cores
/// parallel stacks starve each other's health checks (a starved health check marks a
/// backend unhealthy and moves traffic, which these tests measure).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stack() -> (Stack, tokio::sync::MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let mut small_only = key_record("key_small", SMALL_KEY, "team-small");
    small_only.models = vec!["small".into()];
    let stack = Stack::start(StackOptions {
        pools: vec!["pool-small", "pool-large"],
        backends: 2,
        pool_options: vec![
            ("pool-small", json!({"failover": ["pool-large"]})),
            ("pool-large", json!({"lb": "maglev"})),
        ],
        keys: KeyAuthConfig {
            keys: vec![key_record("key_all", KEY, "team-all"), small_only],
            ..Default::default()
        },
        vars: vec![(
            "model_router_config".into(),
            json!({
                "models": {
                    "small": {"targets": [{"pool": "pool-small", "model": "org/small-8b"}]},
                    "large": {"targets": [{"pool": "pool-large", "model": "org/large-70b"}]},
                    "canary": {"targets": [
                        {"pool": "pool-small", "model": "org/small-8b", "weight": 90},
                        {"pool": "pool-large", "model": "org/large-70b", "weight": 10}]},
                    "auto": {"auto": {"rules": [{"max_prompt_tokens": 50, "model": "small"}],
                                      "default": "large"}}
                },
                "affinity": {"from": ["session", "prefix"], "prefix_bytes": 256}
            }),
        )],
        ..StackOptions::default()
    })
    .await;
    (stack, guard)
}

fn chat(model: &str, system: &str, user: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]})
}

/// POST; returns the status and the backend that answered (`x-mock-pool`).
async fn call(s: &Stack, key: &str, body: &Value) -> (u16, String) {
    s.chat_via(key, body, &[]).await
}

async fn recorded(s: &Stack, pool: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for m in s.backends(pool) {
        all.extend(m.requests().await);
    }
    all
}

async fn clear(s: &Stack) {
    for m in &s.pools {
        m.clear().await;
    }
}

#[tokio::test]
async fn aliases_land_on_their_pool_with_the_upstream_model() {
    let (s, _serial) = stack().await;
    for (alias, pool, upstream) in [
        ("small", "pool-small", "org/small-8b"),
        ("large", "pool-large", "org/large-70b"),
    ] {
        clear(&s).await;
        let id = format!("route-{alias}");
        let r = s
            .post_json(CHAT, KEY, &id, &chat(alias, "Be brief.", "Hello"))
            .await;
        assert_eq!(r.status(), 200);
        let seen = recorded(&s, pool).await;
        assert_eq!(seen.len(), 1, "{alias} did not reach {pool}");
        let body: Value = serde_json::from_str(seen[0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["model"], upstream);
        assert_eq!(body["messages"][1]["content"], "Hello");
        assert_eq!(recorded_header(&seen[0], "x-sluice-route"), None);
        assert_eq!(recorded_header(&seen[0], "x-sluice-affinity"), None);
        let line = s.log_line(&id).await;
        assert_eq!(line["model_requested"], alias);
        assert_eq!(line["model"], upstream);
        assert_eq!(line["route"], pool);
        assert!(line["upstream_host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let prom = s.prometheus().await;
    assert!(
        prom.lines()
            .any(|l| l == "sluice_router_requests{router_model=\"small\",route=\"pool-small\"} 1"),
        "{}",
        prom.lines()
            .filter(|l| l.contains("router"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // auto: a short prompt goes to the small tier, a long one to the large tier.
    let (_, backend) = call(&s, KEY, &chat("auto", "Be brief.", "Hi")).await;
    assert!(backend.starts_with("pool-small"), "{backend}");
    let (_, backend) = call(&s, KEY, &chat("auto", "Be brief.", &"long ".repeat(100))).await;
    assert!(backend.starts_with("pool-large"), "{backend}");
    // A client-sent route header is ignored.
    let r = reqwest::Client::new()
        .post(format!("{}{CHAT}", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-sluice-route", "pool-large")
        .json(&chat("small", "s", "u"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["x-mock-pool"]
        .to_str()
        .unwrap()
        .starts_with("pool-small"));
}

#[tokio::test]
async fn errors_and_the_model_list() {
    let (s, _serial) = stack().await;
    let post = |key: &'static str, body: Value| {
        let gw = s.gateway.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{gw}{CHAT}"))
                .header("authorization", format!("Bearer {key}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    };
    let (st, v) = post(KEY, json!({"messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(
        (st, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (st, _) = post(KEY, json!({"model": 5, "messages": []})).await;
    assert_eq!(st, 400);
    let (st, v) = post(KEY, chat("gpt-17", "s", "u")).await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, v) = post(SMALL_KEY, chat("large", "s", "u")).await;
    assert_eq!(st, 403);
    assert_eq!(v["error"]["type"], "permission_error");
    for m in &s.pools {
        assert!(
            m.requests().await.is_empty(),
            "{} got a refused request",
            m.name
        );
    }
    // GET /v1/models: the public models, only those the key may use.
    let list = |key: &'static str| {
        let gw = s.gateway.clone();
        async move {
            let v: Value = reqwest::Client::new()
                .get(format!("{gw}/v1/models"))
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(KEY).await, ["auto", "canary", "large", "small"]);
    assert_eq!(list(SMALL_KEY).await, ["small"]);
}

#[tokio::test]
async fn canary_weights_hold_over_1000_requests() {
    let (s, _serial) = stack().await;
    let client = reqwest::Client::new();
    let mut to_large = 0;
    for _ in 0..20 {
        let batch = (0..50).map(|i| {
            let client = client.clone();
            let url = format!("{}{CHAT}", s.gateway);
            async move {
                let r = client
                    .post(url)
                    .header("authorization", format!("Bearer {KEY}"))
                    .json(&chat("canary", "s", &format!("u{i}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.headers()["x-mock-pool"]
                    .to_str()
                    .unwrap()
                    .starts_with("pool-large")
            }
        });
        to_large += futures::future::join_all(batch)
            .await
            .into_iter()
            .filter(|l| *l)
            .count();
    }
    // 10% of 1000: mean 100, standard deviation 9.5; 60..140 is beyond 4 sigma.
    assert!(
        (60..=140).contains(&to_large),
        "{to_large} of 1000 went to the 10% target"
    );
}

#[tokio::test]
async fn an_unhealthy_backend_stops_getting_traffic() {
    let (s, _serial) = stack().await;
    let sick = s.pool("pool-small-0");
    sick.configure(json!({"healthy": false})).await;
    let started = Instant::now();
    // Health checks run every 1 s here; one failure marks a host unhealthy, so within one
    // interval (plus the check round trip and this poll: 2 s).
    eventually(
        "pool-small-0 marked unhealthy",
        Duration::from_millis(2000),
        || async {
            s.backend_flags()
                .await
                .get(&sick.port)
                .filter(|f| f.contains("failed_active_hc"))
                .map(|_| ())
        },
    )
    .await;
    println!("marked unhealthy after {:?}", started.elapsed());
    sick.clear().await;
    for i in 0..40 {
        let (st, backend) = call(&s, KEY, &chat("small", "s", &format!("u{i}"))).await;
        assert_eq!((st, backend.as_str()), (200, "pool-small-1"));
    }
    assert!(sick.requests().await.is_empty());
}

#[tokio::test]
async fn failover_within_and_across_pools_without_client_errors() {
    let (mut s, _serial) = stack().await;
    // A backend killed mid-test: requests that pick it are retried on the other one.
    let mut statuses = Vec::new();
    for i in 0..60 {
        if i == 20 {
            s.kill("pool-small-0");
        }
        let id = format!("kill-{i}");
        let r = s
            .post_json(CHAT, KEY, &id, &chat("small", "s", &format!("u{i}")))
            .await;
        if r.status() != 200 {
            println!("{id}: {} {}", r.status(), s.log_line(&id).await);
        }
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.iter().all(|st| *st == 200), "{statuses:?}");
    // Every backend of pool-small failing (5xx, then 429 as an overloaded vLLM answers):
    // the request goes to the next pool.
    for status in [503, 429] {
        s.pool("pool-small-1")
            .configure(json!({"fail_status": status}))
            .await;
        for i in 0..10 {
            let (st, backend) = call(&s, KEY, &chat("small", "s", &format!("f{status}-{i}"))).await;
            assert_eq!(st, 200, "pool-small answering {status}");
            assert!(backend.starts_with("pool-large"), "{backend}");
        }
    }
}

#[tokio::test]
async fn a_stream_that_has_begun_is_never_retried() {
    let (s, _serial) = stack().await;
    for m in s.backends("pool-small") {
        m.configure(json!({"disconnect_after": 2, "token_delay_ms": 5}))
            .await;
    }
    let mut body = chat("small", "s", "u");
    body["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{}{CHAT}", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await; // cut by the backend
    let total = recorded(&s, "pool-small").await.len() + recorded(&s, "pool-large").await.len();
    assert_eq!(total, 1, "a started stream was retried");
}

#[tokio::test]
async fn the_same_prefix_lands_on_the_same_backend_with_load_bounded() {
    let (s, _serial) = stack().await;
    // One long system prompt, many different questions: one backend.
    let system = "You are the support assistant of ACME GPUs. ".repeat(10);
    let mut hits: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        let (st, backend) = call(&s, KEY, &chat("large", &system, &format!("question {i}"))).await;
        assert_eq!(st, 200);
        *hits.entry(backend).or_default() += 1;
    }
    let top = hits.values().max().copied().unwrap_or(0);
    assert!(top >= 95, "same prefix spread over backends: {hits:?}");
    // Different prefixes spread over both backends (the hash is not constant).
    let mut spread: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let (_, backend) = call(
            &s,
            KEY,
            &chat("large", &format!("Tenant {i} system prompt."), "q"),
        )
        .await;
        *spread.entry(backend).or_default() += 1;
    }
    assert_eq!(spread.len(), 2, "{spread:?}");
    // A hot prefix under load: the bounded-load hash spills to the other backend rather
    // than queue everything on one.
    for m in s.backends("pool-large") {
        m.configure(json!({"delay_ms": 100})).await;
        m.clear().await;
    }
    let client = reqwest::Client::new();
    let burst = (0..16).map(|i| {
        let client = client.clone();
        let url = format!("{}{CHAT}", s.gateway);
        let body = chat("large", &system, &format!("burst {i}"));
        async move {
            // Sustained load, one request every 10 ms, each held 100 ms by the backend.
            tokio::time::sleep(Duration::from_millis(10 * i)).await;
            client
                .post(url)
                .header("authorization", format!("Bearer {KEY}"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(burst).await;
    assert!(statuses.iter().all(|st| st.is_success()));
    let per_backend: Vec<usize> = {
        let mut v = Vec::new();
        for m in s.backends("pool-large") {
            v.push(m.requests().await.len());
        }
        v
    };
    assert!(
        per_backend.iter().all(|n| *n > 0),
        "16 concurrent requests of one prefix all went to one backend: {per_backend:?}"
    );
}

#[tokio::test]
async fn session_header_pins_a_backend() {
    let (s, _serial) = stack().await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..30 {
        let r = reqwest::Client::new()
            .post(format!("{}{CHAT}", s.gateway))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-session-id", "session-42")
            .json(&chat("large", &format!("different system prompt {i}"), "q"))
            .send()
            .await
            .unwrap();
        seen.insert(r.headers()["x-mock-pool"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}
