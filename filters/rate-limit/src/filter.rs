//! proxy-wasm glue for rate-limit (both stages). Policy is in decide.rs / store.rs.

use crate::config::{RateLimitConfig, Stage};
use crate::decide::{self, Denial, Held, Kind, Subject};
use crate::reset_header;
use crate::store::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use serde::Deserialize;
use sluice_common::{properties, ErrorKind, OpenAiError, Policy};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Envoy shared data: one map for all the VMs of this `vm_id`, across worker threads.
struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => {
                log::warn!("rate-limit: shared data write failed: {e:?}");
                Err(StoreError::Failed)
            }
        }
    }
}

fn now() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn property(name: &str) -> Option<String> {
    hostcalls::get_property(vec![name])
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

fn set_property(name: &str, value: &str) {
    if let Err(e) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
        log::warn!("rate-limit: set_property {name} failed: {e:?}");
    }
}

#[derive(Default)]
struct Root {
    config: Option<Rc<RateLimitConfig>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::error!("rate-limit: cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        let root_id = property("plugin_root_id").unwrap_or_default();
        let parsed = sluice_common::parse_config::<RateLimitConfig>(&bytes).and_then(|mut c| {
            c.resolve_stage(&root_id)?;
            c.validate().map(|()| c)
        });
        match parsed {
            Ok(c) => {
                log::info!(
                    "rate-limit: {:?} stage configured with {} rules",
                    c.stage(),
                    c.limits.len()
                );
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("rate-limit: configuration rejected: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            config: self.config.clone(),
            phase: Phase::Idle,
        }))
    }
}

/// Where a request is.
enum Phase {
    /// Nothing held (no policy, not counted, or already settled).
    Idle,
    /// Tokens stage: waiting for the body to read `max_tokens` and the model.
    AwaitingBody { policy: Policy, prompt_tokens: u64 },
    /// Admitted: counters held until the end of the stream.
    Admitted { held: Vec<Held>, reserved: u64 },
}

struct Http {
    config: Option<Rc<RateLimitConfig>>,
    phase: Phase,
}

/// The parts of a request body the tokens stage needs.
#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

fn kind_family(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::RequestsPerMinute => Some("requests"),
        Kind::TokensPerMinute => Some("tokens"),
        Kind::DailyTokens | Kind::MaxParallel => None,
    }
}

impl Http {
    fn stage(&self) -> Option<Stage> {
        self.config.as_ref().map(|c| c.stage())
    }

    fn refuse(&mut self, d: &Denial) -> Action {
        let what = match d.check.kind {
            Kind::RequestsPerMinute => "requests per minute",
            Kind::TokensPerMinute => "tokens per minute",
            Kind::DailyTokens => "tokens per day",
            Kind::MaxParallel => "requests in flight",
        };
        let scope = if d.check.rule == "key" {
            "this API key".to_string()
        } else {
            format!("limit '{}'", d.check.rule)
        };
        let message = if d.unavailable {
            format!("Rate limit check for {scope} ({what}) could not be completed; retry shortly.")
        } else {
            format!(
                "Rate limit reached for {scope}: {} {what}, {} left. Retry after {} s.",
                d.check.quota.limit, d.remaining, d.retry_after
            )
        };
        let error =
            OpenAiError::new(ErrorKind::RateLimited, message).with_code("rate_limit_exceeded");
        let retry = d.retry_after.to_string();
        let limit = d.check.quota.limit.to_string();
        let remaining = d.remaining.to_string();
        let reset = reset_header(d.retry_after);
        let mut headers: Vec<(String, &str)> = vec![
            ("content-type".into(), "application/json"),
            ("retry-after".into(), &retry),
        ];
        if let Some(family) = kind_family(d.check.kind) {
            headers.push((format!("x-ratelimit-limit-{family}"), &limit));
            headers.push((format!("x-ratelimit-remaining-{family}"), &remaining));
            headers.push((format!("x-ratelimit-reset-{family}"), &reset));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if let Err(e) = hostcalls::send_http_response(429, headers, Some(error.body().as_bytes())) {
            log::warn!("rate-limit: send_http_response failed: {e:?}");
        }
        self.publish(serde_json::json!({
            "decided_by": format!("{}:{}", d.check.rule, serde_json::to_value(d.check.kind).unwrap_or_default().as_str().unwrap_or("")),
            "limit": d.check.quota.limit, "remaining": d.remaining, "allowed": false,
        }));
        self.phase = Phase::Idle;
        Action::Pause
    }

    /// Merge this stage's record into `sluice_ratelimit` (both stages write it).
    fn publish(&self, record: serde_json::Value) {
        let stage = match self.stage() {
            Some(Stage::Admission) => "admission",
            _ => "tokens",
        };
        let mut all = property(properties::RATELIMIT)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = all.as_object_mut() {
            o.insert(stage.into(), record);
        }
        set_property(properties::RATELIMIT, &all.to_string());
    }

    fn admit(&mut self, policy: &Policy, model: Option<&str>, tokens: u64) -> Action {
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        let checks = decide::checks(&config, &Subject { policy, model });
        if checks.is_empty() {
            return Action::Continue;
        }
        match decide::admit(&EnvoyStore, &checks, now(), tokens) {
            Ok(held) => {
                self.phase = Phase::Admitted {
                    held,
                    reserved: tokens,
                };
                Action::Continue
            }
            Err(d) => self.refuse(&d),
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Some(stage) = self.stage() else {
            return Action::Continue;
        };
        // No policy: key-auth did not run for this route; nothing to limit by.
        let Some(policy) =
            property(properties::POLICY).and_then(|p| serde_json::from_str::<Policy>(&p).ok())
        else {
            return Action::Continue;
        };
        match stage {
            Stage::Admission => self.admit(&policy, None, 0),
            Stage::Tokens => {
                // Only requests token-counter counted carry tokens.
                let Some(prompt_tokens) =
                    property(properties::PROMPT_TOKENS).and_then(|p| p.parse().ok())
                else {
                    return Action::Continue;
                };
                if end_of_stream {
                    return self.admit(&policy, None, prompt_tokens);
                }
                self.phase = Phase::AwaitingBody {
                    policy,
                    prompt_tokens,
                };
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.phase, Phase::AwaitingBody { .. }) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Phase::AwaitingBody {
            policy,
            prompt_tokens,
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let view = serde_json::from_slice::<BodyView>(&body).ok();
        let max_tokens = view
            .as_ref()
            .and_then(|v| v.max_completion_tokens.or(v.max_tokens));
        let model = property(properties::MODEL).or_else(|| {
            view.as_ref()
                .and_then(|v| v.model.as_deref().map(str::to_string))
        });
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        let tokens = prompt_tokens + decide::output_reservation(&config, max_tokens);
        self.admit(&policy, model.as_deref(), tokens)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Phase::Admitted { held, .. } = &self.phase else {
            return Action::Continue;
        };
        let t = now();
        // For each family, the counter with the least left decides what the client sees.
        for family in ["requests", "tokens"] {
            let tightest = held
                .iter()
                .filter(|h| kind_family(h.check.kind) == Some(family))
                .min_by_key(|h| h.taken.remaining);
            if let Some(h) = tightest {
                let reset = reset_header(h.check.quota.reset_at(t).saturating_sub(t));
                for (name, value) in [
                    (
                        format!("x-ratelimit-limit-{family}"),
                        h.check.quota.limit.to_string(),
                    ),
                    (
                        format!("x-ratelimit-remaining-{family}"),
                        h.taken.remaining.to_string(),
                    ),
                    (format!("x-ratelimit-reset-{family}"), reset),
                ] {
                    if let Err(e) =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, Some(&value))
                    {
                        log::warn!("rate-limit: cannot add {name}: {e:?}");
                    }
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The end of the stream, however it ended (done, cut by the backend, abandoned by
        // the client): give back slots and settle token reservations. token-counter's
        // on_log ran before (it is earlier in the chain), so the final usage is known.
        let Phase::Admitted { held, reserved } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let status: u64 = hostcalls::get_property(vec!["response", "code"])
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let prompt: u64 = property(properties::PROMPT_TOKENS)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let completion: u64 = property(properties::COMPLETION_TOKENS)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // A request the backend did not serve costs nothing.
        let used = if (200..300).contains(&status) {
            prompt + completion
        } else {
            0
        };
        decide::settle(&EnvoyStore, &held, now(), used);
        let tokens_held = held.iter().any(|h| h.check.kind.is_tokens());
        let record = if tokens_held {
            serde_json::json!({"allowed": true, "reserved": reserved, "reconciled": used})
        } else {
            serde_json::json!({"allowed": true})
        };
        self.publish(record);
    }
}
