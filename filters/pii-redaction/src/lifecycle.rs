//! pii-redaction's lifecycle: a request body buffered, scanned and rewritten (or refused)
//! before it goes upstream; a JSON answer buffered and rewritten whole; a stream redacted
//! event by event; `sluice_pii` published and counted once, however the stream ends.

use crate::{
    redact_response, scan_request, Api, CleanTexts, Direction, NotScanned, PiiConfig, Redactor,
    RequestOutcome, Settings, SseRedactor,
};
use sluice_common::host::{
    header_values, plugin_config, replace_request_body, request_line, send_error, CounterSet, Flow,
    Host, Lifecycle, Plugin, Side,
};
use sluice_common::{properties, ConfigError, ErrorKind, OpenAiError};
use std::cell::RefCell;
use std::rc::Rc;

/// Largest SSE event edited; a bigger one turns the stream into a pass-through.
const MAX_EVENT: usize = 1 << 20;
/// Counter names are bounded: entity names are built-ins or configured, actions and
/// directions are fixed.
const MAX_COUNTERS: usize = 1024;

/// The configured filter.
pub struct PiiRedaction {
    settings: Settings,
    counters: RefCell<CounterSet>,
    /// Texts requests carried lately with nothing found in them, under these settings.
    clean: RefCell<CleanTexts>,
}

/// The counter families, their labels' keys and the tags Envoy's stats configuration
/// exports them as (`envoy/envoy.yaml.j2`'s `stats_tags`).
const FINDINGS: &str = "sluice.pii.findings";
const FINDINGS_LABELS: [(&str, &str); 3] = [
    ("entity", "pii_entity"),
    ("action", "pii_action"),
    ("direction", "direction"),
];
const UNSCANNED: &str = "sluice.pii.unscanned";
const UNSCANNED_LABELS: [(&str, &str); 2] = [
    ("direction", "direction"),
    ("reason", "pii_unscanned_reason"),
];

impl PiiRedaction {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            counters: RefCell::new(CounterSet::new(MAX_COUNTERS)),
            clean: RefCell::new(CleanTexts::default()),
        }
    }
}

impl Plugin for PiiRedaction {
    const NAME: &'static str = "pii-redaction";
    type Request = PiiRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let s = Settings::new(plugin_config::<PiiConfig>(host)?)?;
        log::info!(
            "pii-redaction: configured; {} built-in and {} custom entities on",
            crate::BuiltIn::ALL
                .iter()
                .filter(|e| s.enabled.contains(**e))
                .count(),
            s.custom.len()
        );
        let filter = Self::new(s);
        {
            let mut counters = filter.counters.borrow_mut();
            counters.declare(host, FINDINGS, &FINDINGS_LABELS);
            counters.declare(host, UNSCANNED, &UNSCANNED_LABELS);
        }
        Ok(filter)
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> PiiRequest {
        PiiRequest {
            filter: self.clone(),
            phase: Phase::Passthrough,
            redactor: Redactor::default(),
            unscanned: None,
            reported: false,
        }
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

pub struct PiiRequest {
    filter: Rc<PiiRedaction>,
    phase: Phase,
    redactor: Redactor,
    unscanned: Option<(Direction, NotScanned)>,
    reported: bool,
}

impl PiiRequest {
    fn reject(&mut self, host: &mut dyn Host, error: &OpenAiError) -> Flow {
        send_error(host, error, &[]);
        self.phase = Phase::Done;
        Flow::Pause
    }

    /// Publish `sluice_pii` and count, once.
    fn report(&mut self, host: &mut dyn Host) {
        if self.reported {
            return;
        }
        self.reported = true;
        let unscanned = self
            .unscanned
            .map(|(dir, why)| (dir.as_str(), why.as_str()));
        let mut counters = self.filter.counters.borrow_mut();
        if let Some((d, why)) = unscanned {
            let labels = [(UNSCANNED_LABELS[0].0, d), (UNSCANNED_LABELS[1].0, why)];
            counters.add_labeled(host, &[UNSCANNED], &labels, 1);
        }
        let json = self
            .redactor
            .report(unscanned.map(|(d, why)| format!("{d}:{why}")));
        host.set_property(properties::PII, json.as_bytes());
        for (dir, entity, action, n) in self.redactor.counts() {
            let labels = [
                (FINDINGS_LABELS[0].0, entity),
                (FINDINGS_LABELS[1].0, action.as_str()),
                (FINDINGS_LABELS[2].0, dir.as_str()),
            ];
            counters.add_labeled(host, &[FINDINGS], &labels, n);
        }
    }

    fn on_request_outcome(
        &mut self,
        host: &mut dyn Host,
        outcome: RequestOutcome,
        api: Api,
        size: usize,
    ) -> Flow {
        match outcome {
            RequestOutcome::Refused(e) => {
                self.report(host);
                self.reject(host, &e)
            }
            RequestOutcome::RefusedUnscanned(e, why) => {
                self.unscanned = Some((Direction::Request, why));
                self.report(host);
                self.reject(host, &e)
            }
            RequestOutcome::Unchanged => {
                self.phase = Phase::Sent(api);
                Flow::Continue
            }
            RequestOutcome::Passed(why) => {
                self.unscanned = Some((Direction::Request, why));
                self.phase = Phase::Sent(api);
                Flow::Continue
            }
            RequestOutcome::Rewritten(body) => {
                // The headers are still held: content-length follows the new body here
                // (a request without findings keeps its own, and costs no header write).
                if !replace_request_body(host, size, &body) {
                    // Nothing unredacted may go upstream.
                    let e = OpenAiError::new(
                        ErrorKind::Unavailable,
                        "The request could not be redacted.",
                    );
                    return self.reject(host, &e);
                }
                self.phase = Phase::Sent(api);
                Flow::Continue
            }
        }
    }
}

impl Lifecycle for PiiRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let settings = &self.filter.settings;
        let (method, path) = request_line(host);
        let Some(api) = settings.api(&method, &path) else {
            return Flow::Continue;
        };
        if !settings.scan_requests || end_of_stream {
            // Nothing to scan (no body: the next filter refuses it).
            self.phase = Phase::Sent(api);
            return Flow::Continue;
        }
        self.phase = Phase::AwaitingBody(api);
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::AwaitingBody(api) = self.phase else {
            return Flow::Continue;
        };
        let filter = self.filter.clone();
        let settings = &filter.settings;
        if !end_of_stream {
            if size > settings.max_body_bytes {
                // Stop buffering: the outcome is the same whatever else comes.
                let outcome = crate::body::unscannable(settings, NotScanned::TooLarge);
                return self.on_request_outcome(host, outcome, api, size);
            }
            return Flow::Pause;
        }
        let body = host.body(Side::Request, size);
        let outcome = scan_request(
            settings,
            &mut self.redactor,
            api,
            &body,
            self.filter.clean.try_borrow_mut().ok().as_deref_mut(),
        );
        self.on_request_outcome(host, outcome, api, size)
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let Phase::Sent(api) = self.phase else {
            return Flow::Continue;
        };
        let settings = &self.filter.settings;
        let [status, content_type] =
            header_values(host, Side::Response, [":status", "content-type"]);
        let status = status.unwrap_or_default();
        // Embeddings (vectors) and token counts: no text comes back.
        if !settings.scan_responses
            || end_of_stream
            || status != "200"
            || api.response_text_paths().is_empty()
        {
            self.phase = Phase::Done;
            return Flow::Continue;
        }
        let content_type = content_type.unwrap_or_default().to_ascii_lowercase();
        self.phase = if content_type.starts_with("text/event-stream") {
            Phase::Streaming(Box::new(SseRedactor::new(api, MAX_EVENT)))
        } else if content_type.starts_with("application/json") {
            Phase::BufferingJson(api)
        } else {
            Phase::Done
        };
        if !matches!(self.phase, Phase::Done) {
            host.remove_header(Side::Response, "content-length");
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let filter = self.filter.clone();
        let settings = &filter.settings;
        match &mut self.phase {
            Phase::BufferingJson(api) => {
                let api = *api;
                if !end_of_stream {
                    if size > settings.max_body_bytes {
                        self.unscanned = Some((Direction::Response, NotScanned::TooLarge));
                        self.phase = Phase::Done;
                        return Flow::Continue;
                    }
                    return Flow::Pause;
                }
                let body = host.body(Side::Response, size);
                if let Some(new) = redact_response(settings, &mut self.redactor, api, &body) {
                    host.set_body(Side::Response, size, &new);
                }
                self.phase = Phase::Done;
                self.report(host);
                Flow::Continue
            }
            Phase::Streaming(redactor) => {
                let chunk = host.body(Side::Response, size);
                let out = redactor.on_chunk(settings, &mut self.redactor, &chunk, end_of_stream);
                if out != chunk {
                    host.set_body(Side::Response, size, &out);
                }
                if end_of_stream {
                    self.phase = Phase::Done;
                    self.report(host);
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        if !matches!(self.phase, Phase::Passthrough) {
            self.report(host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::{Call, MockHost};

    fn filter(host: &mut MockHost, config: &str) -> Rc<PiiRedaction> {
        host.plugin_config = config.as_bytes().to_vec();
        Rc::new(PiiRedaction::configure(host).unwrap())
    }

    fn chat(host: &mut MockHost, content: &str) -> usize {
        host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
        host.request_body = serde_json::json!({"model": "m",
            "messages": [{"role": "user", "content": content}]})
        .to_string()
        .into_bytes();
        host.request_body.len()
    }

    /// A request without PII, scanned and sent upstream.
    fn sent(host: &mut MockHost) -> PiiRequest {
        let f = filter(host, r#"{"default_action": "redact"}"#);
        let size = chat(host, "hi");
        let mut req = f.new_request(1);
        req.on_request_headers(host, false);
        req.on_request_body(host, size, true);
        req
    }

    fn pii_report(host: &MockHost) -> serde_json::Value {
        serde_json::from_str(host.text_property("sluice_pii").unwrap()).unwrap()
    }

    #[test]
    fn a_request_with_an_email_is_rewritten_before_it_leaves() {
        let mut host = MockHost::new();
        let f = filter(&mut host, r#"{"default_action": "redact"}"#);
        let size = chat(&mut host, "write to jane.doe@example.com please");
        let mut req = f.new_request(1);
        assert_eq!(req.on_request_headers(&mut host, false), Flow::Pause);
        assert!(
            host.take_calls().is_empty(),
            "the headers are held, unchanged"
        );
        assert_eq!(req.on_request_body(&mut host, size / 2, false), Flow::Pause);
        assert!(host.calls().is_empty());
        assert_eq!(req.on_request_body(&mut host, size, true), Flow::Continue);
        let calls = host.take_calls();
        let [Call::SetBody(Side::Request, body), Call::SetHeader(Side::Request, name, length)] =
            calls.as_slice()
        else {
            panic!("{calls:?}");
        };
        assert!(!body.contains("jane.doe@example.com"), "{body}");
        assert_eq!(
            (name.as_str(), length.as_str()),
            ("content-length", body.len().to_string().as_str())
        );
        // Published once, at the end.
        req.on_log(&mut host);
        assert_eq!(pii_report(&host)["request"]["email"]["redact"], 1);
        assert_eq!(
            host.counted(),
            vec!["sluice.pii.findings.entity.email.action.redact.direction.request"]
        );
    }

    #[test]
    fn a_blocked_entity_is_refused_with_one_reply_and_reported() {
        let mut host = MockHost::new();
        let f = filter(&mut host, r#"{"entities": {"email": "block"}}"#);
        let size = chat(&mut host, "jane.doe@example.com");
        let mut req = f.new_request(1);
        req.on_request_headers(&mut host, false);
        host.take_calls();
        assert_eq!(req.on_request_body(&mut host, size, true), Flow::Pause);
        let effects = host.effects();
        assert!(matches!(effects.first(), Some(Call::SetProperty(n, _)) if n == "sluice_pii"));
        assert_eq!(host.reply().unwrap().status, 403);
        req.on_log(&mut host);
        assert_eq!(
            host.effects().len(),
            2,
            "reported twice: {:?}",
            host.calls()
        );
    }

    #[test]
    fn a_stream_split_inside_a_finding_never_lets_it_through() {
        let mut host = MockHost::new();
        let mut req = sent(&mut host);
        host.set_response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
        assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
        let event = |t: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}}]})
            )
        };
        let stream = format!(
            "{}{}data: [DONE]\n\n",
            event("mail jane.doe@exa"),
            event("mple.com now")
        );
        let mut out = Vec::new();
        for (i, piece) in stream.as_bytes().chunks(7).enumerate() {
            host.response_body = piece.to_vec();
            let last = (i + 1) * 7 >= stream.len();
            req.on_response_body(&mut host, piece.len(), last);
            out.extend_from_slice(&host.response_body);
        }
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("jane.doe"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(pii_report(&host)["response"]["email"]["redact"], 1);
    }

    #[test]
    fn an_error_answer_is_not_touched() {
        let mut host = MockHost::new();
        let mut req = sent(&mut host);
        host.take_calls();
        host.set_response_headers(&[(":status", "500"), ("content-type", "application/json")]);
        assert_eq!(req.on_response_headers(&mut host, false), Flow::Continue);
        host.response_body = b"{\"error\":\"jane.doe@example.com\"}".to_vec();
        assert_eq!(req.on_response_body(&mut host, 33, true), Flow::Continue);
        assert!(host.calls().is_empty(), "{:?}", host.calls());
    }
}
