//! Exactness against the reference: tiktoken-rs (the Rust port of OpenAI's tiktoken).
//!
//! * `corpus.json` holds texts and their counts as made by the reference
//!   (`cargo test -p sluice-tokenizer --test oracle -- --ignored` rewrites the counts);
//!   it is checked here natively and, through tests/wasm.rs, compiled to wasm32.
//! * Property tests compare whole token sequences with the reference on random text drawn
//!   from the characters where tokenizers go wrong.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::Value;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

mod texts;

fn reference(name: &str) -> &'static CoreBPE {
    static O200K: OnceLock<CoreBPE> = OnceLock::new();
    static CL100K: OnceLock<CoreBPE> = OnceLock::new();
    match name {
        "o200k_base" => O200K.get_or_init(|| tiktoken_rs::o200k_base().unwrap()),
        "cl100k_base" => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().unwrap()),
        _ => unreachable!(),
    }
}

fn assert_same(name: &str, text: &str) {
    let ours = sluice_tokenizer::by_name(name).unwrap();
    let want = reference(name).encode_ordinary(text);
    let got = ours.encode(text);
    assert_eq!(got, want, "{name} differs on {text:?}");
    assert_eq!(
        ours.count(text),
        want.len(),
        "{name} count differs on {text:?}"
    );
}

fn corpus_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus.json")
}

#[test]
fn corpus_counts_are_the_reference_counts() {
    let corpus: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(corpus_path()).unwrap()).unwrap();
    assert!(corpus.len() >= 20);
    for entry in &corpus {
        let text = entry["text"].as_str().unwrap();
        for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
            assert_same(name, text);
            let stored = entry[name].as_u64().expect("corpus.json lacks counts");
            assert_eq!(
                stored as usize,
                reference(name).encode_ordinary(text).len(),
                "stored count of {} is stale",
                entry["name"]
            );
        }
    }
}

/// Fill in the reference counts of corpus.json.
#[test]
#[ignore]
fn regenerate_corpus_counts() {
    let mut corpus: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(corpus_path()).unwrap()).unwrap();
    for entry in &mut corpus {
        let text = entry["text"].as_str().unwrap().to_string();
        for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
            entry[name] = reference(name).encode_ordinary(&text).len().into();
        }
    }
    let mut out = serde_json::to_string_pretty(&corpus).unwrap();
    out.push('\n');
    std::fs::write(corpus_path(), out).unwrap();
}

#[test]
fn long_and_pathological_inputs() {
    let cases = [
        "a".repeat(5000),
        " ".repeat(3000) + "x",
        "\n".repeat(1000),
        "1".repeat(2001),
        "ab".repeat(2000),
        "🚀".repeat(500),
        "\u{301}".repeat(700),
        "'s".repeat(600),
        "Ǆ".repeat(300) + "ǅ" + &"ǆ".repeat(300),
    ];
    for text in &cases {
        for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
            assert_same(name, text);
        }
    }
}

/// Characters chosen to hit every branch of the patterns: each letter subcategory, marks,
/// digits of several scripts, all kinds of whitespace, apostrophes and case-folded
/// contraction letters, punctuation, '/', emoji, CJK.
fn tricky_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        'a', 'b', 's', 't', 'd', 'm', 'l', 'v', 'e', 'r', 'S', 'T', 'D', 'M', 'L', 'V', 'E', 'R',
        'ſ', 'K', 'ǅ', 'ǈ', 'Ǆ', 'ǆ', 'ʰ', 'ˢ', '中', 'ア', 'ｱ', '가', 'ß', 'É', 'é', 'Ω', 'ж',
        'Ж', '\u{301}', '\u{300}', '\u{93f}', '\u{94d}', '\u{20dd}', '0', '7', '٣', '½', 'Ⅻ', '²',
        ' ', ' ', ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{2028}',
        '\u{3000}', '\u{200b}', '\'', '\'', '’', '"', '!', '?', '.', ',', '-', '/', '/', '\\', '(',
        '#', '😀', '🚀', '\u{200d}', '\u{fe0f}', '🏽', '¿', '€', '_',
    ])
}

/// Ours and the reference agree on `text` in every tiktoken encoding (for the properties).
fn same_in_every_encoding(text: &str) -> Result<(), TestCaseError> {
    for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
        let want = reference(name).encode_ordinary(text);
        let got = sluice_tokenizer::by_name(name).unwrap().encode(text);
        prop_assert_eq!(got, want, "{} on {:?}", name, text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(texts::config())]

    #[test]
    fn tricky_text_matches_the_reference(chars in prop::collection::vec(tricky_char(), 0..60)) {
        let text: String = chars.into_iter().collect();
        same_in_every_encoding(&text)?;
    }

    #[test]
    fn any_unicode_matches_the_reference(text in "\\PC{0,80}") {
        same_in_every_encoding(&text)?;
    }

    /// Prose of ASCII words (the fast paths for them: o200k's words and capitals, cl100k's
    /// letter runs), each after any kind of prefix and ended by every kind of byte that can
    /// follow one: capitals, digits, apostrophes, newlines, a combining mark, a non-ASCII
    /// letter or space.
    #[test]
    fn ascii_prose_matches_the_reference(text in texts::ASCII_PROSE) {
        same_in_every_encoding(&text)?;
    }

    #[test]
    fn long_runs_use_the_heap_merge_correctly(
        unit in prop::sample::select(vec!["a", "ab", "abc", "xyz", "0", " ", "é", "zz"]),
        n in 100usize..400,
    ) {
        let text = unit.repeat(n);
        for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
            let want = reference(name).encode_ordinary(&text);
            let got = sluice_tokenizer::by_name(name).unwrap().encode(&text);
            prop_assert_eq!(got, want, "{} on {:?} x {}", name, unit, n);
        }
    }

    /// Runs of ASCII punctuation and symbols and of digits (the fast paths for them) between
    /// short words, spaces, newlines, slashes and a non-ASCII symbol, letter or digit.
    #[test]
    fn ascii_symbols_match_the_reference(text in texts::ASCII_SYMBOLS) {
        same_in_every_encoding(&text)?;
    }
}
