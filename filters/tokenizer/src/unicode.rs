//! Character classes of the pre-tokenizer patterns, one byte of flags per code point.

include!(concat!(env!("OUT_DIR"), "/unicode_classes.rs"));

pub(crate) const LU: u8 = 1;
pub(crate) const LT: u8 = 1 << 1;
pub(crate) const LL: u8 = 1 << 2;
pub(crate) const LM: u8 = 1 << 3;
pub(crate) const LO: u8 = 1 << 4;
/// `\p{M}`
pub(crate) const MARK: u8 = 1 << 5;
/// `\p{N}`
pub(crate) const NUM: u8 = 1 << 6;
/// `\s` (Unicode White_Space)
pub(crate) const WS: u8 = 1 << 7;
/// `\p{L}`
pub(crate) const LETTER: u8 = LU | LT | LL | LM | LO;
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
pub(crate) const UPPERISH: u8 = LU | LT | LM | LO | MARK;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
pub(crate) const LOWERISH: u8 = LL | LM | LO | MARK;

/// Flags of the ASCII characters: one load for the common case.
// Evaluated at compile time: an out-of-bounds index would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
static ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_uppercase() {
            LU
        } else if b.is_ascii_lowercase() {
            LL
        } else if b.is_ascii_digit() {
            NUM
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            WS
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Flags of `c`: one load for ASCII, two for the rest; no search.
#[inline]
pub(crate) fn class(c: char) -> u8 {
    let cp = c as u32;
    if let Some(&k) = ASCII.get(cp as usize) {
        return k;
    }
    let block = BLOCK_INDEX
        .get((cp >> BLOCK_SHIFT) as usize)
        .copied()
        .unwrap_or(0) as usize;
    BLOCKS
        .get((block << BLOCK_SHIFT) | (cp as usize & ((1 << BLOCK_SHIFT) - 1)))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        assert_eq!(class('A'), LU);
        assert_eq!(class('a'), LL);
        assert_eq!(class('ǅ'), LT);
        assert_eq!(class('ʰ'), LM);
        assert_eq!(class('中'), LO);
        assert_eq!(class('\u{301}'), MARK);
        assert_eq!(class('7'), NUM);
        assert_eq!(class('½'), NUM);
        for ws in [
            ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{3000}',
        ] {
            assert_eq!(class(ws), WS, "{:?}", ws);
        }
        assert_eq!(class('!'), 0);
        assert_eq!(class('😀'), 0);
        assert!(FOLD_S.contains(&'\u{17f}'), "long s folds to s");
    }

    #[test]
    fn ascii_table_matches_the_unicode_table() {
        for b in 0u8..128 {
            let cp = u32::from(b);
            let block = BLOCK_INDEX[(cp >> BLOCK_SHIFT) as usize] as usize;
            let from_table = BLOCKS[(block << BLOCK_SHIFT) | b as usize];
            assert_eq!(ASCII[b as usize], from_table, "{b:#x}");
        }
    }
}
