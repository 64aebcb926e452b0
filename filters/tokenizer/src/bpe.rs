//! Byte-pair merging over a vocabulary laid out for in-place use (see build.rs).

use crate::hash::hash;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

// Slot layout: see build.rs.
const RANK_BITS: u32 = 19;
const OFFSET_BITS: u32 = 22;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// The fingerprint: the slot's top bits, above the token length (8 bits).
const FP_BITS: u32 = 64 - 8 - OFFSET_BITS - RANK_BITS;
/// Pieces longer than this (bytes) are merged with a heap (O(n log n)) instead of tiktoken's
/// linear scan (O(n²)): a 100 KB run of one letter must not stall a worker.
const HEAP_THRESHOLD: usize = 32;
const NONE: u32 = u32::MAX;
/// `rank` of a part that was merged away (never equal to a heap entry's rank).
const DEAD: u32 = u32::MAX - 1;

/// A vocabulary: token bytes by rank and a hash index from bytes to rank.
pub struct Vocab {
    table: &'static [u64],
    /// Rank of each two-byte token by `(b0 << 8) | b1`; `u32::MAX` when not a token.
    pairs: &'static [u32],
    offsets: &'static [u32],
    blob: &'static [u8],
    mask: u64,
}

impl Vocab {
    /// Wrap the build-time tables (see build.rs for the layout). `None` when they are
    /// malformed (never, for ours).
    pub fn from_tables(data: &'static [u8]) -> Option<Self> {
        let word = |i: usize| -> Option<usize> {
            let b: [u8; 4] = data.get(4 * i..4 * i + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b) as usize)
        };
        let (n, cap, blob_len) = (word(0)?, word(1)?, word(2)?);
        let table_end = 16 + 8 * cap;
        let pairs_end = table_end + 4 * (1 << 16);
        let offsets_end = pairs_end + 4 * (n + 1);
        let table = bytemuck::try_cast_slice(data.get(16..table_end)?).ok()?;
        let pairs = bytemuck::try_cast_slice(data.get(table_end..pairs_end)?).ok()?;
        let offsets: &[u32] = bytemuck::try_cast_slice(data.get(pairs_end..offsets_end)?).ok()?;
        let blob = data.get(offsets_end..offsets_end + blob_len)?;
        if !cap.is_power_of_two() || offsets.last().copied()? as usize != blob_len {
            return None;
        }
        Some(Self {
            table,
            pairs,
            offsets,
            blob,
            mask: cap as u64 - 1,
        })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Bytes of the tables (index, pair ranks, offsets, token bytes).
    pub fn table_bytes(&self) -> usize {
        8 * self.table.len() + 4 * (self.pairs.len() + self.offsets.len()) + self.blob.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of token `rank`.
    pub fn token(&self, rank: u32) -> &'static [u8] {
        let r = rank as usize;
        match (self.offsets.get(r), self.offsets.get(r + 1)) {
            (Some(&a), Some(&b)) => self.blob.get(a as usize..b as usize).unwrap_or_default(),
            _ => &[],
        }
    }

    /// The rank of a token, if `bytes` is one.
    #[inline]
    pub fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let h = hash(bytes);
        // Fingerprint and length together, as they sit in the slot's top 24 bits.
        let want = (h >> (64 - FP_BITS)) << 8 | bytes.len() as u64;
        let mut i = h & self.mask;
        loop {
            let slot = *self.table.get(i as usize)?;
            if slot == 0 {
                return None;
            }
            if slot >> (OFFSET_BITS + RANK_BITS) == want {
                let start = ((slot >> RANK_BITS) & OFFSET_MASK) as usize;
                if self.blob.get(start..start + bytes.len()) == Some(bytes) {
                    return Some(((slot & RANK_MASK) - 1) as u32);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    fn rank_or_none(&self, bytes: Option<&[u8]>) -> u32 {
        match bytes {
            Some(&[a, b]) => self
                .pairs
                .get(usize::from(a) << 8 | usize::from(b))
                .copied()
                .unwrap_or(NONE),
            Some(b) => self.rank(b).unwrap_or(NONE),
            None => NONE,
        }
    }

    /// Split `piece` into tokens and hand each token's byte range to `emit`.
    /// Same merges as tiktoken's `byte_pair_merge`: lowest rank first, leftmost on ties.
    pub fn merge(&self, piece: &[u8], scratch: &mut Scratch, mut emit: impl FnMut(usize, usize)) {
        if piece.len() > HEAP_THRESHOLD {
            return self.merge_heap(piece, scratch, emit);
        }
        // (start, rank of the pair starting here)
        let parts = &mut scratch.parts;
        parts.clear();
        for i in 0..piece.len().saturating_sub(1) {
            parts.push((i as u32, self.rank_or_none(piece.get(i..i + 2))));
        }
        parts.push((piece.len().saturating_sub(1) as u32, NONE));
        parts.push((piece.len() as u32, NONE));
        // Rank of the pair made of parts i and i+1 once they are adjacent: bytes from
        // parts[i].start to parts[i + 2].start.
        let pair_rank = |parts: &[(u32, u32)], i: usize| -> u32 {
            match (parts.get(i), parts.get(i + 2)) {
                (Some(&(a, _)), Some(&(b, _))) => {
                    self.rank_or_none(piece.get(a as usize..b as usize))
                }
                _ => NONE,
            }
        };
        loop {
            let mut min = (NONE, 0usize);
            for (i, &(_, r)) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
                if r < min.0 {
                    min = (r, i);
                }
            }
            if min.0 == NONE {
                break;
            }
            let i = min.1;
            parts.remove(i + 1);
            let r = pair_rank(parts, i);
            if let Some(p) = parts.get_mut(i) {
                p.1 = r;
            }
            if i > 0 {
                let r = pair_rank(parts, i - 1);
                if let Some(p) = parts.get_mut(i - 1) {
                    p.1 = r;
                }
            }
        }
        for w in parts.windows(2) {
            if let [(a, _), (b, _)] = w {
                emit(*a as usize, *b as usize);
            }
        }
    }

    /// The same merges with a min-heap and a linked list of parts. Part `i` starts at byte
    /// `i`; `next[i]` is where it ends; `rank[i]` is the rank of the pair it starts (NONE
    /// when it is the last part or when the pair is no token). Heap entries are
    /// `rank << 32 | start`, so the minimum is the lowest rank, then the leftmost pair,
    /// as in tiktoken; an entry whose rank no longer matches its part is stale.
    fn merge_heap(&self, piece: &[u8], scratch: &mut Scratch, mut emit: impl FnMut(usize, usize)) {
        let n = piece.len() as u32;
        let Scratch {
            next,
            prev,
            rank,
            heap,
            ..
        } = scratch;
        next.clear();
        prev.clear();
        rank.clear();
        heap.clear();
        next.extend(1..=n);
        prev.extend((0..n).map(|i| i.wrapping_sub(1)));
        let bytes = |a: u32, b: u32| piece.get(a as usize..b as usize);
        for i in 0..n {
            let r = if i + 2 <= n {
                self.rank_or_none(bytes(i, i + 2))
            } else {
                NONE
            };
            rank.push(r);
            if r != NONE {
                heap.push(Reverse(u64::from(r) << 32 | u64::from(i)));
            }
        }
        let at = |v: &Vec<u32>, i: u32| v.get(i as usize).copied().unwrap_or(NONE);
        while let Some(Reverse(entry)) = heap.pop() {
            let (r, i) = ((entry >> 32) as u32, entry as u32);
            if at(rank, i) != r {
                continue;
            }
            // Merge the part after i into i.
            let j = at(next, i);
            let k = at(next, j);
            if let Some(x) = next.get_mut(i as usize) {
                *x = k;
            }
            if let Some(x) = rank.get_mut(j as usize) {
                *x = DEAD;
            }
            if k < n {
                if let Some(x) = prev.get_mut(k as usize) {
                    *x = i;
                }
            }
            let new = if k < n {
                self.rank_or_none(bytes(i, at(next, k)))
            } else {
                NONE
            };
            if let Some(x) = rank.get_mut(i as usize) {
                *x = new;
            }
            if new != NONE {
                heap.push(Reverse(u64::from(new) << 32 | u64::from(i)));
            }
            let p = at(prev, i);
            if p != NONE {
                let new = self.rank_or_none(bytes(p, k));
                if let Some(x) = rank.get_mut(p as usize) {
                    *x = new;
                }
                if new != NONE {
                    heap.push(Reverse(u64::from(new) << 32 | u64::from(p)));
                }
            }
        }
        let mut i = 0u32;
        while i < n {
            let j = at(next, i);
            emit(i as usize, j as usize);
            i = j;
        }
    }
}

/// Buffers reused across pieces, so counting allocates once per call, not per word.
#[derive(Default)]
pub struct Scratch {
    parts: Vec<(u32, u32)>,
    next: Vec<u32>,
    prev: Vec<u32>,
    rank: Vec<u32>,
    heap: BinaryHeap<Reverse<u64>>,
}
