//! What a client is told: the 429 and 503 refusals, and the `x-ratelimit-*` headers, built
//! in one place for a refusal and for an admitted answer alike (OpenAI's names: `limit`,
//! `remaining`, `reset` for `requests` and `tokens`).

use crate::decide::{Check, Denial, Held, Kind};
use sluice_common::{ErrorKind, OpenAiError};

/// A refusal: the error and the headers that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: OpenAiError,
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// The `x-ratelimit-*` family of a kind of counter (`None`: no such headers, as for
/// OpenAI: daily budgets and requests in flight).
pub fn family(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::RequestsPerMinute => Some("requests"),
        Kind::TokensPerMinute => Some("tokens"),
        Kind::DailyTokens | Kind::MaxParallel => None,
    }
}

/// `reset` header value: seconds, as OpenAI writes it (`"23s"`).
pub fn reset_value(seconds: u64) -> String {
    format!("{seconds}s")
}

/// The three headers of one family.
pub fn limit_headers(
    family: &str,
    limit: u64,
    remaining: u64,
    reset_secs: u64,
) -> [(String, String); 3] {
    [
        (format!("x-ratelimit-limit-{family}"), limit.to_string()),
        (
            format!("x-ratelimit-remaining-{family}"),
            remaining.to_string(),
        ),
        (
            format!("x-ratelimit-reset-{family}"),
            reset_value(reset_secs),
        ),
    ]
}

/// The headers of an admitted answer: for each family, the counter with the least left.
pub fn admitted_headers(held: &[Held], now: u64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in ["requests", "tokens"] {
        let tightest = held
            .iter()
            .filter(|h| family(h.check.kind) == Some(f))
            .min_by_key(|h| h.taken.remaining);
        if let Some(h) = tightest {
            let reset = h.check.quota.reset_at(now).saturating_sub(now);
            out.extend(limit_headers(
                f,
                h.check.quota.limit,
                h.taken.remaining,
                reset,
            ));
        }
    }
    out
}

/// Whose limit this is, as a client reads it in a refusal.
pub fn scope(check: &Check) -> String {
    if check.rule == "key" {
        "this API key".to_string()
    } else {
        format!("limit '{}'", check.rule)
    }
}

/// The 429 of a request over a limit (or refused because the counter store failed).
pub fn over_limit(d: &Denial) -> Refusal {
    let what = d.check.kind.unit();
    let scope = scope(&d.check);
    let message = if d.unavailable {
        format!("Rate limit check for {scope} ({what}) could not be completed; retry shortly.")
    } else {
        format!(
            "Rate limit reached for {scope}: {} {what}, {} left. Retry after {} s.",
            d.check.quota.limit, d.remaining, d.retry_after
        )
    };
    let mut headers = vec![("retry-after".to_string(), d.retry_after.to_string())];
    if let Some(f) = family(d.check.kind) {
        headers.extend(limit_headers(
            f,
            d.check.quota.limit,
            d.remaining,
            d.retry_after,
        ));
    }
    Refusal {
        error: OpenAiError::new(ErrorKind::RateLimited, message).with_code("rate_limit_exceeded"),
        headers,
    }
}

/// The 429 of a request larger than a token limit's whole window: waiting will not help, so
/// no `retry-after`; the message says what it needs, the limit, and what to change.
pub fn never_fits(check: &Check, prompt: u64, output: u64, capped: bool) -> Refusal {
    let limit = check.quota.limit;
    let fix = if prompt >= limit {
        format!("shorten the prompt to under {limit} tokens")
    } else if capped {
        format!(
            "lower max_tokens to at most {} (or shorten the prompt)",
            limit - prompt
        )
    } else {
        "shorten the prompt".to_string()
    };
    let message = format!(
        "Request too large for {}: it needs {} tokens ({prompt} prompt + {output} output) and the limit is {limit} {}, so it can never pass. To run it, {fix}.",
        scope(check),
        prompt + output,
        check.kind.unit()
    );
    Refusal {
        error: OpenAiError::new(ErrorKind::RateLimited, message).with_code("request_too_large"),
        headers: Vec::new(),
    }
}

/// The 503 when the rate-limit service failed and the failure mode is `deny`.
pub fn service_unavailable() -> Refusal {
    Refusal {
        error: OpenAiError::new(
            ErrorKind::Unavailable,
            "The rate-limit service is unavailable; retry shortly.",
        )
        .with_code("rate_limit_service_unavailable"),
        headers: vec![("retry-after".into(), "1".into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;
    use crate::store::{Quota, Taken};

    fn check(rule: &str, kind: Kind, limit: u64) -> Check {
        Check {
            rule: rule.into(),
            kind,
            quota: Quota { limit, window: 60 },
            store_key: String::new(),
            tier: Tier::Local,
        }
    }

    fn held(rule: &str, kind: Kind, limit: u64, remaining: u64) -> Held {
        Held {
            check: check(rule, kind, limit),
            taken: Taken {
                window_start: 0,
                remaining,
            },
            amount: 1,
        }
    }

    #[test]
    fn an_admitted_answer_shows_the_tightest_counter_of_each_family() {
        let h = [
            held("key", Kind::RequestsPerMinute, 10, 7),
            held("team", Kind::RequestsPerMinute, 100, 3),
            held("key", Kind::TokensPerMinute, 1000, 900),
            held("key", Kind::MaxParallel, 2, 1),
        ];
        let headers = admitted_headers(&h, 120 + 45);
        let want: Vec<(String, String)> = [
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "15s"),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "900"),
            ("x-ratelimit-reset-tokens", "15s"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec();
        assert_eq!(headers, want);
    }

    #[test]
    fn a_refusal_says_whose_limit_and_when_to_retry() {
        let d = Denial {
            check: check("key", Kind::TokensPerMinute, 500),
            remaining: 20,
            retry_after: 12,
            unavailable: false,
        };
        let r = over_limit(&d);
        assert_eq!(r.error.status(), 429);
        assert_eq!(
            r.error.message,
            "Rate limit reached for this API key: 500 tokens per minute, 20 left. Retry after 12 s."
        );
        assert_eq!(r.headers[0], ("retry-after".into(), "12".into()));
        assert_eq!(
            r.headers[3],
            ("x-ratelimit-reset-tokens".into(), "12s".into())
        );
        // No x-ratelimit headers for requests in flight.
        let d = Denial {
            check: check("gpu", Kind::MaxParallel, 4),
            ..d
        };
        assert_eq!(over_limit(&d).headers.len(), 1);
        assert!(over_limit(&d).error.message.contains("limit 'gpu'"));
    }

    #[test]
    fn a_request_that_never_fits_says_what_to_change() {
        let c = check("key", Kind::TokensPerMinute, 1000);
        let m = |p, o, capped| never_fits(&c, p, o, capped).error.message;
        assert!(m(1200, 1, false).contains("shorten the prompt to under 1000 tokens"));
        assert!(m(800, 500, true).contains("lower max_tokens to at most 200"));
        assert!(never_fits(&c, 800, 500, true).headers.is_empty());
        assert_eq!(service_unavailable().error.status(), 503);
    }
}
