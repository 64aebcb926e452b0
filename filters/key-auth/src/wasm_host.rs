//! [`Host`] over the proxy-wasm host calls.
//!
//! The SDK's `HttpContext` helpers `unwrap()` every host-call result; a failed call would
//! panic and kill the VM (every later request then gets 503). Here each call's error is
//! logged and the request goes on.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};
use sluice_common::Host;
use std::time::UNIX_EPOCH;

/// The current HTTP context's host. Zero-sized: proxy-wasm tracks the effective context.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

fn report(what: &str, result: Result<(), Status>) {
    if let Err(status) = result {
        log::warn!("host call {what} failed: {status:?}");
    }
}

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
        report(
            "remove_map_value",
            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
        );
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        report(
            "set_property",
            hostcalls::set_property(vec![name], Some(value)),
        );
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
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .unwrap_or(0)
    }
}

/// Define a counter once per VM; `None` when the host refuses (the filter still works,
/// uncounted).
pub fn define_counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("define_metric {name} failed: {status:?}");
            None
        }
    }
}

/// Add one to a counter defined with [`define_counter`].
pub fn increment(counter: Option<u32>) {
    if let Some(id) = counter {
        report("increment_metric", hostcalls::increment_metric(id, 1));
    }
}
