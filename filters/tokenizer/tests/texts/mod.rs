//! What the tokenizer's property tests share: the case count and the texts that reach the
//! pre-tokenizer's ASCII fast paths (`oracle.rs` holds them to tiktoken-rs, `patterns.rs`
//! to the open families' regex).

use proptest::prelude::ProptestConfig;

/// 2000 cases by default; `PROPTEST_CASES=100000` for a deep run.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

/// Prose of ASCII words (o200k's words and capitals, the others' letter runs), each after
/// any kind of prefix and ended by every kind of byte that can follow one: capitals,
/// digits, apostrophes, newlines, a combining mark, a non-ASCII letter or space.
pub const ASCII_PROSE: &str =
    "([ .,;\n\r\t'\"(/-]?[A-Z]{0,4}[a-z]{0,8}[0-9']?){0,12}[éÉ\u{301}\u{85}ſK中]?[a-zA-Z' ]{0,4}";

/// Runs of ASCII punctuation and symbols and of digits between short words, spaces,
/// newlines, slashes and a non-ASCII symbol, letter or digit.
pub const ASCII_SYMBOLS: &str = "([ ]?[-.,;:!?()\\[\\]{}<>/\\\\|@#$%^&*_=+`~\"'\n\r\t]{0,4}[a-zA-Z]{0,2}[0-9]{0,5}[…é\u{301}٣²]?){0,10}";
