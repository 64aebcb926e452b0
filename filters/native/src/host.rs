//! [`EnvoyHost`]: sluice-common's [`Host`] over Envoy's dynamic-module callbacks.
//!
//! What it covers: headers, bodies, filter state (the `sluice_*` facts), local replies,
//! resuming, the route cache, the clock, shared data (one map for the whole Envoy process,
//! compare-and-swap by version as Envoy's proxy-wasm shared data does — in a native module
//! the process is the VM), metrics defined while Envoy configures the filter ([`Metrics`]),
//! and HTTP and unary gRPC callouts ([`grpc_answer`]) from a stream or from the root
//! context. Of Envoy's attributes it reads those the filters read (`request.id`,
//! `response.code`, `response.code_details`) and `plugin_root_id` (the filter name).
//!
//! The root context runs on Envoy's main thread (Envoy 1.40's ABI has no per-worker timer
//! for HTTP filters, and a callout started from a stream ends with it): the plugin instance
//! configured there ticks (`set_tick_period`, see `Ticker`), calls out through the
//! configuration, and drains the [`HandoffQueue`]s every instance of the configuration
//! shares. A plugin that holds requests for its worker's own tick
//! ([`Plugin::on_worker_tick`](sluice_common::host::Plugin::on_worker_tick)) has it run
//! on the worker, woken through the waiting stream's scheduler (see `Waker`), and acts on
//! the streams it holds by context id (`set_effective_context`). A metric first named on a
//! request, not while the filter was configured, is not counted (Envoy defines a module's
//! metrics only then): the filters define at configuration every name they will use.

use crate::abi::{Attribute, BodyType, Filter, FilterConfig, HeaderType, MetricType};
use rustc_hash::FxHashMap;
use sluice_common::host::{
    GrpcCall, HandoffQueue, Host, HttpCall, LentHeaders, MetricFamily, MetricKind, SharedDataError,
    SharedDataMap, Side,
};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn header_type(side: Side) -> HeaderType {
    match side {
        Side::Request => HeaderType::Request,
        Side::Response => HeaderType::Response,
    }
}

/// Whether a filter holds the request's and the response's body: it paused on an earlier
/// chunk, so Envoy buffers that side for it and it sees all of it, as in proxy-wasm.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holding {
    request: bool,
    response: bool,
}

impl Holding {
    pub fn of(self, side: Side) -> bool {
        match side {
            Side::Request => self.request,
            Side::Response => self.response,
        }
    }

    pub fn set(&mut self, side: Side, holding: bool) {
        match side {
            Side::Request => self.request = holding,
            Side::Response => self.response = holding,
        }
    }
}

/// The buffers holding the body a filter sees, as proxy-wasm shows it: while the filter
/// holds this side's body (it paused on an earlier chunk), what Envoy buffered for it and
/// then the chunk being delivered; otherwise the chunk alone (which is the whole body when
/// an earlier filter buffered it and now lets it go). Envoy's buffered body may hold data
/// held for other filters: it is read only when this filter is the one holding it.
fn body_buffers(filter: &Filter, side: Side, holding: bool) -> &'static [BodyType] {
    let request = side == Side::Request;
    let both = holding && !filter.received_is_buffered(request);
    match (request, both) {
        (true, true) => &[BodyType::BufferedRequest, BodyType::ReceivedRequest],
        (true, false) => &[BodyType::ReceivedRequest],
        (false, true) => &[BodyType::BufferedResponse, BodyType::ReceivedResponse],
        (false, false) => &[BodyType::ReceivedResponse],
    }
}

/// The filter-state name of a published fact: the one proxy-wasm gives it (`wasm.<name>`),
/// so that the access log (`%FILTER_STATE(wasm.sluice_tenant:PLAIN)%`) and anything else
/// reading Sluice's facts finds them whichever build of the filters runs. Built on the stack:
/// a request reads and writes about twenty facts, and `format!` made each a heap string
/// (3% of the native chain's instructions in Envoy, `scripts/envoy-callgrind.sh`).
fn filter_state_name(name: &str) -> SmallVec<[u8; 64]> {
    const PREFIX: &[u8] = b"wasm.";
    let mut key = SmallVec::with_capacity(PREFIX.len() + name.len());
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

/// A metric Envoy defined while it configured the filter.
#[derive(Debug)]
pub struct Defined {
    kind: MetricKind,
    name: String,
    /// A family's label keys (empty for a single metric).
    keys: Vec<String>,
    envoy_id: usize,
}

/// A filter configuration's metrics. Envoy lets a module define metrics only while it
/// configures the filter (`config_new`, on its main thread) and freezes them after; each
/// worker configures its own plugin later from the same bytes, and its definitions are
/// looked up among those made then, by kind, name and label keys. A name first seen on a
/// request (a label value in the name rather than a family's) was not defined, and is not
/// counted.
pub enum Metrics<'a> {
    /// Envoy is configuring the filter: each definition goes to Envoy and is remembered.
    Defining(&'a FilterConfig, &'a mut Vec<Defined>),
    /// A worker configuring its plugin, or a stream: what was defined.
    Defined(&'a [Defined]),
}

impl Metrics<'_> {
    fn defined(&self) -> &[Defined] {
        match self {
            Metrics::Defining(_, defined) => defined,
            Metrics::Defined(defined) => defined,
        }
    }

    /// `keys` name the series, `tags` are what Envoy exports the labels as.
    fn define(
        &mut self,
        kind: MetricKind,
        name: &str,
        keys: &[&str],
        tags: &[&str],
    ) -> Option<u32> {
        let index = match self {
            Metrics::Defining(config, defined) => {
                let envoy_id = config.define_metric(metric_type(kind), name, tags)?;
                defined.push(Defined {
                    kind,
                    name: name.to_string(),
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                    envoy_id,
                });
                defined.len().checked_sub(1)?
            }
            Metrics::Defined(defined) => defined
                .iter()
                .position(|d| d.kind == kind && d.name == name && d.keys == keys)?,
        };
        u32::try_from(index).ok()
    }

    fn get(&self, id: u32) -> Option<&Defined> {
        self.defined().get(usize::try_from(id).ok()?)
    }
}

fn metric_type(kind: MetricKind) -> MetricType {
    match kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Histogram => MetricType::Histogram,
    }
}

/// A callout's answer, held while the hook delivering it runs.
#[derive(Debug, Default)]
pub struct Answer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// For a gRPC call, what its answer means (see [`grpc_answer`]).
    pub grpc: Option<GrpcAnswer>,
}

impl Answer {
    /// The answer a callout-done hook lends (see [`crate::abi::lent_response`]), copied;
    /// decoded as gRPC when the call was one.
    pub fn lent(
        headers: *const crate::abi::HttpHeader,
        headers_size: usize,
        body: *const crate::abi::EnvoyBuffer,
        body_size: usize,
        grpc: bool,
    ) -> Self {
        let (headers, body) = crate::abi::lent_response(headers, headers_size, body, body_size);
        Self {
            grpc: grpc.then(|| grpc_answer(&headers, &body)),
            headers,
            body,
        }
    }
}

/// A unary gRPC call's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAnswer {
    pub status: u32,
    pub message: Option<String>,
    /// The response message (the body's one length-prefixed message, unframed).
    pub bytes: Vec<u8>,
}

/// gRPC status codes used here.
const GRPC_UNKNOWN: u32 = 2;
const GRPC_UNAVAILABLE: u32 = 14;

/// A unary gRPC call made as an HTTP/2 callout, read from what Envoy hands the module:
/// headers and body, not trailers. A status in the headers (a trailers-only answer, how
/// gRPC servers send an error) is the status; otherwise a 200 whose body is one whole
/// uncompressed message is OK (a unary server sends its message, then OK in the trailers);
/// no headers at all means the call failed (reset, timed out: unavailable), and anything
/// else is unknown.
pub fn grpc_answer(headers: &[(String, Vec<u8>)], body: &[u8]) -> GrpcAnswer {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let message = header("grpc-message");
    if let Some(status) = header("grpc-status") {
        let status = status.trim().parse().unwrap_or(GRPC_UNKNOWN);
        return GrpcAnswer {
            status,
            message,
            bytes: Vec::new(),
        };
    }
    if headers.is_empty() {
        return GrpcAnswer {
            status: GRPC_UNAVAILABLE,
            message: Some("the call failed (reset or timed out)".into()),
            bytes: Vec::new(),
        };
    }
    let framed = match body {
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            (rest.len() == len).then(|| rest.to_vec())
        }
        _ => None,
    };
    match (header(":status").as_deref(), framed) {
        (Some("200"), Some(bytes)) => GrpcAnswer {
            status: 0,
            message: None,
            bytes,
        },
        (status, _) => GrpcAnswer {
            status: GRPC_UNKNOWN,
            message: Some(format!(
                "not a gRPC answer (HTTP status {})",
                status.unwrap_or("none")
            )),
            bytes: Vec::new(),
        },
    }
}

/// A gRPC request message framed for the wire: uncompressed, its length, the message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The process's shared data.
fn shared() -> &'static Mutex<SharedDataMap> {
    static SHARED: OnceLock<Mutex<SharedDataMap>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(SharedDataMap::default()))
}

thread_local! {
    /// This worker's live streams' Envoy filters, by context id: `set_effective_context`
    /// acts on another stream of the same worker (a queued request released).
    static STREAM_FILTERS: std::cell::RefCell<FxHashMap<u32, *mut std::ffi::c_void>> =
        std::cell::RefCell::new(FxHashMap::default());
}

/// A stream began on this worker (`filter_new`): its context id and Envoy's filter.
pub fn register_stream(context_id: u32, filter: *mut std::ffi::c_void) {
    STREAM_FILTERS.with(|s| s.borrow_mut().insert(context_id, filter));
}

/// Counter increments a worker's streams of one configuration made, not yet given to
/// Envoy. A labeled increment costs Envoy about 3,750 instructions (it builds the series'
/// name from the label values each time: `scripts/envoy-callgrind.sh`), seven a request in
/// the chain; the same series' increments are summed here and handed over together when no
/// stream of the configuration is left open on the worker (so a client that has its
/// answer finds it counted, as before), or, under load, every 256 increments or second.
#[derive(Default)]
struct PendingCounters {
    /// Envoy's metric id, the label values, the sum since the last hand-over (kept at 0
    /// after it, so that a series counted again allocates nothing).
    series: Vec<(usize, Vec<String>, u64)>,
    increments: u32,
    /// When the oldest pending increment was made.
    since: Option<std::time::Instant>,
    /// Streams of the configuration open on this worker (not yet complete).
    open: u32,
}

/// Hand pending counters over at most this many increments, or this long, after the first.
const PENDING_INCREMENTS: u32 = 256;
const PENDING_AGE: Duration = Duration::from_secs(1);
/// Series kept per configuration and worker; an increment of another goes to Envoy at once.
const PENDING_SERIES: usize = 256;

thread_local! {
    /// By configuration id. A configuration Envoy replaced (an ECDS key update) leaves its
    /// entry, its sums handed over when its last stream completed: a few series' names a
    /// worker per update.
    static PENDING: std::cell::RefCell<FxHashMap<u64, PendingCounters>> =
        std::cell::RefCell::new(FxHashMap::default());
}

/// A stream of configuration `config_id` opened on this worker.
pub fn stream_opened(config_id: u64) {
    PENDING.with(|p| p.borrow_mut().entry(config_id).or_default().open += 1);
}

/// A stream of configuration `config_id` completed on this worker: with `filter` (its
/// Envoy filter, live in the hook), the configuration's pending counters are handed to
/// Envoy when it was the last one open, or when they have waited long enough.
pub fn stream_completed(config_id: u64, filter: Option<&Filter>) {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let Some(c) = pending.get_mut(&config_id) else {
            return;
        };
        c.open = c.open.saturating_sub(1);
        // Nothing pending (most configurations count nothing a request): no clock read.
        let due = c.increments > 0
            && (c.open == 0
                || c.increments >= PENDING_INCREMENTS
                || c.since.is_some_and(|t| t.elapsed() >= PENDING_AGE));
        let Some(f) = filter.filter(|_| due) else {
            return;
        };
        c.increments = 0;
        c.since = None;
        // Envoy's counter update calls back into no module hook: the borrow is safe.
        for (id, labels, n) in c.series.iter_mut().filter(|s| s.2 > 0) {
            let lent: SmallVec<[&str; 8]> = labels.iter().map(String::as_str).collect();
            f.update_metric(MetricType::Counter, *id, &lent, *n);
            *n = 0;
        }
    });
}

/// Add to a counter of configuration `config_id` (see `PendingCounters`); to Envoy at once
/// through `filter` when the configuration already keeps as many series as it may.
fn defer_counter(config_id: u64, filter: &Filter, id: usize, labels: &[&str], n: u64) {
    let kept = PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let c = pending.entry(config_id).or_default();
        let same = |(i, l, _): &&mut (usize, Vec<String>, u64)| {
            *i == id && l.len() == labels.len() && l.iter().zip(labels).all(|(a, b)| a == b)
        };
        let full = c.series.len() >= PENDING_SERIES;
        match c.series.iter_mut().find(same) {
            Some((_, _, sum)) => *sum += n,
            None if full => return false,
            None => c
                .series
                .push((id, labels.iter().map(|l| l.to_string()).collect(), n)),
        }
        c.increments += 1;
        c.since.get_or_insert_with(std::time::Instant::now);
        true
    });
    if !kept {
        filter.update_metric(MetricType::Counter, id, labels, n);
    }
}

/// A stream ended (`filter_destroy`): no other stream may act on it.
pub fn forget_stream(context_id: u32) {
    STREAM_FILTERS.with(|s| s.borrow_mut().remove(&context_id));
}

/// The handoff queues of every filter configuration, by its id and the queue's name.
fn handoff_queues() -> &'static Mutex<HashMap<(u64, String), HandoffQueue>> {
    static QUEUES: OnceLock<Mutex<HashMap<(u64, String), HandoffQueue>>> = OnceLock::new();
    QUEUES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forget the handoff queues of a configuration Envoy destroyed.
pub fn drop_handoff_queues(config_id: u64) {
    handoff_queues()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(id, _), _| *id != config_id);
}

/// The host a hook hands a filter: a stream's (`filter` set), the root context's on the
/// main thread (`main` set), or a configuration's being built.
pub struct EnvoyHost<'a> {
    filter: Option<Filter>,
    main: Option<FilterConfig>,
    /// Which filter configuration (its handoff queues).
    config_id: u64,
    /// The root-context timer the plugin asked for while it was configured.
    pub tick: Option<Duration>,
    config: &'a [u8],
    /// The filter name Envoy configured (`plugin_root_id`).
    root_id: &'a str,
    holding: Holding,
    metrics: Metrics<'a>,
    /// The callout answer the running hook delivers.
    answer: Option<&'a Answer>,
    /// gRPC calls this step started (their answers are decoded as gRPC).
    pub grpc_started: Vec<u64>,
}

impl<'a> EnvoyHost<'a> {
    pub fn stream(
        filter: Filter,
        config_id: u64,
        config: &'a [u8],
        root_id: &'a str,
        holding: Holding,
        metrics: &'a [Defined],
    ) -> Self {
        Self {
            filter: Some(filter),
            metrics: Metrics::Defined(metrics),
            holding,
            ..Self::configuration(config_id, config, root_id, Metrics::Defined(&[]))
        }
    }

    /// The root context's host, in a hook Envoy runs on its main thread for the
    /// configuration `main`.
    pub fn root(
        main: FilterConfig,
        config_id: u64,
        config: &'a [u8],
        root_id: &'a str,
        metrics: &'a [Defined],
    ) -> Self {
        Self {
            main: Some(main),
            ..Self::configuration(config_id, config, root_id, Metrics::Defined(metrics))
        }
    }

    /// The host of a hook that delivers a callout's answer.
    pub fn with_answer(self, answer: &'a Answer) -> Self {
        Self {
            answer: Some(answer),
            ..self
        }
    }

    /// A configuration's host while its plugin is configured (`config_id` names its
    /// handoff queues).
    pub fn configuration(
        config_id: u64,
        config: &'a [u8],
        root_id: &'a str,
        metrics: Metrics<'a>,
    ) -> Self {
        Self {
            filter: None,
            main: None,
            config_id,
            tick: None,
            config,
            root_id,
            holding: Holding::default(),
            metrics,
            answer: None,
            grpc_started: Vec::new(),
        }
    }

    /// Start a callout from the stream or the root context (a configuration being built
    /// cannot call out).
    fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Option<u64> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match (&self.filter, &self.main) {
            (Some(f), _) => f.http_callout(cluster, headers, body, timeout_ms),
            (None, Some(main)) => main.http_callout(cluster, headers, body, timeout_ms),
            (None, None) => None,
        }
    }

    /// Update metric `id` (a family's series when `values` are given).
    fn update_metric(&self, id: u32, values: &[&str], value: u64) {
        let Some(d) = self.metrics.get(id) else {
            return;
        };
        if d.keys.len() != values.len() {
            return;
        }
        let t = metric_type(d.kind);
        match (&self.filter, &self.main) {
            (Some(f), _) if t == MetricType::Counter => {
                defer_counter(self.config_id, f, d.envoy_id, values, value)
            }
            (Some(f), _) => f.update_metric(t, d.envoy_id, values, value),
            (None, Some(main)) => main.update_metric(t, d.envoy_id, values, value),
            (None, None) => {}
        }
    }

    /// The size of the body the filter sees on one side (see `body_buffers`), nothing
    /// copied: the hooks pass it to the filter, which then reads the body if it wants it.
    pub fn body_len(&self, side: Side) -> usize {
        self.filter.as_ref().map_or(0, |f| {
            body_buffers(f, side, self.holding.of(side))
                .iter()
                .map(|&t| f.body_size(t))
                .sum()
        })
    }
}

impl Host for EnvoyHost<'_> {
    fn plugin_configuration(&self) -> Vec<u8> {
        self.config.to_vec()
    }

    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        self.filter
            .as_ref()
            .map(|f| f.headers(header_type(side)))
            .unwrap_or_default()
    }

    fn with_headers(&self, side: Side, f: &mut dyn FnMut(LentHeaders)) {
        match &self.filter {
            Some(filter) => filter.with_headers(header_type(side), f),
            None => f(&[]),
        }
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        let value = self.filter.as_ref()?.header(header_type(side), name)?;
        String::from_utf8(value).ok()
    }

    /// Each by name: natively a header read is a lookup in Envoy's map, where reading all
    /// of them copies every one (the default, right for proxy-wasm).
    fn header_strings(&self, side: Side, names: &[&str]) -> Vec<Option<String>> {
        names.iter().map(|name| self.header(side, name)).collect()
    }

    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        if let Some(f) = &self.filter {
            f.set_header(header_type(side), name, Some(value.as_bytes()));
        }
    }

    fn remove_header(&mut self, side: Side, name: &str) {
        if let Some(f) = &self.filter {
            f.set_header(header_type(side), name, None);
        }
    }

    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(f) = &self.filter {
            for &t in body_buffers(f, side, self.holding.of(side)) {
                f.body(t, &mut body);
            }
        }
        body.truncate(size);
        body
    }

    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        let Some(f) = &self.filter else {
            return false;
        };
        // Replace the first `size` bytes: what follows them (none, once the body is whole)
        // is kept after the new bytes, in the chunk being delivered.
        let buffers = body_buffers(f, side, self.holding.of(side));
        let mut whole = Vec::new();
        let mut drained = true;
        for &t in buffers {
            let before = whole.len();
            f.body(t, &mut whole);
            drained &= f.drain_body(t, whole.len() - before);
        }
        let rest = whole.get(size.min(whole.len())..).unwrap_or_default();
        let Some(&received) = buffers.last() else {
            return false;
        };
        drained
            && f.append_body(received, bytes)
            && (rest.is_empty() || f.append_body(received, rest))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if path == ["plugin_root_id"] {
            // What proxy-wasm calls the root id: the filter name Envoy configured.
            return Some(self.root_id.as_bytes().to_vec());
        }
        let f = self.filter.as_ref()?;
        match path {
            ["request", "id"] => f.attribute_string(Attribute::RequestId),
            ["response", "code_details"] => f.attribute_string(Attribute::ResponseCodeDetails),
            // As proxy-wasm gives an integer attribute: 8 bytes, little-endian.
            ["response", "code"] => f
                .attribute_int(Attribute::ResponseCode)
                .map(|code| code.to_le_bytes().to_vec()),
            [name] => f.filter_state(&filter_state_name(name)),
            _ => None,
        }
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        if let Some(f) = &self.filter {
            f.set_filter_state(&filter_state_name(name), value);
        }
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        shared()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        shared()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(key, value, cas)
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32> {
        let path = format!("/{}/{}", call.service, call.method);
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", call.cluster),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let body = grpc_frame(call.message);
        let id = self.callout(call.cluster, &headers, &body, call.timeout)?;
        self.grpc_started.push(id);
        u32::try_from(id).ok()
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        let grpc = self.answer?.grpc.as_ref()?;
        let mut bytes = grpc.bytes.clone();
        bytes.truncate(size);
        Some(bytes)
    }

    fn grpc_status(&self) -> (u32, Option<String>) {
        match self.answer.and_then(|a| a.grpc.as_ref()) {
            Some(g) => (g.status, g.message.clone()),
            None => (GRPC_UNKNOWN, None),
        }
    }

    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32> {
        let id = self.callout(
            call.cluster,
            call.headers,
            call.body.unwrap_or_default(),
            call.timeout,
        )?;
        u32::try_from(id).ok()
    }

    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let Some(answer) = self.answer else {
            return (Vec::new(), Vec::new());
        };
        let mut body = answer.body.clone();
        body.truncate(body_size);
        (answer.headers.clone(), body)
    }

    fn set_tick_period(&mut self, period: Duration) {
        self.tick = Some(period);
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if let Some(f) = &self.filter {
            f.send_response(status, headers, body);
        }
    }

    fn resume(&mut self, side: Side) {
        if let Some(f) = &self.filter {
            match side {
                Side::Request => f.continue_decoding(),
                Side::Response => f.continue_encoding(),
            }
        }
    }

    fn set_effective_context(&mut self, context_id: u32) {
        // Only a stream's host may act on another stream, and only on its worker's.
        if self.filter.is_none() {
            return;
        }
        match STREAM_FILTERS.with(|s| s.borrow().get(&context_id).copied()) {
            Some(ptr) => {
                self.filter = Some(Filter::new(ptr));
                self.holding = Holding::default();
                self.answer = None;
            }
            None => log::debug!("no stream {context_id} on this worker"),
        }
    }

    fn clear_route_cache(&mut self) {
        if let Some(f) = &self.filter {
            f.clear_route_cache();
        }
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        self.metrics.define(kind, name, &[], &[])
    }

    fn increment_metric(&mut self, id: u32, n: u64) {
        self.update_metric(id, &[], n);
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        self.update_metric(id, &[], value);
    }

    fn define_metric_family(&mut self, family: &MetricFamily) -> Option<u32> {
        let keys: Vec<&str> = family.labels.iter().map(|(k, _)| *k).collect();
        let tags: Vec<&str> = family.labels.iter().map(|(_, t)| *t).collect();
        self.metrics.define(family.kind, family.name, &keys, &tags)
    }

    fn increment_labeled(&mut self, id: u32, values: &[&str], n: u64) {
        self.update_metric(id, values, n);
    }

    fn handoff_queue(&mut self, name: &str) -> HandoffQueue {
        handoff_queues()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((self.config_id, name.to_string()))
            .or_default()
            .clone()
    }

    fn now_unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Headers are lent where Envoy keeps them and a header is a lookup: a copy kept by a
    /// chain would cost more than the reads it saves.
    fn reads_are_copies(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_grpc_answer_is_read_from_headers_and_body_without_trailers() {
        let message = b"\x08\x01".to_vec();
        let ok = headers(&[(":status", "200"), ("content-type", "application/grpc")]);
        // One whole message: OK (the status itself came in the trailers).
        assert_eq!(
            grpc_answer(&ok, &grpc_frame(&message)),
            GrpcAnswer {
                status: 0,
                message: None,
                bytes: message.clone()
            }
        );
        // Cut short, compressed, or not gRPC at all: unknown.
        let framed = grpc_frame(&message);
        for body in [&framed[..6], &[1, 0, 0, 0, 0][..], b"<html>"] {
            assert_eq!(grpc_answer(&ok, body).status, GRPC_UNKNOWN, "{body:?}");
        }
        let bad_gateway = headers(&[(":status", "503")]);
        assert_eq!(grpc_answer(&bad_gateway, &framed).status, GRPC_UNKNOWN);
        // A trailers-only error: its status and message.
        let error = headers(&[
            (":status", "200"),
            ("grpc-status", "8"),
            ("grpc-message", "over"),
        ]);
        let answer = grpc_answer(&error, b"");
        assert_eq!(
            (answer.status, answer.message.as_deref()),
            (8, Some("over"))
        );
        // No answer at all (reset, timed out): unavailable.
        assert_eq!(grpc_answer(&[], b"").status, GRPC_UNAVAILABLE);
    }
}
