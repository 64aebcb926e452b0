//! Generates the tokenizer's tables from the reference implementation at build time:
//!
//! * `<encoding>.bin`: token bytes, offsets and an open-addressing hash index, laid out so
//!   the filter uses them in place (no parsing, no allocation at VM start);
//! * `unicode_classes.rs`: a two-level table of the character classes the pre-tokenizer
//!   patterns use, computed with `regex-syntax` (the engine behind tiktoken's regexes), so
//!   both agree on every code point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use regex_syntax::hir::{Class, HirKind};
use std::io::Write;
use std::path::Path;

/// Slot layout of the hash index (u64): fingerprint (15 bits, from the hash's top) |
/// token length (8) | offset in the blob (22) | rank + 1 (19; 0 = empty slot). One read
/// of a slot decides almost every probe; only a real candidate touches the token bytes.
const RANK_BITS: u32 = 19;
const OFFSET_BITS: u32 = 22;
const LEN_BITS: u32 = 8;

mod hash {
    include!("src/hash.rs");
}
use hash::hash;

/// tiktoken's tokens by rank, from the oracle's own tables.
fn tiktoken_tokens(name: &str, bpe: &tiktoken_rs::CoreBPE, max_rank: u32) -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    for rank in 0..=max_rank {
        match bpe.decode_bytes(&[rank]) {
            Ok(b) => {
                assert_eq!(
                    tokens.len() as u32,
                    rank,
                    "{name}: ranks must be contiguous"
                );
                tokens.push(b);
            }
            Err(_) => break,
        }
    }
    tokens
}

fn write_encoding(out: &Path, name: &str, tokens: &[Vec<u8>]) {
    let n = tokens.len() as u32;
    assert!(
        n < (1 << RANK_BITS) - 1,
        "{name}: too many tokens for the slot layout"
    );
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    let mut blob = Vec::new();
    for t in tokens {
        offsets.push(blob.len() as u32);
        blob.extend_from_slice(t);
    }
    offsets.push(blob.len() as u32);
    assert!(
        blob.len() < 1 << OFFSET_BITS,
        "{name}: token bytes exceed the slot layout"
    );
    // Load factor 0.25 to 0.5 (about 0.38 for o200k). Measured in V8 on the corpus: 34 MB/s,
    // against 30 MB/s at 0.76 load (which would save 3 MB of the ~10 MB both tiktoken
    // encodings take). Capped at twice the tokens: Gemma 4's 262,144 tokens would
    // otherwise take a 0.25-load, 8 MB index.
    let n_us = (n as usize).max(1);
    let cap = (n_us * 5 / 2)
        .next_power_of_two()
        .min((n_us * 2).next_power_of_two());
    let mask = cap as u64 - 1;
    let mut table = vec![0u64; cap];
    for (rank, t) in tokens.iter().enumerate() {
        assert!(
            t.len() < 1 << LEN_BITS,
            "{name}: token {rank} is too long for the slot"
        );
        let h = hash(t);
        let mut i = h & mask;
        while table[i as usize] != 0 {
            i = (i + 1) & mask;
        }
        let fp_shift = LEN_BITS + OFFSET_BITS + RANK_BITS;
        table[i as usize] = (h >> fp_shift) << fp_shift
            | (t.len() as u64) << (OFFSET_BITS + RANK_BITS)
            | u64::from(offsets[rank]) << RANK_BITS
            | (rank as u64 + 1);
    }
    // Rank of every two-byte token, indexed by the two bytes: the first lookups of every
    // merge, without hashing.
    let mut pairs = vec![u32::MAX; 1 << 16];
    for (rank, t) in tokens.iter().enumerate() {
        if let [a, b] = t[..] {
            pairs[(a as usize) << 8 | b as usize] = rank as u32;
        }
    }
    // Header (4 x u32): token count, table capacity, blob length, reserved; then the table
    // (u64, 8-aligned), pair ranks and offsets (u32), and the token bytes. Little-endian.
    let mut f = std::fs::File::create(out.join(format!("{name}.bin"))).unwrap();
    for v in [n, cap as u32, blob.len() as u32, 0] {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    for v in &table {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    for v in pairs.iter().chain(offsets.iter()) {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.write_all(&blob).unwrap();
}

fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::parse(pattern).unwrap();
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

fn write_unicode(out: &Path) {
    // Bit per class; order matches the constants in src/unicode.rs.
    let classes = [
        r"\p{Lu}", r"\p{Lt}", r"\p{Ll}", r"\p{Lm}", r"\p{Lo}", r"\p{M}", r"\p{N}", r"\s",
    ];
    let mut bits = vec![0u8; 0x11_0000];
    for (bit, class) in classes.iter().enumerate() {
        for (lo, hi) in ranges(class) {
            for c in lo..=hi {
                bits[c as usize] |= 1 << bit;
            }
        }
    }
    // Sanity: \p{L} is exactly the union of its five subcategories.
    for (lo, hi) in ranges(r"\p{L}") {
        for c in lo..=hi {
            assert!(
                bits[c as usize] & 0b1_1111 != 0,
                "U+{c:04X} is L but in no subclass"
            );
        }
    }
    const BLOCK: usize = 256;
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut index = Vec::new();
    for chunk in bits.chunks(BLOCK) {
        let i = match blocks.iter().position(|b| *b == chunk) {
            Some(i) => i,
            None => {
                blocks.push(chunk);
                blocks.len() - 1
            }
        };
        index.push(i as u16);
    }
    let mut src = String::new();
    src.push_str("// Generated by build.rs from regex-syntax's Unicode tables. Do not edit.\n");
    src.push_str(&format!(
        "pub(crate) const BLOCK_SHIFT: u32 = {};\n",
        BLOCK.trailing_zeros()
    ));
    src.push_str(&format!(
        "pub(crate) static BLOCK_INDEX: [u16; {}] = {:?};\n",
        index.len(),
        index
    ));
    let flat: Vec<u8> = blocks.concat();
    src.push_str(&format!(
        "pub(crate) static BLOCKS: [u8; {}] = {:?};\n",
        flat.len(),
        flat
    ));
    // Letters that (?i) folds to the contraction letters, e.g. U+017F LONG S for 's'.
    for letter in ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'] {
        let chars: Vec<u32> = ranges(&format!("(?i)[{letter}]"))
            .into_iter()
            .flat_map(|(lo, hi)| lo..=hi)
            .collect();
        src.push_str(&format!(
            "pub(crate) const FOLD_{}: [char; {}] = [{}];\n",
            letter.to_ascii_uppercase(),
            chars.len(),
            chars
                .iter()
                .map(|c| format!("'\\u{{{c:x}}}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    std::fs::write(out.join("unicode_classes.rs"), src).unwrap();
}

/// The vocabulary of a GGUF file (llama.cpp's model format), as far as counting needs it.
struct GgufVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    bos: Option<u32>,
    eos: Option<u32>,
    pre: String,
    model: String,
    merges: Vec<String>,
}

/// Read the tokenizer keys of a GGUF file (v2/v3, little-endian: the format of the
/// vocabulary files in llama.cpp's tree). Only the metadata is read, never the tensors.
fn read_gguf_vocab(path: &Path) -> GgufVocab {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut at = 0usize;
    let mut take_owned = |n: usize| -> Vec<u8> {
        let b = data[at..at + n].to_vec();
        at += n;
        b
    };
    assert_eq!(
        take_owned(4),
        b"GGUF",
        "{}: not a GGUF file",
        path.display()
    );
    let version = u32::from_le_bytes(take_owned(4).try_into().unwrap());
    assert!(
        version >= 2,
        "{}: GGUF v{version} is too old",
        path.display()
    );
    let _tensors = u64::from_le_bytes(take_owned(8).try_into().unwrap());
    let kvs = u64::from_le_bytes(take_owned(8).try_into().unwrap());
    #[derive(Debug)]
    enum V {
        Int(i64),
        Str(String),
        Ints(Vec<i64>),
        Strs(Vec<String>),
        Other,
    }
    fn scalar(take: &mut dyn FnMut(usize) -> Vec<u8>, ty: u32) -> V {
        let le = |b: Vec<u8>| {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(&b);
            i64::from_le_bytes(a)
        };
        match ty {
            0 | 7 => V::Int(le(take(1))),
            1 => V::Int(i64::from(take(1)[0] as i8)),
            2 => V::Int(le(take(2))),
            3 => V::Int(i64::from(i16::from_le_bytes(take(2).try_into().unwrap()))),
            4 => V::Int(le(take(4))),
            5 => V::Int(i64::from(i32::from_le_bytes(take(4).try_into().unwrap()))),
            6 => {
                take(4);
                V::Other
            }
            8 => {
                let n = le(take(8)) as usize;
                V::Str(String::from_utf8(take(n)).unwrap())
            }
            10 | 11 => V::Int(le(take(8))),
            12 => {
                take(8);
                V::Other
            }
            9 => {
                let item = le(take(4)) as u32;
                let n = le(take(8)) as usize;
                let items: Vec<V> = (0..n).map(|_| scalar(take, item)).collect();
                if item == 8 {
                    V::Strs(
                        items
                            .into_iter()
                            .map(|v| match v {
                                V::Str(s) => s,
                                _ => unreachable!(),
                            })
                            .collect(),
                    )
                } else {
                    V::Ints(
                        items
                            .into_iter()
                            .map(|v| match v {
                                V::Int(i) => i,
                                _ => 0,
                            })
                            .collect(),
                    )
                }
            }
            other => panic!("GGUF value type {other}"),
        }
    }
    let mut vocab = GgufVocab {
        tokens: Vec::new(),
        types: Vec::new(),
        bos: None,
        eos: None,
        pre: String::new(),
        model: String::new(),
        merges: Vec::new(),
    };
    for _ in 0..kvs {
        let key = match scalar(&mut take_owned, 8) {
            V::Str(k) => k,
            _ => unreachable!(),
        };
        let ty = u32::from_le_bytes(take_owned(4).try_into().unwrap());
        let value = scalar(&mut take_owned, ty);
        match (key.as_str(), value) {
            ("tokenizer.ggml.tokens", V::Strs(t)) => vocab.tokens = t,
            ("tokenizer.ggml.token_type", V::Ints(t)) => {
                vocab.types = t.into_iter().map(|i| i as i32).collect();
            }
            ("tokenizer.ggml.bos_token_id", V::Int(i)) => vocab.bos = Some(i as u32),
            ("tokenizer.ggml.eos_token_id", V::Int(i)) => vocab.eos = Some(i as u32),
            ("tokenizer.ggml.pre", V::Str(s)) => vocab.pre = s,
            ("tokenizer.ggml.model", V::Str(s)) => vocab.model = s,
            ("tokenizer.ggml.merges", V::Strs(m)) => vocab.merges = m,
            _ => {}
        }
    }
    vocab
}

/// GPT-2's byte-level alphabet reversed: a token's characters back to its bytes.
fn byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .iter()
        .zip(&chars)
        .map(|(&b, &c)| (char::from_u32(c).unwrap(), b as u8))
        .collect()
}

/// An open-model family whose byte-level BPE vocabulary comes from a GGUF file of
/// llama.cpp's tree (see scripts/llama-src.sh).
struct Family {
    name: &'static str,
    file: &'static str,
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE, ranks by id) or `gemma4` (BPE over
    /// characters with a merge list and `<0xXX>` byte fallback).
    model: &'static str,
    pre: &'static str,
}

const FAMILIES: [Family; 3] = [
    Family {
        name: "llama3",
        file: "ggml-vocab-llama-bpe.gguf",
        model: "gpt2",
        pre: "llama-bpe",
    },
    Family {
        name: "qwen2",
        file: "ggml-vocab-qwen2.gguf",
        model: "gpt2",
        pre: "qwen2",
    },
    Family {
        name: "gemma4",
        file: "ggml-vocab-gemma-4.gguf",
        model: "gemma4",
        pre: "",
    },
];

// Where the GGUF vocabularies are: `SLUICE_VOCAB_DIR`, else the cache scripts/llama-src.sh
// fills.
include!("vocab_dir.rs");

/// Per family: `<family>.bin` (the token tables, rank = token id), `<family>.merges.bin`
/// (for merge-list vocabularies: per token id, the rank of the merge that makes it and the
/// byte length of that merge's left part; empty otherwise), and in `families.rs` whether it
/// was built, its special tokens with their ids, BOS, EOS and (merge-list vocabularies) the
/// ids of the `<0xXX>` byte-fallback tokens.
fn write_families(out: &Path) {
    let dir = vocab_dir();
    println!("cargo:rerun-if-env-changed=SLUICE_VOCAB_DIR");
    println!("cargo:rerun-if-env-changed=SLUICE_CACHE");
    let mut src =
        String::from("// Generated by build.rs from llama.cpp's GGUF vocabularies. Do not edit.\n");
    for f in &FAMILIES {
        let path = dir.as_ref().map(|d| d.join(f.file));
        if let Some(p) = &path {
            // A missing file counts as changed: the build picks it up once it is there.
            println!("cargo:rerun-if-changed={}", p.display());
        }
        let upper = f.name.to_ascii_uppercase();
        let Some(path) = path.filter(|p| p.is_file()) else {
            println!(
                "cargo:warning=sluice-tokenizer: no {} (run scripts/llama-src.sh or set SLUICE_VOCAB_DIR): the {} tokenizer is not built in",
                f.file, f.name
            );
            write_encoding(out, f.name, &[]);
            std::fs::write(out.join(format!("{}.merges.bin", f.name)), []).unwrap();
            src.push_str(&format!(
                "pub(crate) const {upper}_BUILT: bool = false;\npub(crate) static {upper}_SPECIALS: [(&str, u32); 0] = [];\npub(crate) const {upper}_BOS: Option<&str> = None;\npub(crate) const {upper}_EOS: Option<&str> = None;\npub(crate) static {upper}_BYTE_FALLBACK: [u32; 0] = [];\n"
            ));
            continue;
        };
        let v = read_gguf_vocab(&path);
        assert_eq!(v.model, f.model, "{}: tokenizer model", f.file);
        assert_eq!(v.pre, f.pre, "{}: pre-tokenizer", f.file);
        assert_eq!(v.tokens.len(), v.types.len());
        let (tokens, first_special, merges, byte_fallback) = if f.model == "gpt2" {
            let dec = byte_decoder();
            // Normal tokens (type 1) come first and their ids are their merge ranks (both
            // vocabularies come from tiktoken-style rank files); the rest are special.
            let normal = v.types.iter().take_while(|&&t| t == 1).count();
            let tokens: Vec<Vec<u8>> = v.tokens[..normal]
                .iter()
                .map(|t| {
                    t.chars()
                        .map(|c| {
                            *dec.get(&c)
                                .unwrap_or_else(|| panic!("{}: {t:?} is not byte-level", f.file))
                        })
                        .collect()
                })
                .collect();
            (tokens, normal, Vec::new(), Vec::new())
        } else {
            // Merge-list BPE over characters (Gemma 4): every token by id, its raw text.
            let tokens: Vec<Vec<u8>> = v.tokens.iter().map(|t| t.as_bytes().to_vec()).collect();
            let ids: std::collections::HashMap<&str, u32> = v
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i as u32))
                .collect();
            // Per token, every merge that makes it: (rank, byte length of its left part),
            // packed as `rank << 8 | split` (ranks < 2^24, splits < 256: token lengths fit
            // a byte, see write_encoding). Laid out as offsets per token id, then entries.
            let mut by_token: Vec<Vec<u32>> = vec![Vec::new(); tokens.len()];
            for (i, m) in v.merges.iter().enumerate() {
                // As llama.cpp splits a merge: at the first space after the first byte.
                let Some(pos) = m
                    .as_bytes()
                    .iter()
                    .skip(1)
                    .position(|&b| b == b' ')
                    .map(|p| p + 1)
                else {
                    continue;
                };
                let (left, right) = (&m[..pos], &m[pos + 1..]);
                let Some(&id) = ids.get(format!("{left}{right}").as_str()) else {
                    continue;
                };
                assert!(
                    i < 1 << 24 && left.len() < 256,
                    "{}: merge {i} does not pack",
                    f.file
                );
                by_token[id as usize].push((i as u32) << 8 | left.len() as u32);
            }
            let mut merges = Vec::new();
            let mut at = 0u32;
            for list in &by_token {
                merges.extend_from_slice(&at.to_le_bytes());
                at += list.len() as u32;
            }
            merges.extend_from_slice(&at.to_le_bytes());
            for e in by_token.iter().flatten() {
                merges.extend_from_slice(&e.to_le_bytes());
            }
            let byte_fallback: Vec<u32> = (0..=255u8)
                .map(|b| {
                    *ids.get(format!("<0x{b:02X}>").as_str())
                        .unwrap_or_else(|| panic!("{}: no byte token <0x{b:02X}>", f.file))
                })
                .collect();
            (tokens, 0, merges, byte_fallback)
        };
        write_encoding(out, f.name, &tokens);
        std::fs::write(out.join(format!("{}.merges.bin", f.name)), &merges).unwrap();
        let specials: Vec<(String, u32)> = v
            .tokens
            .iter()
            .zip(&v.types)
            .enumerate()
            .skip(first_special)
            // 3 control, 4 user-defined: both are matched in a chat prompt's text.
            .filter(|(_, (_, &t))| t == 3 || t == 4)
            .map(|(i, (s, _))| (s.clone(), i as u32))
            .collect();
        let name_of = |id: Option<u32>| {
            id.and_then(|i| v.tokens.get(i as usize))
                .map_or("None".to_string(), |s| format!("Some({s:?})"))
        };
        src.push_str(&format!(
            "pub(crate) const {upper}_BUILT: bool = true;\npub(crate) static {upper}_SPECIALS: [(&str, u32); {}] = {:?};\npub(crate) const {upper}_BOS: Option<&str> = {};\npub(crate) const {upper}_EOS: Option<&str> = {};\npub(crate) static {upper}_BYTE_FALLBACK: [u32; {}] = {:?};\n",
            specials.len(),
            specials,
            name_of(v.bos),
            name_of(v.eos),
            byte_fallback.len(),
            byte_fallback,
        ));
    }
    std::fs::write(out.join("families.rs"), src).unwrap();
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/hash.rs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let o200k = tiktoken_tokens("o200k_base", &tiktoken_rs::o200k_base().unwrap(), 199_997);
    write_encoding(&out, "o200k_base", &o200k);
    let cl100k = tiktoken_tokens("cl100k_base", &tiktoken_rs::cl100k_base().unwrap(), 100_255);
    write_encoding(&out, "cl100k_base", &cl100k);
    write_families(&out);
    write_unicode(&out);
}
