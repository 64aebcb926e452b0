//! proxy-wasm glue for pii-redaction. No policy here: see body.rs / events.rs.

use crate::{
    redact_response, scan_request, Api, Direction, NotScanned, PiiConfig, Redactor, RequestOutcome,
    Settings, SseRedactor,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use sluice_common::properties;
use sluice_common::OpenAiError;
use sluice_proxy::{
    header, read_body, remove_header, send_error, set_property, write_body, CounterSet,
};
use std::cell::RefCell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Largest SSE event edited; a bigger one turns the stream into a pass-through.
const MAX_EVENT: usize = 1 << 20;
/// Counter names are bounded: entity names are built-ins or configured, actions and
/// directions are fixed.
const MAX_COUNTERS: usize = 1024;

struct Root {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<CounterSet>>,
}

impl Default for Root {
    fn default() -> Self {
        Self {
            settings: None,
            counters: Rc::new(RefCell::new(CounterSet::new(MAX_COUNTERS))),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parse = |b: &[u8]| sluice_common::parse_config::<PiiConfig>(b).and_then(Settings::new);
        let Some(s) = sluice_proxy::configure("pii-redaction", parse) else {
            return false;
        };
        log::info!(
            "pii-redaction: configured; {} built-in and {} custom entities on",
            crate::BuiltIn::ALL
                .iter()
                .filter(|e| s.enabled.contains(**e))
                .count(),
            s.custom.len()
        );
        self.settings = Some(Rc::new(s));
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
            redactor: Redactor::default(),
            unscanned: None,
            reported: false,
        }))
    }
}

/// Where a request is.
enum Phase {
    /// Not an LLM call, or scanning is off: nothing to do.
    Passthrough,
    /// The request body is being buffered.
    AwaitingBody(Api),
    /// Scanned and sent upstream.
    Sent(Api),
    /// A JSON response is being buffered.
    BufferingJson(Api),
    /// A streamed response is passing.
    Streaming(Box<SseRedactor>),
    Done,
}

struct Http {
    settings: Option<Rc<Settings>>,
    counters: Rc<RefCell<CounterSet>>,
    phase: Phase,
    redactor: Redactor,
    unscanned: Option<(Direction, NotScanned)>,
    reported: bool,
}

impl Http {
    fn reject(&mut self, error: &OpenAiError) -> Action {
        send_error(error, &[]);
        self.phase = Phase::Done;
        Action::Pause
    }

    /// Publish `sluice_pii` and count, once.
    fn report(&mut self) {
        if self.reported {
            return;
        }
        self.reported = true;
        let unscanned = self
            .unscanned
            .map(|(dir, why)| (dir.as_str(), why.as_str()));
        if let Some((d, why)) = unscanned {
            self.counters.borrow_mut().add(
                &format!("sluice.pii.unscanned.direction.{d}.reason.{why}"),
                1,
            );
        }
        let json = self
            .redactor
            .report(unscanned.map(|(d, why)| format!("{d}:{why}")));
        set_property(properties::PII, json.as_bytes());
        let mut counters = self.counters.borrow_mut();
        for (dir, entity, action, n) in self.redactor.counts() {
            let d = dir.as_str();
            counters.add(
                &format!(
                    "sluice.pii.findings.entity.{entity}.action.{}.direction.{d}",
                    action.as_str()
                ),
                n,
            );
        }
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
        if !settings.scan_requests {
            self.phase = Phase::Sent(api);
            return Action::Continue;
        }
        if end_of_stream {
            // No body, nothing to scan; the next filter refuses it.
            self.phase = Phase::Sent(api);
            return Action::Continue;
        }
        // The body may change length.
        remove_header(MapType::HttpRequestHeaders, "content-length");
        self.phase = Phase::AwaitingBody(api);
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Phase::AwaitingBody(api) = self.phase else {
            return Action::Continue;
        };
        let Some(settings) = self.settings.clone() else {
            return Action::Continue;
        };
        if !end_of_stream {
            if size > settings.max_body_bytes {
                // Stop buffering: the outcome is the same whatever else comes.
                let outcome = crate::body::unscannable(&settings, NotScanned::TooLarge);
                return self.on_request_outcome(outcome, api, size);
            }
            return Action::Pause;
        }
        let body = read_body(BufferType::HttpRequestBody, size);
        let outcome = scan_request(&settings, &mut self.redactor, api, &body);
        self.on_request_outcome(outcome, api, size)
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Phase::Sent(api) = self.phase else {
            return Action::Continue;
        };
        let Some(settings) = self.settings.as_ref() else {
            return Action::Continue;
        };
        let status = header(MapType::HttpResponseHeaders, ":status").unwrap_or_default();
        // Embeddings (vectors) and token counts: no text comes back.
        if !settings.scan_responses
            || end_of_stream
            || status != "200"
            || api.response_text_paths().is_empty()
        {
            self.phase = Phase::Done;
            return Action::Continue;
        }
        let content_type = header(MapType::HttpResponseHeaders, "content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        self.phase = if content_type.starts_with("text/event-stream") {
            Phase::Streaming(Box::new(SseRedactor::new(api, MAX_EVENT)))
        } else if content_type.starts_with("application/json") {
            Phase::BufferingJson(api)
        } else {
            Phase::Done
        };
        if !matches!(self.phase, Phase::Done) {
            remove_header(MapType::HttpResponseHeaders, "content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(settings) = self.settings.clone() else {
            return Action::Continue;
        };
        match &mut self.phase {
            Phase::BufferingJson(api) => {
                let api = *api;
                if !end_of_stream {
                    if size > settings.max_body_bytes {
                        self.unscanned = Some((Direction::Response, NotScanned::TooLarge));
                        self.phase = Phase::Done;
                        return Action::Continue;
                    }
                    return Action::Pause;
                }
                let body = read_body(BufferType::HttpResponseBody, size);
                if let Some(new) = redact_response(&settings, &mut self.redactor, api, &body) {
                    write_body(BufferType::HttpResponseBody, size, &new);
                }
                self.phase = Phase::Done;
                self.report();
                Action::Continue
            }
            Phase::Streaming(redactor) => {
                let chunk = read_body(BufferType::HttpResponseBody, size);
                let out = redactor.on_chunk(&settings, &mut self.redactor, &chunk, end_of_stream);
                if out != chunk {
                    write_body(BufferType::HttpResponseBody, size, &out);
                }
                if end_of_stream {
                    self.phase = Phase::Done;
                    self.report();
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        if !matches!(self.phase, Phase::Passthrough) {
            self.report();
        }
    }
}

impl Http {
    fn on_request_outcome(&mut self, outcome: RequestOutcome, api: Api, size: usize) -> Action {
        match outcome {
            RequestOutcome::Refused(e) => {
                self.report();
                self.reject(&e)
            }
            RequestOutcome::RefusedUnscanned(e, why) => {
                self.unscanned = Some((Direction::Request, why));
                self.report();
                self.reject(&e)
            }
            RequestOutcome::Unchanged => {
                self.phase = Phase::Sent(api);
                Action::Continue
            }
            RequestOutcome::Passed(why) => {
                self.unscanned = Some((Direction::Request, why));
                self.phase = Phase::Sent(api);
                Action::Continue
            }
            RequestOutcome::Rewritten(body) => {
                if !write_body(BufferType::HttpRequestBody, size, &body) {
                    // Nothing unredacted may go upstream.
                    let e = OpenAiError::new(
                        sluice_common::ErrorKind::Unavailable,
                        "The request could not be redacted.",
                    );
                    return self.reject(&e);
                }
                self.phase = Phase::Sent(api);
                Action::Continue
            }
        }
    }
}
