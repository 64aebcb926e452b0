//! The host calls each kind of request causes.

use super::*;
use serde_json::{json, Value};
use sluice_testkit::{Call, MockHost};

fn filter(host: &mut MockHost) -> Rc<TokenCounter> {
    host.plugin_config = br#"{"encodings": []}"#.to_vec();
    Rc::new(TokenCounter::configure(host).unwrap())
}

/// A request sent upstream: headers and body passed, the host's calls forgotten.
fn sent(host: &mut MockHost, f: &Rc<TokenCounter>, path: &str, body: Value) -> CountedRequest {
    host.next_request(&[(":method", "POST"), (":path", path)]);
    host.set_text_property("sluice_tenant", "team-a");
    host.request_body = body.to_string().into_bytes();
    let mut req = f.new_request(1);
    assert_eq!(req.on_request_headers(host, false), Flow::Pause);
    let size = host.request_body.len();
    assert_eq!(req.on_request_body(host, size, true), Flow::Continue);
    host.take_calls();
    req
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream,
           "messages": [{"role": "user", "content": "Say hi"}]})
}

/// Pass `body` through the response hooks in `chunk`-byte pieces; what the client got.
fn respond(host: &mut MockHost, req: &mut CountedRequest, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        host.response_body = piece.to_vec();
        assert_eq!(
            req.on_response_body(host, piece.len(), i + 1 == pieces.len()),
            Flow::Continue
        );
        out.extend_from_slice(&host.response_body);
    }
    out
}

fn usage_properties(host: &MockHost) -> Vec<(String, String)> {
    host.effects()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetProperty(n, v) => Some((n, v)),
            _ => None,
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
        .collect()
}

#[test]
fn a_request_is_held_until_its_prompt_is_counted_and_published() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.request_body = chat(true).to_string().into_bytes();
    let mut req = f.new_request(1);
    assert_eq!(req.on_request_headers(&mut host, false), Flow::Pause);
    assert_eq!(
        host.take_calls(),
        vec![Call::SetProperty("sluice_api".into(), "chat".into())]
    );
    assert_eq!(req.on_request_body(&mut host, 5, false), Flow::Pause);
    assert!(host.calls().is_empty());
    let size = host.request_body.len();
    assert_eq!(req.on_request_body(&mut host, size, true), Flow::Continue);
    let calls = host.take_calls();
    // A stream that did not ask for usage gets `stream_options.include_usage` added.
    let [Call::SetBody(Side::Request, body), Call::SetHeader(Side::Request, cl, len), rest @ ..] =
        calls.as_slice()
    else {
        panic!("{calls:?}");
    };
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(
        (cl.as_str(), len.parse::<usize>().unwrap()),
        ("content-length", host.request_body.len())
    );
    assert_eq!(
        rest,
        &[
            Call::SetProperty("sluice_prompt_tokens".into(), "9".into()),
            Call::SetProperty("sluice_prompt_tokens_estimated".into(), "9".into()),
        ]
    );
}

#[test]
fn a_request_without_a_body_or_model_is_refused() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, true),
        Flow::Pause
    );
    assert_eq!(host.reply().unwrap().status, 400);

    host.next_request(&[(":method", "POST"), (":path", "/v1/messages")]);
    host.request_body = br#"{"messages":[]}"#.to_vec();
    let mut req = f.new_request(1);
    req.on_request_headers(&mut host, false);
    assert_eq!(req.on_request_body(&mut host, 15, true), Flow::Pause);
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains(r#""type":"error""#),
        "Anthropic shape: {}",
        reply.body
    );
    // Refused requests publish no usage.
    req.on_log(&mut host);
    assert!(!host.properties.contains_key("sluice_completion_tokens"));
}

#[test]
fn a_json_answer_publishes_the_backends_usage_once() {
    // Counted the same where the host names each series (proxy-wasm) and where the
    // counters are families declared at configuration (a dynamic module).
    for families in [false, true] {
        let mut host = MockHost::new();
        host.metric_families = families;
        let f = filter(&mut host);
        let mut req = sent(&mut host, &f, "/v1/chat/completions", chat(false));
        host.set_response_headers(&[(":status", "200"), ("content-type", "application/json")]);
        assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
        let answer =
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
            .to_string();
        let out = respond(&mut host, &mut req, answer.as_bytes(), 16);
        assert_eq!(out, answer.as_bytes(), "a JSON answer passes unchanged");
        req.on_log(&mut host);
        assert_eq!(
            usage_properties(&host),
            pairs(&[
                ("sluice_prompt_tokens", "11"),
                ("sluice_completion_tokens", "2"),
                ("sluice_usage_source", "backend"),
            ])
        );
        let labels = "model.other.tenant.team-a.source.backend";
        // Our estimate (9) is 2 tokens off the backend's 11: within the tolerance, so
        // `sluice.llm.prompt_estimate_off` is not counted.
        assert_eq!(
            host.counted(),
            vec![
                format!("gen_ai.client.token.usage.type.input.{labels}"),
                format!("gen_ai.client.token.usage.type.output.{labels}"),
                format!("sluice.llm.requests.{labels}"),
            ]
        );
        assert_eq!(
            host.metric_totals.get("sluice.llm.time_to_first_byte_ms"),
            Some(&1)
        );
    }
}

#[test]
fn a_stream_cut_mid_event_is_counted_from_what_passed() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let mut req = sent(&mut host, &f, "/v1/chat/completions", chat(true));
    host.set_response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
    let event = |t: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": t}}]})
        )
    };
    let stream = format!("{}{}", event("Hello"), event(" world"));
    // The backend goes away in the middle of the second event: no end_of_stream.
    let cut = stream.len() - 10;
    for piece in stream.as_bytes()[..cut].chunks(9) {
        host.response_body = piece.to_vec();
        req.on_response_body(&mut host, piece.len(), false);
    }
    assert!(!host.properties.contains_key("sluice_completion_tokens"));
    req.on_log(&mut host);
    let props = usage_properties(&host);
    assert_eq!(
        props,
        pairs(&[
            ("sluice_completion_tokens", "1"),
            ("sluice_usage_source", "counted"),
        ])
    );
    // on_log again (Envoy calls it once; a second call must not count twice).
    req.on_log(&mut host);
    assert_eq!(usage_properties(&host).len(), 2);
}

#[test]
fn an_engine_error_is_held_and_replaced_by_the_apis_error_shape() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let mut req = sent(
        &mut host,
        &f,
        "/v1/messages",
        json!({"model": "m", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    host.set_response_headers(&[
        (":status", "500"),
        ("content-type", "application/json"),
        ("content-length", "60"),
    ]);
    host.properties
        .insert("response.code_details".into(), b"via_upstream".to_vec());
    assert_eq!(req.on_response_headers(&mut host, false), Flow::Pause);
    assert_eq!(
        host.take_calls(),
        vec![Call::RemoveHeader(Side::Response, "content-length".into())]
    );
    host.response_body = br#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#.to_vec();
    assert_eq!(req.on_response_body(&mut host, 20, false), Flow::Pause);
    let size = host.response_body.len();
    assert_eq!(req.on_response_body(&mut host, size, true), Flow::Continue);
    let effects = host.effects();
    assert_eq!(
        effects.first(),
        Some(&Call::SetHeader(
            Side::Response,
            ":status".into(),
            "400".into()
        ))
    );
    let body: Value = serde_json::from_slice(&host.response_body).unwrap();
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert!(host.text_property("sluice_error").is_some());
    assert_eq!(host.text_property("sluice_completion_tokens"), Some("0"));
}

#[test]
fn a_messages_stream_without_message_start_gets_one_and_json_answers_never_do() {
    let mut host = MockHost::new();
    let f = filter(&mut host);
    let body = json!({"model": "m", "max_tokens": 5, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut req = sent(&mut host, &f, "/v1/messages", body.clone());
    host.properties.insert("request.id".into(), b"abc".to_vec());
    host.set_response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
    req.on_response_headers(&mut host, false);
    let stream = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    let out = String::from_utf8(respond(&mut host, &mut req, stream.as_bytes(), 13)).unwrap();
    assert!(out.starts_with("event: message_start\n"), "{out}");
    assert!(out.contains("\"id\":\"msg_abc\""), "{out}");

    let mut body = body;
    body["stream"] = json!(false);
    let mut req = sent(&mut host, &f, "/v1/messages", body);
    host.set_response_headers(&[(":status", "200"), ("content-type", "application/json")]);
    req.on_response_headers(&mut host, false);
    let answer = br#"{"type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":1}}"#;
    assert_eq!(respond(&mut host, &mut req, answer, 1000), answer);
}
