//! How sluice-batch acts for a batch's owner: a signed, short-lived assertion in place of
//! the owner's API key, verified by key-auth.
//!
//! sluice-batch never holds an owner's key (only digests are stored). Each batch line goes
//! through the gateway's own chain with `Authorization: Bearer <assertion>`, where the
//! assertion names the owner's key id, the batch and the line, and expires within minutes;
//! it is signed with HMAC-SHA256 under a secret only key-auth and sluice-batch hold. A
//! client without the secret cannot make one, a changed field breaks the signature, and an
//! old one is refused: nobody can claim another key's identity with it.
//!
//! Format: `sluice-batch.<base64url(JSON claims)>.<hex HMAC-SHA256(secret, everything
//! before the last dot)>`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What every assertion starts with (never a key: keys start with `sk-`).
pub const ASSERTION_PREFIX: &str = "sluice-batch.";

/// The shortest secret accepted (bytes): a short one could be guessed offline from one
/// leaked assertion.
pub const MIN_SECRET_BYTES: usize = 32;

/// Who a batch line runs as, and which line it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchClaims {
    /// The owner's key id (key-auth loads that key's tenant, models, limits).
    pub key_id: String,
    pub batch_id: String,
    pub custom_id: String,
    /// Unix seconds after which the assertion is refused.
    pub expires_at: u64,
}

/// Why an assertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("not a batch assertion")]
    NotAnAssertion,
    #[error("malformed batch assertion")]
    Malformed,
    #[error("batch assertion signature does not verify")]
    BadSignature,
    #[error("batch assertion expired")]
    Expired,
}

fn mac(secret: &[u8]) -> Option<Hmac<Sha256>> {
    Hmac::<Sha256>::new_from_slice(secret).ok()
}

/// The assertion for `claims` signed with `secret`; `None` when the secret is too short.
pub fn sign(claims: &BatchClaims, secret: &[u8]) -> Option<String> {
    if secret.len() < MIN_SECRET_BYTES {
        return None;
    }
    let json = serde_json::to_vec(claims).ok()?;
    let signed = format!(
        "{ASSERTION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    );
    let mut m = mac(secret)?;
    m.update(signed.as_bytes());
    Some(format!(
        "{signed}.{}",
        hex::encode(m.finalize().into_bytes())
    ))
}

/// The claims of `token` when it is an assertion signed with `secret` that has not expired
/// at `now_secs`. The signature is checked (in constant time) before the claims are read.
pub fn verify(token: &str, secret: &[u8], now_secs: u64) -> Result<BatchClaims, AssertionError> {
    if !token.starts_with(ASSERTION_PREFIX) {
        return Err(AssertionError::NotAnAssertion);
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(AssertionError::Malformed)?;
    let signature = hex::decode(signature).map_err(|_| AssertionError::Malformed)?;
    let mut m = mac(secret).ok_or(AssertionError::BadSignature)?;
    m.update(signed.as_bytes());
    m.verify_slice(&signature)
        .map_err(|_| AssertionError::BadSignature)?;
    let payload = signed
        .strip_prefix(ASSERTION_PREFIX)
        .ok_or(AssertionError::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AssertionError::Malformed)?;
    let claims: BatchClaims =
        serde_json::from_slice(&json).map_err(|_| AssertionError::Malformed)?;
    if claims.expires_at <= now_secs {
        return Err(AssertionError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims() -> BatchClaims {
        BatchClaims {
            key_id: "k1".into(),
            batch_id: "batch_1".into(),
            custom_id: "line-7".into(),
            expires_at: 1_000,
        }
    }

    #[test]
    fn a_signed_assertion_verifies_until_it_expires() {
        let token = sign(&claims(), SECRET).unwrap();
        assert!(token.starts_with(ASSERTION_PREFIX));
        assert_eq!(verify(&token, SECRET, 999), Ok(claims()));
        assert_eq!(verify(&token, SECRET, 1_000), Err(AssertionError::Expired));
    }

    #[test]
    fn another_secret_a_changed_claim_or_no_signature_is_refused() {
        let token = sign(&claims(), SECRET).unwrap();
        let other = b"fedcba9876543210fedcba9876543210";
        assert_eq!(verify(&token, other, 0), Err(AssertionError::BadSignature));
        // Claim another key: re-encode the claims, keep the old signature.
        let (_, signature) = token.rsplit_once('.').unwrap();
        let forged = BatchClaims {
            key_id: "admin".into(),
            ..claims()
        };
        let json = serde_json::to_vec(&forged).unwrap();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let forged = format!("{ASSERTION_PREFIX}{payload}.{signature}");
        assert_eq!(
            verify(&forged, SECRET, 0),
            Err(AssertionError::BadSignature)
        );
        let unsigned = token.rsplit_once('.').unwrap().0;
        assert_ne!(verify(unsigned, SECRET, 0).ok(), Some(claims()));
        assert_eq!(
            verify("sk-sluice-abc", SECRET, 0),
            Err(AssertionError::NotAnAssertion)
        );
        assert_eq!(
            verify("sluice-batch.x.zz", SECRET, 0),
            Err(AssertionError::Malformed)
        );
    }

    #[test]
    fn a_short_secret_signs_nothing() {
        assert_eq!(sign(&claims(), b"short"), None);
    }
}
