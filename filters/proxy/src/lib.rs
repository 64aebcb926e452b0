//! The proxy-wasm host calls every Sluice filter's glue uses.
//!
//! The SDK's context helpers `unwrap()` every host-call result; a failed call would panic
//! and kill the VM (every later request then gets 503). Here each call's error is logged
//! and the request goes on. [`WasmHost`] implements sluice-common's [`Host`] for filter
//! logic written against that trait.
//!
//! wasm32 only (the host functions exist only inside Envoy); on other targets the crate is
//! empty, so the workspace still builds and tests natively.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use sluice_common::{ConfigError, Host, OpenAiError};
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

fn report(what: &str, result: Result<(), Status>) -> bool {
    match result {
        Ok(()) => true,
        Err(status) => {
            log::warn!("host call {what} failed: {status:?}");
            false
        }
    }
}

/// Read and validate the plugin configuration in `on_configure`. `None` (after logging why)
/// means return `false`, so Envoy rejects the config and keeps the previous one.
pub fn configure<T>(
    filter: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            log::error!("{filter}: cannot read the plugin configuration: {e:?}");
            return None;
        }
    };
    match parse(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!("{filter}: configuration rejected: {e}");
            None
        }
    }
}

/// A header of the request or response, if present and UTF-8.
pub fn header(map: MapType, name: &str) -> Option<String> {
    match hostcalls::get_map_value_bytes(map, name) {
        Ok(Some(v)) => String::from_utf8(v).ok(),
        _ => None,
    }
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    report(
        "set_map_value",
        hostcalls::set_map_value(map, name, Some(value)),
    );
}

pub fn remove_header(map: MapType, name: &str) {
    report("remove_map_value", hostcalls::remove_map_value(map, name));
}

/// A property (filter state or an Envoy attribute) as UTF-8.
pub fn property(name: &str) -> Option<String> {
    hostcalls::get_property(vec![name])
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

/// Publish a fact as filter state.
pub fn set_property(name: &str, value: &[u8]) {
    report(
        "set_property",
        hostcalls::set_property(vec![name], Some(value)),
    );
}

/// Answer the client with an error in the shape of the API its path belongs to (OpenAI's,
/// or Anthropic's under `/v1/messages`), plus `extra` headers; nothing goes upstream.
pub fn send_error(error: &OpenAiError, extra: &[(&str, &str)]) {
    let path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
    let family = sluice_common::api::family_for_path(&path);
    let mut headers = vec![OpenAiError::CONTENT_TYPE];
    headers.extend_from_slice(extra);
    report(
        "send_http_response",
        hostcalls::send_http_response(
            u32::from(error.status()),
            headers,
            Some(error.body_for(family).as_bytes()),
        ),
    );
}

/// The first `size` bytes of a body buffer (empty, logged, on failure).
pub fn read_body(buffer: BufferType, size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(buffer, 0, size) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            log::warn!("host call get_buffer failed: {e:?}");
            Vec::new()
        }
    }
}

/// Replace the first `size` bytes of a body buffer; false (logged) on failure.
pub fn write_body(buffer: BufferType, size: usize, bytes: &[u8]) -> bool {
    report("set_buffer", hostcalls::set_buffer(buffer, 0, size, bytes))
}

/// Wall-clock seconds since the Unix epoch (0 if the host cannot tell).
pub fn now_unix_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Define a counter once per VM; `None` when the host refuses (the filter still works,
/// uncounted). Envoy shows it as `wasmcustom.<name>`.
pub fn define_counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("define_metric {name} failed: {status:?}");
            None
        }
    }
}

/// Define a histogram once per VM (Prometheus buckets come from Envoy).
pub fn define_histogram(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Histogram, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("define_metric {name} failed: {status:?}");
            None
        }
    }
}

/// Record one value in a histogram defined with [`define_histogram`].
pub fn record(histogram: Option<u32>, value: u64) {
    if let Some(id) = histogram {
        report("record_metric", hostcalls::record_metric(id, value));
    }
}

/// Milliseconds since the Unix epoch (0 if the host cannot tell).
pub fn now_unix_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Add `n` to a counter defined with [`define_counter`].
pub fn increment(counter: Option<u32>, n: u64) {
    if let Some(id) = counter {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        report("increment_metric", hostcalls::increment_metric(id, n));
    }
}

/// Counters named at run time (labels in the name), defined on first use. Bounded: past
/// `max` names, new ones are not counted, so label cardinality cannot grow without end.
#[derive(Debug)]
pub struct CounterSet {
    ids: HashMap<String, Option<u32>>,
    max: usize,
}

impl CounterSet {
    pub fn new(max: usize) -> Self {
        Self {
            ids: HashMap::new(),
            max,
        }
    }

    pub fn add(&mut self, name: &str, n: u64) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None if self.ids.len() >= self.max => return,
            None => {
                let id = define_counter(name);
                self.ids.insert(name.to_string(), id);
                id
            }
        };
        increment(id, n);
    }
}

/// [`Host`] over the proxy-wasm host calls. Zero-sized: proxy-wasm tracks the effective
/// context.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

impl Host for WasmHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                log::warn!("host call get_map_bytes failed: {status:?}");
                Vec::new()
            }
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        remove_header(MapType::HttpRequestHeaders, name);
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        report(
            "set_map_value",
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)),
        );
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        set_property(name, value);
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        report(
            "send_http_response",
            hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)),
        );
    }

    fn clear_route_cache(&mut self) {
        if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::warn!("host call clear_route_cache failed: {status:?}");
        }
    }

    fn now_unix_secs(&self) -> i64 {
        i64::try_from(now_unix_secs()).unwrap_or(0)
    }
}
