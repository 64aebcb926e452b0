//! Redacting text that arrives in pieces (a streamed choice's content, a tool call's
//! arguments) without letting a value split across pieces through.
//!
//! Each push emits the text before the *hold point* and keeps the rest. The hold point is
//! the start of the shortest tail that could still be, or still change, a finding:
//! - the trailing run of ASCII non-space characters (every built-in entity but the spaced
//!   forms and PEM blocks is one such run: an email, a key, a JWT whose end has not come
//!   yet). Every built-in entity is ASCII, so any other character (CJK, Thai, Cyrillic...)
//!   ends the run: text in scripts without spaces streams with no word-sized hold-back. A
//!   long run (base64, minified code) is held only by its last `ASCII_RUN_HOLD` bytes, the
//!   longest tail in which an entity other than a JWT can still be undecided, or from the
//!   start of a JWT still open;
//! - before it, digit / capital groups joined by separators, up to `GROUP_HOLD` bytes
//!   (`+44 20 7946 0958`, `4111 1111 1111 1111`, `DE89 3704 0044 0532 0130 00`);
//! - an opened `-----BEGIN ...` block with no end marker yet;
//! - the longest custom match plus its context window, when custom entities exist.
//!
//! Plain prose is therefore held back by one partial word; numbers and keys by what they
//! need, and no more. A finding that straddles the hold point is held whole.

use crate::config::Settings;
use crate::entity::BuiltIn;
use crate::redact::{find_after, Direction, Finding, Redactor};

/// Already emitted text kept as left context for boundary checks.
const CONTEXT_KEEP: usize = 64;
/// An open JWT longer than this is emitted (the detector's own bounds are larger, but a
/// token that long is not a credential in practice).
const MAX_RUN: usize = 16 * 1024;
/// Bytes of a long ASCII run held back: every entity but a JWT is decided within this many
/// bytes of its first byte (an email: 64 bytes of local part, 253 of domain and the byte
/// after it; keys and tokens: their prefix, at most 256 body bytes and the byte after).
const ASCII_RUN_HOLD: usize = 384;
/// Most bytes of separated groups held before a trailing run.
const GROUP_HOLD: usize = 48;

#[derive(Debug, Default)]
pub struct StreamText {
    pending: String,
    context: String,
    findings: Vec<Finding>,
    /// How far before the end of the emitted text the last emitted finding ended.
    last_finding_back: Option<usize>,
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn group_char(c: u8) -> bool {
    c.is_ascii_digit() || c.is_ascii_uppercase() || matches!(c, b'+' | b'(' | b')')
}

fn separator(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'/' | b'+')
}

/// Where the held-back tail of `text` starts.
pub fn hold_point(s: &Settings, text: &str) -> usize {
    let b = text.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let n = b.len();
    let mut h = n;
    while h > 0 && at(h - 1).is_ascii_graphic() && n - h < MAX_RUN {
        h -= 1;
    }
    if n - h > ASCII_RUN_HOLD {
        h = open_jwt_start(b, h).unwrap_or(n - ASCII_RUN_HOLD);
    }
    let run_start = h;
    // Groups of digits / capitals (and `+`, `(`, `)`) joined by short separator runs, up to
    // GROUP_HOLD bytes: every spaced entity (a phone, a card, an IBAN, an SSN) fits, and
    // wherever one starts inside such a region (after a letter, a digit, a `+`), it is held.
    loop {
        let mut j = h;
        while j > 0 && separator(at(j - 1)) && h - j < 3 {
            j -= 1;
        }
        let group_end = j;
        while j > 0 && group_char(at(j - 1)) && run_start - j < GROUP_HOLD {
            j -= 1;
        }
        if j == group_end {
            break;
        }
        h = j;
        if run_start - j >= GROUP_HOLD {
            break;
        }
    }
    if s.enabled.contains(BuiltIn::PrivateKey) {
        if let Some(p) = text.rfind("-----BEGIN") {
            let tail = text.get(p..).unwrap_or_default();
            let closed = tail
                .find("-----END ")
                .is_some_and(|e| tail.get(e + 9..).unwrap_or_default().contains("-----"));
            if !closed {
                h = h.min(p);
            }
        }
    }
    if s.custom_hold > 0 {
        h = h.min(floor_char(text, n.saturating_sub(s.custom_hold)));
    }
    floor_char(text, h)
}

/// Where a JWT that has not ended yet starts in the ASCII run `b[run..]`: the first `eyJ`
/// at a word start from which every byte to the end is base64url or a dot (at most two).
fn open_jwt_start(b: &[u8], run: usize) -> Option<usize> {
    let jwt_byte = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
    let mut k = b.len();
    let mut dots = 0;
    while k > run && jwt_byte(b.get(k - 1).copied().unwrap_or(0)) {
        if b.get(k - 1) == Some(&b'.') {
            dots += 1;
            if dots > 2 {
                break;
            }
        }
        k -= 1;
    }
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    (k..b.len().saturating_sub(2)).find(|&i| {
        b.get(i..i + 3) == Some(b"eyJ".as_slice())
            && (i == 0 || !word(b.get(i - 1).copied().unwrap_or(0)))
    })
}

impl StreamText {
    /// Add a piece; returns the text that may go to the client now (maybe empty).
    pub fn push(&mut self, s: &Settings, r: &mut Redactor, piece: &str) -> String {
        self.pending.push_str(piece);
        let hold = hold_point(s, &self.pending);
        if hold == 0 {
            return String::new();
        }
        self.emit(s, r, Some(hold))
    }

    /// The stream ended: everything left, redacted.
    pub fn finish(&mut self, s: &Settings, r: &mut Redactor) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        self.emit(s, r, None)
    }

    /// Text held back now.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn emit(&mut self, s: &Settings, r: &mut Redactor, hold: Option<usize>) -> String {
        let from = self.context.len();
        let mut joined = std::mem::take(&mut self.context);
        joined.push_str(&self.pending);
        let mut findings = std::mem::take(&mut self.findings);
        // Where the last finding ended, if it is still in the kept context.
        let floor = self
            .last_finding_back
            .and_then(|back| from.checked_sub(back))
            .unwrap_or(0);
        find_after(s, &joined, from, floor, &mut findings);
        let mut cut = hold.map_or(joined.len(), |h| from + h);
        for f in &findings {
            if f.start < cut && f.end > cut {
                cut = f.start;
            }
        }
        findings.retain(|f| f.end <= cut);
        self.last_finding_back = match findings.last() {
            Some(f) => Some(cut - f.end),
            None => self.last_finding_back.map(|b| b + (cut - from)),
        };
        for f in &mut findings {
            f.start -= from;
            f.end -= from;
        }
        let text = joined.get(from..cut).unwrap_or_default();
        // With may_block = false apply cannot fail; if it did, nothing raw goes out.
        let out = r
            .apply(s, text, &findings, Direction::Response, false)
            .unwrap_or_default();
        let keep_from = floor_char(&joined, cut.saturating_sub(CONTEXT_KEEP));
        self.context = joined.get(keep_from..cut).unwrap_or_default().to_string();
        self.pending = joined.get(cut..).unwrap_or_default().to_string();
        self.findings = findings;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiConfig;
    use proptest::prelude::*;

    fn settings(json: &str) -> Settings {
        Settings::new(sluice_common::parse_config::<PiiConfig>(json.as_bytes()).unwrap()).unwrap()
    }

    /// Push `pieces` one by one; returns what the client saw after each push, and all of it.
    fn stream(s: &Settings, pieces: &[&str]) -> (Vec<String>, String) {
        let mut r = Redactor::default();
        let mut t = StreamText::default();
        let mut seen = Vec::new();
        for p in pieces {
            seen.push(t.push(s, &mut r, p));
        }
        seen.push(t.finish(s, &mut r));
        let all = seen.concat();
        (seen, all)
    }

    #[test]
    fn values_split_across_pieces_are_caught() {
        let s = settings("{}");
        let (_, all) = stream(&s, &["Mail jo", "hn.smi", "th@exa", "mple.com now"]);
        assert_eq!(all, "Mail [EMAIL_1] now");
        let (_, all) = stream(&s, &["card 4111 ", "1111 11", "11 1111 ok"]);
        assert_eq!(all, "card [CREDIT_CARD_1] ok");
        let (_, all) = stream(&s, &["call +1 415", " 555 ", "2671 today"]);
        assert_eq!(all, "call [PHONE_1] today");
        let (_, all) = stream(
            &s,
            &[
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
                "ow\nAb\n-----END RSA ",
                "PRIVATE KEY-----\nbye",
            ],
        );
        assert_eq!(all, "[PRIVATE_KEY_1]\nbye");
    }

    /// Inputs the `pii_stream` fuzz target found, where a stream cut somewhere let a value
    /// through (or split it differently) that redacting the whole text catches: a phone
    /// glued to a word by its `+`; a phone whose digits but the last group stand in one
    /// group of ten; two e-mail addresses with nothing between them. Every cut must give
    /// exactly the whole text's redaction.
    #[test]
    fn regression_fuzz_findings_any_cut_equals_whole() {
        let s = settings("{}");
        for (text, placeholder) in [
            (
                "111\r\0\0\0\0\0\0\u{0}18y+0089633 019\0\u{0}019",
                "[PHONE_1]",
            ),
            (
                "\n1\u{0}0000\u{0}\u{0}0000000000 00\u{e}00\u{16}2s",
                "[PHONE_1]",
            ),
            ("\u{6}\u{0}\u{0}\u{0}A@P.AK@ee.e.AA%R@ee.eGIN ", "[EMAIL_2]"),
        ] {
            let mut whole = Redactor::default();
            let expected = crate::redact::redact_text(
                &s,
                &mut whole,
                text,
                Direction::Response,
                false,
                &mut Vec::new(),
            )
            .unwrap()
            .unwrap();
            assert!(expected.contains(placeholder), "{expected:?}");
            for cut in 0..=text.len() {
                let (_, all) = stream(&s, &[&text[..cut], &text[cut..]]);
                assert_eq!(all, expected, "{text:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn prose_is_held_by_one_partial_word_only() {
        let s = settings("{}");
        let (seen, all) = stream(&s, &["Hello", " there,", " how are", " you?"]);
        assert_eq!(seen, ["", "Hello ", "there, how ", "are ", "you?"]);
        assert_eq!(all, "Hello there, how are you?");
    }

    /// Scripts without spaces stream as they come: no character of them can be part of a
    /// built-in entity, so nothing but a partial ASCII run is held.
    #[test]
    fn text_without_spaces_is_not_held_as_one_word() {
        let s = settings("{}");
        let (seen, _) = stream(&s, &["你好，", "世界。这是", "一个测试"]);
        assert_eq!(seen, ["你好，", "世界。这是", "一个测试", ""]);
        let (seen, _) = stream(&s, &["สวัสดี", "ครับ"]);
        assert_eq!(seen, ["สวัสดี", "ครับ", ""]);
        // An email inside CJK text is still held until it is whole, and caught.
        let (seen, all) = stream(&s, &["邮件jane.doe@exa", "mple.org谢谢"]);
        assert_eq!(seen[0], "邮件");
        assert_eq!(all, "邮件[EMAIL_1]谢谢");
        // A long base64 run is held by a fixed tail, not whole.
        let b64: String = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw".repeat(40);
        let (seen, all) = stream(&s, &[&b64[..1000], &b64[1000..]]);
        // (Capitals and digits just before the tail may join it: a spaced number's region.)
        let held = 1000 - seen[0].len();
        assert!(
            (ASCII_RUN_HOLD..=ASCII_RUN_HOLD + GROUP_HOLD).contains(&held),
            "{held}"
        );
        assert_eq!(all, b64);
    }

    #[test]
    fn custom_entities_hold_their_window() {
        let s = settings(r#"{"custom": [{"name": "emp", "pattern": "EMP-[0-9]{6}"}]}"#);
        let (_, all) = stream(&s, &["id EM", "P-12", "3456 done and more text here"]);
        assert_eq!(all, "id [EMP_1] done and more text here");
    }

    proptest! {
        /// Wherever the text is cut, the client sees exactly what redacting the whole text
        /// at once gives.
        #[test]
        fn any_split_equals_whole(
            cuts in proptest::collection::vec(0usize..1600, 0..8),
            which in 0usize..4,
        ) {
            let s = settings("{}");
            // Prose with spaces; CJK and Thai without any; a long base64 run with a key, an
            // e-mail and a JWT inside (the fixed-tail hold-back).
            let long_run = format!(
                "{}/AKIAIOSFODNN7EXAMPLE/{}x.y@example.org+{}/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U/{}",
                "QUJDREVGR0hJSktMTU5PUFFS".repeat(12),
                "U1RVVldYWVo0NTY3ODkrLw".repeat(20),
                "MDEyMzQ1Njc4OQ".repeat(30),
                "ZmluLg".repeat(10),
            );
            let texts = [
                "Reach me at jane.doe@example.org or +44 20 7946 0958; card 4111-1111-1111-1111, \
                 ssn 123-45-6789, ip 10.1.2.3, key AKIAIOSFODNN7EXAMPLE, iban DE89 3704 0044 0532 0130 00 — fin.",
                "请联系张伟，邮箱jane.doe@example.org，电话+44 20 7946 0958，卡号4111-1111-1111-1111，密钥AKIAIOSFODNN7EXAMPLE。谢谢！",
                "ติดต่อที่jane.doe@example.orgหรือ+44 20 7946 0958ครับ",
                long_run.as_str(),
            ];
            let text = texts[which];
            let mut whole = Redactor::default();
            let expected = crate::redact::redact_text(&s, &mut whole, text, Direction::Response, false, &mut Vec::new())
                .unwrap().unwrap();
            prop_assert!(expected.matches("_1]").count() >= 2, "{}", expected);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| floor_char(text, c.min(text.len()))).collect();
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&text[last..p]);
                last = p;
            }
            pieces.push(&text[last..]);
            let (_, all) = stream(&s, &pieces);
            prop_assert_eq!(all, expected);
        }
    }
}
