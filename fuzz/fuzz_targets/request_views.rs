//! The request model on any body: parsing, every view, usage of bodies, for every API.
//! No panic; a body that parses keeps its model rule.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::api::{usage_of, Api, RequestView, GOVERNED_PATHS};

fuzz_target!(|data: &[u8]| {
    for (_, api) in GOVERNED_PATHS {
        let parsed = RequestView::parse(api, data);
        // Through the thread's kept tree (twice: parsed, then found): the same answer.
        for _ in 0..2 {
            let shared = RequestView::parse_shared(api, data);
            match (&parsed, &shared) {
                (Ok(a), Ok(b)) => assert_eq!(a.body, b.body),
                (Err(a), Err(b)) => assert_eq!(a.body(), b.body()),
                _ => panic!("parse and parse_shared disagree"),
            }
        }
        if let Ok(view) = parsed {
            assert!(view.model().is_ok_and(|m| !m.is_empty()));
            let _ = (view.stream(), view.output_cap(), view.include_usage());
            let _ = view.texts();
            let _ = view.tools().count();
            if api == Api::Messages {
                assert!(view.output_cap().is_some(), "max_tokens is required");
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            let _ = usage_of(api, &v);
            let _ = sluice_common::api::stream_event(api, &v);
        }
    }
});
