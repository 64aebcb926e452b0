//! The part of Envoy's dynamic-module ABI (`source/extensions/dynamic_modules/abi/abi.h`,
//! Envoy 1.40) that the Sluice host uses, declared by hand, with safe wrappers.
//!
//! Why by hand: the ABI is a 600 KB C header whose Rust bindings Envoy's SDK generates with
//! bindgen from its own tree; what Sluice needs is about forty callbacks. Each signature here
//! was checked against the header or Envoy's own SDKs' calls, the metric updates and
//! schedulers also against the argument registers Envoy 1.40's code reads (`objdump`), and
//! each symbol against Envoy 1.40's dynamic symbol table (`nm -D`).
//!
//! Safety: every pointer Envoy hands a hook is valid for that hook's duration only; a
//! [`Filter`] or [`FilterConfig`] is built in a hook and dropped before it returns (the
//! host borrows it), and every buffer Envoy returns is copied before the next call. A
//! [`Scheduler`] is the one thing used outside a hook, from the module's timer threads:
//! Envoy's scheduler only posts to a dispatcher.
#![allow(unsafe_code)]

use sluice_common::host::LentHeaders;
use smallvec::SmallVec;
use std::ffi::c_void;

/// Bytes owned by Envoy (valid until the hook returns).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    /// What Envoy fills in (and what a missing answer leaves).
    const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes, borrowed for as long as the hook runs.
    fn as_slice(&self) -> &[u8] {
        lent_slice(self.ptr, self.length)
    }
}

/// Bytes Envoy lent for the hook, borrowed no longer than the header or buffer that
/// pointed at them.
fn lent_slice<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: Envoy filled in a live buffer of `length` bytes, valid until the hook
    // returns; callers tie the slice to the entry that pointed at it, used within the hook.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

/// Bytes Envoy lends a hook (a name, a configuration), copied out.
pub fn lent(ptr: *const u8, length: usize) -> Vec<u8> {
    EnvoyBuffer { ptr, length }.as_slice().to_vec()
}

/// Bytes owned by the module, lent to Envoy for one call.
#[repr(C)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
    fn null() -> Self {
        Self {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// One header, as Envoy lists it (`get_headers`) and as the module sends it
/// (`send_response`): the ABI's two header types have this one layout.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl HttpHeader {
    /// The name Envoy filled in, borrowed for as long as the hook runs.
    fn key(&self) -> &[u8] {
        lent_slice(self.key_ptr, self.key_length)
    }

    /// The value Envoy filled in, borrowed for as long as the hook runs.
    fn value(&self) -> &[u8] {
        lent_slice(self.value_ptr, self.value_length)
    }

    /// What Envoy fills in.
    const EMPTY: Self = Self {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum HeaderType {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_http_body_type`.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum BodyType {
    ReceivedRequest = 0,
    BufferedRequest = 1,
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

/// The attributes the filters read (`envoy_dynamic_module_type_attribute_id`, numbered as
/// in the header; the end-to-end test reads each one through Envoy).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Attribute {
    /// `request.id` (string).
    RequestId = 9,
    /// `response.code` (integer).
    ResponseCode = 15,
    /// `response.code_details` (string).
    ResponseCodeDetails = 16,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

extern "C" {
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut HttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_response_body(
        filter: *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: *mut c_void,
        body_type: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: *mut c_void,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        attribute: u32,
        result: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *const HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// What kind of metric, as the ABI's define and update callbacks are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// Envoy's `DynamicModuleHttpFilterConfig`, in a hook Envoy runs on its main thread:
/// `config_new` (the one place metrics can be defined: Envoy freezes them when it returns),
/// and the configuration's scheduled events and callout answers, where the root context's
/// work runs.
#[derive(Debug)]
pub struct FilterConfig(*mut c_void);

impl FilterConfig {
    /// The pointer `config_new` was given; use it only inside that hook.
    pub fn new(ptr: *mut c_void) -> Self {
        Self(ptr)
    }

    /// Define a metric (`label_names` empty) or a family of them (one series per tuple of
    /// label values, each label a tag); Envoy names it `dynamicmodulescustom.<name>`.
    pub fn define_metric(&self, t: MetricType, name: &str, label_names: &[&str]) -> Option<usize> {
        let labels = module_buffers(label_names);
        let define = match t {
            MetricType::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricType::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricType::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
        };
        let mut id = 0;
        // SAFETY: the configuration pointer is live during config_new; the name, `labels`
        // and the strings they point into outlive the call, `id` is a local. Envoy copies
        // the names into its stat-name pool.
        let result = unsafe {
            define(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Start an HTTP callout from the configuration (Envoy's main thread): its answer comes
    /// to `on_http_filter_config_http_callout_done` with the id returned. It outlives every
    /// stream. `None` when Envoy could not start it.
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        start_callout(
            envoy_dynamic_module_callback_http_filter_config_http_callout,
            self.0,
            cluster,
            headers,
            body,
            timeout_ms,
        )
    }

    /// As [`Filter::update_metric`], from the main thread.
    pub fn update_metric(&self, t: MetricType, id: usize, label_values: &[&str], value: u64) {
        let update = match t {
            MetricType::Counter => {
                envoy_dynamic_module_callback_http_filter_config_increment_counter
            }
            MetricType::Gauge => envoy_dynamic_module_callback_http_filter_config_set_gauge,
            MetricType::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_record_histogram_value
            }
        };
        update_metric(update, self.0, id, label_values, value);
    }

    /// A scheduler posting events to this configuration on Envoy's main thread
    /// (`on_http_filter_config_scheduled`), from any thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: the configuration pointer is live during the hook; Envoy returns a new
        // scheduler, which the module deletes (Scheduler's drop).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler {
            ptr,
            commit: envoy_dynamic_module_callback_http_filter_config_scheduler_commit,
            delete: envoy_dynamic_module_callback_http_filter_config_scheduler_delete,
        })
    }
}

/// Envoy's scheduler for a filter configuration or a stream: `commit` posts an event to
/// the thread that owns it (the main thread: `on_http_filter_config_scheduled`; the
/// stream's worker: `on_http_filter_scheduled`), which runs unless the owner is gone by
/// then (Envoy holds it weakly). Envoy's scheduler only posts to a dispatcher, which is
/// thread-safe: it may be committed from the module's own timer threads.
#[derive(Debug)]
pub struct Scheduler {
    ptr: *mut c_void,
    commit: unsafe extern "C" fn(*mut c_void, u64),
    delete: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: Envoy's scheduler posts to a dispatcher, thread-safe; the module deletes it
// once, and never while another thread commits it (its owners hold it under a lock or
// join the committing thread first).
unsafe impl Send for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a live scheduler (deleted only by drop).
        unsafe { (self.commit)(self.ptr, event_id) };
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by a scheduler_new, deleted once.
        unsafe { (self.delete)(self.ptr) };
    }
}

/// The metric-updating callbacks of a stream and of a configuration share this shape.
type UpdateMetric =
    unsafe extern "C" fn(*mut c_void, usize, *const ModuleBuffer, usize, u64) -> u32;

fn update_metric(update: UpdateMetric, owner: *mut c_void, id: usize, labels: &[&str], value: u64) {
    let values = module_buffers(labels);
    // SAFETY: the owner (a stream's filter or a configuration) is live during the hook;
    // `values` and the strings they point into outlive the call.
    unsafe { update(owner, id, values.as_ptr(), values.len(), value) };
}

/// The callout-starting callbacks of a stream and of a configuration share this shape.
type StartCallout = unsafe extern "C" fn(
    *mut c_void,
    *mut u64,
    ModuleBuffer,
    *const HttpHeader,
    usize,
    ModuleBuffer,
    u64,
) -> u32;

fn start_callout(
    start: StartCallout,
    owner: *mut c_void,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Option<u64> {
    let raw = module_headers(headers);
    let mut id = 0;
    // SAFETY: the owner (a stream's filter or a configuration) is live during the hook;
    // `raw`, the strings it points into, the cluster name and `body` outlive the call
    // (Envoy copies them into its request); `id` is a local.
    let result = unsafe {
        start(
            owner,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            raw.as_ptr(),
            raw.len(),
            ModuleBuffer::of(body),
            timeout_ms,
        )
    };
    if result != CALLOUT_STARTED {
        log::warn!("http callout to {cluster} not started (Envoy's result {result})");
        return None;
    }
    Some(id)
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const CALLOUT_STARTED: u32 = 0;

/// Headers Envoy lists (names lower-cased), copied out of its buffers.
fn copied_headers(raw: &[HttpHeader]) -> Vec<(String, Vec<u8>)> {
    raw.iter()
        .map(|h| {
            let key = lent(h.key_ptr, h.key_length);
            (
                String::from_utf8_lossy(&key).into_owned(),
                lent(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// Strings as the ABI takes a list of them, pointing into `strings` (which must outlive
/// the call). On the stack for the few labels a metric has.
fn module_buffers(strings: &[&str]) -> SmallVec<[ModuleBuffer; 8]> {
    strings
        .iter()
        .map(|s| ModuleBuffer::of(s.as_bytes()))
        .collect()
}

/// Headers as the ABI takes them, pointing into `headers` (which must outlive the call).
fn module_headers(headers: &[(&str, &str)]) -> Vec<HttpHeader> {
    headers
        .iter()
        .map(|(k, v)| HttpHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect()
}

/// A callout's answer as `on_http_filter_http_callout_done` lends it, copied: its headers
/// (pseudo-headers included) and its body's chunks joined. Nothing when the callout failed
/// (reset, timed out, answer too large): then Envoy lends no headers.
pub fn lent_response(
    headers: *const HttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let out = if headers.is_null() {
        Vec::new()
    } else {
        // SAFETY: Envoy lends `headers_size` headers for the hook's duration.
        copied_headers(unsafe { std::slice::from_raw_parts(headers, headers_size) })
    };
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: Envoy lends `chunks_size` buffers for the hook's duration.
        let list = unsafe { std::slice::from_raw_parts(chunks, chunks_size) };
        for c in list {
            body.extend_from_slice(c.as_slice());
        }
    }
    (out, body)
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// Envoy's `DynamicModuleHttpFilter` of the stream whose hook is running.
#[derive(Debug)]
pub struct Filter(*mut c_void);

impl Filter {
    /// The pointer a hook was given; use it only inside that hook.
    pub fn new(ptr: *mut c_void) -> Self {
        Self(ptr)
    }

    pub fn header(&self, t: HeaderType, key: &str) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: the filter pointer is live during the hook; `result` is a local.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                t as u32,
                ModuleBuffer::of(key.as_bytes()),
                &mut result,
                0,
                std::ptr::null_mut(),
            )
        };
        (found && !result.ptr.is_null()).then(|| result.as_slice().to_vec())
    }

    pub fn headers(&self, t: HeaderType) -> Vec<(String, Vec<u8>)> {
        copied_headers(&self.raw_headers(t))
    }

    /// The entries Envoy fills in for a side's headers, pointing into its buffers (valid
    /// during the hook); none when it fills in nothing.
    fn raw_headers(&self, t: HeaderType) -> SmallVec<[HttpHeader; 32]> {
        // SAFETY: the filter pointer is live during the hook.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, t as u32) };
        let mut raw: SmallVec<[HttpHeader; 32]> = smallvec::smallvec![HttpHeader::EMPTY; count];
        // SAFETY: `raw` holds `count` entries, as many as Envoy said it has.
        if count > 0
            && !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.0, t as u32, raw.as_mut_ptr())
            }
        {
            raw.clear();
        }
        raw
    }

    /// All headers of one side, lent to `f` where Envoy holds them (valid during the hook;
    /// a name that is not UTF-8, which Envoy's codecs do not let through, is left out).
    pub fn with_headers(&self, t: HeaderType, f: &mut dyn FnMut(LentHeaders)) {
        let raw = self.raw_headers(t);
        let lent: SmallVec<[(&str, &[u8]); 32]> = raw
            .iter()
            .filter_map(|h| Some((std::str::from_utf8(h.key()).ok()?, h.value())))
            .collect();
        f(&lent);
    }

    /// Set a header (`None`: remove it).
    pub fn set_header(&self, t: HeaderType, key: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or_else(ModuleBuffer::null, ModuleBuffer::of);
        // SAFETY: the filter pointer is live; the buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                t as u32,
                ModuleBuffer::of(key.as_bytes()),
                value,
            )
        }
    }

    /// The chunks of one body buffer, as Envoy holds them (valid until the hook returns).
    /// On the stack for the few chunks a body usually is: a request reads a body buffer
    /// or its size about twenty times.
    fn body_chunks(&self, b: BodyType) -> SmallVec<[EnvoyBuffer; 8]> {
        // SAFETY: the filter pointer is live during the hook.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, b as u32) };
        if count == 0 {
            return SmallVec::new();
        }
        let mut chunks: SmallVec<[EnvoyBuffer; 8]> = smallvec::smallvec![EnvoyBuffer::EMPTY; count];
        // SAFETY: `chunks` holds as many entries as Envoy said there are.
        let filled = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                b as u32,
                chunks.as_mut_ptr(),
            )
        };
        if filled {
            chunks
        } else {
            SmallVec::new()
        }
    }

    /// All bytes of one body buffer, its chunks joined, appended to `into`.
    pub fn body(&self, b: BodyType, into: &mut Vec<u8>) {
        for chunk in self.body_chunks(b) {
            into.extend_from_slice(chunk.as_slice());
        }
    }

    /// The size of one body buffer, nothing copied.
    pub fn body_size(&self, b: BodyType) -> usize {
        self.body_chunks(b).iter().map(|c| c.length).sum()
    }

    /// Whether the chunk being delivered is the body an earlier filter buffered (then the
    /// buffered and the received body are one buffer, and must be read once).
    pub fn received_is_buffered(&self, request: bool) -> bool {
        // SAFETY: the filter pointer is live during the hook.
        unsafe {
            if request {
                envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
            } else {
                envoy_dynamic_module_callback_http_received_buffered_response_body(self.0)
            }
        }
    }

    pub fn drain_body(&self, b: BodyType, bytes: usize) -> bool {
        // SAFETY: the filter pointer is live during the hook.
        unsafe { envoy_dynamic_module_callback_http_drain_body(self.0, b as u32, bytes) }
    }

    pub fn append_body(&self, b: BodyType, data: &[u8]) -> bool {
        // SAFETY: the filter pointer is live; `data` outlives the call.
        unsafe {
            envoy_dynamic_module_callback_http_append_body(self.0, b as u32, ModuleBuffer::of(data))
        }
    }

    pub fn filter_state(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: the filter pointer is live; `result` is a local.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key),
                &mut result,
            )
        };
        found.then(|| result.as_slice().to_vec())
    }

    pub fn set_filter_state(&self, key: &[u8], value: &[u8]) -> bool {
        // SAFETY: the filter pointer is live; the buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key),
                ModuleBuffer::of(value),
            )
        }
    }

    pub fn attribute_string(&self, attribute: Attribute) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: the filter pointer is live; `result` is a local.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                attribute as u32,
                &mut result,
            )
        };
        found.then(|| result.as_slice().to_vec())
    }

    pub fn attribute_int(&self, attribute: Attribute) -> Option<u64> {
        let mut result = 0u64;
        // SAFETY: the filter pointer is live; `result` is a local.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.0,
                attribute as u32,
                &mut result,
            )
        };
        found.then_some(result)
    }

    pub fn continue_decoding(&self) {
        // SAFETY: the filter pointer is live during the hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn continue_encoding(&self) {
        // SAFETY: the filter pointer is live during the hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(self.0) }
    }

    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let raw = module_headers(headers);
        // SAFETY: the filter pointer is live; `raw`, the strings it points into and `body`
        // outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(b"sluice"),
            )
        }
    }

    pub fn clear_route_cache(&self) {
        // SAFETY: the filter pointer is live during the hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// Start an HTTP callout to `cluster` (the request's pseudo-headers among `headers`);
    /// its answer comes to `on_http_filter_http_callout_done` with the id returned, on this
    /// stream's worker. `None` when Envoy could not start it (no such cluster, no healthy
    /// host, a required header missing).
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        start_callout(
            envoy_dynamic_module_callback_http_filter_http_callout,
            self.0,
            cluster,
            headers,
            body,
            timeout_ms,
        )
    }

    /// A scheduler posting events to this stream on its worker (`on_http_filter_scheduled`).
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: the filter pointer is live during the hook; Envoy returns a new
        // scheduler, which the module deletes (Scheduler's drop).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler {
            ptr,
            commit: envoy_dynamic_module_callback_http_filter_scheduler_commit,
            delete: envoy_dynamic_module_callback_http_filter_scheduler_delete,
        })
    }

    /// The raw pointer, to find this stream's filter again in a later hook of another
    /// stream on the same worker (`set_effective_context`), while it lives.
    pub fn ptr(&self) -> *mut c_void {
        self.0
    }

    /// Add to a counter, set a gauge or record a histogram value, defined at configuration
    /// with as many labels as `label_values` holds.
    pub fn update_metric(&self, t: MetricType, id: usize, label_values: &[&str], value: u64) {
        let update = match t {
            MetricType::Counter => envoy_dynamic_module_callback_http_filter_increment_counter,
            MetricType::Gauge => envoy_dynamic_module_callback_http_filter_set_gauge,
            MetricType::Histogram => {
                envoy_dynamic_module_callback_http_filter_record_histogram_value
            }
        };
        update_metric(update, self.0, id, label_values, value);
    }
}

/// Write a line to Envoy's log (its `dynamic_modules` logger).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the message outlives the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}
