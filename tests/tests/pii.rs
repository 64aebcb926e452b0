//! pii-redaction through real Envoy: what the backend receives, blocks, SSE streams with
//! values split across events, mask and hash forms, custom entities, unscannable bodies,
//! the access log and metrics.
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sluice_e2e::{key_record, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;

const KEY: &str = "sk-sluice-e2e-pii-0123456789abcdef0123";
const CHAT: &str = "/v1/chat/completions";
const SECRET: &str = "e2e-hash-secret-0123456789";

async fn stack(pii_config: Value) -> Stack {
    Stack::start(StackOptions {
        keys: KeyAuthConfig {
            keys: vec![key_record("key_pii", KEY, "team-pii")],
            ..Default::default()
        },
        vars: vec![("pii_config".into(), pii_config)],
        ..StackOptions::default()
    })
    .await
}

/// The config of the local stack (envoy/filters/pii-redaction.json): everything redacted.
fn default_config() -> Value {
    serde_json::from_str(include_str!("../../envoy/filters/pii-redaction.json")).unwrap()
}

/// One value of every built-in entity, and the placeholder it must become.
fn samples() -> Vec<(&'static str, String)> {
    vec![
        ("EMAIL", "jane.doe@example.org".into()),
        ("PHONE", "+44 20 7946 0958".into()),
        ("SSN", "123-45-6789".into()),
        ("CREDIT_CARD", "4111 1111 1111 1111".into()),
        ("IBAN", "DE89 3704 0044 0532 0130 00".into()),
        ("IPV4", "192.168.10.20".into()),
        ("IPV6", "2001:db8:85a3::8a2e:370:7334".into()),
        ("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE".into()),
        ("GITHUB_TOKEN", format!("ghp_{}", "a1B2c3D4e5".repeat(3) + "f6G7h8")),
        ("OPENAI_KEY", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zT3BlbkFJ".into()),
        ("ANTHROPIC_KEY", format!("sk-ant-api03-{}AA", "Zx9_Qw8-".repeat(11))),
        ("GOOGLE_API_KEY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY".into()),
        ("SLACK_TOKEN", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".into()),
        ("JWT", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".into()),
        ("PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----".into()),
    ]
}

fn upstream_body(req: &Value) -> Value {
    serde_json::from_str(req["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_backend_receives_every_builtin_entity_redacted() {
    let s = stack(default_config()).await;
    let samples = samples();
    let text: String = samples
        .iter()
        .map(|(label, v)| format!("My {label} is {v} .\n"))
        .collect();
    let body = json!({"model": "mock-model", "messages": [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": text},
        {"role": "user", "content": [{"type": "text", "text": "mail jane.doe@example.org again"}]}
    ]});
    let r = s.post_json(CHAT, KEY, "pii-all", &body).await;
    assert_eq!(r.status(), 200);
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(seen.len(), 1);
    let sent = upstream_body(&seen[0]);
    let raw = seen[0]["body"].as_str().unwrap();
    let expected: String = samples
        .iter()
        .map(|(label, _)| format!("My {label} is [{label}_1] .\n"))
        .collect();
    assert_eq!(sent["messages"][1]["content"], expected.as_str());
    assert_eq!(sent["messages"][0]["content"], "Be helpful.");
    // The same value keeps its number across messages.
    assert_eq!(
        sent["messages"][2]["content"][0]["text"],
        "mail [EMAIL_1] again"
    );
    for (_, v) in &samples {
        assert!(!raw.contains(v.as_str()), "{v} reached the backend");
    }
    // Counts, never values, in the access log; metrics per entity and action.
    let line = s.log_line("pii-all").await;
    let pii: Value = serde_json::from_str(line["pii"].as_str().unwrap()).unwrap();
    assert_eq!(pii["request"]["email"]["redact"], 2);
    for (label, _) in &samples {
        let want = if *label == "EMAIL" { 2 } else { 1 };
        assert_eq!(
            pii["request"][label.to_ascii_lowercase()]["redact"],
            want,
            "{label}: {pii}"
        );
    }
    assert!(!line.to_string().contains("jane.doe"));
    let prom = s.prometheus().await;
    assert!(
        prom.lines().any(|l| l.starts_with("sluice_pii_findings{")
            && l.contains("pii_entity=\"email\"")
            && l.contains("pii_action=\"redact\"")
            && l.contains("direction=\"request\"")
            && l.ends_with(" 2")),
        "{}",
        prom.lines()
            .filter(|l| l.contains("pii"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The text a client reassembles from an SSE body.
fn stream_text(body: &str) -> String {
    let mut text = String::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

#[tokio::test]
async fn pii_split_across_sse_events_is_redacted_in_what_the_client_receives() {
    let s = stack(default_config()).await;
    let reply = "Sure. Write to jane.doe@example.org or call +1 415 555 2671; \
                 the card is 4111 1111 1111 1111 and the key AKIAIOSFODNN7EXAMPLE. Bye!";
    let redacted = "Sure. Write to [EMAIL_1] or call [PHONE_1]; \
                    the card is [CREDIT_CARD_1] and the key [AWS_ACCESS_KEY_1]. Bye!";
    for split in [false, true] {
        // Three characters an event: every value is cut across several events, and with
        // split_events each event is itself cut in two writes.
        s.pool("pool-a")
            .configure(
                json!({"reply_text": reply, "reply_chunk": 3, "split_events": split,
                              "token_delay_ms": 5}),
            )
            .await;
        let id = format!("pii-sse-{split}");
        let body = json!({"model": "mock-model", "stream": true,
                          "messages": [{"role": "user", "content": "contact details?"}]});
        let r = s.post_json(CHAT, KEY, &id, &body).await;
        assert_eq!(r.status(), 200);
        let mut raw = String::new();
        let mut chunks = 0;
        let mut stream = r.bytes_stream();
        while let Some(c) = stream.next().await {
            raw.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
            chunks += 1;
        }
        assert_eq!(stream_text(&raw), redacted, "split_events={split}");
        for leak in ["jane", "example.org", "2671", "1111", "AKIA"] {
            assert!(!raw.contains(leak), "{leak} leaked: {raw}");
        }
        assert!(raw.ends_with("data: [DONE]\n\n"));
        assert!(
            chunks > 5,
            "the stream was buffered whole ({chunks} chunks)"
        );
        let line = s.log_line(&id).await;
        let pii: Value = serde_json::from_str(line["pii"].as_str().unwrap()).unwrap();
        assert_eq!(pii["response"]["credit_card"]["redact"], 1);
    }
    // And a JSON (non-streamed) response.
    let body = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]});
    let r = s.post_json(CHAT, KEY, "pii-json", &body).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], redacted);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

fn pseudonym(label: &str, normalized: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{label}:{normalized}").as_bytes());
    format!(
        "[{label}:{}]",
        hex::encode(&mac.finalize().into_bytes()[..8])
    )
}

fn policy_config() -> Value {
    json!({
        "hash_secret": SECRET,
        "entities": {"credit_card": "mask", "email": "hash", "private_key": "block",
                     "ipv4": "allow"},
        "custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}",
                    "context": ["employee"], "action": "redact"}],
        "request_fields": ["metadata.note"],
        "max_body_bytes": 8192,
        "on_unscannable": "pass"
    })
}

#[tokio::test]
async fn mask_and_hash_have_the_documented_forms_and_custom_entities_apply() {
    let s = stack(policy_config()).await;
    for id in ["pii-forms-1", "pii-forms-2"] {
        let body = json!({"model": "mock-model",
            "messages": [{"role": "user", "content":
                "Card 4111-1111-1111-1111, mail Jane.Doe@Example.org, host 10.1.2.3, employee EMP-123456. The warehouse inventory lists, among other things, part EMP-654321"}],
            "metadata": {"note": "backup card 5555 5555 5555 4444"}});
        let r = s.post_json(CHAT, KEY, id, &body).await;
        assert_eq!(r.status(), 200);
    }
    let seen = s.pool("pool-a").requests().await;
    assert_eq!(seen.len(), 2);
    let hashed = pseudonym("EMAIL", "jane.doe@example.org");
    for req in &seen {
        let sent = upstream_body(req);
        assert_eq!(
            sent["messages"][0]["content"],
            format!("Card ****-****-****-1111, mail {hashed}, host 10.1.2.3, employee [EMPLOYEE_ID_1]. The warehouse inventory lists, among other things, part EMP-654321")
        );
        assert_eq!(sent["metadata"]["note"], "backup card **** **** **** 4444");
    }
    // The pseudonym is stable across requests (same key, same value).
    assert_eq!(upstream_body(&seen[0]), upstream_body(&seen[1]));
    let line = s.log_line("pii-forms-1").await;
    let pii: Value = serde_json::from_str(line["pii"].as_str().unwrap()).unwrap();
    assert_eq!(pii["request"]["credit_card"]["mask"], 2);
    assert_eq!(pii["request"]["email"]["hash"], 1);
    assert_eq!(pii["request"]["employee_id"]["redact"], 1);
}

#[tokio::test]
async fn block_gives_403_naming_the_type_and_nothing_goes_upstream() {
    let s = stack(policy_config()).await;
    let key =
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
    let body = json!({"model": "mock-model", "messages": [{"role": "user",
        "content": format!("please debug this: {key}")}]});
    let r = s.post_json(CHAT, KEY, "pii-block", &body).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "permission_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("private_key"), "{message}");
    assert!(!message.contains("MIIE"), "{message}");
    assert!(s.pool("pool-a").requests().await.is_empty());
    assert!(s.pool("pool-b").requests().await.is_empty());
    let line = s.log_line("pii-block").await;
    assert_eq!(line["status"], 403);
    assert!(line["pii"].as_str().unwrap().contains("\"block\":1"));

    // Over the scan limit with on_unscannable = pass: forwarded as is, and recorded.
    let big = "x ".repeat(6000);
    let body = json!({"model": "mock-model", "messages": [{"role": "user",
        "content": format!("{big} jane@example.org")}]});
    let r = s.post_json(CHAT, KEY, "pii-pass", &body).await;
    assert_eq!(r.status(), 200);
    let seen = s.pool("pool-a").requests().await;
    assert!(seen[0]["body"]
        .as_str()
        .unwrap()
        .contains("jane@example.org"));
    let line = s.log_line("pii-pass").await;
    assert!(
        line["pii"].as_str().unwrap().contains("request:too_large"),
        "{line}"
    );
}

#[tokio::test]
async fn unscannable_bodies_are_refused_under_block() {
    let mut config = default_config();
    config["max_body_bytes"] = json!(8192);
    let s = stack(config).await;
    let body = json!({"model": "mock-model", "messages": [{"role": "user",
        "content": "y ".repeat(6000)}]});
    let r = s.post_json(CHAT, KEY, "pii-too-large", &body).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // pii-redaction refused it (Envoy's own 413 is at 1 MiB here); its message is replaced
    // by the local_reply_config mapper of 413s, so the access log tells who decided.
    let line = s.log_line("pii-too-large").await;
    assert!(
        line["pii"].as_str().unwrap().contains("request:too_large"),
        "{line}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}{CHAT}", s.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(s.pool("pool-a").requests().await.is_empty());
}
