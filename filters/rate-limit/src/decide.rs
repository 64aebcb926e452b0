//! What applies to a request, taking it, giving it back.

use crate::config::{LimitRule, RateLimitConfig, Scope, Stage, Tier};
use crate::store::{self, Quota, Refused, SharedStore, Taken};
use serde::Serialize;
use sluice_common::glob::glob_match;
use sluice_common::hash::fnv1a;
use sluice_common::Policy;

/// Kinds of counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RequestsPerMinute,
    TokensPerMinute,
    DailyTokens,
    MaxParallel,
}

impl Kind {
    /// Short form in shared-data keys and RLS descriptors.
    pub fn short(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "rpm",
            Self::TokensPerMinute => "tpm",
            Self::DailyTokens => "day",
            Self::MaxParallel => "par",
        }
    }

    /// The name in `sluice_ratelimit` (`decided_by`), as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::TokensPerMinute => "tokens_per_minute",
            Self::DailyTokens => "daily_tokens",
            Self::MaxParallel => "max_parallel",
        }
    }

    pub fn is_tokens(self) -> bool {
        matches!(self, Self::TokensPerMinute | Self::DailyTokens)
    }

    /// The limit's unit, as a client reads it in a refusal.
    pub fn unit(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests per minute",
            Self::TokensPerMinute => "tokens per minute",
            Self::DailyTokens => "tokens per day",
            Self::MaxParallel => "requests in flight",
        }
    }
}

/// One counter a request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `key` for the key's own policy, else the rule's name.
    pub rule: String,
    pub kind: Kind,
    pub quota: Quota,
    /// Shared-data key: rule, kind and a slot for the subject (also the subject's
    /// identity in the global tier).
    pub store_key: String,
    pub tier: Tier,
}

/// Subjects hash into this many slots per rule and kind, so shared data stays bounded
/// whatever model names or keys come and go. Two subjects in one slot share a budget: the
/// limit gets stricter, never looser.
pub const SLOTS: u64 = 4096;

fn slot(subject: &str) -> u64 {
    // Stable across VMs and restarts.
    fnv1a(subject.as_bytes()) % SLOTS
}

/// Who is asking.
pub struct Subject<'a> {
    pub policy: &'a Policy,
    /// Known only in the tokens stage.
    pub model: Option<&'a str>,
}

#[allow(clippy::too_many_arguments)]
fn push(
    checks: &mut Vec<Check>,
    rule: &str,
    subject: &str,
    kind: Kind,
    limit: Option<u64>,
    window: u64,
    tier: Tier,
) {
    if let Some(limit) = limit {
        checks.push(Check {
            rule: rule.to_string(),
            kind,
            quota: Quota { limit, window },
            store_key: format!("rl:{rule}:{}:{}", kind.short(), slot(subject)),
            // Requests in flight are a gauge: always counted here.
            tier: if kind == Kind::MaxParallel {
                Tier::Local
            } else {
                tier
            },
        });
    }
}

/// The key's own limits (its policy) as a rule like the configured ones, named `key`.
fn key_rule(config: &RateLimitConfig, policy: &Policy) -> LimitRule {
    let l = &policy.limits;
    LimitRule {
        name: "key".into(),
        scope: Scope::Key,
        matches: vec!["*".into()],
        requests_per_minute: l.requests_per_minute,
        tokens_per_minute: l.tokens_per_minute,
        max_parallel: l.max_parallel,
        daily_tokens: l.daily_tokens,
        tier: config.key_tier,
    }
}

/// The counters a stage checks for this request: the key's limits first, then the rules in
/// their order; within a rule request counts and slots first (cheap to refuse on), then
/// tokens.
pub fn checks(config: &RateLimitConfig, who: &Subject) -> Vec<Check> {
    let minute = config.window_seconds;
    let day = config.day_seconds;
    let admission = config.stage() == Stage::Admission;
    let key = key_rule(config, who.policy);
    let mut out = Vec::new();
    for r in std::iter::once(&key).chain(&config.limits) {
        // A rule whose scope needs the model is all checked in the tokens stage (where the
        // model is known); other rules check request counts and slots at admission and
        // tokens after.
        if admission && r.scope.needs_model() {
            continue;
        }
        let Some(subject) = subject_of(r, who) else {
            continue;
        };
        for (kind, limit, window) in [
            (Kind::RequestsPerMinute, r.requests_per_minute, minute),
            (Kind::MaxParallel, r.max_parallel, 0),
            (Kind::TokensPerMinute, r.tokens_per_minute, minute),
            (Kind::DailyTokens, r.daily_tokens, day),
        ] {
            if r.scope.needs_model() || admission != kind.is_tokens() {
                push(&mut out, &r.name, &subject, kind, limit, window, r.tier);
            }
        }
    }
    out
}

/// Whose counter of rule `r` this request uses, or `None` when the rule does not match it.
fn subject_of(r: &LimitRule, who: &Subject) -> Option<String> {
    let (matched_on, subject) = match r.scope {
        Scope::Key => (who.policy.key_id.as_str(), who.policy.key_id.clone()),
        Scope::Tenant => (who.policy.tenant.as_str(), who.policy.tenant.clone()),
        Scope::Global => (who.model.unwrap_or(""), String::new()),
        Scope::Model => (who.model?, who.model?.to_string()),
        Scope::KeyModel => (
            who.model?,
            format!("{}\u{0}{}", who.policy.key_id, who.model?),
        ),
    };
    // Global rules match models when the model is known, else every request.
    let matched = if r.scope == Scope::Global && who.model.is_none() {
        true
    } else {
        r.matches.iter().any(|g| glob_match(g, matched_on))
    };
    matched.then_some(subject)
}

/// Whether the tokens stage can have anything to check for this key: token budgets, or
/// rules whose scope needs the model. When not, it lets the request pass without waiting
/// for its body.
pub fn tokens_stage_applies(config: &RateLimitConfig, policy: &Policy) -> bool {
    let l = &policy.limits;
    l.tokens_per_minute.is_some()
        || l.daily_tokens.is_some()
        || config.limits.iter().any(|r| {
            r.tokens_per_minute.is_some() || r.daily_tokens.is_some() || r.scope.needs_model()
        })
}

/// Whether some rule of the tokens stage needs the model (then the stage reads the body).
pub fn needs_model(config: &RateLimitConfig) -> bool {
    config.limits.iter().any(|r| r.scope.needs_model())
}

/// A counter taken for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub check: Check,
    pub taken: Taken,
    pub amount: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub check: Check,
    pub remaining: u64,
    /// Seconds until the counter frees up (at least 1).
    pub retry_after: u64,
    /// The store failed (contention or error): refused to stay under the limit.
    pub unavailable: bool,
}

/// Take every check (1 for request counts and slots, `tokens` for token budgets). On the
/// first refusal, give back what was taken: a refused request costs nothing.
pub fn admit<S: SharedStore + ?Sized>(
    store: &S,
    checks: &[Check],
    now: u64,
    tokens: u64,
) -> Result<Vec<Held>, Denial> {
    let mut held: Vec<Held> = Vec::with_capacity(checks.len());
    for c in checks {
        let amount = if c.kind.is_tokens() { tokens } else { 1 };
        match store::take(store, &c.store_key, c.quota, now, amount) {
            Ok(taken) => held.push(Held {
                check: c.clone(),
                taken,
                amount,
            }),
            Err(refused) => {
                release(store, &held);
                let (remaining, unavailable) = match refused {
                    Refused::Exhausted { remaining } => (remaining, false),
                    Refused::Unavailable => (0, true),
                };
                let retry_after = if c.quota.window == 0 {
                    1
                } else {
                    c.quota.reset_at(now).saturating_sub(now).max(1)
                };
                return Err(Denial {
                    check: c.clone(),
                    remaining,
                    retry_after,
                    unavailable,
                });
            }
        }
    }
    Ok(held)
}

/// Give everything back (rollback, or a request that never produced anything).
pub fn release<S: SharedStore + ?Sized>(store: &S, held: &[Held]) {
    for h in held {
        store::give_back(store, &h.check.store_key, h.taken.window_start, h.amount);
    }
}

/// At the end of a request: give back its slots, and settle its token reservations with
/// the real usage (refund what was not used, charge what went over). Returns the tokens
/// finally charged.
pub fn settle<S: SharedStore + ?Sized>(
    store: &S,
    held: &[Held],
    now: u64,
    used_tokens: u64,
) -> u64 {
    for h in held {
        match h.check.kind {
            Kind::MaxParallel => {
                store::give_back(store, &h.check.store_key, h.taken.window_start, 1);
            }
            Kind::TokensPerMinute | Kind::DailyTokens => {
                if used_tokens < h.amount {
                    store::give_back(
                        store,
                        &h.check.store_key,
                        h.taken.window_start,
                        h.amount - used_tokens,
                    );
                } else {
                    store::charge(
                        store,
                        &h.check.store_key,
                        h.check.quota,
                        now,
                        used_tokens - h.amount,
                    );
                }
            }
            Kind::RequestsPerMinute => {}
        }
    }
    used_tokens
}

/// The output tokens to reserve: what the request allows, else the default; capped.
pub fn output_reservation(config: &RateLimitConfig, max_tokens: Option<u64>) -> u64 {
    max_tokens
        .unwrap_or(config.default_max_tokens)
        .min(config.max_output_reservation)
}

/// How many tokens a request reserves, or why it can never be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Reserve this many tokens (prompt + output) on every token check.
    Tokens(u64),
    /// Larger than a token limit's whole window: no retry can help, the request must change.
    NeverFits {
        check: Check,
        prompt: u64,
        /// The output the request asked for (its cap), or 1 when it set none.
        output: u64,
    },
}

/// Size the token reservation of a request with `prompt` tokens and output cap `cap`.
///
/// With a cap, the reservation is prompt + cap (bounded by `max_output_reservation`). Without
/// one, the default output (`default_max_tokens`) is reserved only as far as the tightest
/// local token budget has room for it: a request that sets no `max_tokens` under a small
/// budget still passes, and is settled with its real usage at the end. A request whose
/// prompt (plus its cap) exceeds a limit's whole window can never pass: `NeverFits`.
pub fn size_reservation<S: SharedStore + ?Sized>(
    store: &S,
    config: &RateLimitConfig,
    checks: &[Check],
    now: u64,
    prompt: u64,
    cap: Option<u64>,
) -> Reservation {
    let output = output_reservation(config, cap);
    let least_output = cap.map_or(1, |c| c.min(config.max_output_reservation).max(1));
    let tokens = checks.iter().filter(|c| c.kind.is_tokens());
    for c in tokens.clone() {
        if prompt.saturating_add(least_output) > c.quota.limit {
            return Reservation::NeverFits {
                check: c.clone(),
                prompt,
                output: cap.unwrap_or(1),
            };
        }
    }
    if cap.is_some() {
        return Reservation::Tokens(prompt + output);
    }
    // The room left for output in the tightest budget (a global counter's remaining is the
    // service's to know: its whole limit bounds it here).
    let room = tokens
        .map(|c| {
            let left = if c.tier == Tier::Local {
                store::remaining(store, &c.store_key, c.quota, now)
            } else {
                c.quota.limit
            };
            left.saturating_sub(prompt)
        })
        .min()
        .unwrap_or(output);
    Reservation::Tokens(prompt + output.min(room).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use sluice_common::Limits;

    fn policy(rpm: Option<u64>, tpm: Option<u64>, par: Option<u64>) -> Policy {
        Policy {
            key_id: "k1".into(),
            tenant: "team-a".into(),
            models: vec!["*".into()],
            limits: Limits {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                max_parallel: par,
                daily_tokens: None,
            },
            priority: sluice_common::Priority::default(),
        }
    }

    fn config(stage: Stage, limits: serde_json::Value) -> RateLimitConfig {
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "stage": stage, "limits": limits
        }))
        .unwrap();
        assert_eq!(c.stage(), stage);
        c.validate().unwrap();
        c
    }

    #[test]
    fn stages_split_the_checks() {
        let p = policy(Some(10), Some(1000), Some(2));
        let limits = serde_json::json!([
            {"name": "t", "scope": "tenant", "match": ["team-*"], "requests_per_minute": 5, "tokens_per_minute": 50},
            {"name": "m", "scope": "model", "match": ["llama*"], "max_parallel": 1},
            {"name": "other-tenant", "scope": "tenant", "match": ["team-b"], "requests_per_minute": 1}
        ]);
        let a = checks(
            &config(Stage::Admission, limits.clone()),
            &Subject {
                policy: &p,
                model: None,
            },
        );
        let kinds: Vec<_> = a.iter().map(|c| (c.rule.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("key", Kind::RequestsPerMinute),
                ("key", Kind::MaxParallel),
                ("t", Kind::RequestsPerMinute)
            ]
        );
        let t = checks(
            &config(Stage::Tokens, limits),
            &Subject {
                policy: &p,
                model: Some("llama-3"),
            },
        );
        let kinds: Vec<_> = t.iter().map(|c| (c.rule.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("key", Kind::TokensPerMinute),
                ("t", Kind::TokensPerMinute),
                ("m", Kind::MaxParallel)
            ]
        );
    }

    #[test]
    fn a_refused_request_costs_nothing() {
        let s = MemoryStore::default();
        let p = policy(None, Some(100), None);
        let c = config(
            Stage::Tokens,
            serde_json::json!([
                {"name": "t", "scope": "tenant", "tokens_per_minute": 1000}
            ]),
        );
        let checks = checks(
            &c,
            &Subject {
                policy: &p,
                model: Some("m"),
            },
        );
        let held = admit(&s, &checks, 0, 60).unwrap();
        let denied = admit(&s, &checks, 1, 50).unwrap_err();
        assert_eq!((denied.check.rule.as_str(), denied.remaining), ("key", 40));
        assert_eq!(denied.retry_after, 59);
        // The tenant budget is untouched by the refusal.
        assert_eq!(
            store::remaining(&s, &checks[1].store_key, checks[1].quota, 1),
            940
        );
        // Settling: 60 reserved, 25 used -> 35 refunded.
        settle(&s, &held, 2, 25);
        assert_eq!(
            store::remaining(&s, &checks[0].store_key, checks[0].quota, 2),
            75
        );
        // Over the reservation: charged.
        let held = admit(&s, &checks, 3, 10).unwrap();
        settle(&s, &held, 3, 30);
        assert_eq!(
            store::remaining(&s, &checks[0].store_key, checks[0].quota, 3),
            45
        );
    }

    #[test]
    fn slots_are_given_back() {
        let s = MemoryStore::default();
        let p = policy(None, None, Some(1));
        let c = config(Stage::Admission, serde_json::json!([]));
        let checks = checks(
            &c,
            &Subject {
                policy: &p,
                model: None,
            },
        );
        let held = admit(&s, &checks, 0, 0).unwrap();
        assert!(admit(&s, &checks, 0, 0).is_err());
        settle(&s, &held, 5, 0);
        assert!(admit(&s, &checks, 6, 0).is_ok());
    }

    #[test]
    fn reservation() {
        let c = config(Stage::Tokens, serde_json::json!([]));
        assert_eq!(output_reservation(&c, Some(100)), 100);
        assert_eq!(output_reservation(&c, None), 512);
        assert_eq!(output_reservation(&c, Some(10_000_000)), 32_768);
    }

    #[test]
    fn a_request_without_a_cap_reserves_what_the_budget_has_room_for() {
        let c = config(Stage::Tokens, serde_json::json!([]));
        let store = MemoryStore::default();
        let p = policy(None, Some(300), None);
        let checks_for = |p: &Policy| {
            checks(
                &c,
                &Subject {
                    policy: p,
                    model: None,
                },
            )
        };
        let checks = checks_for(&p);
        let now = 1_000_000;
        // 300 tokens/minute, a 40-token prompt, no max_tokens: 260 of the default 512.
        assert_eq!(
            size_reservation(&store, &c, &checks, now, 40, None),
            Reservation::Tokens(300)
        );
        // With 100 used, the room is 160.
        admit(&store, &checks, now, 100).unwrap();
        assert_eq!(
            size_reservation(&store, &c, &checks, now, 40, None),
            Reservation::Tokens(200)
        );
        // A cap is the client's word: reserved whole (and refused later if it does not fit now).
        assert_eq!(
            size_reservation(&store, &c, &checks, now, 40, Some(250)),
            Reservation::Tokens(290)
        );
        // Larger than the whole window: never fits, whatever the wait.
        match size_reservation(&store, &c, &checks, now, 40, Some(400)) {
            Reservation::NeverFits {
                prompt,
                output,
                check,
            } => {
                assert_eq!((prompt, output, check.quota.limit), (40, 400, 300));
                assert_eq!(
                    crate::reply::never_fits(&check, prompt, output, true).error.message,
                    "Request too large for this API key: it needs 440 tokens (40 prompt + 400 output) \
                     and the limit is 300 tokens per minute, so it can never pass. To run it, lower \
                     max_tokens to at most 260 (or shorten the prompt)."
                );
                assert!(crate::reply::never_fits(&check, 300, 1, false)
                    .error
                    .message
                    .ends_with("shorten the prompt to under 300 tokens."));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            size_reservation(&store, &c, &checks, now, 300, None),
            Reservation::NeverFits { .. }
        ));
        // No token limit at all: the default.
        let p = policy(Some(10), None, None);
        let checks = checks_for(&p);
        assert_eq!(
            size_reservation(&store, &c, &checks, now, 40, None),
            Reservation::Tokens(552)
        );
    }

    #[test]
    fn kind_names_match_serde() {
        for k in [
            Kind::RequestsPerMinute,
            Kind::TokensPerMinute,
            Kind::DailyTokens,
            Kind::MaxParallel,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn bad_configs() {
        for limits in [
            serde_json::json!([{"name": "x", "scope": "tenant"}]),
            serde_json::json!([{"name": "x", "scope": "tenant", "max_parallel": 0}]),
            serde_json::json!([{"name": "key", "scope": "tenant", "max_parallel": 1}]),
            serde_json::json!([{"name": "a", "scope": "tenant", "max_parallel": 1}, {"name": "a", "scope": "model", "max_parallel": 1}]),
        ] {
            let c: RateLimitConfig =
                serde_json::from_value(serde_json::json!({"stage": "tokens", "limits": limits}))
                    .unwrap();
            assert!(c.validate().is_err(), "{limits}");
        }
    }
}
