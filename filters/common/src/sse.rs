//! Incremental parsing of Server-Sent Events (the OpenAI streaming format), as chunks pass.
//!
//! Correct when an event is split across chunks, when a chunk holds several events, with
//! `\n`, `\r\n` or `\r` line ends (also a `\r\n` split between two chunks), comments
//! (`: keep-alive`) and multi-line `data`. Each complete event comes back with its raw bytes,
//! so a filter can forward, drop or edit it exactly.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event exactly as received, blank line included.
    pub raw: Vec<u8>,
    /// `data` lines joined by `\n`; `None` for an event without data (comments only).
    pub data: Option<String>,
    /// Number of `data` lines (1 for every OpenAI event).
    pub data_lines: usize,
    /// The `event` field (Anthropic and Responses streams name every event).
    pub event: Option<String>,
    /// An `error` field: not SSE (clients ignore it), but older llama.cpp servers report a
    /// failed stream with an `error: {json}` line, which must not pass as a success.
    pub error: Option<String>,
}

/// One event in wire form: `event: <name>` (when named), `data: <data>`, a blank line.
/// `data` must be one line (JSON serialized without newlines is).
pub fn encode(event: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// Why the parser stopped parsing (it still returns the bytes it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// An event grew past the limit: not SSE, or hostile.
    EventTooLarge,
}

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the event in progress.
    pending: Vec<u8>,
    /// Start of the current line within `pending`.
    line_start: usize,
    /// The previous chunk ended with `\r`: a leading `\n` completes that line end.
    after_cr: bool,
    data: Option<String>,
    data_lines: usize,
    event: Option<String>,
    legacy_error: Option<String>,
    max_event: usize,
    error: Option<SseError>,
}

impl SseParser {
    /// `max_event`: the largest event accepted, bounding memory.
    pub fn new(max_event: usize) -> Self {
        Self {
            pending: Vec::new(),
            line_start: 0,
            after_cr: false,
            data: None,
            data_lines: 0,
            event: None,
            legacy_error: None,
            max_event,
            error: None,
        }
    }

    pub fn error(&self) -> Option<SseError> {
        self.error
    }

    /// Bytes of an incomplete event held so far.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Take the incomplete tail (at the end of a stream).
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.line_start = 0;
        self.data = None;
        self.data_lines = 0;
        self.event = None;
        self.legacy_error = None;
        std::mem::take(&mut self.pending)
    }

    /// No bytes of an unfinished event are held: the input so far ended between events.
    pub fn pending_is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Feed a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.error.is_some() {
            return events;
        }
        let mut bytes = chunk;
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if let Some((b'\n', rest)) = bytes.split_first() {
                // The second half of a `\r\n` line end: part of the line end, not a line.
                self.pending.push(b'\n');
                self.line_start = self.pending.len();
                bytes = rest;
            }
        }
        let mut i = 0;
        while let Some(pos) = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n' || *b == b'\r'))
        {
            let end = i + pos;
            let line_end_len = match (bytes.get(end), bytes.get(end + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                (Some(b'\r'), None) => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            self.pending
                .extend_from_slice(bytes.get(i..end + line_end_len).unwrap_or_default());
            let line_len = self.pending.len() - line_end_len - self.line_start;
            let is_blank = line_len == 0;
            if is_blank {
                events.push(SseEvent {
                    raw: std::mem::take(&mut self.pending),
                    data: self.data.take(),
                    data_lines: std::mem::take(&mut self.data_lines),
                    event: self.event.take(),
                    error: self.legacy_error.take(),
                });
                self.line_start = 0;
            } else {
                let line = self
                    .pending
                    .get(self.line_start..self.line_start + line_len)
                    .unwrap_or_default();
                self.field(line.to_vec().as_slice());
                self.line_start = self.pending.len();
            }
            i = end + line_end_len;
        }
        self.pending
            .extend_from_slice(bytes.get(i..).unwrap_or_default());
        if self.pending.len() > self.max_event {
            self.error = Some(SseError::EventTooLarge);
        }
        events
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // comment / keep-alive
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(p) => {
                let value = line.get(p + 1..).unwrap_or_default();
                (
                    line.get(..p).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &b""[..]),
        };
        if name == b"event" {
            self.event = Some(String::from_utf8_lossy(value).into_owned());
        } else if name == b"error" {
            self.legacy_error = Some(String::from_utf8_lossy(value).into_owned());
        } else if name == b"data" {
            let value = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            }
            self.data_lines += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datas(events: &[SseEvent]) -> Vec<&str> {
        events.iter().filter_map(|e| e.data.as_deref()).collect()
    }

    #[test]
    fn whole_events_and_raw_bytes() {
        let mut p = SseParser::new(1 << 20);
        let input = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let ev = p.push(input);
        assert_eq!(datas(&ev), ["{\"a\":1}", "[DONE]"]);
        assert_eq!(
            ev.iter().flat_map(|e| e.raw.clone()).collect::<Vec<_>>(),
            input
        );
        assert!(p.pending().is_empty());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input: &[u8] =
            b": keep-alive\r\n\r\ndata: {\"x\":\"a\"}\r\n\r\ndata: line1\ndata: line2\n\nevent: e\rdata: cr\r\rdata: [DONE]\r\n\r\n";
        let whole = SseParser::new(1 << 20).push(input);
        assert_eq!(
            datas(&whole),
            ["{\"x\":\"a\"}", "line1\nline2", "cr", "[DONE]"]
        );
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut p = SseParser::new(1 << 20);
                let mut ev = p.push(&input[..a]);
                ev.extend(p.push(&input[a..b]));
                ev.extend(p.push(&input[b..]));
                // Same events; every byte passed on once, in order. (A `\n` completing a
                // `\r\n` that arrives after its event was dispatched travels with the next
                // event.)
                let data = |e: &[SseEvent]| {
                    e.iter()
                        .map(|x| (x.event.clone(), x.data.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(data(&ev), data(&whole), "split at {a},{b}");
                let mut bytes: Vec<u8> = ev.iter().flat_map(|e| e.raw.clone()).collect();
                bytes.extend(p.take_pending());
                assert_eq!(bytes, input, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn named_events_round_trip() {
        let input = encode(
            Some("content_block_delta"),
            r#"{"type":"content_block_delta"}"#,
        );
        let ev = SseParser::new(1 << 10).push(&input);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event.as_deref(), Some("content_block_delta"));
        assert_eq!(ev[0].raw, input);
        assert_eq!(encode(None, "x"), b"data: x\n\n");
    }

    #[test]
    fn incomplete_tail_is_kept_and_bounded() {
        let mut p = SseParser::new(16);
        assert!(p.push(b"data: {\"partial\": true").is_empty());
        assert_eq!(p.error(), Some(SseError::EventTooLarge));
        let mut p = SseParser::new(1024);
        p.push(b"data: x\n\ndata: cut");
        assert_eq!(p.take_pending(), b"data: cut");
    }
}
