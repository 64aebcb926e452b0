//! proxy-wasm glue for token-counter. No policy here: see request.rs / response.rs.

use crate::{label, plan_request, RequestPlan, ResponseTracker, Settings, TokenCounterConfig};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use sluice_common::api::messages_start_event;
use sluice_common::properties;
use sluice_common::{ErrorKind, OpenAiError};
use sluice_proxy::{
    define_histogram, header, now_unix_millis, property, read_body, record, remove_header,
    send_error, set_header, set_property, write_body, CounterSet,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counters per label set (`model.<m>.tenant.<t>.source.<s>`): input tokens, output
/// tokens, requests. Bounded: label values are folded (`metric_models`, sanitized tenants)
/// and the set stops growing at `MAX_LABEL_SETS` label sets.
const MAX_LABEL_SETS: usize = 2048;

fn count_usage(counters: &mut CounterSet, labels: &str, input: u64, output: u64) {
    counters.add(
        &format!("gen_ai.client.token.usage.type.input.{labels}"),
        input,
    );
    counters.add(
        &format!("gen_ai.client.token.usage.type.output.{labels}"),
        output,
    );
    counters.add(&format!("sluice.llm.requests.{labels}"), 1);
}

struct Root {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<CounterSet>>,
    /// `sluice.llm.time_to_first_byte_ms`: from the request leaving for the backend to the
    /// first byte of the response body (the first token of a stream).
    ttfb: Rc<Cell<Option<u32>>>,
}

impl Default for Root {
    fn default() -> Self {
        Self {
            settings: None,
            counters: Rc::new(RefCell::new(CounterSet::new(3 * MAX_LABEL_SETS))),
            ttfb: Rc::new(Cell::new(None)),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parse =
            |b: &[u8]| sluice_common::parse_config::<TokenCounterConfig>(b).and_then(Settings::new);
        // Settings compile the rules' chat templates: part of what a VM start costs.
        let configure_started = hostcalls::get_current_time().ok();
        let Some(s) = sluice_proxy::configure("token-counter", parse) else {
            return false;
        };
        let since = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| hostcalls::get_current_time().ok()?.duration_since(t).ok())
                .map_or(0, |d| d.as_micros())
        };
        let settings_micros = since(configure_started);
        // Make the tokenizers ready now, not on the first request; report what that costs
        // this VM (each worker thread pays it once).
        let started = hostcalls::get_current_time().ok();
        // The tiktoken encodings are always built in; an open family only when its
        // vocabulary was there at build time (a rule naming a missing one fails above).
        let ready = sluice_tokenizer::TIKTOKEN_ENCODINGS
            .iter()
            .all(|e| sluice_tokenizer::by_name(e).is_some())
            && sluice_tokenizer::ENCODINGS
                .iter()
                .filter_map(|e| sluice_tokenizer::by_name(e))
                .all(|t| t.count("ready") > 0);
        if !ready {
            log::error!("token-counter: tokenizer tables are corrupt");
            return false;
        }
        let micros = since(started);
        let memory_mb = core::arch::wasm32::memory_size(0) as f64 * 65536.0 / 1e6;
        self.settings = Some(Rc::new(s));
        if self.ttfb.get().is_none() {
            self.ttfb
                .set(define_histogram("sluice.llm.time_to_first_byte_ms"));
        }
        log::info!(
            "token-counter: configured in {settings_micros} us (chat templates compiled); tokenizers ready in {micros} us; VM linear memory {memory_mb:.1} MB"
        );
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            settings: self.settings.clone(),
            counters: self.counters.clone(),
            phase: Phase::Passthrough,
            ttfb: self.ttfb.get(),
            sent_at_ms: None,
        }))
    }
}

/// The most bytes of an engine's error answer buffered to normalise it (engines send a few
/// hundred); past it the body is not read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where a request is.
enum Phase {
    /// Not an LLM call (or unconfigured): nothing to do.
    Passthrough,
    /// An LLM call whose body is being buffered.
    AwaitingBody(crate::Api),
    /// Counted and sent upstream.
    Sent(Box<RequestPlan>),
    /// The backend answered with an error status: its body is buffered, then replaced by
    /// the normalised error (status and the API's error shape).
    EngineError(Box<RequestPlan>, u16),
    /// The response is passing.
    Responding(Box<RequestPlan>, Box<ResponseTracker>),
    /// Usage published.
    Done,
    /// Usage published; the rest of an oversized engine error body is dropped.
    DiscardingBody,
}

struct Http {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<CounterSet>>,
    phase: Phase,
    ttfb: Option<u32>,
    /// When the counted request left for the backend; taken when the first body byte of
    /// the response is recorded.
    sent_at_ms: Option<u64>,
}

fn set_text_property(name: &str, value: &str) {
    set_property(name, value.as_bytes());
}

impl Http {
    fn reject(&mut self, error: &OpenAiError) -> Action {
        send_error(error, &[]);
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
            // Never got a response (upstream reset, client gone before headers), or the
            // client left while an error answer was buffered.
            Phase::Sent(plan) | Phase::EngineError(plan, _) => (
                plan,
                crate::CompletionUsage {
                    completion_tokens: 0,
                    source: crate::UsageSource::Counted,
                    backend_prompt_tokens: None,
                    stream_error: None,
                },
            ),
            other => {
                self.phase = other;
                return;
            }
        };
        // The backend's prompt count is the truth when it reports one; ours stays in
        // sluice_prompt_tokens_estimated.
        let prompt_tokens = usage.backend_prompt_tokens.unwrap_or(plan.prompt_tokens);
        if usage.backend_prompt_tokens.is_some() {
            set_text_property(properties::PROMPT_TOKENS, &prompt_tokens.to_string());
        }
        set_text_property(
            properties::COMPLETION_TOKENS,
            &usage.completion_tokens.to_string(),
        );
        set_text_property(properties::USAGE_SOURCE, usage.source.as_str());
        if let Some(e) = &usage.stream_error {
            log::info!("token-counter: the backend reported an error in the stream: {e}");
            set_text_property(properties::ERROR, e);
        }
        let tenant = property(properties::TENANT).unwrap_or_default();
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
        count_usage(
            &mut self.counters.borrow_mut(),
            &labels,
            prompt_tokens,
            usage.completion_tokens,
        );
        if let Some(backend) = usage.backend_prompt_tokens {
            if crate::prompt::estimate_is_off(plan.prompt_tokens, backend) {
                log::info!(
                    "token-counter: {} prompt tokens estimated, the backend counted {backend} (model {}): check the model's encoding and chat template",
                    plan.prompt_tokens,
                    plan.model
                );
                self.counters
                    .borrow_mut()
                    .add(&format!("sluice.llm.prompt_estimate_off.{labels}"), 1);
            }
        }
    }
}

impl Http {
    /// Replace a buffered engine error answer by the normalised one: status, content type
    /// and the body in the called API's error shape. Returns the new body.
    fn normalise_error(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::EngineError(plan, status) = phase else {
            self.phase = phase;
            return None;
        };
        let e = sluice_common::engine_error::normalise(status, body);
        if e.status != status {
            log::info!(
                "token-counter: the backend answered {status} to a request it rejected; the client gets {}",
                e.status
            );
        }
        set_header(
            MapType::HttpResponseHeaders,
            ":status",
            &e.status.to_string(),
        );
        set_header(
            MapType::HttpResponseHeaders,
            OpenAiError::CONTENT_TYPE.0,
            OpenAiError::CONTENT_TYPE.1,
        );
        set_text_property(properties::ERROR, &e.error.message);
        let new_body = e.body(plan.api.family()).into_bytes();
        let tracker = ResponseTracker::new(
            plan.api,
            e.status,
            Some("application/json"),
            false,
            false,
            plan.tokenizer,
            0,
        );
        self.phase = Phase::Responding(plan, Box::new(tracker));
        self.finish();
        Some(new_body)
    }
}

/// Whether the response came from the backend (not a local reply of Envoy or a filter,
/// which are already in the gateway's shape).
fn from_upstream() -> bool {
    hostcalls::get_property(vec!["response", "code_details"])
        .ok()
        .flatten()
        .is_some_and(|d| d == b"via_upstream")
}

/// Envoy's id of the request (`x-request-id`).
fn request_id() -> Option<String> {
    hostcalls::get_property(vec!["request", "id"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
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
        set_text_property(properties::API, api.as_str());
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
        let body = read_body(BufferType::HttpRequestBody, size);
        match plan_request(&settings, api, &body, sluice_proxy::now_unix_secs()) {
            Err(e) => self.reject(&e),
            Ok(mut plan) => {
                if let Some(new_body) = plan.new_body.take() {
                    if !write_body(BufferType::HttpRequestBody, size, &new_body) {
                        plan.injected_usage = false;
                    } else if let Err(e) = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "content-length",
                        Some(&new_body.len().to_string()),
                    ) {
                        log::warn!("token-counter: cannot set content-length: {e:?}");
                    }
                }
                set_text_property(properties::PROMPT_TOKENS, &plan.prompt_tokens.to_string());
                set_text_property(
                    properties::PROMPT_TOKENS_ESTIMATED,
                    &plan.prompt_tokens.to_string(),
                );
                if let Some(cap) = plan.max_output_tokens {
                    set_text_property(properties::MAX_OUTPUT_TOKENS, &cap.to_string());
                }
                self.phase = Phase::Sent(Box::new(plan));
                self.sent_at_ms = Some(now_unix_millis());
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
        if status >= 400 && from_upstream() {
            // Hold the headers: the status and body are replaced once the body is read.
            remove_header(MapType::HttpResponseHeaders, "content-length");
            self.phase = Phase::EngineError(plan, status);
            if end_of_stream {
                self.normalise_error(&[]);
                return Action::Continue;
            }
            return Action::Pause;
        }
        let content_type = header(MapType::HttpResponseHeaders, "content-type");
        let max = self
            .settings
            .as_ref()
            .map_or(1 << 20, |s| s.max_counted_bytes);
        let mut tracker = ResponseTracker::new(
            plan.api,
            status,
            content_type.as_deref(),
            plan.stream,
            plan.injected_usage,
            plan.tokenizer,
            max,
        );
        if plan.api == crate::Api::Messages {
            tracker.ensure_message_start(messages_start_event(
                &format!("msg_{}", request_id().unwrap_or_default()),
                &plan.model,
                plan.prompt_tokens,
            ));
        }
        if tracker.rewrites() {
            remove_header(MapType::HttpResponseHeaders, "content-length");
        }
        self.phase = Phase::Responding(plan, Box::new(tracker));
        if end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if size > 0 {
            if let Some(sent) = self.sent_at_ms.take() {
                record(self.ttfb, now_unix_millis().saturating_sub(sent));
            }
        }
        if let Phase::EngineError(..) = self.phase {
            if !end_of_stream && size <= MAX_ERROR_BODY {
                return Action::Pause; // buffer the (small) error body
            }
            // An error body too large to be one (or to buffer): replaced by the normalised
            // error from its status alone.
            let too_large = size > MAX_ERROR_BODY;
            let body = if too_large {
                Vec::new()
            } else {
                read_body(BufferType::HttpResponseBody, size)
            };
            if let Some(replacement) = self.normalise_error(&body) {
                write_body(BufferType::HttpResponseBody, size, &replacement);
            }
            if too_large && !end_of_stream {
                self.phase = Phase::DiscardingBody;
            }
            return Action::Continue;
        }
        if let Phase::DiscardingBody = self.phase {
            // The rest of an oversized error body: the client already has the normalised one.
            write_body(BufferType::HttpResponseBody, size, &[]);
            return Action::Continue;
        }
        if let Phase::Responding(_, tracker) = &mut self.phase {
            let chunk = read_body(BufferType::HttpResponseBody, size);
            if let Some(replacement) = tracker.on_chunk(&chunk, end_of_stream) {
                write_body(BufferType::HttpResponseBody, size, &replacement);
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
