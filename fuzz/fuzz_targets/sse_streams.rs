//! The SSE parser on any bytes cut anywhere: the same events as in one piece, every byte
//! passed on once; and each API's stream handling (token-counter's tracker) on them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::api::GOVERNED_PATHS;
use sluice_common::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * input.len() / 256;
    let whole = SseParser::new(1 << 16).push(input);
    let mut p = SseParser::new(1 << 16);
    let mut split = p.push(input.get(..cut).unwrap_or_default());
    split.extend(p.push(input.get(cut..).unwrap_or_default()));
    if p.error().is_none() {
        let key = |e: &sluice_common::sse::SseEvent| (e.data.clone(), e.event.clone());
        assert_eq!(
            whole.iter().map(key).collect::<Vec<_>>(),
            split.iter().map(key).collect::<Vec<_>>()
        );
        let mut bytes: Vec<u8> = split.iter().flat_map(|e| e.raw.clone()).collect();
        bytes.extend(p.take_pending());
        assert_eq!(bytes, input);
    }
    let Some(tok) = sluice_tokenizer::o200k_base() else {
        return;
    };
    for (_, api) in GOVERNED_PATHS {
        for strip in [false, true] {
            let mut t = sluice_token_counter::ResponseTracker::new(
                api,
                200,
                Some("text/event-stream"),
                true,
                strip,
                tok,
                1 << 16,
            );
            let _ = t.on_chunk(input.get(..cut).unwrap_or_default(), false);
            let _ = t.on_chunk(input.get(cut..).unwrap_or_default(), true);
            let _ = t.finish();
        }
        let mut j = sluice_token_counter::ResponseTracker::new(
            api,
            200,
            Some("application/json"),
            false,
            false,
            tok,
            1 << 16,
        );
        let _ = j.on_chunk(input, true);
        let _ = j.finish();
    }
});
