//! BPE over characters with a merge list and byte fallback: Gemma 4's tokenizer, as llama.cpp
//! runs it (`tokenizer.ggml.model = gemma4`): spaces become `▁`, the text is cut into runs
//! of newlines and runs of everything else, a newline run that is a token is that token,
//! and every other run starts as its characters and merges the adjacent pair whose merge
//! comes first in the list (leftmost on ties) until none applies. A piece that is not a
//! token becomes its bytes' `<0xXX>` tokens.

use crate::bpe::Vocab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const NONE: u32 = u32::MAX;

/// The merges that make each token: per token id, entries `rank << 8 | split` (`split`: the
/// byte length of the merge's left part). See build.rs.
pub struct MergeList {
    offsets: &'static [u32],
    entries: &'static [u32],
}

impl MergeList {
    /// Wrap the build-time tables of a vocabulary of `n` tokens.
    pub fn from_tables(data: &'static [u8], n: usize) -> Option<Self> {
        let words: &[u32] = bytemuck::try_cast_slice(data).ok()?;
        let offsets = words.get(..n + 1)?;
        let entries = words.get(n + 1..)?;
        (offsets.last().copied()? as usize == entries.len()).then_some(Self { offsets, entries })
    }

    /// The rank of the merge of a left part of `split` bytes into `token`, if there is one.
    fn rank(&self, token: u32, split: usize) -> Option<u32> {
        let t = token as usize;
        let (a, b) = (*self.offsets.get(t)?, *self.offsets.get(t + 1)?);
        self.entries
            .get(a as usize..b as usize)?
            .iter()
            .find(|e| (**e & 0xff) as usize == split)
            .map(|e| e >> 8)
    }
}

/// Buffers reused across runs.
#[derive(Default)]
pub struct CharScratch {
    starts: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    rank: Vec<u32>,
    heap: BinaryHeap<Reverse<u64>>,
}

/// The token ids of a text fragment (no special tokens in it), handed to `emit`.
pub fn encode(
    vocab: &Vocab,
    merges: &MergeList,
    byte_fallback: &[u32],
    text: &str,
    scratch: &mut CharScratch,
    mut emit: impl FnMut(u32),
) {
    let escaped = text.replace(' ', "\u{2581}");
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let newline = bytes.get(i) == Some(&b'\n');
        let end = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| (b == b'\n') != newline))
            .map_or(bytes.len(), |p| i + p);
        let run = escaped.get(i..end).unwrap_or_default();
        match vocab.rank(run.as_bytes()).filter(|_| newline) {
            Some(id) => emit(id),
            None => merge_run(vocab, merges, byte_fallback, run, scratch, &mut emit),
        }
        i = end;
    }
}

fn merge_run(
    vocab: &Vocab,
    merges: &MergeList,
    byte_fallback: &[u32],
    run: &str,
    s: &mut CharScratch,
    emit: &mut impl FnMut(u32),
) {
    let piece = run.as_bytes();
    s.starts.clear();
    s.starts.extend(run.char_indices().map(|(i, _)| i as u32));
    let n = s.starts.len();
    s.starts.push(piece.len() as u32);
    // Symbols by index; `next[i]` / `prev[i]` link the live ones (NONE at the ends);
    // `rank[i]` is the rank of the merge of symbol i with its next one.
    s.next.clear();
    s.prev.clear();
    s.rank.clear();
    s.heap.clear();
    s.next
        .extend((1..=n as u32).map(|j| if j as usize == n { NONE } else { j }));
    s.prev.extend((0..n as u32).map(|j| j.wrapping_sub(1)));
    let start = |starts: &[u32], i: u32| starts.get(i as usize).copied().unwrap_or(0) as usize;
    let end_of = |starts: &[u32], next: &[u32], i: u32| {
        let j = next.get(i as usize).copied().unwrap_or(NONE);
        if j == NONE {
            piece.len()
        } else {
            start(starts, j)
        }
    };
    // The rank of merging symbol i with its next one, or NONE.
    let pair_rank = |starts: &[u32], next: &[u32], i: u32| -> u32 {
        let j = next.get(i as usize).copied().unwrap_or(NONE);
        if j == NONE {
            return NONE;
        }
        let (a, m, b) = (start(starts, i), start(starts, j), end_of(starts, next, j));
        piece
            .get(a..b)
            .and_then(|t| vocab.rank(t))
            .and_then(|id| merges.rank(id, m - a))
            .unwrap_or(NONE)
    };
    for i in 0..n as u32 {
        let r = pair_rank(&s.starts, &s.next, i);
        s.rank.push(r);
        if r != NONE {
            s.heap.push(Reverse(u64::from(r) << 32 | u64::from(i)));
        }
    }
    let at = |v: &[u32], i: u32| v.get(i as usize).copied().unwrap_or(NONE);
    while let Some(Reverse(entry)) = s.heap.pop() {
        let (r, i) = ((entry >> 32) as u32, entry as u32);
        // A merge rank names one pair of texts: an entry still equal to the rank at its
        // position is that pair.
        if at(&s.rank, i) != r {
            continue;
        }
        let j = at(&s.next, i);
        let k = at(&s.next, j);
        if let Some(x) = s.next.get_mut(i as usize) {
            *x = k;
        }
        if let Some(x) = s.rank.get_mut(j as usize) {
            *x = NONE;
        }
        if k != NONE {
            if let Some(x) = s.prev.get_mut(k as usize) {
                *x = i;
            }
        }
        let new = pair_rank(&s.starts, &s.next, i);
        if let Some(x) = s.rank.get_mut(i as usize) {
            *x = new;
        }
        if new != NONE {
            s.heap.push(Reverse(u64::from(new) << 32 | u64::from(i)));
        }
        let p = at(&s.prev, i);
        if p != NONE {
            let new = pair_rank(&s.starts, &s.next, p);
            if let Some(x) = s.rank.get_mut(p as usize) {
                *x = new;
            }
            if new != NONE {
                s.heap.push(Reverse(u64::from(new) << 32 | u64::from(p)));
            }
        }
    }
    let mut i = if n == 0 { NONE } else { 0 };
    while i != NONE {
        let (a, b) = (start(&s.starts, i), end_of(&s.starts, &s.next, i));
        let t = piece.get(a..b).unwrap_or_default();
        match vocab.rank(t) {
            Some(id) => emit(id),
            None => {
                for &byte in t {
                    if let Some(&id) = byte_fallback.get(usize::from(byte)) {
                        emit(id);
                    }
                }
            }
        }
        i = at(&s.next, i);
    }
}
