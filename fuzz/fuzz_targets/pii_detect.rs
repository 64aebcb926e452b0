//! The PII detector and the request / response scanners on any text and body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::api::GOVERNED_PATHS;
use sluice_pii_redaction::{redact_response, scan_request, Direction, Redactor};
#[path = "common.rs"]
mod common;

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
        let _ = scan_request(s, &mut r, api, data);
        let _ = redact_response(s, &mut r, api, data);
    }
});
