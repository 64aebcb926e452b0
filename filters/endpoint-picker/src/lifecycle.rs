//! endpoint-picker's lifecycle: the root context scrapes each endpoint's engine metrics on a
//! timer (one worker per interval, by a lease in shared data); a request to a picked pool
//! waits for its body, then gets the endpoints to try, best first, in `x-sluice-endpoint`
//! (Envoy's `override_host` policy sends it there; retries go down the list; health checks
//! and outlier detection still apply), and its decision is published as `sluice_endpoint`.

use crate::config::{PickerConfig, PoolConfig};
use crate::engine::EngineLoad;
use crate::pick::{rank, Candidate};
use crate::prefix;
use serde::{Deserialize, Serialize};
use sluice_common::hash::xorshift64;
use sluice_common::host::{
    add_shared, now_unix_millis, plugin_config, set_text_property, shared_counter, text_property,
    CounterSet, Flow, GaugeSet, Host, HttpCall, Lifecycle, Plugin, Side,
};
use sluice_common::metrics::label;
use sluice_common::{properties, ConfigError, RequestView};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Metric names: pools and endpoints come from the configuration.
const MAX_METRICS: usize = 4096;

/// An engine report as kept in shared data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    waiting: f64,
    running: f64,
    kv: Option<f64>,
    #[serde(default)]
    loras: Vec<String>,
    at_ms: u64,
}

fn report_key(address: &str) -> String {
    format!("ld:{address}")
}
fn in_flight_key(address: &str) -> String {
    format!("if:{address}")
}
fn lease_key(address: &str) -> String {
    format!("sc:{address}")
}

/// The configured filter.
pub struct EndpointPicker {
    config: PickerConfig,
    /// Scrapes in flight: token → (pool, endpoint).
    scrapes: RefCell<HashMap<u32, (usize, usize)>>,
    rng: Cell<u64>,
    counters: RefCell<CounterSet>,
    gauges: RefCell<GaugeSet>,
}

impl EndpointPicker {
    pub fn new(host: &mut dyn Host, config: PickerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        log::info!(
            "endpoint-picker: configured for {} pools, scraping every {} ms",
            config.pools.len(),
            config.scrape_interval_ms
        );
        host.set_tick_period(Duration::from_millis(config.scrape_interval_ms));
        Ok(Self {
            config,
            scrapes: RefCell::new(HashMap::new()),
            rng: Cell::new(host.now_unix_nanos() | 1),
            counters: RefCell::new(CounterSet::new(MAX_METRICS)),
            gauges: RefCell::new(GaugeSet::new(MAX_METRICS)),
        })
    }

    fn random(&self) -> u64 {
        let x = xorshift64(self.rng.get());
        self.rng.set(x);
        x
    }

    fn gauge(&self, host: &mut dyn Host, what: &str, pool: &str, address: &str, value: u64) {
        self.gauges.borrow_mut().set(
            host,
            &format!(
                "sluice.endpoint.{what}.pool.{}.endpoint.{}",
                label(pool),
                label(address)
            ),
            value,
        );
    }

    /// A fresh engine report of `address`, if there is one.
    fn report(&self, host: &dyn Host, address: &str, now: u64) -> Option<Report> {
        let (bytes, _) = host.shared_data(&report_key(address));
        let r: Report = serde_json::from_slice(&bytes?).ok()?;
        (now.saturating_sub(r.at_ms) <= self.config.stale_after_ms).then_some(r)
    }
}

impl Plugin for EndpointPicker {
    const NAME: &'static str = "endpoint-picker";
    type Request = PickedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config = plugin_config::<PickerConfig>(host)?;
        Self::new(host, config)
    }

    fn new_request(self: &Rc<Self>) -> PickedRequest {
        PickedRequest {
            picker: self.clone(),
            phase: Phase::Idle,
        }
    }

    /// Scrape every endpoint whose lease this worker wins.
    fn on_tick(&self, host: &mut dyn Host) {
        let now = now_unix_millis(host);
        // Another worker scraped within most of an interval: not again.
        let min_gap = self.config.scrape_interval_ms * 8 / 10;
        for (p, pool) in self.config.pools.iter().enumerate() {
            let Some(path) = pool.engine.metrics_path() else {
                continue;
            };
            for (e, endpoint) in pool.endpoints.iter().enumerate() {
                let Some(cluster) = &endpoint.metrics_cluster else {
                    continue;
                };
                let (last, cas) = host.shared_data(&lease_key(&endpoint.address));
                let last = last
                    .as_deref()
                    .and_then(|b| b.get(..8))
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                if now.saturating_sub(last) < min_gap {
                    continue;
                }
                let lease = host.set_shared_data(
                    &lease_key(&endpoint.address),
                    &now.to_le_bytes(),
                    Some(cas.unwrap_or(u32::MAX)),
                );
                if lease.is_err() {
                    continue; // another worker took it
                }
                let headers = [
                    (":method", "GET"),
                    (":path", path),
                    (":authority", endpoint.address.as_str()),
                    ("accept", "text/plain"),
                ];
                let call = HttpCall {
                    cluster,
                    headers: &headers,
                    body: None,
                    timeout: Duration::from_millis(self.config.scrape_interval_ms.min(1_000)),
                };
                if let Some(token) = host.dispatch_http(&call) {
                    self.scrapes.borrow_mut().insert(token, (p, e));
                }
            }
        }
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize) {
        let Some((p, e)) = self.scrapes.borrow_mut().remove(&token) else {
            return;
        };
        let Some((pool, endpoint)) = self
            .config
            .pools
            .get(p)
            .and_then(|pool| Some((pool, pool.endpoints.get(e)?)))
        else {
            return;
        };
        let (headers, body) = host.http_response(body_size);
        let ok = headers
            .iter()
            .any(|(k, v)| k == ":status" && v.as_slice() == b"200");
        let load = ok
            .then(|| pool.engine.parse(&String::from_utf8_lossy(&body)))
            .flatten();
        let Some(load) = load else {
            log::debug!("endpoint-picker: no load read from {}", endpoint.address);
            return; // the last report goes stale
        };
        let report = Report {
            waiting: load.waiting,
            running: load.running,
            kv: load.kv_cache,
            loras: load.loras,
            at_ms: now_unix_millis(host),
        };
        if let Ok(bytes) = serde_json::to_vec(&report) {
            let _ = host.set_shared_data(&report_key(&endpoint.address), &bytes, None);
        }
        let (name, address) = (&pool.name, &endpoint.address);
        self.gauge(host, "engine_waiting", name, address, report.waiting as u64);
        self.gauge(host, "engine_running", name, address, report.running as u64);
        if let Some(kv) = report.kv {
            self.gauge(
                host,
                "kv_cache_permille",
                name,
                address,
                (kv * 1000.0) as u64,
            );
        }
    }
}

/// Where a request is.
enum Phase {
    /// Not to a picked pool, or done.
    Idle,
    /// Waiting for the body (its prompt places it).
    AwaitingBody { pool: usize },
    /// Sent to this endpoint first; counted in flight until the stream ends.
    Picked { pool: usize, endpoint: usize },
}

pub struct PickedRequest {
    picker: Rc<EndpointPicker>,
    phase: Phase,
}

impl PickedRequest {
    fn pool(&self, index: usize) -> Option<&PoolConfig> {
        self.picker.config.pools.get(index)
    }

    /// Rank the pool's endpoints for a prompt of `texts`, hand the order to Envoy, publish
    /// the decision.
    fn pick(&mut self, host: &mut dyn Host, p: usize, texts: &[&str]) {
        let picker = self.picker.clone();
        let Some(pool) = picker.config.pools.get(p) else {
            return;
        };
        let now = now_unix_millis(host);
        let pc = &picker.config.prefix;
        let keys = prefix::block_keys(texts, pc.block_bytes, pc.max_blocks);
        let held = prefix::longest_prefix(&*host, &pool.name, &keys, pc.slots);
        // The upstream model name: a LoRA adapter's name when the request is for one.
        let model = text_property(&*host, properties::MODEL).unwrap_or_default();
        let mut fresh = false;
        let candidates: Vec<Candidate> = pool
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut lora_loaded = false;
                let engine = picker.report(&*host, &e.address, now).map(|r| {
                    fresh = true;
                    lora_loaded = !model.is_empty() && r.loras.contains(&model);
                    EngineLoad {
                        waiting: r.waiting,
                        running: r.running,
                        kv_cache: r.kv,
                        loras: r.loras,
                    }
                });
                let prefix = match held {
                    Some((blocks, at)) if usize::from(at) == i && !keys.is_empty() => {
                        blocks as f64 / keys.len() as f64
                    }
                    _ => 0.0,
                };
                Candidate {
                    engine,
                    in_flight: shared_counter(&*host, &in_flight_key(&e.address)),
                    prefix,
                    lora_loaded,
                }
            })
            .collect();
        // An engine that should report but none did lately: Envoy's own balancing decides
        // (its least_request sees what this filter would, without the stale guesses).
        if !fresh && pool.engine.metrics_path().is_some() {
            let record = serde_json::json!({"reason": "fallback", "pool": pool.name});
            set_text_property(host, properties::ENDPOINT, &record.to_string());
            picker.counters.borrow_mut().add(
                host,
                &format!("sluice.endpoint.fallback.pool.{}", label(&pool.name)),
                1,
            );
            return;
        }
        let Some(ranking) = rank(&candidates, &picker.config.weights, picker.random()) else {
            return;
        };
        let Some(first) = ranking.order.first().copied() else {
            return;
        };
        let addresses: Vec<&str> = ranking
            .order
            .iter()
            .filter_map(|i| pool.endpoints.get(*i).map(|e| e.address.as_str()))
            .collect();
        host.set_header(
            Side::Request,
            properties::ENDPOINT_HEADER,
            &addresses.join(","),
        );
        let chosen = addresses.first().copied().unwrap_or_default();
        let in_flight = add_shared(&*host, &in_flight_key(chosen), 1).unwrap_or(0);
        if let Ok(at) = u16::try_from(first) {
            prefix::record(&*host, &pool.name, &keys, at, pc.slots);
        }
        let record = serde_json::json!({
            "endpoint": chosen,
            "reason": ranking.reason.as_str(),
            "load": ranking.load,
            "prefix_blocks": held.filter(|(_, at)| usize::from(*at) == first).map_or(0, |(b, _)| b),
            "in_flight": in_flight,
        });
        set_text_property(host, properties::ENDPOINT, &record.to_string());
        picker.counters.borrow_mut().add(
            host,
            &format!(
                "sluice.endpoint.picks.pool.{}.endpoint.{}.reason.{}",
                label(&pool.name),
                label(chosen),
                ranking.reason.as_str()
            ),
            1,
        );
        picker.gauge(host, "in_flight", &pool.name, chosen, in_flight);
        self.phase = Phase::Picked {
            pool: p,
            endpoint: first,
        };
    }
}

impl Lifecycle for PickedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        // The endpoint is ours to choose: a client's header is never used.
        if host
            .header(Side::Request, properties::ENDPOINT_HEADER)
            .is_some()
        {
            host.remove_header(Side::Request, properties::ENDPOINT_HEADER);
        }
        let Some(pool) = text_property(host, properties::ROUTE)
            .and_then(|r| self.picker.config.pools.iter().position(|p| p.name == r))
        else {
            return Flow::Continue;
        };
        if end_of_stream {
            self.pick(host, pool, &[]);
            return Flow::Continue;
        }
        self.phase = Phase::AwaitingBody { pool };
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::AwaitingBody { pool } = self.phase else {
            return Flow::Continue;
        };
        if !end_of_stream {
            return Flow::Pause;
        }
        self.phase = Phase::Idle;
        let body = host.body(Side::Request, size);
        let path = host.header(Side::Request, ":path").unwrap_or_default();
        let view = sluice_common::api::governed_api(&path)
            .and_then(|api| RequestView::parse(api, &body).ok());
        let texts = view.as_ref().map(RequestView::texts).unwrap_or_default();
        self.pick(host, pool, &texts);
        Flow::Continue
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        let Phase::Picked { pool, endpoint } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let Some(e) = self.pool(pool).and_then(|p| p.endpoints.get(endpoint)) else {
            return;
        };
        let address = e.address.clone();
        let name = self.pool(pool).map(|p| p.name.clone()).unwrap_or_default();
        let left = add_shared(&*host, &in_flight_key(&address), -1).unwrap_or(0);
        self.picker.gauge(host, "in_flight", &name, &address, left);
    }
}

#[cfg(test)]
mod tests;
