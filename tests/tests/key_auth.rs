//! key-auth through real Envoy: header styles, denials, stripping, hot reload, streaming.
use serde_json::{json, Value};
use sluice_e2e::{chat_body, eventually, key_record, recorded_header, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::time::{Duration, Instant};

const GOOD: &str = "sk-sluice-e2e-good-0123456789abcdefghijklmnop";
const OFF: &str = "sk-sluice-e2e-disabled-0123456789abcdefghij";
const OLD: &str = "sk-sluice-e2e-expired-0123456789abcdefghijk";

fn keys() -> KeyAuthConfig {
    let mut off = key_record("key_off", OFF, "team-b");
    off.enabled = false;
    let mut old = key_record("key_old", OLD, "team-c");
    old.expires_at = Some("2020-01-01T00:00:00Z".into());
    let mut good = key_record("key_good", GOOD, "team-a");
    good.models = vec!["mock-*".into()];
    good.limits.requests_per_minute = Some(100);
    KeyAuthConfig {
        keys: vec![good, off, old],
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

async fn post(stack: &Stack, headers: &[(&str, &str)], body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.gateway))
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

#[tokio::test]
async fn every_header_style_is_accepted_and_never_reaches_upstream() {
    let s = stack().await;
    let bearer = format!("Bearer {GOOD}");
    let styles: [(&str, &str); 5] = [
        ("authorization", &bearer),
        ("authorization", &format!("bearer {GOOD}")),
        ("x-api-key", GOOD),
        ("api-key", GOOD),
        ("x-goog-api-key", GOOD),
    ];
    for (name, value) in styles {
        let r = post(&s, &[(name, value)], &chat_body(false)).await;
        assert_eq!(r.status(), 200, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
    }
    // The same key in two headers is one credential.
    let r = post(
        &s,
        &[("authorization", &bearer), ("api-key", GOOD)],
        &chat_body(false),
    )
    .await;
    assert_eq!(r.status(), 200);

    let seen = s.pool("pool-a").requests().await;
    assert_eq!(seen.len(), 6);
    for req in &seen {
        for h in CREDENTIAL_HEADERS {
            assert_eq!(recorded_header(req, h), None, "{h} reached upstream: {req}");
        }
        assert!(!req.to_string().contains(GOOD), "the key reached upstream");
    }
    assert_eq!(s.filter_stat("sluice.key_auth.allowed").await, 6);
}

#[tokio::test]
async fn missing_unknown_expired_disabled_and_conflicting_keys_get_openai_401s() {
    let s = stack().await;
    // (headers, error code, counter reason)
    type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], "missing_api_key", "missing"),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "invalid_api_key",
            "malformed",
        ),
        (
            vec![("authorization", "Bearer sk-sluice-nope".into())],
            "invalid_api_key",
            "unknown",
        ),
        (
            vec![("x-api-key", OLD.into())],
            "expired_api_key",
            "expired",
        ),
        (
            vec![("api-key", OFF.into())],
            "disabled_api_key",
            "disabled",
        ),
        (
            vec![
                ("authorization", format!("Bearer {GOOD}")),
                ("x-api-key", OFF.into()),
            ],
            "conflicting_api_keys",
            "conflicting",
        ),
    ];
    for (headers, code, reason) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&s, &headers, &chat_body(false)).await;
        assert_eq!(r.status(), 401, "{reason}");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["type"], "authentication_error", "{reason}");
        assert_eq!(body["error"]["code"], *code, "{reason}");
        assert_eq!(body["error"]["param"], Value::Null);
        for secret in [GOOD, OFF, OLD] {
            assert!(!text.contains(secret), "{reason}: key echoed");
        }
        assert_eq!(
            s.filter_stat(&format!("sluice.key_auth.denied.{reason}"))
                .await,
            1,
            "{reason} counter"
        );
    }
    assert!(
        s.pool("pool-a").requests().await.is_empty(),
        "a denied request went upstream"
    );
    assert!(s.pool("pool-b").requests().await.is_empty());
    // The denial counters carry the reason as a Prometheus label.
    let prom = s.prometheus().await;
    assert!(
        prom.contains("sluice_key_auth_denied{reason=\"expired\"} 1"),
        "{prom}"
    );
    // Keys never appear in Envoy's log or the access log.
    let everything = format!("{}{:?}", s.logs(), s.access_log());
    for secret in [GOOD, OFF, OLD] {
        assert!(!everything.contains(secret), "a key was logged");
    }
}

#[tokio::test]
async fn client_sent_internal_headers_have_no_effect() {
    let s = stack().await;
    let bearer = format!("Bearer {GOOD}");
    for _ in 0..3 {
        let r = post(
            &s,
            &[
                ("authorization", &bearer),
                ("x-sluice-route", "pool-b"),
                ("x-sluice-key-id", "someone-else"),
            ],
            &chat_body(false),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-mock-pool"],
            "pool-a",
            "the client steered routing"
        );
    }
    assert!(s.pool("pool-b").requests().await.is_empty());
    for req in s.pool("pool-a").requests().await {
        let names: Vec<&str> = req["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h[0].as_str())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with("x-sluice-")),
            "internal header forwarded: {names:?}"
        );
    }
    // Identity in the access log is the filter's, not the client's.
    let log = eventually("access log lines", Duration::from_secs(5), || async {
        let l = s.access_log();
        (l.len() >= 3).then_some(l)
    })
    .await;
    for line in log {
        assert_eq!(line["key_id"], "key_good");
        assert_eq!(line["tenant"], "team-a");
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream_cluster"], "pool-a");
    }
}

#[tokio::test]
async fn policy_is_published_as_filter_state() {
    let s = stack().await;
    let r = post(&s, &[("x-api-key", GOOD)], &chat_body(false)).await;
    assert_eq!(r.status(), 200);
    // sluice_policy is readable by the access log like by the next filters.
    let line = eventually("an access log line", Duration::from_secs(5), || async {
        s.access_log().into_iter().next()
    })
    .await;
    assert_eq!(line["key_id"], "key_good");
    let fields = [
        "timestamp",
        "request_id",
        "key_id",
        "tenant",
        "model_requested",
        "model",
        "route",
        "upstream_host",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "usage_source",
        "pii",
        "ratelimit",
        "duration_ms",
        "ttfb_ms",
    ];
    for f in fields {
        assert!(line.get(f).is_some(), "access log lacks {f}: {line}");
    }
    assert!(line["upstream_host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn keys_added_and_revoked_with_the_cli_take_effect_without_restart() {
    let s = stack().await;
    s.wait_key_updates(1).await;
    let created = s.cli(&[
        "keys", "create", "--tenant", "hot", "--id", "key_hot", "--rpm", "10",
    ]);
    let secret = created.trim().to_string();
    assert!(secret.starts_with("sk-sluice-"));
    let started = Instant::now();
    eventually(
        "the new key to be accepted",
        Duration::from_secs(10),
        || async {
            (post(&s, &[("x-api-key", &secret)], &chat_body(false))
                .await
                .status()
                == 200)
                .then_some(())
        },
    )
    .await;
    eprintln!("new key accepted after {:?}", started.elapsed());
    let listed = s.cli(&["keys", "list"]);
    assert!(listed.contains("key_hot") && !listed.contains(&secret));
    // The configuration as the filter reads it (what a switch of builds renders again): the
    // key by its digest, never its secret.
    let printed = s.cli(&["keys", "config"]);
    let config: KeyAuthConfig = serde_json::from_str(&printed).unwrap();
    assert!(
        config
            .keys
            .iter()
            .any(|k| k.id == "key_hot" && k.sha256.len() == 64),
        "{printed}"
    );
    assert!(!printed.contains(&secret));

    // A slow stream is in flight with the key while the key is revoked: it completes.
    s.pool("pool-a")
        .configure(json!({"token_delay_ms": 150, "reply_tokens": 20}))
        .await;
    let in_flight = post(&s, &[("x-api-key", &secret)], &chat_body(true)).await;
    assert_eq!(in_flight.status(), 200);
    s.cli(&["keys", "revoke", "key_hot"]);
    let revoked_at = Instant::now();
    eventually(
        "the revoked key to be refused",
        Duration::from_secs(10),
        || async {
            (post(&s, &[("x-api-key", &secret)], &json!({}))
                .await
                .status()
                == 401)
                .then_some(())
        },
    )
    .await;
    eprintln!("revoked key refused after {:?}", revoked_at.elapsed());
    let text = in_flight
        .text()
        .await
        .expect("the in-flight stream completes");
    assert!(text.ends_with("data: [DONE]\n\n"), "stream cut: {text}");
    // Other keys kept working throughout.
    assert_eq!(
        post(&s, &[("x-api-key", GOOD)], &json!({})).await.status(),
        400
    );
    assert_eq!(
        s.stat("extension_config_discovery.http_filter.sluice.key_auth.update_rejected")
            .await,
        0
    );
}

#[tokio::test]
async fn an_invalid_key_file_is_rejected_and_the_previous_keys_keep_serving() {
    let s = stack().await;
    s.wait_key_updates(1).await;
    let path = s.key_file();
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let slot = doc.pointer_mut(s.key_config_pointer()).unwrap();
    // An unknown field: deny_unknown_fields makes on_configure refuse it.
    *slot = Value::String(r#"{"keys":[],"typo_field":true}"#.into());
    sluice_cli::render::write_atomic(&path, doc.to_string().as_bytes()).unwrap();
    eventually(
        "the update to be rejected",
        Duration::from_secs(10),
        || async {
            (s.stat("extension_config_discovery.http_filter.sluice.key_auth.update_rejected")
                .await
                >= 1)
                .then_some(())
        },
    )
    .await;
    let r = post(&s, &[("x-api-key", GOOD)], &chat_body(false)).await;
    assert_eq!(r.status(), 200, "the previous keys must keep serving");
    assert!(
        s.logs().contains("configuration rejected"),
        "the reason is logged"
    );
    // And the CLI refuses to work on a file it cannot read.
    let out = std::process::Command::new(sluice_e2e::cli_bin())
        .args(["keys", "list"])
        .env("SLUICE_KEY_FILE", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    use futures::StreamExt;
    let s = stack().await;
    // 12 tokens, 150 ms apart: the last chunk is produced ~2 s after the first.
    s.pool("pool-a")
        .configure(json!({"token_delay_ms": 150, "reply_tokens": 12}))
        .await;
    let start = Instant::now();
    let r = post(&s, &[("x-api-key", GOOD)], &chat_body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    eprintln!(
        "{} chunks; first at {first:?}, last at {last:?}",
        arrivals.len()
    );
    assert!(
        arrivals.len() >= 10,
        "chunks were coalesced: {}",
        arrivals.len()
    );
    assert!(
        last - first >= Duration::from_millis(1200),
        "the response was buffered: first {first:?}, last {last:?}"
    );
}
