//! pii-redaction speed, natively or compiled to wasm32-wasip1 (scripts/bench.sh runs it in
//! V8 through Node's WASI, the engine Envoy uses). Prints `key=value` lines:
//! - scan MB/s with every built-in entity on, over a mixed corpus (the labelled PII corpus
//!   plus the tokenizer's prose / code / CJK corpus, ~4 MB), and over the PII-dense
//!   labelled corpus alone;
//! - the time to scan and redact a 100 KB chat request body (parse, scan, rewrite).
//!
//! Build for wasm with `--no-default-features` (no proxy-wasm glue).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sluice_pii_redaction::{scan, scan_request, Api, EntitySet, PiiConfig, Redactor, Settings};
use std::time::Instant;

fn labelled() -> String {
    include_str!("../tests/corpus.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn prose() -> String {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../../tokenizer/tests/corpus.json")).unwrap();
    entries
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn best<F: FnMut() -> usize>(rounds: usize, mut f: F) -> (f64, usize) {
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
    let pii = labelled();
    let other = prose();
    // Mixed: one part PII-dense corpus to three parts ordinary text.
    let mut mixed = String::new();
    while mixed.len() < 4_000_000 {
        mixed.push_str(&pii);
        mixed.push('\n');
        for _ in 0..(3 * pii.len() / other.len().max(1)).max(1) {
            mixed.push_str(&other);
            mixed.push('\n');
        }
    }
    let all = EntitySet::all();
    let mut out = Vec::new();
    for (name, text) in [("mixed", &mixed), ("pii_dense", &pii)] {
        let (secs, found) = best(15, || {
            out.clear();
            scan(text, 0, all, &mut out);
            out.len()
        });
        println!("{name}_mb={:.2}", text.len() as f64 / 1e6);
        println!("{name}_findings={found}");
        println!("{name}_scan_mb_per_s={:.0}", text.len() as f64 / 1e6 / secs);
    }

    // A 100 KB chat request: ordinary text with PII sprinkled in, every entity redacted.
    let settings = Settings::new(serde_json::from_str::<PiiConfig>("{}").unwrap()).unwrap();
    let mut prompt = String::new();
    let mut i = 0;
    while prompt.len() < 100_000 {
        prompt.push_str(&other[..other.len().min(2000)]);
        prompt.push_str(&format!(
            " contact user{i}@example.org or +1 415 555 {:04} ",
            i % 10000
        ));
        i += 1;
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": prompt}]
    }))
    .unwrap();
    let (secs, _) = best(20, || {
        let mut r = Redactor::default();
        match scan_request(&settings, &mut r, Api::Chat, &body, None) {
            sluice_pii_redaction::RequestOutcome::Rewritten(b) => b.len(),
            other => panic!("{other:?}"),
        }
    });
    println!("request_kb={:.0}", body.len() as f64 / 1e3);
    println!("request_redact_us={:.0}", secs * 1e6);
}
