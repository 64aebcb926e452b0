//! key-auth's credential parsing on any header block, and the query-string scrubber.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_key_auth::credential::{extract, strip_credential_query, CREDENTIAL_HEADERS};

fuzz_target!(|data: &[u8]| {
    // Header blocks: lines of `name\0value`, names drawn from the credential headers.
    let headers: Vec<(String, Vec<u8>)> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let (&pick, rest) = line.split_first()?;
            let name = CREDENTIAL_HEADERS
                .get(usize::from(pick) % (CREDENTIAL_HEADERS.len() + 1))
                .map_or("x-other", |n| *n);
            Some((name.to_string(), rest.to_vec()))
        })
        .collect();
    if let Ok(c) = extract(&headers) {
        assert!(!c.key.is_empty());
        assert!(!c.headers.is_empty());
    }
    if let Ok(path) = std::str::from_utf8(data) {
        if let Some(clean) = strip_credential_query(path) {
            assert!(clean.len() < path.len());
            assert!(strip_credential_query(&clean).is_none(), "idempotent");
        }
    }
});
