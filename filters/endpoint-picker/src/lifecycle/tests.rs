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
        load: EngineLoad {
            waiting,
            running,
            kv_cache: Some(0.1),
            loras: Vec::new(),
        },
        at_ms: host.now_ms,
        foreign: running + waiting,
        raw_foreign: running + waiting,
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
    let mut req = p.new_request(1);
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
    // Each endpoint's metrics and its health path (Envoy's override_host policy does not
    // look at health: the picker must).
    let probe = |cluster: &str, path: &str| Call::DispatchHttp {
        cluster: cluster.into(),
        path: path.into(),
    };
    assert_eq!(
        dispatched,
        vec![
            probe("m0", "/metrics"),
            probe("m0", "/health"),
            probe("m1", "/metrics"),
            probe("m1", "/health"),
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
    assert_eq!(
        (r.load.waiting, r.load.running, r.load.kv_cache),
        (3.0, 12.0, Some(0.4375))
    );
    assert_eq!(
        host.metric_totals
            .get("sluice.endpoint.engine_waiting.pool.pool-a.endpoint.127_0_0_1_9001"),
        Some(&3)
    );
    // Old news: after stale_after_ms it is no longer used.
    assert!(p.report(&host, A, host.now_ms + 3_001).is_none());
    // A failed scrape (a 503 page) leaves nothing new.
    host.http_answer = (vec![(":status".into(), b"503".to_vec())], b"busy".to_vec());
    p.on_http_response(&mut host, 3, 4);
    assert!(p.report(&host, B, host.now_ms).is_none());
    // A failed health probe (token 2, endpoint A): its report no longer counts, until a
    // probe passes or the failure is old news.
    p.on_http_response(&mut host, 2, 4);
    assert!(p.report(&host, A, host.now_ms).is_none());
    assert!(
        p.report(&host, A, host.now_ms + 3_001).is_none(),
        "stale anyway"
    );
    p.on_tick(&mut host); // not yet another interval: no new probes
    host.http_answer = (vec![(":status".into(), b"200".to_vec())], b"ok".to_vec());
    host.now_ms += 500;
    host.take_calls();
    p.on_tick(&mut host);
    let tokens: Vec<u32> = (5..=8).collect();
    for t in tokens {
        p.on_http_response(&mut host, t, 2);
    }
    assert!(p.healthy(&host, A, host.now_ms));
}

#[test]
fn an_endpoint_failing_its_health_probe_is_ranked_after_the_healthy_one() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 0.0, 0.0);
    report(&host, B, 2.0, 8.0);
    fail_probe(&host, A);
    let (_req, header) = send(&mut host, &p, json!([{"role": "user", "content": "hi"}]));
    assert_eq!(header.as_deref(), Some("127.0.0.1:9002,127.0.0.1:9001"));
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
    // A long system prompt (its cached prefill is worth more than a request of load).
    let system = "You are the SQL helper of team A. Be brief. ".repeat(100);
    let turn1 = json!([{"role": "system", "content": system},
                       {"role": "user", "content": "How do I join two tables?"}]);
    let (_r1, first) = send(&mut host, &p, turn1.clone());
    let first = first.unwrap();
    let home = first.split(',').next().unwrap().to_string();
    let other = if home == A { B } else { A };
    // The home endpoint now runs one more request than the other (the engine's one and
    // the gateway's first turn): the prefix still wins.
    report(&host, &home, 0.0, 1.0);
    host.now_ms += VIEW_TTL_MS;
    let mut turn2 = turn1.as_array().unwrap().clone();
    turn2.push(json!({"role": "assistant", "content": "Use JOIN ... ON."}));
    turn2.push(json!({"role": "user", "content": "And a left join?"}));
    let (_r2, second) = send(&mut host, &p, json!(turn2.clone()));
    assert!(second.unwrap().starts_with(&home));
    assert_eq!(decision(&host)["reason"], "prefix");
    assert!(decision(&host)["prefix_blocks"].as_u64().unwrap() > 0);
    // Saturated (a queue of 3): the next turn spills to the other endpoint.
    report(&host, &home, 3.0, 4.0);
    host.now_ms += VIEW_TTL_MS;
    turn2.push(json!({"role": "user", "content": "And a right join?"}));
    let (_r3, third) = send(&mut host, &p, json!(turn2));
    assert!(third.unwrap().starts_with(other));
    assert_eq!(decision(&host)["reason"], "load");
}

#[test]
fn without_fresh_metrics_envoy_decides_and_a_clients_header_is_removed() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    let size = chat(&mut host, json!([{"role": "user", "content": "hi"}]));
    host.request_headers
        .push((properties::ENDPOINT_HEADER.into(), A.as_bytes().to_vec()));
    let mut req = p.new_request(1);
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
fn a_new_prefix_makes_its_home_where_recent_traffic_was_lightest() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 0.0, 1.0);
    report(&host, B, 0.0, 1.0);
    let tenant = |t: &str| {
        json!([{"role": "system", "content": format!("You are the helper of team {t}. ").repeat(40)},
               {"role": "user", "content": "Hello?"}])
    };
    let (mut r1, first) = send(&mut host, &p, tenant("A"));
    let home = first.unwrap().split(',').next().unwrap().to_string();
    let other = if home == A { B } else { A };
    r1.on_log(&mut host);
    // The other endpoint runs one more request now, but took none of this worker's lately:
    // the next tenant's prompt, held nowhere, makes its home there.
    report(&host, other, 0.0, 2.0);
    host.now_ms += VIEW_TTL_MS;
    let (mut r2, second) = send(&mut host, &p, tenant("B"));
    assert!(second.unwrap().starts_with(other));
    assert_eq!(decision(&host)["reason"], "spread");
    r2.on_log(&mut host);
    // The first tenant's next request still goes home, though the other endpoint is idle
    // now: its prefix decides, not the spread.
    report(&host, other, 0.0, 0.0);
    host.now_ms += VIEW_TTL_MS;
    let (_r3, third) = send(&mut host, &p, tenant("A"));
    assert!(third.unwrap().starts_with(&home));
    assert_eq!(decision(&host)["reason"], "prefix");
}

#[test]
fn a_request_to_another_pool_passes_untouched() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.set_text_property("sluice_route", "pool-z");
    assert_eq!(
        p.new_request(1).on_request_headers(&mut host, false),
        Flow::Continue
    );
    // Only a client's endpoint header is removed (whatever the pool: it is never used).
    assert_eq!(
        host.calls(),
        vec![Call::RemoveHeader(
            Side::Request,
            properties::ENDPOINT_HEADER.into()
        )]
    );
}

#[test]
fn a_request_for_a_lora_adapter_goes_where_it_is_loaded() {
    let mut host = MockHost::new();
    let p = picker(&mut host, "vllm");
    report(&host, A, 0.0, 1.0);
    let with_adapter = Report {
        load: EngineLoad {
            waiting: 0.0,
            running: 2.0,
            kv_cache: Some(0.1),
            loras: vec!["sql-lora".into()],
        },
        at_ms: host.now_ms,
        foreign: 2.0,
        raw_foreign: 2.0,
    };
    let _ = host.set_shared_data(
        &report_key(B),
        &serde_json::to_vec(&with_adapter).unwrap(),
        None,
    );
    let size = chat(&mut host, json!([{"role": "user", "content": "hi"}]));
    host.set_text_property("sluice_model", "sql-lora");
    let mut req = p.new_request(1);
    req.on_request_headers(&mut host, false);
    req.on_request_body(&mut host, size, true);
    assert!(host
        .header(Side::Request, properties::ENDPOINT_HEADER)
        .unwrap()
        .starts_with(B));
    assert_eq!(decision(&host)["reason"], "lora");
}

/// A picker whose pool has flow control: one request in flight per endpoint.
fn flow_picker(host: &mut MockHost) -> Rc<EndpointPicker> {
    host.now_ms = 1_800_000_000_000;
    host.plugin_config = json!({"pools": [{"name": "pool-a", "engine": "vllm", "max_in_flight": 1,
        "endpoints": [{"address": A, "metrics_cluster": "m0"}, {"address": B, "metrics_cluster": "m1"}]}],
        "flow": {"enabled": true, "max_wait_ms": 2000, "max_queue": 2}})
    .to_string()
    .into_bytes();
    host.take_calls();
    let p = Rc::new(EndpointPicker::configure(host).unwrap());
    assert_eq!(host.take_calls(), vec![Call::SetTickPeriod(RELEASE_PERIOD)]);
    report(host, A, 0.0, 0.0);
    report(host, B, 0.0, 0.0);
    p
}

/// `address`'s health probe failed just now.
fn fail_probe(host: &MockHost, address: &str) {
    let mut failed = vec![0u8];
    failed.extend_from_slice(&host.now_ms.to_le_bytes());
    let _ = host.set_shared_data(&health_key(address), &failed, None);
}

/// A request of `tenant` at `priority` on stream `id`: what its body hook answered.
fn arrive(
    host: &mut MockHost,
    p: &Rc<EndpointPicker>,
    id: u32,
    tenant: &str,
    priority: &str,
) -> (PickedRequest, Flow) {
    let size = chat(
        host,
        json!([{"role": "user", "content": format!("{tenant} {id}")}]),
    );
    host.set_text_property("sluice_tenant", tenant);
    host.set_text_property("sluice_priority", priority);
    let mut req = p.new_request(id);
    req.on_request_headers(host, false);
    let flow = req.on_request_body(host, size, true);
    (req, flow)
}

#[test]
fn a_full_pool_queues_and_releases_as_capacity_frees_interactive_first() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    let (mut r1, f1) = arrive(&mut host, &p, 1, "t1", "interactive");
    let first = decision(&host)["endpoint"].as_str().unwrap().to_string();
    let (_r2, f2) = arrive(&mut host, &p, 2, "t1", "interactive");
    assert_eq!(
        (f1, f2),
        (Flow::Continue, Flow::Continue),
        "one per endpoint"
    );
    // Both endpoints full: a batch request, then an interactive one, wait.
    let (mut r3, f3) = arrive(&mut host, &p, 3, "t2", "batch");
    assert!(host
        .counted()
        .contains(&"sluice.endpoint.queued.pool.pool-a.priority.batch".into()));
    let (mut r4, f4) = arrive(&mut host, &p, 4, "t3", "interactive");
    assert_eq!((f3, f4), (Flow::Pause, Flow::Pause));
    // The queue is full (2): the next one is refused at once.
    let (_r5, f5) = arrive(&mut host, &p, 5, "t4", "interactive");
    assert_eq!(f5, Flow::Pause);
    assert_eq!(host.reply().unwrap().status, 429);
    // Still full: a tick releases nothing.
    host.take_calls();
    p.on_worker_tick(&mut host);
    assert!(!host.calls().contains(&Call::Resume(Side::Request)));
    // Request 1 ends: its endpoint has room, and the interactive request (4) goes first,
    // at once (not at the next tick).
    host.take_calls();
    host.now_ms += 20;
    r1.on_log(&mut host);
    let calls = host.take_calls();
    assert_eq!(
        calls
            .iter()
            .find(|c| matches!(c, Call::SetEffectiveContext(_))),
        Some(&Call::SetEffectiveContext(4)),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| matches!(c, Call::SetHeader(Side::Request, h, v) if h == "x-sluice-endpoint" && v.starts_with(&first))));
    assert_eq!(
        calls
            .iter()
            .filter(|c| **c == Call::Resume(Side::Request))
            .count(),
        1
    );
    assert_eq!(decision(&host)["queued_ms"], 20);
    // The released request counts in flight; when it ends, the batch one takes its slot.
    assert_eq!(shared_counter(&host, &in_flight_key(&first)), 1);
    r4.on_log(&mut host);
    assert!(
        host.take_calls().contains(&Call::SetEffectiveContext(3)),
        "then the batch one"
    );
    assert_eq!(shared_counter(&host, &in_flight_key(&first)), 1);
    r3.on_log(&mut host);
    assert_eq!(shared_counter(&host, &in_flight_key(&first)), 0);
}

#[test]
fn a_queued_request_released_when_no_report_is_fresh_goes_to_envoy_and_says_it_waited() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    let (mut r1, _) = arrive(&mut host, &p, 1, "t1", "interactive");
    let (_r2, _) = arrive(&mut host, &p, 2, "t1", "interactive");
    let (_r3, f3) = arrive(&mut host, &p, 3, "t2", "interactive");
    assert_eq!(f3, Flow::Pause);
    // Both endpoints fail their health probes while it waits.
    host.now_ms += 50;
    fail_probe(&host, A);
    fail_probe(&host, B);
    host.now_ms += VIEW_TTL_MS;
    host.take_calls();
    r1.on_log(&mut host);
    let calls = host.take_calls();
    assert!(calls.contains(&Call::SetEffectiveContext(3)), "{calls:?}");
    assert!(calls.contains(&Call::Resume(Side::Request)), "{calls:?}");
    assert_eq!(decision(&host)["reason"], "fallback");
    assert_eq!(decision(&host)["queued_ms"], 50 + VIEW_TTL_MS);
}

#[test]
fn a_request_that_waits_too_long_gets_429_with_retry_after_and_a_gone_one_is_never_released() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    let (mut r1, _) = arrive(&mut host, &p, 1, "t", "interactive");
    let (_r2, _) = arrive(&mut host, &p, 2, "t", "interactive");
    let (_r3, f3) = arrive(&mut host, &p, 3, "t", "interactive");
    let (mut r4, f4) = arrive(&mut host, &p, 4, "u", "interactive");
    assert_eq!((f3, f4), (Flow::Pause, Flow::Pause));
    // The client of 4 goes away while it waits.
    r4.on_log(&mut host);
    host.now_ms += 2_000;
    host.take_calls();
    p.on_worker_tick(&mut host);
    let calls = host.take_calls();
    assert_eq!(calls.first(), Some(&Call::SetEffectiveContext(3)));
    let reply = host.reply();
    let Some(Call::SendReply {
        status, headers, ..
    }) = calls.iter().find(|c| matches!(c, Call::SendReply { .. }))
    else {
        panic!("no reply: {calls:?} {reply:?}");
    };
    assert_eq!(*status, 429);
    assert!(headers.contains(&("retry-after".into(), "2".into())));
    assert!(!calls.contains(&Call::SetEffectiveContext(4)));
    // Capacity frees: nobody is left to release.
    r1.on_log(&mut host);
    host.take_calls();
    p.on_worker_tick(&mut host);
    assert!(!host
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SetEffectiveContext(_))));
}

#[test]
fn a_request_queued_for_a_pool_that_went_down_gets_503_not_429() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    let (_r1, _) = arrive(&mut host, &p, 1, "t", "interactive");
    let (_r2, _) = arrive(&mut host, &p, 2, "t", "interactive");
    let (_r3, f3) = arrive(&mut host, &p, 3, "t", "interactive");
    assert_eq!(f3, Flow::Pause);
    // No endpoint has reported since (stale after 3 s): the pool is down, not busy.
    host.now_ms += 3_500;
    host.take_calls();
    p.on_worker_tick(&mut host);
    let reply = host.reply().expect("a reply");
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("pool_unavailable"), "{reply:?}");
    assert_eq!(decision(&host)["reason"], "pool_down");
}

#[test]
fn a_worker_holds_its_batch_requests_while_another_has_interactive_ones_waiting() {
    let mut host = MockHost::new();
    // Two workers: two VMs of the filter over one shared data.
    let w1 = flow_picker(&mut host);
    let w2 = flow_picker(&mut host);
    let (mut r1, _) = arrive(&mut host, &w1, 1, "t", "interactive");
    let (_r2, _) = arrive(&mut host, &w1, 2, "t", "interactive");
    let (_b, fb) = arrive(&mut host, &w1, 3, "t", "batch");
    let (_i, fi) = arrive(&mut host, &w2, 4, "u", "interactive");
    assert_eq!((fb, fi), (Flow::Pause, Flow::Pause));
    r1.on_log(&mut host);
    host.take_calls();
    w1.on_worker_tick(&mut host);
    assert!(
        !host
            .calls()
            .iter()
            .any(|c| matches!(c, Call::SetEffectiveContext(_))),
        "batch held"
    );
    w2.on_worker_tick(&mut host);
    assert!(host.calls().contains(&Call::SetEffectiveContext(4)));
}

#[test]
fn load_from_elsewhere_counts_only_when_two_reports_agree() {
    let load = |waiting: f64, running: f64| EngineLoad {
        waiting,
        running,
        kv_cache: None,
        loras: Vec::new(),
    };
    // Four running, one of them the gateway's: three from elsewhere.
    let first = Report::new(load(0.0, 4.0), 0, 1, None);
    assert_eq!(first.foreign, 3.0);
    // All four the gateway's now: none.
    let second = Report::new(load(0.0, 4.0), 1, 4, Some(&first));
    assert_eq!(second.foreign, 0.0);
    // A blip (the gauges read before two of the gateway's requests ended): not yet.
    let blip = Report::new(load(0.0, 6.0), 2, 2, Some(&second));
    assert_eq!((blip.raw_foreign, blip.foreign), (4.0, 0.0));
    // It persists: four from elsewhere.
    let steady = Report::new(load(1.0, 5.0), 3, 2, Some(&blip));
    assert_eq!(steady.foreign, 4.0);
}

/// Whether the end of `ending` resumed stream `id` (released it from the queue).
fn released(host: &mut MockHost, ending: &mut PickedRequest, id: u32) -> bool {
    host.take_calls();
    ending.on_log(host);
    let calls = host.take_calls();
    calls.contains(&Call::SetEffectiveContext(id)) && calls.contains(&Call::Resume(Side::Request))
}

#[test]
fn batch_requests_leave_the_headroom_to_interactive_ones() {
    let mut host = MockHost::new();
    host.now_ms = 1_800_000_000_000;
    // One endpoint of three slots, one of them kept from batch work.
    host.plugin_config = json!({"pools": [{"name": "pool-a", "engine": "vllm", "max_in_flight": 3,
        "endpoints": [{"address": A, "metrics_cluster": "m0"}]}],
        "flow": {"enabled": true, "max_wait_ms": 60000, "batch_headroom": 1}})
    .to_string()
    .into_bytes();
    let p = Rc::new(EndpointPicker::configure(&mut host).unwrap());
    report(&host, A, 0.0, 0.0);
    let (mut b1, f1) = arrive(&mut host, &p, 1, "t", "batch");
    let (mut b2, f2) = arrive(&mut host, &p, 2, "t", "batch");
    let (mut b3, f3) = arrive(&mut host, &p, 3, "t", "batch");
    assert_eq!(
        (f1, f2, f3),
        (Flow::Continue, Flow::Continue, Flow::Pause),
        "batch fills two slots of three"
    );
    // An interactive request passes the waiting batch one and takes the third slot.
    let (mut i4, f4) = arrive(&mut host, &p, 4, "u", "interactive");
    assert_eq!(f4, Flow::Continue);
    let (mut i5, f5) = arrive(&mut host, &p, 5, "u", "interactive");
    assert_eq!(f5, Flow::Pause, "the endpoint is full");
    // A batch request ends: the waiting interactive one goes, not the batch one.
    assert!(released(&mut host, &mut b1, 5));
    assert_eq!(shared_counter(&host, &in_flight_key(A)), 3);
    // An interactive one ends: two in flight, still the batch limit.
    assert!(!released(&mut host, &mut i4, 3), "batch still held");
    // Below the batch limit: the batch request goes.
    assert!(released(&mut host, &mut b2, 3));
    assert_eq!(shared_counter(&host, &in_flight_key(A)), 2);
    i5.on_log(&mut host);
    b3.on_log(&mut host);
    assert_eq!(shared_counter(&host, &in_flight_key(A)), 0);
}

#[test]
fn an_endpoint_at_its_flow_limit_passes_the_request_to_the_next_in_the_ranking() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    // Another worker's request holds A's only slot (counted after this one looked).
    let _ = add_shared(&host, &in_flight_key(A), 1);
    assert_eq!(
        p.reserve(&host, 0, &[0, 1]),
        Some((1, 1)),
        "B, not A over its limit"
    );
    assert_eq!(shared_counter(&host, &in_flight_key(A)), 1);
    // Both full (every slot taken since `saturated` looked): the first, over by one, as
    // Envoy would have sent it anyway.
    assert_eq!(p.reserve(&host, 0, &[0, 1]), Some((0, 2)));
    // A pool without a flow limit counts in its first whatever the count.
    let mut host = MockHost::new();
    let plain = picker(&mut host, "vllm");
    let _ = add_shared(&host, &in_flight_key(A), 5);
    assert_eq!(plain.reserve(&host, 0, &[0, 1]), Some((0, 6)));
}

#[test]
fn a_conversation_whose_home_is_at_its_flow_limit_goes_to_the_endpoint_with_room() {
    let mut host = MockHost::new();
    let p = flow_picker(&mut host);
    // The same conversation twice: the prefix pulls the second to A, which is full.
    let messages = json!([{"role": "system", "content": "a long shared system prompt, many blocks"},
        {"role": "user", "content": "one"}]);
    let (_r1, h1) = send(&mut host, &p, messages.clone());
    let (_r2, h2) = send(&mut host, &p, messages);
    let (h1, h2) = (h1.unwrap(), h2.unwrap());
    assert_ne!(h1.split(',').next(), h2.split(',').next(), "{h1} / {h2}");
    assert_eq!(shared_counter(&host, &in_flight_key(A)), 1);
    assert_eq!(shared_counter(&host, &in_flight_key(B)), 1);
    assert_eq!(decision(&host)["in_flight"], 1);
}
