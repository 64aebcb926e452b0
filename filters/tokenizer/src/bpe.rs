//! Byte-pair merging over a vocabulary laid out for in-place use (see build.rs).

use crate::hash::hash;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const RANK_BITS: u32 = 18;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
/// Pieces longer than this are merged with a heap (O(n log n)) instead of tiktoken's
/// linear scan (O(n²)): a 100 KB run of one letter must not stall a worker.
const HEAP_THRESHOLD: usize = 128;
const NONE: u32 = u32::MAX;

/// A vocabulary: token bytes by rank and a hash index from bytes to rank.
pub struct Vocab {
    offsets: &'static [u32],
    table: &'static [u32],
    blob: &'static [u8],
    mask: u32,
}

impl Vocab {
    /// Wrap the build-time tables. `None` when they are malformed (never, for ours).
    pub fn from_tables(words: &'static [u32], blob_and_more: &'static [u8]) -> Option<Self> {
        let (&n, rest) = words.split_first()?;
        let (&cap, rest) = rest.split_first()?;
        let (&blob_len, rest) = rest.split_first()?;
        let rest = rest.get(1..)?;
        let n = n as usize;
        let cap = cap as usize;
        let offsets = rest.get(..n + 1)?;
        let table = rest.get(n + 1..n + 1 + cap)?;
        let blob_start = 4 * (4 + n + 1 + cap);
        let blob = blob_and_more.get(blob_start..blob_start + blob_len as usize)?;
        if !cap.is_power_of_two() || offsets.last().copied()? != blob_len {
            return None;
        }
        Some(Self {
            offsets,
            table,
            blob,
            mask: cap as u32 - 1,
        })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of token `rank`.
    #[inline]
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
        let fingerprint = h >> RANK_BITS;
        let mut i = h & self.mask;
        loop {
            let slot = *self.table.get(i as usize)?;
            if slot == 0 {
                return None;
            }
            if slot >> RANK_BITS == fingerprint {
                let rank = (slot & RANK_MASK) - 1;
                if self.token(rank) == bytes {
                    return Some(rank);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    fn rank_or_none(&self, bytes: Option<&[u8]>) -> u32 {
        bytes.and_then(|b| self.rank(b)).unwrap_or(NONE)
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

    /// The same merges with a min-heap of (rank, start) and a linked list of parts.
    fn merge_heap(&self, piece: &[u8], scratch: &mut Scratch, mut emit: impl FnMut(usize, usize)) {
        let n = piece.len();
        let Scratch {
            next,
            prev,
            heap,
            alive,
            ..
        } = scratch;
        next.clear();
        prev.clear();
        heap.clear();
        alive.clear();
        alive.resize(n, true);
        // Part i starts at byte i until merged away; next/prev link live parts; n = end.
        next.extend((1..=n as u32).map(|i| i));
        prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
        let end_of = |next: &[u32], i: u32| next.get(i as usize).copied().unwrap_or(n as u32);
        let pair_rank = |next: &[u32], i: u32| -> u32 {
            let j = end_of(next, i);
            if j as usize >= n {
                return NONE;
            }
            let k = end_of(next, j);
            self.rank_or_none(piece.get(i as usize..k as usize))
        };
        for i in 0..n as u32 {
            let r = pair_rank(next, i);
            if r != NONE {
                heap.push(Reverse((r, i, end_of(next, end_of(next, i)))));
            }
        }
        while let Some(Reverse((_, i, k))) = heap.pop() {
            // Stale entries: a part merged away, or a pair whose right side changed (parts
            // only ever merge, so an unchanged end means the same bytes and the same rank).
            if !alive.get(i as usize).copied().unwrap_or(false) {
                continue;
            }
            let j = end_of(next, i);
            if (j as usize) >= n || end_of(next, j) != k {
                continue;
            }
            // Merge part j into part i.
            if let Some(a) = alive.get_mut(j as usize) {
                *a = false;
            }
            if let Some(x) = next.get_mut(i as usize) {
                *x = k;
            }
            if let Some(x) = prev.get_mut(k as usize) {
                *x = i;
            }
            let r = pair_rank(next, i);
            if r != NONE {
                heap.push(Reverse((r, i, end_of(next, end_of(next, i)))));
            }
            let p = prev.get(i as usize).copied().unwrap_or(u32::MAX);
            if p != u32::MAX {
                let r = pair_rank(next, p);
                if r != NONE {
                    heap.push(Reverse((r, p, end_of(next, end_of(next, p)))));
                }
            }
        }
        let mut i = 0u32;
        while (i as usize) < n {
            let j = end_of(next, i);
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
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>,
    alive: Vec<bool>,
}
