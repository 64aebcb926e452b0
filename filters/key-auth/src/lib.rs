//! key-auth: who is calling?
//!
//! The first filter of the chain. It finds the request's API key, checks it against the
//! configured SHA-256 digests, strips the credential (and every client-sent `x-sluice-*`
//! header), and publishes `sluice_key_id`, `sluice_tenant` and `sluice_policy`. A request
//! without a valid key gets an OpenAI-style 401 and never reaches upstream.
//!
//! The policy lives in [`on_request_headers`], written against [`sluice_common::Host`];
//! [`lifecycle`] is the filter's per-request state machine, and the wasm entry point is the
//! one line at the end of this file.

pub mod config;
pub mod credential;
pub mod keystore;
pub mod lifecycle;

pub use config::{KeyAuthConfig, KeyRecord};
pub use keystore::{digest, Authenticated, KeyStore, KEY_PREFIX};

use sluice_common::host::{now_unix_secs, Host, Side};
use sluice_common::{properties, ErrorKind, OpenAiError};

/// Why a request was refused. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No credential header at all.
    Missing,
    /// A credential header that is empty, not UTF-8, or not `Bearer`.
    Malformed,
    /// Two different keys in one request.
    Conflicting,
    /// No key has this digest.
    Unknown,
    Expired,
    Disabled,
}

impl Denial {
    pub const ALL: [Denial; 6] = [
        Self::Missing,
        Self::Malformed,
        Self::Conflicting,
        Self::Unknown,
        Self::Expired,
        Self::Disabled,
    ];

    /// Metric suffix and log word.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Conflicting => "conflicting",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }

    /// The client's error. Messages never repeat the presented key.
    pub fn error(self) -> OpenAiError {
        let (message, code) = match self {
            Self::Missing => (
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' \
                 (or in x-api-key, api-key or x-goog-api-key).",
                "missing_api_key",
            ),
            Self::Malformed => (
                "The API key header is malformed. Use 'Authorization: Bearer <key>'.",
                "invalid_api_key",
            ),
            Self::Conflicting => (
                "The request carries two different API keys. Send exactly one.",
                "conflicting_api_keys",
            ),
            Self::Unknown => ("Incorrect API key provided.", "invalid_api_key"),
            Self::Expired => ("The API key has expired.", "expired_api_key"),
            Self::Disabled => ("The API key is disabled.", "disabled_api_key"),
        };
        OpenAiError::new(ErrorKind::Authentication, message).with_code(code)
    }
}

/// What became of a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated as this key id; the request goes on.
    Allowed { key_id: String },
    /// A 401 was sent; the request stops here.
    Denied(Denial),
}

/// Authenticate a request at its headers and apply every effect through `host`.
pub fn on_request_headers(store: &KeyStore, host: &mut dyn Host) -> Outcome {
    // What the headers say, read where the host holds them (natively, in Envoy's map).
    let mut path = String::new();
    let mut credential = Err(Denial::Missing);
    let mut internal: Vec<String> = Vec::new();
    host.with_headers(Side::Request, &mut |headers| {
        if let Some((_, v)) = headers.iter().find(|(n, _)| *n == ":path") {
            path = String::from_utf8_lossy(v).into_owned();
        }
        credential = credential::extract(headers);
        // Internal headers are ours to set; a client's copy must never steer routing or
        // masquerade as a filter's decision.
        internal = headers
            .iter()
            .filter(|(n, _)| n.starts_with(properties::INTERNAL_HEADER_PREFIX))
            .map(|(n, _)| n.to_string())
            .collect();
    });
    let result = credential.and_then(|cred| {
        Ok((
            store.authenticate(
                &cred.key,
                now_unix_secs(host).try_into().unwrap_or(i64::MAX),
            )?,
            cred,
        ))
    });
    match result {
        Ok((Authenticated { identity, batch }, cred)) => {
            for name in &cred.headers {
                host.remove_header(Side::Request, name);
            }
            for name in &internal {
                host.remove_header(Side::Request, name);
            }
            let stripped_internal = !internal.is_empty();
            // A key in the query string is never accepted, and never forwarded.
            if let Some(clean) = credential::strip_credential_query(&path) {
                host.set_header(Side::Request, ":path", &clean);
            }
            if stripped_internal {
                // Envoy may already have matched a route on the client's header.
                host.clear_route_cache();
            }
            host.set_property(properties::KEY_ID, identity.key_id.as_bytes());
            host.set_property(properties::TENANT, identity.tenant.as_bytes());
            host.set_property(properties::POLICY, identity.policy_json.as_bytes());
            // A batch line runs at batch priority whatever the key's own, and says which
            // line it is (the access log's `batch`).
            let priority = match batch {
                Some(_) => sluice_common::Priority::Batch,
                None => identity.priority,
            };
            host.set_property(properties::PRIORITY, priority.as_str().as_bytes());
            if let Some(claims) = &batch {
                let line =
                    serde_json::json!({"batch_id": claims.batch_id, "custom_id": claims.custom_id});
                host.set_property(properties::BATCH, line.to_string().as_bytes());
            }
            Outcome::Allowed {
                key_id: identity.key_id.clone(),
            }
        }
        Err(denial) => {
            let error = denial.error();
            // Anthropic clients (under /v1/messages) get Anthropic's error shape.
            let family = sluice_common::api::family_for_path(&path);
            host.send_reply(
                error.status(),
                &[
                    OpenAiError::CONTENT_TYPE,
                    ("www-authenticate", "Bearer realm=\"sluice\""),
                ],
                error.body_for(family).as_bytes(),
            );
            Outcome::Denied(denial)
        }
    }
}

// The wasm entry point. The glue needs Envoy's host functions: it is left out of unit-test
// builds, which then run anywhere (natively, and compiled to wasm32 under Node).
#[cfg(all(target_arch = "wasm32", feature = "filter", not(test)))]
sluice_proxy::filter!(lifecycle::KeyAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::{Call, MockHost};

    fn store() -> KeyStore {
        let json = format!(
            r#"{{"keys":[
                {{"id":"k1","sha256":"{}","tenant":"team-a","models":["llama-*"],
                  "limits":{{"requests_per_minute":5}}}},
                {{"id":"k2","sha256":"{}","tenant":"team-b","enabled":false}},
                {{"id":"k3","sha256":"{}","tenant":"team-c","expires_at":"2020-01-01T00:00:00Z"}}
            ]}}"#,
            hex::encode(digest("sk-sluice-good")),
            hex::encode(digest("sk-sluice-off")),
            hex::encode(digest("sk-sluice-old")),
        );
        let config: KeyAuthConfig = sluice_common::parse_config(json.as_bytes()).unwrap();
        KeyStore::from_config(&config).unwrap()
    }

    fn host(headers: &[(&str, &str)]) -> MockHost {
        let mut h = MockHost::with_request(headers);
        h.now_ms = 1_800_000_000_000;
        h
    }

    #[test]
    fn allowed_strips_credentials_and_publishes_identity() {
        let mut h = host(&[
            ("authorization", "Bearer sk-sluice-good"),
            ("api-key", "sk-sluice-good"),
            ("content-type", "application/json"),
        ]);
        let outcome = on_request_headers(&store(), &mut h);
        assert_eq!(
            outcome,
            Outcome::Allowed {
                key_id: "k1".into()
            }
        );
        assert_eq!(h.request_header("authorization"), None);
        assert_eq!(h.request_header("api-key"), None);
        assert_eq!(
            h.request_header("content-type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(h.text_property("sluice_key_id"), Some("k1"));
        assert_eq!(h.text_property("sluice_tenant"), Some("team-a"));
        let policy: sluice_common::Policy =
            serde_json::from_str(h.text_property("sluice_policy").unwrap()).unwrap();
        assert_eq!(policy.models, vec!["llama-*"]);
        assert_eq!(policy.limits.requests_per_minute, Some(5));
        assert!(!h.replied());
        assert!(!h.calls().contains(&Call::ClearRouteCache));
    }

    #[test]
    fn client_internal_headers_are_stripped_and_route_recomputed() {
        let mut h = host(&[
            ("x-api-key", "sk-sluice-good"),
            ("x-sluice-route", "pool-b"),
            ("x-sluice-anything", "1"),
        ]);
        on_request_headers(&store(), &mut h);
        assert_eq!(h.request_header("x-sluice-route"), None);
        assert_eq!(h.request_header("x-sluice-anything"), None);
        assert!(h.calls().contains(&Call::ClearRouteCache));
    }

    #[test]
    fn every_denial_is_an_openai_401() {
        let table: &[(&[(&str, &str)], Denial)] = &[
            (&[], Denial::Missing),
            (&[("authorization", "Basic abc")], Denial::Malformed),
            (
                &[
                    ("x-api-key", "sk-sluice-good"),
                    ("api-key", "sk-sluice-off"),
                ],
                Denial::Conflicting,
            ),
            (
                &[("authorization", "Bearer sk-sluice-bad")],
                Denial::Unknown,
            ),
            (&[("x-goog-api-key", "sk-sluice-old")], Denial::Expired),
            (&[("api-key", "sk-sluice-off")], Denial::Disabled),
        ];
        for (headers, want) in table {
            let mut h = host(headers);
            assert_eq!(on_request_headers(&store(), &mut h), Outcome::Denied(*want));
            let reply = h.reply().expect("a reply");
            assert_eq!(reply.status, 401);
            assert!(reply
                .headers
                .contains(&("www-authenticate".into(), "Bearer realm=\"sluice\"".into())));
            assert!(reply
                .headers
                .contains(&("content-type".into(), "application/json".into())));
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(body["error"]["type"], "authentication_error");
            assert!(
                !reply.body.contains("sk-sluice"),
                "key echoed: {}",
                reply.body
            );
            assert!(h.properties.is_empty());
        }
    }

    #[test]
    fn empty_store_refuses_everything() {
        let empty = KeyStore::default();
        let mut h = host(&[("authorization", "Bearer anything")]);
        assert_eq!(
            on_request_headers(&empty, &mut h),
            Outcome::Denied(Denial::Unknown)
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            // Whatever the headers, the filter decides without panicking, and only a
            // configured key is ever allowed.
            #[test]
            fn arbitrary_headers_never_panic(
                headers in proptest::collection::vec(
                    (prop_oneof![
                        Just("authorization".to_string()), Just("x-api-key".to_string()),
                        Just("api-key".to_string()), Just("x-goog-api-key".to_string()),
                        "[a-z-]{1,12}"],
                     proptest::collection::vec(any::<u8>(), 0..40)),
                    0..6)
            ) {
                let mut h = MockHost::new();
                h.request_headers = headers;
                let outcome = on_request_headers(&store(), &mut h);
                let allowed = matches!(outcome, Outcome::Allowed { .. });
                prop_assert!(!allowed, "random headers were allowed");
            }
        }
    }
}
