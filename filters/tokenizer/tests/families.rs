//! The open-model tokenizers against llama.cpp's reference tokenizations: the `.inp` / `.out`
//! files beside each vocabulary in llama.cpp's tree (made with Hugging Face `tokenizers`
//! from the model's own `tokenizer.json`). Needs the vocabularies (scripts/llama-src.sh);
//! skipped without them unless `SLUICE_REQUIRE_ENGINE` is set.
// Reads llama.cpp's files from disk: native only (lib.rs's unit tests run the families in V8).
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

include!("../vocab_dir.rs");

fn family(name: &str) -> Option<&'static sluice_tokenizer::Tokenizer> {
    let t = sluice_tokenizer::by_name(name);
    if t.is_none() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_ENGINE").is_none(),
            "{name} was not built in"
        );
        eprintln!("{name}: vocabulary not built in; skipped");
    }
    t
}

fn reference(file: &str) -> Vec<(String, Vec<u32>)> {
    let dir = vocab_dir().unwrap();
    let inp = std::fs::read_to_string(dir.join(format!("{file}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{file}.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // Some files end with the separator, some without.
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len(), "{file}: one text per line of ids");
    texts
        .into_iter()
        .zip(ids)
        .map(|(t, i)| (t.to_string(), i))
        .collect()
}

#[test]
fn open_families_match_the_reference_tokenizations() {
    for (name, file) in [
        ("llama3", "ggml-vocab-llama-bpe.gguf"),
        ("qwen2", "ggml-vocab-qwen2.gguf"),
        ("gemma4", "ggml-vocab-gemma-4.gguf"),
    ] {
        let Some(t) = family(name) else { continue };
        let cases = reference(file);
        assert!(cases.len() > 30, "{file}: {} cases", cases.len());
        for (text, want) in &cases {
            assert_eq!(&t.encode(text), want, "{name}: {text:?}");
            assert_eq!(t.count(text), want.len(), "{name}: {text:?}");
        }
        eprintln!("{name}: {} reference texts, all equal", cases.len());
    }
}

#[test]
fn special_tokens_in_a_prompt_are_one_token_each() {
    let Some(t) = family("llama3") else { return };
    let text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>";
    let ids = t.encode_prompt(text);
    assert_eq!(ids.first(), Some(&128000));
    assert_eq!(ids.last(), Some(&128009));
    assert_eq!(t.count_prompt(text), ids.len());
    assert_eq!(t.bos_token(), Some("<|begin_of_text|>"));
    // A look-alike is text.
    assert!(t.count_prompt("<|eot_id |>") > 1);
}
