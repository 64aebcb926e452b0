//! rate-limit's lifecycle (both stages): checks taken at the headers (admission) or once
//! the output cap is known (tokens); the global ones asked of the rate-limit service while
//! the request waits; held until the stream ends, then settled with the real usage.

use crate::config::{RateLimitConfig, Stage, Tier};
use crate::decide::{self, Check, Denial, Held, Reservation, Subject};
use crate::reply::{self, Refusal};
use crate::rls::{self, Answer, OnError, RateLimitDescriptor, Verdict};
use crate::store::Taken;
use sluice_common::host::{
    now_unix_millis, now_unix_secs, send_error, set_text_property, text_property, CounterSet,
    Counters, Flow, GrpcCall, Handoff, Host, Lifecycle, Plugin, Side,
};
use sluice_common::logging::LogEvery;
use sluice_common::{properties, ConfigError, Policy};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Most queued report descriptors; beyond it the oldest are dropped (and counted).
const MAX_QUEUED_REPORTS: usize = 10_000;
/// Descriptors per report call.
const REPORT_BATCH: usize = 200;
/// How often queued reports are sent.
const REPORT_PERIOD: Duration = Duration::from_millis(100);

/// What a request (or a report) is counted as: `wasmcustom.sluice.rate_limit.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    LocalAllowed,
    LocalLimited,
    GlobalOk,
    GlobalOverLimit,
    GlobalFailureDenied,
    GlobalFailureAllowed,
    GlobalFailureLocal,
    ReportsDropped,
    NeverFits,
}

impl Outcome {
    const NAMES: [(Outcome, &'static str); 9] = [
        (Self::LocalAllowed, "local.allowed"),
        (Self::LocalLimited, "local.limited"),
        (Self::GlobalOk, "global.ok"),
        (Self::GlobalOverLimit, "global.over_limit"),
        (Self::GlobalFailureDenied, "global.failure.denied"),
        (Self::GlobalFailureAllowed, "global.failure.allowed"),
        (Self::GlobalFailureLocal, "global.failure.local"),
        (Self::ReportsDropped, "global.reports_dropped"),
        (Self::NeverFits, "tokens.never_fits"),
    ];
}

/// 429s by the limit that decided: a counter family, its labels' keys and the tags Envoy's
/// stats configuration exports them as (`envoy/envoy.yaml.j2`'s `stats_tags`).
const REFUSED: &str = "sluice.rate_limit.refused";
const REFUSED_LABELS: [(&str, &str); 2] =
    [("rule", "rate_limit_rule"), ("kind", "rate_limit_kind")];

/// The configured filter (one stage).
pub struct RateLimit {
    config: RateLimitConfig,
    counters: Counters<Outcome>,
    /// 429s by the limit that decided: `sluice.rate_limit.refused.rule.<rule>.kind.<kind>`
    /// (rules come from the config, kinds are fixed: bounded).
    refused: RefCell<CounterSet>,
    /// Settlement reports for the global tier, queued by requests as they end and sent by
    /// the root context in batches: they outlive the stream that made them.
    reports: Handoff<RateLimitDescriptor>,
    /// The log line for a failed call to the rate-limit service: one a minute per worker
    /// (every request fails alike while the service is down).
    service_failure_log: LogEvery,
}

impl RateLimit {
    /// Validate `config` for the stage named by `root_id` (unless the config names one).
    pub fn new(
        host: &mut dyn Host,
        mut config: RateLimitConfig,
        root_id: &str,
    ) -> Result<Self, ConfigError> {
        config.resolve_stage(root_id)?;
        config.validate()?;
        log::info!(
            "rate-limit: {:?} stage configured with {} rules",
            config.stage(),
            config.limits.len()
        );
        if config.global.is_some() {
            host.set_tick_period(REPORT_PERIOD);
        }
        let mut refused = CounterSet::new(1024);
        refused.declare(host, REFUSED, &REFUSED_LABELS);
        Ok(Self {
            config,
            counters: Counters::define(host, "sluice.rate_limit", &Outcome::NAMES),
            refused: RefCell::new(refused),
            reports: Handoff::new(host, "reports", MAX_QUEUED_REPORTS),
            service_failure_log: LogEvery::new(60_000),
        })
    }

    fn count(&self, host: &mut dyn Host, outcome: Outcome) {
        self.counters.add(host, outcome, 1);
    }

    /// Queue the settlement of a stream's global token reservations.
    fn queue_reports(&self, host: &mut dyn Host, held: &[Held], used: u64) {
        for report in held.iter().filter_map(|h| rls::settlement(h, used)) {
            if !self.reports.push(report) {
                self.count(host, Outcome::ReportsDropped);
            }
        }
    }
}

impl Plugin for RateLimit {
    const NAME: &'static str = "rate-limit";
    type Request = LimitedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config = sluice_common::host::plugin_config::<RateLimitConfig>(host)?;
        let root_id = text_property(host, "plugin_root_id").unwrap_or_default();
        Self::new(host, config, &root_id)
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> LimitedRequest {
        LimitedRequest {
            filter: self.clone(),
            phase: Phase::Idle,
        }
    }

    /// Send the queued settlement reports, in batches.
    fn on_tick(&self, host: &mut dyn Host) {
        let Some(global) = &self.config.global else {
            return;
        };
        loop {
            let batch = self.reports.take(REPORT_BATCH);
            if batch.is_empty() {
                return;
            }
            let message = rls::report_request(&global.domain, batch);
            let call = GrpcCall {
                cluster: &global.cluster,
                service: sluice_common::rls::SERVICE,
                method: sluice_common::rls::METHOD,
                message: &message,
                timeout: Duration::from_millis(global.timeout_ms.max(1000)),
            };
            if host.dispatch_grpc(&call).is_none() {
                log::warn!("rate-limit: cannot send a usage report");
                return;
            }
        }
    }

    fn on_grpc_response(&self, _host: &mut dyn Host, _token: u32, status: u32, _size: usize) {
        if status != 0 {
            log::warn!("rate-limit: a usage report failed (grpc status {status})");
        }
    }
}

/// Where a request is.
enum Phase {
    /// Nothing held (no policy, not counted, or already settled).
    Idle,
    /// Tokens stage: waiting for the body to read the output cap and the model.
    AwaitingBody {
        policy: Rc<Policy>,
        prompt_tokens: u64,
    },
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

pub struct LimitedRequest {
    filter: Rc<RateLimit>,
    phase: Phase,
}

/// The model as model-router published it: the public name the client asked for (what
/// per-model rules name), else the upstream name. `None` without model-router.
fn routed_model(host: &dyn Host) -> Option<String> {
    text_property(host, properties::MODEL_REQUESTED)
        .or_else(|| text_property(host, properties::MODEL))
}

fn number(host: &dyn Host, name: &str) -> Option<u64> {
    text_property(host, name).and_then(|p| p.parse().ok())
}

impl LimitedRequest {
    fn stage(&self) -> Stage {
        self.filter.config.stage()
    }

    /// Send a refusal and record it; the request stops here.
    fn send(&mut self, host: &mut dyn Host, refusal: &Refusal, record: serde_json::Value) -> Flow {
        send_error(host, &refusal.error, &refusal.header_refs());
        self.publish(host, record);
        self.phase = Phase::Idle;
        Flow::Pause
    }

    fn refuse(&mut self, host: &mut dyn Host, d: &Denial) -> Flow {
        let labels = [
            (REFUSED_LABELS[0].0, d.check.rule.as_str()),
            (REFUSED_LABELS[1].0, d.check.kind.name()),
        ];
        self.filter
            .refused
            .borrow_mut()
            .add_labeled(host, &[REFUSED], &labels, 1);
        let record = serde_json::json!({
            "decided_by": format!("{}:{}", d.check.rule, d.check.kind.name()),
            "limit": d.check.quota.limit, "remaining": d.remaining, "allowed": false,
        });
        self.send(host, &reply::over_limit(d), record)
    }

    /// Merge this stage's record into `sluice_ratelimit` (both stages write it).
    fn publish(&self, host: &mut dyn Host, record: serde_json::Value) {
        let stage = match self.stage() {
            Stage::Admission => "admission",
            Stage::Tokens => "tokens",
        };
        let mut all = text_property(host, properties::RATELIMIT)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = all.as_object_mut() {
            o.insert(stage.into(), record);
        }
        set_text_property(host, properties::RATELIMIT, &all.to_string());
    }

    /// Admit a request: `prompt` tokens and its output cap (`None`: it set none). Request
    /// counts and slots take 1; token budgets take the sized reservation.
    fn admit(
        &mut self,
        host: &mut dyn Host,
        policy: &Policy,
        model: Option<&str>,
        prompt: u64,
        cap: Option<u64>,
    ) -> Flow {
        let filter = self.filter.clone();
        let config = &filter.config;
        let checks = decide::checks(config, &Subject { policy, model });
        if checks.is_empty() {
            return Flow::Continue;
        }
        let now = now_unix_secs(host);
        let tokens = match decide::size_reservation(&*host, config, &checks, now, prompt, cap) {
            Reservation::Tokens(t) => t,
            Reservation::NeverFits {
                check,
                prompt,
                output,
            } => {
                filter.count(host, Outcome::NeverFits);
                let record = serde_json::json!({
                    "decided_by": format!("{}:{}", check.rule, check.kind.name()),
                    "allowed": false,
                    "needed": prompt + output,
                    "limit": check.quota.limit,
                });
                let refusal = reply::never_fits(&check, prompt, output, cap.is_some());
                return self.send(host, &refusal, record);
            }
        };
        let (local, global): (Vec<Check>, Vec<Check>) =
            checks.into_iter().partition(|c| c.tier == Tier::Local);
        // Local first: cheap, and a local refusal spares the service a call.
        let local_held = match decide::admit(&*host, &local, now, tokens) {
            Ok(held) => held,
            Err(d) => {
                filter.count(host, Outcome::LocalLimited);
                return self.refuse(host, &d);
            }
        };
        filter.count(host, Outcome::LocalAllowed);
        let Some(g) = config.global.as_ref().filter(|_| !global.is_empty()) else {
            self.phase = Phase::Admitted {
                held: local_held,
                reserved: tokens,
            };
            return Flow::Continue;
        };
        let message = rls::admission_request(&g.domain, &global, tokens);
        let call = GrpcCall {
            cluster: &g.cluster,
            service: sluice_common::rls::SERVICE,
            method: sluice_common::rls::METHOD,
            message: &message,
            timeout: Duration::from_millis(g.timeout_ms),
        };
        match host.dispatch_grpc(&call) {
            Some(token) => {
                self.phase = Phase::AwaitingGlobal {
                    token,
                    local: local_held,
                    global,
                    tokens,
                };
                Flow::Pause
            }
            None => {
                let verdict = rls::verdict(Answer::NotSent, g.failure_mode);
                self.on_verdict(host, verdict, local_held, global, tokens)
            }
        }
    }

    /// Act on the service's verdict. The answer `Flow` is what the hook returns when the
    /// verdict came at once; from a callback, a `Continue` resumes the request.
    fn on_verdict(
        &mut self,
        host: &mut dyn Host,
        verdict: Verdict,
        local: Vec<Held>,
        global: Vec<Check>,
        tokens: u64,
    ) -> Flow {
        let filter = self.filter.clone();
        match verdict {
            Verdict::Ok { remaining } => {
                filter.count(host, Outcome::GlobalOk);
                let mut held = local;
                for (i, check) in global.into_iter().enumerate() {
                    let amount = if check.kind.is_tokens() { tokens } else { 1 };
                    held.push(Held {
                        check,
                        taken: Taken {
                            window_start: 0,
                            remaining: remaining.get(i).copied().unwrap_or(0),
                        },
                        amount,
                    });
                }
                self.admitted(held, tokens)
            }
            Verdict::OverLimit {
                index,
                remaining,
                retry_after,
            } => {
                decide::release(&*host, &local);
                filter.count(host, Outcome::GlobalOverLimit);
                let Some(check) = global.get(index).or_else(|| global.first()) else {
                    return self.admitted(local, tokens);
                };
                let d = Denial {
                    check: check.clone(),
                    remaining,
                    retry_after,
                    unavailable: false,
                };
                self.refuse(host, &d)
            }
            Verdict::Error(OnError::Refuse) => {
                decide::release(&*host, &local);
                filter.count(host, Outcome::GlobalFailureDenied);
                let record =
                    serde_json::json!({"allowed": false, "decided_by": "global:unavailable"});
                self.send(host, &reply::service_unavailable(), record)
            }
            Verdict::Error(OnError::Admit) => {
                filter.count(host, Outcome::GlobalFailureAllowed);
                self.admitted(local, tokens)
            }
            Verdict::Error(OnError::CheckLocally) => {
                filter.count(host, Outcome::GlobalFailureLocal);
                match decide::admit(&*host, &global, now_unix_secs(&*host), tokens) {
                    Ok(mut held) => {
                        // Counted locally now: settled locally too.
                        for h in &mut held {
                            h.check.tier = Tier::Local;
                        }
                        let mut all = local;
                        all.extend(held);
                        self.admitted(all, tokens)
                    }
                    Err(d) => {
                        decide::release(&*host, &local);
                        self.refuse(host, &d)
                    }
                }
            }
        }
    }

    /// The tokens stage, for an answer from the response cache (which answered before this
    /// stage saw the request): charge its tokens to the key's token budgets when
    /// `charge_cache_hits` says so. Nothing was reserved, so each budget is charged the whole
    /// amount (locally, or through the service's report queue).
    fn charge_cache_hit(&mut self, host: &mut dyn Host) {
        let config = &self.filter.config;
        if self.stage() != Stage::Tokens || !config.charge_cache_hits {
            return;
        }
        let hit = text_property(host, properties::CACHE)
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
            .is_some_and(|c| c.get("result").and_then(serde_json::Value::as_str) == Some("hit"));
        let Some(policy) = text_property(host, properties::POLICY)
            .and_then(|p| Policy::from_published(&p))
            .filter(|p| hit && decide::tokens_stage_applies(config, p))
        else {
            return;
        };
        let used = number(host, properties::PROMPT_TOKENS).unwrap_or(0)
            + number(host, properties::COMPLETION_TOKENS).unwrap_or(0);
        let model = routed_model(host);
        let now = now_unix_secs(host);
        let (local, global): (Vec<Held>, Vec<Held>) = decide::checks(
            config,
            &Subject {
                policy: &policy,
                model: model.as_deref(),
            },
        )
        .into_iter()
        .filter(|c| c.kind.is_tokens())
        .map(|check| Held {
            check,
            taken: Taken {
                window_start: now,
                remaining: 0,
            },
            amount: 0,
        })
        .partition(|h| h.check.tier == Tier::Local);
        decide::settle(&*host, &local, now, used);
        self.filter.queue_reports(host, &global, used);
        self.publish(host, serde_json::json!({"cache_hit_charged": used}));
    }

    fn admitted(&mut self, held: Vec<Held>, reserved: u64) -> Flow {
        self.phase = Phase::Admitted { held, reserved };
        Flow::Continue
    }
}

impl Lifecycle for LimitedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        // No policy: key-auth did not run for this route; nothing to limit by.
        let Some(policy) =
            text_property(host, properties::POLICY).and_then(|p| Policy::from_published(&p))
        else {
            return Flow::Continue;
        };
        let config = &self.filter.config;
        match self.stage() {
            Stage::Admission => self.admit(host, &policy, None, 0, Some(0)),
            Stage::Tokens => {
                if !decide::tokens_stage_applies(config, &policy) {
                    return Flow::Continue;
                }
                // Only requests token-counter counted carry tokens.
                let Some(prompt_tokens) = number(host, properties::PROMPT_TOKENS) else {
                    return Flow::Continue;
                };
                // model-router, earlier in the chain, published the model.
                let routed = routed_model(host);
                if end_of_stream || !decide::needs_model(config) || routed.is_some() {
                    // token-counter, earlier in the chain, already read the body and
                    // published its output cap: decide now, without holding the request.
                    let cap = number(host, properties::MAX_OUTPUT_TOKENS);
                    return self.admit(host, &policy, routed.as_deref(), prompt_tokens, cap);
                }
                self.phase = Phase::AwaitingBody {
                    policy,
                    prompt_tokens,
                };
                Flow::Pause
            }
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        // A global decision is pending: the body waits with the headers. (With
        // allow_on_headers_stop_iteration Envoy still hands us the body; answering Continue
        // here would send the request upstream before the service has answered.)
        if matches!(self.phase, Phase::AwaitingGlobal { .. }) {
            return Flow::Pause;
        }
        if !matches!(self.phase, Phase::AwaitingBody { .. }) {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        let Phase::AwaitingBody {
            policy,
            prompt_tokens,
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Flow::Continue;
        };
        let body = host.body(Side::Request, size);
        // The request model's view: each API's output cap, the same `model` rule.
        let path = host.header(Side::Request, ":path").unwrap_or_default();
        let view = sluice_common::api::governed_api(&path)
            .and_then(|api| sluice_common::RequestView::parse_shared(api, &body).ok());
        let max_tokens = view.as_ref().and_then(|v| v.output_cap());
        let model = routed_model(host).or_else(|| {
            view.as_ref()
                .and_then(|v| v.model().ok().map(str::to_string))
        });
        self.admit(host, &policy, model.as_deref(), prompt_tokens, max_tokens)
    }

    fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, status: u32, size: usize) {
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
        let message = (status == 0).then(|| host.grpc_response(size)).flatten();
        if message.is_none() {
            if let Some(more) = self.filter.service_failure_log.due(now_unix_millis(host)) {
                let (code, text) = host.grpc_status();
                log::warn!(
                    "rate-limit: the rate-limit service failed: grpc {code} {} ({more} more failed calls since the last line)",
                    text.unwrap_or_default()
                );
            }
        }
        let answer = Answer::Replied {
            status,
            message: message.as_deref(),
        };
        let mode = self
            .filter
            .config
            .global
            .as_ref()
            .map(|g| g.failure_mode)
            .unwrap_or_default();
        let verdict = rls::verdict(answer, mode);
        if self.on_verdict(host, verdict, local, global, tokens) == Flow::Continue {
            host.resume(Side::Request);
        }
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        let Phase::Admitted { held, .. } = &self.phase else {
            return Flow::Continue;
        };
        for (name, value) in reply::admitted_headers(held, now_unix_secs(host)) {
            host.set_header(Side::Response, &name, &value);
        }
        Flow::Continue
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        // The end of the stream, however it ended (done, cut by the backend, abandoned by
        // the client): give back slots and settle token reservations. token-counter's
        // on_log ran before (it is earlier in the chain), so the final usage is known.
        let Phase::Admitted { held, reserved } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return self.charge_cache_hit(host);
        };
        let status: u64 = host
            .property(&["response", "code"])
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let prompt = number(host, properties::PROMPT_TOKENS).unwrap_or(0);
        let completion = number(host, properties::COMPLETION_TOKENS).unwrap_or(0);
        // A request the backend did not serve costs nothing: an error status, or an error
        // event inside a 200 stream (token-counter publishes it).
        let failed = text_property(host, properties::ERROR).is_some_and(|e| !e.is_empty());
        let used = if (200..300).contains(&status) && !failed {
            prompt + completion
        } else {
            0
        };
        let (local, global): (Vec<Held>, Vec<Held>) =
            held.into_iter().partition(|h| h.check.tier == Tier::Local);
        decide::settle(&*host, &local, now_unix_secs(host), used);
        // Global token reservations: refunded or charged through the root context's queue
        // (this stream is about to go away).
        self.filter.queue_reports(host, &global, used);
        self.publish(
            host,
            serde_json::json!({"allowed": true, "reserved": reserved, "reconciled": used}),
        );
    }
}

#[cfg(test)]
mod tests;
