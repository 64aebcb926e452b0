//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! For each descriptor: its limit is the descriptor's `limit` override (how the Sluice
//! filter sends a key's own limit) or, for Envoy's native ratelimit filter, the static
//! limits file. Hits are the descriptor's `hits_addend`, else the request's, else 1.
//! Sluice's design for reconciliation:
//! * `is_negative_hits: true` (the proto's own field) refunds: the counter goes down;
//! * an entry `sluice_force: true` charges regardless of the limit (usage that went over
//!   its reservation); the entry is not part of the counter's identity.
//!
//! All the descriptors of one call are checked and updated atomically: when one does not
//! fit, nothing is added and the answer is OVER_LIMIT.

use crate::limits::{LimitsFile, RateLimit, Unit};
use crate::storage::{Mode, Op, Storage};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

pub use sluice_common::rls::FORCE_ENTRY;

/// Decision counters, logged by the binary.
#[derive(Default)]
pub struct Outcomes {
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub unavailable: AtomicU64,
}

pub struct RateLimiter {
    pub limits: Option<LimitsFile>,
    pub storage: Storage,
    pub outcomes: Outcomes,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RateLimiter {
    pub async fn decide(
        &self,
        req: RateLimitRequest,
        now: u64,
    ) -> Result<RateLimitResponse, Status> {
        let default_hits = u64::from(req.hits_addend.max(1));
        let mut ops = Vec::new();
        // Per descriptor: its op's index and limit, if it has a limit.
        let mut plan: Vec<Option<(usize, RateLimit, u64)>> =
            Vec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            let mut force = false;
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .filter(|e| {
                    let is_force = e.key == FORCE_ENTRY;
                    force |= is_force && e.value == "true";
                    !is_force
                })
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let limit = match &d.limit {
                Some(o) => Unit::from_proto(o.unit).map(|unit| RateLimit {
                    unit,
                    requests_per_unit: u64::from(o.requests_per_unit),
                }),
                None => self
                    .limits
                    .as_ref()
                    .and_then(|l| l.lookup(&req.domain, &entries)),
            };
            let Some(limit) = limit else {
                plan.push(None);
                continue;
            };
            let window = limit.unit.seconds();
            let start = now - now % window;
            let identity: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let hits = d.hits_addend.as_ref().map_or(default_hits, |h| h.value);
            let mode = if d.is_negative_hits {
                Mode::Refund
            } else if force {
                Mode::Force
            } else {
                Mode::Check
            };
            ops.push(Op::new(
                format!(
                    "rl|{}|{}|{:?}|{start}",
                    req.domain,
                    identity.join("|"),
                    limit.unit
                ),
                limit.requests_per_unit,
                hits,
                mode,
                start + window - now,
            ));
            plan.push(Some((ops.len() - 1, limit, start + window - now)));
        }
        let applied = self.storage.apply(&ops, now).await.map_err(|e| {
            self.outcomes.unavailable.fetch_add(1, Ordering::Relaxed);
            Status::unavailable(e.to_string())
        })?;
        let mut over = false;
        let statuses = plan
            .iter()
            .map(|p| match p {
                None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                },
                Some((i, limit, reset)) => {
                    let Some(op) = ops.get(*i) else {
                        return DescriptorStatus::default();
                    };
                    let used = applied.used.get(*i).copied().unwrap_or(0);
                    let this_over =
                        op.mode == Mode::Check && !applied.fits && used + op.hits > op.limit;
                    over |= this_over;
                    DescriptorStatus {
                        code: if this_over { Code::OverLimit } else { Code::Ok } as i32,
                        current_limit: Some(ProtoRateLimit {
                            name: String::new(),
                            requests_per_unit: u32::try_from(limit.requests_per_unit)
                                .unwrap_or(u32::MAX),
                            unit: limit.unit.to_proto(),
                        }),
                        limit_remaining: u32::try_from(op.limit.saturating_sub(used))
                            .unwrap_or(u32::MAX),
                        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                            seconds: i64::try_from(*reset).unwrap_or(i64::MAX),
                            nanos: 0,
                        }),
                        ..DescriptorStatus::default()
                    }
                }
            })
            .collect();
        // A call that did not fit (all-or-nothing) is over the limit even if no single
        // descriptor alone would be.
        let overall = if over || !applied.fits {
            Code::OverLimit
        } else {
            Code::Ok
        };
        match overall {
            Code::OverLimit => self.outcomes.over_limit.fetch_add(1, Ordering::Relaxed),
            _ => self.outcomes.ok.fetch_add(1, Ordering::Relaxed),
        };
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..RateLimitResponse::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.into_inner(), now())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Memory;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use sluice_common::rls::{RULE_ENTRY, SUBJECT_ENTRY};

    fn limiter(limits: Option<&str>) -> RateLimiter {
        RateLimiter {
            limits: limits.map(|y| LimitsFile::parse(y).unwrap()),
            storage: Storage::Memory(Memory::default()),
            outcomes: Outcomes::default(),
        }
    }

    fn descriptor(
        entries: &[(&str, &str)],
        limit: Option<u32>,
        hits: Option<u64>,
        negative: bool,
    ) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            limit: limit.map(|l| RateLimitOverride {
                requests_per_unit: l,
                unit: 2,
            }),
            hits_addend: hits.map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
            is_negative_hits: negative,
        }
    }

    fn call(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "sluice".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    async fn code(l: &RateLimiter, d: Vec<RateLimitDescriptor>, now: u64) -> i32 {
        l.decide(call(d), now).await.unwrap().overall_code
    }

    #[tokio::test]
    async fn override_limits_refunds_and_forced_charges() {
        let l = limiter(None);
        let key = [(RULE_ENTRY, "key"), (SUBJECT_ENTRY, "k1")];
        let ok = Code::Ok as i32;
        let over = Code::OverLimit as i32;
        assert_eq!(
            code(&l, vec![descriptor(&key, Some(100), Some(60), false)], 0).await,
            ok
        );
        assert_eq!(
            code(&l, vec![descriptor(&key, Some(100), Some(50), false)], 1).await,
            over
        );
        // Refund 30: now 50 fits.
        assert_eq!(
            code(&l, vec![descriptor(&key, Some(100), Some(30), true)], 2).await,
            ok
        );
        let r = l
            .decide(call(vec![descriptor(&key, Some(100), Some(50), false)]), 3)
            .await
            .unwrap();
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (ok, 20));
        // A forced charge goes over the limit; the force entry is not part of the identity.
        let mut forced = key.to_vec();
        forced.push((FORCE_ENTRY, "true"));
        assert_eq!(
            code(&l, vec![descriptor(&forced, Some(100), Some(40), false)], 4).await,
            ok
        );
        let r = l
            .decide(call(vec![descriptor(&key, Some(100), Some(1), false)]), 5)
            .await
            .unwrap();
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (over, 0));
        // The next minute starts from zero.
        assert_eq!(
            code(&l, vec![descriptor(&key, Some(100), Some(100), false)], 60).await,
            ok
        );
    }

    #[tokio::test]
    async fn one_call_is_all_or_nothing() {
        let l = limiter(None);
        let a = [(SUBJECT_ENTRY, "a")];
        let b = [(SUBJECT_ENTRY, "b")];
        assert_eq!(
            code(&l, vec![descriptor(&b, Some(1), None, false)], 0).await,
            Code::Ok as i32
        );
        let both = vec![
            descriptor(&a, Some(5), None, false),
            descriptor(&b, Some(1), None, false),
        ];
        assert_eq!(code(&l, both, 0).await, Code::OverLimit as i32);
        // `a` was not charged by the refused call.
        let r = l
            .decide(call(vec![descriptor(&a, Some(5), None, false)]), 0)
            .await
            .unwrap();
        assert_eq!(r.statuses[0].limit_remaining, 4);
    }

    #[tokio::test]
    async fn static_limits_for_the_native_filter() {
        let l = limiter(Some("domain: sluice\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"));
        let t = [("tenant", "x")];
        for want in [Code::Ok, Code::Ok, Code::OverLimit] {
            assert_eq!(
                code(&l, vec![descriptor(&t, None, None, false)], 0).await,
                want as i32
            );
        }
        // No limit configured: always OK.
        assert_eq!(
            code(
                &l,
                vec![descriptor(&[("other", "y")], None, None, false)],
                0
            )
            .await,
            Code::Ok as i32
        );
    }
}
