//! The local tier: entries in Envoy shared data (every worker of the Envoy sees them),
//! bounded by bytes and by count, the oldest evicted first.
//!
//! Entries go into a ring of `slots` shared-data values in the order they are stored; a
//! header value (`rc:ring`: head, tail, bytes used) is advanced by compare-and-swap, so
//! workers storing at once take different slots. Storing evicts from the tail until the new
//! entry fits (an evicted slot is emptied: Envoy frees its bytes). An index of `2 × slots`
//! direct-mapped values finds a key's slot; the slot holds the full key and its sequence
//! number, so an index entry left by an evicted or overwritten entry reads as a miss, never
//! as another request's answer. Shared data never shrinks its key set, which is why the
//! names are a fixed set and only values are replaced.

use crate::key::Key;
use sluice_common::host::{Host, SharedDataError};

const RING: &str = "rc:ring";
const MAGIC: &[u8; 2] = b"S1";
/// magic, key, sequence number (0 outside the ring), expiry, stored at, backend time.
pub const HEADER: usize = 2 + 32 + 8 * 4;

fn slot_name(seq: u64, slots: u64) -> String {
    format!("rc:s:{}", seq % slots.max(1))
}

fn index_name(key: &Key, slots: u64) -> String {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    format!("rc:i:{}", u64::from_le_bytes(first) % (2 * slots.max(1)))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it stops being served (Unix ms).
    pub expires_ms: u64,
    pub stored_at_ms: u64,
    /// How long the backend took to produce it: the GPU time a hit saves.
    pub backend_ms: u64,
    /// The complete response (JSON), as a non-streamed request gets it.
    pub body: Vec<u8>,
}

/// The ring's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ring {
    /// The next sequence number to store.
    head: u64,
    /// The oldest sequence number still stored.
    tail: u64,
    /// Bytes of the values in the ring.
    used: u64,
}

impl Ring {
    fn decode(bytes: Option<&[u8]>) -> Self {
        let b = bytes.unwrap_or(&[]);
        Self {
            head: u64_at(b, 0).unwrap_or(0),
            tail: u64_at(b, 8).unwrap_or(0),
            used: u64_at(b, 16).unwrap_or(0),
        }
    }

    fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.head.to_le_bytes());
        out[8..16].copy_from_slice(&self.tail.to_le_bytes());
        out[16..].copy_from_slice(&self.used.to_le_bytes());
        out
    }
}

/// The tier's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub slots: u64,
    pub max_bytes: u64,
}

/// An entry as both tiers hold it: a header naming its key (and, in the local ring, its
/// sequence number), its times, then the response.
pub fn encode(key: &Key, seq: u64, entry: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER + entry.body.len());
    value.extend_from_slice(MAGIC);
    value.extend_from_slice(key);
    for n in [seq, entry.expires_ms, entry.stored_at_ms, entry.backend_ms] {
        value.extend_from_slice(&n.to_le_bytes());
    }
    value.extend_from_slice(&entry.body);
    value
}

/// The entry in `value` if it is `key`'s (any key's: `None`, for a semantic match, which
/// is by definition another request's answer) and `seq`'s, when given, and has not expired
/// at `now_ms`: a value that names another key is never served for this one.
pub fn decode(value: &[u8], key: Option<&Key>, seq: Option<u64>, now_ms: u64) -> Option<Entry> {
    if value.get(..2)? != MAGIC.as_slice()
        || key.is_some_and(|k| value.get(2..34) != Some(k.as_slice()))
        || seq.is_some_and(|s| u64_at(value, 34) != Some(s))
    {
        return None;
    }
    let entry = Entry {
        expires_ms: u64_at(value, 42)?,
        stored_at_ms: u64_at(value, 50)?,
        backend_ms: u64_at(value, 58)?,
        body: value.get(HEADER..)?.to_vec(),
    };
    (entry.expires_ms > now_ms).then_some(entry)
}

/// The entry for `key`, unless absent, evicted or expired at `now_ms`.
pub fn get(host: &dyn Host, key: &Key, bounds: Bounds, now_ms: u64) -> Option<Entry> {
    let index = host.shared_data(&index_name(key, bounds.slots)).0?;
    if index.get(..32)? != key.as_slice() {
        return None;
    }
    let seq = u64_at(&index, 32)?;
    let value = host.shared_data(&slot_name(seq, bounds.slots)).0?;
    decode(&value, Some(key), Some(seq), now_ms)
}

/// What storing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub stored: bool,
    /// Entries evicted to make room.
    pub evicted: u64,
    /// Bytes the tier holds now.
    pub bytes: u64,
}

/// Store `entry` under `key`, evicting the oldest entries until it fits.
pub fn put(host: &dyn Host, key: &Key, entry: &Entry, bounds: Bounds) -> Stored {
    // The sequence number is written once the ring gives one.
    let mut value = encode(key, 0, entry);
    let size = value.len() as u64;
    if size > bounds.max_bytes {
        return Stored::default();
    }
    // Take a sequence number, and the slots to evict, by compare-and-swap on the ring.
    let mut taken = None;
    for _ in 0..16 {
        let (bytes, cas) = host.shared_data(RING);
        let before = Ring::decode(bytes.as_deref());
        let mut ring = before;
        let mut evicted = Vec::new();
        while ring.tail < ring.head
            && (ring.head - ring.tail >= bounds.slots || ring.used + size > bounds.max_bytes)
        {
            let old = host
                .shared_data(&slot_name(ring.tail, bounds.slots))
                .0
                .map_or(0, |v| v.len() as u64);
            ring.used = ring.used.saturating_sub(old);
            evicted.push(ring.tail);
            ring.tail += 1;
        }
        if ring.tail == ring.head {
            ring.used = 0; // nothing left: drift from racing writers ends here
        }
        let seq = ring.head;
        ring.head += 1;
        ring.used += size;
        match host.set_shared_data(RING, &ring.encode(), Some(cas.unwrap_or(u32::MAX))) {
            Ok(()) => {
                taken = Some((seq, evicted, ring.used));
                break;
            }
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => return Stored::default(),
        }
    }
    let Some((seq, evicted, bytes)) = taken else {
        return Stored::default();
    };
    for old in &evicted {
        if old % bounds.slots != seq % bounds.slots {
            let _ = host.set_shared_data(&slot_name(*old, bounds.slots), &[], None);
        }
    }
    if let Some(at) = value.get_mut(34..42) {
        at.copy_from_slice(&seq.to_le_bytes());
    }
    let stored = host
        .set_shared_data(&slot_name(seq, bounds.slots), &value, None)
        .is_ok();
    let mut index = Vec::with_capacity(40);
    index.extend_from_slice(key);
    index.extend_from_slice(&seq.to_le_bytes());
    let indexed = stored
        && host
            .set_shared_data(&index_name(key, bounds.slots), &index, None)
            .is_ok();
    Stored {
        stored: indexed,
        evicted: evicted.len() as u64,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::MockHost;

    fn key(n: u8) -> Key {
        let mut k = [0u8; 32];
        k[0] = n;
        k[31] = n;
        k
    }

    fn entry(body: &str, expires_ms: u64) -> Entry {
        Entry {
            expires_ms,
            stored_at_ms: 1,
            backend_ms: 250,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let host = MockHost::new();
        let b = Bounds {
            slots: 8,
            max_bytes: 1 << 20,
        };
        assert_eq!(get(&host, &key(1), b, 0), None);
        assert!(put(&host, &key(1), &entry("{\"a\":1}", 1000), b).stored);
        assert_eq!(get(&host, &key(1), b, 999), Some(entry("{\"a\":1}", 1000)));
        assert_eq!(get(&host, &key(1), b, 1000), None, "expired");
        assert_eq!(get(&host, &key(2), b, 0), None);
    }

    #[test]
    fn the_oldest_entries_go_first_by_count_and_by_bytes() {
        let host = MockHost::new();
        let b = Bounds {
            slots: 4,
            max_bytes: 1 << 20,
        };
        for n in 0..6 {
            put(&host, &key(n), &entry("x", u64::MAX), b);
        }
        let present: Vec<u8> = (0..6)
            .filter(|n| get(&host, &key(*n), b, 0).is_some())
            .collect();
        assert_eq!(
            present,
            vec![2, 3, 4, 5],
            "four slots: the two oldest evicted"
        );
        // By bytes: room for two 100-byte bodies with their headers.
        let host = MockHost::new();
        let b = Bounds {
            slots: 64,
            max_bytes: 2 * (HEADER as u64 + 100) + 10,
        };
        let body = "y".repeat(100);
        let first = put(&host, &key(1), &entry(&body, u64::MAX), b);
        put(&host, &key(2), &entry(&body, u64::MAX), b);
        let third = put(&host, &key(3), &entry(&body, u64::MAX), b);
        assert_eq!((first.evicted, third.evicted), (0, 1));
        assert_eq!(third.bytes, 2 * (HEADER as u64 + 100));
        assert!(get(&host, &key(1), b, 0).is_none());
        assert!(get(&host, &key(2), b, 0).is_some() && get(&host, &key(3), b, 0).is_some());
        // The evicted slot's bytes were freed (its value emptied).
        let (freed, _) = host.shared_data(&slot_name(0, 64));
        assert_eq!(freed.map(|v| v.len()), Some(0));
        // Larger than the whole tier: not stored, nothing evicted.
        let huge = put(&host, &key(4), &entry(&"z".repeat(400), u64::MAX), b);
        assert_eq!(huge, Stored::default());
        assert!(get(&host, &key(3), b, 0).is_some());
    }

    #[test]
    fn a_reused_slot_or_index_never_answers_for_another_key() {
        let host = MockHost::new();
        // One slot: every entry replaces the last; index collisions are likely.
        let b = Bounds {
            slots: 1,
            max_bytes: 1 << 20,
        };
        put(&host, &key(1), &entry("one", u64::MAX), b);
        put(&host, &key(2), &entry("two", u64::MAX), b);
        assert_eq!(get(&host, &key(1), b, 0), None);
        assert_eq!(
            get(&host, &key(2), b, 0).map(|e| e.body),
            Some(b"two".to_vec())
        );
    }
}
