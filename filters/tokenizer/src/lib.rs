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
mod charbpe;
mod hash;
pub mod pretokenize;
mod unicode;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use bpe::{Scratch, Vocab};
pub use pretokenize::{Pattern, Pieces};
use std::sync::OnceLock;

/// A tokenizer: a vocabulary and the pattern that cuts text into pieces before merging.
pub struct Tokenizer {
    name: &'static str,
    vocab: Vocab,
    pattern: Pattern,
    /// Special tokens (text, id): in a model's prompt text each is one
    /// token, as the engines read a rendered chat template (llama.cpp's `parse_special`,
    /// Hugging Face's added tokens).
    specials: &'static [(&'static str, u32)],
    /// An automaton over `specials`' texts (pattern i is `specials[i]`), leftmost-longest
    /// as llama.cpp's `parse_special` reads them; `None` with no specials.
    special_finder: Option<AhoCorasick>,
    bos: Option<&'static str>,
    eos: Option<&'static str>,
    /// The engines put BOS before a prompt that does not start with it (llama.cpp's
    /// `add_bos` for this vocabulary).
    adds_bos: bool,
    /// A merge-list vocabulary over characters (Gemma 4): its merges and byte-fallback ids.
    chars: Option<(charbpe::MergeList, &'static [u32])>,
}

// Generated per family; a family's unused items (no byte fallback for byte-level BPE).
#[allow(dead_code)]
mod families {
    include!(concat!(env!("OUT_DIR"), "/families.rs"));
}

impl Tokenizer {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The beginning-of-sequence token's text (`<|begin_of_text|>`), for an open model.
    pub fn bos_token(&self) -> Option<&'static str> {
        self.bos
    }

    /// The end-of-sequence token's text, for an open model.
    pub fn eos_token(&self) -> Option<&'static str> {
        self.eos
    }

    /// Whether the engines add BOS to a prompt that lacks it.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Whether the text of special tokens is read as those tokens (open models' chat
    /// prompts); tiktoken encodings read all text as text.
    pub fn has_specials(&self) -> bool {
        !self.specials.is_empty()
    }

    /// Cut `text` at its special tokens: `each(Err(id))` for a special token, `each(Ok(s))`
    /// for the plain text between them.
    fn split_specials<'t>(&self, text: &'t str, mut each: impl FnMut(Result<&'t str, u32>)) {
        // One pass of an automaton: a scan that tried every special token at every `<`
        // compared Llama 3's 256 of them each time, and was the tokenizer's dearest step on
        // a short chat prompt.
        let mut plain = 0;
        if let Some(finder) = &self.special_finder {
            for m in finder.find_iter(text) {
                let Some(&(_, id)) = self.specials.get(m.pattern().as_usize()) else {
                    continue;
                };
                if plain < m.start() {
                    each(Ok(text.get(plain..m.start()).unwrap_or_default()));
                }
                each(Err(id));
                plain = m.end();
            }
        }
        if plain < text.len() {
            each(Ok(text.get(plain..).unwrap_or_default()));
        }
    }

    /// Tokens of a model's prompt text: special-token text is one token each, the rest
    /// as [`Tokenizer::count`]. For a tiktoken encoding, the same as `count`.
    pub fn count_prompt(&self, text: &str) -> usize {
        self.count_prompt_by(text, |plain| self.count(plain))
    }

    /// [`Tokenizer::count_prompt`] with the plain text between special tokens counted by
    /// `count` (a caller that remembers counts of texts it saw).
    pub fn count_prompt_by(&self, text: &str, mut count: impl FnMut(&str) -> usize) -> usize {
        if self.specials.is_empty() {
            return count(text);
        }
        let mut total = 0;
        self.split_specials(text, |part| match part {
            Ok(plain) => total += count(plain),
            Err(_) => total += 1,
        });
        total
    }

    /// The text of token ids from [`Tokenizer::encode`] or [`Tokenizer::encode_prompt`], as
    /// bytes (a byte-fallback token is its byte; Gemma's `▁` is a space).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some((s, _)) = self.specials.iter().find(|(_, i)| *i == id) {
                out.extend_from_slice(s.as_bytes());
                continue;
            }
            match &self.chars {
                Some((_, fallback)) => match fallback.iter().position(|&f| f == id) {
                    Some(byte) => out.push(byte as u8),
                    None => {
                        let text = String::from_utf8_lossy(self.vocab.token(id));
                        out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
                    }
                },
                None => out.extend_from_slice(self.vocab.token(id)),
            }
        }
        out
    }

    /// Token ids of a model's prompt text (special tokens read as such).
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.split_specials(text, |part| match part {
            Ok(plain) => out.extend(self.encode(plain)),
            Err(id) => out.push(id),
        });
        out
    }

    /// Number of tokens of `text` (as `encode_ordinary`: special-token text is plain text).
    pub fn count(&self, text: &str) -> usize {
        if let Some((merges, fallback)) = &self.chars {
            let mut total = 0;
            let mut scratch = charbpe::CharScratch::default();
            charbpe::encode(&self.vocab, merges, fallback, text, &mut scratch, |_| {
                total += 1
            });
            return total;
        }
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

    /// The token ranks of `text`, as tiktoken's `encode_ordinary` (token ids, for an open
    /// family).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some((merges, fallback)) = &self.chars {
            let mut scratch = charbpe::CharScratch::default();
            charbpe::encode(&self.vocab, merges, fallback, text, &mut scratch, |id| {
                out.push(id)
            });
            return out;
        }
        let mut scratch = Scratch::default();
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
        specials: &[],
        special_finder: None,
        bos: None,
        eos: None,
        adds_bos: false,
        chars: None,
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

/// An open-model family as built in (see build.rs).
struct Family {
    name: &'static str,
    /// Its vocabulary was there at build time.
    built: bool,
    data: &'static Aligned<[u8]>,
    pattern: Pattern,
    specials: &'static [(&'static str, u32)],
    bos: Option<&'static str>,
    eos: Option<&'static str>,
    adds_bos: bool,
    /// A merge-list vocabulary over characters: its merge tables and byte-fallback ids.
    merges: Option<(&'static Aligned<[u8]>, &'static [u32])>,
}

/// An open-model family's tokenizer; `None` when its vocabulary was not there at build time.
fn load_family(f: &Family) -> Option<Tokenizer> {
    if !f.built {
        return None;
    }
    // A contiguous NFA: built in a fraction of the time a DFA takes (Llama 3's 256 tokens:
    // about 9 ms in V8 at the first count for the DFA the builder picks by itself), and the
    // prompt is searched once. One that cannot be built leaves the family out, as a table
    // that does not load does.
    let special_finder = if f.specials.is_empty() {
        None
    } else {
        let finder = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .match_kind(MatchKind::LeftmostLongest)
            .build(f.specials.iter().map(|(s, _)| s))
            .ok()?;
        Some(finder)
    };
    let base = load(f.name, f.data, f.pattern)?;
    let chars = match f.merges {
        Some((data, fallback)) => Some((
            charbpe::MergeList::from_tables(&data.0, base.vocab.len())?,
            fallback,
        )),
        None => None,
    };
    Some(Tokenizer {
        specials: f.specials,
        special_finder,
        bos: f.bos,
        eos: f.eos,
        adds_bos: f.adds_bos,
        chars,
        ..base
    })
}

static LLAMA3_DATA: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/llama3.bin")));
static QWEN2_DATA: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/qwen2.bin")));

/// Llama 3, 3.1, 3.2, 3.3 (and their fine-tunes, DeepSeek-R1-Distill-Llama): llama.cpp's
/// `llama-bpe` vocabulary.
pub fn llama3() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        load_family(&Family {
            name: "llama3",
            built: families::LLAMA3_BUILT,
            data: LLAMA3_DATA,
            pattern: Pattern::Llama3,
            specials: &families::LLAMA3_SPECIALS,
            bos: families::LLAMA3_BOS,
            eos: families::LLAMA3_EOS,
            // llama.cpp's `llama-bpe` pre-tokenizer sets add_bos.
            adds_bos: true,
            merges: None,
        })
    })
    .as_ref()
}

/// Qwen 2, 2.5 and 3 (and DeepSeek-R1-Distill-Qwen): llama.cpp's `qwen2` vocabulary.
pub fn qwen2() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        load_family(&Family {
            name: "qwen2",
            built: families::QWEN2_BUILT,
            data: QWEN2_DATA,
            pattern: Pattern::Qwen2,
            specials: &families::QWEN2_SPECIALS,
            bos: families::QWEN2_BOS,
            eos: families::QWEN2_EOS,
            // Qwen's GGUFs and tokenizer_config.json: add_bos_token false.
            adds_bos: false,
            merges: None,
        })
    })
    .as_ref()
}

static GEMMA4_DATA: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/gemma4.bin")));
static GEMMA4_MERGES: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/gemma4.merges.bin"
)));

/// Gemma 4: llama.cpp's `gemma-4` vocabulary (BPE over characters with a merge list).
pub fn gemma4() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        load_family(&Family {
            name: "gemma4",
            built: families::GEMMA4_BUILT,
            data: GEMMA4_DATA,
            // Not used: Gemma 4 cuts text into newline and other runs (see charbpe).
            pattern: Pattern::Llama3,
            specials: &families::GEMMA4_SPECIALS,
            bos: families::GEMMA4_BOS,
            eos: families::GEMMA4_EOS,
            // llama.cpp forces add_bos for Gemma 4.
            adds_bos: true,
            merges: Some((GEMMA4_MERGES, &families::GEMMA4_BYTE_FALLBACK)),
        })
    })
    .as_ref()
}

/// A tokenizer by encoding name.
pub fn by_name(name: &str) -> Option<&'static Tokenizer> {
    match name {
        "o200k_base" => o200k_base(),
        "cl100k_base" => cl100k_base(),
        "llama3" => llama3(),
        "qwen2" => qwen2(),
        "gemma4" => gemma4(),
        _ => None,
    }
}

/// Encoding names [`by_name`] knows (the open families only when built with their
/// vocabularies).
pub const ENCODINGS: [&str; 5] = ["o200k_base", "cl100k_base", "llama3", "qwen2", "gemma4"];

/// The tiktoken encodings (always built in; tiktoken-rs is their oracle).
pub const TIKTOKEN_ENCODINGS: [&str; 2] = ["o200k_base", "cl100k_base"];

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

    /// The open families, where built in (also in V8): ids from llama.cpp's reference
    /// tokenizations (models/ggml-vocab-*.gguf.out).
    #[test]
    fn open_families() {
        if let Some(t) = llama3() {
            assert_eq!(t.encode("Hello world"), [9906, 1917]);
            assert_eq!(
                t.encode(" this is 🦙.cpp"),
                [420, 374, 11410, 99, 247, 13, 11055]
            );
            assert_eq!(t.encode("3333333"), [8765, 8765, 18]);
            assert_eq!(t.encode_prompt("<|begin_of_text|>hi"), [128000, 6151]);
            assert!(t.adds_bos());
        }
        if let Some(t) = gemma4() {
            // The fuzzer's first find: a NUL is its byte-fallback token, and decodes back.
            for text in [".\0", "a  b\n\n\tc", "東京 🦙"] {
                let ids = t.encode(text);
                assert_eq!(t.count(text), ids.len());
                assert_eq!(t.decode(&ids), text.as_bytes(), "{text:?}");
            }
            assert_eq!(t.encode("Hello world"), [9259, 1902]);
            assert_eq!(
                t.encode(" this is 🦙.cpp"),
                [672, 563, 236743, 478, 397, 404, 391, 236761, 12362]
            );
            assert!(t.adds_bos());
        }
        if let Some(t) = qwen2() {
            assert_eq!(t.encode("Hello world"), [9707, 1879]);
            assert_eq!(t.encode("3333333"), [18; 7]);
            assert_eq!(t.count_prompt("<|im_start|>user\nhi<|im_end|>"), 5);
            assert!(!t.adds_bos());
        }
    }

    /// The scan `split_specials` replaced: at every byte, the longest special token that
    /// starts there.
    fn split_by_scan(t: &Tokenizer, text: &str) -> Vec<Result<String, u32>> {
        let mut longest_first = t.specials.to_vec();
        longest_first.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let (bytes, mut out, mut plain, mut i) = (text.as_bytes(), Vec::new(), 0, 0);
        while i < bytes.len() {
            match longest_first
                .iter()
                .find(|(s, _)| bytes.get(i..i + s.len()) == Some(s.as_bytes()))
            {
                Some(&(s, id)) => {
                    if plain < i {
                        out.push(Ok(text[plain..i].to_string()));
                    }
                    out.push(Err(id));
                    i += s.len();
                    plain = i;
                }
                None => i += 1,
            }
        }
        if plain < bytes.len() {
            out.push(Ok(text[plain..].to_string()));
        }
        out
    }

    proptest::proptest! {
        /// Texts of special tokens, their look-alikes (cut short, one inside another) and
        /// other text: the automaton cuts them where the scan did.
        #[test]
        fn special_tokens_are_found_where_a_scan_finds_them(
            parts in proptest::collection::vec((0usize..1000, 0usize..40, "[a-z<|>\\[\\] 東]{0,6}"), 0..12)
        ) {
            for t in [llama3(), qwen2(), gemma4()].into_iter().flatten() {
                let mut text = String::new();
                for (pick, cut, other) in &parts {
                    let (s, _) = t.specials[pick % t.specials.len()];
                    let cut = (*cut).min(s.len());
                    text.push_str(if cut % 3 == 0 { s } else { &s[..cut] });
                    text.push_str(other);
                }
                let mut got = Vec::new();
                t.split_specials(&text, |p| got.push(p.map(str::to_string)));
                proptest::prop_assert_eq!(got, split_by_scan(t, &text), "{}: {:?}", t.name(), text);
            }
        }
    }

    #[test]
    fn counts() {
        let t = o200k_base().unwrap();
        assert_eq!(t.count(""), 0);
        assert_eq!(t.count("hello world"), 2);
        assert_eq!(t.encode("hello world"), vec![24912, 2375]);
    }
}
