//! endpoint-picker through real Envoy: two simulated engines in one pool (sluice-mock-llm's
//! engine simulation: batch slots, a queue, vLLM's /metrics with a lag). A busy endpoint is
//! avoided within a scrape interval and used again once it drains; a conversation stays on
//! one endpoint; a client cannot choose the endpoint; a killed endpoint is retried.
use serde_json::{json, Value};
use sluice_e2e::{engine_metric, eventually, key_record, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::time::Duration;

const KEY: &str = "sk-sluice-e2e-picker-0123456789abcdefghij";
const CHAT: &str = "/v1/chat/completions";

/// One stack at a time: load measurements on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stack() -> (Stack, tokio::sync::MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let stack = Stack::start(sim_pool(
        2,
        2000,
        json!({"engine": "vllm"}),
        json!({"scrape_interval_ms": 200, "stale_after_ms": 2000}),
        vec![key_record("key_p", KEY, "team-p")],
    ))
    .await;
    (stack, guard)
}

/// A pool `pool-a` of two simulated engines (`slots` sequences each, `decode_us` per output
/// token, metrics lagging 100 ms), with `pool` options and the picker's `picker` settings.
fn sim_pool(
    slots: u32,
    decode_us: u32,
    pool: Value,
    picker: Value,
    keys: Vec<sluice_key_auth::KeyRecord>,
) -> StackOptions {
    StackOptions {
        pools: vec!["pool-a"],
        backends: 2,
        pool_options: vec![("pool-a", pool)],
        mock_args: [
            "--sim-slots".to_string(),
            slots.to_string(),
            "--sim-decode-us-per-token".into(),
            decode_us.to_string(),
            "--sim-metrics-lag-ms".into(),
            "100".into(),
            "--reply-tokens".into(),
            "500".into(),
        ]
        .to_vec(),
        keys: KeyAuthConfig {
            keys,
            ..Default::default()
        },
        vars: vec![("endpoint_picker".into(), picker)],
        ..StackOptions::default()
    }
}

fn chat(system: &str, turns: &[&str], max_tokens: u64) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": t}));
    }
    json!({"model": "mock-model", "max_tokens": max_tokens, "messages": messages})
}

/// POST through the gateway; the status and the backend that answered (`x-mock-pool`).
async fn call(s: &Stack, body: &Value, extra: Option<(&str, &str)>) -> (u16, String) {
    s.chat_via(KEY, body, extra.as_slice()).await
}

/// Keep `backend` busy: `n` long requests straight to it (not through the gateway), so its
/// queue grows as its engine reports it.
fn occupy(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let url = format!("{url}{CHAT}");
            tokio::spawn(async move {
                let body = chat("busy", &[&format!("long job {i}")], 600);
                let _ = reqwest::Client::new().post(url).json(&body).send().await;
            })
        })
        .collect()
}

/// Send a chat of `tokens` output tokens tagged `tag` (also its request id) through the
/// gateway with `key`, in the background: its tag, status and when it ended.
fn spawn_chat(
    s: &Stack,
    key: &'static str,
    tokens: u64,
    tag: String,
) -> tokio::task::JoinHandle<(String, u16, std::time::Instant)> {
    let gateway = s.gateway.clone();
    tokio::spawn(async move {
        let body = chat("flow", &[&tag], tokens);
        let r = reqwest::Client::new()
            .post(format!("{gateway}{CHAT}"))
            .header("authorization", format!("Bearer {key}"))
            .header("x-request-id", &tag)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        (tag, status, std::time::Instant::now())
    })
}

/// Wait until the pool's backends have received `n` chat requests in all, i.e. the gateway has
/// placed them (not a fixed sleep, which a loaded machine outruns).
async fn wait_received(s: &Stack, n: usize) {
    eventually(
        &format!("{n} requests at the backends"),
        Duration::from_secs(10),
        || async { (s.received("pool-a", CHAT).await >= n).then_some(()) },
    )
    .await;
}

/// The engine's own report, as the picker reads it.
async fn waiting(url: &str) -> f64 {
    engine_metric(url, "vllm:num_requests_waiting")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_busy_endpoint_is_avoided_and_used_again_once_it_drains() {
    let (s, _guard) = stack().await;
    let busy = s.pool("pool-a-0").url.clone();
    let jobs = occupy(&busy, 8);
    eventually(
        "the engine to report its queue",
        Duration::from_secs(10),
        || {
            let busy = busy.clone();
            async move { (waiting(&busy).await >= 4.0).then_some(()) }
        },
    )
    .await;
    // One scrape interval (200 ms) and the engine's lag (100 ms), with room.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut served = Vec::new();
    for i in 0..10 {
        // A client naming the busy endpoint is not obeyed.
        let extra = (i % 2 == 0).then_some(("x-sluice-endpoint", "127.0.0.1:1"));
        let (status, backend) = call(&s, &chat("short", &[&format!("q{i}")], 1), extra).await;
        assert_eq!(status, 200);
        served.push(backend);
    }
    assert!(
        served.iter().all(|b| b == "pool-a-1"),
        "requests went to the busy endpoint: {served:?}"
    );
    for j in jobs {
        j.await.unwrap();
    }
    // Drained: once its report says so, it gets requests again.
    eventually(
        "the drained endpoint to get requests",
        Duration::from_secs(15),
        || {
            let s = &s;
            async move {
                let mut on_first = 0;
                for i in 0..10 {
                    let (_, b) = call(s, &chat("short", &[&format!("again {i}")], 1), None).await;
                    on_first += usize::from(b == "pool-a-0");
                }
                (on_first > 0).then_some(())
            }
        },
    )
    .await;
    // Per endpoint in Prometheus: the engine's gauges and the picks.
    let prom = s.prometheus().await;
    for series in [
        "sluice_endpoint_engine_waiting{",
        "sluice_endpoint_in_flight{",
        "sluice_endpoint_picks{",
    ] {
        assert!(
            prom.lines().any(|l| l.starts_with(series)
                && l.contains("pool=\"pool-a\"")
                && l.contains("endpoint=\"127_0_0_1_")),
            "no {series}..pool, endpoint..}} in\n{prom}"
        );
    }
    // The decisions are in the access log, and the internal header never reached a backend.
    let line = eventually(
        "a decision in the access log",
        Duration::from_secs(10),
        || {
            let lines = s.access_log();
            async move {
                lines
                    .into_iter()
                    .rev()
                    .find(|l| l["endpoint"].as_str().is_some_and(|e| !e.is_empty()))
            }
        },
    )
    .await;
    let decision: Value = serde_json::from_str(line["endpoint"].as_str().unwrap()).unwrap();
    assert!(
        ["load", "prefix"].contains(&decision["reason"].as_str().unwrap()),
        "{decision}"
    );
    for m in s.backends("pool-a") {
        for r in m.requests().await {
            assert!(
                sluice_e2e::recorded_header(&r, "x-sluice-endpoint").is_none(),
                "x-sluice-endpoint reached {}",
                m.name
            );
        }
    }
}

#[tokio::test]
async fn a_conversation_stays_on_the_endpoint_that_holds_its_prefix() {
    let (s, _guard) = stack().await;
    let system = "You are the SQL assistant of the data team. Answer with one query and one \
                  sentence of explanation. "
        .repeat(8);
    let mut turns: Vec<String> = vec!["How do I join orders and customers?".into()];
    let mut homes = Vec::new();
    for t in 0..6 {
        let refs: Vec<&str> = turns.iter().map(String::as_str).collect();
        let (status, backend) = call(&s, &chat(&system, &refs, 4), None).await;
        assert_eq!(status, 200);
        homes.push(backend);
        turns.push(format!("Answer {t}: SELECT ... JOIN ..."));
        turns.push(format!("And follow-up question number {t}?"));
    }
    assert!(
        homes.iter().all(|h| *h == homes[0]),
        "the conversation moved: {homes:?}"
    );
    let decisions = eventually(
        "six decisions in the access log",
        Duration::from_secs(5),
        || {
            let lines = s.access_log();
            async move {
                let d: Vec<Value> = lines
                    .iter()
                    .filter_map(|l| {
                        l["endpoint"]
                            .as_str()
                            .and_then(|e| serde_json::from_str(e).ok())
                    })
                    .collect();
                (d.len() >= 6).then_some(d)
            }
        },
    )
    .await;
    let prefixed = decisions
        .iter()
        .filter(|d| d["prefix_blocks"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(
        prefixed >= 5,
        "turns 2..6 found their prefix: {decisions:?}"
    );
}

#[tokio::test]
async fn a_killed_endpoint_is_retried_on_the_next_one_with_no_client_error() {
    let (mut s, _guard) = stack().await;
    // Fresh reports of both endpoints, then one dies between scrapes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kill("pool-a-0");
    for i in 0..12 {
        let (status, backend) = call(&s, &chat("short", &[&format!("k{i}")], 1), None).await;
        assert_eq!((status, backend.as_str()), (200, "pool-a-1"), "request {i}");
    }
}

/// Against the real engine: two llama-servers (`--metrics`), one kept busy by long
/// generations sent straight to it. The picker reads llama.cpp's own gauges
/// (`llamacpp:requests_processing`, `llamacpp:requests_deferred`) and the gateway's
/// requests go to the other server.
#[tokio::test]
async fn real_engines_the_picker_reads_llama_cpp_and_avoids_the_busy_server() {
    use sluice_e2e::engine::{Engine, Variant};
    let _guard = SERIAL.lock().await;
    // llama-server's HTTP pool starts a thread for a connection only when none is idle,
    // and two connections arriving together can both count the same idle thread: the
    // second then waits for a generation to end. With six long generations and the
    // gateway's scrapes, the test's own /metrics polls stalled for seconds that way; a
    // fixed pool larger than the connections the test opens never leaves one waiting.
    let metrics: Vec<String> = ["--metrics", "--threads-http", "16"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let Some(engine) = Engine::start_with(Variant::Plain, 2, 2, 1024, "tiny-llama", &metrics).await
    else {
        return;
    };
    let s = Stack::start(StackOptions {
        pools: vec!["pool-gpu"],
        engines: vec![("pool-gpu", engine.ports.clone())],
        pool_options: vec![(
            "pool-gpu",
            json!({"engine": "llamacpp", "max_concurrency": 2, "max_requests_per_connection": 1}),
        )],
        keys: KeyAuthConfig {
            keys: vec![key_record("key_p", KEY, "team-p")],
            ..Default::default()
        },
        vars: vec![
            (
                "model_router_config".into(),
                json!({"models": {"tiny-llama": {"targets": [{"pool": "pool-gpu"}]}}}),
            ),
            (
                "endpoint_picker".into(),
                json!({"scrape_interval_ms": 200, "stale_after_ms": 2000}),
            ),
        ],
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    let (busy, free) = (engine.ports[0], engine.ports[1]);
    let busy_url = format!("http://127.0.0.1:{busy}");
    let jobs: Vec<_> = (0..6)
        .map(|i| {
            let url = format!("{busy_url}{CHAT}");
            tokio::spawn(async move {
                let body = json!({"model": "tiny-llama", "max_tokens": 900,
                    "messages": [{"role": "user", "content": format!("write at length {i}")}]});
                let _ = reqwest::Client::new().post(url).json(&body).send().await;
            })
        })
        .collect();
    eventually(
        "llama-server to defer requests",
        Duration::from_secs(20),
        || {
            let url = busy_url.clone();
            async move {
                let deferred = engine_metric(&url, "llamacpp:requests_deferred").await?;
                (deferred >= 1.0).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ids: Vec<String> = (0..8).map(|i| format!("picker-real-{i}")).collect();
    for id in &ids {
        let body = json!({"model": "tiny-llama", "max_tokens": 4,
                          "messages": [{"role": "user", "content": id}]});
        let r = reqwest::Client::new()
            .post(format!("{}{CHAT}", s.gateway))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-request-id", id)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let hosts: Vec<String> = eventually("the access log", Duration::from_secs(5), || {
        let lines = s.access_log();
        let ids = ids.clone();
        async move {
            let hosts: Vec<String> = lines
                .iter()
                .filter(|l| ids.iter().any(|id| l["request_id"] == *id))
                .map(|l| l["upstream_host"].as_str().unwrap_or_default().to_string())
                .collect();
            (hosts.len() == ids.len()).then_some(hosts)
        }
    })
    .await;
    assert!(
        hosts.iter().all(|h| *h == format!("127.0.0.1:{free}")),
        "requests reached the busy server {busy}: {hosts:?}"
    );
    for j in jobs {
        j.abort();
    }
}

/// Flow control: a pool of two engines of one slot each (`max_concurrency: 1`), full. The
/// queued requests wait in the gateway; interactive ones are served before batch ones that
/// came earlier; nothing is lost or served twice; a wait past the bound gets 429.
#[tokio::test]
async fn a_full_pool_queues_in_the_gateway_interactive_before_batch() {
    const BATCH: &str = "sk-sluice-e2e-picker-batch-0123456789abcd";
    let _guard = SERIAL.lock().await;
    let mut batch = key_record("key_batch", BATCH, "team-batch");
    batch.priority = sluice_common::Priority::Batch;
    let s = Stack::start(sim_pool(
        1,
        2000,
        json!({"engine": "vllm", "max_concurrency": 1}),
        json!({"scrape_interval_ms": 500, "flow": {"enabled": true, "max_wait_ms": 8000}}),
        vec![key_record("key_p", KEY, "team-p"), batch],
    ))
    .await;
    s.wait_all_healthy().await;
    for b in s.backends("pool-a") {
        b.clear().await;
    }
    let send = |key: &'static str, tokens: u64, tag: String| spawn_chat(&s, key, tokens, tag);
    // Fill both endpoints (0.3 s of decoding each), then queue 3 batch and 2 interactive.
    let mut tasks = vec![
        send(KEY, 150, "fill-0".into()),
        send(KEY, 150, "fill-1".into()),
    ];
    wait_received(&s, 2).await;
    for i in 0..3 {
        tasks.push(send(BATCH, 20, format!("batch-{i}")));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..2 {
        tasks.push(send(KEY, 20, format!("interactive-{i}")));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    assert!(
        done.iter().all(|(_, status, _)| *status == 200),
        "{:?}",
        done.iter().map(|d| (&d.0, d.1)).collect::<Vec<_>>()
    );
    let end = |prefix: &str| -> Vec<std::time::Instant> {
        done.iter()
            .filter(|d| d.0.starts_with(prefix))
            .map(|d| d.2)
            .collect()
    };
    let t0 = done.iter().map(|d| d.2).min().unwrap();
    let order: Vec<(String, u128)> = done
        .iter()
        .map(|d| (d.0.clone(), (d.2 - t0).as_millis()))
        .collect();
    let decisions: Vec<Value> = s
        .access_log()
        .iter()
        .map(|l| json!([l["endpoint"], l["upstream_host"], l["duration_ms"]]))
        .collect();
    let last_interactive = end("interactive").into_iter().max().unwrap();
    let first_batch = end("batch").into_iter().min().unwrap();
    assert!(
        last_interactive <= first_batch,
        "a batch request was served before an interactive one: {order:?} {decisions:?}"
    );
    // Each request reached a backend exactly once.
    assert_eq!(s.received("pool-a", CHAT).await, 7);
    // The queued requests end last: wait for their lines (the file is flushed every 100 ms,
    // later under load) before looking for the queue's mark.
    let log = eventually("seven access-log lines", Duration::from_secs(10), || {
        let log = s.access_log();
        async move { (log.len() >= 7).then_some(log) }
    })
    .await;
    assert!(
        log.iter().any(|l| l["endpoint"]
            .as_str()
            .is_some_and(|e| e.contains("queued_ms"))),
        "no queued decision in the access log: {:?}",
        log.iter().map(|l| &l["endpoint"]).collect::<Vec<_>>()
    );
}

/// Flow control between tenants: with the pool full, one tenant floods the queue with ten
/// requests, then another sends one: it is not served after the flood (round robin
/// between tenants, within each Envoy worker's queue).
#[tokio::test]
async fn a_tenant_flooding_the_queue_does_not_starve_another() {
    const OTHER: &str = "sk-sluice-e2e-picker-other-0123456789abcd";
    let _guard = SERIAL.lock().await;
    let s = Stack::start(sim_pool(
        1,
        2000,
        json!({"engine": "vllm", "max_concurrency": 1}),
        json!({"scrape_interval_ms": 500, "flow": {"enabled": true, "max_wait_ms": 20000}}),
        vec![
            key_record("key_p", KEY, "team-p"),
            key_record("key_o", OTHER, "team-o"),
        ],
    ))
    .await;
    s.wait_all_healthy().await;
    let send = |key: &'static str, tokens: u64, tag: String| spawn_chat(&s, key, tokens, tag);
    // Fill both endpoints (0.3 s of decoding each), then the flood, then the other tenant.
    let mut tasks = vec![
        send(KEY, 150, "fill-0".into()),
        send(KEY, 150, "fill-1".into()),
    ];
    wait_received(&s, 2).await;
    for i in 0..10 {
        tasks.push(send(KEY, 20, format!("flood-{i}")));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tasks.push(send(OTHER, 20, "other".into()));
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    assert!(done.iter().all(|(_, status, _)| *status == 200));
    let mut queued: Vec<&(String, u16, std::time::Instant)> =
        done.iter().filter(|d| !d.0.starts_with("fill")).collect();
    queued.sort_by_key(|d| d.2);
    let order: Vec<&str> = queued.iter().map(|d| d.0.as_str()).collect();
    let position = order.iter().position(|t| *t == "other").unwrap();
    let decisions: Vec<Value> = s
        .access_log()
        .iter()
        .map(|l| json!([l["request_id"], l["tenant"], l["endpoint"], l["timestamp"]]))
        .collect();
    // First in first out in one queue would serve it eleventh, after the whole flood. The
    // round robin is per Envoy worker (each has its own queue; a freed slot goes to
    // whichever worker's timer fires first): over 13 runs it was served between first and
    // ninth, so this asserts only that it is not left for last (the order within a worker's
    // queue is unit-tested in flow.rs).
    assert!(
        position < 10,
        "the other tenant was served {}th: {order:?} {decisions:#?}",
        position + 1
    );
}

#[tokio::test]
async fn a_wait_past_the_bound_gets_429_with_retry_after() {
    let _guard = SERIAL.lock().await;
    let s = Stack::start(sim_pool(
        1,
        5000,
        json!({"engine": "vllm", "max_concurrency": 1}),
        json!({"scrape_interval_ms": 500, "flow": {"enabled": true, "max_wait_ms": 600}}),
        vec![key_record("key_p", KEY, "team-p")],
    ))
    .await;
    s.wait_all_healthy().await;
    for b in s.backends("pool-a") {
        b.clear().await;
    }
    let fills: Vec<_> = (0..2)
        .map(|i| {
            let gateway = s.gateway.clone();
            tokio::spawn(async move {
                let body = chat("long", &[&format!("fill {i}")], 400);
                reqwest::Client::new()
                    .post(format!("{gateway}{CHAT}"))
                    .header("authorization", format!("Bearer {KEY}"))
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    wait_received(&s, 2).await;
    let started = std::time::Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}{CHAT}", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&chat("short", &["waits"], 1))
        .send()
        .await
        .unwrap();
    // Where each request went, if the pool was not full.
    let placed = || -> Vec<Value> {
        s.access_log()
            .iter()
            .map(|l| json!([l["endpoint"], l["upstream_host"], l["status"]]))
            .collect()
    };
    assert_eq!(r.status(), 429, "{:?}", placed());
    assert_eq!(r.headers()["retry-after"], "1");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "refused after {waited:?}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "pool_saturated");
    for f in fills {
        assert_eq!(f.await.unwrap().unwrap(), 200);
    }
}
