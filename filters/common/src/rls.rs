//! The names on the wire between rate-limit (the filter) and sluice-ratelimit (the Envoy
//! RLS v3 service that holds the global counters). Both sides use these, so they cannot
//! drift apart.

/// The gRPC service and method (`envoy.service.ratelimit.v3`).
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Descriptor entries the filter sends: which limit (`rule`, `kind`) and whose counter
/// (`subject`, a hashed slot).
pub const RULE_ENTRY: &str = "sluice_rule";
pub const KIND_ENTRY: &str = "sluice_kind";
pub const SUBJECT_ENTRY: &str = "subject";
/// An entry that makes the service charge regardless of the limit: usage that went over
/// its reservation was already served, so it is counted, never refused.
pub const FORCE_ENTRY: &str = "sluice_force";

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

/// The `envoy.type.v3.RateLimitUnit` of a window in seconds, if it is one (global limits
/// use whole units).
pub fn unit_of(window_seconds: u64) -> Option<i32> {
    match window_seconds {
        1 => Some(1),
        60 => Some(2),
        3_600 => Some(3),
        86_400 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_map_to_whole_units() {
        let units: Vec<_> = [1, 60, 3_600, 86_400, 30].map(unit_of).to_vec();
        assert_eq!(units, [Some(1), Some(2), Some(3), Some(4), None]);
    }
}
