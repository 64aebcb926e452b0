//! The corpus counts (made by the reference tokenizer) hold for our tokenizer. Runs
//! natively and compiled to wasm32-wasip1 (under Node's WASI, the V8 engine Envoy uses).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[test]
fn corpus_counts_hold() {
    let corpus: Vec<serde_json::Value> = serde_json::from_str(include_str!("corpus.json")).unwrap();
    let mut checked = 0;
    for entry in &corpus {
        let text = entry["text"].as_str().unwrap();
        // The tiktoken encodings (the open families are checked in families.rs).
        for name in sluice_tokenizer::TIKTOKEN_ENCODINGS {
            let want = entry[name].as_u64().unwrap() as usize;
            let got = sluice_tokenizer::by_name(name).unwrap().count(text);
            assert_eq!(got, want, "{name} on {}", entry["name"]);
            checked += 1;
        }
    }
    assert_eq!(checked, corpus.len() * 2);
}
