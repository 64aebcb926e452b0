//! Locality through real Envoy: a pool's hosts name their region, zone and priority in the
//! same pool description as everything else. A standby region serves only when the local
//! one cannot (its hosts fail health checks, or die), with endpoint-picker choosing among
//! the local ones; zones share a priority's traffic by their weights.
use serde_json::{json, Value};
use sluice_e2e::{eventually, key_record, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::collections::BTreeMap;
use std::time::Duration;

const KEY: &str = "sk-sluice-e2e-locality-0123456789abcdefgh";

/// One stack at a time: health-check timing on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(pool: Value, hosts: Vec<(&'static str, Value)>, backends: usize) -> StackOptions {
    StackOptions {
        pools: vec!["pool-a"],
        backends,
        pool_options: vec![("pool-a", pool)],
        host_options: hosts,
        keys: KeyAuthConfig {
            keys: vec![key_record("key_l", KEY, "team-l")],
            ..Default::default()
        },
        vars: vec![(
            "endpoint_picker".into(),
            json!({"scrape_interval_ms": 200, "stale_after_ms": 2000}),
        )],
        ..StackOptions::default()
    }
}

fn chat(i: usize) -> Value {
    json!({"model": "mock-model", "max_tokens": 1,
           "messages": [{"role": "user", "content": format!("request {i}")}]})
}

/// The backends that answered `n` requests, each of which must succeed.
async fn served_by(s: &Stack, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let (status, backend) = s.chat_via(KEY, &chat(i), &[]).await;
        assert_eq!(status, 200, "request {i} (served by {backend:?})");
        out.push(backend);
    }
    out
}

/// Wait until the next request is served by `backend` (Envoy's workers see a health change
/// up to a few seconds after its admin page does).
async fn until_served_by(s: &Stack, backend: &str) {
    eventually(
        &format!("a request served by {backend}"),
        Duration::from_secs(20),
        || async {
            let (status, b) = s.chat_via(KEY, &chat(0), &[]).await;
            (status == 200 && b == backend).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_standby_region_serves_only_when_the_local_one_cannot() {
    let _guard = SERIAL.lock().await;
    let mut s = Stack::start(options(
        json!({"engine": "vllm"}),
        vec![
            ("pool-a-0", json!({"region": "local", "zone": "local-a"})),
            ("pool-a-1", json!({"region": "local", "zone": "local-b"})),
            (
                "pool-a-2",
                json!({"region": "remote", "zone": "remote-a", "priority": 1}),
            ),
        ],
        3,
    ))
    .await;
    s.wait_all_healthy().await;
    // Envoy sees the localities as described.
    let clusters = s.clusters().await;
    let zone_of = |port: u16| {
        let prefix = format!("pool-a::127.0.0.1:{port}::zone::");
        clusters
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    };
    let ports: Vec<u16> = s.backends("pool-a").iter().map(|m| m.port).collect();
    assert_eq!(
        ports.iter().map(|p| zone_of(*p)).collect::<Vec<_>>(),
        [
            Some("local-a".into()),
            Some("local-b".into()),
            Some("remote-a".into())
        ]
    );

    // Both local endpoints healthy: the standby region gets nothing.
    let served = served_by(&s, 16).await;
    assert!(
        served.iter().all(|b| b == "pool-a-0" || b == "pool-a-1"),
        "{served:?}"
    );

    // The local endpoints fail their health checks (they still answer and report load):
    // Envoy skips the hosts the picker names and its own balancing fails over.
    for m in ["pool-a-0", "pool-a-1"] {
        s.pool(m).configure(json!({"healthy": false})).await;
    }
    until_served_by(&s, "pool-a-2").await;
    let served = served_by(&s, 12).await;
    assert!(served.iter().all(|b| b == "pool-a-2"), "{served:?}");

    // Healthy again: back to the local region.
    for m in ["pool-a-0", "pool-a-1"] {
        s.pool(m).configure(json!({"healthy": true})).await;
    }
    eventually(
        "the local region serving again",
        Duration::from_secs(20),
        || async {
            let served = served_by(&s, 4).await;
            served.iter().all(|b| b != "pool-a-2").then_some(())
        },
    )
    .await;

    // Killed: retried down the picker's list, then no report and no health: the standby.
    s.kill("pool-a-0");
    s.kill("pool-a-1");
    let served = served_by(&s, 12).await;
    assert!(served.iter().all(|b| b == "pool-a-2"), "{served:?}");
}

#[tokio::test]
async fn zones_share_a_priority_by_their_weights() {
    let _guard = SERIAL.lock().await;
    let s = Stack::start(options(
        json!({"lb": "round_robin", "locality_weights": {"zone-a": 3, "zone-b": 1}}),
        vec![
            ("pool-a-0", json!({"region": "r", "zone": "zone-a"})),
            ("pool-a-1", json!({"region": "r", "zone": "zone-b"})),
        ],
        2,
    ))
    .await;
    s.wait_all_healthy().await;
    let mut counts = BTreeMap::<String, usize>::new();
    for b in served_by(&s, 200).await {
        *counts.entry(b).or_default() += 1;
    }
    // Envoy picks localities by weight (3:1); two workers each keep their own schedule.
    let a = counts.get("pool-a-0").copied().unwrap_or(0);
    let b = counts.get("pool-a-1").copied().unwrap_or(0);
    assert_eq!(a + b, 200, "{counts:?}");
    assert!(
        (130..=170).contains(&a),
        "zone-a served {a} of 200: {counts:?}"
    );
}
