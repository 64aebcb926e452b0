//! Exact tiktoken-compatible token counting, built for wasm filters.
//!
//! * Exact: the same tokens as tiktoken (tiktoken-rs is the oracle in the tests) for
//!   `o200k_base` and `cl100k_base`.
//! * Compact and instant: the vocabulary is generated at build time into tables used in
//!   place (a hash index with fingerprints, offsets, token bytes): no parsing or hashing
//!   at VM start, and a few MB of memory instead of tens.
//! * Fast: a hand-written pre-tokenizer with the patterns' exact semantics instead of a
//!   backtracking regex, one hash probe for whole-word tokens, and a heap merge for long
//!   pieces so no input is quadratic.

pub mod bpe;
mod hash;
pub mod pretokenize;
mod unicode;

use bpe::{Scratch, Vocab};
pub use pretokenize::{Pattern, Pieces};
use std::sync::OnceLock;

/// A tokenizer: a vocabulary and the pattern that cuts text into pieces before merging.
pub struct Tokenizer {
    name: &'static str,
    vocab: Vocab,
    pattern: Pattern,
}

impl Tokenizer {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Number of tokens of `text` (as `encode_ordinary`: special-token text is plain text).
    pub fn count(&self, text: &str) -> usize {
        let mut scratch = Scratch::default();
        let mut total = 0;
        for piece in Pieces::new(text, self.pattern) {
            let bytes = piece.as_bytes();
            if self.vocab.rank(bytes).is_some() {
                total += 1;
            } else {
                self.vocab.merge(bytes, &mut scratch, |_, _| total += 1);
            }
        }
        total
    }

    /// The token ranks of `text`, as tiktoken's `encode_ordinary`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        for piece in Pieces::new(text, self.pattern) {
            let bytes = piece.as_bytes();
            match self.vocab.rank(bytes) {
                Some(r) => out.push(r),
                None => self.vocab.merge(bytes, &mut scratch, |a, b| {
                    if let Some(r) = bytes.get(a..b).and_then(|t| self.vocab.rank(t)) {
                        out.push(r);
                    }
                }),
            }
        }
        out
    }
}

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static O200K_DATA: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.bin")));
static CL100K_DATA: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/cl100k_base.bin"
)));

fn load(name: &'static str, data: &'static Aligned<[u8]>, pattern: Pattern) -> Option<Tokenizer> {
    Some(Tokenizer {
        name,
        vocab: Vocab::from_tables(&data.0)?,
        pattern,
    })
}

/// `o200k_base` (GPT-4o, GPT-4.1, o-series, GPT-5). `None` only if the build-time tables
/// were corrupt.
pub fn o200k_base() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| load("o200k_base", O200K_DATA, Pattern::O200k))
        .as_ref()
}

/// `cl100k_base` (GPT-4, GPT-3.5, text-embedding-3).
pub fn cl100k_base() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| load("cl100k_base", CL100K_DATA, Pattern::Cl100k))
        .as_ref()
}

/// A tokenizer by encoding name.
pub fn by_name(name: &str) -> Option<&'static Tokenizer> {
    match name {
        "o200k_base" => o200k_base(),
        "cl100k_base" => cl100k_base(),
        _ => None,
    }
}

/// Encoding names [`by_name`] knows.
pub const ENCODINGS: [&str; 2] = ["o200k_base", "cl100k_base"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_load() {
        assert_eq!(o200k_base().unwrap().vocab().len(), 199_998);
        assert_eq!(cl100k_base().unwrap().vocab().len(), 100_256);
        let t = o200k_base().unwrap();
        assert_eq!(t.vocab().rank(b"hello"), Some(24912));
        assert_eq!(t.vocab().token(24912), b"hello");
        assert_eq!(t.vocab().rank(b"no-such-token-xyzzy"), None);
    }

    #[test]
    fn counts() {
        let t = o200k_base().unwrap();
        assert_eq!(t.count(""), 0);
        assert_eq!(t.count("hello world"), 2);
        assert_eq!(t.encode("hello world"), vec![24912, 2375]);
    }
}
