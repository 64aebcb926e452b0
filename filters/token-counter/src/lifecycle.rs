//! token-counter's lifecycle: an LLM call's body is held until its prompt is counted and
//! published; the answer is read as it passes (usage found, a hidden usage chunk removed, a
//! missing Messages `message_start` made, an engine's error normalised); the usage is
//! published and counted exactly once, however the stream ends.

use crate::prompt::CountMemos;
use crate::{
    plan_request, Api, CompletionUsage, RequestPlan, ResponseTracker, Settings, TokenCounterConfig,
    UsageSource,
};
use sluice_common::api::messages_start_event;
use sluice_common::host::{
    header_values, now_unix_millis, now_unix_secs, plugin_config, replace_request_body,
    request_line, send_error, set_text_property, text_property, CounterSet, Flow, Histogram, Host,
    Lifecycle, Plugin, Side,
};
use sluice_common::logging::LogEvery;
use sluice_common::{properties, ConfigError, ErrorKind, OpenAiError};
use std::cell::RefCell;
use std::rc::Rc;

/// Counters per label set (`model.<m>.tenant.<t>.source.<s>`): input tokens, output
/// tokens, requests. Bounded: label values are folded (`metric_models`, sanitized tenants)
/// and the set stops growing at `MAX_LABEL_SETS` label sets.
const MAX_LABEL_SETS: usize = 2048;

/// The most bytes of an engine's error answer buffered to normalise it (engines send a few
/// hundred); past it the body is not read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The configured filter.
pub struct TokenCounter {
    settings: Settings,
    counters: RefCell<CounterSet>,
    /// Token counts of the texts counted lately.
    memos: CountMemos,
    /// `sluice.llm.time_to_first_byte_ms`: from the request leaving for the backend to the
    /// first byte of the response body (the first token of a stream).
    ttfb: Histogram,
    /// Log lines of events that may come with every request, one a minute per worker
    /// each: estimates the backend's count contradicts (`sluice.llm.prompt_estimate_off`
    /// counts each), errors inside a backend's stream, and engine error answers whose
    /// status the gateway changes (a failing engine fails every request alike).
    estimate_off_log: LogEvery,
    stream_error_log: LogEvery,
    engine_error_log: LogEvery,
}

/// The counter families, their labels' keys in the series' names and the tags Envoy's
/// stats configuration exports them as (`envoy/envoy.yaml.j2`'s `stats_tags`).
const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
const REQUESTS: &str = "sluice.llm.requests";
const ESTIMATE_OFF: &str = "sluice.llm.prompt_estimate_off";
const TOKEN_USAGE_LABELS: [(&str, &str); 4] = [
    ("type", "gen_ai_token_type"),
    ("model", "gen_ai_request_model"),
    ("tenant", "tenant"),
    ("source", "usage_source"),
];

impl TokenCounter {
    pub fn new(host: &mut dyn Host, settings: Settings) -> Self {
        let mut counters = CounterSet::new(3 * MAX_LABEL_SETS);
        counters.declare(host, TOKEN_USAGE, &TOKEN_USAGE_LABELS);
        for family in [REQUESTS, ESTIMATE_OFF] {
            counters.declare(host, family, &TOKEN_USAGE_LABELS[1..]);
        }
        Self {
            settings,
            counters: RefCell::new(counters),
            memos: CountMemos::default(),
            ttfb: Histogram::define(host, "sluice.llm.time_to_first_byte_ms"),
            estimate_off_log: LogEvery::new(60_000),
            stream_error_log: LogEvery::new(60_000),
            engine_error_log: LogEvery::new(60_000),
        }
    }
}

/// The VM's linear memory in MB (what the tokenizer tables cost), where there is one.
fn linear_memory_mb() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as f64 * 65536.0 / 1e6
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0.0
    }
}

impl Plugin for TokenCounter {
    const NAME: &'static str = "token-counter";
    type Request = CountedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let micros_since = |host: &dyn Host, t: u64| host.now_unix_nanos().saturating_sub(t) / 1000;
        // Settings compile the rules' chat templates: part of what a VM start costs.
        let started = host.now_unix_nanos();
        let settings = Settings::new(plugin_config::<TokenCounterConfig>(host)?)?;
        let settings_micros = micros_since(host, started);
        // Make the tokenizers ready now, not on the first request; report what that costs
        // this VM (each worker thread pays it once). The tiktoken encodings are always built
        // in; an open family only when its vocabulary was there at build time (a rule naming
        // a missing one fails above).
        let started = host.now_unix_nanos();
        let ready = sluice_tokenizer::TIKTOKEN_ENCODINGS
            .iter()
            .all(|e| sluice_tokenizer::by_name(e).is_some())
            && sluice_tokenizer::ENCODINGS
                .iter()
                .filter_map(|e| sluice_tokenizer::by_name(e))
                .all(|t| t.count("ready") > 0);
        if !ready {
            return Err(ConfigError::Invalid("tokenizer tables are corrupt".into()));
        }
        log::info!(
            "token-counter: configured in {settings_micros} us (chat templates compiled); tokenizers ready in {} us; VM linear memory {:.1} MB",
            micros_since(host, started),
            linear_memory_mb()
        );
        Ok(Self::new(host, settings))
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> CountedRequest {
        CountedRequest {
            filter: self.clone(),
            phase: Phase::Passthrough,
            sent_at_ms: None,
        }
    }
}

/// Where a request is.
enum Phase {
    /// Not an LLM call: nothing to do.
    Passthrough,
    /// An LLM call whose body is being buffered.
    AwaitingBody(Api),
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

pub struct CountedRequest {
    filter: Rc<TokenCounter>,
    phase: Phase,
    /// When the counted request left for the backend; taken when the first body byte of
    /// the response is recorded.
    sent_at_ms: Option<u64>,
}

/// Whether the response came from the backend (not a local reply of Envoy or a filter,
/// which are already in the gateway's shape).
fn from_upstream(host: &dyn Host) -> bool {
    host.property(&["response", "code_details"])
        .is_some_and(|d| d == b"via_upstream")
}

impl CountedRequest {
    fn reject(&mut self, host: &mut dyn Host, error: &OpenAiError) -> Flow {
        send_error(host, error, &[]);
        self.phase = Phase::Done;
        Flow::Pause
    }

    /// Publish the final usage once, and count it.
    fn finish(&mut self, host: &mut dyn Host) {
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
                CompletionUsage {
                    completion_tokens: 0,
                    source: UsageSource::Counted,
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
            set_text_property(host, properties::PROMPT_TOKENS, &prompt_tokens.to_string());
        }
        set_text_property(
            host,
            properties::COMPLETION_TOKENS,
            &usage.completion_tokens.to_string(),
        );
        set_text_property(host, properties::USAGE_SOURCE, usage.source.as_str());
        if let Some(e) = &usage.stream_error {
            if let Some(more) = self.filter.stream_error_log.due(now_unix_millis(host)) {
                log::info!("token-counter: the backend reported an error in the stream: {e} ({more} more since the last line)");
            }
            set_text_property(host, properties::ERROR, e);
        }
        let tenant = text_property(host, properties::TENANT).unwrap_or_default();
        let model = self.filter.settings.model_label(&plan.model);
        let mut labels = [
            ("type", "input"),
            ("model", model),
            ("tenant", tenant.as_str()),
            ("source", usage.source.as_str()),
        ];
        let mut counters = self.filter.counters.borrow_mut();
        counters.add_labeled(host, &[TOKEN_USAGE], &labels, prompt_tokens);
        labels[0].1 = "output";
        counters.add_labeled(host, &[TOKEN_USAGE], &labels, usage.completion_tokens);
        let labels = &labels[1..];
        counters.add_labeled(host, &[REQUESTS], labels, 1);
        if let Some(backend) = usage.backend_prompt_tokens {
            if crate::prompt::estimate_is_off(plan.prompt_tokens, backend) {
                if let Some(more) = self.filter.estimate_off_log.due(now_unix_millis(host)) {
                    log::info!(
                        "token-counter: {} prompt tokens estimated, the backend counted {backend} (model {}): check the model's encoding and chat template ({more} more such requests since the last line; sluice_llm_prompt_estimate_off counts them)",
                        plan.prompt_tokens,
                        plan.model
                    );
                }
                counters.add_labeled(host, &[ESTIMATE_OFF], labels, 1);
            }
        }
    }

    /// Replace a buffered engine error answer by the normalised one: status, content type
    /// and the body in the called API's error shape. Returns the new body.
    fn normalise_error(&mut self, host: &mut dyn Host, body: &[u8]) -> Option<Vec<u8>> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::EngineError(plan, status) = phase else {
            self.phase = phase;
            return None;
        };
        let e = sluice_common::engine_error::normalise(status, body);
        if e.status != status {
            if let Some(more) = self.filter.engine_error_log.due(now_unix_millis(host)) {
                log::info!(
                    "token-counter: the backend answered {status} to a request it rejected; the client gets {} ({more} more such answers since the last line)",
                    e.status
                );
            }
        }
        host.set_header(Side::Response, ":status", &e.status.to_string());
        host.set_header(
            Side::Response,
            OpenAiError::CONTENT_TYPE.0,
            OpenAiError::CONTENT_TYPE.1,
        );
        set_text_property(host, properties::ERROR, &e.error.message);
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
        self.finish(host);
        Some(new_body)
    }
}

impl Lifecycle for CountedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let (method, path) = request_line(host);
        let Some(api) = self.filter.settings.api(&method, &path) else {
            return Flow::Continue;
        };
        if end_of_stream {
            let e = OpenAiError::new(ErrorKind::InvalidRequest, "The request has no body.");
            return self.reject(host, &e);
        }
        set_text_property(host, properties::API, api.as_str());
        self.phase = Phase::AwaitingBody(api);
        // Hold the headers until the body is counted: it may still change.
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::AwaitingBody(api) = self.phase else {
            return Flow::Continue;
        };
        if !end_of_stream {
            return Flow::Pause; // buffer until the whole body is here
        }
        let body = host.body(Side::Request, size);
        let filter = self.filter.clone();
        match plan_request(
            &filter.settings,
            api,
            &body,
            now_unix_secs(host),
            Some(&filter.memos),
        ) {
            Err(e) => self.reject(host, &e),
            Ok(mut plan) => {
                if let Some(new_body) = plan.new_body.take() {
                    if !replace_request_body(host, size, &new_body) {
                        plan.injected_usage = false;
                    }
                }
                let prompt = plan.prompt_tokens.to_string();
                set_text_property(host, properties::PROMPT_TOKENS, &prompt);
                set_text_property(host, properties::PROMPT_TOKENS_ESTIMATED, &prompt);
                if let Some(cap) = plan.max_output_tokens {
                    set_text_property(host, properties::MAX_OUTPUT_TOKENS, &cap.to_string());
                }
                self.phase = Phase::Sent(Box::new(plan));
                self.sent_at_ms = Some(now_unix_millis(host));
                Flow::Continue
            }
        }
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::Sent(plan) = phase else {
            self.phase = phase;
            return Flow::Continue;
        };
        let [status, content_type] =
            header_values(host, Side::Response, [":status", "content-type"]);
        let status = status.and_then(|s| s.parse().ok()).unwrap_or(0);
        if status >= 400 && from_upstream(host) {
            // Hold the headers: the status and body are replaced once the body is read.
            host.remove_header(Side::Response, "content-length");
            self.phase = Phase::EngineError(plan, status);
            if end_of_stream {
                self.normalise_error(host, &[]);
                return Flow::Continue;
            }
            return Flow::Pause;
        }
        let mut tracker = ResponseTracker::new(
            plan.api,
            status,
            content_type.as_deref(),
            plan.stream,
            plan.injected_usage,
            plan.tokenizer,
            self.filter.settings.max_counted_bytes,
        );
        if plan.api == Api::Messages && plan.stream {
            let id = host
                .property(&["request", "id"])
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            tracker.ensure_message_start(messages_start_event(
                &format!("msg_{id}"),
                &plan.model,
                plan.prompt_tokens,
            ));
        }
        if tracker.rewrites() {
            host.remove_header(Side::Response, "content-length");
        }
        self.phase = Phase::Responding(plan, Box::new(tracker));
        if end_of_stream {
            self.finish(host);
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        if size > 0 {
            if let Some(sent) = self.sent_at_ms.take() {
                let waited = now_unix_millis(host).saturating_sub(sent);
                self.filter.ttfb.record(host, waited);
            }
        }
        match &mut self.phase {
            Phase::EngineError(..) => {
                if !end_of_stream && size <= MAX_ERROR_BODY {
                    return Flow::Pause; // buffer the (small) error body
                }
                // An error body too large to be one (or to buffer): replaced by the
                // normalised error from its status alone.
                let too_large = size > MAX_ERROR_BODY;
                let body = if too_large {
                    Vec::new()
                } else {
                    host.body(Side::Response, size)
                };
                if let Some(replacement) = self.normalise_error(host, &body) {
                    host.set_body(Side::Response, size, &replacement);
                }
                if too_large && !end_of_stream {
                    self.phase = Phase::DiscardingBody;
                }
            }
            Phase::DiscardingBody => {
                // The rest of an oversized error body: the client already has the
                // normalised one.
                host.set_body(Side::Response, size, &[]);
            }
            Phase::Responding(_, tracker) => {
                let chunk = host.body(Side::Response, size);
                if let Some(replacement) = tracker.on_chunk(&chunk, end_of_stream) {
                    host.set_body(Side::Response, size, &replacement);
                }
                if end_of_stream {
                    self.finish(host);
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        // A stream cut by the backend or the client never reached end_of_stream: its usage
        // record is made here from what passed.
        self.finish(host);
    }
}

#[cfg(test)]
mod tests;
