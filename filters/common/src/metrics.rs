//! Metric names built from run-time values.

/// A label value safe inside an Envoy stat name: tag-extraction regexes cut at dots, so
/// anything but `[A-Za-z0-9_-]` becomes `_`; at most 64 characters; `none` when empty.
pub fn label(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .take(64)
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

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_stat_safe() {
        assert_eq!(super::label("llama-3.1-8b"), "llama-3_1-8b");
        assert_eq!(super::label(""), "none");
        assert_eq!(super::label("team a/b"), "team_a_b");
    }
}
