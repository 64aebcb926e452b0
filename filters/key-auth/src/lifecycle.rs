//! key-auth's lifecycle: configured once per VM, one decision per request at its headers.

use crate::{on_request_headers, Denial, KeyAuthConfig, KeyStore, Outcome};
use sluice_common::host::{plugin_config, Counters, Flow, Host, Lifecycle, Plugin};
use sluice_common::ConfigError;
use std::rc::Rc;

/// What a request is counted as (`wasmcustom.sluice.key_auth.{allowed,denied.<reason>}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Allowed,
    Denied(Denial),
}

/// The configured filter: the key store and its counters.
pub struct KeyAuth {
    store: KeyStore,
    counters: Counters<Counted>,
}

impl Plugin for KeyAuth {
    const NAME: &'static str = "key-auth";
    type Request = KeyAuthRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config: KeyAuthConfig = plugin_config(host)?;
        let store = KeyStore::from_config(&config)?;
        log::info!("key-auth: configured with {} keys", store.len());
        let names: Vec<(Counted, String)> = std::iter::once((Counted::Allowed, "allowed".into()))
            .chain(
                Denial::ALL
                    .iter()
                    .map(|d| (Counted::Denied(*d), format!("denied.{}", d.reason()))),
            )
            .collect();
        let names: Vec<(Counted, &str)> = names.iter().map(|(c, n)| (*c, n.as_str())).collect();
        Ok(Self {
            store,
            counters: Counters::define(host, "sluice.key_auth", &names),
        })
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> KeyAuthRequest {
        KeyAuthRequest(self.clone())
    }
}

pub struct KeyAuthRequest(Rc<KeyAuth>);

impl Lifecycle for KeyAuthRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        match on_request_headers(&self.0.store, host) {
            Outcome::Allowed { key_id } => {
                log::debug!("key-auth: allowed key {key_id}");
                self.0.counters.add(host, Counted::Allowed, 1);
                Flow::Continue
            }
            Outcome::Denied(denial) => {
                log::debug!("key-auth: denied ({})", denial.reason());
                self.0.counters.add(host, Counted::Denied(denial), 1);
                Flow::Pause
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::host::Side;
    use sluice_testkit::{Call, MockHost};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const CONFIG: &str = r#"{"batch_secret":"0123456789abcdef0123456789abcdef",
        "keys":[{"id":"k1","tenant":"team-a","sha256":"HASH","models":["*"]}]}"#;

    /// What an allowed request of key k1 does, in order: strips the credential, publishes
    /// the identity (and the batch line, for an assertion), counts.
    fn allowed_calls(host: &MockHost, priority: &str, batch: Option<&str>) -> Vec<Call> {
        let mut calls = vec![
            Call::RemoveHeader(Side::Request, "authorization".into()),
            Call::SetProperty("sluice_key_id".into(), "k1".into()),
            Call::SetProperty("sluice_tenant".into(), "team-a".into()),
            Call::SetProperty(
                "sluice_policy".into(),
                host.text_property("sluice_policy").unwrap().into(),
            ),
            Call::SetProperty("sluice_priority".into(), priority.into()),
        ];
        if let Some(line) = batch {
            calls.push(Call::SetProperty("sluice_batch".into(), line.into()));
        }
        calls.push(Call::Increment("sluice.key_auth.allowed".into(), 1));
        calls
    }

    /// The filter configured on `host`'s VM, and the host ready for a request.
    fn plugin(host: &mut MockHost, headers: &[(&str, &str)]) -> Rc<KeyAuth> {
        let config = CONFIG.replace("HASH", &hex::encode(crate::digest("sk-sluice-good")));
        host.plugin_config = config.into_bytes();
        let plugin = Rc::new(KeyAuth::configure(host).unwrap());
        host.next_request(headers);
        plugin
    }

    #[test]
    fn a_bad_or_missing_configuration_is_refused() {
        for config in ["", "{", r#"{"keys":[],"extra":1}"#] {
            let mut host = MockHost::new();
            host.plugin_config = config.as_bytes().to_vec();
            assert!(KeyAuth::configure(&mut host).is_err(), "{config:?}");
        }
    }

    #[test]
    fn an_allowed_request_strips_its_key_publishes_and_counts() {
        let mut host = MockHost::new();
        let plugin = plugin(
            &mut host,
            &[
                (":path", "/v1/chat/completions"),
                ("authorization", "Bearer sk-sluice-good"),
            ],
        );
        let flow = plugin.new_request(1).on_request_headers(&mut host, false);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(host.calls(), allowed_calls(&host, "interactive", None));
    }

    #[test]
    fn a_batch_assertion_runs_as_its_key_at_batch_priority_and_names_the_line() {
        let token = sluice_common::batch::sign(
            &sluice_common::batch::BatchClaims {
                key_id: "k1".into(),
                batch_id: "batch_1".into(),
                custom_id: "line-9".into(),
                expires_at: u64::MAX,
            },
            SECRET.as_bytes(),
        )
        .unwrap();
        let bearer = format!("Bearer {token}");
        let mut host = MockHost::new();
        let plugin = plugin(
            &mut host,
            &[
                (":path", "/v1/chat/completions"),
                ("authorization", bearer.as_str()),
            ],
        );
        let flow = plugin.new_request(1).on_request_headers(&mut host, false);
        assert_eq!(flow, Flow::Continue);
        let line = r#"{"batch_id":"batch_1","custom_id":"line-9"}"#;
        assert_eq!(host.calls(), allowed_calls(&host, "batch", Some(line)));
    }

    #[test]
    fn a_denied_request_gets_one_reply_and_is_held() {
        let mut host = MockHost::new();
        let plugin = plugin(&mut host, &[(":path", "/v1/messages")]);
        let flow = plugin.new_request(1).on_request_headers(&mut host, false);
        assert_eq!(flow, Flow::Pause);
        assert_eq!(host.calls().len(), 2, "{:?}", host.calls());
        let reply = host.reply().unwrap();
        assert_eq!(reply.status, 401);
        // Anthropic's error shape under /v1/messages.
        assert!(reply.body.contains(r#""type":"error""#), "{}", reply.body);
        assert_eq!(host.counted(), vec!["sluice.key_auth.denied.missing"]);
    }
}
