//! Creating, listing and revoking API keys.

use anyhow::{bail, Context, Result};
use base64::Engine;
use sluice_common::Limits;
use sluice_key_auth::{digest, KeyRecord, KEY_PREFIX};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Bytes of randomness in a key: 256 bits, well above the 128 required.
const KEY_ENTROPY_BYTES: usize = 32;
/// Characters of a key kept for display (`sk-sluice-` and four more).
const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 4;

/// A freshly generated key: the secret (shown once) and the record to store.
pub struct NewKey {
    pub secret: String,
    pub record: KeyRecord,
}

/// What `keys create` takes.
#[derive(Debug, Default, Clone)]
pub struct KeySpec {
    pub id: Option<String>,
    pub tenant: String,
    pub models: Vec<String>,
    pub limits: Limits,
    pub priority: sluice_common::Priority,
    pub expires: Option<String>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(buf)
}

/// Generate a key from the OS CSPRNG.
pub fn generate(spec: &KeySpec, now: OffsetDateTime) -> Result<NewKey> {
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(random_bytes::<KEY_ENTROPY_BYTES>()?)
    );
    let id = match &spec.id {
        Some(id) => id.clone(),
        None => format!("key_{}", hex::encode(random_bytes::<6>()?)),
    };
    let expires_at = spec
        .expires
        .as_deref()
        .map(|e| parse_expiry(e, now))
        .transpose()?;
    let record = KeyRecord {
        id,
        sha256: hex::encode(digest(&secret)),
        tenant: spec.tenant.clone(),
        enabled: true,
        expires_at,
        models: if spec.models.is_empty() {
            vec!["*".into()]
        } else {
            spec.models.clone()
        },
        limits: spec.limits.clone(),
        priority: spec.priority,
        prefix: secret.get(..DISPLAY_PREFIX_LEN).map(str::to_string),
        created_at: now.format(&Rfc3339).ok(),
    };
    Ok(NewKey { secret, record })
}

/// An RFC 3339 time, or a duration from now: `30d`, `12h`, `90m`, `45s`.
pub fn parse_expiry(s: &str, now: OffsetDateTime) -> Result<String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.format(&Rfc3339)?);
    }
    let split = s.len().saturating_sub(1);
    let (num, unit) = (s.get(..split).unwrap_or(""), s.get(split..).unwrap_or(""));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--expires {s:?}: use RFC 3339 or a duration like 30d"))?;
    let d = match unit {
        "d" => Duration::days(n),
        "h" => Duration::hours(n),
        "m" => Duration::minutes(n),
        "s" => Duration::seconds(n),
        _ => bail!("--expires {s:?}: the unit must be d, h, m or s"),
    };
    Ok((now + d).format(&Rfc3339)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_key_auth::{KeyAuthConfig, KeyStore};

    #[test]
    fn generated_keys_authenticate_and_look_like_ours() {
        let spec = KeySpec {
            tenant: "team-a".into(),
            expires: Some("1d".into()),
            ..KeySpec::default()
        };
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let a = generate(&spec, now).unwrap();
        let b = generate(&spec, now).unwrap();
        assert!(a.secret.starts_with("sk-sluice-"));
        // 32 bytes in unpadded base64url.
        assert_eq!(a.secret.len(), "sk-sluice-".len() + 43);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.record.id, b.record.id);
        assert_eq!(a.record.prefix.as_deref(), a.secret.get(..14));
        assert_eq!(a.record.expires_at.as_deref(), Some("2027-01-16T08:00:00Z"));
        let store = KeyStore::from_config(&KeyAuthConfig {
            keys: vec![a.record.clone(), b.record],
            ..Default::default()
        })
        .unwrap();
        let id = store.authenticate(&a.secret, 1_800_000_000).unwrap();
        assert_eq!(id.identity.key_id, a.record.id);
    }

    #[test]
    fn expiry_forms() {
        let now = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(parse_expiry("90m", now).unwrap(), "1970-01-01T01:30:00Z");
        assert_eq!(
            parse_expiry("2030-01-01T00:00:00+01:00", now).unwrap(),
            "2030-01-01T00:00:00+01:00"
        );
        assert!(parse_expiry("soon", now).is_err());
        assert!(parse_expiry("5y", now).is_err());
    }
}
