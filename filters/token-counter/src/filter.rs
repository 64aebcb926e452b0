//! proxy-wasm glue for token-counter. No policy here: see request.rs / response.rs.

use crate::{label, plan_request, RequestPlan, ResponseTracker, Settings, TokenCounterConfig};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use sluice_common::properties;
use sluice_common::{ErrorKind, OpenAiError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counter ids per label set (`model.<m>.tenant.<t>.source.<s>`), defined on first use:
/// input tokens, output tokens, requests. Bounded: label values are folded
/// (`metric_models`, sanitized tenants) and the map stops growing at `MAX_LABEL_SETS`.
#[derive(Default)]
struct Counters {
    ids: HashMap<String, [Option<u32>; 3]>,
}

const MAX_LABEL_SETS: usize = 2048;

fn define(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("token-counter: define_metric failed: {e:?}");
            None
        }
    }
}

impl Counters {
    fn record(&mut self, labels: String, input: u64, output: u64) {
        if !self.ids.contains_key(&labels) {
            if self.ids.len() >= MAX_LABEL_SETS {
                return;
            }
            let ids = [
                define(&format!("gen_ai.client.token.usage.type.input.{labels}")),
                define(&format!("gen_ai.client.token.usage.type.output.{labels}")),
                define(&format!("sluice.llm.requests.{labels}")),
            ];
            self.ids.insert(labels.clone(), ids);
        }
        let Some(ids) = self.ids.get(&labels) else {
            return;
        };
        for (id, value) in ids.iter().zip([input, output, 1]) {
            if let Some(id) = id {
                let v = i64::try_from(value).unwrap_or(i64::MAX);
                if let Err(e) = hostcalls::increment_metric(*id, v) {
                    log::warn!("token-counter: increment_metric failed: {e:?}");
                }
            }
        }
    }
}

#[derive(Default)]
struct Root {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<Counters>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::error!("token-counter: cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        let settings =
            sluice_common::parse_config::<TokenCounterConfig>(&bytes).and_then(Settings::new);
        match settings {
            Ok(s) => {
                // Make the tokenizers ready now, not on the first request; report what
                // that costs this VM (each worker thread pays it once).
                let started = hostcalls::get_current_time().ok();
                let ready = sluice_tokenizer::ENCODINGS
                    .iter()
                    .all(|e| sluice_tokenizer::by_name(e).is_some_and(|t| t.count("ready") > 0));
                if !ready {
                    log::error!("token-counter: tokenizer tables are corrupt");
                    return false;
                }
                let micros = started
                    .and_then(|t| hostcalls::get_current_time().ok()?.duration_since(t).ok())
                    .map_or(0, |d| d.as_micros());
                let memory_mb = core::arch::wasm32::memory_size(0) as f64 * 65536.0 / 1e6;
                self.settings = Some(Rc::new(s));
                log::info!(
                    "token-counter: configured; tokenizers ready in {micros} us; VM linear memory {memory_mb:.1} MB"
                );
                true
            }
            Err(e) => {
                log::error!("token-counter: configuration rejected: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            settings: self.settings.clone(),
            counters: self.counters.clone(),
            phase: Phase::Passthrough,
        }))
    }
}

/// Where a request is.
enum Phase {
    /// Not an LLM call (or unconfigured): nothing to do.
    Passthrough,
    /// An LLM call whose body is being buffered.
    AwaitingBody(crate::Api),
    /// Counted and sent upstream.
    Sent(Box<RequestPlan>),
    /// The response is passing.
    Responding(Box<RequestPlan>, Box<ResponseTracker>),
    /// Usage published.
    Done,
}

struct Http {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<Counters>>,
    phase: Phase,
}

fn header(map: MapType, name: &str) -> Option<String> {
    match hostcalls::get_map_value_bytes(map, name) {
        Ok(Some(v)) => String::from_utf8(v).ok(),
        _ => None,
    }
}

fn set_property(name: &str, value: &str) {
    if let Err(e) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
        log::warn!("token-counter: set_property {name} failed: {e:?}");
    }
}

impl Http {
    fn reject(&mut self, error: &OpenAiError) -> Action {
        let headers = vec![OpenAiError::CONTENT_TYPE];
        if let Err(e) = hostcalls::send_http_response(
            u32::from(error.status()),
            headers,
            Some(error.body().as_bytes()),
        ) {
            log::warn!("token-counter: send_http_response failed: {e:?}");
        }
        self.phase = Phase::Done;
        Action::Pause
    }

    /// Publish the final usage once, and count it.
    fn finish(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let (plan, usage) = match phase {
            Phase::Responding(plan, mut tracker) => {
                let usage = tracker.finish();
                (plan, usage)
            }
            // Never got a response (upstream reset, client gone before headers).
            Phase::Sent(plan) => (
                plan,
                crate::CompletionUsage {
                    completion_tokens: 0,
                    source: crate::UsageSource::Counted,
                },
            ),
            other => {
                self.phase = other;
                return;
            }
        };
        set_property(
            properties::COMPLETION_TOKENS,
            &usage.completion_tokens.to_string(),
        );
        set_property(properties::USAGE_SOURCE, usage.source.as_str());
        let tenant = hostcalls::get_property(vec![properties::TENANT])
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        let model = self
            .settings
            .as_ref()
            .map_or("other", |s| s.model_label(&plan.model));
        let labels = format!(
            "model.{}.tenant.{}.source.{}",
            label(model),
            label(&tenant),
            usage.source.as_str()
        );
        self.counters
            .borrow_mut()
            .record(labels, plan.prompt_tokens, usage.completion_tokens);
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Some(settings) = self.settings.as_ref() else {
            return Action::Continue;
        };
        let method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        let Some(api) = settings.api(&method, &path) else {
            return Action::Continue;
        };
        if end_of_stream {
            let e = OpenAiError::new(ErrorKind::InvalidRequest, "The request has no body.");
            return self.reject(&e);
        }
        self.phase = Phase::AwaitingBody(api);
        // Hold the headers until the body is counted: it may still change.
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Phase::AwaitingBody(api) = self.phase else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        let Some(settings) = self.settings.clone() else {
            return Action::Continue;
        };
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::warn!("token-counter: cannot read the request body: {e:?}");
                Vec::new()
            }
        };
        match plan_request(&settings, api, &body) {
            Err(e) => self.reject(&e),
            Ok(mut plan) => {
                if let Some(new_body) = plan.new_body.take() {
                    if let Err(e) =
                        hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, &new_body)
                    {
                        log::warn!("token-counter: cannot rewrite the request body: {e:?}");
                        plan.injected_usage = false;
                    } else if let Err(e) = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "content-length",
                        Some(&new_body.len().to_string()),
                    ) {
                        log::warn!("token-counter: cannot set content-length: {e:?}");
                    }
                }
                set_property(properties::PROMPT_TOKENS, &plan.prompt_tokens.to_string());
                if let Some(cap) = plan.max_output_tokens {
                    set_property(properties::MAX_OUTPUT_TOKENS, &cap.to_string());
                }
                self.phase = Phase::Sent(Box::new(plan));
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::Sent(plan) = phase else {
            self.phase = phase;
            return Action::Continue;
        };
        let status = header(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = header(MapType::HttpResponseHeaders, "content-type");
        let max = self
            .settings
            .as_ref()
            .map_or(1 << 20, |s| s.max_counted_bytes);
        let tracker = ResponseTracker::new(
            plan.api,
            status,
            content_type.as_deref(),
            plan.stream,
            plan.injected_usage,
            plan.tokenizer,
            max,
        );
        if tracker.rewrites() {
            if let Err(e) =
                hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length")
            {
                log::warn!("token-counter: cannot remove content-length: {e:?}");
            }
        }
        self.phase = Phase::Responding(plan, Box::new(tracker));
        if end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if let Phase::Responding(_, tracker) = &mut self.phase {
            let chunk = match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size) {
                Ok(b) => b.unwrap_or_default(),
                Err(e) => {
                    log::warn!("token-counter: cannot read a response chunk: {e:?}");
                    Vec::new()
                }
            };
            if let Some(replacement) = tracker.on_chunk(&chunk, end_of_stream) {
                if let Err(e) =
                    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, &replacement)
                {
                    log::warn!("token-counter: cannot rewrite a response chunk: {e:?}");
                }
            }
            if end_of_stream {
                self.finish();
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A stream cut by the backend or the client never reached end_of_stream: its usage
        // record is made here from what passed.
        self.finish();
    }
}
