//! Built-in detection: one left-to-right pass over the bytes of a text.
//!
//! Most bytes cost one table lookup: a candidate starts only at a few bytes (`@`, `:`, `+`,
//! `(`, `-`, a digit or capital that starts a word, and the first letters of known secret
//! prefixes). At a candidate, a hand-written matcher reads the shape and then validates it
//! (Luhn, IBAN mod-97, SSN ranges, octet ranges, JWT header), so near-misses such as
//! version strings, order ids, timestamps and Luhn-invalid numbers are not findings.
//! Every entity is ASCII, so byte offsets of findings are always `char` boundaries.

use crate::checks;
use crate::entity::{BuiltIn, EntitySet};

/// One finding: `text[start..end]` is an entity of this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub entity: BuiltIn,
}

const WORD: u8 = 1;
const DIGIT: u8 = 2;
const UPPER: u8 = 4;
const LOWER: u8 = 8;
/// Looked at wherever it is: `@`, `:`, `+`, `(`, `-`.
const ANY: u8 = 16;
/// Looked at where a word starts: capitals (IBAN, AWS, Google) and `e g s x` (JWT, GitHub,
/// OpenAI / Anthropic, Slack).
const START: u8 = 32;
/// Characters of a base64url / token body.
const TOKEN: u8 = 64;

#[allow(clippy::indexing_slicing)] // i < 256 by the loop bound
const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_digit() {
            c |= WORD | DIGIT | TOKEN;
        }
        if b.is_ascii_uppercase() {
            c |= WORD | UPPER | START | TOKEN;
        }
        if b.is_ascii_lowercase() {
            c |= WORD | LOWER | TOKEN;
            if matches!(b, b'e' | b'g' | b's' | b'x') {
                c |= START;
            }
        }
        if b == b'_' {
            c |= WORD | TOKEN;
        }
        if b == b'-' {
            c |= TOKEN;
        }
        if matches!(b, b'@' | b':' | b'+' | b'(' | b'-') {
            c |= ANY;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CLASSES: [u8; 256] = build_classes();

#[inline]
fn class(b: u8) -> u8 {
    CLASSES.get(usize::from(b)).copied().unwrap_or(0)
}

/// The byte at `i`, or 0 past either end (0 is in no class, so it ends every shape).
#[inline]
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

#[inline]
fn is_digit(c: u8) -> bool {
    c.is_ascii_digit()
}

#[inline]
fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

#[inline]
fn is_word(c: u8) -> bool {
    class(c) & WORD != 0
}

/// Find every built-in entity of `set` in `text`, in order, without overlaps. Findings that
/// start before `from` are not reported: `text[..from]` is context already decided (the
/// stream redactor keeps a little of it so that boundary checks see the real neighbours).
pub fn scan(text: &str, from: usize, set: EntitySet, out: &mut Vec<Found>) {
    scan_after(text, from, 0, set, out);
}

/// [`scan`], where a finding already ended at `floor` (`<= from`): as when scanning the
/// whole text, no candidate reaches back across it. The stream redactor passes the end of
/// the last finding it emitted, so two adjacent values are split exactly as in one piece.
pub fn scan_after(text: &str, from: usize, floor: usize, set: EntitySet, out: &mut Vec<Found>) {
    let b = text.as_bytes();
    let mut s = Scanner {
        b,
        set,
        floor: floor.min(from),
        ipv6_until: 0,
        jwt_until: 0,
        token_until: 0,
    };
    let numeric = set.any_numeric();
    let mut i = from;
    while i < b.len() {
        let c = class(at(b, i));
        let found = if c & WORD != 0 {
            let word_start = i == 0 || !is_word(at(b, i - 1));
            let f = if !word_start {
                None
            } else if c & DIGIT != 0 {
                if numeric {
                    s.numeric(i)
                } else {
                    None
                }
            } else if c & START != 0 {
                s.word_start(i)
            } else {
                None
            };
            if f.is_none() {
                // Nothing starts inside a word: findings start at a word's first byte or
                // at a symbol, and symbols are never word bytes. Skip to the word's end.
                i += 1;
                while let Some(&x) = b.get(i) {
                    if class(x) & WORD == 0 {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            f
        } else if c & ANY != 0 {
            s.at_symbol(i)
        } else {
            None
        };
        match found {
            Some(f) => {
                if f.start >= from {
                    out.push(f);
                }
                s.floor = f.end;
                i = f.end.max(i + 1);
            }
            None => i += 1,
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    set: EntitySet,
    /// End of the previous finding: a backward scan never crosses it.
    floor: usize,
    /// An IPv6 candidate was already judged up to here (each of its colons triggers).
    ipv6_until: usize,
    /// A JWT header run that ends without a `.` ends here: every `eyJ` inside it (after a
    /// `-`, which starts a word) would fail the same way. Keeps hostile input linear.
    jwt_until: usize,
    /// Same for the runs of `sk-` and `xox` tokens.
    token_until: usize,
}

/// Digit groups of a number-like span: `+1 (415) 555-2671`, `4111 1111 1111 1111`, ...
struct NumberSpan {
    start: usize,
    end: usize,
    plus: bool,
    paren: bool,
    /// (start, end) of each digit group.
    groups: [(usize, usize); MAX_GROUPS],
    /// Digits in each group.
    lens: [usize; MAX_GROUPS],
    /// The separator before each group (0 for the first, `(`/`)` when a parenthesis joins).
    seps: [u8; MAX_GROUPS],
    count: usize,
    digits: usize,
}

const MAX_GROUPS: usize = 8;
const MAX_DIGITS: usize = 19;

impl NumberSpan {
    fn len_of(&self, k: usize) -> usize {
        self.groups.get(k).map_or(0, |(s, e)| e - s)
    }

    fn value_of(&self, b: &[u8], k: usize) -> u32 {
        let Some(&(s, e)) = self.groups.get(k) else {
            return 0;
        };
        b.get(s..e).unwrap_or_default().iter().fold(0u32, |v, d| {
            v.saturating_mul(10)
                .saturating_add(u32::from(d.wrapping_sub(b'0')))
        })
    }

    /// Every separator between groups is `c`.
    fn all_seps(&self, c: u8) -> bool {
        self.seps.iter().take(self.count).skip(1).all(|&s| s == c)
    }

    /// Digits per group, in order.
    fn shape(&self) -> &[usize] {
        self.lens.get(..self.count).unwrap_or_default()
    }

    /// The digits only (at most 19).
    fn digit_bytes(&self, b: &[u8]) -> ([u8; MAX_DIGITS], usize) {
        let mut out = [0u8; MAX_DIGITS];
        let mut n = 0;
        for &(s, e) in self.groups.iter().take(self.count) {
            for &d in b.get(s..e).unwrap_or_default() {
                if let Some(slot) = out.get_mut(n) {
                    *slot = d;
                    n += 1;
                }
            }
        }
        (out, n)
    }
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> u8 {
        at(self.b, i)
    }

    fn starts_with(&self, i: usize, prefix: &[u8]) -> bool {
        self.b.get(i..i + prefix.len()) == Some(prefix)
    }

    /// Count bytes of class `mask` from `i`, up to `max`.
    fn run(&self, i: usize, mask: u8, max: usize) -> usize {
        let mut n = 0;
        while n < max && class(self.at(i + n)) & mask != 0 {
            n += 1;
        }
        #[cfg(test)]
        tests::RUN_STEPS.with(|c| c.set(c.get() + n));
        n
    }

    fn found(start: usize, end: usize, entity: BuiltIn) -> Option<Found> {
        Some(Found { start, end, entity })
    }

    fn at_symbol(&mut self, i: usize) -> Option<Found> {
        match self.at(i) {
            b'@' if self.set.contains(BuiltIn::Email) => self.email(i),
            b':' if self.set.contains(BuiltIn::Ipv6) => self.ipv6(i),
            b'+' | b'(' if self.set.contains(BuiltIn::Phone) => {
                let prev_ok = i == 0 || !is_word(self.at(i - 1));
                let next = self.at(i + 1);
                if prev_ok && (is_digit(next) || (next == b'(' && self.at(i) == b'+')) {
                    self.numeric(i)
                } else {
                    None
                }
            }
            b'-' if self.set.contains(BuiltIn::PrivateKey) && self.at(i + 1) == b'-' => {
                self.private_key(i)
            }
            _ => None,
        }
    }

    fn word_start(&mut self, i: usize) -> Option<Found> {
        let c = self.at(i);
        if c.is_ascii_uppercase() {
            if self.set.contains(BuiltIn::Iban) {
                if let Some(f) = self.iban(i) {
                    return Some(f);
                }
            }
            if c == b'A' {
                return self.aws_or_google(i);
            }
            return None;
        }
        match c {
            b'e' if self.set.contains(BuiltIn::Jwt) => self.jwt(i),
            b'g' if self.set.contains(BuiltIn::GithubToken) => self.github(i),
            b's' => self.sk_key(i),
            b'x' if self.set.contains(BuiltIn::SlackToken) => self.slack(i),
            _ => None,
        }
    }

    // ----- email -----

    fn email(&self, at_sign: usize) -> Option<Found> {
        fn local(c: u8) -> bool {
            is_alnum(c) || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
        }
        let mut s = at_sign;
        while s > self.floor && local(self.at(s - 1)) {
            s -= 1;
            if at_sign - s > 64 {
                return None;
            }
        }
        // A local part neither starts nor ends with a dot.
        while s < at_sign && self.at(s) == b'.' {
            s += 1;
        }
        if s == at_sign || self.at(at_sign - 1) == b'.' {
            return None;
        }
        // Domain: labels of [A-Za-z0-9-], dot-separated, an alphabetic TLD of 2+.
        let mut j = at_sign + 1;
        let mut labels = 0;
        let mut tld_alpha;
        let mut tld_len;
        loop {
            let k = j;
            while j - k < 63 && (is_alnum(self.at(j)) || self.at(j) == b'-') {
                j += 1;
            }
            if j == k || self.at(k) == b'-' || self.at(j - 1) == b'-' {
                return None;
            }
            labels += 1;
            tld_len = j - k;
            tld_alpha = self
                .b
                .get(k..j)
                .is_some_and(|l| l.iter().all(u8::is_ascii_alphabetic));
            if self.at(j) == b'.' && is_alnum(self.at(j + 1)) && j - at_sign < 253 {
                j += 1;
                continue;
            }
            break;
        }
        let next = self.at(j);
        if labels < 2 || !tld_alpha || tld_len < 2 || is_word(next) || next == b'@' {
            return None;
        }
        Self::found(s, j, BuiltIn::Email)
    }

    // ----- numbers: phone, SSN, card, IPv4 -----

    fn number_span(&self, start: usize) -> Option<NumberSpan> {
        let mut span = NumberSpan {
            start,
            end: start,
            plus: false,
            paren: false,
            groups: [(0, 0); MAX_GROUPS],
            lens: [0; MAX_GROUPS],
            seps: [0; MAX_GROUPS],
            count: 0,
            digits: 0,
        };
        let mut j = start;
        if self.at(j) == b'+' {
            span.plus = true;
            j += 1;
        }
        let mut sep = 0u8;
        loop {
            let in_paren = self.at(j) == b'(';
            let ds = if in_paren { j + 1 } else { j };
            let n = self.run(ds, DIGIT, MAX_DIGITS + 1);
            if n == 0 || n > MAX_DIGITS {
                if n > MAX_DIGITS {
                    return None;
                }
                break;
            }
            let mut end = ds + n;
            if in_paren {
                if self.at(end) != b')' {
                    break;
                }
                end += 1;
                span.paren = true;
            }
            span.digits += n;
            if span.digits > MAX_DIGITS {
                return None;
            }
            let k = span.count;
            if let (Some(g), Some(l), Some(s)) = (
                span.groups.get_mut(k),
                span.lens.get_mut(k),
                span.seps.get_mut(k),
            ) {
                *g = (ds, ds + n);
                *l = n;
                *s = if in_paren { b'(' } else { sep };
            }
            span.count += 1;
            span.end = end;
            if span.count == MAX_GROUPS {
                break;
            }
            j = end;
            let c = self.at(j);
            let next = self.at(j + 1);
            if matches!(c, b' ' | b'-' | b'.' | b'/') && (is_digit(next) || next == b'(') {
                sep = c;
                j += 1;
            } else if in_paren && (is_digit(c) || c == b'(') {
                sep = b')';
            } else if c == b'(' && is_digit(next) {
                sep = b'(';
            } else {
                break;
            }
        }
        (span.count > 0).then_some(span)
    }

    fn numeric(&mut self, start: usize) -> Option<Found> {
        let span = self.number_span(start)?;
        let b = self.b;
        // Glued to an identifier on the left (`ORD-2024-...`, `v1.2`, `id_123`).
        if start >= 2
            && matches!(self.at(start - 1), b'-' | b'_' | b'/' | b'.')
            && is_alnum(self.at(start - 2))
        {
            return None;
        }
        let mut end = span.end;
        let next = self.at(end);
        // A phone extension: `x1234`.
        let ext = if next == b'x' {
            let n = self.run(end + 1, DIGIT, 6);
            (1..=5).contains(&n) && !is_word(self.at(end + 1 + n)) && {
                end = end + 1 + n;
                true
            }
        } else {
            false
        };
        if !ext
            && (is_word(next)
                || next == b'@'
                || (matches!(next, b'-' | b'.' | b'/' | b':') && is_alnum(self.at(end + 1))))
        {
            return None;
        }
        let shape = span.shape();
        let plain = !span.plus && !span.paren;

        if span.count == 4 && plain && span.all_seps(b'.') {
            return (!ext && self.set.contains(BuiltIn::Ipv4) && self.ipv4_ok(&span)).then_some(
                Found {
                    start,
                    end,
                    entity: BuiltIn::Ipv4,
                },
            );
        }
        if shape == [3, 2, 4] && plain && (span.all_seps(b'-') || span.all_seps(b' ')) {
            let g = |k: usize| {
                span.groups
                    .get(k)
                    .and_then(|&(s, e)| b.get(s..e))
                    .unwrap_or_default()
            };
            let ok = !ext && self.set.contains(BuiltIn::Ssn) && checks::ssn_valid(g(0), g(1), g(2));
            return ok.then_some(Found {
                start,
                end,
                entity: BuiltIn::Ssn,
            });
        }
        if (13..=MAX_DIGITS).contains(&span.digits) && plain {
            let grouped = (span.all_seps(b' ') || span.all_seps(b'-'))
                && (shape == [4, 6, 5]
                    || shape == [4, 6, 4]
                    || shape.iter().rev().skip(1).all(|&n| n == 4));
            if span.count == 1 || grouped {
                let (digits, n) = span.digit_bytes(b);
                let digits = digits.get(..n).unwrap_or_default();
                let ok = !ext
                    && self.set.contains(BuiltIn::CreditCard)
                    && checks::card_prefix(digits)
                    && checks::luhn(digits);
                return ok.then_some(Found {
                    start,
                    end,
                    entity: BuiltIn::CreditCard,
                });
            }
        }
        (self.set.contains(BuiltIn::Phone) && self.phone_ok(&span, shape)).then_some(Found {
            start,
            end,
            entity: BuiltIn::Phone,
        })
    }

    fn ipv4_ok(&self, span: &NumberSpan) -> bool {
        for k in 0..4 {
            let len = span.len_of(k);
            let first = span.groups.get(k).map_or(0, |&(s, _)| self.at(s));
            if len == 0 || len > 3 || (len > 1 && first == b'0') || span.value_of(self.b, k) > 255 {
                return false;
            }
        }
        // `version 1.2.3.4`
        !self.preceded_by_word(span.start, &[b"version", b"ver", b"release", b"build"])
    }

    /// The word before `i` (after spaces) is one of `words` (ASCII case-insensitive).
    fn preceded_by_word(&self, i: usize, words: &[&[u8]]) -> bool {
        let mut e = i;
        while e > 0 && self.at(e - 1) == b' ' {
            e -= 1;
        }
        let mut s = e;
        while s > 0 && self.at(s - 1).is_ascii_alphabetic() && e - s < 16 {
            s -= 1;
        }
        let word = self.b.get(s..e).unwrap_or_default();
        words.iter().any(|w| w.eq_ignore_ascii_case(word))
    }

    fn phone_ok(&self, span: &NumberSpan, shape: &[usize]) -> bool {
        let nd = span.digits;
        if !(7..=15).contains(&nd) {
            return false;
        }
        let v = |k| span.value_of(self.b, k);
        // Dates and timestamps: 2024-01-15, 15.01.2024, 01/15/2024.
        if span.count >= 3 && !span.plus {
            let date = match shape.get(..3) {
                Some([4, 2, 2]) => checks::plausible_date(v(0), v(1), v(2)),
                Some([1 | 2, 1 | 2, 4]) => {
                    checks::plausible_date(v(2), v(1), v(0))
                        || checks::plausible_date(v(2), v(0), v(1))
                }
                _ => false,
            };
            if date {
                return false;
            }
        }
        if span.plus {
            return nd >= 8;
        }
        let first = span.groups.first().map_or(0, |&(s, _)| self.at(s));
        let second = span.groups.first().map_or(0, |&(s, _)| self.at(s + 1));
        if span.count >= 2 && first == b'0' && second == b'0' {
            // 00 + country code: the international prefix dialled instead of `+`.
            return (10..=15).contains(&nd) && shape.iter().skip(1).all(|&n| n >= 2);
        }
        if span.count < 2 || !(9..=12).contains(&nd) {
            return false;
        }
        if first == b'0' {
            // National numbers with a trunk prefix (0xx xxxx xxxx, 00 international).
            return shape.iter().all(|&n| n >= 2);
        }
        // Without a trunk prefix: North American 3-3-4 / (3)3-4, or 2-4-4 (Brazil).
        matches!(shape, [3, 3, 4] | [2, 4, 4] | [3, 7])
            && (span.paren || shape != [3, 7])
            && !span.all_seps(b'/')
    }

    // ----- IPv6 -----

    fn ipv6(&mut self, colon: usize) -> Option<Found> {
        if colon < self.ipv6_until {
            return None;
        }
        let hexish = |c: u8| c.is_ascii_hexdigit() || c == b':';
        let mut s = colon;
        while s > self.floor && hexish(self.at(s - 1)) && colon - s < 40 {
            s -= 1;
        }
        let mut e = colon;
        while (hexish(self.at(e)) || (self.at(e) == b'.' && is_digit(self.at(e + 1)))) && e - s < 46
        {
            e += 1;
        }
        self.ipv6_until = e;
        // Trailing single colon is punctuation ("at fe80::1:"), `::` is part of the address.
        if self.at(e - 1) == b':' && self.at(e.saturating_sub(2)) != b':' {
            e -= 1;
        }
        let prev = if s == 0 { 0 } else { self.at(s - 1) };
        if is_word(prev) || prev == b':' || prev == b'.' || is_word(self.at(e)) {
            return None;
        }
        let candidate = std::str::from_utf8(self.b.get(s..e)?).ok()?;
        let hex_digits = candidate.bytes().filter(u8::is_ascii_hexdigit).count();
        if hex_digits < 4 || candidate.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        Self::found(s, e, BuiltIn::Ipv6)
    }

    // ----- IBAN -----

    fn iban(&self, i: usize) -> Option<Found> {
        let country = [self.at(i), self.at(i + 1)];
        if !country[1].is_ascii_uppercase()
            || !is_digit(self.at(i + 2))
            || !is_digit(self.at(i + 3))
        {
            return None;
        }
        let len = checks::iban_length(country)?;
        let mut chars = [0u8; 34];
        let mut n = 0;
        let mut j = i;
        while n < len {
            let c = self.at(j);
            if c.is_ascii_digit() || c.is_ascii_uppercase() {
                if let Some(slot) = chars.get_mut(n) {
                    *slot = c;
                }
                n += 1;
                j += 1;
            } else if c == b' ' && n % 4 == 0 && is_alnum(self.at(j + 1)) {
                j += 1; // printed form: groups of four
            } else {
                return None;
            }
        }
        if is_word(self.at(j)) || !checks::iban_checksum(chars.get(..n)?) {
            return None;
        }
        Self::found(i, j, BuiltIn::Iban)
    }

    // ----- secrets -----

    fn aws_or_google(&self, i: usize) -> Option<Found> {
        const AWS: [&[u8]; 11] = [
            b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AGPA", b"AIDA", b"AIPA", b"ANPA", b"ANVA",
            b"AROA", b"APKA",
        ];
        if self.set.contains(BuiltIn::AwsAccessKey) && AWS.iter().any(|p| self.starts_with(i, p)) {
            let n = self.run(i + 4, UPPER | DIGIT, 17);
            if n == 16 && !is_word(self.at(i + 20)) {
                return Self::found(i, i + 20, BuiltIn::AwsAccessKey);
            }
        }
        if self.set.contains(BuiltIn::GoogleApiKey) && self.starts_with(i, b"AIza") {
            let n = self.run(i + 4, TOKEN, 36);
            if n == 35 {
                return Self::found(i, i + 39, BuiltIn::GoogleApiKey);
            }
        }
        None
    }

    fn github(&self, i: usize) -> Option<Found> {
        if self.starts_with(i, b"github_pat_") {
            let n = self.run(i + 11, WORD, 256);
            return (22..=255).contains(&n).then_some(Found {
                start: i,
                end: i + 11 + n,
                entity: BuiltIn::GithubToken,
            });
        }
        if self.at(i + 1) == b'h'
            && matches!(self.at(i + 2), b'p' | b'o' | b'u' | b's' | b'r')
            && self.at(i + 3) == b'_'
        {
            let n = self.run(i + 4, DIGIT | UPPER | LOWER, 252);
            if (36..=251).contains(&n) && !is_word(self.at(i + 4 + n)) {
                return Self::found(i, i + 4 + n, BuiltIn::GithubToken);
            }
        }
        None
    }

    fn sk_key(&mut self, i: usize) -> Option<Found> {
        if i < self.token_until || !self.starts_with(i, b"sk-") {
            return None;
        }
        if self.starts_with(i, b"sk-ant-") {
            if !self.set.contains(BuiltIn::AnthropicKey) {
                return None;
            }
            // sk-ant-api03-..., sk-ant-admin01-...
            let kind = self.run(i + 7, LOWER | DIGIT, 12);
            if kind == 0 || self.at(i + 7 + kind) != b'-' {
                return None;
            }
            let body = i + 8 + kind;
            let n = self.run(body, TOKEN, 256);
            return self.token_or_skip((32..256).contains(&n), i, body + n, BuiltIn::AnthropicKey);
        }
        if !self.set.contains(BuiltIn::OpenaiKey) {
            return None;
        }
        let mut body = i + 3;
        for p in [&b"proj-"[..], b"svcacct-", b"admin-"] {
            if self.starts_with(body, p) {
                body += p.len();
                break;
            }
        }
        let n = self.run(body, TOKEN, 256);
        let text = self.b.get(body..body + n).unwrap_or_default();
        // Keys mix cases and digits; hyphenated words (`sk-learn-...`) do not.
        let mixed = text.iter().any(u8::is_ascii_uppercase)
            && text.iter().any(u8::is_ascii_lowercase)
            && text.iter().any(u8::is_ascii_digit);
        self.token_or_skip(
            (20..256).contains(&n) && mixed,
            i,
            body + n,
            BuiltIn::OpenaiKey,
        )
    }

    /// The finding when `ok`; otherwise remember where the failed run ends: a `-` inside
    /// it starts a word, and every prefix found there would fail on the same run.
    fn token_or_skip(
        &mut self,
        ok: bool,
        start: usize,
        end: usize,
        entity: BuiltIn,
    ) -> Option<Found> {
        if ok {
            return Self::found(start, end, entity);
        }
        self.token_until = end;
        None
    }

    fn slack(&mut self, i: usize) -> Option<Found> {
        if i < self.token_until {
            return None;
        }
        let xox = self.starts_with(i, b"xox")
            && matches!(self.at(i + 3), b'a' | b'b' | b'p' | b'o' | b's' | b'r')
            && self.at(i + 4) == b'-';
        if !xox && !self.starts_with(i, b"xapp-") {
            return None;
        }
        let body = i + 5;
        let n = self.run(body, DIGIT | UPPER | LOWER | TOKEN, 256);
        let text = self.b.get(body..body + n).unwrap_or_default();
        let digits = text.iter().filter(|c| c.is_ascii_digit()).count();
        self.token_or_skip(
            (10..256).contains(&n) && digits >= 4,
            i,
            body + n,
            BuiltIn::SlackToken,
        )
    }

    fn jwt(&mut self, i: usize) -> Option<Found> {
        if i < self.jwt_until || !self.starts_with(i, b"eyJ") {
            return None;
        }
        let b64 = DIGIT | UPPER | LOWER | TOKEN; // [A-Za-z0-9_-]
        let h = self.run(i, b64, 4096);
        if h < 10 || self.at(i + h) != b'.' {
            self.jwt_until = i + h;
            return None;
        }
        let p_start = i + h + 1;
        let p = self.run(p_start, b64, 16384);
        if p < 4 || self.at(p_start + p) != b'.' {
            return None;
        }
        let s_start = p_start + p + 1;
        let sig = self.run(s_start, b64, 4096);
        if !checks::jwt_header(self.b.get(i..i + h)?) {
            return None;
        }
        Self::found(i, s_start + sig, BuiltIn::Jwt)
    }

    fn private_key(&self, i: usize) -> Option<Found> {
        const MAX_BLOCK: usize = 16 * 1024;
        if !self.starts_with(i, b"-----BEGIN ") {
            return None;
        }
        let label_start = i + 11;
        let rest = self.b.get(label_start..)?;
        let label_len = rest.iter().take(48).position(|&c| c == b'-')?;
        let label = rest.get(..label_len)?;
        if !label.ends_with(b"PRIVATE KEY") && !label.ends_with(b"PRIVATE KEY BLOCK") {
            return None;
        }
        // -----END <label>-----
        let mut end_marker = Vec::with_capacity(label_len + 14);
        end_marker.extend_from_slice(b"-----END ");
        end_marker.extend_from_slice(label);
        end_marker.extend_from_slice(b"-----");
        let window = self.b.get(i..).unwrap_or_default();
        let window = window.get(..MAX_BLOCK).unwrap_or(window);
        let end = match window
            .windows(end_marker.len())
            .position(|w| w == end_marker.as_slice())
        {
            Some(p) => i + p + end_marker.len(),
            // No end marker: everything from BEGIN on is treated as key material.
            None => i + window.len(),
        };
        Self::found(i, end, BuiltIn::PrivateKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Bytes read by `Scanner::run` on this thread (a work count, not a time).
        pub(super) static RUN_STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn find(text: &str) -> Vec<(BuiltIn, &str)> {
        let mut out = Vec::new();
        scan(text, 0, EntitySet::all(), &mut out);
        out.iter()
            .map(|f| (f.entity, &text[f.start..f.end]))
            .collect()
    }

    fn one(text: &str) -> Option<(BuiltIn, String)> {
        let v = find(text);
        assert!(v.len() <= 1, "{text:?}: {v:?}");
        v.first().map(|(e, s)| (*e, s.to_string()))
    }

    #[track_caller]
    fn hit(text: &str, entity: BuiltIn, value: &str) {
        assert_eq!(one(text), Some((entity, value.to_string())), "in {text:?}");
    }

    #[track_caller]
    fn miss(text: &str) {
        assert_eq!(find(text), vec![], "in {text:?}");
    }

    #[test]
    fn emails() {
        hit(
            "mail john.smith+tag@mail.example.co.uk.",
            BuiltIn::Email,
            "john.smith+tag@mail.example.co.uk",
        );
        hit("<a@b.io>", BuiltIn::Email, "a@b.io");
        miss("user@localhost");
        miss("@mention me");
        miss("x@y.c");
        miss("foo@123.456");
    }

    #[test]
    fn phones() {
        for p in [
            "+1-780-563-6083",
            "(591)341-7776",
            "206.269.0743x9150",
            "+44(0)115 4960914",
            "(01632) 960391",
            "+49 (0) 9141 777631",
            "03662 585178",
            "+33 (0)1 41 63 60 83",
            "07 88 35 33 74",
            "080-9141-7776",
            "+55 61 9141-7776",
            "12 3915-0008",
            "+14155552671",
        ] {
            hit(&format!("call {p} now"), BuiltIn::Phone, p);
        }
        for p in [
            "at 2024-01-15 14:22:01",
            "version 1.2.3",
            "id 1234567890123",
            "order ORD-2024-000123",
            "in 2023 2024 2025",
            "on 15.01.2024 08",
            "call 12345",
            "ref 4155552671",
        ] {
            miss(p);
        }
    }

    #[test]
    fn ssns() {
        hit("ssn 123-45-6789.", BuiltIn::Ssn, "123-45-6789");
        hit("ssn 123 45 6789", BuiltIn::Ssn, "123 45 6789");
        for p in [
            "000-12-3456",
            "666-12-3456",
            "923-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            miss(p);
        }
    }

    #[test]
    fn cards() {
        hit(
            "card 4111 1111 1111 1111 exp",
            BuiltIn::CreditCard,
            "4111 1111 1111 1111",
        );
        hit(
            "card 4111-1111-1111-1111",
            BuiltIn::CreditCard,
            "4111-1111-1111-1111",
        );
        hit(
            "amex 378282246310005",
            BuiltIn::CreditCard,
            "378282246310005",
        );
        hit(
            "amex 3782 822463 10005",
            BuiltIn::CreditCard,
            "3782 822463 10005",
        );
        miss("card 4111 1111 1111 1112");
        miss("n 1111111111111117"); // Luhn-valid but no issuer starts with 1
    }

    #[test]
    fn ibans() {
        hit(
            "to DE89370400440532013000 now",
            BuiltIn::Iban,
            "DE89370400440532013000",
        );
        hit(
            "to GB82 WEST 1234 5698 7654 32.",
            BuiltIn::Iban,
            "GB82 WEST 1234 5698 7654 32",
        );
        miss("to DE89370400440532013001");
        miss("to DE8937040044053201300");
    }

    #[test]
    fn ips() {
        hit("from 192.168.1.20:", BuiltIn::Ipv4, "192.168.1.20");
        miss("from 256.1.1.1");
        miss("v 1.2.3.4.5");
        miss("version 10.0.0.1");
        hit(
            "addr 2001:db8:85a3::8a2e:370:7334.",
            BuiltIn::Ipv6,
            "2001:db8:85a3::8a2e:370:7334",
        );
        hit(
            "addr fe80::1ff:fe23:4567:890a now",
            BuiltIn::Ipv6,
            "fe80::1ff:fe23:4567:890a",
        );
        miss("at 12:30:45");
        miss("std::vector and a[1::2]");
        miss("mac 00:1A:2B:3C:4D:5E");
    }

    #[test]
    fn secrets() {
        hit(
            "k=AKIAIOSFODNN7EXAMPLE;",
            BuiltIn::AwsAccessKey,
            "AKIAIOSFODNN7EXAMPLE",
        );
        miss("AKIAIOSFODNN7EXAMPL");
        let gh = format!("ghp_{}", "a1B2".repeat(9));
        hit(&format!("token {gh}"), BuiltIn::GithubToken, &gh);
        let pat = format!("github_pat_11AB{}", "x_9".repeat(25));
        hit(&format!("{pat} "), BuiltIn::GithubToken, &pat);
        let oa = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
        hit(&format!("key: {oa}"), BuiltIn::OpenaiKey, oa);
        miss("sk-learn-is-a-python-library-for-ml");
        let an = format!("sk-ant-api03-{}", "Zx9_".repeat(20));
        hit(&an, BuiltIn::AnthropicKey, &an);
        let g = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
        hit(&format!("key={g}&"), BuiltIn::GoogleApiKey, g);
        let sl = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        hit(sl, BuiltIn::SlackToken, sl);
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        hit(&format!("Bearer {jwt}."), BuiltIn::Jwt, jwt);
        miss("eyJzdWIiOiIxMjM0NTY3ODkwIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc");
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAbc=\n-----END RSA PRIVATE KEY-----";
        hit(&format!("key:\n{pem}\nthanks"), BuiltIn::PrivateKey, pem);
        miss("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    }

    #[test]
    fn several_in_order_and_context_prefix() {
        let t = "a@b.io and 123-45-6789 and 10.0.0.1";
        let v = find(t);
        assert_eq!(
            v.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [BuiltIn::Email, BuiltIn::Ssn, BuiltIn::Ipv4]
        );
        let mut out = Vec::new();
        scan(t, 8, EntitySet::all(), &mut out);
        assert_eq!(out.len(), 2);
        // Only the asked-for entities.
        let mut out = Vec::new();
        scan(t, 0, [BuiltIn::Ipv4].into_iter().collect(), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn hostile_repetitions_stay_linear() {
        // Without the guards each repetition would re-read a long run: quadratic work.
        for unit in ["eyJhbGciOi-", "fe80:", "a@", "sk-Ab1-", "1 ", "AKIA-"] {
            let text = unit.repeat(100_000 / unit.len());
            RUN_STEPS.with(|c| c.set(0));
            let mut out = Vec::new();
            scan(&text, 0, EntitySet::all(), &mut out);
            let steps = RUN_STEPS.with(|c| c.get());
            assert!(
                steps <= 8 * text.len(),
                "{unit:?}: {steps} steps for {} bytes",
                text.len()
            );
        }
    }

    #[test]
    fn non_ascii_text_is_safe() {
        miss("Grüße aus Köln — naïve café ☕ 東京");
        hit("é@x.io — ü jo@x.io", BuiltIn::Email, "jo@x.io");
    }
}
