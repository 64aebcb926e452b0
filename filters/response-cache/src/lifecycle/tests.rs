//! The host calls each kind of request causes.

use super::*;
use serde_json::json;
use sluice_testkit::{Call, MockHost};

const CONFIG: &str = r#"{"rules": [
    {"models": ["*"], "apis": ["embeddings"]},
    {"models": ["chat-*"], "apis": ["chat", "messages", "responses", "completions"]}],
  "max_entry_bytes": 4096, "local": {"max_bytes": 65536, "slots": 16}}"#;

fn filter(host: &mut MockHost) -> Rc<ResponseCache> {
    host.plugin_config = CONFIG.as_bytes().to_vec();
    host.now_ms = 1_000_000;
    Rc::new(ResponseCache::configure(host).unwrap())
}

/// A request from `tenant` with `body`, its headers and body passed; its flow at the body.
fn send(
    host: &mut MockHost,
    f: &Rc<ResponseCache>,
    path: &str,
    tenant: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> (CachedRequest, Flow) {
    let mut headers = vec![(":method", "POST"), (":path", path)];
    if let Some(c) = cache_control {
        headers.push(("cache-control", c));
    }
    host.next_request(&headers);
    host.set_text_property("sluice_tenant", tenant);
    host.set_text_property("sluice_key_id", "key_1");
    host.request_body = body.to_string().into_bytes();
    let mut req = f.new_request(1);
    assert_eq!(req.on_request_headers(host, false), Flow::Pause);
    let size = host.request_body.len();
    let flow = req.on_request_body(host, size, true);
    (req, flow)
}

/// The backend's answer passes: status, content type, body in `chunk`-byte pieces.
fn answer(
    host: &mut MockHost,
    req: &mut CachedRequest,
    status: &str,
    ct: &str,
    body: &[u8],
    chunk: usize,
) {
    host.set_response_headers(&[(":status", status), ("content-type", ct)]);
    host.set_text_property("response.code_details", "via_upstream");
    assert_eq!(req.on_response_headers(host, false), Flow::Continue);
    let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        host.response_body = piece.to_vec();
        let end = i + 1 == pieces.len();
        assert_eq!(req.on_response_body(host, piece.len(), end), Flow::Continue);
        assert_eq!(
            host.response_body,
            piece.to_vec(),
            "the answer passes unchanged"
        );
    }
}

fn fact(host: &MockHost) -> Value {
    let last = host
        .effects()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetProperty(n, v) if n == "sluice_cache" => Some(v),
            _ => None,
        })
        .next_back()
        .unwrap_or_default();
    serde_json::from_str(&last).unwrap_or(Value::Null)
}

fn embeddings() -> Value {
    json!({"model": "e5", "input": ["hello"]})
}

const EMBEDDING: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,0.25]}],"model":"e5","usage":{"prompt_tokens":1,"total_tokens":1}}"#;

#[test]
fn the_same_request_twice_is_answered_the_second_time_from_the_cache() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let (mut req, flow) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "team-a",
        &embeddings(),
        None,
    );
    assert_eq!(flow, Flow::Continue, "a miss goes upstream");
    assert_eq!(fact(&host)["result"], "miss");
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        EMBEDDING.as_bytes(),
        7,
    );
    assert_eq!(host.response_header(CACHE_HEADER), Some("miss"));
    assert_eq!(fact(&host)["result"], "stored");
    // The second time: answered here, nothing goes upstream.
    host.now_ms += 5_000;
    let (_, flow) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "team-a",
        &embeddings(),
        None,
    );
    assert_eq!(flow, Flow::Pause);
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, EMBEDDING);
    assert!(reply.headers.contains(&(CACHE_HEADER.into(), "hit".into())));
    assert!(reply.headers.contains(&("age".into(), "5".into())));
    let hit = fact(&host);
    assert_eq!(
        (hit["result"].as_str(), hit["tier"].as_str()),
        (Some("hit"), Some("local"))
    );
    assert_eq!(
        host.metric_totals
            .get("sluice.cache.hit.tier.local.model.e5"),
        Some(&1)
    );
    // The reply passing back through this filter changes nothing.
    let mut req = f.new_request(2);
    req.phase = Phase::Hit;
    host.set_response_headers(&[(":status", "200")]);
    host.take_calls();
    assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
    assert!(host.effects().is_empty());
}

#[test]
fn entries_never_cross_tenants() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let (mut req, _) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "team-a",
        &embeddings(),
        None,
    );
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        EMBEDDING.as_bytes(),
        1000,
    );
    let (_, flow) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "team-b",
        &embeddings(),
        None,
    );
    assert_eq!(flow, Flow::Continue);
    assert!(!host.replied());
}

#[test]
fn a_streamed_miss_is_stored_and_served_to_both_kinds_of_request() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let chat = |stream: bool, usage: bool| {
        json!({"model": "chat-m", "temperature": 0, "stream": stream,
            "stream_options": {"include_usage": usage},
            "messages": [{"role": "user", "content": "Say hi"}]})
    };
    let response = json!({"id": "c1", "object": "chat.completion", "created": 5, "model": "chat-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi 世界!"},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
    let events = replay_stream(Api::Chat, &response, true).unwrap();
    let (mut req, _) = send(
        &mut host,
        &f,
        "/v1/chat/completions",
        "t",
        &chat(true, true),
        None,
    );
    answer(&mut host, &mut req, "200", "text/event-stream", &events, 5);
    assert_eq!(fact(&host)["result"], "stored");
    // Unstreamed: the assembled response.
    let (_, flow) = send(
        &mut host,
        &f,
        "/v1/chat/completions",
        "t",
        &chat(false, false),
        None,
    );
    assert_eq!(flow, Flow::Pause);
    let reply = host.reply().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        response
    );
    // Streamed without usage: events in the chat format, no usage chunk.
    send(
        &mut host,
        &f,
        "/v1/chat/completions",
        "t",
        &chat(true, false),
        None,
    );
    let reply = host.reply().unwrap();
    assert!(reply
        .headers
        .contains(&("content-type".into(), "text/event-stream".into())));
    assert!(
        reply.body.contains("\"delta\":{\"content\":\"Hi 世界!\"}"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("total_tokens"));
    assert!(reply.body.ends_with("data: [DONE]\n\n"));
}

#[test]
fn client_control_sampling_and_failures_decide_what_is_stored() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    // no-store: looked up, not stored.
    let (mut req, _) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "t",
        &embeddings(),
        Some("no-store"),
    );
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        EMBEDDING.as_bytes(),
        64,
    );
    assert_eq!(host.response_header(CACHE_HEADER), Some("miss"));
    assert_eq!(fact(&host)["result"], "miss");
    // An error answer, a cut answer and an error body are not stored.
    let (mut req, _) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    answer(
        &mut host,
        &mut req,
        "500",
        "application/json",
        b"{\"error\":{}}",
        64,
    );
    let (mut req, _) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        &EMBEDDING.as_bytes()[..40],
        64,
    );
    let (mut req, _) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        b"{\"error\":{\"message\":\"x\"}}",
        64,
    );
    // Too large (over max_entry_bytes): passes, not stored.
    let big = format!(
        "{{\"object\":\"list\",\"data\":[{{\"embedding\":[{}]}}]}}",
        vec!["0.1"; 2000].join(",")
    );
    let (mut req, _) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        big.as_bytes(),
        512,
    );
    assert_eq!(
        host.metric_totals
            .get("sluice.cache.not_stored.reason.too_large.tier.local.model.e5"),
        Some(&1)
    );
    let (_, flow) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    assert_eq!(flow, Flow::Continue, "nothing was stored");
    // no-cache: not looked up (bypass), but stored.
    let (mut req, _) = send(
        &mut host,
        &f,
        "/v1/embeddings",
        "t",
        &embeddings(),
        Some("no-cache"),
    );
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        EMBEDDING.as_bytes(),
        64,
    );
    assert_eq!(host.response_header(CACHE_HEADER), Some("bypass"));
    let (_, flow) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    assert_eq!(flow, Flow::Pause, "stored by the no-cache request");
    // A sampled chat request is not cacheable under `deterministic`.
    let sampled = json!({"model": "chat-m", "temperature": 0.8, "messages": []});
    let (mut req, flow) = send(&mut host, &f, "/v1/chat/completions", "t", &sampled, None);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(
        fact(&host),
        json!({"result": "bypass", "reason": "sampled"})
    );
    host.set_response_headers(&[(":status", "200")]);
    req.on_response_headers(&mut host, false);
    assert_eq!(host.response_header(CACHE_HEADER), Some("bypass"));
}

#[test]
fn an_entry_expires_after_its_ttl() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let (mut req, _) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    answer(
        &mut host,
        &mut req,
        "200",
        "application/json",
        EMBEDDING.as_bytes(),
        64,
    );
    host.now_ms += 3_600_000;
    let (_, flow) = send(&mut host, &f, "/v1/embeddings", "t", &embeddings(), None);
    assert_eq!(flow, Flow::Continue, "an hour later: expired");
}

#[test]
fn other_paths_and_methods_pass_untouched() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/files"),
    ] {
        host.next_request(&[(":method", method), (":path", path)]);
        let mut req = f.new_request(1);
        assert_eq!(req.on_request_headers(&mut host, false), Flow::Continue);
        assert!(host.effects().is_empty());
    }
}

#[test]
fn a_request_decides_the_same_whether_an_earlier_filter_parsed_it_or_not() {
    // token-counter, before this filter, leaves its tree of the body in
    // `sluice_common::parsed`; this filter then reads that tree instead of scanning the
    // bytes. The host calls must be the same either way, for every kind of body.
    let bodies = [
        json!({"model": "chat-m", "temperature": 0.8, "messages": []}),
        json!({"model": "chat-m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "chat-m", "temperature": null, "seed": 7, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "chat-m", "seed": null, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": null, "temperature": 0, "messages": []}),
        json!({"model": "other", "temperature": 0, "messages": []}),
        json!(["not", "an", "object"]),
        embeddings(),
    ];
    for body in bodies {
        let mut runs = Vec::new();
        for primed in [false, true] {
            let mut host = MockHost::new();
            let f = filter(&mut host);
            let bytes = body.to_string().into_bytes();
            sluice_common::parsed::forget_body();
            if primed {
                let _ = sluice_common::parsed::parsed_body(&bytes);
            }
            let (_, flow) = send(&mut host, &f, "/v1/chat/completions", "t", &body, None);
            runs.push((flow, host.calls()));
        }
        assert_eq!(runs[0], runs[1], "{body}");
    }
}
