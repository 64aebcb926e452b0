//! Which endpoint recently served which prompt prefix: an approximate, bounded index.
//!
//! A prompt is cut into blocks of `block_bytes` of its text; block `i`'s key is a hash of
//! blocks `0..=i` (a chain), so one key names a whole prefix. The index is a direct-mapped
//! table of `slots` entries in Envoy shared data (every worker sees it, its size never
//! grows): an entry holds the full key, so a slot taken by another prefix reads as a miss,
//! never as a false hit. The longest prefix an endpoint holds is found by binary search over
//! the chain (a longer prefix was always recorded with its shorter ones), `log2(blocks)`
//! lookups per request.

use sluice_common::hash::StreamHash;
use sluice_common::host::Host;

/// The chained keys of a prompt's blocks, at most `max_blocks` (the rest of a longer prompt
/// is not indexed: its first `max_blocks` blocks already place it). The prompt is given in
/// parts (its fields' JSON); block `i`'s key is the hash of every byte of blocks `0..=i`
/// (the parts each followed by a 0xff separator, a byte UTF-8 never has), read off one
/// running hash: one pass, no copy, and a key names its whole prefix.
pub fn block_keys(parts: &[&[u8]], block_bytes: usize, max_blocks: usize) -> Vec<u64> {
    let block_bytes = block_bytes.max(1);
    let mut keys = Vec::with_capacity(max_blocks.min(64));
    let mut hash = StreamHash::new();
    // Bytes still to go in the current block.
    let mut room = block_bytes;
    for part in parts {
        for mut piece in [*part, &[0xff][..]] {
            while !piece.is_empty() {
                let (now, rest) = piece.split_at(room.min(piece.len()));
                hash.write(now);
                room -= now.len();
                piece = rest;
                if room == 0 {
                    if keys.len() == max_blocks {
                        return keys;
                    }
                    keys.push(hash.finish());
                    room = block_bytes;
                }
            }
        }
    }
    keys
}

/// The shared-data slot of a key.
fn slot_key(pool: &str, key: u64, slots: u64) -> String {
    format!("px:{pool}:{}", key % slots.max(1))
}

/// An entry: the full key and the endpoint's index in its pool.
fn encode(key: u64, endpoint: u16) -> [u8; 10] {
    let mut out = [0u8; 10];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&key.to_le_bytes());
    b.copy_from_slice(&endpoint.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, u16)> {
    let key = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let endpoint = u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?);
    Some((key, endpoint))
}

/// The endpoint recorded for `key`, if its slot still holds it.
fn lookup(host: &dyn Host, pool: &str, key: u64, slots: u64) -> Option<u16> {
    let (value, _) = host.shared_data(&slot_key(pool, key, slots));
    decode(&value?).and_then(|(k, e)| (k == key).then_some(e))
}

/// The longest indexed prefix of `keys`: how many blocks, and the endpoint that served it.
pub fn longest_prefix(
    host: &dyn Host,
    pool: &str,
    keys: &[u64],
    slots: u64,
) -> Option<(usize, u16)> {
    // Binary search for the last block with an entry.
    let (mut lo, mut hi) = (0usize, keys.len());
    let mut best = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match keys.get(mid).and_then(|k| lookup(host, pool, *k, slots)) {
            Some(e) => {
                best = Some((mid + 1, e));
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    best
}

/// Record that `endpoint` now holds the prefixes of `keys` (overwriting whatever the slots
/// held: the newest placement wins, as in the engine's own LRU).
pub fn record(host: &dyn Host, pool: &str, keys: &[u64], endpoint: u16, slots: u64) {
    for key in keys {
        // Unconditional: a lost race only means one slot names the other endpoint.
        let _ = host.set_shared_data(&slot_key(pool, *key, slots), &encode(*key, endpoint), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::MockHost;

    #[test]
    fn a_shared_system_prompt_shares_its_leading_keys() {
        let system = "You are a helpful assistant. ".repeat(20);
        let a = block_keys(
            &[system.as_bytes(), "What is Rust? ".repeat(10).as_bytes()],
            64,
            100,
        );
        let b = block_keys(
            &[
                system.as_bytes(),
                "Tell me about SQL joins. ".repeat(10).as_bytes(),
            ],
            64,
            100,
        );
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert_eq!(
            common,
            system.len() / 64,
            "every whole block of the system prompt"
        );
        assert!(a.len() > common && b.len() > common);
        // Text boundaries count: ["ab", "c"] is not ["a", "bc"].
        assert_ne!(
            block_keys(&[b"ab", b"c"], 2, 9),
            block_keys(&[b"a", b"bc"], 2, 9)
        );
        assert_eq!(block_keys(&["x".repeat(1000).as_bytes()], 10, 5).len(), 5);
    }

    #[test]
    fn the_next_turn_of_a_conversation_finds_where_the_last_one_went() {
        let host = MockHost::new();
        let turn1: [&[u8]; 2] = [
            b"sys: be brief",
            b"user: hello there, how are you doing today?",
        ];
        let keys1 = block_keys(&turn1, 8, 64);
        record(&host, "pool-a", &keys1, 2, 4096);
        let turn2 = [turn1[0], turn1[1], b"assistant: fine", b"user: and now?"];
        let keys2 = block_keys(&turn2, 8, 64);
        assert_eq!(
            longest_prefix(&host, "pool-a", &keys2, 4096),
            Some((keys1.len(), 2))
        );
        // Another pool's index is its own.
        assert_eq!(longest_prefix(&host, "pool-b", &keys2, 4096), None);
        // A prompt with nothing in common.
        let other = block_keys(&[b"something else entirely, at length"], 8, 64);
        assert_eq!(longest_prefix(&host, "pool-a", &other, 4096), None);
    }

    #[test]
    fn a_slot_taken_by_another_prefix_is_a_miss_not_a_false_hit() {
        let host = MockHost::new();
        let a = block_keys(&[b"aaaaaaaaaaaaaaaa"], 8, 8);
        record(&host, "p", &a, 1, 1); // one slot: every key collides
        let b = block_keys(&[b"bbbbbbbbbbbbbbbb"], 8, 8);
        assert_eq!(longest_prefix(&host, "p", &b, 1), None);
        assert_eq!(
            longest_prefix(&host, "p", &a[..a.len() - 1], 1),
            None,
            "overwritten"
        );
        assert_eq!(longest_prefix(&host, "p", &a, 1), Some((a.len(), 1)));
    }
}
