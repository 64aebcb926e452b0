//! Tokenizer speed on a mixed corpus, natively or compiled to wasm32-wasip1 (run by
//! scripts/bench.sh in V8 through Node's WASI). Prints `key=value` lines.
//!
//! Natively it also times tiktoken-rs on the same text, the reference for the ratio.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

fn corpus() -> String {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../tests/corpus.json")).unwrap();
    let one: String = entries
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    // ~4 MB of mixed text: prose, code, CJK, emoji, whitespace and digit runs.
    one.repeat(4_000_000 / one.len() + 1)
}

fn time<F: FnMut() -> usize>(mut f: F, rounds: usize) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut out = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    let start = Instant::now();
    let enc = sluice_tokenizer::o200k_base().unwrap();
    let ready_us = start.elapsed().as_secs_f64() * 1e6;
    // First count touches the tables once (page-in / first use).
    let warm = Instant::now();
    enc.count("warm up");
    println!(
        "ready_us={:.0}",
        ready_us + warm.elapsed().as_secs_f64() * 1e6
    );
    #[cfg(target_arch = "wasm32")]
    {
        // The whole linear memory of this wasm instance (every encoding's tables are data
        // segments, the open families' included when built in): an upper bound of what a
        // filter VM pays.
        let bytes = core::arch::wasm32::memory_size(0) * 65536;
        println!("wasm_memory_mb={:.1}", bytes as f64 / 1e6);
    }

    let text = corpus();
    let mb = text.len() as f64 / 1e6;
    let (secs, tokens) = time(|| enc.count(&text), 3);
    println!("corpus_mb={mb:.2}");
    println!("corpus_tokens={tokens}");
    println!("o200k_mb_per_s={:.1}", mb / secs);

    // Every other encoding built in: time to ready, the size of its tables, throughput.
    for name in sluice_tokenizer::ENCODINGS
        .iter()
        .filter(|n| **n != "o200k_base")
    {
        let t = Instant::now();
        let Some(e) = sluice_tokenizer::by_name(name) else {
            println!("{name}=not_built_in");
            continue;
        };
        e.count("warm up");
        println!("{name}_ready_us={:.0}", t.elapsed().as_secs_f64() * 1e6);
        println!(
            "{name}_tables_mb={:.1}",
            e.vocab().table_bytes() as f64 / 1e6
        );
        let (secs, _) = time(|| e.count(&text), 3);
        println!("{name}_mb_per_s={:.1}", mb / secs);
    }

    // The first 4 KB of the corpus (cut at a character boundary).
    let cut = (0..=4096)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap();
    let prompt = &text[..cut];
    let n = 2000;
    let t = Instant::now();
    let mut sum = 0;
    for _ in 0..n {
        sum += enc.count(std::hint::black_box(prompt));
    }
    println!(
        "prompt_4kb_us={:.1}",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    assert!(sum > 0);

    #[cfg(not(target_arch = "wasm32"))]
    {
        let reference = tiktoken_rs::o200k_base().unwrap();
        let (secs, ref_tokens) = time(|| reference.encode_ordinary(&text).len(), 2);
        assert_eq!(ref_tokens, tokens, "the reference disagrees on the corpus");
        println!("tiktoken_rs_native_mb_per_s={:.1}", mb / secs);
    }
}
