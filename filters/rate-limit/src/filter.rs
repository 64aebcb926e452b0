//! proxy-wasm glue for rate-limit (both stages). Policy is in decide.rs / store.rs.

use crate::config::{FailureMode, RateLimitConfig, Stage, Tier};
use crate::decide::{self, Check, Denial, Held, Kind, Subject};
use crate::reset_header;
use crate::rls;
use crate::store::{SharedStore, StoreError, Taken};
use prost::Message;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use sluice_common::{properties, ErrorKind, OpenAiError, Policy};
use sluice_proxy::{
    define_counter, increment, now_unix_secs, property, send_error, set_property, CounterSet,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Envoy shared data: one map for all the VMs of this `vm_id`, across worker threads.
struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => {
                log::warn!("rate-limit: shared data write failed: {e:?}");
                Err(StoreError::Failed)
            }
        }
    }
}

/// The model as model-router published it: the public name the client asked for (what
/// per-model rules name), else the upstream name. `None` without model-router.
fn routed_model() -> Option<String> {
    property(properties::MODEL_REQUESTED).or_else(|| property(properties::MODEL))
}

fn set_text_property(name: &str, value: &str) {
    set_property(name, value.as_bytes());
}

/// Reconciliation reports for the global tier, queued by requests as they end and sent
/// by the root context in batches: they outlive the HTTP context that made them.
type Reports = Rc<RefCell<VecDeque<rls::RateLimitDescriptor>>>;

/// Most queued report descriptors; beyond it the oldest are dropped (and counted).
const MAX_QUEUED_REPORTS: usize = 10_000;
/// Descriptors per report call.
const REPORT_BATCH: usize = 200;

/// Outcome counters (`wasmcustom.sluice.rate_limit.<outcome>`).
struct Counters {
    ids: Vec<(&'static str, Option<u32>)>,
}

impl Counters {
    const NAMES: [&'static str; 8] = [
        "local.allowed",
        "local.limited",
        "global.ok",
        "global.over_limit",
        "global.failure.denied",
        "global.failure.allowed",
        "global.failure.local",
        "global.reports_dropped",
    ];

    fn define() -> Self {
        Self {
            ids: Self::NAMES
                .iter()
                .map(|n| (*n, define_counter(&format!("sluice.rate_limit.{n}"))))
                .collect(),
        }
    }

    fn add(&self, name: &str) {
        if let Some((_, id)) = self.ids.iter().find(|(n, _)| *n == name) {
            increment(*id, 1);
        }
    }
}

struct Shared {
    config: RateLimitConfig,
    counters: Counters,
    /// 429s by the limit that decided: `sluice.rate_limit.refused.rule.<rule>.kind.<kind>`
    /// (rules come from the config, kinds are fixed: bounded).
    refused: RefCell<CounterSet>,
    reports: Reports,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Root {
    fn flush_reports(&self) {
        let Some(shared) = &self.shared else { return };
        let Some(global) = &shared.config.global else {
            return;
        };
        loop {
            let batch: Vec<_> = {
                let mut q = shared.reports.borrow_mut();
                let n = q.len().min(REPORT_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let request = rls::RateLimitRequest {
                domain: global.domain.clone(),
                descriptors: batch,
                hits_addend: 0,
            };
            let timeout = Duration::from_millis(global.timeout_ms.max(1000));
            if let Err(e) = hostcalls::dispatch_grpc_call(
                &global.cluster,
                rls::SERVICE,
                rls::METHOD,
                Vec::new(),
                Some(&request.encode_to_vec()),
                timeout,
            ) {
                log::warn!("rate-limit: cannot send a usage report: {e:?}");
                return;
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, _size: usize) {
        if status != 0 {
            log::warn!("rate-limit: a usage report failed (grpc status {status})");
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let root_id = property("plugin_root_id").unwrap_or_default();
        let parse = |b: &[u8]| {
            sluice_common::parse_config::<RateLimitConfig>(b).and_then(|mut c| {
                c.resolve_stage(&root_id)?;
                c.validate().map(|()| c)
            })
        };
        let Some(c) = sluice_proxy::configure("rate-limit", parse) else {
            return false;
        };
        log::info!(
            "rate-limit: {:?} stage configured with {} rules",
            c.stage(),
            c.limits.len()
        );
        if c.global.is_some() {
            // Reports are flushed from the root context every 100 ms.
            if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(100)) {
                log::warn!("rate-limit: cannot set the tick period: {e:?}");
            }
        }
        self.shared = Some(Rc::new(Shared {
            config: c,
            counters: Counters::define(),
            refused: RefCell::new(CounterSet::new(1024)),
            reports: Rc::new(RefCell::new(VecDeque::new())),
        }));
        true
    }

    fn on_tick(&mut self) {
        self.flush_reports();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            phase: Phase::Idle,
        }))
    }
}

/// Where a request is.
enum Phase {
    /// Nothing held (no policy, not counted, or already settled).
    Idle,
    /// Tokens stage: waiting for the body to read `max_tokens` and the model.
    AwaitingBody { policy: Policy, prompt_tokens: u64 },
    /// Local counters taken; waiting for the rate-limit service on the global ones.
    AwaitingGlobal {
        token: u32,
        local: Vec<Held>,
        global: Vec<Check>,
        tokens: u64,
    },
    /// Admitted: counters held until the end of the stream.
    Admitted { held: Vec<Held>, reserved: u64 },
}

struct Http {
    shared: Option<Rc<Shared>>,
    phase: Phase,
}

fn kind_family(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::RequestsPerMinute => Some("requests"),
        Kind::TokensPerMinute => Some("tokens"),
        Kind::DailyTokens | Kind::MaxParallel => None,
    }
}

impl Http {
    fn stage(&self) -> Option<Stage> {
        self.shared.as_ref().map(|s| s.config.stage())
    }

    fn count(&self, outcome: &str) {
        if let Some(s) = &self.shared {
            s.counters.add(outcome);
        }
    }

    /// A request larger than a token limit's whole window: waiting will not help, so no
    /// retry-after; the message says what to change.
    fn refuse_never_fits(
        &mut self,
        check: &Check,
        prompt: u64,
        output: u64,
        capped: bool,
    ) -> Action {
        let message = decide::never_fits_message(check, prompt, output, capped);
        let limit = check.quota.limit;
        let error =
            OpenAiError::new(ErrorKind::RateLimited, message).with_code("request_too_large");
        send_error(&error, &[]);
        self.count("tokens.never_fits");
        self.publish(serde_json::json!({
            "decided_by": format!("{}:{}", check.rule, check.kind.name()),
            "allowed": false,
            "needed": prompt + output,
            "limit": limit,
        }));
        Action::Pause
    }

    fn refuse(&mut self, d: &Denial) -> Action {
        let what = d.check.kind.unit();
        let scope = d.check.scope();
        let message = if d.unavailable {
            format!("Rate limit check for {scope} ({what}) could not be completed; retry shortly.")
        } else {
            format!(
                "Rate limit reached for {scope}: {} {what}, {} left. Retry after {} s.",
                d.check.quota.limit, d.remaining, d.retry_after
            )
        };
        let error =
            OpenAiError::new(ErrorKind::RateLimited, message).with_code("rate_limit_exceeded");
        let retry = d.retry_after.to_string();
        let limit = d.check.quota.limit.to_string();
        let remaining = d.remaining.to_string();
        let reset = reset_header(d.retry_after);
        let mut headers: Vec<(String, &str)> = vec![("retry-after".into(), &retry)];
        if let Some(family) = kind_family(d.check.kind) {
            headers.push((format!("x-ratelimit-limit-{family}"), &limit));
            headers.push((format!("x-ratelimit-remaining-{family}"), &remaining));
            headers.push((format!("x-ratelimit-reset-{family}"), &reset));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        send_error(&error, &headers);
        if let Some(shared) = &self.shared {
            let rule = sluice_common::metrics::label(&d.check.rule);
            shared.refused.borrow_mut().add(
                &format!(
                    "sluice.rate_limit.refused.rule.{rule}.kind.{}",
                    d.check.kind.name()
                ),
                1,
            );
        }
        self.publish(serde_json::json!({
            "decided_by": format!("{}:{}", d.check.rule, d.check.kind.name()),
            "limit": d.check.quota.limit, "remaining": d.remaining, "allowed": false,
        }));
        self.phase = Phase::Idle;
        Action::Pause
    }

    /// Merge this stage's record into `sluice_ratelimit` (both stages write it).
    fn publish(&self, record: serde_json::Value) {
        let stage = match self.stage() {
            Some(Stage::Admission) => "admission",
            _ => "tokens",
        };
        let mut all = property(properties::RATELIMIT)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = all.as_object_mut() {
            o.insert(stage.into(), record);
        }
        set_text_property(properties::RATELIMIT, &all.to_string());
    }

    /// Admit a request: `prompt` tokens and its output cap (`None`: it set none). Request
    /// counts and slots take 1; token budgets take the sized reservation.
    fn admit(
        &mut self,
        policy: &Policy,
        model: Option<&str>,
        prompt: u64,
        cap: Option<u64>,
    ) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let checks = decide::checks(&shared.config, &Subject { policy, model });
        if checks.is_empty() {
            return Action::Continue;
        }
        let sizing = decide::size_reservation(
            &EnvoyStore,
            &shared.config,
            &checks,
            now_unix_secs(),
            prompt,
            cap,
        );
        let tokens = match sizing {
            decide::Reservation::Tokens(t) => t,
            decide::Reservation::NeverFits {
                check,
                prompt,
                output,
            } => return self.refuse_never_fits(&check, prompt, output, cap.is_some()),
        };
        let (local, global): (Vec<Check>, Vec<Check>) =
            checks.into_iter().partition(|c| c.tier == Tier::Local);
        // Local first: cheap, and a local refusal spares the service a call.
        let local_held = match decide::admit(&EnvoyStore, &local, now_unix_secs(), tokens) {
            Ok(held) => held,
            Err(d) => {
                self.count("local.limited");
                return self.refuse(&d);
            }
        };
        self.count("local.allowed");
        let Some(g) = shared.config.global.as_ref().filter(|_| !global.is_empty()) else {
            self.phase = Phase::Admitted {
                held: local_held,
                reserved: tokens,
            };
            return Action::Continue;
        };
        let request = rls::RateLimitRequest {
            domain: g.domain.clone(),
            descriptors: global
                .iter()
                .map(|c| {
                    rls::descriptor(c, if c.kind.is_tokens() { tokens } else { 1 }, false, false)
                })
                .collect(),
            hits_addend: 0,
        };
        match hostcalls::dispatch_grpc_call(
            &g.cluster,
            rls::SERVICE,
            rls::METHOD,
            Vec::new(),
            Some(&request.encode_to_vec()),
            Duration::from_millis(g.timeout_ms),
        ) {
            Ok(token) => {
                self.phase = Phase::AwaitingGlobal {
                    token,
                    local: local_held,
                    global,
                    tokens,
                };
                Action::Pause
            }
            Err(e) => {
                log::warn!("rate-limit: cannot call the rate-limit service: {e:?}");
                self.global_failed(local_held, global, tokens, false)
            }
        }
    }

    /// The service failed or timed out: act per `failure_mode`. `resume`: the request is
    /// paused and must be resumed (we are in the gRPC callback).
    fn global_failed(
        &mut self,
        local: Vec<Held>,
        global: Vec<Check>,
        tokens: u64,
        resume: bool,
    ) -> Action {
        let mode = self
            .shared
            .as_ref()
            .and_then(|s| s.config.global.as_ref())
            .map_or(FailureMode::Deny, |g| g.failure_mode);
        match mode {
            FailureMode::Deny => {
                self.count("global.failure.denied");
                decide::release(&EnvoyStore, &local);
                let error = OpenAiError::new(
                    ErrorKind::Unavailable,
                    "The rate-limit service is unavailable; retry shortly.",
                )
                .with_code("rate_limit_service_unavailable");
                send_error(&error, &[("retry-after", "1")]);
                self.publish(
                    serde_json::json!({"allowed": false, "decided_by": "global:unavailable"}),
                );
                self.phase = Phase::Idle;
                Action::Pause
            }
            FailureMode::Allow => {
                self.count("global.failure.allowed");
                self.phase = Phase::Admitted {
                    held: local,
                    reserved: tokens,
                };
                self.resume_if(resume)
            }
            FailureMode::Local => {
                self.count("global.failure.local");
                match decide::admit(&EnvoyStore, &global, now_unix_secs(), tokens) {
                    Ok(mut held) => {
                        // Counted locally now: settle them locally too.
                        for h in &mut held {
                            h.check.tier = Tier::Local;
                        }
                        let mut all = local;
                        all.extend(held);
                        self.phase = Phase::Admitted {
                            held: all,
                            reserved: tokens,
                        };
                        self.resume_if(resume)
                    }
                    Err(d) => {
                        decide::release(&EnvoyStore, &local);
                        self.refuse(&d)
                    }
                }
            }
        }
    }

    fn resume_if(&self, resume: bool) -> Action {
        if resume {
            if let Err(e) = hostcalls::resume_http_request() {
                log::warn!("rate-limit: cannot resume the request: {e:?}");
            }
        }
        Action::Continue
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let Phase::AwaitingGlobal {
            token: expected,
            local,
            global,
            tokens,
        } = phase
        else {
            self.phase = phase;
            return;
        };
        if token != expected {
            self.phase = Phase::AwaitingGlobal {
                token: expected,
                local,
                global,
                tokens,
            };
            return;
        }
        let response = (status == 0)
            .then(|| {
                hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                    .ok()
                    .flatten()
            })
            .flatten()
            .and_then(|b| rls::RateLimitResponse::decode(b.as_slice()).ok());
        match response {
            Some(r) if r.overall_code == rls::CODE_OK => {
                self.count("global.ok");
                let mut held = local;
                for (i, check) in global.into_iter().enumerate() {
                    let remaining = r
                        .statuses
                        .get(i)
                        .map_or(0, |s| u64::from(s.limit_remaining));
                    let amount = if check.kind.is_tokens() { tokens } else { 1 };
                    held.push(Held {
                        check,
                        taken: Taken {
                            window_start: 0,
                            remaining,
                        },
                        amount,
                    });
                }
                self.phase = Phase::Admitted {
                    held,
                    reserved: tokens,
                };
                self.resume_if(true);
            }
            Some(r) if r.overall_code == rls::CODE_OVER_LIMIT => {
                self.count("global.over_limit");
                decide::release(&EnvoyStore, &local);
                let i = r
                    .statuses
                    .iter()
                    .position(|s| s.code == rls::CODE_OVER_LIMIT)
                    .unwrap_or(0);
                let status = r.statuses.get(i);
                if let Some(check) = global.get(i).or_else(|| global.first()) {
                    let d = Denial {
                        check: check.clone(),
                        remaining: status.map_or(0, |s| u64::from(s.limit_remaining)),
                        retry_after: status
                            .and_then(|s| s.duration_until_reset.as_ref())
                            .map_or(1, |d| u64::try_from(d.seconds).unwrap_or(1).max(1)),
                        unavailable: false,
                    };
                    self.refuse(&d);
                }
            }
            _ => {
                let (code, message) = hostcalls::get_grpc_status().unwrap_or((status, None));
                log::warn!(
                    "rate-limit: the rate-limit service failed: grpc {code} {}",
                    message.unwrap_or_default()
                );
                self.global_failed(local, global, tokens, true);
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Some(stage) = self.stage() else {
            return Action::Continue;
        };
        // No policy: key-auth did not run for this route; nothing to limit by.
        let Some(policy) =
            property(properties::POLICY).and_then(|p| serde_json::from_str::<Policy>(&p).ok())
        else {
            return Action::Continue;
        };
        match stage {
            Stage::Admission => self.admit(&policy, None, 0, Some(0)),
            Stage::Tokens => {
                let applies = self
                    .shared
                    .as_ref()
                    .is_some_and(|s| decide::tokens_stage_applies(&s.config, &policy));
                if !applies {
                    return Action::Continue;
                }
                // Only requests token-counter counted carry tokens.
                let Some(prompt_tokens) =
                    property(properties::PROMPT_TOKENS).and_then(|p| p.parse().ok())
                else {
                    return Action::Continue;
                };
                let needs_model = self
                    .shared
                    .as_ref()
                    .is_some_and(|s| decide::needs_model(&s.config));
                // model-router, earlier in the chain, published the model.
                let routed = routed_model();
                if end_of_stream || !needs_model || routed.is_some() {
                    // token-counter, earlier in the chain, already read the body and
                    // published its output cap: decide now, without holding the request.
                    let cap = property(properties::MAX_OUTPUT_TOKENS).and_then(|p| p.parse().ok());
                    return self.admit(&policy, routed.as_deref(), prompt_tokens, cap);
                }
                self.phase = Phase::AwaitingBody {
                    policy,
                    prompt_tokens,
                };
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        // A global decision is pending: the body waits with the headers. (With
        // allow_on_headers_stop_iteration Envoy still hands us the body; answering Continue
        // here would send the request upstream before the service has answered.)
        if matches!(self.phase, Phase::AwaitingGlobal { .. }) {
            return Action::Pause;
        }
        if !matches!(self.phase, Phase::AwaitingBody { .. }) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Phase::AwaitingBody {
            policy,
            prompt_tokens,
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        // The request model's view: each API's output cap, the same `model` rule.
        let path = sluice_proxy::header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        let view = sluice_common::api::governed_api(&path)
            .and_then(|api| sluice_common::RequestView::parse(api, &body).ok());
        let max_tokens = view.as_ref().and_then(|v| v.output_cap());
        let model = routed_model().or_else(|| {
            view.as_ref()
                .and_then(|v| v.model().ok().map(str::to_string))
        });
        self.admit(&policy, model.as_deref(), prompt_tokens, max_tokens)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Phase::Admitted { held, .. } = &self.phase else {
            return Action::Continue;
        };
        let t = now_unix_secs();
        // For each family, the counter with the least left decides what the client sees.
        for family in ["requests", "tokens"] {
            let tightest = held
                .iter()
                .filter(|h| kind_family(h.check.kind) == Some(family))
                .min_by_key(|h| h.taken.remaining);
            if let Some(h) = tightest {
                let reset = reset_header(h.check.quota.reset_at(t).saturating_sub(t));
                for (name, value) in [
                    (
                        format!("x-ratelimit-limit-{family}"),
                        h.check.quota.limit.to_string(),
                    ),
                    (
                        format!("x-ratelimit-remaining-{family}"),
                        h.taken.remaining.to_string(),
                    ),
                    (format!("x-ratelimit-reset-{family}"), reset),
                ] {
                    if let Err(e) =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, Some(&value))
                    {
                        log::warn!("rate-limit: cannot add {name}: {e:?}");
                    }
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The end of the stream, however it ended (done, cut by the backend, abandoned by
        // the client): give back slots and settle token reservations. token-counter's
        // on_log ran before (it is earlier in the chain), so the final usage is known.
        let Phase::Admitted { held, reserved } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let status: u64 = hostcalls::get_property(vec!["response", "code"])
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let prompt: u64 = property(properties::PROMPT_TOKENS)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let completion: u64 = property(properties::COMPLETION_TOKENS)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // A request the backend did not serve costs nothing: an error status, or an error
        // event inside a 200 stream (token-counter publishes it).
        let failed = property(properties::ERROR).is_some_and(|e| !e.is_empty());
        let used = if (200..300).contains(&status) && !failed {
            prompt + completion
        } else {
            0
        };
        let (local, global): (Vec<Held>, Vec<Held>) = held
            .iter()
            .cloned()
            .partition(|h| h.check.tier == Tier::Local);
        decide::settle(&EnvoyStore, &local, now_unix_secs(), used);
        if let Some(shared) = &self.shared {
            // Global token reservations: refund or charge the difference, through the root
            // context's queue (this context is about to go away).
            let mut q = shared.reports.borrow_mut();
            for h in global.iter().filter(|h| h.check.kind.is_tokens()) {
                let report = if used < h.amount {
                    Some(rls::descriptor(&h.check, h.amount - used, true, false))
                } else if used > h.amount {
                    Some(rls::descriptor(&h.check, used - h.amount, false, true))
                } else {
                    None
                };
                if let Some(r) = report {
                    if q.len() >= MAX_QUEUED_REPORTS {
                        q.pop_front();
                        shared.counters.add("global.reports_dropped");
                    }
                    q.push_back(r);
                }
            }
        }
        self.publish(
            serde_json::json!({"allowed": true, "reserved": reserved, "reconciled": used}),
        );
    }
}
