//! Log lines for events that can come with every request.

use std::cell::Cell;

/// At most one log line per interval for one kind of event that may come with every
/// request (a counter counts each): the first at once, then one per interval that says how
/// many came meanwhile. A line a request flooded Envoy's log, and formatting it and
/// handing it to Envoy cost each request more than the check it reported.
#[derive(Debug)]
pub struct LogEvery {
    every_ms: u64,
    /// When the next line may be written (0: at once).
    next_ms: Cell<u64>,
    /// Events since the last line that wrote none.
    skipped: Cell<u64>,
}

impl LogEvery {
    pub const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            next_ms: Cell::new(0),
            skipped: Cell::new(0),
        }
    }

    /// An event at `now_ms`: `Some(n)` if it is to be logged, `n` the events not logged
    /// since the last line; `None` if not (it is counted for the next line).
    pub fn due(&self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms.get() {
            self.skipped.set(self.skipped.get().saturating_add(1));
            return None;
        }
        self.next_ms.set(now_ms.saturating_add(self.every_ms));
        Some(self.skipped.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_an_interval_saying_how_many_were_not_logged() {
        let log = LogEvery::new(60_000);
        assert_eq!(log.due(1_000), Some(0));
        assert_eq!(log.due(1_001), None);
        assert_eq!(log.due(60_999), None);
        assert_eq!(log.due(61_000), Some(2));
        assert_eq!(log.due(200_000), Some(0));
    }
}
