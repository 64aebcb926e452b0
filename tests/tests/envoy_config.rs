//! Every Envoy config in the repository passes `envoy --mode validate`, and Envoy's own
//! replies come back in the OpenAI error shape.
use serde_json::{json, Value};
use sluice_e2e::{envoy_bin, key_record, repo_root, write_key_file, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::collections::BTreeMap;

fn validate(config: &std::path::Path) {
    let out = std::process::Command::new(envoy_bin())
        .args(["--mode", "validate", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not validate:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_envoy_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ecds")).unwrap();
    write_key_file(
        &dir.path().join("ecds/key-auth.json"),
        &KeyAuthConfig::default(),
        false,
    );
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".yaml") {
            validate(&path);
            checked += 1;
        } else if name.ends_with(".yaml.j2") {
            // Each template in each of its modes: the filters (wasm or native) or none.
            for (filters, native) in [(true, false), (true, true), (false, false)] {
                let mut vars: BTreeMap<String, minijinja::Value> = BTreeMap::new();
                vars.insert("listen_port".into(), 8080.into());
                vars.insert("admin_port".into(), 9901.into());
                vars.insert("state_dir".into(), dir.path().to_str().unwrap().into());
                vars.insert("filters".into(), filters.into());
                if native {
                    vars.insert("native".into(), true.into());
                    let module = sluice_e2e::native_module();
                    vars.insert("native_module".into(), module.to_str().unwrap().into());
                }
                // The batch API's routes and cluster.
                vars.insert("batch_port".into(), 8090.into());
                vars.insert(
                    "wasm_dir".into(),
                    sluice_e2e::wasm_dir().to_str().unwrap().into(),
                );
                vars.insert(
                    "pools".into(),
                    // Every pool form: one host, several, maglev / ring hash, failover.
                    minijinja::Value::from_serialize(json!([
                        {"name": "pool-a", "host": "127.0.0.1", "port": 9001},
                        {"name": "pool-b", "host": "localhost", "port": 9002},
                        {"name": "pool-small", "failover": ["pool-a", "pool-b"],
                         "hosts": [{"host": "127.0.0.1", "port": 9003}, {"host": "127.0.0.1", "port": 9004}]},
                        {"name": "pool-large", "lb": "maglev",
                         "hosts": [{"host": "127.0.0.1", "port": 9005}, {"host": "127.0.0.1", "port": 9006}]},
                        {"name": "pool-ring", "lb": "ring_hash", "host": "127.0.0.1", "port": 9007}
                    ])),
                );
                let out = dir.path().join(format!("{name}.{filters}.{native}.yaml"));
                sluice_cli::render::render_file(&path, &out, &vars).unwrap();
                validate(&out);
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "no Envoy config found to validate");
}

#[tokio::test]
async fn envoy_local_replies_use_the_openai_error_shape() {
    let secret = "sk-sluice-e2e-local-replies-0123456789abcdef";
    let s = Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![key_record("key_lr", secret, "t")],
            ..Default::default()
        },
        vars: vec![("max_request_bytes".into(), json!(4096))],
        ..StackOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let big = "x".repeat(10_000);
    let r = client
        .post(format!("{}/v1/chat/completions", s.gateway))
        .header("x-api-key", secret)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "request_too_large");

    // Every pool down: Envoy's 503 in the OpenAI shape.
    for p in &s.pools {
        p.configure(json!({"healthy": false})).await;
    }
    let r = sluice_e2e::eventually(
        "the pools to be marked unhealthy",
        std::time::Duration::from_secs(15),
        || async {
            let r = client
                .post(format!("{}/v1/chat/completions", s.gateway))
                .header("x-api-key", secret)
                .json(&sluice_e2e::chat_body(false))
                .send()
                .await
                .unwrap();
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "upstream_unavailable");
}

/// The endpoint-picker configuration the template renders for `batch_port` set or not, and
/// `endpoint_picker` given or not: its `flow` object.
fn rendered_flow(batch: bool, picker: Option<Value>) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    vars.insert("listen_port".into(), 8080.into());
    vars.insert("admin_port".into(), 9901.into());
    vars.insert("state_dir".into(), dir.path().to_str().unwrap().into());
    vars.insert("filters".into(), true.into());
    vars.insert("wasm_dir".into(), "/wasm".into());
    vars.insert(
        "pools".into(),
        minijinja::Value::from_serialize(json!([{"name": "pool-a", "engine": "vllm",
            "max_concurrency": 4, "host": "127.0.0.1", "port": 9001}])),
    );
    if batch {
        vars.insert("batch_port".into(), 8090.into());
    }
    if let Some(p) = picker {
        vars.insert(
            "endpoint_picker".into(),
            minijinja::Value::from_serialize(p),
        );
    }
    let out = dir.path().join("envoy.yaml");
    sluice_cli::render::render_file(&repo_root().join("envoy/envoy.yaml.j2"), &out, &vars).unwrap();
    // The picker's configuration is a JSON string in the YAML (its quotes escaped); `flow`
    // is a flat object.
    let text = std::fs::read_to_string(&out).unwrap();
    let at = text.find("\\\"flow\\\":").expect("endpoint-picker's flow") + 9;
    let end = at + text[at..].find('}').unwrap() + 1;
    serde_json::from_str(&text[at..end].replace("\\\"", "\"")).unwrap()
}

#[test]
fn flow_control_is_on_by_default_when_the_batch_service_is_configured() {
    assert_eq!(rendered_flow(true, None), json!({"enabled": true}));
    assert_eq!(rendered_flow(false, None), json!({"enabled": false}));
    // An operator's choice stands.
    assert_eq!(
        rendered_flow(true, Some(json!({"flow": {"enabled": false}}))),
        json!({"enabled": false})
    );
}
