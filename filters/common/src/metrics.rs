//! Metric names built from run-time values.

/// Longest label, in characters of the value.
const MAX_LABEL_CHARS: usize = 64;

/// A label value safe inside an Envoy stat name: tag-extraction regexes cut at dots, so
/// anything but `[A-Za-z0-9_-]` becomes `_`; at most 64 characters; `none` when empty.
///
/// Built a byte at a time (several labels name a request's counters, on every request): a
/// character of several bytes is its lead byte, which becomes one `_`, and continuation
/// bytes, which are skipped.
pub fn label(value: &str) -> String {
    if value.is_empty() {
        return "none".into();
    }
    let mut cleaned = String::with_capacity(value.len().min(MAX_LABEL_CHARS));
    let mut chars = 0;
    for &b in value.as_bytes() {
        if b & 0xC0 == 0x80 {
            continue; // inside a character already counted
        }
        if chars == MAX_LABEL_CHARS {
            break;
        }
        chars += 1;
        cleaned.push(if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            char::from(b)
        } else {
            '_'
        });
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The definition, a character at a time.
    fn label_by_chars(value: &str) -> String {
        let cleaned: String = value
            .chars()
            .take(super::MAX_LABEL_CHARS)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if cleaned.is_empty() {
            "none".into()
        } else {
            cleaned
        }
    }

    #[test]
    fn labels_are_stat_safe() {
        assert_eq!(super::label("llama-3.1-8b"), "llama-3_1-8b");
        assert_eq!(super::label(""), "none");
        assert_eq!(super::label("team a/b"), "team_a_b");
        assert_eq!(super::label("모델-é"), "__-_");
        assert_eq!(super::label(&"x".repeat(100)), "x".repeat(64));
    }

    proptest! {
        #[test]
        fn a_byte_at_a_time_is_the_definition(value in any::<String>(), ascii in "[ -~]{0,80}") {
            prop_assert_eq!(super::label(&value), label_by_chars(&value));
            prop_assert_eq!(super::label(&ascii), label_by_chars(&ascii));
            let long = format!("{ascii}{value}{ascii}");
            prop_assert_eq!(super::label(&long), label_by_chars(&long));
        }
    }
}
