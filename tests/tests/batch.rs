//! The batch API end to end: real Envoy with the whole chain, sluice-batch, mock pools; the
//! official OpenAI Python SDK as the client; the owner assertion attacked from outside.

use serde_json::{json, Value};
use sluice_common::batch::{sign, BatchClaims};
use sluice_e2e::postgres::Postgres;
use sluice_e2e::{eventually, key_record, repo_root, Stack, StackOptions, BATCH_SECRET};
use sluice_key_auth::KeyAuthConfig;
use std::time::Duration;

const OWNER: &str = "sk-sluice-batch-owner";
const OTHER: &str = "sk-sluice-batch-other";

async fn stack() -> Stack {
    Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![
                key_record("owner", OWNER, "team-a"),
                key_record("other", OTHER, "team-b"),
            ],
            ..Default::default()
        },
        // Only mock-model has a route: another model is a 404 line in the error file.
        vars: vec![(
            "model_router_config".into(),
            json!({"models": {"mock-model": {"targets": [{"pool": "pool-a"}]}}}),
        )],
        batch: true,
        ..StackOptions::default()
    })
    .await
}

fn python() -> std::path::PathBuf {
    repo_root().join(".venv/bin/python")
}

#[tokio::test]
async fn the_openai_sdk_runs_a_batch_through_the_governed_chain() {
    let s = stack().await;
    let out = std::process::Command::new(python())
        .arg(repo_root().join("tests/sdk/batch_sdk.py"))
        .env("OPENAI_BASE_URL", format!("{}/v1", s.gateway))
        .env("OPENAI_API_KEY", OWNER)
        .env("SLUICE_OTHER_KEY", OTHER)
        .env("SLUICE_BATCH_LINES", "1000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "batch_sdk.py failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let batch_id = summary["batch_id"].as_str().unwrap();
    // Every line went through the chain as the owner, at batch priority, once, logged with
    // its batch and custom id and the usage the backend reported.
    let log = eventually(
        "the access log to hold every line",
        Duration::from_secs(10),
        || {
            let log = s.access_log();
            async move {
                let lines: Vec<Value> = log
                    .into_iter()
                    .filter(|l| {
                        l["batch"]
                            .as_str()
                            .and_then(|b| serde_json::from_str::<Value>(b).ok())
                            .is_some_and(|b| b["batch_id"] == batch_id)
                    })
                    .collect();
                (lines.len() == 1000).then_some(lines)
            }
        },
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    for l in &log {
        assert_eq!(l["key_id"], "owner", "{l}");
        assert_eq!(l["tenant"], "team-a", "{l}");
        let b: Value = serde_json::from_str(l["batch"].as_str().unwrap()).unwrap();
        assert!(
            ids.insert(b["custom_id"].as_str().unwrap().to_string()),
            "twice: {l}"
        );
        if l["status"] == 200 {
            assert_eq!(l["usage_source"], "backend", "{l}");
            assert!(l["prompt_tokens"].as_str().unwrap().parse::<u64>().unwrap() > 0);
        } else {
            assert_eq!(l["status"], 404, "{l}");
        }
    }
    assert_eq!(
        log.iter().filter(|l| l["status"] == 200).count() as u64,
        summary["completed"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn nobody_can_claim_another_keys_identity() {
    let s = stack().await;
    let client = reqwest::Client::new();
    let chat = |auth: String, extra: Vec<(&'static str, String)>| {
        let mut r = client
            .post(format!("{}/v1/chat/completions", s.gateway))
            .header("authorization", auth)
            .json(&json!({"model": "mock-model", "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}));
        for (k, v) in extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let claims = BatchClaims {
        key_id: "owner".into(),
        batch_id: "batch_x".into(),
        custom_id: "c".into(),
        expires_at: sluice_batch::now_secs() + 60,
    };
    // Signed with the right secret: accepted (what sluice-batch does).
    let good = sign(&claims, BATCH_SECRET.as_bytes()).unwrap();
    assert_eq!(
        chat(format!("Bearer {good}"), vec![])
            .await
            .unwrap()
            .status(),
        200
    );
    // Another secret, a changed claim, an expired one, no signature: 401.
    let other_secret = sign(&claims, b"not-the-secret-not-the-secret-not").unwrap();
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let forged = {
        let c = BatchClaims {
            key_id: "other".into(),
            ..claims.clone()
        };
        let token = sign(&c, b"not-the-secret-not-the-secret-not").unwrap();
        format!("{}.{signature}", token.rsplit_once('.').unwrap().0)
    };
    let expired = sign(
        &BatchClaims {
            expires_at: 1,
            ..claims.clone()
        },
        BATCH_SECRET.as_bytes(),
    )
    .unwrap();
    for (what, token) in [
        ("another secret", other_secret),
        ("a changed claim", forged),
        ("expired", expired),
        ("unsigned", signed.to_string()),
    ] {
        let r = chat(format!("Bearer {token}"), vec![]).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }
    // A client's own identity headers never reach sluice-batch: the tenant is key-auth's.
    let uploaded = s.upload_batch_input(OWNER, "{}\n".into()).await;
    assert!(uploaded.starts_with("file-"), "{uploaded}");
    let files = client
        .get(format!("{}/v1/files", s.gateway))
        .header("authorization", format!("Bearer {OTHER}"))
        .header("x-sluice-tenant", "team-a")
        .header("x-sluice-key-id", "owner")
        .send()
        .await
        .unwrap();
    assert_eq!(files.status(), 200);
    let files: Value = files.json().await.unwrap();
    assert_eq!(
        files["data"],
        json!([]),
        "team-b sees team-a's files: {files}"
    );
    let up = client
        .post(format!("{}/v1/batches", s.gateway))
        .header("authorization", format!("Bearer {OWNER}"))
        .json(
            &json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 404);
    // The service itself refuses a call that did not come through key-auth.
    let direct = client
        .get(format!("{}/v1/files", s.batch_url.as_deref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    // Without a key at all, the gateway refuses the batch API.
    let anonymous = client
        .get(format!("{}/v1/batches", s.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Upload `n` chat lines as `key`; the file id.
async fn upload_lines(s: &Stack, key: &str, n: usize) -> String {
    let text: String = (0..n)
        .map(|i| {
            json!({"custom_id": format!("line-{i}"), "method": "POST",
                   "url": "/v1/chat/completions",
                   "body": {"model": "mock-model", "max_tokens": 4,
                            "messages": [{"role": "user", "content": format!("line {i}")}]}})
            .to_string()
                + "\n"
        })
        .collect();
    s.upload_batch_input(key, text).await
}

#[tokio::test]
async fn a_killed_service_resumes_every_batch_with_no_line_lost_or_twice() {
    let mut s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![key_record("owner", OWNER, "team-a")],
            ..Default::default()
        },
        // Slow lines: the kill lands mid-batch.
        mock_args: vec!["--delay-ms".into(), "300".into()],
        batch: true,
        ..StackOptions::default()
    })
    .await;
    let n = 200;
    let file = upload_lines(&s, OWNER, n).await;
    let id = s.create_batch(OWNER, &file).await;
    let path = format!("/v1/batches/{id}");
    eventually("some lines to complete", Duration::from_secs(60), || {
        let s = &s;
        let path = path.clone();
        async move {
            let b = s.get_json(OWNER, &path).await;
            (b["request_counts"]["completed"].as_u64().unwrap_or(0) >= 20).then_some(())
        }
    })
    .await;
    // SIGKILL mid-batch, twice, then let it finish.
    s.restart_batch().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.restart_batch().await;
    let done = s
        .wait_batch(OWNER, &path, "completed", Duration::from_secs(120))
        .await;
    assert_each_line_once(&s, &done, n).await;
    let (attempts, counted) = batch_usage(&s, &[&id], n).await;
    assert_eq!(counted, n as u64, "{attempts} attempts");
}

#[tokio::test]
async fn a_finished_batch_calls_its_owners_webhook_signed_and_retried() {
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};
    // A receiver that fails twice, then accepts; it keeps what it was sent.
    let got: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let got = got.clone();
                async move {
                    let mut g = got.lock().unwrap();
                    g.push((headers, body));
                    if g.len() <= 2 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = "whsec_c2x1aWNlLXdlYmhvb2stc2VjcmV0LWZvci10ZXN0cw==";
    let s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![key_record("owner", OWNER, "team-a")],
            ..Default::default()
        },
        batch: true,
        batch_webhooks: Some(json!({"tenants": {"team-a": {
            "url": format!("http://127.0.0.1:{port}/hook"), "secret": secret}}})),
        ..StackOptions::default()
    })
    .await;
    let file = upload_lines(&s, OWNER, 3).await;
    let id = s.create_batch(OWNER, &file).await;
    // Two failures (1 s and 2 s of backoff), then delivered; never again after.
    eventually(
        "the webhook to be delivered",
        Duration::from_secs(30),
        || {
            let n = got.lock().unwrap().len();
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = got.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "delivered once, after two failures");
    let (headers, body) = calls.last().unwrap();
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "batch.completed");
    assert_eq!(event["data"]["id"], id.as_str());
    // The same event each time (one id), and its signature checks out with the official
    // OpenAI SDK's verifier (the Standard Webhooks scheme).
    assert!(calls
        .iter()
        .all(|(h, _)| h["webhook-id"] == headers["webhook-id"]));
    let header = |n: &str| headers[n].to_str().unwrap().to_string();
    let verify = |payload: &str| {
        std::process::Command::new(python())
            .args([
                "-c",
                "import json, sys, openai\n\
                 c = openai.OpenAI(api_key='unused')\n\
                 h = json.loads(sys.argv[1])\n\
                 c.webhooks.verify_signature(sys.argv[2], h, secret=sys.argv[3])\n",
                &json!({"webhook-id": header("webhook-id"),
                        "webhook-timestamp": header("webhook-timestamp"),
                        "webhook-signature": header("webhook-signature")})
                .to_string(),
                payload,
                secret,
            ])
            .output()
            .unwrap()
    };
    let ok = verify(body);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let tampered = verify(&body.replace("batch.completed", "batch.cancelled"));
    assert!(!tampered.status.success(), "a changed body must not verify");
}

#[tokio::test]
async fn a_batch_never_exceeds_its_owners_token_limit() {
    let mut owner = key_record("owner", OWNER, "team-a");
    owner.limits.tokens_per_minute = Some(300);
    let s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![owner],
            ..Default::default()
        },
        batch: true,
        ..StackOptions::default()
    })
    .await;
    let file = upload_lines(&s, OWNER, 60).await;
    // The limit's windows are the clock's minutes: start where the next 8 s stay in one,
    // or the next minute's budget serves the rest and the batch completes early.
    sluice_e2e::away_from_window_end(60, 12).await;
    let id = s.create_batch(OWNER, &file).await;
    // Well inside the first minute: what the lines were charged stays within the limit,
    // the gateway refused the rest (429), and the worker took that as "later", not as the
    // lines' outcome.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let lines: Vec<Value> = s
        .access_log()
        .into_iter()
        .filter(|l| l["batch"].as_str().is_some_and(|b| b.contains(&id)))
        .collect();
    let tokens = |l: &Value| -> u64 {
        ["prompt_tokens", "completion_tokens"]
            .iter()
            .filter_map(|f| l[*f].as_str().and_then(|v| v.parse::<u64>().ok()))
            .sum()
    };
    let served: Vec<&Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    // The limit's windows are the clock's minutes (the 8 s may straddle two): what each
    // minute's lines were charged stays within it. A line counts in the minute it started
    // (its access-log timestamp, "2026-12-02T13:43:29.620Z").
    let mut per_minute = std::collections::BTreeMap::<String, u64>::new();
    for l in &served {
        let minute = l["timestamp"]
            .as_str()
            .unwrap_or("")
            .get(..16)
            .unwrap_or("");
        *per_minute.entry(minute.to_string()).or_default() += tokens(l);
    }
    let refused = lines.iter().filter(|l| l["status"] == 429).count();
    assert!(!served.is_empty(), "no line ran: {lines:?}");
    assert!(
        per_minute.values().all(|t| *t <= 300),
        "tokens charged per minute {per_minute:?}, limit 300"
    );
    assert!(refused > 0, "the limit never refused a line");
    let b = s.get_json(OWNER, &format!("/v1/batches/{id}")).await;
    assert_eq!(b["request_counts"]["failed"], 0, "{b}");
    assert_eq!(b["status"], "in_progress", "{b}");
    eprintln!(
        "first 8 s: {} lines served, {per_minute:?} tokens per minute of 300, {refused} refusals (429)",
        served.len()
    );
}

/// The batch `done` completed with `n` lines, each custom id exactly once in its output
/// file and no error file.
async fn assert_each_line_once(s: &Stack, done: &Value, n: usize) {
    assert_eq!(done["request_counts"]["completed"], n, "{done}");
    let output = reqwest::Client::new()
        .get(format!(
            "{}/v1/files/{}/content",
            s.gateway,
            done["output_file_id"].as_str().unwrap()
        ))
        .header("authorization", format!("Bearer {OWNER}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut ids: Vec<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("line-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each line exactly once in the output");
    assert!(done["error_file_id"].is_null(), "{done}");
}

/// The access log's attempts for the lines of `batches` (`n` lines each; a line sent again
/// after a kill is logged twice) and the batch requests `sluice usage` counts (each line
/// once).
async fn batch_usage(s: &Stack, batches: &[&str], n: usize) -> (usize, u64) {
    let log = s.dir.path().join("access.log");
    // Every line logged (Envoy flushes its access log every 100 ms): wait until each
    // custom id is there, not just as many records.
    let attempts = eventually("every line's access log", Duration::from_secs(10), || {
        let lines: Vec<Value> = s
            .access_log()
            .into_iter()
            .filter(|l| {
                l["batch"]
                    .as_str()
                    .is_some_and(|b| batches.iter().any(|id| b.contains(id)))
            })
            .collect();
        let distinct: std::collections::HashSet<String> = lines
            .iter()
            .filter_map(|l| l["batch"].as_str().map(str::to_string))
            .collect();
        let count = lines.len();
        async move { (distinct.len() == n * batches.len()).then_some(count) }
    })
    .await;
    let report: Value = serde_json::from_str(&s.cli(&[
        "usage",
        "--log",
        log.to_str().unwrap(),
        "--by",
        "kind",
        "--window",
        "all",
        "--format",
        "json",
    ]))
    .unwrap();
    let batch_row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "batch")
        .unwrap_or_else(|| panic!("no batch row in {report}"));
    let counted = batch_row["requests"].as_u64().unwrap_or(0);
    eprintln!(
        "{attempts} attempts for {} lines; the report counts {counted}",
        n * batches.len()
    );
    (attempts, counted)
}

#[tokio::test]
async fn two_replicas_on_postgresql_share_the_work_and_survive_kills() {
    let pg = Postgres::start().await;
    let mut s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: KeyAuthConfig {
            keys: vec![key_record("owner", OWNER, "team-a")],
            ..Default::default()
        },
        // Slow lines, few at once: each batch takes seconds, so the kills land mid-batch.
        mock_args: vec!["--delay-ms".into(), "300".into()],
        batch: true,
        batch_replicas: 2,
        batch_database: Some(pg.url.clone()),
        batch_args: vec!["--max-in-flight".into(), "4".into()],
        ..StackOptions::default()
    })
    .await;
    let n = 150;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let file = upload_lines(&s, OWNER, n).await;
        ids.push(s.create_batch(OWNER, &file).await);
    }
    let completed = |b: &Value| b["request_counts"]["completed"].as_u64().unwrap_or(0);
    // Both replicas at work, one batch each (a lease per batch).
    eventually("both batches under way", Duration::from_secs(60), || {
        let s = &s;
        let ids = ids.clone();
        async move {
            let mut under_way = true;
            for id in &ids {
                let b = s.get_json(OWNER, &format!("/v1/batches/{id}")).await;
                under_way &= completed(&b) >= 10;
            }
            under_way.then_some(())
        }
    })
    .await;
    let owners = pg.query("SELECT COUNT(DISTINCT lease_owner) FROM batches WHERE lease_until > 0");
    assert_eq!(owners, "2", "each replica holds one batch");
    // Kill one replica: the API still answers (Envoy retries on the other), and its batch
    // resumes once its lease lapses.
    s.kill_batch(0);
    for id in &ids {
        let b = s.get_json(OWNER, &format!("/v1/batches/{id}")).await;
        assert_eq!(b["id"], *id, "answered by the live replica: {b}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.start_batch_replica(0).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.kill_batch(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.start_batch_replica(1).await;
    let mut finished = Vec::new();
    for id in &ids {
        let path = format!("/v1/batches/{id}");
        finished.push(
            s.wait_batch(OWNER, &path, "completed", Duration::from_secs(120))
                .await,
        );
    }
    for done in &finished {
        assert_each_line_once(&s, done, n).await;
    }
    let batch_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (attempts, counted) = batch_usage(&s, &batch_ids, n).await;
    assert_eq!(counted, 2 * n as u64, "{attempts} attempts");
    let left = pg.query("SELECT COUNT(*) FROM lines WHERE state NOT IN ('done', 'failed')");
    assert_eq!(left, "0");
}

/// With flow control, the gateway holds batch lines while interactive requests wait for a
/// slot, and the batch resumes when they stop: one simulated engine of two slots, one of
/// them left to interactive work (`batch_headroom`), four interactive clients keeping it
/// full.
#[tokio::test]
async fn batch_work_stops_under_interactive_load_and_resumes() {
    const INTERACTIVE: &str = "sk-sluice-batch-interactive-0123";
    let s = Stack::start(StackOptions {
        pools: vec!["pool-a"],
        pool_options: vec![("pool-a", json!({"engine": "vllm", "max_concurrency": 2}))],
        mock_args: [
            "--sim-slots",
            "2",
            "--sim-decode-us-per-token",
            "10000",
            "--sim-metrics-lag-ms",
            "100",
            "--reply-tokens",
            "500",
        ]
        .map(String::from)
        .to_vec(),
        keys: KeyAuthConfig {
            keys: vec![
                key_record("owner", OWNER, "team-a"),
                key_record("app", INTERACTIVE, "team-b"),
            ],
            ..Default::default()
        },
        vars: vec![(
            "endpoint_picker".into(),
            json!({"scrape_interval_ms": 200,
                   "flow": {"enabled": true, "max_wait_ms": 30000, "batch_headroom": 1}}),
        )],
        batch: true,
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    let n = 150;
    let file = upload_lines(&s, OWNER, n).await;
    let id = s.create_batch(OWNER, &file).await;
    eventually("the batch under way", Duration::from_secs(30), || {
        let done = s.batch_records().len();
        async move { (done >= 10).then_some(()) }
    })
    .await;
    // Four clients, one request after another (0.2 s each): the engine's two slots are
    // always wanted by interactive requests, some of them waiting in the gateway.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, stop) = (format!("{}/v1/chat/completions", s.gateway), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"model": "mock-model", "max_tokens": 20,
                        "messages": [{"role": "user", "content": format!("client {c}")}]});
                    let r = reqwest::Client::new()
                        .post(&url)
                        .header("authorization", format!("Bearer {INTERACTIVE}"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                    let _ = r.bytes().await;
                }
                statuses
            })
        })
        .collect();
    // Lines already at the engine finish within a second; after that, none is let through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_from = s.batch_records().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_to = s.batch_records().len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut interactive = Vec::new();
    for c in clients {
        interactive.extend(c.await.unwrap());
    }
    assert!(
        interactive.len() >= 20 && interactive.iter().all(|s| *s == 200),
        "{interactive:?}"
    );
    assert_eq!(
        held_to, held_from,
        "batch lines answered while interactive requests waited"
    );
    // Interactive load gone: the batch resumes and completes.
    let path = format!("/v1/batches/{id}");
    let done = s
        .wait_batch(OWNER, &path, "completed", Duration::from_secs(60))
        .await;
    assert_each_line_once(&s, &done, n).await;
    eprintln!(
        "batch held at {held_from} lines for 3 s under {} interactive requests, then completed",
        interactive.len()
    );
}
