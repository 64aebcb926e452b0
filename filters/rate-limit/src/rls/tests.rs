use super::*;
use crate::config::Tier;
use crate::decide::Kind;
use crate::store::{Quota, Taken};

fn check(kind: Kind) -> Check {
    Check {
        rule: "team".into(),
        kind,
        quota: Quota {
            limit: 100,
            window: 60,
        },
        store_key: "rl:team:tpm:7".into(),
        tier: Tier::Global,
    }
}

fn reply(code: i32, statuses: Vec<DescriptorStatus>) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code,
        statuses,
    }
    .encode_to_vec()
}

fn status(code: i32, remaining: u32, reset: i64) -> DescriptorStatus {
    DescriptorStatus {
        code,
        limit_remaining: remaining,
        duration_until_reset: Some(Duration {
            seconds: reset,
            nanos: 0,
        }),
    }
}

const MODES: [(FailureMode, OnError); 3] = [
    (FailureMode::Deny, OnError::Refuse),
    (FailureMode::Allow, OnError::Admit),
    (FailureMode::Local, OnError::CheckLocally),
];

#[test]
fn an_admission_request_names_each_limit_and_takes_its_amount() {
    let bytes = admission_request(
        "sluice",
        &[check(Kind::RequestsPerMinute), check(Kind::TokensPerMinute)],
        42,
    );
    let r = RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(r.domain, "sluice");
    let hits: Vec<u64> = r
        .descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().unwrap().value)
        .collect();
    assert_eq!(hits, [1, 42]);
    let d = &r.descriptors[1];
    let entries: Vec<(&str, &str)> = d
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        entries,
        [
            ("sluice_rule", "team"),
            ("sluice_kind", "tpm"),
            ("subject", "rl:team:tpm:7")
        ]
    );
    assert_eq!(
        d.limit,
        Some(RateLimitOverride {
            requests_per_unit: 100,
            unit: 2
        })
    );
    assert!(!d.is_negative_hits);
}

#[test]
fn ok_and_over_limit_are_the_same_under_every_failure_mode() {
    let ok = reply(
        CODE_OK,
        vec![status(CODE_OK, 9, 30), status(CODE_OK, 58, 30)],
    );
    let over = reply(
        CODE_OVER_LIMIT,
        vec![status(CODE_OK, 9, 30), status(CODE_OVER_LIMIT, 0, 17)],
    );
    for (mode, _) in MODES {
        let answer = |m| Answer::Replied {
            status: 0,
            message: Some(m),
        };
        assert_eq!(
            verdict(answer(&ok), mode),
            Verdict::Ok {
                remaining: vec![9, 58]
            }
        );
        assert_eq!(
            verdict(answer(&over), mode),
            Verdict::OverLimit {
                index: 1,
                remaining: 0,
                retry_after: 17
            }
        );
    }
}

#[test]
fn every_failure_is_an_error_with_the_failure_modes_action() {
    let garbage = [0xff_u8, 0xff, 0xff];
    let unknown = reply(0, vec![]);
    let failures = [
        Answer::NotSent,
        // A gRPC error (14 UNAVAILABLE) or a timeout (4 DEADLINE_EXCEEDED): no message.
        Answer::Replied {
            status: 14,
            message: None,
        },
        Answer::Replied {
            status: 4,
            message: None,
        },
        Answer::Replied {
            status: 0,
            message: None,
        },
        Answer::Replied {
            status: 0,
            message: Some(&garbage),
        },
        Answer::Replied {
            status: 0,
            message: Some(&unknown),
        },
    ];
    for (mode, action) in MODES {
        for f in failures {
            assert_eq!(
                verdict(f, mode),
                Verdict::Error(action),
                "{f:?} under {mode:?}"
            );
        }
    }
}

#[test]
fn settlement_refunds_or_force_charges_the_difference() {
    let held = |kind, amount| Held {
        check: check(kind),
        taken: Taken {
            window_start: 0,
            remaining: 0,
        },
        amount,
    };
    let refund = settlement(&held(Kind::TokensPerMinute, 100), 30).unwrap();
    assert_eq!(
        (refund.hits_addend.unwrap().value, refund.is_negative_hits),
        (70, true)
    );
    assert!(!refund.entries.iter().any(|e| e.key == FORCE_ENTRY));
    let over = settlement(&held(Kind::DailyTokens, 100), 130).unwrap();
    assert_eq!(
        (over.hits_addend.unwrap().value, over.is_negative_hits),
        (30, false)
    );
    assert!(over
        .entries
        .iter()
        .any(|e| e.key == FORCE_ENTRY && e.value == "true"));
    assert_eq!(settlement(&held(Kind::TokensPerMinute, 100), 100), None);
    assert_eq!(settlement(&held(Kind::RequestsPerMinute, 1), 500), None);
}
