//! The pieces of the open families' patterns (Llama 3, Qwen 2) against the regex itself, run
//! by fancy-regex (the engine tiktoken-rs runs o200k's and cl100k's with, which `oracle.rs`
//! covers through whole encodings).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]

use fancy_regex::Regex;
use proptest::prelude::*;
use sluice_tokenizer::{Pattern, Pieces};
use std::sync::OnceLock;

mod texts;

/// Llama 3's `pre_tokenizer` pattern (Meta's `tokenizer.json`, llama.cpp's `llama-bpe`).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's with single digits.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn regex(pattern: &'static str, cell: &'static OnceLock<Regex>) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).unwrap())
}

fn same_pieces(text: &str) -> Result<(), TestCaseError> {
    static L: OnceLock<Regex> = OnceLock::new();
    static Q: OnceLock<Regex> = OnceLock::new();
    for (pattern, re) in [
        (Pattern::Llama3, regex(LLAMA3, &L)),
        (Pattern::Qwen2, regex(QWEN2, &Q)),
    ] {
        let want: Vec<&str> = re.find_iter(text).map(|m| m.unwrap().as_str()).collect();
        let got: Vec<&str> = Pieces::new(text, pattern).collect();
        prop_assert_eq!(got, want, "{:?} on {:?}", pattern, text);
    }
    Ok(())
}

#[test]
fn examples() {
    for text in [
        "Hello world",
        "You are a helpful assistant for a GPU inference platform. ",
        "don't DON'T 'LL 's",
        "x\n\n  y  ",
        "12345 ½ ٣ 12٣4 1²",
        "ǅungla 中文 émoji 😀\u{85}x",
    ] {
        same_pieces(text).unwrap();
    }
}

proptest! {
    #![proptest_config(texts::config())]

    /// ASCII words after any prefix, ended by every kind of byte that can follow one.
    #[test]
    fn ascii_prose_cuts_as_the_regex(text in texts::ASCII_PROSE) {
        same_pieces(&text)?;
    }

    #[test]
    fn any_unicode_cuts_as_the_regex(text in "\\PC{0,80}") {
        same_pieces(&text)?;
    }

    /// Runs of ASCII punctuation and symbols and of digits (the fast paths for them) between
    /// short words, spaces, newlines, slashes and a non-ASCII symbol, letter or digit.
    #[test]
    fn ascii_symbols_cut_as_the_regex(text in texts::ASCII_SYMBOLS) {
        same_pieces(&text)?;
    }
}
