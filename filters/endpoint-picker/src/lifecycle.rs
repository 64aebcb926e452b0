//! endpoint-picker's lifecycle: the root context scrapes each endpoint's engine metrics on a
//! timer (one worker per interval, by a lease in shared data); a request to a picked pool
//! waits for its body, then gets the endpoints to try, best first, in `x-sluice-endpoint`
//! (Envoy's `override_host` policy sends it there; retries go down the list; health checks
//! and outlier detection still apply), and its decision is published as `sluice_endpoint`.

use crate::config::PickerConfig;
use crate::engine::EngineLoad;
use crate::flow::{PoolQueue, SharedTicket, Ticket, TicketState, Waiter};
use crate::pick::{rank, Candidate, Reason};
use crate::prefix;
use crate::recent;
use serde::{Deserialize, Serialize};
use sluice_common::api::raw_fields;
use sluice_common::hash::xorshift64;
use sluice_common::host::{
    add_shared, add_shared_below, now_unix_millis, plugin_config, send_error, set_text_property,
    shared_counter, text_property, CounterSet, Flow, GaugeSet, Histogram, Host, HttpCall,
    Lifecycle, Plugin, Side,
};
use sluice_common::metrics::label;
use sluice_common::{properties, ConfigError, ErrorKind, OpenAiError, Priority};
use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Metric names: pools and endpoints come from the configuration.
const MAX_METRICS: usize = 4096;
/// The per-endpoint gauges ([`gauge_name`]).
const GAUGES: [&str; 4] = [
    "in_flight",
    "engine_waiting",
    "engine_running",
    "kv_cache_permille",
];

/// `sluice.endpoint.<gauge>.pool.<pool>.endpoint.<endpoint>`.
fn gauge_name(what: &str, pool: &str, address: &str) -> String {
    format!(
        "sluice.endpoint.{what}.pool.{}.endpoint.{}",
        label(pool),
        label(address)
    )
}
/// How often queued requests are looked at when a pool has flow control.
const RELEASE_PERIOD: Duration = Duration::from_millis(20);

/// An engine report as kept in shared data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    #[serde(flatten)]
    load: EngineLoad,
    at_ms: u64,
    /// Requests on the endpoint from elsewhere (other gateways, direct clients): what the
    /// engine ran and queued beyond the gateway's own in flight when the report was read,
    /// the lower of this reading and the last (`raw_foreign`). A single reading is noisy
    /// (the engine's gauges and the gateway's count are not taken at the same instant);
    /// load from elsewhere persists.
    #[serde(default)]
    foreign: f64,
    #[serde(default)]
    raw_foreign: f64,
}

impl Report {
    /// The report of `load`, read at `at_ms` while the gateway had `in_flight` requests on
    /// the endpoint, after the `last` one.
    fn new(load: EngineLoad, at_ms: u64, in_flight: u64, last: Option<&Report>) -> Self {
        let raw_foreign = (load.running + load.waiting - in_flight as f64).max(0.0);
        let foreign = last.map_or(raw_foreign, |l| raw_foreign.min(l.raw_foreign));
        Self {
            load,
            at_ms,
            foreign,
            raw_foreign,
        }
    }
}

fn report_key(address: &str) -> String {
    format!("ld:{address}")
}
fn in_flight_key(address: &str) -> String {
    format!("if:{address}")
}
/// Requests placed on the endpoint lately ([`recent`]).
fn recent_key(address: &str) -> String {
    format!("rc:{address}")
}
fn lease_key(address: &str) -> String {
    format!("sc:{address}")
}
/// The endpoint's last health probe: 1 byte passed (1) or failed (0), then its time.
fn health_key(address: &str) -> String {
    format!("hc:{address}")
}

/// What a callout to an endpoint asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Metrics,
    Health,
}
/// Interactive requests waiting for pool `pool` on every worker: a worker with only batch
/// requests queued holds them while another has interactive ones waiting.
fn interactive_waiting_key(pool: &str) -> String {
    format!("qi:{pool}")
}

fn config_pools_histograms(host: &mut dyn Host, pools: &[String]) -> Vec<Histogram> {
    pools
        .iter()
        .map(|p| {
            Histogram::define(
                host,
                &format!("sluice.endpoint.queue_wait_ms.pool.{}", label(p)),
            )
        })
        .collect()
}

/// The 429 of a request that found pool `pool` full (`why`: it waited too long, or the
/// queue was full).
fn pool_saturated(pool: &str, why: &str) -> OpenAiError {
    OpenAiError::new(
        ErrorKind::RateLimited,
        format!("Every GPU of pool '{pool}' is busy and {why}; retry shortly."),
    )
    .with_code("pool_saturated")
}

/// The 503 of a queued request whose pool went down while it waited: no endpoint reports.
fn pool_down(pool: &str) -> OpenAiError {
    OpenAiError::new(
        ErrorKind::Unavailable,
        format!("No GPU of pool '{pool}' is reachable; retry later."),
    )
    .with_code("pool_unavailable")
}

/// What the shared data said of an endpoint: its health probe passed (or none lately),
/// and its last engine report (fresh or not).
struct EndpointView {
    healthy: bool,
    report: Option<Report>,
}

impl EndpointView {
    /// Its report, if it is healthy and the report is no older than `stale_ms` at `now`.
    fn fresh(&self, now: u64, stale_ms: u64) -> Option<&Report> {
        self.report
            .as_ref()
            .filter(|r| self.healthy && now.saturating_sub(r.at_ms) <= stale_ms)
    }
}

/// The little-endian `u64` at `at` in `bytes` (a time kept in shared data), or 0.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// How long a worker keeps its view of the endpoints before reading shared data again.
const VIEW_TTL_MS: u64 = 20;

/// The part of a prompt's indexed blocks held nowhere from which it makes a new home
/// (`Weights::spread` applies).
const NEW_HOME_FRESH: f64 = 0.5;

/// The configured filter.
pub struct EndpointPicker {
    config: PickerConfig,
    /// Scrapes in flight: token → (pool, endpoint).
    scrapes: RefCell<HashMap<u32, (usize, usize, Probe)>>,
    rng: Cell<u64>,
    counters: RefCell<CounterSet>,
    gauges: RefCell<GaugeSet>,
    /// Requests waiting for capacity, per pool (this worker's).
    queues: RefCell<Vec<PoolQueue>>,
    /// When this worker last scraped (the tick is faster than the scrape with flow control).
    last_scrape_ms: Cell<u64>,
    /// Each pool's endpoints' health and engine reports as this worker last read them from
    /// shared data, and when: they change once a scrape interval, and reading them for
    /// every request cost two host calls and a JSON parse per endpoint.
    views: RefCell<Vec<(u64, Vec<EndpointView>)>>,
    /// `sluice.endpoint.queue_wait_ms.pool.<pool>`, per pool.
    queue_wait: Vec<Histogram>,
    /// Each pool's endpoints' shared-data and metric names, made once (not for every
    /// request).
    names: Vec<Vec<EndpointNames>>,
}

/// The names a request uses for one endpoint.
struct EndpointNames {
    /// Its in-flight count in shared data.
    in_flight: String,
    /// Its recent placements in shared data.
    recent: String,
    /// `sluice.endpoint.picks.pool.<pool>.endpoint.<endpoint>.reason.<reason>`, by reason.
    picks: [String; 4],
}

impl EndpointNames {
    fn new(pool: &str, address: &str) -> Self {
        let pick = |r: Reason| {
            format!(
                "sluice.endpoint.picks.pool.{}.endpoint.{}.reason.{}",
                label(pool),
                label(address),
                r.as_str()
            )
        };
        Self {
            in_flight: in_flight_key(address),
            recent: recent_key(address),
            picks: [
                pick(Reason::Load),
                pick(Reason::Prefix),
                pick(Reason::Lora),
                pick(Reason::Spread),
            ],
        }
    }

    fn picks(&self, reason: Reason) -> &str {
        let i = match reason {
            Reason::Load => 0,
            Reason::Prefix => 1,
            Reason::Lora => 2,
            Reason::Spread => 3,
        };
        self.picks.get(i).map_or("", String::as_str)
    }
}

/// What the picker decided for a request, published as `sluice_endpoint` (the access log's
/// `endpoint`).
#[derive(Serialize)]
struct Decision<'a> {
    endpoint: &'a str,
    reason: &'a str,
    load: f64,
    prefix_blocks: usize,
    in_flight: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_ms: Option<u64>,
}

/// The decision record of a request no endpoint was chosen for: Envoy placed it
/// (`fallback`), or its wait was refused (`queue_timeout`, `pool_down`).
#[derive(Serialize)]
struct PoolRecord<'a> {
    reason: &'a str,
    pool: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_ms: Option<u64>,
}

impl<'a> PoolRecord<'a> {
    fn new(reason: &'a str, pool: &'a str, queued_ms: Option<u64>) -> Self {
        Self {
            reason,
            pool,
            queued_ms,
        }
    }

    fn publish(&self, host: &mut dyn Host) {
        if let Ok(record) = serde_json::to_string(self) {
            set_text_property(host, properties::ENDPOINT, &record);
        }
    }
}

impl EndpointPicker {
    pub fn new(host: &mut dyn Host, config: PickerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        log::info!(
            "endpoint-picker: configured for {} pools, scraping every {} ms",
            config.pools.len(),
            config.scrape_interval_ms
        );
        let pools: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
        let scrape = Duration::from_millis(config.scrape_interval_ms);
        let flow = config.pools.iter().any(|p| config.flow_limit(p).is_some());
        host.set_tick_period(if flow {
            RELEASE_PERIOD.min(scrape)
        } else {
            scrape
        });
        let picker = Self {
            queues: RefCell::new(config.pools.iter().map(|_| PoolQueue::default()).collect()),
            scrapes: RefCell::new(HashMap::new()),
            rng: Cell::new(host.now_unix_nanos() | 1),
            counters: RefCell::new(CounterSet::new(MAX_METRICS)),
            gauges: RefCell::new(GaugeSet::new(MAX_METRICS)),
            last_scrape_ms: Cell::new(0),
            views: RefCell::new(Vec::new()),
            queue_wait: config_pools_histograms(host, &pools),
            names: config
                .pools
                .iter()
                .map(|p| {
                    p.endpoints
                        .iter()
                        .map(|e| EndpointNames::new(&p.name, &e.address))
                        .collect()
                })
                .collect(),
            config,
        };
        picker.declare_metrics(host);
        Ok(picker)
    }

    /// Every metric the picker names comes from its configuration (pools, endpoints,
    /// reasons, priorities): define them all now (counting nothing), as a host may allow it only while
    /// the filter is configured (the native build: Envoy freezes a module's metrics then).
    fn declare_metrics(&self, host: &mut dyn Host) {
        let mut counters = self.counters.borrow_mut();
        let mut gauges = self.gauges.borrow_mut();
        for (pool, names) in self.config.pools.iter().zip(&self.names) {
            let pool_label = label(&pool.name);
            for what in ["fallback", "queue_timeouts", "queue_full"] {
                counters.define(host, &format!("sluice.endpoint.{what}.pool.{pool_label}"));
            }
            for priority in [Priority::Interactive, Priority::Batch] {
                let name = format!(
                    "sluice.endpoint.queued.pool.{pool_label}.priority.{}",
                    priority.as_str()
                );
                counters.define(host, &name);
            }
            for (endpoint, names) in pool.endpoints.iter().zip(names) {
                for pick in &names.picks {
                    counters.define(host, pick);
                }
                for what in GAUGES {
                    gauges.define(host, &gauge_name(what, &pool.name, &endpoint.address));
                }
            }
        }
    }

    /// A queued request is no longer waiting: the shared interactive count drops.
    fn left_queue(&self, host: &dyn Host, pool: &str, ticket: &SharedTicket) {
        if ticket.borrow().priority == Priority::Interactive {
            let _ = add_shared(host, &interactive_waiting_key(pool), -1);
        }
    }

    fn endpoint_names(&self, p: usize, e: usize) -> Option<&EndpointNames> {
        self.names.get(p).and_then(|n| n.get(e))
    }

    /// Requests this gateway has in flight to endpoint `e` of pool `p` (all workers).
    fn in_flight(&self, host: &dyn Host, p: usize, e: usize) -> u64 {
        self.endpoint_names(p, e)
            .map_or(0, |n| shared_counter(host, &n.in_flight))
    }

    /// Count a request in (`delta` 1) or out (-1) of endpoint `e` of pool `p`.
    fn add_in_flight(&self, host: &dyn Host, p: usize, e: usize, delta: i64) -> Option<u64> {
        self.endpoint_names(p, e)
            .and_then(|n| add_shared(host, &n.in_flight, delta))
    }

    /// Count a request in to the first endpoint of `order` (pool `p`'s ranking) with room
    /// under the pool's flow limit, by compare-and-swap: two workers placing at once cannot
    /// both take an endpoint's last slot, and a prefix's home that is full passes the
    /// request on. Without a flow limit, or without room anywhere (workers took the last
    /// slots since `saturated` looked), the first. The endpoint and its count.
    fn reserve(&self, host: &dyn Host, p: usize, order: &[usize]) -> Option<(usize, u64)> {
        let first = *order.first()?;
        if let Some(max) = self
            .config
            .pools
            .get(p)
            .and_then(|pool| self.config.flow_limit(pool))
        {
            for &e in order {
                let taken = self
                    .endpoint_names(p, e)
                    .and_then(|n| add_shared_below(host, &n.in_flight, max));
                if let Some(n) = taken {
                    return Some((e, n));
                }
            }
        }
        Some((first, self.add_in_flight(host, p, first, 1).unwrap_or(0)))
    }

    fn count(&self, host: &mut dyn Host, name: &str) {
        self.counters.borrow_mut().add(host, name, 1);
    }

    /// Whether pool `p` has no room for a request at `priority`: every endpoint has as many
    /// requests in flight from this gateway as the pool's flow limit (batch requests leave
    /// `batch_headroom` slots per endpoint to interactive ones). Pools without a flow limit
    /// are never full.
    fn saturated(&self, host: &dyn Host, p: usize, priority: Priority) -> bool {
        let Some(pool) = self.config.pools.get(p) else {
            return false;
        };
        let Some(mut max) = self.config.flow_limit(pool) else {
            return false;
        };
        if priority == Priority::Batch {
            max = max.saturating_sub(self.config.flow.batch_headroom).max(1);
        }
        // The gateway's own count, exact and immediate; the engines' reports lag by up to
        // a scrape interval and would hold requests for slots already free.
        (0..pool.endpoints.len()).all(|e| self.in_flight(host, p, e) >= max)
    }

    /// Rank pool `p`'s endpoints for a prompt with prefix `keys` asking for `model` (the
    /// upstream model name, a LoRA adapter's when the request is for one; `None`: read it
    /// from the request's property if some endpoint reports adapters), hand
    /// the order to Envoy, count the first in flight, publish the decision. The endpoint
    /// chosen, or `None` when Envoy's balancer decides (no fresh report).
    fn place(
        &self,
        host: &mut dyn Host,
        p: usize,
        keys: &[u64],
        model: Option<&str>,
        now: u64,
        queued_ms: Option<u64>,
    ) -> Option<usize> {
        let pool = self.config.pools.get(p)?;
        let pc = &self.config.prefix;
        let reports = pool.engine.metrics_path().is_some();
        let view = self.view(&*host, p, now);
        let stale = self.config.stale_after_ms;
        // An engine that should report but none did lately: Envoy's own balancing decides
        // (its least_request sees what this filter would, without the stale guesses).
        if reports && view.iter().all(|v| v.fresh(now, stale).is_none()) {
            drop(view);
            // A released request says how long it waited, whoever places it.
            PoolRecord::new("fallback", &pool.name, queued_ms).publish(host);
            self.count(
                host,
                &format!("sluice.endpoint.fallback.pool.{}", label(&pool.name)),
            );
            return None;
        }
        // The model matters only where an endpoint reports loaded adapters: no property
        // read (a host call) otherwise.
        let adapters = view.iter().any(|v| {
            v.fresh(now, stale)
                .is_some_and(|r| !r.load.loras.is_empty())
        });
        let read;
        let model = match model {
            Some(m) => m,
            None if adapters => {
                read = text_property(&*host, properties::MODEL).unwrap_or_default();
                read.as_str()
            }
            None => "",
        };
        let held = prefix::longest_prefix(&*host, &pool.name, keys, pc.slots);
        let spread = self.new_home_spread(&*host, p, keys, held, now);
        // The active priority: the highest (lowest number) with an endpoint that reports;
        // without metrics, Envoy's health checks alone know, and the pool's first.
        let active = pool
            .endpoints
            .iter()
            .zip(view.iter())
            .filter(|(_, v)| {
                if reports {
                    v.fresh(now, stale).is_some()
                } else {
                    v.healthy
                }
            })
            .map(|(e, _)| e.priority)
            .min()
            .unwrap_or(0);
        let candidates: Vec<Candidate> = pool
            .endpoints
            .iter()
            .zip(view.iter())
            .enumerate()
            .map(|(i, (e, v))| {
                let report = v.fresh(now, stale);
                let engine = report.map(|r| r.load.clone());
                let lora_loaded = engine
                    .as_ref()
                    .is_some_and(|l| !model.is_empty() && l.loras.iter().any(|x| x == model));
                // About four bytes of prompt text a token.
                let prefix_tokens = match held {
                    Some((blocks, at)) if usize::from(at) == i => {
                        (blocks * pc.block_bytes) as f64 / 4.0
                    }
                    _ => 0.0,
                };
                Candidate {
                    silent: !v.healthy || (reports && engine.is_none()),
                    standby: e.priority > active,
                    engine,
                    in_flight: self.in_flight(&*host, p, i),
                    foreign: report.map_or(0.0, |r| r.foreign),
                    prefix_tokens,
                    lora_loaded,
                    recent: spread.get(i).copied().unwrap_or(0.0),
                    slots: pool.max_in_flight,
                }
            })
            .collect();
        drop(view);
        let ranking = rank(&candidates, &self.config.weights, self.random())?;
        let (first, in_flight) = self.reserve(&*host, p, &ranking.order)?;
        // The ranking's first was full: the next with room, by load.
        let (reason, load) = if ranking.order.first() == Some(&first) {
            (ranking.reason, ranking.load)
        } else {
            let load = candidates
                .get(first)
                .map_or(0.0, |c| c.load(&self.config.weights));
            (Reason::Load, load)
        };
        // The endpoint counted in first, then the rest in rank order (Envoy's fallbacks).
        let addresses: Vec<&str> = std::iter::once(first)
            .chain(ranking.order.iter().copied().filter(|e| *e != first))
            .filter_map(|i| pool.endpoints.get(i).map(|e| e.address.as_str()))
            .collect();
        host.set_header(
            Side::Request,
            properties::ENDPOINT_HEADER,
            &addresses.join(","),
        );
        let chosen = addresses.first().copied().unwrap_or_default();
        if let Some(names) = self.endpoint_names(p, first) {
            recent::add_one(&*host, &names.recent, now);
        }
        if let Ok(at) = u16::try_from(first) {
            // The blocks the index already names need no write: this endpoint's, or those of
            // a prefix's home that still reports (a request that spilled leaves the home
            // where the shared prefix stays cached, so the tenant's next requests go back
            // there; only its own new blocks name the endpoint it spilled to).
            let home_alive = |e: u16| {
                e == at
                    || candidates
                        .get(usize::from(e))
                        .is_some_and(|c| !c.silent && !c.standby)
            };
            let known = held
                .filter(|(_, e)| home_alive(*e))
                .map_or(0, |(blocks, _)| blocks);
            prefix::record(
                &*host,
                &pool.name,
                keys.get(known..).unwrap_or(&[]),
                at,
                pc.slots,
            );
        }
        let decision = Decision {
            endpoint: chosen,
            reason: reason.as_str(),
            load,
            prefix_blocks: held
                .filter(|(_, at)| usize::from(*at) == first)
                .map_or(0, |(b, _)| b),
            in_flight,
            queued_ms,
        };
        if let Ok(record) = serde_json::to_string(&decision) {
            set_text_property(host, properties::ENDPOINT, &record);
        }
        if let Some(names) = self.endpoint_names(p, first) {
            self.count(host, names.picks(reason));
        }
        Some(first)
    }

    /// Each endpoint of pool `p`'s `Candidate::recent` for a prompt with prefix `keys`, of
    /// which `held` is indexed. A prompt mostly held nowhere makes a new home: where recent
    /// traffic was lightest, weighed by the part not held (a new tenant's prompt sharing
    /// only a common opening line is nearly all new). A prompt mostly held (a conversation's
    /// next turn) stays with its prefix unless that endpoint is overloaded: no spread (and
    /// no shared-data reads).
    fn new_home_spread(
        &self,
        host: &dyn Host,
        p: usize,
        keys: &[u64],
        held: Option<(usize, u16)>,
        now: u64,
    ) -> Vec<f64> {
        if keys.is_empty() {
            return Vec::new();
        }
        let fresh = held.map_or(1.0, |(blocks, _)| 1.0 - blocks as f64 / keys.len() as f64);
        if fresh < NEW_HOME_FRESH {
            return Vec::new();
        }
        let counts: Vec<f64> = self
            .names
            .get(p)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|names| recent::read(host, &names.recent, now))
            .collect();
        recent::spread(&counts)
            .into_iter()
            .map(|r| r * fresh)
            .collect()
    }

    /// Refuse queued requests that waited `max_wait_ms`, then release the oldest (fairly)
    /// while pool `p` has room.
    fn release(&self, host: &mut dyn Host, p: usize, now: u64) {
        let Some(pool) = self.config.pools.get(p) else {
            return;
        };
        let max_wait = self.config.flow.max_wait_ms;
        let expired = match self.queues.borrow_mut().get_mut(p) {
            Some(q) if !q.is_empty() => {
                q.take_expired(|t| now.saturating_sub(t.since_ms) >= max_wait)
            }
            _ => return,
        };
        // A pool with metrics none of whose endpoints reports is down, not busy: 503.
        let stale = self.config.stale_after_ms;
        let down = !expired.is_empty()
            && pool.engine.metrics_path().is_some()
            && self
                .view(&*host, p, now)
                .iter()
                .all(|v| v.fresh(now, stale).is_none());
        for w in expired {
            w.ticket.borrow_mut().state = TicketState::Refused;
            host.set_effective_context(w.context_id);
            let reason = if down { "pool_down" } else { "queue_timeout" };
            PoolRecord::new(reason, &pool.name, None).publish(host);
            let error = if down {
                pool_down(&pool.name)
            } else {
                pool_saturated(
                    &pool.name,
                    &format!("the request waited {} s", max_wait / 1000),
                )
            };
            let retry = max_wait.div_ceil(1000).max(1).to_string();
            send_error(host, &error, &[("retry-after", &retry)]);
            self.left_queue(&*host, &pool.name, &w.ticket);
            self.count(
                host,
                &format!("sluice.endpoint.queue_timeouts.pool.{}", label(&pool.name)),
            );
        }
        loop {
            let Some(next) = self
                .queues
                .borrow()
                .get(p)
                .and_then(PoolQueue::next_priority)
            else {
                break;
            };
            if self.saturated(&*host, p, next) {
                break;
            }
            // Batch never delays interactive, on any worker.
            if next == Priority::Batch
                && shared_counter(&*host, &interactive_waiting_key(&pool.name)) > 0
            {
                break;
            }
            let Some(w) = self.queues.borrow_mut().get_mut(p).and_then(PoolQueue::pop) else {
                break;
            };
            if w.ticket.borrow().state != TicketState::Waiting {
                continue;
            }
            host.set_effective_context(w.context_id);
            let (keys, model, since) = {
                let t = w.ticket.borrow();
                (t.keys.clone(), t.model.clone(), t.since_ms)
            };
            let waited = now.saturating_sub(since);
            let endpoint = self.place(host, p, &keys, Some(&model), now, Some(waited));
            w.ticket.borrow_mut().state = TicketState::Released(endpoint);
            self.left_queue(&*host, &pool.name, &w.ticket);
            if let Some(h) = self.queue_wait.get(p) {
                h.record(host, waited);
            }
            host.resume(Side::Request);
        }
    }

    fn random(&self) -> u64 {
        let x = xorshift64(self.rng.get());
        self.rng.set(x);
        x
    }

    fn gauge(&self, host: &mut dyn Host, what: &str, pool: &str, address: &str, value: u64) {
        self.gauges
            .borrow_mut()
            .set(host, &gauge_name(what, pool, address), value);
    }

    /// Pool `p`'s endpoints as shared data says, read at most every [`VIEW_TTL_MS`].
    fn view(&self, host: &dyn Host, p: usize, now: u64) -> Ref<'_, [EndpointView]> {
        {
            let mut views = self.views.borrow_mut();
            if views.len() <= p {
                views.resize_with(p + 1, || (0, Vec::new()));
            }
            if let Some((read_ms, endpoints)) = views.get_mut(p) {
                if now.saturating_sub(*read_ms) >= VIEW_TTL_MS || endpoints.is_empty() {
                    let pool = self
                        .config
                        .pools
                        .get(p)
                        .map_or(&[][..], |x| &x.endpoints[..]);
                    *endpoints = pool
                        .iter()
                        .map(|e| self.read(host, &e.address, now))
                        .collect();
                    *read_ms = now;
                }
            }
        }
        Ref::map(self.views.borrow(), |v| {
            v.get(p).map_or(&[][..], |(_, endpoints)| &endpoints[..])
        })
    }

    /// What shared data says of `address` now.
    fn read(&self, host: &dyn Host, address: &str, now: u64) -> EndpointView {
        // The last health probe: passed, or failed longer ago than a report stays fresh.
        let healthy = host.shared_data(&health_key(address)).0.is_none_or(|b| {
            b.first() == Some(&1) || now.saturating_sub(u64_at(&b, 1)) > self.config.stale_after_ms
        });
        let report = host
            .shared_data(&report_key(address))
            .0
            .and_then(|b| serde_json::from_slice(&b).ok());
        EndpointView { healthy, report }
    }

    /// Whether `address` passed its last health probe (or has not been probed lately).
    #[cfg(test)]
    fn healthy(&self, host: &dyn Host, address: &str, now: u64) -> bool {
        self.read(host, address, now).healthy
    }

    /// A fresh engine report of a healthy `address`, if there is one.
    #[cfg(test)]
    fn report(&self, host: &dyn Host, address: &str, now: u64) -> Option<Report> {
        let view = self.read(host, address, now);
        view.fresh(now, self.config.stale_after_ms).cloned()
    }
}

impl Plugin for EndpointPicker {
    const NAME: &'static str = "endpoint-picker";
    type Request = PickedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config = plugin_config::<PickerConfig>(host)?;
        Self::new(host, config)
    }

    fn new_request(self: &Rc<Self>, context_id: u32) -> PickedRequest {
        PickedRequest {
            picker: self.clone(),
            context_id,
            phase: Phase::Idle,
        }
    }

    fn holds_requests(&self) -> bool {
        let config = &self.config;
        config.pools.iter().any(|p| config.flow_limit(p).is_some())
    }

    /// Release this worker's queued requests (capacity freed on another worker, waits
    /// past their bound).
    fn on_worker_tick(&self, host: &mut dyn Host) {
        let now = now_unix_millis(host);
        for p in 0..self.config.pools.len() {
            self.release(host, p, now);
        }
    }

    /// Scrape, every interval, the endpoints whose lease this root context wins.
    fn on_tick(&self, host: &mut dyn Host) {
        let now = now_unix_millis(host);
        if now.saturating_sub(self.last_scrape_ms.get()) < self.config.scrape_interval_ms {
            return;
        }
        self.last_scrape_ms.set(now);
        // The in-flight gauges once an interval (not at every pick and every end: two host
        // calls a request for a series scraped every few seconds).
        for (p, pool) in self.config.pools.iter().enumerate() {
            for (i, e) in pool.endpoints.iter().enumerate() {
                let n = self.in_flight(&*host, p, i);
                self.gauge(host, "in_flight", &pool.name, &e.address, n);
            }
        }
        // Another worker scraped within most of an interval: not again.
        let min_gap = self.config.scrape_interval_ms * 8 / 10;
        for (p, pool) in self.config.pools.iter().enumerate() {
            for (e, endpoint) in pool.endpoints.iter().enumerate() {
                let Some(cluster) = &endpoint.metrics_cluster else {
                    continue;
                };
                let (last, cas) = host.shared_data(&lease_key(&endpoint.address));
                let last = last.as_deref().map_or(0, |b| u64_at(b, 0));
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
                // Envoy's override_host policy sends to a named host whatever its health:
                // the picker probes the engine's health path itself (as Envoy's health
                // check does) and ranks an endpoint that fails it with the silent ones.
                let probes = [
                    pool.engine.metrics_path().map(|m| (m, Probe::Metrics)),
                    Some((pool.engine.health_path(), Probe::Health)),
                ];
                for (path, probe) in probes.into_iter().flatten() {
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
                        self.scrapes.borrow_mut().insert(token, (p, e, probe));
                    }
                }
            }
        }
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize) {
        let Some((p, e, probe)) = self.scrapes.borrow_mut().remove(&token) else {
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
        if probe == Probe::Health {
            let mut record = vec![u8::from(ok)];
            record.extend_from_slice(&now_unix_millis(host).to_le_bytes());
            let _ = host.set_shared_data(&health_key(&endpoint.address), &record, None);
            if !ok {
                log::debug!(
                    "endpoint-picker: {} failed its health probe",
                    endpoint.address
                );
            }
            return;
        }
        let load = ok
            .then(|| pool.engine.parse(&String::from_utf8_lossy(&body)))
            .flatten();
        let Some(load) = load else {
            log::debug!("endpoint-picker: no load read from {}", endpoint.address);
            return; // the last report goes stale
        };
        let key = report_key(&endpoint.address);
        let last = host
            .shared_data(&key)
            .0
            .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
        let report = Report::new(
            load,
            now_unix_millis(host),
            self.in_flight(&*host, p, e),
            last.as_ref(),
        );
        if let Ok(bytes) = serde_json::to_vec(&report) {
            let _ = host.set_shared_data(&key, &bytes, None);
        }
        let (name, address) = (&pool.name, &endpoint.address);
        let load = &report.load;
        self.gauge(host, "engine_waiting", name, address, load.waiting as u64);
        self.gauge(host, "engine_running", name, address, load.running as u64);
        if let Some(kv) = load.kv_cache {
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
    /// Waiting in the gateway for capacity (the root context releases it).
    Queued { pool: usize, ticket: SharedTicket },
}

pub struct PickedRequest {
    picker: Rc<EndpointPicker>,
    context_id: u32,
    phase: Phase,
}

impl PickedRequest {
    /// Place the request now, or queue it when its pool is full (or others wait already:
    /// no overtaking).
    fn pick(&mut self, host: &mut dyn Host, p: usize, prompt: &[&[u8]]) -> Flow {
        let picker = self.picker.clone();
        let pc = &picker.config.prefix;
        let keys = prefix::block_keys(prompt, pc.block_bytes, pc.max_blocks);
        let now = now_unix_millis(host);
        // The priority matters only where flow control queues: no property read (a host
        // call) on the hot path of a pool without it.
        let queues = picker
            .config
            .pools
            .get(p)
            .is_some_and(|x| picker.config.flow_limit(x).is_some());
        let priority = if queues {
            text_property(&*host, properties::PRIORITY)
                .and_then(|p| Priority::parse(&p))
                .unwrap_or_default()
        } else {
            Priority::default()
        };
        // No overtaking within a priority; an interactive request passes waiting batch ones.
        let (waiting, ahead) = picker.queues.borrow().get(p).map_or((0, 0), |q| {
            let ahead = match priority {
                Priority::Interactive => q.waiting(Priority::Interactive),
                Priority::Batch => q.len(),
            };
            (q.len(), ahead)
        });
        if ahead > 0 || picker.saturated(&*host, p, priority) {
            let pool = picker.config.pools.get(p).map_or("", |x| x.name.as_str());
            if waiting >= picker.config.flow.max_queue {
                let error = pool_saturated(pool, "its queue is full");
                send_error(host, &error, &[("retry-after", "1")]);
                picker.count(
                    host,
                    &format!("sluice.endpoint.queue_full.pool.{}", label(pool)),
                );
                return Flow::Pause;
            }
            let tenant = text_property(&*host, properties::TENANT).unwrap_or_default();
            let model = text_property(&*host, properties::MODEL).unwrap_or_default();
            let ticket = Rc::new(RefCell::new(Ticket {
                state: TicketState::Waiting,
                keys,
                model,
                since_ms: now,
                priority,
            }));
            if priority == Priority::Interactive {
                let _ = add_shared(&*host, &interactive_waiting_key(pool), 1);
            }
            if let Some(q) = picker.queues.borrow_mut().get_mut(p) {
                q.push(
                    &tenant,
                    priority,
                    Waiter {
                        context_id: self.context_id,
                        ticket: ticket.clone(),
                    },
                );
            }
            picker.count(
                host,
                &format!(
                    "sluice.endpoint.queued.pool.{}.priority.{}",
                    label(pool),
                    priority.as_str()
                ),
            );
            self.phase = Phase::Queued { pool: p, ticket };
            return Flow::Pause;
        }
        if let Some(endpoint) = picker.place(host, p, &keys, None, now, None) {
            self.phase = Phase::Picked { pool: p, endpoint };
        }
        Flow::Continue
    }
}

impl Lifecycle for PickedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        // The endpoint is ours to choose: a client's header is never used (removed
        // unread: one host call, not two).
        host.remove_header(Side::Request, properties::ENDPOINT_HEADER);
        let Some(pool) = text_property(host, properties::ROUTE)
            .and_then(|r| self.picker.config.pools.iter().position(|p| p.name == r))
        else {
            return Flow::Continue;
        };
        if end_of_stream {
            return self.pick(host, pool, &[]);
        }
        self.phase = Phase::AwaitingBody { pool };
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        match self.phase {
            Phase::AwaitingBody { .. } => {}
            // Released by the root context, or still waiting with the headers.
            Phase::Queued { .. } => return Flow::Pause,
            _ => return Flow::Continue,
        }
        let Phase::AwaitingBody { pool } = self.phase else {
            return Flow::Continue;
        };
        if !end_of_stream {
            return Flow::Pause;
        }
        self.phase = Phase::Idle;
        let body = host.body(Side::Request, size);
        let path = host.header(Side::Request, ":path").unwrap_or_default();
        // Where the prompt is, not what it says: its fields' JSON as sent (a scan that
        // builds no tree; the filters before this one checked the body).
        let prompt = sluice_common::api::governed_api(&path)
            .and_then(|api| raw_fields(&body, api.prompt_fields()))
            .unwrap_or_default();
        self.pick(host, pool, &prompt)
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        let (pool, endpoint) = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Picked { pool, endpoint } => (pool, endpoint),
            Phase::Queued { pool, ticket } => {
                let mut t = ticket.borrow_mut();
                match t.state {
                    TicketState::Released(Some(endpoint)) => (pool, endpoint),
                    TicketState::Waiting => {
                        // The client left while it waited: never released.
                        t.state = TicketState::Gone;
                        drop(t);
                        if let Some(name) =
                            self.picker.config.pools.get(pool).map(|p| p.name.clone())
                        {
                            self.picker.left_queue(&*host, &name, &ticket);
                        }
                        return;
                    }
                    _ => return,
                }
            }
            _ => return,
        };
        let _ = self.picker.add_in_flight(&*host, pool, endpoint, -1);
        // A slot just freed: whoever waits for it on this worker goes now, not at the next
        // tick (up to 20 ms later).
        let waiting = self
            .picker
            .queues
            .borrow()
            .get(pool)
            .is_some_and(|q| !q.is_empty());
        if waiting {
            let now = now_unix_millis(host);
            self.picker.release(host, pool, now);
        }
    }
}

#[cfg(test)]
mod tests;
