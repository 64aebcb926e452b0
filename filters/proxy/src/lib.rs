//! Envoy's side of the host boundary: [`WasmHost`] implements sluice-common's [`Host`] over
//! the proxy-wasm host calls, and [`RootGlue`]/[`HttpGlue`] run any filter's
//! [`Plugin`]/[`Lifecycle`] as proxy-wasm contexts ([`filter!`] declares the entry point;
//! [`filters!`] that of a module holding several, chosen by root id through [`RootById`]).
//!
//! The SDK's context helpers `unwrap()` every host-call result; a failed call would panic and
//! kill the VM (every later request then gets 503). Here each call's error is logged and the
//! request goes on.
//!
//! wasm32 only (the host functions exist only inside Envoy); on other targets the crate is
//! empty, so the workspace still builds and tests natively.
#![cfg(target_arch = "wasm32")]

pub use proxy_wasm;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType, Status};
use sluice_common::host::{
    chosen_by_root_id, Flow, GrpcCall, Host, HttpCall, Lifecycle, MetricKind, Plugin,
    SharedDataError, Side, Unconfigured,
};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

fn report(what: &str, result: Result<(), Status>) -> bool {
    match result {
        Ok(()) => true,
        Err(status) => {
            log::warn!("host call {what} failed: {status:?}");
            false
        }
    }
}

fn map(side: Side) -> MapType {
    match side {
        Side::Request => MapType::HttpRequestHeaders,
        Side::Response => MapType::HttpResponseHeaders,
    }
}

fn body_buffer(side: Side) -> BufferType {
    match side {
        Side::Request => BufferType::HttpRequestBody,
        Side::Response => BufferType::HttpResponseBody,
    }
}

fn buffer(buffer: BufferType, size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(buffer, 0, size) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("host call get_buffer failed: {e:?}");
            None
        }
    }
}

/// [`Host`] over the proxy-wasm host calls. Zero-sized: proxy-wasm tracks the effective
/// context.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

impl Host for WasmHost {
    fn plugin_configuration(&self) -> Vec<u8> {
        buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default()
    }

    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        match hostcalls::get_map_bytes(map(side)) {
            Ok(headers) => headers,
            Err(status) => {
                log::warn!("host call get_map_bytes failed: {status:?}");
                Vec::new()
            }
        }
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        match hostcalls::get_map_value_bytes(map(side), name) {
            Ok(Some(v)) => String::from_utf8(v).ok(),
            _ => None,
        }
    }

    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        report(
            "set_map_value",
            hostcalls::set_map_value(map(side), name, Some(value)),
        );
    }

    fn remove_header(&mut self, side: Side, name: &str) {
        report(
            "remove_map_value",
            hostcalls::remove_map_value(map(side), name),
        );
    }

    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        buffer(body_buffer(side), size).unwrap_or_default()
    }

    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        report(
            "set_buffer",
            hostcalls::set_buffer(body_buffer(side), 0, size, bytes),
        )
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        report(
            "set_property",
            hostcalls::set_property(vec![name], Some(value)),
        );
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedDataError::CasMismatch),
            Err(e) => {
                log::warn!("host call set_shared_data failed: {e:?}");
                Err(SharedDataError::Failed)
            }
        }
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32> {
        match hostcalls::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(call.message),
            call.timeout,
        ) {
            Ok(token) => Some(token),
            Err(e) => {
                log::warn!(
                    "host call dispatch_grpc_call to {} failed: {e:?}",
                    call.cluster
                );
                None
            }
        }
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        buffer(BufferType::GrpcReceiveBuffer, size)
    }

    fn grpc_status(&self) -> (u32, Option<String>) {
        hostcalls::get_grpc_status().unwrap_or((u32::MAX, None))
    }

    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32> {
        match hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            call.body,
            Vec::new(),
            call.timeout,
        ) {
            Ok(token) => Some(token),
            Err(e) => {
                log::warn!(
                    "host call dispatch_http_call to {} failed: {e:?}",
                    call.cluster
                );
                None
            }
        }
    }

    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let headers =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let body = buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
        (headers, body)
    }

    fn set_tick_period(&mut self, period: Duration) {
        report("set_tick_period", hostcalls::set_tick_period(period));
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        report(
            "send_http_response",
            hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)),
        );
    }

    fn resume(&mut self, side: Side) {
        let result = match side {
            Side::Request => hostcalls::resume_http_request(),
            Side::Response => hostcalls::resume_http_response(),
        };
        report("resume_http", result);
    }

    fn set_effective_context(&mut self, context_id: u32) {
        report(
            "set_effective_context",
            hostcalls::set_effective_context(context_id),
        );
    }

    fn clear_route_cache(&mut self) {
        if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::warn!("host call clear_route_cache failed: {status:?}");
        }
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match hostcalls::define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("define_metric {name} failed: {status:?}");
                None
            }
        }
    }

    fn increment_metric(&mut self, id: u32, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        report("increment_metric", hostcalls::increment_metric(id, n));
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        report("record_metric", hostcalls::record_metric(id, value));
    }

    fn now_unix_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

/// The root context of any filter: configures its [`Plugin`] and makes one [`HttpGlue`] per
/// stream.
pub struct RootGlue<P: Plugin> {
    plugin: Option<Rc<P>>,
}

impl<P: Plugin> Default for RootGlue<P> {
    fn default() -> Self {
        Self { plugin: None }
    }
}

impl<P: Plugin> Context for RootGlue<P> {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(p) = &self.plugin {
            p.on_grpc_response(&mut WasmHost, token, status, size);
        }
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if let Some(p) = &self.plugin {
            p.on_http_response(&mut WasmHost, token, body_size);
        }
    }
}

impl<P: Plugin> RootContext for RootGlue<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
        // On `false` Envoy rejects this config and keeps the previous one (none at start:
        // the listener does not load).
        match P::configure(&mut WasmHost) {
            Ok(p) => {
                self.plugin = Some(Rc::new(p));
                true
            }
            Err(e) => {
                log::error!("{}: configuration rejected: {e}", P::NAME);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.plugin {
            p.on_worker_tick(&mut WasmHost);
            p.on_tick(&mut WasmHost);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.plugin {
            Some(p) => Box::new(HttpGlue(p.new_request(context_id))),
            None => Box::new(HttpGlue(Unconfigured { filter: P::NAME })),
        })
    }
}

/// The HTTP context of any filter: each hook one step of its [`Lifecycle`].
pub struct HttpGlue<L: Lifecycle>(pub L);

impl<L: Lifecycle> Context for HttpGlue<L> {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.0.on_grpc_response(&mut WasmHost, token, status, size);
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        self.0.on_http_response(&mut WasmHost, token, body_size);
    }
}

impl<L: Lifecycle> HttpContext for HttpGlue<L> {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&mut WasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&mut WasmHost, size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&mut WasmHost, end_of_stream))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_body(&mut WasmHost, size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.0.on_log(&mut WasmHost);
    }
}

/// How a filter's root context is made.
pub type MakeRoot = fn() -> Box<dyn RootContext>;

/// A root context that becomes, when it is first configured, the filter its `root_id`
/// names: several filters in one module (and so one VM), each its own entry in Envoy's
/// chain. `filters` maps a part of the root id (`"key_auth"` in `sluice.key_auth`) to a
/// filter's [`RootGlue`]; the first that the root id contains wins.
pub struct RootById {
    filters: Vec<(&'static str, MakeRoot)>,
    filter: Option<Box<dyn RootContext>>,
}

impl RootById {
    pub fn new(filters: Vec<(&'static str, MakeRoot)>) -> Self {
        Self {
            filters,
            filter: None,
        }
    }
}

impl Context for RootById {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(f) = &mut self.filter {
            f.on_grpc_call_response(token, status, size);
        }
    }

    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        if let Some(f) = &mut self.filter {
            f.on_http_call_response(token, headers, body, trailers);
        }
    }
}

impl RootContext for RootById {
    fn on_configure(&mut self, size: usize) -> bool {
        if self.filter.is_none() {
            let root_id = hostcalls::get_property(vec!["plugin_root_id"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            self.filter = chosen_by_root_id(&self.filters, &root_id).map(|make| make());
            if self.filter.is_none() {
                log::error!(
                    "root_id {root_id:?} names no filter of this module; configuration rejected"
                );
                return false;
            }
        }
        self.filter.as_mut().is_some_and(|f| f.on_configure(size))
    }

    fn on_tick(&mut self) {
        if let Some(f) = &mut self.filter {
            f.on_tick();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.filter.as_ref()?.create_http_context(context_id)
    }
}

/// What a module's entry point does: log at info, and make each root context with `root`.
pub fn start(root: fn(u32) -> Box<dyn RootContext>) {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(root);
}

/// The wasm entry point of a filter crate: `sluice_proxy::filter!(MyPlugin);`.
#[macro_export]
macro_rules! filter {
    ($plugin:ty) => {
        $crate::proxy_wasm::main! {{
            $crate::start(|_| Box::new($crate::RootGlue::<$plugin>::default()));
        }}
    };
}

/// The wasm entry point of a module holding several filters, each chosen by the root id
/// Envoy configures it with ([`RootById`]):
/// `sluice_proxy::filters!("key_auth" => KeyAuth, "rate_limit" => RateLimit);`.
#[macro_export]
macro_rules! filters {
    ($($part:literal => $plugin:ty),+ $(,)?) => {
        $crate::proxy_wasm::main! {{
            $crate::start(|_| {
                Box::new($crate::RootById::new(vec![$((
                    $part,
                    (|| Box::new($crate::RootGlue::<$plugin>::default()))
                        as $crate::MakeRoot,
                )),+]))
            });
        }}
    };
}
