//! The validated, indexed form of the key config: what a request is checked against.

use crate::config::{KeyAuthConfig, KeyRecord};
use crate::Denial;
use sha2::{Digest, Sha256};
use sluice_common::batch::{self, AssertionError, BatchClaims, ASSERTION_PREFIX, MIN_SECRET_BYTES};
use sluice_common::{ConfigError, Policy};
use std::collections::HashMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Every key a generated key starts with; lets people and secret scanners recognise one.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// SHA-256 of a key string: the only form in which keys are stored.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What a request is known as once its key is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key_id: String,
    pub tenant: String,
    /// `sluice_policy`, serialized once at configuration time, not per request.
    pub policy_json: String,
    pub priority: sluice_common::Priority,
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    enabled: bool,
    expires_at: Option<i64>,
}

/// Keys indexed by digest.
///
/// Timing: the lookup hashes the presented key first and compares digests. Any timing
/// difference in the map lookup depends on the digest of the attacker's own guess, which
/// says nothing usable about a stored key (finding a key from digest prefixes needs a
/// SHA-256 preimage), so the secret does not leak through timing.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], Entry>,
    /// Key ids to digests: what a batch assertion names.
    by_id: HashMap<String, [u8; 32]>,
    batch_secret: Option<Vec<u8>>,
}

/// An accepted credential: the key's identity, and the batch line when sluice-batch sent
/// the request for the key's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated<'a> {
    pub identity: &'a Identity,
    pub batch: Option<BatchClaims>,
}

impl KeyStore {
    /// Validate a configuration and index it. Errors name the key by id, never by secret.
    pub fn from_config(config: &KeyAuthConfig) -> Result<Self, ConfigError> {
        let batch_secret = config
            .batch_secret
            .as_ref()
            .map(|secret| {
                if secret.len() < MIN_SECRET_BYTES {
                    Err(ConfigError::Invalid(format!(
                        "batch_secret must be at least {MIN_SECRET_BYTES} bytes"
                    )))
                } else {
                    Ok(secret.as_bytes().to_vec())
                }
            })
            .transpose()?;
        let mut by_id = HashMap::with_capacity(config.keys.len());
        let mut by_digest = HashMap::with_capacity(config.keys.len());
        let mut ids = std::collections::HashSet::new();
        for (i, record) in config.keys.iter().enumerate() {
            let entry = validate(record).map_err(|e| {
                ConfigError::Invalid(format!("keys[{i}] (id {:?}): {e}", record.id))
            })?;
            if !ids.insert(record.id.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "keys[{i}]: duplicate id {:?}",
                    record.id
                )));
            }
            let digest = parse_digest(&record.sha256).map_err(|e| {
                ConfigError::Invalid(format!("keys[{i}] (id {:?}): {e}", record.id))
            })?;
            by_id.insert(record.id.clone(), digest);
            if by_digest.insert(digest, entry).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "keys[{i}] (id {:?}): same sha256 as another key",
                    record.id
                )));
            }
        }
        Ok(Self {
            by_digest,
            by_id,
            batch_secret,
        })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Check a presented credential at `now` (Unix seconds): an API key, or a batch
    /// assertion signed with the configured secret (the key it names must be usable now,
    /// as if presented itself).
    pub fn authenticate(&self, credential: &str, now: i64) -> Result<Authenticated<'_>, Denial> {
        if credential.starts_with(ASSERTION_PREFIX) {
            let secret = self.batch_secret.as_deref().ok_or(Denial::Unknown)?;
            let claims = batch::verify(credential, secret, u64::try_from(now).unwrap_or(0))
                .map_err(|e| match e {
                    AssertionError::Expired => Denial::Expired,
                    _ => Denial::Unknown,
                })?;
            let digest = self.by_id.get(&claims.key_id).ok_or(Denial::Unknown)?;
            let identity = self.check(digest, now)?;
            return Ok(Authenticated {
                identity,
                batch: Some(claims),
            });
        }
        Ok(Authenticated {
            identity: self.check(&digest(credential), now)?,
            batch: None,
        })
    }

    fn check(&self, digest: &[u8; 32], now: i64) -> Result<&Identity, Denial> {
        let entry = self.by_digest.get(digest).ok_or(Denial::Unknown)?;
        if !entry.enabled {
            return Err(Denial::Disabled);
        }
        if entry.expires_at.is_some_and(|t| now >= t) {
            return Err(Denial::Expired);
        }
        Ok(&entry.identity)
    }
}

fn validate(record: &KeyRecord) -> Result<Entry, String> {
    let id_ok = !record.id.is_empty()
        && record.id.len() <= 64
        && record
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !id_ok {
        return Err("id must be 1-64 characters of [A-Za-z0-9_.-]".into());
    }
    if record.tenant.trim().is_empty() || record.tenant.len() > 128 {
        return Err("tenant must be 1-128 characters".into());
    }
    if record.models.iter().any(|m| m.trim().is_empty()) {
        return Err("models must not contain an empty pattern".into());
    }
    record.limits.validate()?;
    let expires_at = record
        .expires_at
        .as_deref()
        .map(parse_rfc3339)
        .transpose()
        .map_err(|e| format!("expires_at: {e}"))?;
    let policy = Policy {
        key_id: record.id.clone(),
        tenant: record.tenant.clone(),
        models: record.models.clone(),
        limits: record.limits.clone(),
        priority: record.priority,
    };
    let policy_json = serde_json::to_string(&policy).map_err(|e| e.to_string())?;
    Ok(Entry {
        identity: Identity {
            key_id: record.id.clone(),
            tenant: record.tenant.clone(),
            policy_json,
            priority: record.priority,
        },
        enabled: record.enabled,
        expires_at,
    })
}

/// RFC 3339 timestamp to Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
}

fn parse_digest(hex_digest: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out)
        .map_err(|_| "sha256 must be 64 hex characters".to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::Limits;

    pub(crate) fn record(id: &str, key: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            sha256: hex::encode(digest(key)),
            tenant: "team-a".into(),
            enabled: true,
            expires_at: None,
            models: vec!["*".into()],
            limits: Limits::default(),
            priority: sluice_common::Priority::default(),
            prefix: None,
            created_at: None,
        }
    }

    fn store(records: Vec<KeyRecord>) -> Result<KeyStore, ConfigError> {
        KeyStore::from_config(&KeyAuthConfig {
            keys: records,
            batch_secret: Some(SECRET.into()),
        })
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn assertion(key_id: &str, expires_at: u64, secret: &str) -> String {
        let claims = BatchClaims {
            key_id: key_id.into(),
            batch_id: "batch_1".into(),
            custom_id: "c-1".into(),
            expires_at,
        };
        batch::sign(&claims, secret.as_bytes()).unwrap()
    }

    #[test]
    fn a_batch_assertion_acts_for_the_key_it_names_and_nothing_else() {
        let mut off = record("off", "k-off");
        off.enabled = false;
        let s = store(vec![record("k1", "sk-sluice-one"), off]).unwrap();
        let ok = s.authenticate(&assertion("k1", 100, SECRET), 50).unwrap();
        assert_eq!(ok.identity.key_id, "k1");
        assert_eq!(ok.batch.unwrap().custom_id, "c-1");
        // Expired, signed with another secret, naming a key that is unknown or disabled.
        assert_eq!(
            s.authenticate(&assertion("k1", 100, SECRET), 100),
            Err(Denial::Expired)
        );
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(
            s.authenticate(&assertion("k1", 100, other), 50),
            Err(Denial::Unknown)
        );
        assert_eq!(
            s.authenticate(&assertion("nobody", 100, SECRET), 50),
            Err(Denial::Unknown)
        );
        assert_eq!(
            s.authenticate(&assertion("off", 100, SECRET), 50),
            Err(Denial::Disabled)
        );
        // A store without a secret accepts no assertion at all.
        let plain = KeyStore::from_config(&KeyAuthConfig {
            keys: vec![record("k1", "sk-sluice-one")],
            batch_secret: None,
        })
        .unwrap();
        assert_eq!(
            plain.authenticate(&assertion("k1", 100, SECRET), 50),
            Err(Denial::Unknown)
        );
        // A short secret is a configuration error.
        assert!(KeyStore::from_config(&KeyAuthConfig {
            keys: vec![],
            batch_secret: Some("short".into()),
        })
        .is_err());
    }

    #[test]
    fn authenticates_by_digest() {
        let s = store(vec![
            record("k1", "sk-sluice-one"),
            record("k2", "sk-sluice-two"),
        ])
        .unwrap();
        assert_eq!(
            s.authenticate("sk-sluice-two", 0).unwrap().identity.key_id,
            "k2"
        );
        assert_eq!(s.authenticate("sk-sluice-three", 0), Err(Denial::Unknown));
        assert_eq!(s.authenticate("", 0), Err(Denial::Unknown));
    }

    #[test]
    fn disabled_and_expired() {
        let mut off = record("off", "k-off");
        off.enabled = false;
        let mut old = record("old", "k-old");
        old.expires_at = Some("2026-01-01T00:00:00Z".into());
        let s = store(vec![off, old]).unwrap();
        let expiry = parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(s.authenticate("k-off", 0), Err(Denial::Disabled));
        assert_eq!(
            s.authenticate("k-old", expiry - 1).unwrap().identity.key_id,
            "old"
        );
        assert_eq!(s.authenticate("k-old", expiry), Err(Denial::Expired));
    }

    #[test]
    fn offsets_in_expiry_are_honoured() {
        assert_eq!(
            parse_rfc3339("2026-01-01T02:00:00+02:00").unwrap(),
            parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn policy_is_published_without_digest() {
        let s = store(vec![record("k1", "secret")]).unwrap();
        let id = s.authenticate("secret", 0).unwrap().identity;
        assert_eq!(
            id.policy_json,
            r#"{"key_id":"k1","tenant":"team-a","models":["*"],"limits":{}}"#
        );
        assert!(!id.policy_json.contains(&hex::encode(digest("secret"))));
    }

    #[test]
    fn invalid_configs_are_refused_with_the_id_not_the_secret() {
        let mut bad_hex = record("k1", "x");
        bad_hex.sha256 = "zz".into();
        let mut bad_time = record("k2", "y");
        bad_time.expires_at = Some("tomorrow".into());
        let mut bad_id = record("k 3", "z");
        bad_id.id = "has space".into();
        let mut zero = record("k4", "w");
        zero.limits.tokens_per_minute = Some(0);
        let cases = vec![
            (vec![bad_hex], "sha256 must be 64 hex"),
            (vec![bad_time], "expires_at"),
            (vec![bad_id], "id must be"),
            (vec![zero], "tokens_per_minute"),
            (vec![record("dup", "a"), record("dup", "b")], "duplicate id"),
            (
                vec![record("a", "same"), record("b", "same")],
                "same sha256",
            ),
        ];
        for (records, want) in cases {
            let err = store(records).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
