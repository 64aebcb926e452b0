//! The request body last parsed into a tree on this thread, kept with its bytes, so that a
//! later filter of the chain reads the tree an earlier one built instead of parsing the
//! same bytes again. Envoy runs a stream's filters one after another on one worker thread
//! (and the wasm build runs the chain's filters in one VM on one thread), so the filter
//! after token-counter that asks for the tree of the body token-counter parsed finds it
//! here (response-cache, rate-limit's tokens stage).
//!
//! Exact, never a guess: the entry keeps the whole bytes, a lookup compares them in full,
//! and the tree is what `serde_json` parses those bytes to, whichever filter or request
//! parsed them; so a body a filter rewrote (other bytes) is parsed again, and nothing a
//! client sends can make a filter read another body's tree. Only a tree parsed from the
//! bytes is ever kept (a rewritten tree is not: a float written and read back may differ in
//! its last digit from the tree it was written from). One entry, of bodies up to
//! [`MAX_SHARED_BODY`]: what a thread holds is bounded by one body and its tree. Not a
//! [`crate::memo::TextMemo`]: the reader wants the body the filter before it just parsed,
//! so one entry compared in place does, where the memo would hash every body and keep many
//! trees; the comparison is the memo's (`memo::same_bytes`).

use crate::memo::same_bytes;
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;

/// Larger bodies are parsed by each filter that needs their tree, as before: a tree takes
/// several times its text's memory, and a thread keeps its entry until the next body.
pub const MAX_SHARED_BODY: usize = 256 * 1024;

struct Parsed {
    bytes: Vec<u8>,
    tree: Rc<Value>,
}

thread_local! {
    static LAST: RefCell<Option<Parsed>> = const { RefCell::new(None) };
}

/// The tree of `bytes`: the one kept for exactly these bytes, else parsed now (and kept,
/// when the body is small enough).
pub fn parsed_body(bytes: &[u8]) -> Result<Rc<Value>, serde_json::Error> {
    if let Some(tree) = known_body(bytes) {
        return Ok(tree);
    }
    let tree = Rc::new(serde_json::from_slice::<Value>(bytes)?);
    if bytes.len() <= MAX_SHARED_BODY {
        LAST.with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some(Parsed {
                    bytes: bytes.to_vec(),
                    tree: Rc::clone(&tree),
                });
            }
        });
    }
    Ok(tree)
}

/// The tree kept for exactly these bytes, when an earlier reader parsed them; never
/// parses (for readers that would rather scan the few fields they need than build a tree).
pub fn known_body(bytes: &[u8]) -> Option<Rc<Value>> {
    LAST.with(|last| {
        let last = last.try_borrow().ok()?;
        let parsed = last.as_ref()?;
        same_bytes(&parsed.bytes, bytes).then(|| Rc::clone(&parsed.tree))
    })
}

/// Let go of the kept tree: for a reader about to change the tree it was given (the only
/// holder then, it changes it in place instead of copying it).
pub fn forget_body() {
    LAST.with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = None;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_give_the_same_tree_and_other_bytes_their_own() {
        let a = br#"{"model":"a","messages":[]}"#;
        let b = br#"{"model":"b","messages":[]}"#;
        let first = parsed_body(a).unwrap();
        assert!(Rc::ptr_eq(&first, &parsed_body(a).unwrap()));
        assert!(Rc::ptr_eq(&first, &known_body(a).unwrap()));
        // One byte else: parsed again, and it is now the one kept.
        let other = parsed_body(b).unwrap();
        assert_eq!(other["model"], "b");
        assert!(known_body(a).is_none());
        assert!(Rc::ptr_eq(&other, &known_body(b).unwrap()));
        // A prefix or an extension of the kept bytes is not them.
        assert!(known_body(&b[..b.len() - 1]).is_none());
        assert!(known_body(&[b.as_slice(), b" "].concat()).is_none());
    }

    #[test]
    fn not_json_is_an_error_and_keeps_nothing() {
        let ok = br#"{"model":"m"}"#;
        parsed_body(ok).unwrap();
        assert!(parsed_body(b"{\"model\":").is_err());
        // The failed parse did not replace the kept tree with anything.
        assert!(known_body(ok).is_some());
        assert!(known_body(b"{\"model\":").is_none());
    }

    #[test]
    fn a_forgotten_tree_is_its_readers_own_to_change() {
        let body = br#"{"model":"m","stream":true}"#;
        let mut tree = parsed_body(body).unwrap();
        forget_body();
        assert!(known_body(body).is_none());
        // The only holder: changed in place, no copy.
        let before = Rc::as_ptr(&tree);
        Rc::make_mut(&mut tree)["stream"] = Value::Bool(false);
        assert_eq!(Rc::as_ptr(&tree), before);
    }

    #[test]
    fn a_large_body_is_parsed_but_not_kept() {
        let text = "x".repeat(MAX_SHARED_BODY);
        let body =
            serde_json::to_vec(&serde_json::json!({ "model": "m", "prompt": text })).unwrap();
        let tree = parsed_body(&body).unwrap();
        assert_eq!(tree["model"], "m");
        assert!(known_body(&body).is_none());
    }

    #[test]
    fn duplicate_members_read_as_a_fresh_parse_reads_them() {
        // The tree is serde_json's own parse of the bytes: a repeated member keeps the
        // last value, exactly as a filter parsing the body itself would see it.
        let body = br#"{"model":"a","model":"b"}"#;
        let fresh: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(*parsed_body(body).unwrap(), fresh);
        assert_eq!(*known_body(body).unwrap(), fresh);
    }
}
