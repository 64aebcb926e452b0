//! Completion callbacks: when a batch ends (`completed`, `failed`, `expired`, `cancelled`),
//! an event is POSTed to the owner's webhook, signed as OpenAI signs its webhooks (the
//! Standard Webhooks scheme), so the OpenAI SDK's `client.webhooks.unwrap()` /
//! `verify_signature()` checks it:
//!
//! - body: `{"id": "evt_…", "object": "event", "type": "batch.completed", "created_at": …,
//!   "data": {"id": "batch_…"}}`;
//! - headers `webhook-id` (the event id), `webhook-timestamp` (Unix seconds, per attempt),
//!   `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`, the
//!   secret being the bytes after `whsec_` base64-decoded.
//!
//! Webhooks are the operator's configuration (`--webhooks`, per tenant, a key's entry
//! winning), never a URL a client sends: the service POSTs only where the operator said.
//! Deliveries are rows: a failed one (no answer, or not 2xx) is retried with a doubling
//! delay (1 s to 10 min) up to `MAX_ATTEMPTS`, across restarts.

use crate::model::Status;
use crate::now_secs;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::BTreeMap;

/// Attempts before a delivery is given up (about 17 minutes of retries in all).
pub const MAX_ATTEMPTS: i64 = 12;

/// One webhook: where, and the secret it is signed with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// `whsec_<base64>` (as OpenAI issues them) or plain text.
    pub secret: String,
}

/// `--webhooks` file: `{"tenants": {"team-a": {...}}, "keys": {"key_1": {...}}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    #[serde(default)]
    pub tenants: BTreeMap<String, Webhook>,
    #[serde(default)]
    pub keys: BTreeMap<String, Webhook>,
}

impl Webhooks {
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let hooks: Self =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (name, h) in hooks.tenants.iter().chain(hooks.keys.iter()) {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(format!("webhook of {name}: url must be http(s)"));
            }
            if secret_bytes(&h.secret).is_none_or(|s| s.len() < 16) {
                return Err(format!(
                    "webhook of {name}: secret must be at least 16 bytes"
                ));
            }
        }
        Ok(hooks)
    }

    /// The webhook of a batch owned by `key_id` of `tenant`, if any.
    pub fn for_owner(&self, tenant: &str, key_id: &str) -> Option<&Webhook> {
        self.keys.get(key_id).or_else(|| self.tenants.get(tenant))
    }
}

fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
        None => Some(secret.as_bytes().to_vec()),
    }
}

/// The event type for a batch's terminal status.
pub fn event_type(status: Status) -> Option<&'static str> {
    match status {
        Status::Completed => Some("batch.completed"),
        Status::Failed => Some("batch.failed"),
        Status::Expired => Some("batch.expired"),
        Status::Cancelled => Some("batch.cancelled"),
        _ => None,
    }
}

/// The event `id` of type `kind` about `batch_id`, as OpenAI's webhook events are shaped.
pub fn event(id: &str, kind: &str, batch_id: &str) -> String {
    serde_json::json!({"id": id, "object": "event", "type": kind,
                       "created_at": now_secs(), "data": {"id": batch_id}})
    .to_string()
}

/// The `webhook-signature` header value for `body` sent as event `id` at `timestamp`.
pub fn signature(secret: &str, id: &str, timestamp: u64, body: &str) -> Option<String> {
    let key = secret_bytes(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The delay before attempt `attempts + 1`, seconds: 1, 2, 4, … up to 600.
pub fn backoff_secs(attempts: i64) -> u64 {
    1u64.checked_shl(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20))
        .unwrap_or(600)
        .min(600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_as_standard_webhooks() {
        // The Standard Webhooks reference vector (svix): secret, id, timestamp, payload.
        let sig = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        let delays: Vec<u64> = (0..12).map(backoff_secs).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
    }

    #[test]
    fn a_keys_webhook_wins_over_its_tenants() {
        let hooks: Webhooks = serde_json::from_str(
            r#"{"tenants": {"t": {"url": "http://a", "secret": "0123456789abcdef"}},
                "keys": {"k": {"url": "http://b", "secret": "0123456789abcdef"}}}"#,
        )
        .unwrap();
        assert_eq!(hooks.for_owner("t", "k").unwrap().url, "http://b");
        assert_eq!(hooks.for_owner("t", "other").unwrap().url, "http://a");
        assert!(hooks.for_owner("u", "other").is_none());
    }
}
