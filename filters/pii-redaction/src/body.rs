//! Whole JSON bodies: the request the client sent, and non-streamed responses.

use crate::config::{Api, PathStep, Settings, Unscannable};
use crate::redact::{find, redact_text, Blocked, Direction, Finding, Redactor};
use serde_json::Value;
use sluice_common::json::for_each_string_at;
use sluice_common::memo::{MemoLimits, TextMemo};
use sluice_common::{ErrorKind, OpenAiError};

pub(crate) fn steps(path: &str) -> impl Iterator<Item = PathStep> + '_ {
    path.split('.').map(|s| match s {
        "*" => PathStep::Each,
        k => PathStep::Key(k.to_string()),
    })
}

/// Call `f` on every string at `path` under `v`.
pub(crate) fn visit<E>(
    v: &mut Value,
    path: &[PathStep],
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    let Some((step, rest)) = path.split_first() else {
        if let Value::String(s) = v {
            f(s)?;
        }
        return Ok(());
    };
    match (step, v) {
        (PathStep::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get_mut(k) {
                visit(child, rest, f)?;
            }
        }
        (PathStep::Each, Value::Array(items)) => {
            for child in items {
                visit(child, rest, f)?;
            }
        }
        (PathStep::Each, Value::Object(m)) => {
            for child in m.values_mut() {
                visit(child, rest, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why a body was not scanned (published in `sluice_pii` as `unscanned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotScanned {
    NotJson,
    TooLarge,
}

impl NotScanned {
    pub fn as_str(self) -> &'static str {
        match self {
            NotScanned::NotJson => "not_json",
            NotScanned::TooLarge => "too_large",
        }
    }
}

/// What becomes of a request body.
#[derive(Debug, PartialEq)]
pub enum RequestOutcome {
    /// Nothing found: forward as it is.
    Unchanged,
    /// Forward this body instead.
    Rewritten(Vec<u8>),
    /// Answer the client with this error; nothing goes upstream.
    Refused(OpenAiError),
    /// Could not be scanned, and the configuration says block: answer with this error.
    RefusedUnscanned(OpenAiError, NotScanned),
    /// Could not be scanned, and the configuration says pass.
    Passed(NotScanned),
}

fn rewrite(
    s: &Settings,
    r: &mut Redactor,
    v: &mut Value,
    paths: impl Iterator<Item = Vec<PathStep>>,
    dir: Direction,
) -> Result<Rewrite, Blocked> {
    let mut changed = false;
    let mut strings = 0;
    let mut scratch: Vec<Finding> = Vec::new();
    let may_block = dir == Direction::Request;
    for path in paths {
        visit(v, &path, &mut |text: &mut String| {
            strings += 1;
            if let Some(new) = redact_text(s, r, text, dir, may_block, &mut scratch)? {
                *text = new;
                changed = true;
            }
            Ok(())
        })?;
    }
    Ok(Rewrite { changed, strings })
}

/// What [`rewrite`] did: whether a string changed, and how many it read.
struct Rewrite {
    changed: bool,
    strings: usize,
}

impl Rewrite {
    /// Whether the tree, not the body, goes on: a string changed, or the body had strings
    /// the tree does not (`in_place`: how many the in-place read saw; more only where a
    /// member was given twice and the tree kept the last: an engine may read the first).
    fn tree_goes(&self, in_place: Option<usize>) -> bool {
        self.changed || in_place.is_some_and(|n| n != self.strings)
    }
}

/// The outcome for a body that cannot be scanned, per `on_unscannable`.
pub fn unscannable(s: &Settings, why: NotScanned) -> RequestOutcome {
    match (s.on_unscannable, why) {
        (Unscannable::Pass, _) => RequestOutcome::Passed(why),
        (Unscannable::Block, NotScanned::TooLarge) => RequestOutcome::RefusedUnscanned(
            OpenAiError::new(
                ErrorKind::PayloadTooLarge,
                "The request body is too large to be checked for personal data.",
            ),
            why,
        ),
        (Unscannable::Block, NotScanned::NotJson) => RequestOutcome::RefusedUnscanned(
            OpenAiError::new(
                ErrorKind::InvalidRequest,
                "The request body is not valid JSON.",
            ),
            why,
        ),
    }
}

/// The body's strings at `paths` and `fields` read in place (no tree): whether one has a
/// finding, and how many there are. `None` when the body cannot be read so (not UTF-8, not
/// a JSON object), for the tree's walk to decide. Every member of a name given twice is
/// read (a tree keeps only the last; the body goes on as sent when nothing is found).
/// A string `clean` remembers is not scanned again; one found clean is remembered there.
fn read_in_place(
    s: &Settings,
    paths: &[&str],
    fields: &[String],
    body: &[u8],
    mut clean: Option<&mut CleanTexts>,
) -> Option<InPlace> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let mut scratch: Vec<Finding> = Vec::new();
    let mut read = InPlace::default();
    let mut each = |t: &str| {
        read.strings += 1;
        if !read.found {
            let mut scan = |t: &str| {
                find(s, t, 0, &mut scratch);
                scratch.is_empty()
            };
            read.found = !match clean.as_deref_mut() {
                Some(memo) => memo.clean(t, scan),
                None => scan(t),
            };
        }
        true
    };
    let all: Vec<&str> = paths
        .iter()
        .copied()
        .chain(fields.iter().map(String::as_str))
        .collect();
    for_each_string_at(text, &all, &mut each).ok()?;
    Some(read)
}

#[derive(Debug, Default)]
struct InPlace {
    found: bool,
    strings: usize,
}

/// Texts requests carried lately in which nothing was found, under one configuration:
/// every turn of a conversation resends its history and a tenant's system prompt comes with
/// each request, so each is scanned once while it keeps coming (exact: the memo compares
/// whole texts; a text with a finding is never remembered, and is scanned every time).
pub struct CleanTexts(TextMemo<()>);

impl Default for CleanTexts {
    fn default() -> Self {
        Self(TextMemo::new(MemoLimits::REQUEST_TEXTS))
    }
}

impl CleanTexts {
    /// Whether `text` is clean: remembered so, or `scan` finds it so now (and it is
    /// remembered).
    fn clean(&mut self, text: &str, scan: impl FnOnce(&str) -> bool) -> bool {
        self.0
            .get_or_insert_if(text, |t| scan(t).then_some(()))
            .is_some()
    }
}

/// Scan a request body of `api`: its messages / prompt and the configured extra fields,
/// the texts in `clean` skipped.
pub fn scan_request(
    s: &Settings,
    r: &mut Redactor,
    api: Api,
    body: &[u8],
    clean: Option<&mut CleanTexts>,
) -> RequestOutcome {
    if body.len() > s.max_body_bytes {
        return unscannable(s, NotScanned::TooLarge);
    }
    // Most requests carry nothing to redact: their strings are read in place, and the
    // tree (allocated member by member, about half the filter's work on a 2 KB chat) is
    // built only to rewrite one that has a finding.
    match read_in_place(
        s,
        api.request_text_paths(),
        &s.request_field_paths,
        body,
        clean,
    ) {
        Some(InPlace { found: false, .. }) => RequestOutcome::Unchanged,
        read => scan_tree(s, r, api, body, read.map(|r| r.strings)),
    }
}

/// Scan a request body as a tree, rewriting what has findings. `in_place`: how many
/// strings the in-place read saw, when it ran.
fn scan_tree(
    s: &Settings,
    r: &mut Redactor,
    api: Api,
    body: &[u8],
    in_place: Option<usize>,
) -> RequestOutcome {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return unscannable(s, NotScanned::NotJson);
    };
    if !v.is_object() {
        return unscannable(s, NotScanned::NotJson);
    }
    // The request model lists the prompt text of every API.
    let fixed = api.request_text_paths();
    let paths = fixed
        .iter()
        .map(|p| steps(p).collect())
        .chain(s.request_fields.iter().cloned());
    match rewrite(s, r, &mut v, paths, Direction::Request) {
        Err(b) => RequestOutcome::Refused(OpenAiError::new(
            ErrorKind::Permission,
            format!(
                "The request was blocked: it contains {} data, which this gateway does not send to models.",
                b.entity
            ),
        )),
        Ok(w) if !w.tree_goes(in_place) => RequestOutcome::Unchanged,
        Ok(_) => match serde_json::to_vec(&v) {
            Ok(bytes) => RequestOutcome::Rewritten(bytes),
            // Serializing a Value cannot fail; if it did, nothing unredacted may pass.
            Err(_) => RequestOutcome::Refused(OpenAiError::new(
                ErrorKind::Unavailable,
                "The request could not be redacted.",
            )),
        },
    }
}

/// A non-streamed response body, redacted; `None` when unchanged (or not JSON: a response
/// that has started cannot be refused, and an error body from the backend has no text).
pub fn redact_response(s: &Settings, r: &mut Redactor, api: Api, body: &[u8]) -> Option<Vec<u8>> {
    // Embeddings and token counts: no text comes back.
    let fixed = api.response_text_paths();
    if fixed.is_empty() {
        return None;
    }
    // As for requests: the tree only to rewrite.
    let read = read_in_place(s, fixed, &[], body, None);
    if read.as_ref().is_some_and(|r| !r.found) {
        return None;
    }
    let mut v = serde_json::from_slice::<Value>(body).ok()?;
    let changed = rewrite(
        s,
        r,
        &mut v,
        fixed.iter().map(|p| steps(p).collect()),
        Direction::Response,
    )
    .ok()?;
    changed
        .tree_goes(read.map(|r| r.strings))
        .then(|| serde_json::to_vec(&v).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiConfig;
    use serde_json::json;

    fn settings(json: &str) -> Settings {
        Settings::new(sluice_common::parse_config::<PiiConfig>(json.as_bytes()).unwrap()).unwrap()
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn rewritten(o: RequestOutcome) -> Value {
        match o {
            RequestOutcome::Rewritten(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("not rewritten: {other:?}"),
        }
    }

    #[test]
    fn chat_messages_parts_and_tool_arguments() {
        let s = settings(r#"{"request_fields": ["metadata.note"]}"#);
        let mut r = Redactor::default();
        let req = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "I am jo@x.io"},
                {"role": "user", "content": [{"type": "text", "text": "again jo@x.io"},
                                              {"type": "image_url", "image_url": {"url": "http://a@b.io"}}]},
                {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"ip\":\"10.0.0.1\"}"}}]}
            ],
            "metadata": {"note": "call +1 415 555 2671"},
            "user": "kept@x.io"
        });
        let v = rewritten(scan_request(&s, &mut r, Api::Chat, &body(req), None));
        assert_eq!(v["messages"][0]["content"], "be brief");
        assert_eq!(v["messages"][1]["content"], "I am [EMAIL_1]");
        assert_eq!(v["messages"][2]["content"][0]["text"], "again [EMAIL_1]");
        assert_eq!(
            v["messages"][2]["content"][1]["image_url"]["url"],
            "http://a@b.io"
        );
        assert_eq!(
            v["messages"][3]["tool_calls"][0]["function"]["arguments"],
            "{\"ip\":\"[IPV4_1]\"}"
        );
        assert_eq!(v["metadata"]["note"], "call [PHONE_1]");
        assert_eq!(v["user"], "kept@x.io", "only the configured fields");
        assert_eq!(
            r.report(None),
            r#"{"request":{"email":{"redact":2},"ipv4":{"redact":1},"phone":{"redact":1}}}"#
        );
    }

    #[test]
    fn a_member_given_twice_is_scanned_both_times() {
        let s = settings("{}");
        // A tree keeps the last `messages`; an engine may read the first.
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "mail a@x.io"}],
            "messages": [{"role": "user", "content": "hi"}]}"#;
        let out = scan_request(&s, &mut Redactor::default(), Api::Chat, body, None);
        let RequestOutcome::Rewritten(b) = out else {
            panic!("{out:?}")
        };
        let text = String::from_utf8(b).unwrap();
        assert!(
            !text.contains("a@x.io") && text.matches("messages").count() == 1,
            "{text}"
        );
        // Nothing in either: the body goes as it is.
        let clean =
            br#"{"model": "m", "messages": [], "messages": [{"role": "user", "content": "hi"}]}"#;
        assert_eq!(
            scan_request(&s, &mut Redactor::default(), Api::Chat, clean, None),
            RequestOutcome::Unchanged
        );
    }

    proptest::proptest! {
        /// A memo of clean texts kept across a conversation's turns (each resending the
        /// history, some texts long enough to be remembered, some with personal data)
        /// changes no outcome: each turn as the tree's walk alone decides it.
        #[test]
        fn remembering_clean_texts_changes_no_outcome(
            turns in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z ]{60,90}",
                    "[a-z ]{60,70} [a-z]{1,5}@[a-z]{1,4}\\.io",
                    "[a-z ]{0,10}",
                    "call 555-867-5309 now [a-z ]{50,60}",
                ],
                1..8,
            ),
        ) {
            let s = settings("{}");
            let mut clean = CleanTexts::default();
            let mut messages = Vec::new();
            for text in &turns {
                messages.push(json!({"role": "user", "content": text}));
                let b = body(json!({"model": "m", "messages": messages}));
                let remembered = scan_request(&s, &mut Redactor::default(), Api::Chat, &b, Some(&mut clean));
                let tree = scan_tree(&s, &mut Redactor::default(), Api::Chat, &b, None);
                proptest::prop_assert_eq!(remembered, tree);
            }
        }
    }

    proptest::proptest! {
        /// Reading in place first changes no outcome: the same as the tree's walk alone, on
        /// chats with and without personal data, escapes, parts and extra members.
        #[test]
        fn the_in_place_read_agrees_with_the_tree(
            contents in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z ]{0,12}",
                    "[a-z]{1,5}@[a-z]{1,4}\\.io",
                    "4111 1111 1111 1111",
                    "[a-z\"\\\\é\n]{0,8}",
                    "call 555-867-5309 now",
                ],
                0..4,
            ),
            parts in proptest::bool::ANY,
            extra in proptest::bool::ANY,
        ) {
            let s = settings(r#"{"request_fields": ["metadata.notes"]}"#);
            let messages: Vec<Value> = contents
                .iter()
                .map(|c| if parts {
                    json!({"role": "user", "content": [{"type": "text", "text": c}]})
                } else {
                    json!({"role": "user", "content": c})
                })
                .collect();
            let mut v = json!({"model": "m", "messages": messages});
            if extra {
                v["metadata"] = json!({"notes": contents.join(" "), "n": 3});
            }
            let b = body(v);
            let fast = scan_request(&s, &mut Redactor::default(), Api::Chat, &b, None);
            let tree = scan_tree(&s, &mut Redactor::default(), Api::Chat, &b, None);
            proptest::prop_assert_eq!(fast, tree);
        }
    }

    #[test]
    fn completions_prompts() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let v = rewritten(scan_request(
            &s,
            &mut r,
            Api::Completions,
            &body(json!({"model": "m", "prompt": ["a 123-45-6789", "b"]})),
            None,
        ));
        assert_eq!(v["prompt"], json!(["a [SSN_1]", "b"]));
        let clean = body(json!({"model": "m", "prompt": "hello"}));
        assert_eq!(
            scan_request(&s, &mut r, Api::Completions, &clean, None),
            RequestOutcome::Unchanged
        );
    }

    #[test]
    fn embeddings_inputs() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let v = rewritten(scan_request(
            &s,
            &mut r,
            Api::Embeddings,
            &body(json!({"model": "e", "input": ["a@b.io", "plain"]})),
            None,
        ));
        assert_eq!(v["input"], json!(["[EMAIL_1]", "plain"]));
        assert_eq!(
            redact_response(&s, &mut r, Api::Embeddings, b"{\"data\":[]}"),
            None
        );
    }

    #[test]
    fn block_and_unscannable() {
        let s = settings(r#"{"entities": {"private_key": "block"}, "max_body_bytes": 200}"#);
        let mut r = Redactor::default();
        let req = body(json!({"messages": [{"role": "user",
            "content": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"}]}));
        match scan_request(&s, &mut r, Api::Chat, &req, None) {
            RequestOutcome::Refused(e) => {
                assert_eq!(e.status(), 403);
                assert!(e.body().contains("private_key") && !e.body().contains("MIIB"));
            }
            other => panic!("{other:?}"),
        }
        let RequestOutcome::RefusedUnscanned(e, NotScanned::NotJson) =
            scan_request(&s, &mut r, Api::Chat, b"not json", None)
        else {
            panic!()
        };
        assert_eq!(e.status(), 400);
        let big = vec![b' '; 201];
        let RequestOutcome::RefusedUnscanned(e, NotScanned::TooLarge) =
            scan_request(&s, &mut r, Api::Chat, &big, None)
        else {
            panic!()
        };
        assert_eq!(e.status(), 413);
        let pass = settings(r#"{"on_unscannable": "pass"}"#);
        assert_eq!(
            scan_request(&pass, &mut r, Api::Chat, b"[1]", None),
            RequestOutcome::Passed(NotScanned::NotJson)
        );
    }

    #[test]
    fn json_responses() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let resp = body(
            json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": "write to jo@x.io"}}], "usage": {"prompt_tokens": 1}}),
        );
        let out: Value =
            serde_json::from_slice(&redact_response(&s, &mut r, Api::Chat, &resp).unwrap())
                .unwrap();
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "write to [EMAIL_1]"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 1);
        let resp = body(json!({"choices": [{"text": "fine"}]}));
        assert_eq!(redact_response(&s, &mut r, Api::Completions, &resp), None);
        assert_eq!(redact_response(&s, &mut r, Api::Chat, b"oops"), None);
    }
}
