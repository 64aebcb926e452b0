//! The Envoy RLS v3 messages the filter sends and reads, as prost types (wire-compatible
//! subsets of `envoy.service.ratelimit.v3`; unknown fields are skipped by prost).

use crate::decide::Check;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";
/// Entry that makes the service charge regardless of the limit (see sluice-ratelimit).
pub const FORCE_ENTRY: &str = "sluice_force";

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

pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

/// The proto unit of a window, if it is one (global limits use whole units).
pub fn unit_of(window: u64) -> Option<i32> {
    match window {
        1 => Some(1),
        60 => Some(2),
        3_600 => Some(3),
        86_400 => Some(4),
        _ => None,
    }
}

/// The descriptor of a check: its identity (rule, kind, subject slot) and its limit.
pub fn descriptor(check: &Check, hits: u64, negative: bool, force: bool) -> RateLimitDescriptor {
    let mut entries = vec![
        Entry {
            key: "sluice_rule".into(),
            value: check.rule.clone(),
        },
        Entry {
            key: "sluice_kind".into(),
            value: check.kind.short().into(),
        },
        Entry {
            key: "subject".into(),
            value: check.store_key.clone(),
        },
    ];
    if force {
        entries.push(Entry {
            key: FORCE_ENTRY.into(),
            value: "true".into(),
        });
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
