//! Model-name globs: `*` matches any run of characters, `?` exactly one; nothing else is
//! special. Used for per-key model allow-lists and per-model settings.

/// Whether `name` matches `pattern`. Linear time (no backtracking blow-up), and no
/// allocation: both are walked in place by byte offset, a character at a time (this runs
/// for every configured glob on every request).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let next = |s: &str, at: usize| s.get(at..).and_then(|rest| rest.chars().next());
    let (mut pi, mut ni) = (0, 0);
    // Offset after the last `*`, and the name offset it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while let Some(nc) = next(name, ni) {
        match next(pattern, pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
            }
            Some(pc) if pc == '?' || pc == nc => {
                pi += pc.len_utf8();
                ni += nc.len_utf8();
            }
            _ => match star {
                Some((sp, sn)) => {
                    // The `*` takes one more character of the name.
                    let skipped = next(name, sn).map_or(1, char::len_utf8);
                    pi = sp;
                    ni = sn + skipped;
                    star = Some((sp, ni));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.chars().all(|c| c == '*'))
}

/// The first of `patterns` that `name` matches, with its index.
pub fn first_match<'a, S: AsRef<str>>(patterns: &'a [S], name: &str) -> Option<(usize, &'a S)> {
    patterns
        .iter()
        .enumerate()
        .find(|(_, p)| glob_match(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("gpt-4*", "gpt-4o", true),
            ("gpt-4*", "gpt-3.5", false),
            ("llama-3.?-8b", "llama-3.1-8b", true),
            ("llama-3.?-8b", "llama-3.10-8b", false),
            ("*-instruct", "qwen2-7b-instruct", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
        assert_eq!(first_match(&["a*", "*"], "bc").map(|(i, _)| i), Some(1));
    }

    #[test]
    fn no_exponential_blowup() {
        let name = "a".repeat(5000);
        assert!(glob_match("*a*a*a*a*a*a*a*a*", &name));
        assert!(!glob_match("*a*a*a*a*a*a*a*a*b", &name));
    }

    /// The matcher as first written (characters collected, then walked by index): the
    /// oracle for the in-place one.
    fn by_chars(pattern: &str, name: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let n: Vec<char> = name.chars().collect();
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                }
                Some(c) if *c == '?' || Some(c) == n.get(ni) => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        pi = sp;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }

    proptest::proptest! {
        /// Multi-byte characters included: `?` and `*` take whole characters.
        #[test]
        fn matches_as_the_character_walk_does(
            pattern in "[ab\u{e9}\u{4e2d}*?]{0,8}",
            name in "[ab\u{e9}\u{4e2d}]{0,10}",
        ) {
            proptest::prop_assert_eq!(glob_match(&pattern, &name), by_chars(&pattern, &name));
        }
    }
}
