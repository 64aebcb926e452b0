//! A probe filter that makes one kind of host call many times per request, through the
//! [`Host`] boundary every Sluice filter uses: against the no-op filter it gives what one
//! host call of that kind costs inside Envoy (`scripts/bench-chain.sh`'s
//! host-call table). Its configuration is `<call> <count>`: on the request's headers
//! `header`, `headers`, `set_header`, `property`, `set_property` (one name),
//! `new_property` (a name per call), `shared_get`, `shared_set`, `metric`, `clock`,
//! `clear_route_cache`; `pause` (hold the headers until the body's last chunk, as the
//! filters that read the body do); on the body's last chunk `body` or `set_body` (read, or
//! read and write back, the whole request body; `rewrite_body` writes it back with a
//! space after it), `chain` (`<count>` times the host calls the
//! whole chain makes a request, by kind and phase, with none of its work: what the calls
//! cost apart from the code around them; `chain_rqh`, `chain_rqb` and `chain_rs` make only
//! the calls of the request's headers, of its body, or of the response, holding both sides
//! as `chain` does, and any other `chain_*` only holds), `json` (read it and parse it into a
//! `serde_json::Value`, `<count>` times: what V8 makes of typical Rust code); `response` (hold the
//! response until its body is in, then read it); `memory` (keep `<count>` MB of linear memory in use, no calls); `attributes`
//! (on the response's headers, Envoy's `request.id`, `response.code_details` and
//! `response.code` copied into `x-probe-*` response headers); `panic` (panics on a
//! request with an `x-probe-panic` header).
//!
//! Used by the wasm examples of `sluice-proxy` (`probe`, `noop`) and the native ones of
//! `sluice-native`, so that both runtimes make the same calls.

use sluice_common::host::{Flow, Host, Lifecycle, MetricKind, Plugin, Side};
use sluice_common::ConfigError;
use std::rc::Rc;

pub struct Probe {
    call: String,
    count: usize,
    metric: Option<u32>,
    /// `memory` keeps this many MB of linear memory in use (the token-counter VM holds
    /// about 32 MB of tables).
    _ballast: Vec<u8>,
}

pub struct ProbeRequest(Rc<Probe>);

impl Plugin for Probe {
    const NAME: &'static str = "probe";
    type Request = ProbeRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config = String::from_utf8_lossy(&host.plugin_configuration()).into_owned();
        let mut words = config.split_whitespace();
        let (Some(call), Some(count)) = (words.next(), words.next()) else {
            return Err(ConfigError::invalid("want <call> <count>"));
        };
        let count = count
            .parse()
            .map_err(|_| ConfigError::invalid("count: a number"))?;
        let metric = host.define_metric(MetricKind::Counter, "probe.calls");
        let ballast = if call == "memory" {
            // Touched, so it is really there.
            vec![1u8; count << 20]
        } else {
            Vec::new()
        };
        Ok(Self {
            call: call.to_string(),
            count,
            metric,
            _ballast: ballast,
        })
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> ProbeRequest {
        ProbeRequest(self.clone())
    }
}

// The whole chain's host calls on a 2 KB chat, by the phase they are made in: 72 a
// request (`sluice-chain-profile --calls` counts 74 of the same kinds). The filters that
// read two headers or more in a handler read all of that side's headers once.
fn chain_request_headers(host: &mut dyn Host, metric: Option<u32>) {
    for _ in 0..5 {
        drop(host.headers(Side::Request));
    }
    for name in [":path", "cache-control"] {
        drop(host.header(Side::Request, name));
    }
    for _ in 0..4 {
        drop(host.property(&["sluice_policy"]));
    }
    for name in [
        "p_key_id",
        "p_tenant",
        "p_policy",
        "p_priority",
        "p_api",
        "p_model",
    ] {
        host.set_property(name, b"some-value-of-a-property");
    }
    for name in [
        "p_route",
        "p_requested",
        "p_pii",
        "p_prompt",
        "p_estimated",
        "p_max",
    ] {
        host.set_property(name, b"420");
    }
    for name in [
        "authorization",
        "x-sluice-route",
        "x-sluice-affinity",
        "content-length",
    ] {
        host.remove_header(Side::Request, name);
    }
    host.set_header(Side::Request, "x-sluice-route", "pool-a");
    host.set_header(Side::Request, "x-probe", "1");
    for _ in 0..3 {
        if let Some(id) = metric {
            host.increment_metric(id, 1);
        }
    }
    let _ = host.now_unix_nanos();
    let _ = host.now_unix_nanos();
}

fn chain_request_body(host: &mut dyn Host, size: usize) {
    for _ in 0..4 {
        drop(host.body(Side::Request, size));
    }
    let body = host.body(Side::Request, size);
    host.set_body(Side::Request, size, &body);
    for i in 0..7 {
        drop(host.shared_data(&format!("probe.{}", i % 3)));
    }
    for i in 0..3 {
        let _ = host.set_shared_data(&format!("probe.{i}"), b"0123456789", None);
    }
}

fn chain_response_headers(host: &mut dyn Host, metric: Option<u32>) {
    for _ in 0..2 {
        drop(host.headers(Side::Response));
    }
    for path in [
        ["response", "code_details"],
        ["response", "code_details"],
        ["request", "id"],
    ] {
        drop(host.property(&path));
    }
    host.set_header(Side::Response, "x-sluice-cache", "bypass");
    if let Some(id) = metric {
        host.increment_metric(id, 1);
    }
}

fn chain_response_body(host: &mut dyn Host, size: usize, metric: Option<u32>) {
    drop(host.body(Side::Response, size));
    drop(host.body(Side::Response, size));
    for name in [
        "p_completion",
        "p_usage_source",
        "p_cache",
        "p_endpoint",
        "p_total",
    ] {
        host.set_property(name, b"16");
    }
    for _ in 0..5 {
        if let Some(id) = metric {
            host.increment_metric(id, 1);
        }
    }
    for _ in 0..3 {
        let _ = host.now_unix_nanos();
    }
}

impl Lifecycle for ProbeRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end: bool) -> Flow {
        let p = &self.0;
        if p.call.starts_with("chain") {
            if p.call == "chain" || p.call == "chain_rqh" {
                for _ in 0..p.count {
                    chain_request_headers(host, p.metric);
                }
            }
            return if end { Flow::Continue } else { Flow::Pause };
        }
        if p.call == "panic" && host.header(Side::Request, "x-probe-panic").is_some() {
            // What a host does with a filter that panics (the native build refuses the
            // request with a 500 and goes on; the wasm VM would abort).
            #[allow(clippy::panic)]
            {
                panic!("probe: asked to panic");
            }
        }
        if p.call == "pause" && !end {
            // Hold the headers until the body is in (as the body-reading filters do).
            return Flow::Pause;
        }
        for i in 0..p.count {
            match p.call.as_str() {
                "header" => drop(host.header(Side::Request, "content-type")),
                "headers" => drop(host.headers(Side::Request)),
                "set_header" => host.set_header(Side::Request, "x-probe", "1"),
                "property" => drop(host.property(&["request", "path"])),
                "set_property" => host.set_property("probe", format!("{i}").as_bytes()),
                "new_property" => host.set_property(&format!("probe_{i}"), b"value"),
                "shared_get" => drop(host.shared_data("probe")),
                "shared_set" => drop(host.set_shared_data("probe", b"0123456789", None)),
                "metric" => {
                    if let Some(id) = p.metric {
                        host.increment_metric(id, 1);
                    }
                }
                "clock" => {
                    let _ = host.now_unix_nanos();
                }
                "clear_route_cache" => host.clear_route_cache(),
                "keyauth" => {
                    drop(host.headers(Side::Request));
                    host.remove_header(Side::Request, "x-nothing");
                    for name in ["p_key_id", "p_tenant", "p_policy", "p_priority"] {
                        host.set_property(name, b"some-value-of-a-property");
                    }
                    if let Some(id) = p.metric {
                        host.increment_metric(id, 1);
                    }
                    let _ = host.now_unix_nanos();
                }
                _ => {}
            }
        }
        Flow::Continue
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        if !end {
            return Flow::Continue;
        }
        for _ in 0..self.0.count {
            match self.0.call.as_str() {
                "chain" | "chain_rqb" => chain_request_body(host, size),
                "body" => drop(host.body(Side::Request, size)),
                "json" => {
                    let body = host.body(Side::Request, size);
                    let tree: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                    drop(tree);
                }
                "set_body" => {
                    let body = host.body(Side::Request, size);
                    host.set_body(Side::Request, size, &body);
                }
                "rewrite_body" => {
                    // A body that differs from what came (a trailing space, still the same
                    // JSON): a host that kept the old bytes, or both, shows upstream.
                    let mut body = host.body(Side::Request, size);
                    body.push(b' ');
                    host.set_body(Side::Request, size, &body);
                }
                _ => {}
            }
        }
        Flow::Continue
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end: bool) -> Flow {
        if self.0.call.starts_with("chain") {
            if self.0.call == "chain" || self.0.call == "chain_rs" {
                for _ in 0..self.0.count {
                    chain_response_headers(host, self.0.metric);
                }
            }
            return if end { Flow::Continue } else { Flow::Pause };
        }
        if self.0.call == "attributes" {
            // Envoy's attributes as the filters read them, shown to the client.
            let text = |path: &[&str]| {
                host.property(path)
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default()
            };
            let id = text(&["request", "id"]);
            let details = text(&["response", "code_details"]);
            let code = host
                .property(&["response", "code"])
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            host.set_header(Side::Response, "x-probe-request-id", &id);
            host.set_header(Side::Response, "x-probe-code-details", &details);
            host.set_header(Side::Response, "x-probe-code", &code.to_string());
            return Flow::Continue;
        }
        if self.0.call == "response" && !end {
            // Hold the response headers until its body is in, as the filters that read
            // the answer do.
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        if self.0.call.starts_with("chain") {
            if !end {
                return Flow::Pause;
            }
            if self.0.call == "chain" || self.0.call == "chain_rs" {
                for _ in 0..self.0.count {
                    chain_response_body(host, size, self.0.metric);
                }
            }
            return Flow::Continue;
        }
        if self.0.call == "response" {
            if !end {
                return Flow::Pause;
            }
            for _ in 0..self.0.count {
                drop(host.body(Side::Response, size));
            }
        }
        Flow::Continue
    }
}

/// A filter that does nothing through the same glue as every Sluice filter: what one filter
/// instance costs Envoy per request before it does any work (the floor rows of
/// `scripts/bench-chain.sh`).
pub struct Noop;

pub struct NoopRequest;

impl Lifecycle for NoopRequest {}

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    type Request = NoopRequest;

    fn configure(_host: &mut dyn Host) -> Result<Self, ConfigError> {
        Ok(Self)
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> NoopRequest {
        NoopRequest
    }
}
