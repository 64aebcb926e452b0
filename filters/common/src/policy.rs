//! The per-key policy that key-auth publishes as `sluice_policy` and later filters enforce.

use crate::memo::{MemoLimits, TextMemo};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;

/// Limits attached to one key. Absent means "no limit of this kind for this key"; the
/// rate-limit filter may still apply tenant-, model- or global limits from its own config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
}

impl Limits {
    /// A limit of zero would reject every request; it is a configuration mistake, not a
    /// way to disable a key (that is what `enabled: false` is for).
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
            ("max_parallel", self.max_parallel),
            ("daily_tokens", self.daily_tokens),
        ];
        match all.iter().find(|(_, v)| *v == Some(0)) {
            Some((name, _)) => Err(format!("limits.{name} must be at least 1")),
            None => Ok(()),
        }
    }
}

/// How urgent a key's requests are when a pool is saturated and requests wait in the
/// gateway: `batch` requests never delay `interactive` ones.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }

    /// The priority named `s` (as [`Priority::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Interactive, Self::Batch]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    pub fn is_interactive(&self) -> bool {
        *self == Self::Interactive
    }
}

/// What `sluice_policy` holds: the key's record without its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub key_id: String,
    pub tenant: String,
    /// Model globs the key may use (`*` any run, `?` one character); `["*"]` allows all,
    /// an empty list allows none.
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Priority::is_interactive")]
    pub priority: Priority,
}

thread_local! {
    /// The policy texts parsed in this VM (a VM runs on one thread) and what they gave.
    static PARSED: RefCell<TextMemo<Rc<Policy>>> =
        RefCell::new(TextMemo::new(MemoLimits::POLICIES));
}

impl Policy {
    /// The policy key-auth published (`sluice_policy`), parsed; `None` when the text is
    /// not one. Three filters of the chain read the same request's policy (rate-limit's two
    /// stages and model-router) and a key's requests all carry the same text, so the texts
    /// parsed in this VM are remembered with what they gave ([`TextMemo`]: found by the
    /// whole text, of which the policy is a pure function, so nothing is taken from it that
    /// the text does not say).
    pub fn from_published(text: &str) -> Option<Rc<Policy>> {
        let parse = |t: &str| serde_json::from_str::<Policy>(t).ok().map(Rc::new);
        PARSED.with(|memo| match memo.try_borrow_mut() {
            Ok(mut memo) => memo.get_or_insert_if(text, parse),
            Err(_) => parse(text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_policy_is_parsed_once_and_found_by_its_whole_text() {
        let text = |tenant: &str| {
            format!(r#"{{"key_id":"k","tenant":"{tenant}","models":["*"],"limits":{{}}}}"#)
        };
        let a = Policy::from_published(&text("a")).unwrap();
        assert_eq!(a.tenant, "a");
        // The same text again: the same parsed policy, not a second parse.
        assert!(Rc::ptr_eq(&a, &Policy::from_published(&text("a")).unwrap()));
        // One byte else: its own policy.
        assert_eq!(Policy::from_published(&text("b")).unwrap().tenant, "b");
        assert!(Policy::from_published(r#"{"tenant":"a"}"#).is_none());
    }

    #[test]
    fn a_priority_parses_as_it_is_written() {
        for p in [Priority::Interactive, Priority::Batch] {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        assert_eq!(Priority::parse("urgent"), None);
    }

    #[test]
    fn zero_limits_are_rejected() {
        assert!(Limits::default().validate().is_ok());
        let l = Limits {
            max_parallel: Some(0),
            ..Limits::default()
        };
        assert_eq!(
            l.validate().unwrap_err(),
            "limits.max_parallel must be at least 1"
        );
    }

    #[test]
    fn policy_round_trips_and_omits_absent_limits() {
        let p = Policy {
            key_id: "key_1".into(),
            tenant: "team-a".into(),
            models: vec!["llama-*".into()],
            limits: Limits {
                requests_per_minute: Some(60),
                ..Limits::default()
            },
            priority: Priority::default(),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"key_id":"key_1","tenant":"team-a","models":["llama-*"],"limits":{"requests_per_minute":60}}"#
        );
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    }
}
