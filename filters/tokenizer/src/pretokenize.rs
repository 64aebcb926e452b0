//! Pre-tokenization: the text pieces tiktoken's regex patterns cut, without a regex engine.
//!
//! Each function mirrors one alternative of the pattern with the regex's semantics
//! (leftmost alternative wins; greedy quantifiers give back one character at a time until
//! the rest matches). The comments derive each shortcut from that. The patterns are those
//! of tiktoken-rs 0.12, the oracle:
//!
//! o200k_base:
//! ```text
//! A1 [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! A2 [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! A3 \p{N}{1,3}     A4  ?[^\s\p{L}\p{N}]+[\r\n/]*     A5 \s*[\r\n]+     A6 \s+(?!\S)     A7 \s+
//! ```
//! cl100k_base:
//! ```text
//! C1 '(?i:[sdmt]|ll|ve|re)   C2 [^\r\n\p{L}\p{N}]?+\p{L}++   C3 \p{N}{1,3}+   C4  ?[^\s\p{L}\p{N}]++[\r\n]*+
//! C5 \s++$   C6 \s*[\r\n]   C7 \s+(?!\S)   C8 \s
//! ```

use crate::unicode::{
    class, FOLD_D, FOLD_E, FOLD_L, FOLD_M, FOLD_R, FOLD_S, FOLD_T, FOLD_V, LETTER, LOWERISH, NUM,
    UPPERISH, WS,
};

/// Which encoding's pattern to cut with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    O200k,
    Cl100k,
    /// Llama 3 (`llama-bpe` in llama.cpp, the `pre_tokenizer` of Meta's `tokenizer.json`):
    /// cl100k's alternatives without `\s++$`, greedy instead of possessive (which changes
    /// nothing here: no alternative can give back into a match that the next one needs),
    /// and `\s*[\r\n]+`, which ends where cl100k's `\s*[\r\n]` does: at the run's last
    /// newline.
    /// ```text
    /// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    /// ```
    Llama3,
    /// Qwen 2 / 2.5 / 3: Llama 3's pattern with single digits (`\p{N}` for `\p{N}{1,3}`).
    Qwen2,
}

/// The character at byte `i`: (char, its UTF-8 length, its class flags).
#[inline]
fn at(s: &[u8], text: &str, i: usize) -> Option<(char, usize, u8)> {
    let b = *s.get(i)?;
    let c = if b < 0x80 {
        b as char
    } else {
        text.get(i..)?.chars().next()?
    };
    Some((c, c.len_utf8(), class(c)))
}

/// `[^\r\n\p{L}\p{N}]`
#[inline]
fn is_prefix(c: char, k: u8) -> bool {
    k & (LETTER | NUM) == 0 && c != '\r' && c != '\n'
}

/// `[^\s\p{L}\p{N}]`
#[inline]
fn is_punct(k: u8) -> bool {
    k & (WS | LETTER | NUM) == 0
}

/// Iterator over the pieces of `text`.
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    pattern: Pattern,
}

impl<'a> Pieces<'a> {
    pub fn new(text: &'a str, pattern: Pattern) -> Self {
        Self {
            text,
            pos: 0,
            pattern,
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.text.as_bytes();
        let ascii = match self.pattern {
            Pattern::O200k => o200k_ascii_word(s, self.pos)
                .or_else(|| ascii_punctuation(s, self.pos, true))
                .or_else(|| ascii_digits(s, self.pos, 3)),
            Pattern::Cl100k | Pattern::Llama3 => cl100k_ascii_word(s, self.pos)
                .or_else(|| ascii_punctuation(s, self.pos, false))
                .or_else(|| ascii_digits(s, self.pos, 3)),
            Pattern::Qwen2 => cl100k_ascii_word(s, self.pos)
                .or_else(|| ascii_punctuation(s, self.pos, false))
                .or_else(|| ascii_digits(s, self.pos, 1)),
        };
        if let Some(end) = ascii {
            let piece = self.text.get(self.pos..end)?;
            self.pos = end;
            return Some(piece);
        }
        let (c, n, k) = at(s, self.text, self.pos)?;
        let end = match self.pattern {
            Pattern::O200k => o200k_end(s, self.text, self.pos, c, n, k),
            Pattern::Cl100k => cl100k_end(s, self.text, self.pos, c, n, k, true, 3),
            Pattern::Llama3 => cl100k_end(s, self.text, self.pos, c, n, k, false, 3),
            Pattern::Qwen2 => cl100k_end(s, self.text, self.pos, c, n, k, false, 1),
        };
        // Every character belongs to some alternative, so `end > pos`; stay safe anyway.
        let end = end.max(self.pos + n);
        let piece = self.text.get(self.pos..end)?;
        self.pos = end;
        Some(piece)
    }
}

/// The end of the run of bytes from `i` that satisfy `keep` (the text's end at most).
#[inline]
fn ascii_run(s: &[u8], i: usize, keep: impl Fn(u8) -> bool) -> usize {
    let rest = s.get(i..).unwrap_or_default();
    i + rest.iter().position(|&b| !keep(b)).unwrap_or(rest.len())
}

/// An ASCII byte that may be the optional first character of a word piece
/// (`[^\r\n\p{L}\p{N}]`): neither a letter, a digit nor a newline.
#[inline]
fn ascii_prefix(b: u8) -> bool {
    b < 0x80 && is_prefix(b as char, class(b as char))
}

/// o200k's commonest pieces on ASCII bytes alone, without the general path's per-character
/// classes (which cost several times the word itself in English prose): an optional ASCII
/// prefix (`[^\r\n\p{L}\p{N}]?`: not a letter, digit or newline), upper-case letters, then
/// lower-case letters, then the end of the text or an ASCII byte other than `'` (a
/// contraction might follow; a lower-case letter cannot, the run took them all, and a
/// capital after lower-case letters is not `W`: `CamelCase` is `Camel`, `Case`).
///
/// - At least one lower-case letter: A1 (`U*W+`) matches exactly that, and A1 is the
///   pattern's first alternative.
/// - Capitals only (`GPU`, ` I`): no A1 can match (ASCII capitals are not `W`, and what
///   follows is not a letter, so neither with nor without the prefix is there a `W+`);
///   A2 (`U+W*`, prefix taken greedily) matches exactly the prefix and the capitals.
///
/// `None` for anything else (a non-ASCII byte next, no letter, a contraction): the general
/// path decides.
#[inline]
fn o200k_ascii_word(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if ascii_prefix(*s.get(j)?) {
        j += 1;
    }
    let upper = j;
    let lower = ascii_run(s, j, |b| b.is_ascii_uppercase());
    j = ascii_run(s, lower, |b| b.is_ascii_lowercase());
    if j == upper {
        return None;
    }
    match s.get(j) {
        None => Some(j),
        Some(&b) if b < 0x80 && b != b'\'' => Some(j),
        Some(_) => None,
    }
}

/// cl100k's and its relatives' commonest piece on ASCII bytes alone: C2
/// (`[^\r\n\p{L}\p{N}]?+\p{L}++`) over an optional ASCII prefix and ASCII letters, ending at
/// the text's end or an ASCII byte that is not a letter. A leading `'` is left to the general
/// path (C1, a contraction, is tried before C2); the prefix is possessive, so taking it
/// whenever a letter follows is what C2 does.
#[inline]
fn cl100k_ascii_word(s: &[u8], i: usize) -> Option<usize> {
    let first = *s.get(i)?;
    let start = if first.is_ascii_alphabetic() {
        i
    } else if ascii_prefix(first) && first != b'\'' {
        i + 1
    } else {
        return None;
    };
    let end = ascii_run(s, start, |b| b.is_ascii_alphabetic());
    if end == start {
        return None;
    }
    match s.get(end) {
        None => Some(end),
        Some(&b) if b < 0x80 => Some(end),
        Some(_) => None,
    }
}

/// `[^\s\p{L}\p{N}]` for an ASCII byte.
#[inline]
fn ascii_punct(b: u8) -> bool {
    b < 0x80 && is_punct(class(b as char))
}

/// Both patterns' punctuation piece (A4 / C4, ` ?[^\s\p{L}\p{N}]+` then `[\r\n/]*` or
/// `[\r\n]*`) on ASCII bytes alone, where no earlier alternative can match: a space then
/// punctuation (the space cannot be a word's prefix, no letter follows it), or punctuation
/// that no letter follows (else it would be the prefix of a word piece, A1 / A2 / C2) and
/// that is not `'` (C1, a contraction, comes first in cl100k's pattern; o200k's words
/// take a `'` prefix too, so both leave it to the general path). `None` when the run meets
/// a non-ASCII byte (it may be punctuation that goes on) or the piece is not of this form.
#[inline]
fn ascii_punctuation(s: &[u8], i: usize, slash: bool) -> Option<usize> {
    let first = *s.get(i)?;
    let start = if first == b' ' {
        ascii_punct(*s.get(i + 1)?).then_some(i + 1)?
    } else if ascii_punct(first) && first != b'\'' {
        match s.get(i + 1) {
            Some(&b) if b >= 0x80 || b.is_ascii_alphabetic() => return None,
            _ => i,
        }
    } else {
        return None;
    };
    let run = ascii_run(s, start, ascii_punct);
    if s.get(run).is_some_and(|&b| b >= 0x80) {
        return None;
    }
    Some(ascii_run(s, run, |b| {
        b == b'\r' || b == b'\n' || (slash && b == b'/')
    }))
}

fn o200k_end(s: &[u8], t: &str, i: usize, c: char, n: usize, k: u8) -> usize {
    // A1, then A2; each first with the optional prefix (greedy `?`), then without.
    let prefixed = is_prefix(c, k);
    if prefixed {
        if let Some(e) = letters_a1(s, t, i + n) {
            return e;
        }
    }
    if let Some(e) = letters_a1(s, t, i) {
        return e;
    }
    if prefixed {
        if let Some(e) = letters_a2(s, t, i + n) {
            return e;
        }
    }
    if let Some(e) = letters_a2(s, t, i) {
        return e;
    }
    if k & NUM != 0 {
        return digits(s, t, i + n);
    }
    if let Some(e) = punctuation(s, t, i, c, true) {
        return e;
    }
    if k & WS != 0 {
        let run = whitespace_run(s, t, i);
        // A5 `\s*[\r\n]+`: `\s*` gives back from the right until `[\r\n]+` matches, i.e.
        // at the last newline of the run; that newline is the last, so `+` takes just it.
        if let Some(e) = run.last_newline_end {
            return e;
        }
        return run.without_newline_end(s.len());
    }
    i + n
}

/// cl100k's pattern and its relatives: `end_rule` is C5 (`\s++$`), `max_digits` C3's bound.
#[allow(clippy::too_many_arguments)]
fn cl100k_end(
    s: &[u8],
    t: &str,
    i: usize,
    c: char,
    n: usize,
    k: u8,
    end_rule: bool,
    max_digits: usize,
) -> usize {
    // C1
    if c == '\'' {
        let e = contraction(s, t, i);
        if e > i {
            return e;
        }
    }
    // C2: the possessive prefix is taken whenever present; without it, a prefix character
    // (not a letter) could not start `\p{L}++` anyway.
    if is_prefix(c, k) {
        if let Some((_, _, k2)) = at(s, t, i + n) {
            if k2 & LETTER != 0 {
                return run_while(s, t, i + n, |k| k & LETTER != 0);
            }
        }
    } else if k & LETTER != 0 {
        return run_while(s, t, i, |k| k & LETTER != 0);
    }
    if k & NUM != 0 {
        return if max_digits == 1 {
            i + n
        } else {
            digits(s, t, i + n)
        };
    }
    if let Some(e) = punctuation(s, t, i, c, false) {
        return e;
    }
    if k & WS != 0 {
        let run = whitespace_run(s, t, i);
        // C5 `\s++$`
        if end_rule && run.end == s.len() {
            return run.end;
        }
        // C6 `\s*[\r\n]`: ends after the run's last newline.
        if let Some(e) = run.last_newline_end {
            return e;
        }
        return run.without_newline_end(s.len());
    }
    i + n
}

/// End of the run of characters from `i` whose class satisfies `keep`.
#[inline]
fn run_while(s: &[u8], t: &str, mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while let Some((_, n, k)) = at(s, t, i) {
        if !keep(k) {
            break;
        }
        i += n;
    }
    i
}

/// `\p{N}{1,max}` (A3 / C3; Qwen 2's single `\p{N}`) over ASCII digits: no earlier
/// alternative can start with a digit (it is neither a letter nor a word's prefix). `None`
/// when a non-ASCII character could be the next digit.
#[inline]
fn ascii_digits(s: &[u8], i: usize, max: usize) -> Option<usize> {
    if !s.get(i)?.is_ascii_digit() {
        return None;
    }
    let mut j = i + 1;
    while j < i + max {
        match s.get(j) {
            Some(b) if b.is_ascii_digit() => j += 1,
            Some(&b) if b >= 0x80 => return None,
            _ => break,
        }
    }
    Some(j)
}

/// `\p{N}{1,3}` after the first digit (ending at `i`).
fn digits(s: &[u8], t: &str, mut i: usize) -> usize {
    for _ in 0..2 {
        match at(s, t, i) {
            Some((_, n, k)) if k & NUM != 0 => i += n,
            _ => break,
        }
    }
    i
}

/// A1's body from `i`: `U*W+` then an optional contraction.
///
/// `U*` takes the maximal run of U characters. If the next character is W, `W+` runs on
/// from there. Otherwise `U*` gives back characters until a W character can start `W+`:
/// the last W character inside the run (Lm, Lo and marks are both U and W); `W+` then stops
/// right after it, since what follows is U-but-not-W or the end of the run.
fn letters_a1(s: &[u8], t: &str, i: usize) -> Option<usize> {
    let mut j = i;
    let mut last_w_end = None;
    while let Some((_, n, k)) = at(s, t, j) {
        if k & UPPERISH == 0 {
            break;
        }
        j += n;
        if k & LOWERISH != 0 {
            last_w_end = Some(j);
        }
    }
    let end = match at(s, t, j) {
        Some((_, n, k)) if k & LOWERISH != 0 => run_while(s, t, j + n, |k| k & LOWERISH != 0),
        _ => last_w_end?,
    };
    Some(contraction(s, t, end))
}

/// A2's body from `i`: `U+W*` then an optional contraction; all greedy, no give-back needed.
fn letters_a2(s: &[u8], t: &str, i: usize) -> Option<usize> {
    let j = run_while(s, t, i, |k| k & UPPERISH != 0);
    if j == i {
        return None;
    }
    let end = run_while(s, t, j, |k| k & LOWERISH != 0);
    Some(contraction(s, t, end))
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `i`: its end, or `i` when absent.
fn contraction(s: &[u8], t: &str, i: usize) -> usize {
    if s.get(i) != Some(&b'\'') {
        return i;
    }
    let Some((c1, n1, _)) = at(s, t, i + 1) else {
        return i;
    };
    if FOLD_S.contains(&c1) || FOLD_T.contains(&c1) || FOLD_M.contains(&c1) || FOLD_D.contains(&c1)
    {
        return i + 1 + n1;
    }
    let Some((c2, n2, _)) = at(s, t, i + 1 + n1) else {
        return i;
    };
    let pair = (FOLD_R.contains(&c1) && FOLD_E.contains(&c2))
        || (FOLD_V.contains(&c1) && FOLD_E.contains(&c2))
        || (FOLD_L.contains(&c1) && FOLD_L.contains(&c2));
    if pair {
        i + 1 + n1 + n2
    } else {
        i
    }
}

/// A4 / C4: ` ?[^\s\p{L}\p{N}]+` then `[\r\n/]*` (o200k) or `[\r\n]*` (cl100k).
/// With a leading space the punctuation must follow it; without, the space itself (being
/// whitespace) cannot start the run, so there is no second way to match.
fn punctuation(s: &[u8], t: &str, i: usize, c: char, slash: bool) -> Option<usize> {
    let start = if c == ' ' {
        match at(s, t, i + 1) {
            Some((_, _, k)) if is_punct(k) => i + 1,
            _ => return None,
        }
    } else if is_punct(class(c)) {
        i
    } else {
        return None;
    };
    let mut j = run_while(s, t, start, is_punct);
    while let Some(&b) = s.get(j) {
        if b == b'\r' || b == b'\n' || (slash && b == b'/') {
            j += 1;
        } else {
            break;
        }
    }
    Some(j)
}

struct WhitespaceRun {
    end: usize,
    /// Start of the run's last character.
    last_start: usize,
    chars: usize,
    last_newline_end: Option<usize>,
}

impl WhitespaceRun {
    /// `\s+(?!\S)` then `\s+` / `\s`: the whole run at the end of the text; otherwise all
    /// but its last character (which then starts the next piece, e.g. " word"); a single
    /// character alone.
    fn without_newline_end(&self, len: usize) -> usize {
        if self.end == len || self.chars < 2 {
            self.end
        } else {
            self.last_start
        }
    }
}

fn whitespace_run(s: &[u8], t: &str, i: usize) -> WhitespaceRun {
    let mut run = WhitespaceRun {
        end: i,
        last_start: i,
        chars: 0,
        last_newline_end: None,
    };
    while let Some((c, n, k)) = at(s, t, run.end) {
        if k & WS == 0 {
            break;
        }
        run.last_start = run.end;
        run.end += n;
        run.chars += 1;
        if c == '\r' || c == '\n' {
            run.last_newline_end = Some(run.end);
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, p: Pattern) -> Vec<&str> {
        Pieces::new(text, p).collect()
    }

    #[test]
    fn o200k_examples() {
        let p = Pattern::O200k;
        assert_eq!(cut("Hello world", p), ["Hello", " world"]);
        assert_eq!(cut("HELLO world", p), ["HELLO", " world"]);
        assert_eq!(cut("don't", p), ["don't"]);
        assert_eq!(cut("12345", p), ["123", "45"]);
        assert_eq!(cut("a  b", p), ["a", " ", " b"]);
        assert_eq!(cut("x\n\n  y", p), ["x", "\n\n", " ", " y"]);
        assert_eq!(cut("end  ", p), ["end", "  "]);
        assert_eq!(cut(" !!\n/x", p), [" !!\n/", "x"]);
        assert_eq!(cut("CamelCase", p), ["Camel", "Case"]);
    }

    #[test]
    fn cl100k_examples() {
        let p = Pattern::Cl100k;
        assert_eq!(cut("Hello world", p), ["Hello", " world"]);
        assert_eq!(cut("'s 'LL", p), ["'s", " '", "LL"]);
        assert_eq!(cut("x\n\n  ", p), ["x", "\n\n  "]);
        assert_eq!(cut("x \n y", p), ["x", " \n", " y"]);
    }

    #[test]
    fn pieces_cover_the_text() {
        let text = "Mixed: 中文, émoji 😀, ǅungla, 12345 and\r\n\ttabs…";
        for p in [Pattern::O200k, Pattern::Cl100k] {
            assert_eq!(cut(text, p).concat(), text);
        }
    }
}
