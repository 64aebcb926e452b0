//! A bounded memo of what a pure function gave for a text, for the texts a gateway sees
//! again and again: every turn of a conversation resends its whole history, and a tenant's
//! system prompt (often most of a prompt) comes with each of its requests. token-counter
//! remembers the token count of each text it counted, pii-redaction which texts it found
//! nothing in; the same text is then neither tokenized nor scanned twice in a row.
//!
//! Exact, never a guess: an entry keeps its text, and a lookup compares the whole text, so
//! two texts with the same hash never share an answer (a later one replaces the earlier).
//! Bounded: two generations of at most `generation_bytes` each (texts plus a fixed cost per
//! entry); when the current one is full it becomes the previous one and the old previous
//! one is dropped, and an entry found in the previous generation moves to the current one.
//! So what was used within the last generation stays, with O(1) work a lookup and no list
//! to maintain (the "two-generation" scheme of generational caches). The slot of an entry
//! is its text's [`StreamHash`] through std's randomly keyed hasher: a client cannot pick
//! texts that crowd one slot.

use crate::hash::StreamHash;
use std::collections::HashMap;

/// What an entry costs beyond its text: the table slot, the boxed text's header, the
/// allocator's own.
const ENTRY_OVERHEAD: usize = 64;

/// Which texts a memo keeps, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoLimits {
    /// Shorter texts are not kept: computing them again costs about what a lookup does.
    pub min_len: usize,
    /// Longer texts are not kept (one would push out many).
    pub max_len: usize,
    /// Bytes of a generation; the memo holds at most two.
    pub generation_bytes: usize,
}

impl MemoLimits {
    /// For the texts of requests (token-counter's counts, pii-redaction's clean texts):
    /// texts under 64 bytes are counted or scanned about as fast as they are looked up; a
    /// generation of 1 MB holds a few hundred system prompts and conversation turns; one
    /// text of up to 256 KB (a long document resent with each question).
    pub const REQUEST_TEXTS: MemoLimits = MemoLimits {
        min_len: 64,
        max_len: 256 * 1024,
        generation_bytes: 1024 * 1024,
    };

    /// For the policies key-auth publishes (`sluice_policy`, about 100 bytes): any length
    /// up to 4 KB, a generation of 16 KB (a hundred-odd keys in use at once).
    pub const POLICIES: MemoLimits = MemoLimits {
        min_len: 0,
        max_len: 4 * 1024,
        generation_bytes: 16 * 1024,
    };
}

struct Entry<V> {
    text: Box<str>,
    value: V,
}

impl<V> Entry<V> {
    fn cost(&self) -> usize {
        self.text.len() + ENTRY_OVERHEAD
    }
}

/// Remembered values of a pure function of a text (see the module's documentation).
pub struct TextMemo<V> {
    current: HashMap<u64, Entry<V>>,
    previous: HashMap<u64, Entry<V>>,
    current_bytes: usize,
    limits: MemoLimits,
    hash: fn(&str) -> u64,
}

fn stream_hash(text: &str) -> u64 {
    let mut h = StreamHash::new();
    h.write(text.as_bytes());
    h.finish()
}

/// Whether two texts are the same, compared eight bytes at a time ([`same_bytes`]).
fn same_text(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Whether two byte strings are the same, compared eight bytes at a time. `==` on slices
/// calls `memcmp`, which wasi-libc (what wasm32-wasip1 links) walks a byte at a time and V8
/// runs as written: in `scripts/chain-profile-v8.sh` the memos' comparisons of whole prompts
/// were most of the chain's `memcmp` ticks, 2–3 µs a request.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a_words.remainder() == b_words.remainder();
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
    tails_equal && a_words.zip(b_words).all(|(x, y)| word(x) == word(y))
}

impl<V: Clone> TextMemo<V> {
    pub fn new(limits: MemoLimits) -> Self {
        Self::with_hash(limits, stream_hash)
    }

    /// A memo slotting texts by `hash` (tests make texts collide with it).
    fn with_hash(limits: MemoLimits, hash: fn(&str) -> u64) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            current_bytes: 0,
            limits,
            hash,
        }
    }

    /// `text`'s slot, when the limits keep texts of its length.
    fn key(&self, text: &str) -> Option<u64> {
        (self.limits.min_len..=self.limits.max_len)
            .contains(&text.len())
            .then(|| (self.hash)(text))
    }

    /// The value remembered for exactly `text` in slot `key`; one found in the previous
    /// generation moves to the current one.
    fn get_at(&mut self, key: u64, text: &str) -> Option<V> {
        if let Some(e) = self.current.get(&key) {
            return same_text(&e.text, text).then(|| e.value.clone());
        }
        if self
            .previous
            .get(&key)
            .is_some_and(|e| same_text(&e.text, text))
        {
            let e = self.previous.remove(&key)?;
            let value = e.value.clone();
            self.put(key, e);
            return Some(value);
        }
        None
    }

    /// The value for `text`, computed by `f` only when it is not remembered; what `f` gives
    /// is remembered unless it is `None` (a value not worth keeping).
    pub fn get_or_insert_if(&mut self, text: &str, f: impl FnOnce(&str) -> Option<V>) -> Option<V> {
        let Some(key) = self.key(text) else {
            return f(text);
        };
        if let Some(v) = self.get_at(key, text) {
            return Some(v);
        }
        let v = f(text)?;
        self.remember(key, text, v.clone());
        Some(v)
    }

    /// The value for `text`, computed by `f` only when it is not remembered.
    pub fn get_or_insert_with(&mut self, text: &str, f: impl FnOnce(&str) -> V) -> V {
        let Some(key) = self.key(text) else {
            return f(text);
        };
        if let Some(v) = self.get_at(key, text) {
            return v;
        }
        let v = f(text);
        self.remember(key, text, v.clone());
        v
    }

    fn remember(&mut self, key: u64, text: &str, value: V) {
        self.put(
            key,
            Entry {
                text: text.into(),
                value,
            },
        );
    }

    fn put(&mut self, key: u64, entry: Entry<V>) {
        let cost = entry.cost();
        if self.current_bytes + cost > self.limits.generation_bytes {
            self.previous = std::mem::take(&mut self.current);
            self.current_bytes = 0;
        }
        self.current_bytes += cost;
        if let Some(old) = self.current.insert(key, entry) {
            self.current_bytes -= old.cost();
        }
    }

    /// Bytes held, both generations (texts and the cost per entry).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.current_bytes + self.previous.values().map(Entry::cost).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: MemoLimits = MemoLimits {
        min_len: 4,
        max_len: 40,
        generation_bytes: 300,
    };

    proptest! {
        #[test]
        fn same_text_is_equality(a in ".{0,40}", b in ".{0,40}", cut in 0usize..40) {
            prop_assert_eq!(same_text(&a, &b), a == b);
            prop_assert!(same_text(&a, &a.clone()));
            // Texts of one length differing in one byte, in the words or in the tail.
            let mut c = a.clone().into_bytes();
            if let Some(byte) = c.get_mut(cut) {
                *byte ^= 1;
                let c = String::from_utf8_lossy(&c).into_owned();
                prop_assert_eq!(same_text(&a, &c), a == c);
            }
        }
    }

    fn chars(s: &str) -> u32 {
        s.chars().count() as u32
    }

    #[test]
    fn remembers_and_moves_what_it_finds_to_the_current_generation() {
        let mut m = TextMemo::new(SMALL);
        let computed = std::cell::Cell::new(0);
        let count = |m: &mut TextMemo<u32>, s: &str| {
            m.get_or_insert_with(s, |s| {
                computed.set(computed.get() + 1);
                chars(s)
            })
        };
        assert_eq!(count(&mut m, "system prompt"), 13);
        assert_eq!(count(&mut m, "system prompt"), 13);
        assert_eq!(computed.get(), 1);
        // Short and long texts are computed every time.
        count(&mut m, "hi");
        count(&mut m, "hi");
        count(&mut m, &"x".repeat(41));
        count(&mut m, &"x".repeat(41));
        assert_eq!(computed.get(), 5);
        // Four more texts of 64 + 10 bytes overflow the first generation (300 bytes): the
        // system prompt is in the previous one, found, and moved back.
        for t in ["0123456789", "1123456789", "2123456789", "3123456789"] {
            count(&mut m, t);
        }
        assert!(m.previous.values().any(|e| &*e.text == "system prompt"));
        assert_eq!(count(&mut m, "system prompt"), 13);
        assert_eq!(computed.get(), 9);
        assert!(m.current.values().any(|e| &*e.text == "system prompt"));
    }

    proptest! {
        /// Whatever the texts and however they collide, every answer is the function's
        /// own, and the memo stays within its two generations.
        #[test]
        fn answers_exactly_within_bounds(
            texts in proptest::collection::vec("[ab]{0,12}", 1..200),
            colliding in any::<bool>(),
        ) {
            let hash: fn(&str) -> u64 = if colliding { |s| (s.len() % 3) as u64 } else { stream_hash };
            let mut m = TextMemo::with_hash(MemoLimits { min_len: 2, max_len: 10, generation_bytes: 400 }, hash);
            for t in &texts {
                prop_assert_eq!(m.get_or_insert_with(t, |s| s.bytes().map(u32::from).sum::<u32>() * 7 + s.len() as u32),
                                t.bytes().map(u32::from).sum::<u32>() * 7 + t.len() as u32);
                prop_assert!(m.current_bytes <= 400);
                prop_assert!(m.bytes() <= 800);
            }
        }
    }
}
