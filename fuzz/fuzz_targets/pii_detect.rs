//! The PII detector and the request / response scanners on any text and body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::api::GOVERNED_PATHS;
use sluice_pii_redaction::{redact_response, scan_request, CleanTexts, Direction, Redactor};
use std::cell::RefCell;
#[path = "common.rs"]
mod common;

thread_local! {
    /// Texts found clean, kept across inputs as the filter keeps them across requests.
    static CLEAN: RefCell<CleanTexts> = RefCell::new(CleanTexts::default());
}

fuzz_target!(|data: &[u8]| {
    let s = common::pii_settings();
    if let Ok(text) = std::str::from_utf8(data) {
        let mut r = Redactor::default();
        let mut scratch = Vec::new();
        if let Ok(Some(out)) = sluice_pii_redaction::redact_text(
            s,
            &mut r,
            text,
            Direction::Request,
            false,
            &mut scratch,
        ) {
            // Redacting the redacted text finds nothing new to change.
            let mut again = Vec::new();
            let twice = sluice_pii_redaction::redact_text(
                s,
                &mut r,
                &out,
                Direction::Request,
                false,
                &mut again,
            );
            assert!(matches!(twice, Ok(None) | Ok(Some(_))));
        }
    }
    for (_, api) in GOVERNED_PATHS {
        let mut r = Redactor::default();
        let scanned = scan_request(s, &mut r, api, data, None);
        // What earlier inputs left remembered changes no outcome.
        let remembered = CLEAN.with(|c| {
            scan_request(
                s,
                &mut Redactor::default(),
                api,
                data,
                Some(&mut c.borrow_mut()),
            )
        });
        assert_eq!(scanned, remembered);
        let _ = redact_response(s, &mut r, api, data);
    }
});
