//! Observability: the Grafana dashboard is well-formed and every metric its queries name is
//! exported by a live stack after real traffic; tracing headers pass through and the access
//! log carries the request id.
use serde_json::{json, Value};
use sluice_e2e::{eventually, key_record, recorded_header, repo_root, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::collections::BTreeSet;
use std::time::Duration;

const KEY: &str = "sk-sluice-e2e-observability-0123456789ab";
const LIMITED: &str = "sk-sluice-e2e-observability-limited-0123";

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/grafana/dashboards/sluice.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Metric names in a PromQL expression: identifiers followed by a selector `{` or a range `[`.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            // Inside a label matcher (`{a="b"}`) identifiers are labels, skipped below.
            if matches!(bytes.get(i), Some(b'{') | Some(b'[')) {
                names.push(expr[start..i].to_string());
            }
            continue;
        }
        if c == b'{' {
            // A label matcher: skip it, quoted values (which may hold braces) included.
            while i < bytes.len() && bytes[i] != b'}' {
                if bytes[i] == b'"' {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += 1;
                    }
                }
                i += 1;
            }
        }
        if c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
        }
        i += 1;
    }
    names
}

#[test]
fn the_dashboard_is_well_formed_grafana_json() {
    let d = dashboard();
    assert_eq!(d["uid"], "sluice-overview");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().unwrap() >= 30);
    let provisioned = std::fs::read_to_string(
        repo_root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(p["type"], "timeseries");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{}: gridPos.{k}", p["title"]);
        }
        let uid = p["datasource"]["uid"].as_str().unwrap();
        assert!(
            provisioned.contains(&format!("uid: {uid}")),
            "datasource {uid} not provisioned"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for t in targets {
            assert!(t["refId"].is_string());
            assert!(!metric_names(t["expr"].as_str().unwrap()).is_empty(), "{t}");
        }
    }
    assert_eq!(
        metric_names(r#"sum by (a) (rate(x_total{a="b{c}"}[1m])) / y_bucket[5m]"#),
        ["x_total", "y_bucket"]
    );
}

#[tokio::test]
async fn every_dashboard_metric_is_exported_by_a_live_stack() {
    let mut limited = key_record("key_limited", LIMITED, "team-limited");
    limited.limits.requests_per_minute = Some(1);
    let s = Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![key_record("key_obs", KEY, "team-obs"), limited],
            ..Default::default()
        },
        // An engine pool: endpoint-picker's gauges (the mock serves vLLM's /metrics).
        pool_options: vec![("pool-a", json!({"engine": "vllm"}))],
        // The response cache: two slots (a third entry evicts one), small entries only,
        // and a shared tier that is down (its lookups are errors).
        vars: vec![
            (
                "response_cache".into(),
                json!({"max_entry_bytes": 2048, "local": {"slots": 2},
                       "shared": {"cluster": "sluice_cache", "timeout_ms": 100},
                       "rules": [{"models": ["*"], "apis": ["chat", "embeddings"], "when": "always"}]}),
            ),
            ("cache_port".into(), json!(sluice_e2e::engine::free_port())),
        ],
        ..StackOptions::default()
    })
    .await;
    // The picker's engine gauges (defined when the filter is configured, set at each
    // scrape).
    eventually("the engine gauges", Duration::from_secs(10), || async {
        s.prometheus()
            .await
            .contains("sluice_endpoint_engine_waiting{")
            .then_some(())
    })
    .await;
    // Traffic of every kind the dashboard shows: JSON and streamed chats, PII, a 429.
    for (i, stream) in [false, true].into_iter().enumerate() {
        let body = json!({"model": "mock-model", "stream": stream, "messages": [
            {"role": "user", "content": format!("mail me at jane{i}@example.org")}]});
        let r = s
            .post_json("/v1/chat/completions", KEY, &format!("obs-{i}"), &body)
            .await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    // The cache: a hit, a bypass, an answer too large to store.
    let body = json!({"model": "mock-model", "messages": [
        {"role": "user", "content": "mail me at jane0@example.org"}]});
    let hit = s
        .post_json("/v1/chat/completions", KEY, "obs-hit", &body)
        .await;
    assert_eq!(hit.headers()["x-sluice-cache"], "hit");
    let bypass = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .header("cache-control", "no-cache")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bypass.headers()["x-sluice-cache"], "bypass");
    let many: Vec<String> = (0..200).map(|i| format!("text {i}")).collect();
    let big = json!({"model": "mock-model", "input": many});
    let r = s.post_json("/v1/embeddings", KEY, "obs-big", &big).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let body = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]});
    let first = s
        .post_json("/v1/chat/completions", LIMITED, "obs-l1", &body)
        .await;
    assert_eq!(first.status(), 200);
    let second = s
        .post_json("/v1/chat/completions", LIMITED, "obs-l2", &body)
        .await;
    assert_eq!(second.status(), 429);
    s.log_line("obs-l2").await;

    let prom = s.prometheus().await;
    let exported: BTreeSet<&str> = prom
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut missing = Vec::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                if !exported.contains(name.as_str()) {
                    missing.push(format!("{} ({})", name, p["title"]));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

#[tokio::test]
async fn tracing_headers_pass_through_and_the_request_id_is_logged() {
    let s = Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![key_record("key_obs", KEY, "team-obs")],
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", "trace-me-1")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .json(&json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(recorded_header(&seen[0], "traceparent"), Some(traceparent));
    assert_eq!(recorded_header(&seen[0], "tracestate"), Some("vendor=1"));
    assert_eq!(
        recorded_header(&seen[0], "x-request-id"),
        Some("trace-me-1")
    );
    let line = s.log_line("trace-me-1").await;
    assert_eq!(line["request_id"], "trace-me-1");
}
