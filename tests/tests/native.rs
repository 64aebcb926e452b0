//! sluice-native in a real Envoy: Sluice plugins run as an Envoy dynamic module through
//! `EnvoyHost` (the probe filter of `sluice_testkit::probe` in four modes), with what they
//! read and write checked where Envoy's upstream and client see it.

use serde_json::Value;
use sluice_e2e::{built, recorded_header, StackBuilder, StackOptions};

/// An Envoy dynamic-module filter running `filter_name` of the native probe module.
fn native_filter(name: &str, filter_name: &str, config: &str) -> String {
    format!(
        r#"          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: native_probe, do_not_close: true}}
              filter_name: {filter_name}
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: "{config}"
"#
    )
}

#[tokio::test]
async fn a_plugin_runs_natively_in_envoy_through_the_dynamic_module_host() {
    let module = built("target/release/examples/libnative_probe.so");
    // Envoy finds `native_probe` as lib<name>.so on this path.
    std::env::set_var(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        module.parent().unwrap(),
    );
    let mut b = StackBuilder::new(StackOptions {
        pools: vec!["pool-a"],
        filters: false,
        ..StackOptions::default()
    });
    b.add_engines();
    b.start_mocks().await;
    b.write_keys();
    let config = b.render_envoy_config();
    let yaml = std::fs::read_to_string(&config).unwrap();
    let router = "          - name: envoy.filters.http.router\n";
    assert!(yaml.contains(router), "the template's router filter moved");
    // The chain's host calls (headers read, written and removed, facts published, the
    // body read and written back, the response held and read), then a body rewrite.
    let natives = native_filter("probe.chain", "probe", "chain 1")
        + &native_filter("probe.rewrite", "probe", "rewrite_body 1")
        + &native_filter("probe.attributes", "probe", "attributes 1")
        + &native_filter("probe.panic", "probe", "panic 1");
    std::fs::write(&config, yaml.replacen(router, &(natives + router), 1)).unwrap();
    let s = b.start_envoy(&config).await;

    let body = serde_json::to_string(&sluice_e2e::chat_body(false)).unwrap();
    let client = reqwest::Client::new();
    let chat = |extra: (&str, &str)| {
        client
            .post(format!("{}/v1/chat/completions", s.gateway))
            .header(extra.0, extra.1)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let r = chat(("authorization", "Bearer not-forwarded"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    // Set on the response's headers by the first probe.
    assert_eq!(header("x-sluice-cache"), "bypass");
    // Envoy's attributes, read by their ids.
    let id = header("x-probe-request-id");
    assert!(
        id.len() == 36 && id.matches('-').count() == 4,
        "request.id {id:?}"
    );
    assert_eq!(header("x-probe-code-details"), "via_upstream");
    assert_eq!(header("x-probe-code"), "200");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");

    let requests = s.pools[0].requests().await;
    let sent = requests.last().expect("the pool got the request");
    // A header written and one removed by the first probe (the routing header it also
    // writes is the gateway's own, stripped before the upstream).
    assert_eq!(recorded_header(sent, "x-probe"), Some("1"));
    assert_eq!(recorded_header(sent, "authorization"), None);
    // The body read and written back whole by the first, then replaced by the second: the
    // new bytes, once, and nothing of the old ones besides.
    assert_eq!(sent["body"].as_str(), Some(format!("{body} ").as_str()));

    // A filter that panics: the request is refused with the gateway's 500, nothing reaches
    // the pool, and Envoy goes on serving.
    let before = s.pools[0].requests().await.len();
    let r = chat(("x-probe-panic", "1")).await.unwrap();
    assert_eq!(r.status(), 500);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "gateway_error");
    assert_eq!(s.pools[0].requests().await.len(), before);
    let r = chat(("x-probe", "again")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The stack's whole chain from sluice-native's module (the template's `native=true`):
/// the same governance as the wasm build, and its metrics exported under the same names.
#[tokio::test]
async fn the_whole_chain_runs_natively_with_the_wasm_builds_metrics() {
    const KEY: &str = "sk-sluice-e2e-native-chain-0123456789abcdef";
    let s = sluice_e2e::Stack::start(StackOptions {
        pools: vec!["pool-a"],
        keys: sluice_key_auth::KeyAuthConfig {
            keys: vec![sluice_e2e::key_record("key_nat", KEY, "team-nat")],
            ..Default::default()
        },
        native: true,
        ..StackOptions::default()
    })
    .await;
    let body = serde_json::json!({"model": "mock-model", "messages": [
        {"role": "user", "content": "Write to alice@example.com about the invoice."}]});
    let r = s
        .post_json("/v1/chat/completions", KEY, "nat-1", &body)
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let completion = answer["usage"]["completion_tokens"].as_u64().unwrap();

    // pii-redaction rewrote the prompt before it left; model-router routed it.
    let sent = s.pools[0].requests().await;
    let sent = sent.last().expect("the pool got the request");
    let text = sent["body"].as_str().unwrap_or_default();
    assert!(!text.contains("alice@example.com"), "{text}");
    // key-auth's and token-counter's facts in the access log.
    let line = s.log_line("nat-1").await;
    assert_eq!(line["tenant"], "team-nat");
    let prompt = sluice_e2e::log_number(&line, "prompt_tokens").unwrap();
    assert!(prompt > 0);

    // A wrong key: key-auth's 401 in the error shape.
    let r = s
        .post_json("/v1/chat/completions", "sk-wrong", "nat-2", &body)
        .await;
    assert_eq!(r.status(), 401);

    // Counters defined at configuration, under their wasm names (the module's metrics
    // namespace), tags extracted by the stats configuration as for the wasm build.
    assert_eq!(
        s.stat("dynamicmodulescustom.sluice.key_auth.allowed").await,
        1
    );
    let prom = s.prometheus().await;
    // Families declared at configuration, with the tags the wasm build's names get (Envoy
    // exports them as envoy_dynamicmodulescustom_<name>: `prometheus()` relabels that away
    // as deploy/prometheus does).
    for want in [
        format!("gen_ai_client_token_usage{{gen_ai_token_type=\"input\",gen_ai_request_model=\"mock-model\",tenant=\"team-nat\",usage_source=\"backend\"}} {prompt}"),
        format!("gen_ai_client_token_usage{{gen_ai_token_type=\"output\",gen_ai_request_model=\"mock-model\",tenant=\"team-nat\",usage_source=\"backend\"}} {completion}"),
        "sluice_llm_requests{gen_ai_request_model=\"mock-model\",tenant=\"team-nat\",usage_source=\"backend\"} 1".to_string(),
        // The stack's pass-through alias `*`, sanitised as a label value.
        "sluice_router_requests{router_model=\"_\",route=\"pool-a\"} 1".to_string(),
    ] {
        assert!(prom.lines().any(|l| l == want), "missing {want} in\n{prom}");
    }
    assert!(
        prom.lines()
            .any(|l| l == "sluice_key_auth_denied{reason=\"unknown\"} 1"),
        "key-auth's denials by reason"
    );

    // Keys rotate through ECDS as for the wasm filter: a key created with the CLI serves.
    let created = s.cli(&["keys", "create", "--tenant", "team-new"]);
    let new_key = created.trim().to_string();
    assert!(!new_key.is_empty());
    s.wait_key_updates(2).await;
    let r = s
        .post_json("/v1/chat/completions", &new_key, "nat-3", &body)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.log_line("nat-3").await["tenant"], "team-new");
}
