//! response-cache's lifecycle: a cacheable request is held until its body is read; a hit
//! is answered here (the stored response, or its replay as the API's stream); a miss goes
//! on, and its answer is copied as it passes (nothing held back) and stored once it is
//! complete and successful.

use crate::key::{
    early_bypass, hex, plan, semantic_index, semantic_text, Bypass, ClientControl, Key, Plan,
    RequestFacts, Sampling,
};
use crate::store::{self, Bounds, Entry};
use crate::{CacheConfig, Settings, CACHE_HEADER};
use serde_json::{json, Value};
use sluice_common::api::governed_api;
use sluice_common::host::{
    header_values, now_unix_millis, plugin_config, request_line, text_property, CounterSet, Flow,
    GaugeSet, Handoff, Host, HttpCall, Lifecycle, Plugin, Side,
};
use sluice_common::replay::{replay_stream, StreamAssembler};
use sluice_common::sse::SseParser;
use sluice_common::{properties, Api, ConfigError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Counter names: outcome × model, bounded.
const MAX_COUNTERS: usize = 1024;
/// The tiers, as metrics and `sluice_cache` name them.
const LOCAL: &str = "local";
const SHARED: &str = "shared";
const SEMANTIC: &str = "semantic";
/// Entries waiting to be sent to the shared tier, per worker; past it the oldest is dropped
/// (the shared tier is a cache: a lost store costs one later miss).
const MAX_QUEUED_PUTS: usize = 256;
/// How often a worker sends what it stored to the shared tier.
const PUT_PERIOD: Duration = Duration::from_millis(20);
/// The `:authority` of calls to sluice-cache.
const AUTHORITY: &str = "sluice-cache";

const JSON: (&str, &str) = ("content-type", "application/json");

/// An HTTP callout to sluice-cache or the embedding pool.
struct Callout<'a> {
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    extra: &'a [(&'a str, &'a str)],
    body: Option<&'a [u8]>,
    timeout_ms: u64,
}

impl Callout<'_> {
    /// Start it; its token, or `None` when it could not start (no such cluster).
    fn send(&self, host: &mut dyn Host, cluster: &str) -> Option<u32> {
        let mut headers = vec![
            (":method", self.method),
            (":path", self.path),
            (":authority", self.authority),
        ];
        headers.extend_from_slice(self.extra);
        host.dispatch_http(&HttpCall {
            cluster,
            headers: &headers,
            body: self.body,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

/// A write on its way to sluice-cache: an entry (`PUT`, with its TTL) or a prompt's
/// vector for the semantic index (`POST`).
#[derive(Debug)]
struct SharedPut {
    method: &'static str,
    path: String,
    ttl_ms: Option<String>,
    value: Vec<u8>,
    tier: &'static str,
    model: String,
}

/// The configured filter.
pub struct ResponseCache {
    settings: Settings,
    /// `sluice.cache.<outcome>.tier.<tier>.model.<m>`
    counters: RefCell<CounterSet>,
    /// `sluice.cache.bytes.tier.local`
    gauges: RefCell<GaugeSet>,
    /// Stored entries not yet sent to the shared tier (sent from the root context, whose
    /// callouts outlive any stream), and the calls under way (token → model).
    puts: Handoff<SharedPut>,
    puts_in_flight: RefCell<HashMap<u32, (&'static str, String)>>,
}

/// The outcomes counted as `sluice.cache.<outcome>` families, by tier and model; the
/// labels' keys and the tags Envoy's stats configuration exports them as
/// (`envoy/envoy.yaml.j2`'s `stats_tags`).
const OUTCOMES: [&str; 6] = ["hit", "miss", "bypass", "error", "stored", "evicted"];
const OUTCOME_LABELS: [(&str, &str); 2] = [("tier", "cache_tier"), ("model", "cache_model")];
/// The local tier's size in bytes (a gauge).
const LOCAL_BYTES: &str = "sluice.cache.bytes.tier.local";
/// Responses not stored, by reason.
const NOT_STORED: &str = "sluice.cache.not_stored";
const NOT_STORED_LABELS: [(&str, &str); 3] = [
    ("reason", "cache_reason"),
    ("tier", "cache_tier"),
    ("model", "cache_model"),
];

impl ResponseCache {
    pub fn new(host: &mut dyn Host, settings: Settings) -> Self {
        Self {
            settings,
            counters: RefCell::new(CounterSet::new(MAX_COUNTERS)),
            gauges: RefCell::new(GaugeSet::new(4)),
            puts: Handoff::new(host, "puts", MAX_QUEUED_PUTS),
            puts_in_flight: RefCell::new(HashMap::new()),
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            slots: self.settings.local.slots,
            max_bytes: self.settings.local.max_bytes as u64,
        }
    }

    /// Count an outcome (one of [`OUTCOMES`]).
    fn count(&self, host: &mut dyn Host, outcome: &str, tier: &str, model: &str, n: u64) {
        self.counters.borrow_mut().add_labeled(
            host,
            &["sluice.cache", outcome],
            &[(OUTCOME_LABELS[0].0, tier), (OUTCOME_LABELS[1].0, model)],
            n,
        );
    }

    fn queue_put(&self, put: SharedPut) {
        self.puts.push(put);
    }
}

impl Plugin for ResponseCache {
    const NAME: &'static str = "response-cache";
    type Request = CachedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let settings = Settings::new(plugin_config::<CacheConfig>(host)?)?;
        if settings.shared.is_some() {
            host.set_tick_period(PUT_PERIOD);
        }
        let cache = Self::new(host, settings);
        {
            let mut counters = cache.counters.borrow_mut();
            for outcome in OUTCOMES {
                counters.declare(host, &format!("sluice.cache.{outcome}"), &OUTCOME_LABELS);
            }
            counters.declare(host, NOT_STORED, &NOT_STORED_LABELS);
        }
        // Named now: a host may define metrics only while the filter is configured.
        cache.gauges.borrow_mut().define(host, LOCAL_BYTES);
        Ok(cache)
    }

    fn on_tick(&self, host: &mut dyn Host) {
        let Some(shared) = &self.settings.shared else {
            return;
        };
        for put in self.puts.take(usize::MAX) {
            let ttl = put.ttl_ms.as_deref().map(|t| (crate::TTL_HEADER, t));
            let callout = Callout {
                method: put.method,
                path: &put.path,
                authority: AUTHORITY,
                extra: ttl.as_slice(),
                body: Some(&put.value),
                timeout_ms: 1000,
            };
            match callout.send(host, &shared.cluster) {
                Some(token) => {
                    self.puts_in_flight
                        .borrow_mut()
                        .insert(token, (put.tier, put.model));
                }
                None => self.count(host, "error", put.tier, &put.model, 1),
            }
        }
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, _body_size: usize) {
        let Some((tier, model)) = self.puts_in_flight.borrow_mut().remove(&token) else {
            return;
        };
        let outcome = if status_of(host) == Some(204) {
            "stored"
        } else {
            "error"
        };
        self.count(host, outcome, tier, &model, 1);
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> CachedRequest {
        CachedRequest {
            filter: self.clone(),
            phase: Phase::Passthrough,
        }
    }
}

/// The status of the HTTP callout answer being delivered.
fn status_of(host: &dyn Host) -> Option<u16> {
    // Headers only: no body bytes copied.
    let (headers, _) = host.http_response(0);
    headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// A request the cache may answer or store.
#[derive(Debug)]
struct Pending {
    plan: Plan,
    api: Api,
    /// The upstream model (metric label).
    model: String,
    sent_at_ms: u64,
    /// The semantic index and the prompt's vector, to index the answer under once stored.
    semantic: Option<(Key, Vec<f32>)>,
}

/// Which answer a held request waits for.
#[derive(Debug)]
enum Step {
    /// The shared tier's entry for the exact key.
    Exact,
    /// The prompt's embedding.
    Embedding,
    /// The nearest stored prompt in the semantic index.
    Nearest,
}

/// Which tier answered a hit (and, for the semantic tier, how near the prompt was).
#[derive(Debug, Clone, Copy)]
struct Source {
    tier: &'static str,
    similarity: Option<f64>,
}

impl Source {
    fn tier(tier: &'static str) -> Self {
        Self {
            tier,
            similarity: None,
        }
    }
}

/// A lookup beyond the local tier under way (the request held).
#[derive(Debug)]
struct Lookup {
    pending: Pending,
    request: Rc<Value>,
    token: u32,
    step: Step,
}

/// An answer being copied as it passes.
#[derive(Debug)]
struct Capture {
    pending: Pending,
    /// The JSON body so far, or the stream's events assembled.
    body: Vec<u8>,
    stream: Option<(SseParser, StreamAssembler)>,
    /// Bytes seen so far (a stream's too).
    seen: usize,
}

/// Where a request is.
#[derive(Debug)]
enum Phase {
    /// Not a cacheable API call.
    Passthrough,
    /// Its body is being buffered.
    AwaitingBody(Api),
    /// Waiting for the shared tier's answer (the request held).
    Looking(Box<Lookup>),
    /// Answered from the cache (the reply passes back through this filter).
    Hit,
    /// Not using the cache; the answer says so.
    Bypassed,
    /// Sent upstream.
    Sent(Box<Pending>),
    /// A successful answer being copied.
    Capturing(Box<Capture>),
    Done,
}

pub struct CachedRequest {
    filter: Rc<ResponseCache>,
    phase: Phase,
}

/// Whether the response came from the backend (not a local reply of Envoy or a filter).
fn from_upstream(host: &dyn Host) -> bool {
    host.property(&["response", "code_details"])
        .is_some_and(|d| d == b"via_upstream")
}

fn publish(host: &mut dyn Host, fact: &str) {
    host.set_property(properties::CACHE, fact.as_bytes());
}

/// Publish a bypass, the commonest outcome: written out rather than built as a JSON value
/// (the reasons are fixed identifiers, nothing to escape).
fn publish_bypass(host: &mut dyn Host, why: Bypass) {
    publish(
        host,
        &format!(r#"{{"result":"bypass","reason":"{}"}}"#, why.as_str()),
    );
}

/// A complete, successful answer worth storing: a JSON object that is not an error.
fn storable_json(api: Api, body: &[u8]) -> bool {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let complete = match api {
        Api::Chat | Api::Completions => m.get("choices").is_some_and(Value::is_array),
        Api::Embeddings => m.get("data").is_some_and(Value::is_array),
        Api::Responses => m.get("status").and_then(Value::as_str) == Some("completed"),
        Api::Messages => m.get("content").is_some_and(Value::is_array),
        Api::CountTokens => false,
    };
    complete && m.get("error").is_none_or(Value::is_null)
}

impl CachedRequest {
    /// Decide with the whole body; answer a hit.
    fn on_body(&mut self, host: &mut dyn Host, api: Api, body: &[u8]) -> Flow {
        // token-counter, before this filter, parsed these bytes: their tree is read, not the
        // bytes scanned again ([`sluice_common::parsed`]).
        let known = sluice_common::parsed::known_body(body);
        let sampling = match &known {
            Some(tree) => Sampling::of_request(tree),
            None => Sampling::read(body),
        };
        let body_model = sampling
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .and_then(Value::as_str)
            .unwrap_or("");
        let upstream = text_property(host, properties::MODEL).unwrap_or_else(|| body_model.into());
        let requested =
            text_property(host, properties::MODEL_REQUESTED).unwrap_or_else(|| upstream.clone());
        let filter = self.filter.clone();
        if let Some(why) = sampling
            .as_ref()
            .and_then(|s| early_bypass(&filter.settings, api, &requested, &upstream, s))
        {
            return self.bypass(host, why, &upstream);
        }
        let Some(request) = known.or_else(|| sluice_common::parsed::parsed_body(body).ok()) else {
            // Not JSON: token-counter refuses it before it gets here.
            self.phase = Phase::Done;
            return Flow::Continue;
        };
        let tenant = text_property(host, properties::TENANT);
        let key_id = text_property(host, properties::KEY_ID);
        let control = ClientControl::parse(host.header(Side::Request, "cache-control").as_deref());
        let facts = RequestFacts {
            api,
            body: &request,
            requested_model: &requested,
            upstream_model: &upstream,
            tenant: tenant.as_deref(),
            key_id: key_id.as_deref(),
            control,
        };
        let plan = match plan(&filter.settings, &facts) {
            Ok(p) => p,
            Err(why) => return self.bypass(host, why, &upstream),
        };
        let now = now_unix_millis(host);
        let lookup = plan.lookup;
        let pending = Pending {
            plan,
            api,
            model: upstream,
            sent_at_ms: now,
            semantic: None,
        };
        if !lookup {
            filter.count(host, "bypass", "none", &pending.model, 1);
            publish_bypass(host, Bypass::Client);
            self.phase = Phase::Sent(Box::new(pending));
            return Flow::Continue;
        }
        if let Some(entry) = store::get(host, &pending.plan.key, filter.bounds(), now) {
            if self.serve(host, api, &request, &entry, now, Source::tier(LOCAL)) {
                filter.count(host, "hit", LOCAL, &pending.model, 1);
                return Flow::Pause;
            }
        }
        filter.count(host, "miss", LOCAL, &pending.model, 1);
        if let Some(shared) = &filter.settings.shared {
            let path = format!("/v1/entries/{}", hex(&pending.plan.key));
            let callout = Callout {
                method: "GET",
                path: &path,
                authority: AUTHORITY,
                extra: &[],
                body: None,
                timeout_ms: shared.timeout_ms,
            };
            match callout.send(host, &shared.cluster) {
                Some(token) => {
                    self.phase = Phase::Looking(Box::new(Lookup {
                        pending,
                        request,
                        token,
                        step: Step::Exact,
                    }));
                    return Flow::Pause;
                }
                // A cache outage is a miss, never a failed request.
                None => filter.count(host, "error", SHARED, &pending.model, 1),
            }
        }
        match self.embed(host, pending, request) {
            Ok(()) => Flow::Pause,
            Err(pending) => {
                self.miss(host, *pending);
                Flow::Continue
            }
        }
    }

    /// Ask the embedding model for the prompt's vector, when the semantic tier may answer
    /// this request; `Err` gives the request back (a miss).
    fn embed(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        request: Rc<Value>,
    ) -> Result<(), Box<Pending>> {
        let filter = self.filter.clone();
        let Some(sem) = &filter.settings.semantic else {
            return Err(Box::new(pending));
        };
        let Some(text) = semantic_text(pending.api, &request, sem.multi_turn) else {
            return Err(Box::new(pending));
        };
        let body = json!({"model": sem.model, "input": text}).to_string();
        let callout = Callout {
            method: "POST",
            path: "/v1/embeddings",
            authority: "embeddings",
            extra: &[JSON],
            body: Some(body.as_bytes()),
            timeout_ms: sem.timeout_ms,
        };
        match callout.send(host, &sem.cluster) {
            Some(token) => {
                self.phase = Phase::Looking(Box::new(Lookup {
                    pending,
                    request,
                    token,
                    step: Step::Embedding,
                }));
                Ok(())
            }
            None => {
                filter.count(host, "error", SEMANTIC, &pending.model, 1);
                Err(Box::new(pending))
            }
        }
    }

    /// The prompt's vector came back: look for the nearest stored prompt.
    fn on_embedding(&mut self, host: &mut dyn Host, mut lookup: Lookup, body_size: usize) -> bool {
        let filter = self.filter.clone();
        let (Some(sem), Some(shared)) = (&filter.settings.semantic, &filter.settings.shared) else {
            return false;
        };
        let vector: Option<Vec<f32>> = (status_of(host) == Some(200))
            .then(|| host.http_response(body_size).1)
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v.pointer("/data/0/embedding")?
                    .as_array()?
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect()
            })
            .filter(|v: &Vec<f32>| !v.is_empty());
        let Some(vector) = vector else {
            filter.count(host, "error", SEMANTIC, &lookup.pending.model, 1);
            self.miss(host, lookup.pending);
            return false;
        };
        let p = &lookup.pending;
        let index = semantic_index(&p.plan.scope, p.api, &p.model, &lookup.request);
        let path = format!("/v1/semantic/{}/lookup", hex(&index));
        let body = json!({"vector": vector, "threshold": sem.threshold}).to_string();
        let callout = Callout {
            method: "POST",
            path: &path,
            authority: AUTHORITY,
            extra: &[JSON],
            body: Some(body.as_bytes()),
            timeout_ms: shared.timeout_ms,
        };
        let token = callout.send(host, &shared.cluster);
        lookup.pending.semantic = Some((index, vector));
        match token {
            Some(token) => {
                lookup.token = token;
                lookup.step = Step::Nearest;
                self.phase = Phase::Looking(Box::new(lookup));
                true
            }
            None => {
                filter.count(host, "error", SEMANTIC, &lookup.pending.model, 1);
                self.miss(host, lookup.pending);
                false
            }
        }
    }

    /// The semantic index answered: serve the nearest prompt's answer, or go upstream.
    fn on_nearest(&mut self, host: &mut dyn Host, lookup: Lookup, body_size: usize) {
        let Lookup {
            pending, request, ..
        } = lookup;
        let filter = self.filter.clone();
        let now = now_unix_millis(host);
        match status_of(host) {
            Some(200) => {
                let (headers, value) = host.http_response(body_size);
                let similarity = headers
                    .iter()
                    .find(|(k, _)| k == crate::SIMILARITY_HEADER)
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<f64>().ok());
                if let Some(entry) = store::decode(&value, None, None, now) {
                    // Kept under this request's own key: its repeats are exact hits.
                    store::put(host, &pending.plan.key, &entry, filter.bounds());
                    let from = Source {
                        tier: SEMANTIC,
                        similarity,
                    };
                    if self.serve(host, pending.api, &request, &entry, now, from) {
                        filter.count(host, "hit", SEMANTIC, &pending.model, 1);
                        return;
                    }
                }
                filter.count(host, "miss", SEMANTIC, &pending.model, 1);
            }
            Some(404) => filter.count(host, "miss", SEMANTIC, &pending.model, 1),
            _ => filter.count(host, "error", SEMANTIC, &pending.model, 1),
        }
        self.miss(host, pending);
        host.resume(Side::Request);
    }

    /// Not in the cache: the request goes upstream.
    fn miss(&mut self, host: &mut dyn Host, pending: Pending) {
        publish(host, r#"{"result":"miss"}"#);
        self.phase = Phase::Sent(Box::new(pending));
    }

    fn bypass(&mut self, host: &mut dyn Host, why: Bypass, model: &str) -> Flow {
        self.filter.count(host, "bypass", "none", model, 1);
        publish_bypass(host, why);
        self.phase = Phase::Bypassed;
        Flow::Continue
    }

    /// Answer from `entry`: as stored, or replayed as a stream when the request streams.
    /// False when the entry cannot be replayed (then the request goes upstream).
    fn serve(
        &mut self,
        host: &mut dyn Host,
        api: Api,
        request: &Value,
        e: &Entry,
        now: u64,
        from: Source,
    ) -> bool {
        let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
        let replayed;
        let (body, content_type): (&[u8], _) = if stream {
            let include_usage = request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true)
                || !api.usage_on_request();
            let Some(stored) = serde_json::from_slice::<Value>(&e.body).ok() else {
                return false;
            };
            match replay_stream(api, &stored, include_usage) {
                Some(events) => replayed = events,
                None => return false,
            }
            (&replayed, "text/event-stream")
        } else {
            (&e.body, "application/json")
        };
        let age_s = now.saturating_sub(e.stored_at_ms) / 1000;
        let mut fact = json!({"result": "hit", "tier": from.tier, "saved_ms": e.backend_ms,
            "age_s": age_s});
        if let (Some(s), Some(m)) = (from.similarity, fact.as_object_mut()) {
            m.insert("similarity".into(), json!(s));
        }
        publish(host, &fact.to_string());
        let age = age_s.to_string();
        host.send_reply(
            200,
            &[
                ("content-type", content_type),
                (CACHE_HEADER, "hit"),
                ("age", &age),
            ],
            body,
        );
        self.phase = Phase::Hit;
        true
    }

    /// Store a complete answer.
    fn store(&mut self, host: &mut dyn Host, capture: Capture) {
        let Capture {
            pending,
            body,
            stream,
            ..
        } = capture;
        let body = match stream {
            Some((_, assembler)) => match assembler.finish() {
                Some(v) => v.to_string().into_bytes(),
                None => return self.not_stored(host, "incomplete", &pending.model),
            },
            None if storable_json(pending.api, &body) => body,
            None => return self.not_stored(host, "incomplete", &pending.model),
        };
        if body.len() > self.filter.settings.max_entry_bytes {
            return self.not_stored(host, "too_large", &pending.model);
        }
        let now = now_unix_millis(host);
        let entry = Entry {
            expires_ms: now.saturating_add(pending.plan.ttl_s.saturating_mul(1000)),
            stored_at_ms: now,
            backend_ms: now.saturating_sub(pending.sent_at_ms),
            body,
        };
        let filter = self.filter.clone();
        let stored = store::put(host, &pending.plan.key, &entry, filter.bounds());
        if !stored.stored {
            return self.not_stored(host, "store_failed", &pending.model);
        }
        log::debug!("response-cache: stored {}", hex(&pending.plan.key));
        filter.count(host, "stored", LOCAL, &pending.model, 1);
        if stored.evicted > 0 {
            filter.count(host, "evicted", LOCAL, &pending.model, stored.evicted);
        }
        filter
            .gauges
            .borrow_mut()
            .set(host, LOCAL_BYTES, stored.bytes);
        publish(
            host,
            &json!({"result": "stored", "tier": LOCAL}).to_string(),
        );
        if filter.settings.shared.is_some() {
            let ttl_ms = pending.plan.ttl_s.saturating_mul(1000);
            filter.queue_put(SharedPut {
                method: "PUT",
                path: format!("/v1/entries/{}", hex(&pending.plan.key)),
                ttl_ms: Some(ttl_ms.to_string()),
                value: store::encode(&pending.plan.key, 0, &entry),
                tier: SHARED,
                model: pending.model.clone(),
            });
            // After the entry (one worker sends in order): the index never names an
            // entry the storage has not been asked to keep.
            if let Some((index, vector)) = pending.semantic {
                let body = json!({"key": hex(&pending.plan.key), "vector": vector,
                    "ttl_ms": ttl_ms});
                filter.queue_put(SharedPut {
                    method: "POST",
                    path: format!("/v1/semantic/{}/insert", hex(&index)),
                    ttl_ms: None,
                    value: body.to_string().into_bytes(),
                    tier: SEMANTIC,
                    model: pending.model,
                });
            }
        }
    }

    /// The shared tier answered a lookup: serve its entry (and keep it locally), or go on
    /// upstream.
    fn on_shared_answer(&mut self, host: &mut dyn Host, lookup: Lookup, body_size: usize) {
        let Lookup {
            pending, request, ..
        } = lookup;
        let mut exact_miss = false;
        let filter = self.filter.clone();
        let now = now_unix_millis(host);
        let status = status_of(host);
        match status {
            Some(200) => {
                let (_, value) = host.http_response(body_size);
                if let Some(entry) = store::decode(&value, Some(&pending.plan.key), None, now) {
                    store::put(host, &pending.plan.key, &entry, filter.bounds());
                    if self.serve(
                        host,
                        pending.api,
                        &request,
                        &entry,
                        now,
                        Source::tier(SHARED),
                    ) {
                        filter.count(host, "hit", SHARED, &pending.model, 1);
                        return;
                    }
                }
                filter.count(host, "miss", SHARED, &pending.model, 1);
            }
            Some(404) => {
                filter.count(host, "miss", SHARED, &pending.model, 1);
                exact_miss = true;
            }
            // Down, slow or failing: a miss, counted as an error.
            _ => filter.count(host, "error", SHARED, &pending.model, 1),
        }
        // Not stored under this exact request: perhaps under a paraphrase of it.
        let pending = if exact_miss {
            match self.embed(host, pending, request) {
                Ok(()) => return,
                Err(p) => *p,
            }
        } else {
            pending
        };
        self.miss(host, pending);
        host.resume(Side::Request);
    }

    fn not_stored(&mut self, host: &mut dyn Host, why: &str, model: &str) {
        let labels = [
            (NOT_STORED_LABELS[0].0, why),
            (NOT_STORED_LABELS[1].0, LOCAL),
            (NOT_STORED_LABELS[2].0, model),
        ];
        self.filter
            .counters
            .borrow_mut()
            .add_labeled(host, &[NOT_STORED], &labels, 1);
    }
}

impl Lifecycle for CachedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let (method, path) = request_line(host);
        match governed_api(&path) {
            Some(api) if method == "POST" && api != Api::CountTokens && !end_of_stream => {
                self.phase = Phase::AwaitingBody(api);
                // Hold the headers until the body says whether the cache answers.
                Flow::Pause
            }
            _ => Flow::Continue,
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::AwaitingBody(api) = self.phase else {
            return Flow::Continue;
        };
        if !end_of_stream {
            return Flow::Pause;
        }
        let body = host.body(Side::Request, size);
        self.on_body(host, api, &body)
    }

    fn on_http_response(&mut self, host: &mut dyn Host, token: u32, body_size: usize) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Looking(lookup) if lookup.token == token => match lookup.step {
                Step::Exact => self.on_shared_answer(host, *lookup, body_size),
                Step::Embedding => {
                    if !self.on_embedding(host, *lookup, body_size) {
                        host.resume(Side::Request);
                    }
                }
                Step::Nearest => self.on_nearest(host, *lookup, body_size),
            },
            other => self.phase = other,
        }
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Hit => self.phase = Phase::Hit,
            Phase::Bypassed => host.set_header(Side::Response, CACHE_HEADER, "bypass"),
            Phase::Sent(pending) => {
                let said = if pending.plan.lookup {
                    "miss"
                } else {
                    "bypass"
                };
                host.set_header(Side::Response, CACHE_HEADER, said);
                let [status, content_type] =
                    header_values(host, Side::Response, [":status", "content-type"]);
                if pending.plan.store
                    && !end_of_stream
                    && status.as_deref() == Some("200")
                    && from_upstream(host)
                {
                    let sse = content_type.is_some_and(|t| t.starts_with("text/event-stream"));
                    let max = self.filter.settings.max_entry_bytes;
                    self.phase = Phase::Capturing(Box::new(Capture {
                        stream: sse
                            .then(|| (SseParser::new(max), StreamAssembler::new(pending.api))),
                        pending: *pending,
                        body: Vec::new(),
                        seen: 0,
                    }));
                }
            }
            other => self.phase = other,
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::Capturing(capture) = &mut self.phase else {
            return Flow::Continue;
        };
        let chunk = host.body(Side::Response, size);
        capture.seen += chunk.len();
        // A stream's events are larger than the response they assemble into; bound both.
        let limit = self.filter.settings.max_entry_bytes.saturating_mul(4);
        if capture.seen > limit
            || (capture.stream.is_none() && capture.seen > self.filter.settings.max_entry_bytes)
        {
            let model = capture.pending.model.clone();
            self.phase = Phase::Done;
            self.not_stored(host, "too_large", &model);
            return Flow::Continue;
        }
        match &mut capture.stream {
            Some((parser, assembler)) => {
                for event in parser.push(&chunk) {
                    assembler.push(&event);
                }
            }
            None => capture.body.extend_from_slice(&chunk),
        }
        if end_of_stream {
            if let Phase::Capturing(capture) = std::mem::replace(&mut self.phase, Phase::Done) {
                self.store(host, *capture);
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
