//! Model-name globs: `*` matches any run of characters, `?` exactly one; nothing else is
//! special. Used for per-key model allow-lists and per-model settings.

/// Whether `name` matches `pattern`. Linear time (no backtracking blow-up).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Position after the last `*` and the name position it was tried at.
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
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
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
}
