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

/// A stable 64-bit hash fed in pieces, eight bytes a step (FNV-1a's multiply on whole
/// words, a murmur3 finaliser on [`StreamHash::finish`]): the same bytes give the same value
/// however they are split, and reading the value does not end the stream. Several times
/// faster than byte-wise FNV on long prompts; not for hostile-collision resistance.
#[derive(Debug, Clone, Copy)]
pub struct StreamHash {
    state: u64,
    /// Bytes waiting for a whole word, little-endian, `pending_len` of them.
    pending: u64,
    pending_len: u32,
}

impl StreamHash {
    pub fn new() -> Self {
        Self {
            state: FNV_OFFSET,
            pending: 0,
            pending_len: 0,
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(FNV_PRIME).rotate_left(29);
    }

    pub fn write(&mut self, mut bytes: &[u8]) {
        while self.pending_len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.write_byte(b);
            bytes = rest;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.mix(u64::from_le_bytes(word));
        }
        for &b in words.remainder() {
            self.write_byte(b);
        }
    }

    pub fn write_byte(&mut self, b: u8) {
        self.pending |= u64::from(b) << (8 * self.pending_len);
        self.pending_len += 1;
        if self.pending_len == 8 {
            let word = self.pending;
            self.pending = 0;
            self.pending_len = 0;
            self.mix(word);
        }
    }

    /// The hash of everything written so far.
    pub fn finish(&self) -> u64 {
        let mut h = self.state ^ self.pending ^ (u64::from(self.pending_len) << 59);
        // murmur3's fmix64: every input bit reaches every output bit (the low bits pick
        // a table slot).
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl Default for StreamHash {
    fn default() -> Self {
        Self::new()
    }
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

    proptest::proptest! {
        /// However a stream is cut into pieces, its hash is the same; other bytes differ.
        #[test]
        fn a_stream_hashes_the_same_however_it_is_split(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            cuts in proptest::collection::vec(0usize..100, 0..6),
        ) {
            let mut whole = StreamHash::new();
            whole.write(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut pieces = StreamHash::new();
            let mut at = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                pieces.write(&bytes[at..c]);
                at = c;
            }
            proptest::prop_assert_eq!(whole.finish(), pieces.finish());
            let mut longer = whole;
            longer.write_byte(0);
            proptest::prop_assert_ne!(whole.finish(), longer.finish());
        }
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
