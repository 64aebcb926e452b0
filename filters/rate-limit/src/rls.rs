//! The rate-limit service (Envoy RLS v3), reduced to what policy needs: the request a
//! stage sends, the usage reports it queues, and every answer (or failure) turned into a
//! [`Verdict`] under the configured failure mode, the way Envoy's own rate-limit client
//! reduces answers to OK, OverLimit or Error before any policy looks at them.
//!
//! The messages are prost types: wire-compatible subsets of `envoy.service.ratelimit.v3`
//! (unknown fields are skipped by prost). The names on the wire are
//! [`sluice_common::rls`]'s, shared with the service.

use crate::config::FailureMode;
use crate::decide::{Check, Held};
use prost::Message;
use sluice_common::rls::{
    unit_of, CODE_OK, CODE_OVER_LIMIT, FORCE_ENTRY, KIND_ENTRY, RULE_ENTRY, SUBJECT_ENTRY,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
    #[prost(bool, tag = "4")]
    pub is_negative_hits: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit`
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// 1 OK, 2 OVER_LIMIT.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The descriptor of a check: its identity (rule, kind, subject slot) and its limit.
pub fn descriptor(check: &Check, hits: u64, negative: bool, force: bool) -> RateLimitDescriptor {
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    let mut entries = vec![
        entry(RULE_ENTRY, &check.rule),
        entry(KIND_ENTRY, check.kind.short()),
        entry(SUBJECT_ENTRY, &check.store_key),
    ];
    if force {
        entries.push(entry(FORCE_ENTRY, "true"));
    }
    RateLimitDescriptor {
        entries,
        limit: unit_of(check.quota.window).map(|unit| RateLimitOverride {
            requests_per_unit: u32::try_from(check.quota.limit).unwrap_or(u32::MAX),
            unit,
        }),
        hits_addend: Some(UInt64Value { value: hits }),
        is_negative_hits: negative,
    }
}

/// The request that takes the global `checks` of an admission: 1 for request counts, the
/// reservation `tokens` for token budgets.
pub fn admission_request(domain: &str, checks: &[Check], tokens: u64) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: checks
            .iter()
            .map(|c| descriptor(c, if c.kind.is_tokens() { tokens } else { 1 }, false, false))
            .collect(),
        hits_addend: 0,
    }
    .encode_to_vec()
}

/// The report settling a global token reservation with the real usage: a refund of what
/// was not used, or a forced charge of what went over (already served, so never refused).
/// `None` when the reservation was exact, or the check counts no tokens.
pub fn settlement(held: &Held, used: u64) -> Option<RateLimitDescriptor> {
    if !held.check.kind.is_tokens() {
        return None;
    }
    if used < held.amount {
        Some(descriptor(&held.check, held.amount - used, true, false))
    } else if used > held.amount {
        Some(descriptor(&held.check, used - held.amount, false, true))
    } else {
        None
    }
}

/// A batch of settlement reports, sent as one call that asks for nothing.
pub fn report_request(domain: &str, batch: Vec<RateLimitDescriptor>) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: batch,
        hits_addend: 0,
    }
    .encode_to_vec()
}

/// What came back from the service for an admission call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The call could not be started (no such cluster, ...).
    NotSent,
    /// The call ended with gRPC `status` (0: OK) and, when OK, the response message.
    Replied {
        status: u32,
        message: Option<&'a [u8]>,
    },
}

/// What to do when the service failed, per `failure_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `deny`: refuse with 503 (nothing is admitted unchecked).
    Refuse,
    /// `allow`: admit without the global checks.
    Admit,
    /// `local`: check the global limits against this proxy's own counters.
    CheckLocally,
}

/// An answer reduced to what policy acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every global check passed; what each has left, in the order sent.
    Ok { remaining: Vec<u64> },
    /// The check at `index` (in the order sent) is over its limit.
    OverLimit {
        index: usize,
        remaining: u64,
        retry_after: u64,
    },
    /// No usable answer (not sent, a gRPC error or timeout, an unreadable or unknown
    /// reply): what the failure mode says.
    Error(OnError),
}

/// Reduce an answer to a [`Verdict`] under `mode`.
pub fn verdict(answer: Answer, mode: FailureMode) -> Verdict {
    let on_error = Verdict::Error(match mode {
        FailureMode::Deny => OnError::Refuse,
        FailureMode::Allow => OnError::Admit,
        FailureMode::Local => OnError::CheckLocally,
    });
    let Answer::Replied {
        status: 0,
        message: Some(message),
    } = answer
    else {
        return on_error;
    };
    let Ok(reply) = RateLimitResponse::decode(message) else {
        return on_error;
    };
    match reply.overall_code {
        CODE_OK => Verdict::Ok {
            remaining: reply
                .statuses
                .iter()
                .map(|s| u64::from(s.limit_remaining))
                .collect(),
        },
        CODE_OVER_LIMIT => {
            let index = reply
                .statuses
                .iter()
                .position(|s| s.code == CODE_OVER_LIMIT)
                .unwrap_or(0);
            let status = reply.statuses.get(index);
            Verdict::OverLimit {
                index,
                remaining: status.map_or(0, |s| u64::from(s.limit_remaining)),
                retry_after: status
                    .and_then(|s| s.duration_until_reset.as_ref())
                    .map_or(1, |d| u64::try_from(d.seconds).unwrap_or(1).max(1)),
            }
        }
        _ => on_error,
    }
}

#[cfg(test)]
mod tests;
