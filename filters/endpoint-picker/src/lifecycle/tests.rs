//! The host calls of scraping and picking.

use super::*;
use serde_json::json;
use sluice_testkit::{Call, MockHost};

const A: &str = "127.0.0.1:9001";
const B: &str = "127.0.0.1:9002";

fn picker(host: &mut MockHost, engine: &str) -> Rc<EndpointPicker> {
    host.now_ms = 1_800_000_000_000;
    host.plugin_config = json!({"pools": [{"name": "pool-a", "engine": engine, "endpoints": [
        {"address": A, "metrics_cluster": "m0"}, {"address": B, "metrics_cluster": "m1"}]}],
        "prefix": {"block_bytes": 16}})
    .to_string()
    .into_bytes();
    let p = Rc::new(EndpointPicker::configure(host).unwrap());
    host.take_calls();
    p
}

/// The engine at `index` reports this load (as a scrape would have written it).
fn report(host: &MockHost, address: &str, waiting: f64, running: f64) {
    let r = Report {
        waiting,
        running,
        kv: Some(0.1),
        loras: Vec::new(),
        at_ms: host.now_ms,
    };
    let _ = host.set_shared_data(&report_key(address), &serde_json::to_vec(&r).unwrap(), None);
}

fn chat(host: &mut MockHost, messages: serde_json::Value) -> usize {
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.set_text_property("sluice_route", "pool-a");
    host.request_body = json!({"model": "m", "messages": messages})
        .to_string()
        .into_bytes();
    host.request_body.len()
}

/// Send one request through; the endpoint header it got.
fn send(
    host: &mut MockHost,
    p: &Rc<EndpointPicker>,
    messages: serde_json::Value,
) -> (PickedRequest, Option<String>) {
    let size = chat(host, messages);
    let mut req = p.new_request();
    assert_eq!(req.on_request_headers(host, false), Flow::Pause);
    assert_eq!(req.on_request_body(host, size, true), Flow::Continue);
    let header = host.header(Side::Request, properties::ENDPOINT_HEADER);
    (req, header)
}

fn decision(host: &MockHost) -> serde_json::Value {
    serde_json::from_str(host.text_property("sluice_endpoint").unwrap()).unwrap()
}

#[test]
fn one_worker_scrapes_each_endpoint_per_interval_and_keeps_what_it_read() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    p.on_tick(&mut host);
    let dispatched: Vec<Call> = host
        .effects()
        .into_iter()
        .filter(|c| matches!(c, Call::DispatchHttp { .. }))
        .collect();
    assert_eq!(
        dispatched,
        vec![
            Call::DispatchHttp {
                cluster: "m0".into(),
                path: "/metrics".into()
            },
            Call::DispatchHttp {
                cluster: "m1".into(),
                path: "/metrics".into()
            },
        ]
    );
    // Another worker's tick in the same interval: the lease holds, nothing is sent.
    host.take_calls();
    host.now_ms += 100;
    p.on_tick(&mut host);
    assert!(!host
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DispatchHttp { .. })));
    // The answer to the first scrape (token 1, endpoint A).
    host.http_answer = (
        vec![(":status".into(), b"200".to_vec())],
        include_bytes!("../../tests/metrics/vllm-v1.txt").to_vec(),
    );
    let size = host.http_answer.1.len();
    p.on_http_response(&mut host, 1, size);
    let r = p.report(&host, A, host.now_ms).unwrap();
    assert_eq!((r.waiting, r.running, r.kv), (3.0, 12.0, Some(0.4375)));
    assert_eq!(
        host.metric_totals
            .get("sluice.endpoint.engine_waiting.pool.pool-a.endpoint.127_0_0_1_9001"),
        Some(&3)
    );
    // Old news: after stale_after_ms it is no longer used.
    assert!(p.report(&host, A, host.now_ms + 3_001).is_none());
    // A failed scrape (a 503 page) leaves nothing new.
    host.http_answer = (vec![(":status".into(), b"503".to_vec())], b"busy".to_vec());
    p.on_http_response(&mut host, 2, 4);
    assert!(p.report(&host, B, host.now_ms).is_none());
}

#[test]
fn the_less_loaded_engine_first_and_the_other_as_the_retry() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 4.0, 8.0);
    report(&host, B, 0.0, 2.0);
    let (mut req, header) = send(&mut host, &p, json!([{"role": "user", "content": "hi"}]));
    assert_eq!(header.as_deref(), Some("127.0.0.1:9002,127.0.0.1:9001"));
    assert_eq!(decision(&host)["reason"], "load");
    assert_eq!(shared_counter(&host, &in_flight_key(B)), 1);
    req.on_log(&mut host);
    assert_eq!(shared_counter(&host, &in_flight_key(B)), 0);
}

#[test]
fn a_conversation_stays_where_its_prefix_is_until_that_endpoint_saturates() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 0.0, 1.0);
    report(&host, B, 0.0, 1.0);
    let turn1 = json!([{"role": "system", "content": "You are the SQL helper of team A. Be brief."},
                       {"role": "user", "content": "How do I join two tables?"}]);
    let (_r1, first) = send(&mut host, &p, turn1.clone());
    let first = first.unwrap();
    let home = first.split(',').next().unwrap().to_string();
    let other = if home == A { B } else { A };
    // The home endpoint now runs one more request than the other: the prefix still wins.
    report(&host, &home, 0.0, 2.0);
    let mut turn2 = turn1.as_array().unwrap().clone();
    turn2.push(json!({"role": "assistant", "content": "Use JOIN ... ON."}));
    turn2.push(json!({"role": "user", "content": "And a left join?"}));
    let (_r2, second) = send(&mut host, &p, json!(turn2.clone()));
    assert!(second.unwrap().starts_with(&home));
    assert_eq!(decision(&host)["reason"], "prefix");
    assert!(decision(&host)["prefix_blocks"].as_u64().unwrap() > 0);
    // Saturated (a queue of 3): the next turn spills to the other endpoint.
    report(&host, &home, 3.0, 4.0);
    turn2.push(json!({"role": "user", "content": "And a right join?"}));
    let (_r3, third) = send(&mut host, &p, json!(turn2));
    assert!(third.unwrap().starts_with(other));
}

#[test]
fn without_fresh_metrics_envoy_decides_and_a_clients_header_is_removed() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    let size = chat(&mut host, json!([{"role": "user", "content": "hi"}]));
    host.request_headers
        .push((properties::ENDPOINT_HEADER.into(), A.as_bytes().to_vec()));
    let mut req = p.new_request();
    req.on_request_headers(&mut host, false);
    req.on_request_body(&mut host, size, true);
    assert_eq!(
        host.header(Side::Request, properties::ENDPOINT_HEADER),
        None
    );
    assert_eq!(decision(&host)["reason"], "fallback");
    assert!(host
        .counted()
        .contains(&"sluice.endpoint.fallback.pool.pool-a".to_string()));
    // A generic OpenAI server reports nothing: the gateway's own counts still pick.
    let mut host = MockHost::new();
    let p = picker(&mut host, "openai");
    let _ = add_shared(&host, &in_flight_key(A), 5);
    let (_r, header) = send(&mut host, &p, json!([{"role": "user", "content": "hi"}]));
    assert_eq!(header.as_deref(), Some("127.0.0.1:9002,127.0.0.1:9001"));
}

#[test]
fn a_request_to_another_pool_passes_untouched() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.set_text_property("sluice_route", "pool-z");
    assert_eq!(
        p.new_request().on_request_headers(&mut host, false),
        Flow::Continue
    );
    assert!(host.calls().is_empty());
}

#[test]
fn a_request_for_a_lora_adapter_goes_where_it_is_loaded() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 0.0, 1.0);
    let with_adapter = Report {
        waiting: 0.0,
        running: 2.0,
        kv: Some(0.1),
        loras: vec!["sql-lora".into()],
        at_ms: host.now_ms,
    };
    let _ = host.set_shared_data(
        &report_key(B),
        &serde_json::to_vec(&with_adapter).unwrap(),
        None,
    );
    let size = chat(&mut host, json!([{"role": "user", "content": "hi"}]));
    host.set_text_property("sluice_model", "sql-lora");
    let mut req = p.new_request();
    req.on_request_headers(&mut host, false);
    req.on_request_body(&mut host, size, true);
    assert!(host
        .header(Side::Request, properties::ENDPOINT_HEADER)
        .unwrap()
        .starts_with(B));
    assert_eq!(decision(&host)["reason"], "lora");
}
