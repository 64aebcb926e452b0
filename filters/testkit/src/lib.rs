//! Test support for the Sluice filters: [`MockHost`], a recording [`Host`].
//!
//! A dev-dependency only: never compiled into a filter. A test sets the state Envoy would
//! hold (headers, bodies, properties, callout answers), drives a filter's lifecycle, and
//! asserts the host calls it caused, in order ([`MockHost::calls`]). Reads are answered from
//! the state and not recorded, so a test states effects, not how they were looked up.

pub mod probe;

use sluice_common::host::{
    GrpcCall, Host, HttpCall, MetricFamily, MetricKind, SharedDataError, SharedDataMap, Side,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One effect a filter had on Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetHeader(Side, String, String),
    RemoveHeader(Side, String),
    /// The body after the write, as text (lossy).
    SetBody(Side, String),
    /// A filter-state property and its value as text (lossy).
    SetProperty(String, String),
    /// The key written.
    SetSharedData(String),
    DispatchGrpc {
        cluster: String,
        method: String,
        timeout: Duration,
    },
    DispatchHttp {
        cluster: String,
        path: String,
    },
    SetTickPeriod(Duration),
    SendReply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    Resume(Side),
    /// The calls that follow act on this stream.
    SetEffectiveContext(u32),
    ClearRouteCache,
    /// A counter incremented, by name.
    Increment(String, u64),
    /// A histogram value recorded, by name.
    Record(String, u64),
}

/// A recorded local reply (the last [`Call::SendReply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An in-memory [`Host`] that records every effect.
#[derive(Debug, Default)]
pub struct MockHost {
    pub plugin_config: Vec<u8>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Properties by path joined with `.` (`sluice_policy`, `response.code`).
    pub properties: HashMap<String, Vec<u8>>,
    /// Shared data: value and version, CAS-checked like Envoy's.
    pub shared: RefCell<SharedDataMap>,
    /// When set, `dispatch_grpc`/`dispatch_http` fail (the cluster is missing).
    pub callouts_fail: bool,
    /// The answer being delivered to `on_grpc_response`.
    pub grpc_answer: Option<Vec<u8>>,
    pub grpc_status: (u32, Option<String>),
    pub http_answer: (Vec<(String, Vec<u8>)>, Vec<u8>),
    pub now_ms: u64,
    /// Every effect, in order (a cell: shared-data writes are made through `&self`).
    calls: RefCell<Vec<Call>>,
    next_token: u32,
    metrics: Vec<(MetricKind, String)>,
    /// Whether the host defines labeled families (`define_metric_family`), as Envoy's
    /// dynamic modules need; their series are counted under the same flat names.
    pub metric_families: bool,
    /// A family's label keys, by its id (in `metrics`).
    family_keys: HashMap<u32, Vec<String>>,
    /// Per metric name: counters summed, gauges their last value, histograms the count of
    /// values recorded.
    pub metric_totals: BTreeMap<String, u64>,
    /// When set, the host says its reads are lookups, not copies (as the native build's):
    /// a chain configured on it keeps nothing its members read.
    pub reads_lent: bool,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lower(headers: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

impl MockHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// A host holding these request headers (names lower-cased, as Envoy gives them).
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        Self {
            request_headers: lower(headers),
            ..Self::default()
        }
    }

    /// Start a new stream on the same VM: headers, bodies, properties, callout answers and
    /// recorded calls are reset; metric definitions, shared data and the clock stay (as they
    /// do in Envoy across the streams of one VM).
    pub fn next_request(&mut self, headers: &[(&str, &str)]) {
        self.request_headers = lower(headers);
        self.response_headers.clear();
        self.request_body.clear();
        self.response_body.clear();
        self.properties.clear();
        self.grpc_answer = None;
        self.grpc_status = (0, None);
        self.calls.get_mut().clear();
    }

    pub fn set_response_headers(&mut self, headers: &[(&str, &str)]) {
        self.response_headers = lower(headers);
    }

    pub fn set_text_property(&mut self, name: &str, value: &str) {
        self.properties
            .insert(name.to_string(), value.as_bytes().to_vec());
    }

    /// A property as UTF-8 (as a filter set it, or as the test did).
    pub fn text_property(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        find(&self.request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.response_headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    /// Every effect so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The last local reply, if one was sent.
    pub fn reply(&self) -> Option<Reply> {
        self.calls.borrow().iter().rev().find_map(|c| match c {
            Call::SendReply {
                status,
                headers,
                body,
            } => Some(Reply {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            }),
            _ => None,
        })
    }

    /// How many callouts (`dispatch_grpc`, `dispatch_http`) were started on this host: their
    /// tokens are 1 to this number, in order.
    pub fn tokens_issued(&self) -> u32 {
        self.next_token
    }

    /// The calls recorded so far, and forget them (a test asserts step by step).
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(self.calls.get_mut())
    }

    /// The calls other than metric updates (what a test of the request flow asserts).
    pub fn effects(&self) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| !matches!(c, Call::Increment(..) | Call::Record(..)))
            .cloned()
            .collect()
    }

    /// Names of the counters incremented, in order.
    pub fn counted(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Increment(name, _) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether a local reply was sent.
    pub fn replied(&self) -> bool {
        self.reply().is_some()
    }

    fn headers_mut(&mut self, side: Side) -> &mut Vec<(String, Vec<u8>)> {
        match side {
            Side::Request => &mut self.request_headers,
            Side::Response => &mut self.response_headers,
        }
    }

    fn body_mut(&mut self, side: Side) -> &mut Vec<u8> {
        match side {
            Side::Request => &mut self.request_body,
            Side::Response => &mut self.response_body,
        }
    }

    fn metric_name(&self, id: u32) -> String {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.metrics.get(i))
            .map_or_else(|| format!("#{id}"), |(_, n)| n.clone())
    }
}

fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

impl Host for MockHost {
    fn plugin_configuration(&self) -> Vec<u8> {
        self.plugin_config.clone()
    }

    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        match side {
            Side::Request => self.request_headers.clone(),
            Side::Response => self.response_headers.clone(),
        }
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        let headers = match side {
            Side::Request => &self.request_headers,
            Side::Response => &self.response_headers,
        };
        find(headers, name).and_then(|v| String::from_utf8(v.to_vec()).ok())
    }

    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        self.record(Call::SetHeader(side, name.into(), value.into()));
        let headers = self.headers_mut(side);
        headers.retain(|(k, _)| k != name);
        headers.push((name.to_string(), value.as_bytes().to_vec()));
    }

    fn remove_header(&mut self, side: Side, name: &str) {
        self.record(Call::RemoveHeader(side, name.into()));
        self.headers_mut(side).retain(|(k, _)| k != name);
    }

    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        let body = match side {
            Side::Request => &self.request_body,
            Side::Response => &self.response_body,
        };
        // One memcpy, as a host's copy into the VM is (an iterator's goes a byte at a time
        // in V8, and the V8 profile would charge it to the filters).
        body.get(..size).unwrap_or(body).to_vec()
    }

    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        let body = self.body_mut(side);
        let cut = size.min(body.len());
        body.splice(..cut, bytes.iter().copied());
        let after = lossy(body);
        self.record(Call::SetBody(side, after));
        true
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        self.record(Call::SetProperty(name.into(), lossy(value)));
        self.properties.insert(name.to_string(), value.to_vec());
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.borrow().get(key)
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.shared.borrow_mut().set(key, value, cas)?;
        self.record(Call::SetSharedData(key.to_string()));
        Ok(())
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32> {
        self.record(Call::DispatchGrpc {
            cluster: call.cluster.into(),
            method: format!("{}/{}", call.service, call.method),
            timeout: call.timeout,
        });
        if self.callouts_fail {
            return None;
        }
        self.next_token += 1;
        Some(self.next_token)
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        self.grpc_answer
            .as_ref()
            .map(|b| b.get(..size).unwrap_or(b).to_vec())
    }

    fn grpc_status(&self) -> (u32, Option<String>) {
        self.grpc_status.clone()
    }

    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32> {
        let path = call
            .headers
            .iter()
            .find(|(k, _)| *k == ":path")
            .map_or_else(String::new, |(_, v)| (*v).to_string());
        self.record(Call::DispatchHttp {
            cluster: call.cluster.into(),
            path,
        });
        if self.callouts_fail {
            return None;
        }
        self.next_token += 1;
        Some(self.next_token)
    }

    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let (headers, body) = &self.http_answer;
        (
            headers.clone(),
            body.get(..body_size).unwrap_or(body).to_vec(),
        )
    }

    fn set_tick_period(&mut self, period: Duration) {
        self.record(Call::SetTickPeriod(period));
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.record(Call::SendReply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            body: lossy(body),
        });
    }

    fn resume(&mut self, side: Side) {
        self.record(Call::Resume(side));
    }

    fn set_effective_context(&mut self, context_id: u32) {
        self.record(Call::SetEffectiveContext(context_id));
    }

    fn clear_route_cache(&mut self) {
        self.record(Call::ClearRouteCache);
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let id = u32::try_from(self.metrics.len()).ok()?;
        self.metrics.push((kind, name.to_string()));
        Some(id)
    }

    fn increment_metric(&mut self, id: u32, n: u64) {
        let name = self.metric_name(id);
        *self.metric_totals.entry(name.clone()).or_default() += n;
        self.record(Call::Increment(name, n));
    }

    fn define_metric_family(&mut self, family: &MetricFamily) -> Option<u32> {
        if !self.metric_families {
            return None;
        }
        let id = self.define_metric(family.kind, family.name)?;
        let keys = family.labels.iter().map(|(k, _)| k.to_string()).collect();
        self.family_keys.insert(id, keys);
        Some(id)
    }

    fn increment_labeled(&mut self, id: u32, values: &[&str], n: u64) {
        let mut name = self.metric_name(id);
        let keys = self.family_keys.get(&id).cloned().unwrap_or_default();
        assert_eq!(keys.len(), values.len(), "label values of {name}");
        for (k, v) in keys.iter().zip(values) {
            name.push_str(&format!(".{k}.{v}"));
        }
        *self.metric_totals.entry(name.clone()).or_default() += n;
        self.record(Call::Increment(name, n));
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let name = self.metric_name(id);
        let gauge = usize::try_from(id)
            .ok()
            .and_then(|i| self.metrics.get(i))
            .is_some_and(|(kind, _)| *kind == MetricKind::Gauge);
        let total = self.metric_totals.entry(name.clone()).or_default();
        if gauge {
            *total = value;
        } else {
            *total += 1;
        }
        self.record(Call::Record(name, value));
    }

    fn now_unix_nanos(&self) -> u64 {
        self.now_ms.saturating_mul(1_000_000)
    }

    fn reads_are_copies(&self) -> bool {
        !self.reads_lent
    }
}

/// What a filter asked of its host: how many calls of each kind, and the bytes copied into
/// the VM (headers, bodies, properties and shared data read) and out of it (written). In
/// Envoy each call crosses the wasm boundary and each byte is copied between Envoy and the
/// VM; `sluice-chain-profile` counts them per filter and request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostCalls {
    pub by_kind: BTreeMap<&'static str, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl HostCalls {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// Add another count to this one (a filter's calls over many requests).
    pub fn merge(&mut self, other: HostCalls) {
        for (kind, n) in other.by_kind {
            *self.by_kind.entry(kind).or_default() += n;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }

    fn add(&mut self, kind: &'static str, bytes_in: usize, bytes_out: usize) {
        *self.by_kind.entry(kind).or_default() += 1;
        self.bytes_in += bytes_in as u64;
        self.bytes_out += bytes_out as u64;
    }
}

/// A [`Host`] that passes every call to another and counts it in [`HostCalls`].
pub struct CountingHost<'a> {
    pub inner: &'a mut dyn Host,
    pub calls: RefCell<HostCalls>,
}

impl<'a> CountingHost<'a> {
    pub fn new(inner: &'a mut dyn Host) -> Self {
        Self {
            inner,
            calls: RefCell::new(HostCalls::default()),
        }
    }

    fn count(&self, kind: &'static str, bytes_in: usize, bytes_out: usize) {
        self.calls.borrow_mut().add(kind, bytes_in, bytes_out);
    }
}

fn header_bytes(headers: &[(String, Vec<u8>)]) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl Host for CountingHost<'_> {
    fn plugin_configuration(&self) -> Vec<u8> {
        let v = self.inner.plugin_configuration();
        self.count("plugin_configuration", v.len(), 0);
        v
    }
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        let v = self.inner.headers(side);
        self.count("headers", header_bytes(&v), 0);
        v
    }
    fn header(&self, side: Side, name: &str) -> Option<String> {
        let v = self.inner.header(side, name);
        self.count("header", v.as_ref().map_or(0, String::len), name.len());
        v
    }
    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        self.count("set_header", 0, name.len() + value.len());
        self.inner.set_header(side, name, value);
    }
    fn remove_header(&mut self, side: Side, name: &str) {
        self.count("remove_header", 0, name.len());
        self.inner.remove_header(side, name);
    }
    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        let v = self.inner.body(side, size);
        self.count("body", v.len(), 0);
        v
    }
    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        self.count("set_body", 0, bytes.len());
        self.inner.set_body(side, size, bytes)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let v = self.inner.property(path);
        let name: usize = path.iter().map(|p| p.len()).sum();
        self.count("property", v.as_ref().map_or(0, Vec::len), name);
        v
    }
    fn set_property(&mut self, name: &str, value: &[u8]) {
        self.count("set_property", 0, name.len() + value.len());
        self.inner.set_property(name, value);
    }
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let v = self.inner.shared_data(key);
        self.count("shared_data", v.0.as_ref().map_or(0, Vec::len), key.len());
        v
    }
    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.count("set_shared_data", 0, key.len() + value.len());
        self.inner.set_shared_data(key, value, cas)
    }
    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32> {
        self.count("dispatch_grpc", 0, call.message.len());
        self.inner.dispatch_grpc(call)
    }
    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        let v = self.inner.grpc_response(size);
        self.count("grpc_response", v.as_ref().map_or(0, Vec::len), 0);
        v
    }
    fn grpc_status(&self) -> (u32, Option<String>) {
        self.count("grpc_status", 0, 0);
        self.inner.grpc_status()
    }
    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32> {
        self.count("dispatch_http", 0, call.body.map_or(0, <[u8]>::len));
        self.inner.dispatch_http(call)
    }
    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let v = self.inner.http_response(body_size);
        self.count("http_response", header_bytes(&v.0) + v.1.len(), 0);
        v
    }
    fn set_tick_period(&mut self, period: Duration) {
        self.count("set_tick_period", 0, 0);
        self.inner.set_tick_period(period);
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.count("send_reply", 0, body.len());
        self.inner.send_reply(status, headers, body);
    }
    fn resume(&mut self, side: Side) {
        self.count("resume", 0, 0);
        self.inner.resume(side);
    }
    fn set_effective_context(&mut self, context_id: u32) {
        self.count("set_effective_context", 0, 0);
        self.inner.set_effective_context(context_id);
    }
    fn clear_route_cache(&mut self) {
        self.count("clear_route_cache", 0, 0);
        self.inner.clear_route_cache();
    }
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        self.count("define_metric", 0, name.len());
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&mut self, id: u32, n: u64) {
        self.count("increment_metric", 0, 0);
        self.inner.increment_metric(id, n);
    }
    fn define_metric_family(&mut self, family: &MetricFamily) -> Option<u32> {
        self.count("define_metric_family", 0, family.name.len());
        self.inner.define_metric_family(family)
    }
    fn increment_labeled(&mut self, id: u32, values: &[&str], n: u64) {
        self.count("increment_labeled", 0, 0);
        self.inner.increment_labeled(id, values, n);
    }
    fn record_metric(&mut self, id: u32, value: u64) {
        self.count("record_metric", 0, 0);
        self.inner.record_metric(id, value);
    }
    fn now_unix_nanos(&self) -> u64 {
        self.count("now", 0, 0);
        self.inner.now_unix_nanos()
    }
    fn reads_are_copies(&self) -> bool {
        self.inner.reads_are_copies()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_common::host::{header_values, request_line};

    proptest! {
        /// One read of all headers answers each name as a read of that header would:
        /// the first value, `None` when absent or not UTF-8, whatever the names repeat.
        #[test]
        fn header_values_answer_as_header_does(
            headers in proptest::collection::vec(
                ("[a-c:]{1,3}", proptest::collection::vec(any::<u8>(), 0..4)), 0..8),
            asked in proptest::collection::vec("[a-c:]{1,3}", 3),
        ) {
            let mut mock = MockHost::new();
            mock.request_headers = headers;
            let names = [asked[0].as_str(), asked[1].as_str(), asked[2].as_str()];
            let got = header_values(&mock, Side::Request, names);
            for (name, value) in names.iter().zip(got) {
                prop_assert_eq!(value, mock.header(Side::Request, name));
            }
        }
    }

    #[test]
    fn the_request_line_is_read_in_one_call() {
        let mut mock =
            MockHost::with_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
        let host = CountingHost::new(&mut mock);
        assert_eq!(
            request_line(&host),
            ("POST".to_string(), "/v1/chat/completions".to_string())
        );
        let calls = host.calls.into_inner();
        assert_eq!((calls.total(), calls.by_kind.get("headers")), (1, Some(&1)));
        let mut empty = MockHost::new();
        assert_eq!(
            request_line(&CountingHost::new(&mut empty)),
            (String::new(), String::new())
        );
    }

    #[test]
    fn a_counting_host_counts_each_call_and_the_bytes_each_way() {
        let mut mock = MockHost::with_request(&[("authorization", "Bearer abc")]);
        mock.request_body = b"0123456789".to_vec();
        let mut host = CountingHost::new(&mut mock);
        assert_eq!(
            host.header(Side::Request, "authorization").as_deref(),
            Some("Bearer abc")
        );
        assert_eq!(host.body(Side::Request, 4), b"0123");
        host.set_property("sluice_tenant", b"team-a");
        let calls = host.calls.into_inner();
        assert_eq!(calls.total(), 3);
        assert_eq!(calls.by_kind.get("header"), Some(&1));
        assert_eq!(calls.bytes_in, 10 + 4);
        assert_eq!(calls.bytes_out, "authorization".len() as u64 + 13 + 6);
        // The calls reached the host behind it.
        assert_eq!(
            mock.calls(),
            vec![Call::SetProperty("sluice_tenant".into(), "team-a".into())]
        );
    }

    #[test]
    fn a_handoff_keeps_the_newest_items_in_order() {
        use sluice_common::host::Handoff;
        let mut host = MockHost::new();
        let queue: Handoff<String> = Handoff::new(&mut host, "q", 2);
        assert!(queue.push("a".into()) && queue.push("b".into()));
        assert!(!queue.push("c".into()), "full: the oldest is dropped");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.take(1), ["b"]);
        assert_eq!(queue.take(10), ["c"]);
        assert!(queue.is_empty());
        // A proxy-wasm host gives each plugin instance its own queue.
        let other: Handoff<String> = Handoff::new(&mut host, "q", 2);
        other.push("d".into());
        assert!(queue.is_empty());
    }

    #[test]
    fn shared_data_is_cas_checked_like_envoy() {
        let h = MockHost::new();
        assert_eq!(h.set_shared_data("k", b"a", Some(u32::MAX)), Ok(()));
        let (v, cas) = h.shared_data("k");
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        assert_eq!(
            h.set_shared_data("k", b"b", Some(u32::MAX)),
            Err(SharedDataError::CasMismatch)
        );
        assert_eq!(h.set_shared_data("k", b"b", cas), Ok(()));
        assert_eq!(
            h.set_shared_data("k", b"c", cas),
            Err(SharedDataError::CasMismatch)
        );
        assert_eq!(h.set_shared_data("k", b"c", None), Ok(()));
        // Rewritten in place: a shorter value replaces a longer one whole, and each write
        // moves the version on.
        let (_, before) = h.shared_data("k");
        assert_eq!(h.set_shared_data("k", b"a longer value", before), Ok(()));
        let (_, after) = h.shared_data("k");
        assert_ne!(after, before);
        assert_eq!(h.set_shared_data("k", b"z", after), Ok(()));
        assert_eq!(h.shared_data("k").0.as_deref(), Some(&b"z"[..]));
        assert_eq!(h.shared_data("other").0, None);
    }

    #[test]
    fn a_body_write_replaces_the_first_size_bytes() {
        let mut h = MockHost::new();
        h.response_body = b"hello world".to_vec();
        assert!(h.set_body(Side::Response, 5, b"bye"));
        assert_eq!(h.response_body, b"bye world");
        assert_eq!(
            h.calls(),
            vec![Call::SetBody(Side::Response, "bye world".into())]
        );
    }

    #[test]
    fn metrics_are_recorded_by_name() {
        let mut h = MockHost::new();
        let id = h.define_metric(MetricKind::Counter, "a.b");
        h.increment_metric(id.unwrap_or(99), 3);
        assert_eq!(h.counted(), vec!["a.b".to_string()]);
        assert_eq!(h.metric_totals.get("a.b"), Some(&3));
    }

    #[test]
    fn a_labeled_counter_is_named_once_and_found_by_its_values() {
        use sluice_common::host::CounterSet;
        let mut h = MockHost::new();
        let mut set = CounterSet::new(2);
        set.add_labeled(&mut h, &["f"], &[("k", "a"), ("v", "b")], 1);
        set.add_labeled(&mut h, &["f"], &[("k", "a"), ("v", "b")], 2);
        // The same bytes split differently are other parts, another family another counter;
        // a value is sanitised in the name (an empty one is "none").
        set.add_labeled(&mut h, &["f"], &[("k", "a v"), ("v", "")], 4);
        set.add_labeled(&mut h, &["g"], &[("k", "a"), ("v", "b")], 8);
        assert_eq!(h.metric_totals.get("f.k.a.v.b"), Some(&3));
        assert_eq!(h.metric_totals.get("f.k.a_v.v.none"), Some(&4));
        // Past the set's bound of two names, a new name is not recorded.
        assert_eq!(h.metric_totals.get("g.k.a.v.b"), None);
        assert_eq!(h.counted(), ["f.k.a.v.b", "f.k.a.v.b", "f.k.a_v.v.none"]);
        // The names defined through add_labeled and add are one set.
        set.add(&mut h, "f.k.a.v.b", 16);
        assert_eq!(h.metric_totals.get("f.k.a.v.b"), Some(&19));
    }

    #[test]
    fn a_declared_family_counts_the_same_series_where_the_host_defines_families() {
        use sluice_common::host::CounterSet;
        for families in [false, true] {
            let mut h = MockHost {
                metric_families: families,
                ..MockHost::default()
            };
            let mut set = CounterSet::new(2);
            set.declare(&mut h, "f.x", &[("k", "tag_k"), ("v", "tag_v")]);
            set.add_labeled(&mut h, &["f", "x"], &[("k", "a"), ("v", "b")], 1);
            set.add_labeled(&mut h, &["f", "x"], &[("k", "a"), ("v", "b")], 2);
            set.add_labeled(&mut h, &["f.x"], &[("k", "a v"), ("v", "")], 4);
            // Other keys, or keys in another order, are not the family: a name of their own.
            set.add_labeled(&mut h, &["f.x"], &[("v", "b"), ("k", "a")], 8);
            set.add_labeled(&mut h, &["f.x"], &[("k", "c"), ("v", "d")], 16);
            let totals: Vec<(&str, u64)> = h
                .metric_totals
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            let expected = if families {
                // The family's series are bounded as names are (two), apart from them.
                vec![
                    ("f.x.k.a.v.b", 3),
                    ("f.x.k.a_v.v.none", 4),
                    ("f.x.v.b.k.a", 8),
                ]
            } else {
                vec![("f.x.k.a.v.b", 3), ("f.x.k.a_v.v.none", 4)]
            };
            assert_eq!(totals, expected, "families: {families}");
        }
    }
}
