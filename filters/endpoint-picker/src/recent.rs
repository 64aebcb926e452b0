//! Requests placed on each endpoint lately, seen by every worker at once: a count in shared
//! data that decays with time constant [`TAU_MS`], kept as (count, when last written).
//!
//! Shared, not per worker: a new prefix's home is decided in the first requests of a
//! tenant, and a worker that saw only its own half of them placed homes as if at random
//! (three of eight tenants' homes on one of four endpoints, in `bench-routing.sh`).

use sluice_common::host::{update_shared, Host};

/// Long enough to see the traffic that follows a prefix's home over many requests, short
/// enough to follow a shift in the load.
pub const TAU_MS: f64 = 10_000.0;

fn decode(bytes: &[u8]) -> Option<(f64, u64)> {
    let count = f64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((count, at))
}

fn encode(count: f64, at: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&count.to_le_bytes());
    b.copy_from_slice(&at.to_le_bytes());
    out
}

fn decayed(value: Option<&[u8]>, now: u64) -> f64 {
    value.and_then(decode).map_or(0.0, |(count, at)| {
        let age = now.saturating_sub(at) as f64;
        if count.is_finite() {
            count * (-age / TAU_MS).exp()
        } else {
            0.0
        }
    })
}

/// The endpoint's recent count at `now`.
pub fn read(host: &dyn Host, key: &str, now: u64) -> f64 {
    decayed(host.shared_data(key).0.as_deref(), now)
}

/// Count one request placed at `now` (every worker's count adds up).
pub fn add_one(host: &dyn Host, key: &str, now: u64) {
    let _ = update_shared(host, key, |value| encode(decayed(value, now) + 1.0, now));
}

/// Each endpoint's share of `counts` beyond an even one, in even shares (0: even; 1: twice
/// its share; -1: none). All 0 before any request.
pub fn spread(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![0.0; counts.len()];
    }
    let n = counts.len() as f64;
    counts.iter().map(|c| c / total * n - 1.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::MockHost;

    #[test]
    fn counts_add_up_and_fade() {
        let host = MockHost::new();
        assert_eq!(read(&host, "r", 1_000), 0.0);
        add_one(&host, "r", 1_000);
        add_one(&host, "r", 1_000);
        assert!((read(&host, "r", 1_000) - 2.0).abs() < 1e-9);
        // Half after TAU·ln 2; the next request adds to what is left.
        let half = 1_000 + (TAU_MS * std::f64::consts::LN_2) as u64;
        assert!((read(&host, "r", half) - 1.0).abs() < 1e-3);
        add_one(&host, "r", half);
        assert!((read(&host, "r", half) - 2.0).abs() < 1e-3);
        // A clock that went back reads as no time passed.
        assert!((read(&host, "r", 0) - 2.0).abs() < 1e-3);
        // Bytes that are not a count read as none.
        let _ = host.set_shared_data("bad", b"xyz", None);
        assert_eq!(read(&host, "bad", 1_000), 0.0);
    }

    #[test]
    fn the_spread_is_each_share_against_an_even_one() {
        assert_eq!(spread(&[0.0, 0.0]), [0.0, 0.0]);
        assert_eq!(spread(&[3.0, 1.0]), [0.5, -0.5]);
        assert_eq!(spread(&[4.0, 0.0, 0.0, 0.0]), [3.0, -1.0, -1.0, -1.0]);
        assert_eq!(spread(&[]), Vec::<f64>::new());
    }
}
