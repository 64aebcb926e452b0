//! Small textual JSON edits that keep the rest of a document byte for byte.

/// Remove the top-level member `key` of a JSON object whose value is exactly `null`
/// (`"usage":null` in OpenAI stream chunks), with its comma. `None` when there is no such
/// member. Strings are skipped properly, so a key inside a string or a nested object is
/// never touched.
pub fn remove_top_level_null_member(json: &[u8], key: &str) -> Option<Vec<u8>> {
    let mut depth = 0usize;
    let mut i = 0;
    // Start of the last top-level member (after `{` or `,`) and the comma before it.
    let mut member_start = None;
    let mut comma_before = None;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let start = i;
                i = closing_quote(json, i);
                let end = i + 1; // after the closing quote
                if depth == 1 && json.get(start + 1..i) == Some(key.as_bytes()) {
                    let mut j = end;
                    let skip_ws = |j: &mut usize| {
                        while json.get(*j).is_some_and(u8::is_ascii_whitespace) {
                            *j += 1;
                        }
                    };
                    skip_ws(&mut j);
                    if json.get(j) == Some(&b':') {
                        j += 1;
                        skip_ws(&mut j);
                        if json.get(j..j + 4) == Some(b"null") {
                            j += 4;
                            skip_ws(&mut j);
                            let from = member_start.unwrap_or(start);
                            let mut out = Vec::with_capacity(json.len());
                            match (json.get(j), comma_before) {
                                // `, "usage": null` at the end or middle: drop the comma before.
                                (_, Some(c)) => {
                                    out.extend_from_slice(json.get(..c)?);
                                    out.extend_from_slice(json.get(j..)?);
                                }
                                // first member: drop the comma after it.
                                (Some(b','), None) => {
                                    out.extend_from_slice(json.get(..from)?);
                                    let mut k = j + 1;
                                    skip_ws(&mut k);
                                    out.extend_from_slice(json.get(k..)?);
                                }
                                // the only member.
                                _ => {
                                    out.extend_from_slice(json.get(..from)?);
                                    out.extend_from_slice(json.get(j..)?);
                                }
                            }
                            return Some(out);
                        }
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    member_start = Some(i + 1);
                    comma_before = None;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                comma_before = Some(i);
                member_start = Some(i + 1);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index of the `"` that closes the string opening at `open` (escapes skipped), or the
/// length of `json` when it never closes.
fn closing_quote(json: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(&c) = json.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    json.len()
}

/// Replace the string value of the top-level member `key` (`"model": "a"` → `"model": "b"`),
/// leaving every other byte as it was. `None` when there is no such member with a string
/// value. The new value is JSON-escaped here.
pub fn replace_top_level_string(json: &[u8], key: &str, value: &str) -> Option<Vec<u8>> {
    let mut depth = 0usize;
    let mut i = 0;
    // The last top-level token was a member key (so a string now is its value).
    let mut after_key = false;
    let mut key_matches = false;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let start = i;
                i = closing_quote(json, i);
                if depth == 1 {
                    if after_key {
                        if key_matches {
                            let encoded = serde_json::to_string(value).ok()?;
                            let mut out = Vec::with_capacity(json.len() + encoded.len());
                            out.extend_from_slice(json.get(..start)?);
                            out.extend_from_slice(encoded.as_bytes());
                            out.extend_from_slice(json.get(i + 1..)?);
                            return Some(out);
                        }
                        after_key = false;
                    } else {
                        key_matches = json.get(start + 1..i) == Some(key.as_bytes());
                        after_key = true;
                        // The ':' and whitespace follow; the next token is the value.
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 2 {
                    after_key = false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => after_key = false,
            b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if depth == 1 => after_key = false, // a number, true, false, null
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(s: &str, v: &str) -> Option<String> {
        replace_top_level_string(s.as_bytes(), "model", v).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn replaces_only_the_top_level_string_member() {
        assert_eq!(
            model(r#"{"model":"a","messages":[]}"#, "b").as_deref(),
            Some(r#"{"model":"b","messages":[]}"#)
        );
        assert_eq!(
            model(
                r#"{ "x": {"model":"no"}, "s":"model", "model" : "a\"q" }"#,
                "m/\"1"
            )
            .as_deref(),
            Some(r#"{ "x": {"model":"no"}, "s":"model", "model" : "m/\"1" }"#)
        );
        assert_eq!(model(r#"{"model":7}"#, "b"), None);
        assert_eq!(model(r#"{"m":"model"}"#, "b"), None);
        assert_eq!(model(r#"{"a":["model","x"]}"#, "b"), None);
        assert_eq!(
            model(r#"{"a":1,"model":"x"}"#, "b").as_deref(),
            Some(r#"{"a":1,"model":"b"}"#)
        );
    }

    fn rm(s: &str) -> Option<String> {
        remove_top_level_null_member(s.as_bytes(), "usage").map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn removes_only_the_top_level_null_member() {
        assert_eq!(
            rm(r#"{"id":"x","usage":null}"#).as_deref(),
            Some(r#"{"id":"x"}"#)
        );
        assert_eq!(
            rm(r#"{"usage":null,"id":"x"}"#).as_deref(),
            Some(r#"{"id":"x"}"#)
        );
        assert_eq!(
            rm(r#"{"a":1, "usage" : null , "b":2}"#).as_deref(),
            Some(r#"{"a":1, "b":2}"#)
        );
        assert_eq!(rm(r#"{"usage":null}"#).as_deref(), Some("{}"));
        assert_eq!(rm(r#"{"usage":{"total_tokens":3}}"#), None);
        assert_eq!(rm(r#"{"c":"\"usage\":null","d":{"usage":null}}"#), None);
        assert_eq!(rm(r#"{"choices":[{"usage":null}],"x":1}"#), None);
        for s in [r#"{"id":"x","usage":null}"#, r#"{"usage":null,"id":"x"}"#] {
            let v: serde_json::Value = serde_json::from_str(&rm(s).unwrap()).unwrap();
            assert!(v.get("usage").is_none());
        }
    }
}
