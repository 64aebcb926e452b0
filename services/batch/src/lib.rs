//! sluice-batch: the OpenAI Files and Batches API for self-hosted models.
//!
//! Files and batches belong to the caller's tenant (from key-auth, through Envoy); state is
//! durable in an embedded SQLite file; each batch line runs through the gateway's own
//! filter chain as the batch's owner (a signed assertion key-auth verifies), at batch
//! priority. See docs/batch.md.

pub mod api;
pub mod model;
pub mod pace;
pub mod store;
pub mod webhook;
pub mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// A new id: `prefix` and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock still makes ids unique in practice.
        bytes[..8].copy_from_slice(&now_millis().to_le_bytes());
    }
    format!("{prefix}{}", hex::encode(bytes))
}
