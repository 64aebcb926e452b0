//! Findings (built-in and custom) and what is done with them: placeholders numbered within a
//! request, masks, keyed pseudonyms, blocks; and the counts published as `sluice_pii`.

use crate::config::{Action, Settings, CONTEXT_WINDOW};
use crate::detect::{scan_after, Found};
use crate::entity::BuiltIn;
use std::collections::{BTreeMap, HashMap};

/// An entity type: built-in, or the index of a custom entity in the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    BuiltIn(BuiltIn),
    Custom(usize),
}

impl Kind {
    pub fn name(self, s: &Settings) -> &str {
        match self {
            Kind::BuiltIn(e) => e.name(),
            Kind::Custom(i) => s.custom.get(i).map_or("custom", |c| c.name.as_str()),
        }
    }

    fn label(self, s: &Settings) -> String {
        match self {
            Kind::BuiltIn(e) => e.name().to_ascii_uppercase(),
            Kind::Custom(i) => s
                .custom
                .get(i)
                .map_or_else(|| "CUSTOM".into(), |c| c.label.clone()),
        }
    }

    fn action(self, s: &Settings) -> Action {
        match self {
            Kind::BuiltIn(e) => s.action(e),
            Kind::Custom(i) => s.custom.get(i).map_or(Action::Redact, |c| c.action),
        }
    }
}

/// `text[start..end]` is an entity of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// Every enabled entity in `text` starting at or after `from`, in order, without overlaps
/// (on overlap the earlier start wins, then the longer match, then a custom entity).
pub fn find(s: &Settings, text: &str, from: usize, out: &mut Vec<Finding>) {
    find_after(s, text, from, 0, out);
}

/// [`find`], where a finding already ended at `floor` (see [`crate::detect::scan_after`]).
pub fn find_after(s: &Settings, text: &str, from: usize, floor: usize, out: &mut Vec<Finding>) {
    out.clear();
    let mut builtin: Vec<Found> = Vec::new();
    if !s.enabled.is_empty() {
        scan_after(text, from, floor, s.enabled, &mut builtin);
    }
    out.extend(builtin.iter().map(|f| Finding {
        start: f.start,
        end: f.end,
        kind: Kind::BuiltIn(f.entity),
    }));
    let before = out.len();
    for (i, c) in s.custom.iter().enumerate() {
        if c.action == Action::Allow {
            continue;
        }
        for m in c.regex.find_iter(text) {
            if m.start() < from || m.is_empty() {
                continue;
            }
            if !c.context.is_empty() && !has_context(text, m.start(), m.end(), &c.context) {
                continue;
            }
            out.push(Finding {
                start: m.start(),
                end: m.end(),
                kind: Kind::Custom(i),
            });
        }
    }
    if out.len() > before {
        // A custom entity wins a tie: the operator defined it for exactly this text.
        out.sort_by_key(|f| {
            (
                f.start,
                usize::MAX - f.end,
                matches!(f.kind, Kind::BuiltIn(_)),
            )
        });
        let mut last_end = 0;
        out.retain(|f| {
            let keep = f.start >= last_end;
            if keep {
                last_end = f.end;
            }
            keep
        });
    }
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn has_context(text: &str, start: usize, end: usize, words: &[String]) -> bool {
    let lo = floor_char(text, start.saturating_sub(CONTEXT_WINDOW));
    let hi = floor_char(text, (end + CONTEXT_WINDOW).min(text.len()));
    let window = text.get(lo..hi).unwrap_or_default().to_lowercase();
    words.iter().any(|w| window.contains(w.as_str()))
}

/// Which way the text travels (counted apart in `sluice_pii`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// A finding whose action is `block` (requests only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub entity: String,
}

/// Per-request state: placeholder numbers (the same value gets the same number in every
/// field of the request and its response) and the counts.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    numbers: HashMap<(Kind, String), u32>,
    next: HashMap<Kind, u32>,
    counts: BTreeMap<(Direction, String, Action), u64>,
}

/// The canonical form of a value, so `4111 1111 1111 1111` and `4111-1111-1111-1111` get
/// the same number and pseudonym.
fn normalize(kind: Kind, value: &str) -> String {
    match kind {
        Kind::BuiltIn(BuiltIn::Email) => value.to_ascii_lowercase(),
        Kind::BuiltIn(BuiltIn::CreditCard | BuiltIn::Ssn) => {
            value.chars().filter(char::is_ascii_digit).collect()
        }
        Kind::BuiltIn(BuiltIn::Phone) => value
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect(),
        Kind::BuiltIn(BuiltIn::Iban) => value
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase(),
        _ => value.to_string(),
    }
}

/// Every letter and digit but the last four becomes `*`; other characters stay.
pub fn mask(value: &str) -> String {
    let alnum = value.chars().filter(|c| c.is_alphanumeric()).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen + 4 <= alnum {
                    return '*';
                }
            }
            c
        })
        .collect()
}

impl Redactor {
    /// `text` with `findings` applied, or `Err` for a `block` finding when `may_block`
    /// (requests). Where blocking is impossible (a response already under way), `block`
    /// redacts.
    pub fn apply(
        &mut self,
        s: &Settings,
        text: &str,
        findings: &[Finding],
        dir: Direction,
        may_block: bool,
    ) -> Result<String, Blocked> {
        if may_block {
            if let Some(f) = findings.iter().find(|f| f.kind.action(s) == Action::Block) {
                let entity = f.kind.name(s).to_string();
                *self
                    .counts
                    .entry((dir, entity.clone(), Action::Block))
                    .or_default() += 1;
                return Err(Blocked { entity });
            }
        }
        let mut out = String::with_capacity(text.len() + findings.len() * 8);
        let mut pos = 0;
        for f in findings {
            let (Some(before), Some(value)) = (text.get(pos..f.start), text.get(f.start..f.end))
            else {
                continue;
            };
            out.push_str(before);
            let action = match f.kind.action(s) {
                Action::Block => Action::Redact,
                a => a,
            };
            match action {
                Action::Allow => out.push_str(value),
                Action::Mask => out.push_str(&mask(value)),
                Action::Hash => {
                    let label = f.kind.label(s);
                    let key = format!("{label}:{}", normalize(f.kind, value));
                    out.push('[');
                    out.push_str(&label);
                    out.push(':');
                    out.push_str(&s.pseudonym(&key));
                    out.push(']');
                }
                Action::Redact | Action::Block => {
                    let n = self.number(f.kind, value);
                    out.push('[');
                    out.push_str(&f.kind.label(s));
                    out.push('_');
                    out.push_str(&n.to_string());
                    out.push(']');
                }
            }
            *self
                .counts
                .entry((dir, f.kind.name(s).to_string(), action))
                .or_default() += 1;
            pos = f.end;
        }
        out.push_str(text.get(pos..).unwrap_or_default());
        Ok(out)
    }

    fn number(&mut self, kind: Kind, value: &str) -> u32 {
        let key = (kind, normalize(kind, value));
        if let Some(n) = self.numbers.get(&key) {
            return *n;
        }
        let next = self.next.entry(kind).or_insert(0);
        *next += 1;
        let n = *next;
        self.numbers.insert(key, n);
        n
    }

    /// Findings so far: `(direction, entity, action, count)`.
    pub fn counts(&self) -> impl Iterator<Item = (Direction, &str, Action, u64)> + '_ {
        self.counts
            .iter()
            .map(|((d, e, a), n)| (*d, e.as_str(), *a, *n))
    }

    /// `sluice_pii`: `{"request": {"email": {"redact": 2}}, "response": {...}}`; directions
    /// with nothing found are left out; `unscanned` (`request:too_large`) when a body was
    /// passed without a scan. Never values.
    pub fn report(&self, unscanned: Option<String>) -> String {
        let mut root = serde_json::Map::new();
        for ((dir, entity, action), n) in &self.counts {
            let per_dir = root
                .entry(dir.as_str())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(per_dir) = per_dir.as_object_mut() {
                let per_entity = per_dir
                    .entry(entity.clone())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let Some(per_entity) = per_entity.as_object_mut() {
                    per_entity.insert(action.as_str().into(), (*n).into());
                }
            }
        }
        if let Some(u) = unscanned {
            root.insert("unscanned".into(), u.into());
        }
        serde_json::Value::Object(root).to_string()
    }
}

/// Find and apply in one go: the text unchanged (`None`) when nothing was found.
pub fn redact_text(
    s: &Settings,
    r: &mut Redactor,
    text: &str,
    dir: Direction,
    may_block: bool,
    scratch: &mut Vec<Finding>,
) -> Result<Option<String>, Blocked> {
    find(s, text, 0, scratch);
    if scratch.is_empty() {
        return Ok(None);
    }
    r.apply(s, text, scratch, dir, may_block).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiConfig;

    pub(crate) fn settings(json: &str) -> Settings {
        Settings::new(sluice_common::parse_config::<PiiConfig>(json.as_bytes()).unwrap()).unwrap()
    }

    fn run(s: &Settings, text: &str) -> Result<Option<String>, Blocked> {
        let mut r = Redactor::default();
        redact_text(s, &mut r, text, Direction::Request, true, &mut Vec::new())
    }

    #[test]
    fn placeholders_are_numbered_per_value() {
        let s = settings("{}");
        let mut r = Redactor::default();
        let mut scratch = Vec::new();
        let a = redact_text(
            &s,
            &mut r,
            "a@x.io, B@x.io, A@X.IO; 4111 1111 1111 1111",
            Direction::Request,
            true,
            &mut scratch,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a, "[EMAIL_1], [EMAIL_2], [EMAIL_1]; [CREDIT_CARD_1]");
        // The same request's other fields and its response keep the numbering.
        let b = redact_text(
            &s,
            &mut r,
            "4111-1111-1111-1111 c@x.io",
            Direction::Response,
            false,
            &mut scratch,
        )
        .unwrap()
        .unwrap();
        assert_eq!(b, "[CREDIT_CARD_1] [EMAIL_3]");
        assert_eq!(
            r.report(None),
            r#"{"request":{"credit_card":{"redact":1},"email":{"redact":3}},"response":{"credit_card":{"redact":1},"email":{"redact":1}}}"#
        );
        assert_eq!(run(&s, "nothing here").unwrap(), None);
        assert_eq!(
            Redactor::default().report(Some("request:too_large".into())),
            r#"{"unscanned":"request:too_large"}"#
        );
    }

    #[test]
    fn mask_hash_allow_and_block() {
        let s = settings(
            r#"{"hash_secret": "0123456789abcdef",
                "entities": {"credit_card": "mask", "email": "hash", "ipv4": "allow", "ssn": "block"}}"#,
        );
        let out = run(&s, "4111-1111-1111-1111 / Jo@X.io / 10.0.0.1")
            .unwrap()
            .unwrap();
        let pseudo = s.pseudonym("EMAIL:jo@x.io");
        assert_eq!(
            out,
            format!("****-****-****-1111 / [EMAIL:{pseudo}] / 10.0.0.1")
        );
        let blocked = run(&s, "ssn 123-45-6789 and a@b.io").unwrap_err();
        assert_eq!(blocked.entity, "ssn");
        // In a response block cannot refuse any more: it redacts.
        let mut r = Redactor::default();
        let out = redact_text(
            &s,
            &mut r,
            "ssn 123-45-6789",
            Direction::Response,
            false,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out, "ssn [SSN_1]");
        assert_eq!(mask("ab"), "ab");
        assert_eq!(mask("jo@x.io"), "*o@x.io");
    }

    #[test]
    fn custom_entities_with_context() {
        let s = settings(
            r#"{"custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}", "context": ["employee", "staff"]},
                           {"name": "ticket", "pattern": "TCK[0-9]{4}"}]}"#,
        );
        assert_eq!(
            run(&s, "Employee EMP-123456 filed TCK0001")
                .unwrap()
                .unwrap(),
            "Employee [EMPLOYEE_ID_1] filed [TICKET_1]"
        );
        assert_eq!(
            run(&s, "part EMP-123456 in stock").unwrap(),
            None,
            "no context word, no finding"
        );
    }

    #[test]
    fn overlapping_custom_and_builtin_keep_one() {
        let s = settings(
            r#"{"custom": [{"name": "corp_mail", "pattern": "[a-z]+@corp\\.example", "max_len": 64}]}"#,
        );
        assert_eq!(
            run(&s, "to ann@corp.example now").unwrap().unwrap(),
            "to [CORP_MAIL_1] now"
        );
    }
}
