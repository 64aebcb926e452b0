//! The one boundary between a filter's logic and Envoy.
//!
//! Everything a Sluice filter does with Envoy goes through [`Host`]: headers, bodies,
//! properties, shared data, gRPC and HTTP callouts, timers, local replies and metrics. The
//! proxy-wasm implementation is `sluice_proxy::WasmHost`; tests use the recording mock of the
//! `sluice-testkit` crate (a dev-dependency only, never compiled into a filter). A filter's
//! request lifecycle is written as a [`Lifecycle`] over this trait, so the sequence of host
//! calls each request causes is unit-tested natively and in V8.
//!
//! Reads never fail: a host call that fails is logged by the implementation and reads as
//! absent. Writes report failure only where the caller must act on it (a body that could
//! not be replaced must not go upstream unredacted).

use crate::api::family_for_path;
use crate::config::ConfigError;
use crate::OpenAiError;
use rustc_hash::FxHashMap;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What a hook answers Envoy: go on, or hold the request (or response) here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// Which half of the exchange a header or body call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    /// A value set, not added (`record_metric` sets it).
    Gauge,
    Histogram,
}

/// A labeled metric family (see [`Host::define_metric_family`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricFamily<'a> {
    pub kind: MetricKind,
    pub name: &'a str,
    /// Each label: its key in the series' name, and the tag Envoy exports it as (the one
    /// the stats configuration's `stats_tags` give the wasm build's series, so that both
    /// builds export the same Prometheus series).
    pub labels: &'a [(&'a str, &'a str)],
}

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDataError {
    /// Another writer got there first: read again.
    CasMismatch,
    /// The store failed.
    Failed,
}

/// A gRPC callout (`proxy_dispatch_grpc_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    /// The Envoy cluster of the service.
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    /// The serialized request message.
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// An HTTP callout (`proxy_dispatch_http_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// The queue behind a [`Handoff`]: boxed items of the plugin's own type.
pub type HandoffQueue = Arc<Mutex<VecDeque<Box<dyn Any + Send>>>>;

/// Work requests hand to the root context, which sends it on its timer (rate-limit's
/// settlement reports, response-cache's puts): the requests that make it have ended by
/// then. Bounded: when full, the oldest item is dropped.
///
/// Where the root context runs decides who shares the queue ([`Host::handoff_queue`]): in
/// proxy-wasm each worker's VM has its own root context, on the same thread as its
/// requests, so each plugin instance keeps its own; the native build runs the root context
/// on Envoy's main thread, so every instance of a filter configuration shares one (a lock
/// per push; uncontended in practice, as the root drains it a few times a second).
pub struct Handoff<T> {
    queue: HandoffQueue,
    max: usize,
    item: PhantomData<fn(T) -> T>,
}

impl<T: Send + 'static> Handoff<T> {
    /// The queue `name` of the plugin being configured, holding at most `max` items.
    pub fn new(host: &mut dyn Host, name: &str, max: usize) -> Self {
        Self {
            queue: host.handoff_queue(name),
            max: max.max(1),
            item: PhantomData,
        }
    }

    /// Queue `item`; false when the queue was full and its oldest item was dropped.
    pub fn push(&self, item: T) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let room = q.len() < self.max;
        if !room {
            q.pop_front();
        }
        q.push_back(Box::new(item));
        room
    }

    /// Up to `n` items, oldest first.
    pub fn take(&self, n: usize) -> Vec<T> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = n.min(q.len());
        q.drain(..n)
            .filter_map(|item| item.downcast::<T>().ok().map(|b| *b))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a filter does with Envoy.
pub trait Host {
    /// The plugin configuration (root context, in `on_configure`).
    fn plugin_configuration(&self) -> Vec<u8>;

    /// All headers of one side, names lower-cased by Envoy; values as raw bytes because a
    /// client may send anything, and a filter must not panic on non-UTF-8.
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)>;
    /// All headers of one side, lent to `f` for the call (as [`Host::headers`] gives them).
    /// By default a copy; a host whose headers sit in memory the filter can read (the
    /// native build) lends them where they are, nothing copied.
    fn with_headers(&self, side: Side, f: &mut dyn FnMut(LentHeaders)) {
        let headers = self.headers(side);
        let lent: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        f(&lent);
    }
    /// One header as UTF-8 (`None`: absent or not UTF-8).
    fn header(&self, side: Side, name: &str) -> Option<String>;
    /// Several headers as UTF-8, in the order of `names` (each as [`Host::header`] gives
    /// it). By default one read of all the side's headers: in proxy-wasm a read that returns
    /// data pays, besides the call, a call back into the VM to allocate the answer, so
    /// reading all of a side's headers costs about what reading one does (1.9–2.2 against
    /// 1.7 µs under load, `docs/benchmarks.md`). A host whose reads are plain lookups (the
    /// native build) reads each by name instead of copying every header.
    fn header_strings(&self, side: Side, names: &[&str]) -> Vec<Option<String>> {
        named_strings(&self.headers(side), names)
    }
    /// Replace (or add) a header, pseudo-headers such as `:path` and `:status` included.
    fn set_header(&mut self, side: Side, name: &str, value: &str);
    fn remove_header(&mut self, side: Side, name: &str);

    /// The first `size` bytes of the body buffered so far (or of this chunk).
    fn body(&self, side: Side, size: usize) -> Vec<u8>;
    /// Replace the first `size` bytes of the body; false when the host refused.
    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool;

    /// A property: filter state (`["sluice_policy"]`) or an Envoy attribute
    /// (`["response", "code"]`).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Publish a fact as filter state.
    fn set_property(&mut self, name: &str, value: &[u8]);

    /// A shared-data value (one map for all VMs of a `vm_id`) and its version.
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Write `value` if the key's version is still `cas` (`None`: unconditionally).
    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;

    /// Start a gRPC call; its token, or `None` when it could not start.
    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32>;
    /// The message of the gRPC answer being delivered (`size` bytes).
    fn grpc_response(&self, size: usize) -> Option<Vec<u8>>;
    /// The gRPC status of the answer being delivered, and its message.
    fn grpc_status(&self) -> (u32, Option<String>);
    /// Start an HTTP call; its token, or `None` when it could not start.
    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32>;
    /// The headers and body of the HTTP answer being delivered.
    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>);

    /// Call the root context's `on_tick` every `period`.
    fn set_tick_period(&mut self, period: Duration);
    /// Answer the client directly; nothing (more) goes upstream.
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Let a request (or response) held by an earlier `Flow::Pause` go on.
    fn resume(&mut self, side: Side);
    /// Act on another stream from now on (a root context releasing a request it queued):
    /// the header, property, reply and resume calls that follow are that stream's.
    fn set_effective_context(&mut self, context_id: u32);
    /// Make Envoy's route table match again after a header that routes was changed.
    fn clear_route_cache(&mut self);

    /// Define a metric once per VM; `None` when the host refuses (the filter still works,
    /// uncounted). Envoy shows it as `wasmcustom.<name>`.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Add `n` to a counter.
    fn increment_metric(&mut self, id: u32, n: u64);
    /// Record one value in a histogram, or set a gauge.
    fn record_metric(&mut self, id: u32, value: u64);

    /// Define a family of labeled metrics at configuration: one series per tuple of label
    /// values, `<name>.<key>.<value>...` as [`CounterSet::add_labeled`] names it. A host
    /// that can define metrics only while a filter is configured (Envoy's dynamic modules
    /// freeze them then) needs the family declared up front; proxy-wasm can define each
    /// series on first use, so the default is `None` and [`CounterSet`] names the series
    /// itself.
    fn define_metric_family(&mut self, _family: &MetricFamily) -> Option<u32> {
        None
    }
    /// Add `n` to the series of a counter family with these label `values` (in the
    /// family's label order, already sanitised).
    fn increment_labeled(&mut self, _id: u32, _values: &[&str], _n: u64) {}
    /// The queue `name` through which this plugin's requests hand work to its root
    /// context ([`Handoff`]). By default each call makes a new one (the plugin instance
    /// keeps it: proxy-wasm, where requests and root context share a VM); a host whose
    /// root context runs on another thread gives every instance of the configuration the
    /// same queue.
    fn handoff_queue(&mut self, _name: &str) -> HandoffQueue {
        HandoffQueue::default()
    }

    /// Wall-clock time, nanoseconds since the Unix epoch (0 if the host cannot tell).
    fn now_unix_nanos(&self) -> u64;

    /// Whether each read (headers, body) is a call that copies into the filter's memory, as
    /// in proxy-wasm, where a read that returns data also calls back into the VM to
    /// allocate it. A [`crate::chain::Chain`] then keeps what its members read during one
    /// Envoy hook and answers the next member from it. False for a host whose reads are
    /// lookups where the data lies (the native build lends headers in place).
    fn reads_are_copies(&self) -> bool {
        true
    }
}

/// The headers `names` of a side's headers as [`Host::headers`] gives them, each the first of
/// its name, as UTF-8 (`None`: absent or not UTF-8).
pub fn named_strings(headers: &[(String, Vec<u8>)], names: &[&str]) -> Vec<Option<String>> {
    names
        .iter()
        .map(|name| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        })
        .collect()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_unix_millis(host: &dyn Host) -> u64 {
    host.now_unix_nanos() / 1_000_000
}

/// Wall-clock seconds since the Unix epoch.
pub fn now_unix_secs(host: &dyn Host) -> u64 {
    host.now_unix_nanos() / 1_000_000_000
}

/// Several headers of one side, in the order named: each one's first value as UTF-8
/// (`None`: absent or not UTF-8), as [`Host::header`] would give it; in proxy-wasm from one
/// host call ([`Host::header_strings`]).
pub fn header_values<const N: usize>(
    host: &dyn Host,
    side: Side,
    names: [&str; N],
) -> [Option<String>; N] {
    let mut values = host.header_strings(side, &names).into_iter();
    names.map(|_| values.next().flatten())
}

/// The request's `:method` and `:path` (empty when absent), as [`header_values`] reads them.
pub fn request_line(host: &dyn Host) -> (String, String) {
    let [method, path] = header_values(host, Side::Request, [":method", ":path"]);
    (method.unwrap_or_default(), path.unwrap_or_default())
}

/// Which of a module's filters a root id (or dynamic-module filter name) runs: the first
/// whose part the id contains (`sluice.rate_limit.admission` runs `rate_limit`). The one
/// rule for the wasm module of several filters and the native one.
pub fn chosen_by_root_id<'a, T>(filters: &'a [(&str, T)], root_id: &str) -> Option<&'a T> {
    filters
        .iter()
        .find(|(part, _)| root_id.contains(part))
        .map(|(_, filter)| filter)
}

/// Shared data a host keeps itself (the mock, the native build): key → value and version,
/// written by compare-and-swap as Envoy's shared data is.
#[derive(Debug, Default)]
pub struct SharedDataMap(HashMap<String, (Vec<u8>, u32)>);

impl SharedDataMap {
    /// [`Host::shared_data`]: the value and its version.
    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.0.get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    /// [`Host::set_shared_data`]: as Envoy decides it, a missing key is created whatever
    /// `cas`; an existing one needs `cas` to be its version, or none.
    pub fn set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        match self.0.get_mut(key) {
            Some((_, current)) if cas.is_some_and(|cas| cas != *current) => {
                Err(SharedDataError::CasMismatch)
            }
            // In place, one lookup: a key that exists keeps its string and its value's
            // buffer (a bucket or a load figure is rewritten every request; a new key and
            // value each time were three allocations and two hashes of the key).
            Some((stored, version)) => {
                stored.clear();
                stored.extend_from_slice(value);
                // Versions count up from 1 and skip 0 (proxy-wasm's "no check").
                *version = version.wrapping_add(1).max(1);
                Ok(())
            }
            None => {
                self.0.insert(key.to_string(), (value.to_vec(), 1));
                Ok(())
            }
        }
    }

    /// The keys set, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    /// How many keys are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A filter-state property as UTF-8.
pub fn text_property(host: &dyn Host, name: &str) -> Option<String> {
    host.property(&[name])
        .and_then(|v| String::from_utf8(v).ok())
}

/// Publish a text fact as filter state.
pub fn set_text_property(host: &mut dyn Host, name: &str, value: &str) {
    host.set_property(name, value.as_bytes());
}

/// Answer the client with `error` in the shape of the API its path belongs to (OpenAI's, or
/// Anthropic's under `/v1/messages`), plus `extra` headers.
pub fn send_error(host: &mut dyn Host, error: &OpenAiError, extra: &[(&str, &str)]) {
    let path = host.header(Side::Request, ":path").unwrap_or_default();
    let family = family_for_path(&path);
    let mut headers = vec![OpenAiError::CONTENT_TYPE];
    headers.extend_from_slice(extra);
    host.send_reply(error.status(), &headers, error.body_for(family).as_bytes());
}

/// Replace a buffered request body and its `content-length`; false (nothing changed) when
/// the host refused the body.
pub fn replace_request_body(host: &mut dyn Host, size: usize, body: &[u8]) -> bool {
    if !host.set_body(Side::Request, size, body) {
        return false;
    }
    host.set_header(Side::Request, "content-length", &body.len().to_string());
    true
}

/// Parse the plugin configuration (in [`Plugin::configure`]).
pub fn plugin_config<T: serde::de::DeserializeOwned>(host: &dyn Host) -> Result<T, ConfigError> {
    crate::config::parse_config(&host.plugin_configuration())
}

/// Replace `key`'s value in shared data with `next(current value)` by compare-and-swap
/// (all workers see it; a write that lost a race is recomputed from the newer value). The
/// value written, or `None` when the store kept refusing.
pub fn update_shared<T: AsRef<[u8]>>(
    host: &dyn Host,
    key: &str,
    mut next: impl FnMut(Option<&[u8]>) -> T,
) -> Option<T> {
    try_update_shared(host, key, |v| Some(next(v)))
}

/// [`update_shared`], where `next` may decline (`None`) to write anything for the value it
/// sees: then `None`, and the value stays as another worker left it.
pub fn try_update_shared<T: AsRef<[u8]>>(
    host: &dyn Host,
    key: &str,
    mut next: impl FnMut(Option<&[u8]>) -> Option<T>,
) -> Option<T> {
    for _ in 0..32 {
        let (value, cas) = host.shared_data(key);
        let new = next(value.as_deref())?;
        // A missing key is created with a version no live key has (see rate-limit's store).
        match host.set_shared_data(key, new.as_ref(), Some(cas.unwrap_or(u32::MAX))) {
            Ok(()) => return Some(new),
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => return None,
        }
    }
    None
}

/// A counter's value as [`add_shared`] stores it (0 when absent).
fn counter_value(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| v.get(..8))
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Add `delta` to a counter in shared data (all workers see it), by compare-and-swap, never
/// below 0. The new value, or `None` when the store kept refusing.
pub fn add_shared(host: &dyn Host, key: &str, delta: i64) -> Option<u64> {
    update_shared(host, key, |v| {
        counter_value(v).saturating_add_signed(delta).to_le_bytes()
    })
    .map(u64::from_le_bytes)
}

/// Add one to a counter in shared data unless it is already at `max`, by compare-and-swap:
/// of workers racing for the last unit, one gets it. The new value, or `None` when the
/// counter is at `max` (or the store kept refusing).
pub fn add_shared_below(host: &dyn Host, key: &str, max: u64) -> Option<u64> {
    try_update_shared(host, key, |v| {
        let n = counter_value(v);
        (n < max).then(|| n.saturating_add(1).to_le_bytes())
    })
    .map(u64::from_le_bytes)
}

/// A counter in shared data written by [`add_shared`].
pub fn shared_counter(host: &dyn Host, key: &str) -> u64 {
    counter_value(host.shared_data(key).0.as_deref())
}

/// Metrics named at run time (labels in the name), defined on first use. Bounded: past
/// `max` names, new ones are not recorded, so label cardinality cannot grow without end.
#[derive(Debug)]
struct NamedMetrics {
    kind: MetricKind,
    ids: HashMap<String, Option<u32>>,
    max: usize,
}

impl NamedMetrics {
    fn id(&mut self, host: &mut dyn Host, name: &str) -> Option<u32> {
        match self.ids.get(name) {
            Some(id) => *id,
            None if self.ids.len() >= self.max => None,
            None => {
                let id = host.define_metric(self.kind, name);
                self.ids.insert(name.to_string(), id);
                id
            }
        }
    }
}

/// A side's headers as [`Host::with_headers`] lends them: names and raw values.
pub type LentHeaders<'a> = &'a [(&'a str, &'a [u8])];

/// Counters named at run time; see [`NamedMetrics`].
#[derive(Debug)]
pub struct CounterSet {
    names: NamedMetrics,
    /// Families declared at configuration (see [`CounterSet::declare`]): name, label keys,
    /// the host's id.
    families: Vec<(String, Vec<String>, u32)>,
    /// Series of declared families recorded so far (bounded by `max` as names are).
    family_series: usize,
    /// [`CounterSet::add_labeled`]'s series by its family parts and labels (length-prefixed,
    /// so no two lists of parts make the same key), at most `2 * max` of them.
    by_values: FxHashMap<Vec<u8>, Option<Series>>,
    /// The key being looked up, reused so that a lookup allocates nothing.
    key: Vec<u8>,
}

/// Where [`CounterSet::add_labeled`] counts one tuple of labels.
#[derive(Debug)]
enum Series {
    /// A metric of its own, named `<family>.<key>.<value>...`.
    Named(u32),
    /// A declared family's series: its id and the label values, sanitised.
    InFamily(u32, Vec<String>),
}

impl CounterSet {
    pub fn new(max: usize) -> Self {
        Self {
            names: NamedMetrics {
                kind: MetricKind::Counter,
                ids: HashMap::new(),
                max,
            },
            families: Vec::new(),
            family_series: 0,
            by_values: FxHashMap::default(),
            key: Vec::new(),
        }
    }

    /// Declare the counter family `name` with these `(key, exported tag)` labels, at
    /// configuration, for hosts that define metrics only then
    /// ([`Host::define_metric_family`]). [`CounterSet::add_labeled`] with the family's name
    /// (its parts joined by dots) and these keys in this order then counts in the family;
    /// where the host declined, it names the series itself as before.
    pub fn declare(&mut self, host: &mut dyn Host, name: &str, labels: &[(&str, &str)]) {
        let family = MetricFamily {
            kind: MetricKind::Counter,
            name,
            labels,
        };
        if let Some(id) = host.define_metric_family(&family) {
            let keys = labels.iter().map(|(k, _)| k.to_string()).collect();
            self.families.push((name.to_string(), keys, id));
        }
    }

    /// The declared family these parts and label keys name.
    fn family(&self, parts: &[&str], labels: &[(&str, &str)]) -> Option<u32> {
        self.families.iter().find_map(|(name, keys, id)| {
            let same_keys =
                keys.len() == labels.len() && keys.iter().zip(labels).all(|(k, (key, _))| k == key);
            (same_keys && joined_is(parts, name)).then_some(*id)
        })
    }

    /// Define counter `name` now, counting nothing: for names known at configuration,
    /// on a host that defines metrics only then.
    pub fn define(&mut self, host: &mut dyn Host, name: &str) {
        let _ = self.names.id(host, name);
    }

    pub fn add(&mut self, host: &mut dyn Host, name: &str, n: u64) {
        if let Some(id) = self.names.id(host, name) {
            host.increment_metric(id, n);
        }
    }

    /// Add `n` to the counter `<family parts, joined by dots>.<key>.<value>...` for these
    /// `labels`, each value sanitised with [`crate::metrics::label`]. The name is built
    /// only the first time the parts are seen: the same counter a request later is a lookup
    /// of the parts as they are, with no formatting, sanitising or name hashing (for
    /// token-counter that was four names a request).
    pub fn add_labeled(
        &mut self,
        host: &mut dyn Host,
        family: &[&str],
        labels: &[(&str, &str)],
        n: u64,
    ) {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        let parts = family.iter().chain(labels.iter().flat_map(|(k, v)| [k, v]));
        for part in parts {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        match self.by_values.get(key.as_slice()) {
            Some(series) => count_in(host, series.as_ref(), n),
            None => {
                let series = self.series(host, family, labels);
                count_in(host, series.as_ref(), n);
                if self.by_values.len() < 2 * self.names.max {
                    self.by_values.insert(key.clone(), series);
                }
            }
        }
        self.key = key;
    }

    /// Where a tuple of labels seen for the first time is counted.
    fn series(
        &mut self,
        host: &mut dyn Host,
        family: &[&str],
        labels: &[(&str, &str)],
    ) -> Option<Series> {
        if let Some(id) = self.family(family, labels) {
            if self.family_series >= self.names.max {
                return None;
            }
            self.family_series += 1;
            let values = labels.iter().map(|(_, v)| crate::metrics::label(v));
            return Some(Series::InFamily(id, values.collect()));
        }
        let mut name = family.join(".");
        for (k, v) in labels {
            name.push('.');
            name.push_str(k);
            name.push('.');
            name.push_str(&crate::metrics::label(v));
        }
        self.names.id(host, &name).map(Series::Named)
    }
}

/// Add `n` where [`CounterSet::add_labeled`] found the series counted (nothing if nowhere).
fn count_in(host: &mut dyn Host, series: Option<&Series>, n: u64) {
    match series {
        Some(Series::Named(id)) => host.increment_metric(*id, n),
        Some(Series::InFamily(id, values)) => {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            host.increment_labeled(*id, &values, n);
        }
        None => {}
    }
}

/// Whether `parts` joined by dots is `name`, without joining them.
fn joined_is(parts: &[&str], name: &str) -> bool {
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Gauges named at run time; see [`NamedMetrics`].
#[derive(Debug)]
pub struct GaugeSet(NamedMetrics);

impl GaugeSet {
    pub fn new(max: usize) -> Self {
        Self(NamedMetrics {
            kind: MetricKind::Gauge,
            ids: HashMap::new(),
            max,
        })
    }

    /// Define gauge `name` now, setting nothing (see [`CounterSet::define`]).
    pub fn define(&mut self, host: &mut dyn Host, name: &str) {
        let _ = self.0.id(host, name);
    }

    pub fn set(&mut self, host: &mut dyn Host, name: &str, value: u64) {
        if let Some(id) = self.0.id(host, name) {
            host.record_metric(id, value);
        }
    }
}

/// Counters with names fixed at compile time, defined together in `on_configure` and
/// looked up by a typed outcome `K` (an enum), never by string.
#[derive(Debug)]
pub struct Counters<K> {
    ids: Vec<(K, Option<u32>)>,
}

impl<K: Copy + PartialEq> Counters<K> {
    /// Define `prefix.<name>` for each `(outcome, name)`.
    pub fn define(host: &mut dyn Host, prefix: &str, all: &[(K, &str)]) -> Self {
        Self {
            ids: all
                .iter()
                .map(|(k, name)| {
                    (
                        *k,
                        host.define_metric(MetricKind::Counter, &format!("{prefix}.{name}")),
                    )
                })
                .collect(),
        }
    }

    pub fn add(&self, host: &mut dyn Host, outcome: K, n: u64) {
        let id = self
            .ids
            .iter()
            .find(|(k, _)| *k == outcome)
            .and_then(|(_, id)| *id);
        if let Some(id) = id {
            host.increment_metric(id, n);
        }
    }
}

/// A histogram defined once in `on_configure`.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(Option<u32>);

impl Histogram {
    pub fn define(host: &mut dyn Host, name: &str) -> Self {
        Self(host.define_metric(MetricKind::Histogram, name))
    }

    pub fn record(self, host: &mut dyn Host, value: u64) {
        if let Some(id) = self.0 {
            host.record_metric(id, value);
        }
    }
}

/// A filter's per-request lifecycle: one value per HTTP stream, each hook a step of its
/// state machine. Defaults: the stream passes untouched.
pub trait Lifecycle {
    fn on_request_headers(&mut self, _host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn on_request_body(&mut self, _host: &mut dyn Host, _size: usize, _end: bool) -> Flow {
        Flow::Continue
    }
    fn on_response_headers(&mut self, _host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn on_response_body(&mut self, _host: &mut dyn Host, _size: usize, _end: bool) -> Flow {
        Flow::Continue
    }
    /// The answer of a callout this request started.
    fn on_grpc_response(&mut self, _host: &mut dyn Host, _token: u32, _status: u32, _size: usize) {}
    /// The answer of an HTTP callout this request started (`body_size` 0 and no headers
    /// when it failed: reset, timeout, no such cluster).
    fn on_http_response(&mut self, _host: &mut dyn Host, _token: u32, _body_size: usize) {}
    /// The stream is over, however it ended.
    fn on_log(&mut self, _host: &mut dyn Host) {}
}

/// A filter: its validated configuration and what its VM keeps between requests.
pub trait Plugin: Sized + 'static {
    /// The filter's name in logs.
    const NAME: &'static str;
    type Request: Lifecycle;

    /// Build from the plugin configuration (`on_configure`); an error is logged and the
    /// configuration refused.
    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError>;
    /// The lifecycle of a new HTTP stream (`context_id`: Envoy's id of the stream, for
    /// [`Host::set_effective_context`]).
    fn new_request(self: &Rc<Self>, context_id: u32) -> Self::Request;
    /// The root context's timer: work on shared state, handoff queues and callouts that
    /// outlive requests. It may run on another thread than the requests (the native build
    /// runs it on Envoy's main thread), so it touches no request.
    fn on_tick(&self, _host: &mut dyn Host) {}
    /// Work on this worker's own paused requests (releasing queued ones, refusing those
    /// that waited too long), on their worker's thread. proxy-wasm runs it from the root
    /// context's timer, just before [`Plugin::on_tick`].
    fn on_worker_tick(&self, _host: &mut dyn Host) {}
    /// Whether this configuration holds requests paused for [`Plugin::on_worker_tick`]:
    /// a host that runs the root context elsewhere (the native build) then wakes a paused
    /// request's worker while it waits.
    fn holds_requests(&self) -> bool {
        false
    }
    /// The answer of a gRPC callout the root context started.
    fn on_grpc_response(&self, _host: &mut dyn Host, _token: u32, _status: u32, _size: usize) {}
    /// The answer of an HTTP callout the root context started (`body_size` 0 and no
    /// headers when it failed: reset, timeout, no such cluster).
    fn on_http_response(&self, _host: &mut dyn Host, _token: u32, _body_size: usize) {}
}

/// What every filter does with a stream it has no configuration for: Envoy refuses a
/// configuration `on_configure` rejects, so this only runs if Envoy creates a stream anyway.
/// Nothing ungoverned passes: the request gets a 503.
#[derive(Debug, Default)]
pub struct Unconfigured {
    pub filter: &'static str,
}

impl Lifecycle for Unconfigured {
    fn on_request_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        log::error!("{}: no valid configuration; request refused", self.filter);
        let error = OpenAiError::new(
            crate::ErrorKind::Unavailable,
            "The gateway is not configured for this request.",
        )
        .with_code("gateway_not_configured");
        send_error(host, &error, &[]);
        Flow::Pause
    }
}
