//! The tokenizer on any text: count agrees with encode, and every token decodes back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in sluice_tokenizer::ENCODINGS {
        let Some(t) = sluice_tokenizer::by_name(name) else {
            return;
        };
        let ids = t.encode(text);
        assert_eq!(ids.len(), t.count(text));
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&r| t.vocab().token(r).to_vec())
            .collect();
        assert_eq!(bytes, text.as_bytes(), "encoding is lossless");
    }
});
