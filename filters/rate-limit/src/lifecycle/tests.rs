//! The host calls each path through rate-limit causes.

use super::*;
use crate::config::FailureMode;
use crate::rls::{DescriptorStatus, RateLimitResponse};
use prost::Message;
use serde_json::json;
use sluice_common::rls::{CODE_OK, CODE_OVER_LIMIT};
use sluice_testkit::{Call, MockHost};

const NOW_MS: u64 = 1_800_000_030_000;

fn policy(limits: serde_json::Value) -> String {
    json!({"key_id": "k1", "tenant": "team-a", "models": ["*"], "limits": limits}).to_string()
}

fn filter(host: &mut MockHost, config: serde_json::Value) -> Rc<RateLimit> {
    host.now_ms = NOW_MS;
    host.plugin_config = config.to_string().into_bytes();
    let f = Rc::new(RateLimit::configure(host).unwrap());
    host.take_calls();
    f
}

fn tokens_config(failure_mode: &str) -> serde_json::Value {
    json!({"stage": "tokens", "key_tier": "global",
           "global": {"cluster": "ratelimit", "failure_mode": failure_mode}})
}

/// A request at the tokens stage with 40 prompt tokens and a cap of 60.
fn tokens_request(host: &mut MockHost, limits: serde_json::Value) {
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.set_text_property("sluice_policy", &policy(limits));
    host.set_text_property("sluice_prompt_tokens", "40");
    host.set_text_property("sluice_max_output_tokens", "60");
}

fn answer(code: i32, remaining: u32) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code,
        statuses: vec![DescriptorStatus {
            code,
            limit_remaining: remaining,
            duration_until_reset: None,
        }],
    }
    .encode_to_vec()
}

/// The end of a served stream: status 200 and its usage.
fn served(host: &mut MockHost, prompt: u64, completion: u64) {
    host.properties
        .insert("response.code".into(), 200u64.to_le_bytes().to_vec());
    host.set_text_property("sluice_prompt_tokens", &prompt.to_string());
    host.set_text_property("sluice_completion_tokens", &completion.to_string());
}

fn grpc_call() -> Call {
    Call::DispatchGrpc {
        cluster: "ratelimit".into(),
        method: "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".into(),
        timeout: Duration::from_millis(50),
    }
}

fn record(host: &MockHost) -> serde_json::Value {
    serde_json::from_str(host.text_property("sluice_ratelimit").unwrap()).unwrap()
}

#[test]
fn configuring_a_global_stage_starts_the_report_timer() {
    let mut host = MockHost::new();
    host.plugin_config = tokens_config("deny").to_string().into_bytes();
    RateLimit::configure(&mut host).unwrap();
    assert_eq!(host.calls(), vec![Call::SetTickPeriod(REPORT_PERIOD)]);
    // The stage comes from the root id when the config does not name it.
    let mut host = MockHost::new();
    host.plugin_config = br#"{"limits": []}"#.to_vec();
    host.set_text_property("plugin_root_id", "sluice-ratelimit-admission");
    assert!(RateLimit::configure(&mut host).is_ok());
    host.properties.clear();
    assert!(RateLimit::configure(&mut host).is_err(), "no stage at all");
}

#[test]
fn global_ok_resumes_then_settles_with_the_real_usage() {
    let mut host = MockHost::new();
    let f = filter(&mut host, tokens_config("deny"));
    tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
    let mut req = f.new_request(1);
    assert_eq!(req.on_request_headers(&mut host, false), Flow::Pause);
    assert_eq!(host.effects(), vec![grpc_call()]);
    assert_eq!(host.counted(), vec!["sluice.rate_limit.local.allowed"]);
    // The body waits with the headers while the service decides.
    assert_eq!(req.on_request_body(&mut host, 10, true), Flow::Pause);
    host.take_calls();

    host.grpc_answer = Some(answer(CODE_OK, 900));
    req.on_grpc_response(&mut host, 1, 0, 100);
    assert_eq!(host.effects(), vec![Call::Resume(Side::Request)]);
    assert_eq!(host.counted(), vec!["sluice.rate_limit.global.ok"]);
    host.take_calls();

    assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
    assert_eq!(
        host.take_calls(),
        vec![
            Call::SetHeader(
                Side::Response,
                "x-ratelimit-limit-tokens".into(),
                "1000".into()
            ),
            Call::SetHeader(
                Side::Response,
                "x-ratelimit-remaining-tokens".into(),
                "900".into()
            ),
            Call::SetHeader(
                Side::Response,
                "x-ratelimit-reset-tokens".into(),
                "30s".into()
            ),
        ]
    );
    // 100 reserved (40 + 60), 70 used: a refund of 30 is queued for the service.
    served(&mut host, 40, 30);
    req.on_log(&mut host);
    assert_eq!(
        record(&host)["tokens"],
        json!({"allowed": true, "reserved": 100, "reconciled": 70})
    );
    assert_eq!(f.reports.len(), 1);
    host.take_calls();
    f.on_tick(&mut host);
    // Reports are sent with a timeout of at least a second.
    assert_eq!(
        host.calls(),
        vec![Call::DispatchGrpc {
            cluster: "ratelimit".into(),
            method: "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".into(),
            timeout: Duration::from_millis(1000),
        }]
    );
    assert!(f.reports.is_empty());
}

#[test]
fn global_over_limit_is_a_429_and_the_request_is_not_resumed() {
    for mode in ["deny", "allow", "local"] {
        let mut host = MockHost::new();
        let f = filter(&mut host, tokens_config(mode));
        tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
        let mut req = f.new_request(1);
        req.on_request_headers(&mut host, false);
        host.take_calls();
        host.grpc_answer = Some(answer(CODE_OVER_LIMIT, 12));
        req.on_grpc_response(&mut host, 1, 0, 100);
        let reply = host.reply().unwrap();
        assert_eq!(reply.status, 429, "{mode}");
        assert!(reply
            .headers
            .contains(&("x-ratelimit-remaining-tokens".into(), "12".into())));
        assert!(
            !host.calls().contains(&Call::Resume(Side::Request)),
            "{mode}"
        );
        assert!(host
            .counted()
            .contains(&"sluice.rate_limit.global.over_limit".to_string()));
        // Nothing held: the end of the stream settles nothing.
        host.take_calls();
        req.on_log(&mut host);
        assert!(host.calls().is_empty(), "{mode}: {:?}", host.calls());
    }
}

/// A failed call (a gRPC error, a timeout, a call that could not start) under each mode.
#[test]
fn a_failed_service_follows_the_failure_mode() {
    // (grpc status of the answer, or None: the call could not be dispatched)
    let failures: [Option<u32>; 3] = [Some(14), Some(4), None];
    for failure in failures {
        for (mode, want) in [
            (FailureMode::Deny, "deny"),
            (FailureMode::Allow, "allow"),
            (FailureMode::Local, "local"),
        ] {
            let mut host = MockHost::new();
            let f = filter(&mut host, tokens_config(want));
            assert_eq!(f.config.global.as_ref().unwrap().failure_mode, mode);
            tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
            host.callouts_fail = failure.is_none();
            let mut req = f.new_request(1);
            let flow = req.on_request_headers(&mut host, false);
            if let Some(status) = failure {
                assert_eq!(flow, Flow::Pause);
                host.grpc_status = (status, Some("unavailable".into()));
                req.on_grpc_response(&mut host, 1, status, 0);
            }
            let resumed = host.calls().contains(&Call::Resume(Side::Request));
            let admitted = if failure.is_some() {
                resumed
            } else {
                flow == Flow::Continue
            };
            let case = format!("{want} after {failure:?}");
            match mode {
                FailureMode::Deny => {
                    assert!(!admitted, "{case}");
                    let reply = host.reply().unwrap();
                    assert_eq!(reply.status, 503, "{case}");
                    assert!(host
                        .counted()
                        .contains(&"sluice.rate_limit.global.failure.denied".into()));
                }
                FailureMode::Allow => {
                    assert!(admitted && !host.replied(), "{case}");
                    assert!(host
                        .counted()
                        .contains(&"sluice.rate_limit.global.failure.allowed".into()));
                }
                FailureMode::Local => {
                    assert!(admitted && !host.replied(), "{case}");
                    assert!(host
                        .counted()
                        .contains(&"sluice.rate_limit.global.failure.local".into()));
                }
            }
        }
    }
}

#[test]
fn local_mode_counts_here_and_settles_here() {
    let mut host = MockHost::new();
    let f = filter(&mut host, tokens_config("local"));
    tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
    let mut req = f.new_request(1);
    req.on_request_headers(&mut host, false);
    req.on_grpc_response(&mut host, 1, 14, 0);
    assert!(host.calls().contains(&Call::Resume(Side::Request)));
    assert_eq!(
        host.shared.borrow().len(),
        1,
        "the key's counter is now local"
    );
    host.take_calls();
    served(&mut host, 40, 10);
    req.on_log(&mut host);
    // Settled in shared data, nothing queued for the service.
    assert!(matches!(
        host.effects().first(),
        Some(Call::SetSharedData(_))
    ));
    assert!(f.reports.is_empty());
}

#[test]
fn admission_takes_local_counters_and_gives_slots_back_at_the_end() {
    let mut host = MockHost::new();
    let f = filter(&mut host, json!({"stage": "admission"}));
    let limits = json!({"requests_per_minute": 2, "max_parallel": 1});
    let mut first = {
        tokens_request(&mut host, limits.clone());
        let mut r = f.new_request(1);
        assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
        assert_eq!(
            host.effects(),
            vec![
                Call::SetSharedData(
                    host.shared
                        .borrow()
                        .keys()
                        .find(|k| k.contains(":rpm:"))
                        .unwrap()
                        .clone()
                ),
                Call::SetSharedData(
                    host.shared
                        .borrow()
                        .keys()
                        .find(|k| k.contains(":par:"))
                        .unwrap()
                        .clone()
                ),
            ]
        );
        r
    };
    // A second request while the first is in flight: over max_parallel.
    tokens_request(&mut host, limits.clone());
    let mut second = f.new_request(1);
    assert_eq!(second.on_request_headers(&mut host, false), Flow::Pause);
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 429);
    assert!(reply.body.contains("requests in flight"), "{}", reply.body);
    assert_eq!(record(&host)["admission"]["decided_by"], "key:max_parallel");
    assert!(host
        .counted()
        .contains(&"sluice.rate_limit.refused.rule.key.kind.max_parallel".into()));
    // The first ends: its slot is free again, and the request count stays taken.
    served(&mut host, 0, 0);
    first.on_log(&mut host);
    tokens_request(&mut host, limits.clone());
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, false),
        Flow::Continue
    );
    // Three requests in the minute: the rate refuses the fourth.
    tokens_request(&mut host, limits);
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, false),
        Flow::Pause
    );
    assert!(host.reply().unwrap().body.contains("requests per minute"));
}

#[test]
fn a_request_larger_than_the_whole_window_is_refused_without_retry_after() {
    let mut host = MockHost::new();
    let f = filter(&mut host, json!({"stage": "tokens"}));
    tokens_request(&mut host, json!({"tokens_per_minute": 50}));
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, false),
        Flow::Pause
    );
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 429);
    assert!(reply.body.contains("request_too_large"), "{}", reply.body);
    assert!(!reply.headers.iter().any(|(k, _)| k == "retry-after"));
    assert_eq!(host.counted(), vec!["sluice.rate_limit.tokens.never_fits"]);
    assert_eq!(record(&host)["tokens"]["needed"], 100);
}

#[test]
fn a_model_rule_waits_for_the_body_when_no_router_named_the_model() {
    let mut host = MockHost::new();
    let f = filter(
        &mut host,
        json!({"stage": "tokens", "limits": [
            {"name": "big", "scope": "model", "match": ["big-*"], "tokens_per_minute": 500}]}),
    );
    tokens_request(&mut host, json!({}));
    host.request_body = br#"{"model":"big-1","max_tokens":600,"messages":[]}"#.to_vec();
    let mut req = f.new_request(1);
    assert_eq!(req.on_request_headers(&mut host, false), Flow::Pause);
    assert_eq!(req.on_request_body(&mut host, 5, false), Flow::Pause);
    let size = host.request_body.len();
    assert_eq!(req.on_request_body(&mut host, size, true), Flow::Pause);
    let reply = host.reply().unwrap();
    assert!(reply.body.contains("limit 'big'"), "{}", reply.body);
    assert!(
        reply.body.contains("lower max_tokens to at most 460"),
        "{}",
        reply.body
    );
}

#[test]
fn without_a_policy_or_counted_prompt_nothing_is_checked() {
    let mut host = MockHost::new();
    let f = filter(&mut host, json!({"stage": "tokens"}));
    host.next_request(&[(":path", "/v1/chat/completions")]);
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, false),
        Flow::Continue
    );
    host.set_text_property("sluice_policy", &policy(json!({"tokens_per_minute": 5})));
    assert_eq!(
        f.new_request(1).on_request_headers(&mut host, false),
        Flow::Continue
    );
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

#[test]
fn a_cache_hit_is_charged_to_token_budgets_only_when_configured() {
    for charge in [false, true] {
        let mut host = MockHost::new();
        let f = filter(
            &mut host,
            json!({"stage": "tokens", "charge_cache_hits": charge}),
        );
        tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
        // The response cache answered: this stage never saw the request, only its end.
        host.set_text_property("sluice_cache", r#"{"result":"hit","tier":"local"}"#);
        served(&mut host, 40, 10);
        let mut req = f.new_request(1);
        req.on_log(&mut host);
        let written: Vec<Call> = host
            .effects()
            .into_iter()
            .filter(|c| matches!(c, Call::SetSharedData(_)))
            .collect();
        if charge {
            assert_eq!(written.len(), 1, "the key's minute counter charged");
            assert_eq!(record(&host), json!({"tokens": {"cache_hit_charged": 50}}));
            // The budget now holds the 50 tokens: a request of 960 more is over it.
            tokens_request(&mut host, json!({"tokens_per_minute": 1000}));
            host.set_text_property("sluice_prompt_tokens", "951");
            host.set_text_property("sluice_max_output_tokens", "0");
            let mut next = f.new_request(2);
            assert_eq!(next.on_request_headers(&mut host, false), Flow::Pause);
            assert_eq!(host.reply().map(|r| r.status), Some(429));
        } else {
            assert!(written.is_empty(), "{:?}", host.effects());
        }
    }
}
