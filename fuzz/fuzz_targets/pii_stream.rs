//! Stream redaction: any split of a text redacts exactly as the whole text does; and the
//! SSE redactor of every API on any bytes cut anywhere never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::api::GOVERNED_PATHS;
use sluice_pii_redaction::{Direction, Redactor, SseRedactor, StreamText};
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let s = common::pii_settings();
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        let mut at = usize::from(cut) * text.len() / 256;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let (a, b) = text.split_at(at);
        let mut r = Redactor::default();
        let mut st = StreamText::default();
        let mut streamed = st.push(s, &mut r, a);
        streamed.push_str(&st.push(s, &mut r, b));
        streamed.push_str(&st.finish(s, &mut r));
        let mut r2 = Redactor::default();
        let whole = sluice_pii_redaction::redact_text(
            s,
            &mut r2,
            text,
            Direction::Response,
            false,
            &mut Vec::new(),
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| text.to_string());
        assert_eq!(streamed, whole);
    }
    let at = usize::from(cut) * rest.len() / 256;
    for (_, api) in GOVERNED_PATHS {
        let mut r = Redactor::default();
        let mut red = SseRedactor::new(api, 1 << 16);
        let _ = red.on_chunk(s, &mut r, rest.get(..at).unwrap_or_default(), false);
        let _ = red.on_chunk(s, &mut r, rest.get(at..).unwrap_or_default(), true);
    }
});
