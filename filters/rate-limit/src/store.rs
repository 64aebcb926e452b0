//! Fixed-window counters in a compare-and-swap store (Envoy shared data).
//!
//! Envoy shares data between the VMs of all worker threads; every update here is a
//! read-modify-write with the version (`cas`) read, retried a bounded number of times, so
//! concurrent requests on different workers can never both take the last unit of a limit.
//! When the retries run out the request is refused: a limit is never overshot.

use sluice_common::host::SharedDataMap;
use sluice_common::Host;

/// A store with versioned values (what `proxy_get_shared_data` / `proxy_set_shared_data`
/// offer).
pub trait SharedStore {
    /// The value and its version; `(None, None)` when the key was never written.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Write `value` if the key's version is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

pub use sluice_common::host::SharedDataError as StoreError;

/// Envoy's shared data, through the host boundary.
impl SharedStore for dyn Host + '_ {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared_data(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.set_shared_data(key, value, cas)
    }
}

/// How many times a read-modify-write is retried under contention.
const MAX_ATTEMPTS: usize = 64;

/// The version used to create a key. Envoy creates a missing key whatever `cas` is given,
/// but refuses a `cas` that differs from an existing key's version. Without a version to
/// compare, two workers creating the same counter could both succeed and lose an update;
/// with one no live key holds (versions count up from 1), the second creation conflicts
/// and is retried as an update.
const CREATE_CAS: u32 = u32::MAX;

/// A counter's state: the start of its window and what was taken in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub start: u64,
    pub used: u64,
}

impl Window {
    fn decode(bytes: Option<&[u8]>) -> Self {
        let word = |i: usize| {
            bytes
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            start: word(0),
            used: word(8),
        }
    }

    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.start.to_le_bytes());
        b.copy_from_slice(&self.used.to_le_bytes());
        out
    }
}

/// A limit on one counter: `limit` units per window of `window` seconds (`0`: no window, a
/// gauge such as requests in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub window: u64,
}

impl Quota {
    fn window_start(self, now: u64) -> u64 {
        if self.window == 0 {
            0
        } else {
            now - now % self.window
        }
    }

    /// When the current window ends (seconds since the epoch; `now` for gauges).
    pub fn reset_at(self, now: u64) -> u64 {
        if self.window == 0 {
            now
        } else {
            self.window_start(now) + self.window
        }
    }
}

/// The outcome of taking from a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The window the units were taken in (to give them back to the same one).
    pub window_start: u64,
    pub remaining: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the limit; this much is left in the window.
    Exhausted { remaining: u64 },
    /// The store did not let us update (contention beyond the retries, or failure).
    Unavailable,
}

fn update<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    mut change: impl FnMut(Window) -> Result<Option<Window>, Refused>,
) -> Result<Window, Refused> {
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(key);
        let current = Window::decode(value.as_deref());
        let Some(next) = change(current)? else {
            return Ok(current);
        };
        match store.set(key, &next.encode(), Some(cas.unwrap_or(CREATE_CAS))) {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return Err(Refused::Unavailable),
        }
    }
    Err(Refused::Unavailable)
}

/// Take `amount` units if they fit in the limit.
pub fn take<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    quota: Quota,
    now: u64,
    amount: u64,
) -> Result<Taken, Refused> {
    let start = quota.window_start(now);
    let w = update(store, key, |w| {
        let used = if w.start == start { w.used } else { 0 };
        if used.saturating_add(amount) > quota.limit {
            return Err(Refused::Exhausted {
                remaining: quota.limit.saturating_sub(used),
            });
        }
        Ok(Some(Window {
            start,
            used: used + amount,
        }))
    })?;
    Ok(Taken {
        window_start: start,
        remaining: quota.limit.saturating_sub(w.used),
    })
}

/// Give back `amount` units taken in `window_start` (a refund, a rollback, a released
/// slot). Nothing happens once that window has passed: its units no longer count.
pub fn give_back<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    window_start: u64,
    amount: u64,
) -> bool {
    update(store, key, |w| {
        if w.start != window_start || amount == 0 {
            return Ok(None);
        }
        Ok(Some(Window {
            start: w.start,
            used: w.used.saturating_sub(amount),
        }))
    })
    .is_ok()
}

/// Charge `amount` units regardless of the limit (usage that exceeded its reservation):
/// in the window of the reservation if it is still current, else in the current one.
pub fn charge<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    quota: Quota,
    now: u64,
    amount: u64,
) -> bool {
    let start = quota.window_start(now);
    update(store, key, |w| {
        if amount == 0 {
            return Ok(None);
        }
        let used = if w.start == start { w.used } else { 0 };
        Ok(Some(Window {
            start,
            used: used.saturating_add(amount),
        }))
    })
    .is_ok()
}

/// What is left in the current window.
pub fn remaining<S: SharedStore + ?Sized>(store: &S, key: &str, quota: Quota, now: u64) -> u64 {
    let w = Window::decode(store.get(key).0.as_deref());
    let used = if w.start == quota.window_start(now) {
        w.used
    } else {
        0
    };
    quota.limit.saturating_sub(used)
}

/// An in-memory [`SharedStore`] for tests, with Envoy's version semantics: the map the
/// mock host and the native build keep ([`SharedDataMap`]).
#[derive(Default)]
pub struct MemoryStore {
    data: std::cell::RefCell<SharedDataMap>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.data.borrow().get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.data.borrow_mut().set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Quota = Quota {
        limit: 10,
        window: 60,
    };

    #[test]
    fn takes_until_the_limit_then_refuses_then_resets() {
        let s = MemoryStore::default();
        assert_eq!(take(&s, "k", MINUTE, 120, 4).unwrap().remaining, 6);
        assert_eq!(take(&s, "k", MINUTE, 130, 6).unwrap().remaining, 0);
        assert_eq!(
            take(&s, "k", MINUTE, 179, 1),
            Err(Refused::Exhausted { remaining: 0 })
        );
        // A request that does not fit costs nothing.
        assert_eq!(remaining(&s, "k", MINUTE, 179), 0);
        assert_eq!(take(&s, "k", MINUTE, 180, 10).unwrap().remaining, 0);
        assert_eq!(MINUTE.reset_at(185), 240);
    }

    #[test]
    fn give_back_only_to_its_window_and_charge_beyond_the_limit() {
        let s = MemoryStore::default();
        let t = take(&s, "k", MINUTE, 60, 8).unwrap();
        assert!(give_back(&s, "k", t.window_start, 5));
        assert_eq!(remaining(&s, "k", MINUTE, 61), 7);
        assert!(charge(&s, "k", MINUTE, 62, 9));
        assert_eq!(remaining(&s, "k", MINUTE, 62), 0);
        // The window passed: giving back to it changes nothing now.
        take(&s, "k", MINUTE, 125, 2).unwrap();
        give_back(&s, "k", t.window_start, 2);
        assert_eq!(remaining(&s, "k", MINUTE, 126), 8);
    }

    #[test]
    fn gauges_have_no_window() {
        let s = MemoryStore::default();
        let g = Quota {
            limit: 2,
            window: 0,
        };
        let a = take(&s, "p", g, 1, 1).unwrap();
        take(&s, "p", g, 500, 1).unwrap();
        assert!(take(&s, "p", g, 900, 1).is_err());
        assert!(give_back(&s, "p", a.window_start, 1));
        assert!(take(&s, "p", g, 901, 1).is_ok());
    }

    /// A store whose writes fail with CasMismatch whenever another writer is simulated to
    /// have written in between: contention is retried, and never double-counts.
    struct Contended {
        inner: MemoryStore,
        interfere: std::cell::Cell<u32>,
    }

    impl SharedStore for Contended {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                // Another worker takes one unit first.
                let (v, c) = self.inner.get(key);
                let mut w = Window::decode(v.as_deref());
                w.used += 1;
                w.start = 0;
                self.inner.set(key, &w.encode(), c)?;
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn contention_is_retried_and_exact() {
        let s = Contended {
            inner: MemoryStore::default(),
            interfere: std::cell::Cell::new(3),
        };
        let q = Quota {
            limit: 5,
            window: 60,
        };
        // Three interfering takes land first; ours must see them.
        assert_eq!(take(&s, "k", q, 10, 2).unwrap().remaining, 0);
        assert!(take(&s, "k", q, 10, 1).is_err());
        let starved = Contended {
            inner: MemoryStore::default(),
            interfere: std::cell::Cell::new(1000),
        };
        let big = Quota {
            limit: 1_000_000,
            window: 60,
        };
        assert_eq!(take(&starved, "k", big, 10, 1), Err(Refused::Unavailable));
    }
}
