//! `sluice usage` on a real access log: the one an end-to-end run through Envoy wrote.
use serde_json::{json, Value};
use sluice_e2e::{cli_bin, key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;

const KEY_A: &str = "sk-sluice-e2e-usage-a-0123456789abcdef01";
const KEY_B: &str = "sk-sluice-e2e-usage-b-0123456789abcdef01";

fn usage(args: &[&str]) -> String {
    let out = std::process::Command::new(cli_bin())
        .arg("usage")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice usage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn usage_totals_match_the_access_log_of_a_real_run() {
    let s = Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![
                key_record("key_a", KEY_A, "team-a"),
                key_record("key_b", KEY_B, "team-b"),
            ],
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    let calls = [
        (KEY_A, "model-x", false),
        (KEY_A, "model-x", true),
        (KEY_A, "model-y", false),
        (KEY_B, "model-x", false),
        (KEY_B, "model-x", true),
    ];
    let mut ids = Vec::new();
    for (i, (key, model, stream)) in calls.iter().enumerate() {
        let id = format!("usage-{i}");
        let body = json!({"model": model, "stream": stream,
                          "messages": [{"role": "user", "content": format!("request number {i}")}]});
        let r = s.post_json("/v1/chat/completions", key, &id, &body).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        ids.push(id);
    }
    // A refused request (no key) is in the log but is not usage.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.gateway))
        .json(&json!({"model": "model-x", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Expected totals, from the log lines themselves.
    let mut want: std::collections::BTreeMap<(String, String), (u64, u64, u64)> =
        Default::default();
    for (id, (key, model, _)) in ids.iter().zip(calls) {
        let line = s.log_line(id).await;
        let key_id = if key == KEY_A { "key_a" } else { "key_b" };
        let e = want.entry((key_id.into(), model.into())).or_default();
        e.0 += 1;
        e.1 += log_number(&line, "prompt_tokens").unwrap();
        e.2 += log_number(&line, "completion_tokens").unwrap();
    }
    let log = s.dir.path().join("access.log");
    let log = log.to_str().unwrap();
    let out: Value = serde_json::from_str(&usage(&[
        "--log",
        log,
        "--by",
        "key,model",
        "--window",
        "all",
        "--format",
        "json",
    ]))
    .unwrap();
    let rows = out["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{out}");
    for row in rows {
        let k = (
            row["key_id"].as_str().unwrap().to_string(),
            row["model"].as_str().unwrap().to_string(),
        );
        let (n, p, c) = want[&k];
        assert_eq!(row["requests"], n, "{k:?}");
        assert_eq!(row["prompt_tokens"], p, "{k:?}");
        assert_eq!(row["completion_tokens"], c, "{k:?}");
        assert!(c > 0);
    }
    // Per tenant and day, priced.
    let prices = s.dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "models": [{"model": "model-*", "input_per_million": 2.0, "output_per_million": 6.0}]}"#,
    )
    .unwrap();
    let out: Value = serde_json::from_str(&usage(&[
        "--log",
        log,
        "--by",
        "tenant",
        "--prices",
        prices.to_str().unwrap(),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(out["currency"], "USD");
    let a = out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == "team-a")
        .unwrap();
    let (p, c): (u64, u64) = want
        .iter()
        .filter(|((k, _), _)| k == "key_a")
        .fold((0, 0), |acc, (_, v)| (acc.0 + v.1, acc.1 + v.2));
    let cost = a["cost"].as_f64().unwrap();
    assert!((cost - (p as f64 * 2.0 + c as f64 * 6.0) / 1e6).abs() < 1e-9);
    // CSV and the table render too.
    let csv = usage(&[
        "--log", log, "--by", "key", "--window", "hour", "--format", "csv",
    ]);
    assert!(csv.starts_with("window,key_id,requests,"), "{csv}");
    // Two keys (a third line only if the run crossed an hour boundary).
    assert!(csv.lines().count() >= 3, "{csv}");
    let table = usage(&["--log", log]);
    assert!(
        table.contains("key_a") && table.contains("model-y"),
        "{table}"
    );
}
