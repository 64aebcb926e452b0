//! [`EnvoyHost`]: sluice-common's [`Host`] over Envoy's dynamic-module callbacks.
//!
//! What it covers: headers, bodies, filter state (the `sluice_*` facts), local replies,
//! resuming, the route cache, the clock, and shared data (one map for the whole Envoy
//! process, compare-and-swap by version as Envoy's proxy-wasm shared data does — in a
//! native module the process is the VM). What it does not cover yet, each answered the
//! way the `Host` contract allows for a host that refuses: metrics (`define_metric` gives
//! `None`: the filter runs uncounted), callouts (`dispatch_*` give `None`: could not
//! start) and the root context's timer. Of Envoy's attributes it reads those the filters
//! read (`request.id`, `response.code`, `response.code_details`) and `plugin_root_id`
//! (the filter name). Enough to run the chain on a plain pool without global limits and
//! measure it; a filter needing the rest stays a wasm filter.

use crate::abi::{Attribute, BodyType, Filter, HeaderType};
use sluice_common::host::{
    GrpcCall, Host, HttpCall, MetricKind, SharedDataError, SharedDataMap, Side,
};
use std::sync::{Mutex, OnceLock};
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
/// reading Sluice's facts finds them whichever build of the filters runs.
fn filter_state_name(name: &str) -> String {
    format!("wasm.{name}")
}

/// The process's shared data.
fn shared() -> &'static Mutex<SharedDataMap> {
    static SHARED: OnceLock<Mutex<SharedDataMap>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(SharedDataMap::default()))
}

/// The host a hook hands a filter: a stream's (`filter` set) or a configuration's.
pub struct EnvoyHost<'a> {
    filter: Option<Filter>,
    config: &'a [u8],
    /// The filter name Envoy configured (`plugin_root_id`).
    root_id: &'a str,
    holding: Holding,
}

impl<'a> EnvoyHost<'a> {
    pub fn stream(filter: Filter, config: &'a [u8], root_id: &'a str, holding: Holding) -> Self {
        Self {
            filter: Some(filter),
            config,
            root_id,
            holding,
        }
    }

    pub fn configuration(config: &'a [u8], root_id: &'a str) -> Self {
        Self {
            filter: None,
            config,
            root_id,
            holding: Holding::default(),
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

    fn header(&self, side: Side, name: &str) -> Option<String> {
        let value = self.filter.as_ref()?.header(header_type(side), name)?;
        String::from_utf8(value).ok()
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
        let map = shared().lock();
        map.unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        let map = shared().lock();
        map.unwrap_or_else(|poisoned| poisoned.into_inner())
            .set(key, value, cas)
    }

    fn dispatch_grpc(&mut self, _call: &GrpcCall) -> Option<u32> {
        None
    }

    fn grpc_response(&self, _size: usize) -> Option<Vec<u8>> {
        None
    }

    fn grpc_status(&self) -> (u32, Option<String>) {
        (
            2,
            Some("callouts are not available in the native build".into()),
        )
    }

    fn dispatch_http(&mut self, _call: &HttpCall) -> Option<u32> {
        None
    }

    fn http_response(&self, _body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        (Vec::new(), Vec::new())
    }

    fn set_tick_period(&mut self, _period: Duration) {
        log::warn!("the native build has no root-context timer; on_tick will not run");
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

    fn set_effective_context(&mut self, _context_id: u32) {
        log::warn!("the native build cannot act on another stream");
    }

    fn clear_route_cache(&mut self) {
        if let Some(f) = &self.filter {
            f.clear_route_cache();
        }
    }

    fn define_metric(&mut self, _kind: MetricKind, _name: &str) -> Option<u32> {
        None
    }

    fn increment_metric(&mut self, _id: u32, _n: u64) {}

    fn record_metric(&mut self, _id: u32, _value: u64) {}

    fn now_unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}
