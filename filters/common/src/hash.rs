//! Stable, seedless hashing and a tiny generator.
//!
//! Used where a value must hash the same in every VM, on every worker and after a restart
//! (std's `HashMap` hasher is randomly keyed): rate-limit's counter slots, model-router's
//! sticky targets and affinity, the mock engine's seeded replies.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a over several parts, each followed by a 0xff separator (a byte UTF-8 never has), so
/// `["ab", "c"]` and `["a", "bc"]` hash differently.
pub fn fnv1a_parts(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(FNV_OFFSET, |h, p| {
        (fnv1a_from(h, p) ^ 0xff).wrapping_mul(FNV_PRIME)
    })
}

/// One step of xorshift64 (Marsaglia): the next state, never 0 for a state that is not 0.
pub fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a" and "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(fnv1a_parts(&[b"ab", b"c"]), fnv1a_parts(&[b"a", b"bc"]));
        assert_eq!(
            fnv1a_parts(&[b"a"]),
            (fnv1a(b"a") ^ 0xff).wrapping_mul(FNV_PRIME)
        );
    }

    #[test]
    fn xorshift_never_sticks_at_zero_from_a_nonzero_state() {
        let mut x = 1;
        for _ in 0..10_000 {
            x = xorshift64(x);
            assert_ne!(x, 0);
        }
    }
}
