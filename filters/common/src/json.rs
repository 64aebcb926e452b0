//! Small textual JSON edits that keep the rest of a document byte for byte, and reading
//! strings in place.

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use smallvec::SmallVec;
use std::borrow::Cow;

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

/// Call `f` on every string at any of the dotted `paths` of the JSON document `doc` (steps:
/// a member's name, or `*` for every element of an array or member of an object), in one
/// pass for all the paths that builds no tree and copies no string without escapes;
/// whatever is off the paths is skipped (its syntax still checked). Strings come in the
/// document's order, once for each path that reaches them. Every member of a name is
/// visited (a document with a name twice has both read, where a tree keeps the last). `f`
/// returns `false` to stop calling it; the result is whether it was never stopped, or the
/// document's syntax error.
pub fn for_each_string_at(
    doc: &str,
    paths: &[&str],
    f: &mut dyn FnMut(&str) -> bool,
) -> Result<bool, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(doc);
    let going = Node { rests: paths, f }.deserialize(&mut de)?;
    de.end()?;
    Ok(going)
}

/// What is left of a dotted path after a member named `key` (`None`: an array's element),
/// if its first step goes there: a step is a member's name, or `*` for any. Compared in
/// place: cutting the path at its first dot for every member of the document took a
/// `memchr` per path and member, about a fifth of the walk of a 2 KB chat.
fn step_into<'s>(path: &'s str, key: Option<&str>) -> Option<&'s str> {
    let after = |rest: &'s str| match rest.as_bytes().first() {
        None => Some(""),
        Some(b'.') => rest.get(1..),
        Some(_) => None,
    };
    // A step has no dot, so a name with one is no step's (checked only on a match).
    key.and_then(|k| path.strip_prefix(k).filter(|_| !k.contains('.')))
        .and_then(after)
        .or_else(|| path.strip_prefix('*').and_then(after))
}

/// What is left of each path at one value: its remaining steps, empty for a path that
/// ends there. On the stack for the few paths a walk follows.
type Rests<'s> = SmallVec<[&'s str; 6]>;

/// What is left of [`for_each_string_at`]'s paths at one value.
struct Node<'r, 's, 'f> {
    rests: &'r [&'s str],
    f: &'f mut dyn FnMut(&str) -> bool,
}

impl<'s> Node<'_, 's, '_> {
    /// The paths that go on into a member named `key` (`None`: an array's element).
    fn paths_into(&self, key: Option<&str>) -> Rests<'s> {
        let mut into = Rests::new();
        for p in self.rests.iter().filter(|p| !p.is_empty()) {
            if let Some(rest) = step_into(p, key) {
                into.push(rest);
            }
        }
        into
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, '_> {
    type Value = bool;

    fn expecting(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        out.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        for _ in self.rests.iter().filter(|p| p.is_empty()) {
            if !(self.f)(v) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut going = true;
        while let Some(key) = map.next_key::<MemberName<'de>>()? {
            let rests = if going {
                self.paths_into(Some(&key.0))
            } else {
                Rests::new()
            };
            if rests.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                going = map.next_value_seed(Node {
                    rests: &rests,
                    f: &mut *self.f,
                })?;
            }
        }
        Ok(going)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let rests = self.paths_into(None);
        let mut going = true;
        if !rests.is_empty() {
            while going {
                match seq.next_element_seed(Node {
                    rests: &rests,
                    f: &mut *self.f,
                })? {
                    Some(g) => going = g,
                    None => return Ok(true),
                }
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(going)
    }

    // Other values hold no string.
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(true)
    }
}

/// A member's name: borrowed from the document unless it has escapes.
struct MemberName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = MemberName<'de>;
            fn expecting(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
                out.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

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

    fn walk(doc: &str, path: &str) -> Result<Vec<String>, serde_json::Error> {
        walk_all(doc, &[path])
    }

    fn walk_all(doc: &str, paths: &[&str]) -> Result<Vec<String>, serde_json::Error> {
        let mut out = Vec::new();
        for_each_string_at(doc, paths, &mut |s| {
            out.push(s.to_string());
            true
        })?;
        Ok(out)
    }

    #[test]
    fn strings_at_a_path_in_place() {
        let doc = json!({"model": "m", "messages": [
            {"role": "user", "content": "a\u{e9}\"b"},
            {"role": "user", "content": [{"type": "text", "text": "t1"}, {"type": "image_url"}]},
            "not an object", 7, null
        ], "metadata": {"x": "v1", "y": {"z": "deep"}}})
        .to_string();
        assert_eq!(walk(&doc, "messages.*.content").unwrap(), ["a\u{e9}\"b"]);
        assert_eq!(walk(&doc, "messages.*.content.*.text").unwrap(), ["t1"]);
        assert_eq!(walk(&doc, "metadata.*").unwrap(), ["v1"]);
        assert_eq!(walk(&doc, "model").unwrap(), ["m"]);
        assert!(walk(&doc, "absent.*").unwrap().is_empty());
        // Escapes are decoded; a name given twice is read twice (a tree keeps the last).
        assert_eq!(
            walk(r#"{"p": "\u0041b", "p": "second"}"#, "p").unwrap(),
            ["Ab", "second"]
        );
        // Not JSON anywhere in the document, on the path or not: an error.
        assert!(walk(r#"{"p": "a", "q": [1, }"#, "p").is_err());
        assert!(walk(r#"{"p": "a"} x"#, "p").is_err());
        // Stopping early.
        let mut seen = 0;
        let ran = for_each_string_at(&doc, &["metadata.*"], &mut |_| {
            seen += 1;
            false
        })
        .unwrap();
        assert_eq!((ran, seen), (false, 1));
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-c\"\\\\é\u{1F600} ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[abc*.]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The same strings, in the same order, as the tree walk (`api::strings_at`).
        #[test]
        fn agrees_with_the_tree_walk(v in value(), path in "[abc*]{1,2}(\\.[abc*]{1,2}){0,3}") {
            let mut tree = Vec::new();
            crate::api::strings_at(&v, &path, &mut tree);
            let in_place = walk(&v.to_string(), &path).unwrap();
            prop_assert_eq!(in_place, tree);
        }

        /// Several paths in one pass: the strings each path's walk gives, every one of
        /// them (a string on two paths twice).
        #[test]
        fn several_paths_in_one_pass(
            v in value(),
            paths in prop::collection::vec("[abc*]{1,2}(\\.[abc*]{1,2}){0,3}", 0..4),
        ) {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let mut each = Vec::new();
            for p in &paths {
                crate::api::strings_at(&v, p, &mut each);
            }
            let mut at_once = walk_all(&v.to_string(), &paths).unwrap();
            each.sort();
            at_once.sort();
            prop_assert_eq!(at_once, each);
        }
    }
}
