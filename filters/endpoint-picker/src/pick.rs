//! Choosing the endpoint: the load a request meets there, less the prefill its cached
//! prefix saves.

use crate::engine::EngineLoad;
use serde::{Deserialize, Serialize};

/// How the picker weighs what it knows, in one unit: a turn for a batch slot (the time one
/// of an endpoint's slots takes to free, when all are busy). What decides a request's time
/// to first token is how many turns it waits and how much of its prompt it must prefill;
/// a request already running beside it costs little (it slows each decode step a bit).
/// Defaults suit a pool of equal GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Cost of a request running on the endpoint: a new one beside it starts at once.
    pub running: f64,
    /// Cost of each turn a new request would wait for a batch slot (behind the queued
    /// requests, and for a slot to free).
    pub waiting: f64,
    /// Cost of a full KV cache; it grows from `kv_cache_from` (no cost below) to 1.
    pub kv_cache: f64,
    /// The KV-cache utilisation below which a cache costs nothing: an engine with free KV
    /// blocks serves the next request as fast as one with more (and the gauge lags, so a
    /// weight over its whole range only moves requests by old news).
    pub kv_cache_from: f64,
    /// What 1,000 prompt tokens already in an endpoint's prefix cache are worth, in turns:
    /// the prefill they save (a 3,000-token system prompt is worth waiting a few turns for a
    /// slot; a 300-token one is not).
    pub prefix: f64,
    /// What having the requested LoRA adapter already loaded is worth, in turns (an engine
    /// that must load it first makes the request wait).
    pub lora: f64,
    /// What each even share of the pool's recent requests an endpoint took beyond its own
    /// costs a prompt no endpoint holds, in turns (in part for a prompt mostly held
    /// nowhere; nothing for a conversation's next turn): a new prefix makes its home
    /// where recent traffic was lightest, so homes (and the requests that follow them)
    /// spread over the pool instead of landing where the momentary load happened to be
    /// lowest (which piled three or four of eight tenants' homes on one endpoint).
    pub spread: f64,
    /// An endpoint with this many requests waiting (or a KV cache this full) is saturated:
    /// its prefix no longer attracts requests while another is not (a hot prefix spills
    /// instead of piling up, however long it is).
    pub saturated_waiting: f64,
    pub saturated_kv_cache: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            running: 0.1,
            waiting: 1.0,
            kv_cache: 4.0,
            kv_cache_from: 0.8,
            prefix: 1.5,
            lora: 2.0,
            spread: 1.0,
            saturated_waiting: 5.0,
            saturated_kv_cache: 0.95,
        }
    }
}

/// What the picker knows of one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    /// The engine's last report, when it is fresh.
    pub engine: Option<EngineLoad>,
    /// Requests this gateway has in flight to it (all workers), known at once.
    pub in_flight: u64,
    /// Requests on it from elsewhere (other gateways, direct clients), by the engine's
    /// reports: beyond the gateway's own at the time.
    pub foreign: f64,
    /// Prompt tokens it holds in its prefix cache (estimated from the indexed blocks).
    pub prefix_tokens: f64,
    /// The requested model is a LoRA adapter this endpoint has loaded.
    pub lora_loaded: bool,
    /// Its part of the pool's recent requests beyond an even share, in even shares (0:
    /// even; 1: twice its share; -1: none), times the part of the prompt no endpoint holds,
    /// for a prompt that makes a new home (mostly held nowhere); 0 otherwise.
    pub recent: f64,
    /// Requests it serves at once (its batch slots), when the pool says.
    pub slots: Option<u64>,
    /// Its engine should report load but has not lately: likely down or unreachable.
    pub silent: bool,
    /// It stands by at a lower priority (another region) while endpoints of a higher one
    /// report: it serves only when they cannot (Envoy's priority failover).
    pub standby: bool,
}

/// Why an endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The least loaded.
    Load,
    /// Its prefix cache outweighed a lighter load elsewhere.
    Prefix,
    /// Its loaded LoRA adapter outweighed a lighter load elsewhere.
    Lora,
    /// A new prefix's home: lighter recent traffic outweighed a lighter load at the moment.
    Spread,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Prefix => "prefix",
            Self::Lora => "lora",
            Self::Spread => "spread",
        }
    }
}

/// The endpoints in the order to try them (best first; the rest are Envoy's retry
/// order), and why the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub order: Vec<usize>,
    pub reason: Reason,
    /// The first endpoint's load, for the decision record.
    pub load: f64,
}

impl Candidate {
    /// Endpoints are tried tier by tier, each tier by score: those that report at the
    /// active priority, then silent ones (Envoy's health checks, not this score, decide
    /// whether they still serve), then those standing by at a lower priority.
    fn tier(&self) -> u8 {
        match (self.standby, self.silent) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        }
    }

    /// Counts for `room`: reports, at the active priority.
    fn active(&self) -> bool {
        self.tier() == 0
    }

    /// Requests on it, running or waiting: the gateway's own now (exact, immediate) plus
    /// the others' by the engine's report. The engine's own count of the gateway's requests
    /// lags by its metrics' age and a scrape interval: every request picked meanwhile would
    /// see the same old numbers and herd away from an endpoint that has since drained.
    pub fn requests(&self) -> f64 {
        self.in_flight as f64 + self.foreign.max(0.0)
    }

    /// Requests waiting for a batch slot: beyond the slots, when the pool says how many;
    /// else the engine's report.
    fn waiting(&self) -> f64 {
        match self.slots {
            Some(s) => (self.requests() - s as f64).max(0.0),
            None => self.engine.as_ref().map_or(0.0, |e| e.waiting),
        }
    }

    /// Turns a new request would wait for a slot: with known slots, one per request queued
    /// ahead of it and one for a slot to free; else the engine's queue.
    fn ahead(&self) -> f64 {
        match self.slots {
            Some(s) => (self.requests() + 1.0 - s as f64).max(0.0),
            None => self.waiting(),
        }
    }

    fn kv_cache(&self) -> f64 {
        self.engine.as_ref().and_then(|e| e.kv_cache).unwrap_or(0.0)
    }

    /// Requests running on it: those on it less those waiting.
    fn running(&self) -> f64 {
        (self.requests() - self.waiting()).max(0.0)
    }

    /// What a new request meets, in turns for a slot: the turns it would wait, the requests
    /// running beside it, and the cost of a nearly full KV cache.
    pub fn load(&self, w: &Weights) -> f64 {
        let knee = w.kv_cache_from.clamp(0.0, 0.999);
        let kv = ((self.kv_cache() - knee) / (1.0 - knee)).max(0.0);
        w.running * self.running() + w.waiting * self.ahead() + w.kv_cache * kv
    }

    /// Overloaded: a queue of `saturated_waiting` or a KV cache nearly full.
    pub fn saturated(&self, w: &Weights) -> bool {
        self.waiting() >= w.saturated_waiting || self.kv_cache() >= w.saturated_kv_cache
    }

    /// Lower is better, within its tier. `room`: some reporting endpoint of the pool is
    /// not saturated.
    fn score(&self, w: &Weights, room: bool) -> f64 {
        // No affinity outside the active tier, and a saturated endpoint's cache draws
        // nothing while another has room: a hot prefix spills instead of piling up.
        if !self.active() || (room && self.saturated(w)) {
            return self.load(w);
        }
        // A cached prefix saves its prefill: worth waiting for a slot when it is long. When
        // every endpoint is saturated the request waits wherever it goes, so it counts too.
        let lora = if self.lora_loaded { w.lora } else { 0.0 };
        self.load(w) - w.prefix * self.prefix_tokens.max(0.0) / 1000.0 - lora
            + w.spread * self.recent
    }
}

/// Rank the endpoints. `tie` breaks ties between equal scores (a fresh random number per
/// request, so equal endpoints share the load). `None` when there is nothing to rank.
pub fn rank(candidates: &[Candidate], w: &Weights, tie: u64) -> Option<Ranking> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = usize::try_from(tie % n as u64).unwrap_or(0);
    let room = candidates.iter().any(|c| c.active() && !c.saturated(w));
    // Each endpoint's tier and score, once.
    let keys: Vec<(u8, f64)> = candidates
        .iter()
        .map(|c| (c.tier(), c.score(w, room)))
        .collect();
    let key = |i: usize| keys.get(i).copied().unwrap_or((u8::MAX, f64::MAX));
    let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    // Stable: among equal keys the rotated order stands.
    order.sort_by(|a, b| {
        let ((ta, sa), (tb, sb)) = (key(*a), key(*b));
        ta.cmp(&tb).then(sa.total_cmp(&sb))
    });
    let first = *order.first()?;
    let chosen = candidates.get(first)?;
    let load = chosen.load(w);
    // Against the least loaded of its tier: a lower tier is never chosen for its load.
    let least_load = candidates
        .iter()
        .filter(|c| c.tier() == chosen.tier())
        .map(|c| c.load(w))
        .fold(f64::MAX, f64::min);
    let reason = if load <= least_load {
        Reason::Load
    } else if chosen.prefix_tokens > 0.0 {
        Reason::Prefix
    } else if chosen.lora_loaded {
        Reason::Lora
    } else {
        Reason::Spread
    };
    Some(Ranking {
        order,
        reason,
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(waiting: f64, running: f64, kv: f64) -> Option<EngineLoad> {
        Some(EngineLoad {
            waiting,
            running,
            kv_cache: Some(kv),
            loras: Vec::new(),
        })
    }

    /// An endpoint others load (the engine's report, none of it the gateway's).
    fn c(waiting: f64, running: f64, prefix_tokens: f64) -> Candidate {
        Candidate {
            engine: engine(waiting, running, 0.1),
            foreign: waiting + running,
            prefix_tokens,
            ..Candidate::default()
        }
    }

    /// An endpoint of `slots` slots with the gateway's `n` requests on it (and the engine's
    /// report saying as much).
    fn ours(n: u64, slots: u64, prefix_tokens: f64) -> Candidate {
        Candidate {
            engine: engine(n.saturating_sub(slots) as f64, n.min(slots) as f64, 0.1),
            in_flight: n,
            slots: Some(slots),
            prefix_tokens,
            ..Candidate::default()
        }
    }

    #[test]
    fn the_least_loaded_endpoint_first_and_the_rest_in_order() {
        let w = Weights::default();
        let r = rank(
            &[c(3.0, 4.0, 0.0), c(0.0, 1.0, 0.0), c(0.0, 3.0, 0.0)],
            &w,
            0,
        )
        .unwrap();
        assert_eq!(r.order, [1, 2, 0]);
        assert_eq!(r.reason, Reason::Load);
    }

    #[test]
    fn a_prefix_wins_over_a_slightly_lighter_endpoint_but_not_over_saturation() {
        let w = Weights::default();
        // Endpoint 0 holds the conversation and runs one more request: the prefix wins.
        let r = rank(&[c(0.0, 3.0, 3000.0), c(0.0, 2.0, 0.0)], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // A queue of two there: two turns' wait beats prefilling 3,000 tokens elsewhere.
        let r = rank(&[c(2.0, 4.0, 3000.0), c(0.0, 4.0, 0.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // Saturated (a queue of 5): the prefix no longer attracts; the request spills.
        let r = rank(&[c(5.0, 4.0, 3000.0), c(0.0, 4.0, 0.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
        // A longer wait than the prefill it saves: load wins even without saturation.
        let r = rank(&[c(4.0, 8.0, 2000.0), c(0.0, 1.0, 0.0)], &w, 0).unwrap();
        assert_eq!(r.order[0], 1);
    }

    #[test]
    fn the_gateways_own_count_covers_a_lagging_engine_report() {
        let w = Weights::default();
        let stale_idle = Candidate {
            engine: engine(0.0, 0.0, 0.0),
            in_flight: 6,
            ..Candidate::default()
        };
        let r = rank(&[stale_idle, c(0.0, 2.0, 0.0)], &w, 0).unwrap();
        assert_eq!(r.order[0], 1);
        // No engine report at all: the gateway's counts alone.
        let blind = |n| Candidate {
            in_flight: n,
            ..Candidate::default()
        };
        assert_eq!(
            rank(&[blind(3), blind(1), blind(2)], &w, 0).unwrap().order,
            [1, 2, 0]
        );
    }

    #[test]
    fn the_gateways_own_requests_and_others_add_up_and_kv_costs_only_near_full() {
        let w = Weights::default();
        let both = Candidate {
            in_flight: 2,
            foreign: 1.0,
            ..Candidate::default()
        };
        assert_eq!(both.requests(), 3.0);
        // A KV cache below the knee costs nothing; a full one, the whole weight.
        let kv = |k: f64| Candidate {
            engine: engine(0.0, 0.0, k),
            ..Candidate::default()
        };
        assert_eq!(kv(0.5).load(&w), 0.0);
        assert!((kv(1.0).load(&w) - w.kv_cache).abs() < 1e-9);
        assert!((kv(0.9).load(&w) - w.kv_cache / 2.0).abs() < 1e-9);
    }

    #[test]
    fn an_endpoint_with_the_adapter_loaded_is_preferred_within_reason() {
        let w = Weights::default();
        let with_lora = Candidate {
            lora_loaded: true,
            ..c(0.0, 2.0, 0.0)
        };
        let r = rank(&[c(0.0, 1.0, 0.0), with_lora.clone()], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Lora));
        let busy_lora = Candidate {
            lora_loaded: true,
            ..c(3.0, 6.0, 0.0)
        };
        assert_eq!(
            rank(&[c(0.0, 1.0, 0.0), busy_lora], &w, 0).unwrap().order[0],
            0
        );
    }

    #[test]
    fn with_known_slots_a_long_cached_prefix_is_worth_a_wait_and_a_short_one_is_not() {
        let w = Weights::default();
        // Three of four slots busy: the prefix wins over an idle endpoint.
        let r = rank(&[ours(3, 4, 3000.0), ours(1, 4, 0.0)], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // All four busy: 3,000 cached tokens (300 ms of prefill on a fast GPU) are worth
        // waiting for a slot there...
        let r = rank(&[ours(4, 4, 3000.0), ours(3, 4, 0.0)], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // ...600 are not: the request goes where a slot is free.
        let r = rank(&[ours(4, 4, 600.0), ours(3, 4, 0.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
    }

    #[test]
    fn an_engine_report_of_the_gateways_own_finished_requests_costs_nothing() {
        let w = Weights::default();
        let full_by_us = ours(1, 1, 0.0);
        // Its report still shows a request, the gateway's, which has finished since: no
        // load from elsewhere.
        let drained = Candidate {
            engine: engine(0.0, 1.0, 0.1),
            slots: Some(1),
            ..Candidate::default()
        };
        let r = rank(&[full_by_us, drained], &w, 0).unwrap();
        assert_eq!(r.order, [1, 0]);
    }

    #[test]
    fn when_every_endpoint_is_saturated_the_request_waits_where_its_prefix_is() {
        let w = Weights::default();
        // Both with a queue of five or more, one more at the prefix's endpoint: worth it.
        let r = rank(&[ours(9, 4, 0.0), ours(10, 4, 3000.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Prefix));
        // Its queue far longer: load wins.
        let r = rank(&[ours(9, 4, 0.0), ours(15, 4, 3000.0)], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Load));
    }

    #[test]
    fn a_hot_prefix_spills_from_a_saturated_endpoint_while_another_has_room() {
        let w = Weights::default();
        // A queue of five at the prefix's endpoint, room elsewhere: however long the prefix.
        let r = rank(&[ours(9, 4, 30_000.0), ours(4, 4, 0.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
    }

    #[test]
    fn a_silent_endpoint_comes_last_and_draws_nothing_by_its_prefix() {
        let w = Weights::default();
        let silent = Candidate {
            engine: None,
            prefix_tokens: 3000.0,
            silent: true,
            ..Candidate::default()
        };
        let r = rank(&[silent, c(2.0, 6.0, 0.0), c(0.0, 3.0, 0.0)], &w, 0).unwrap();
        assert_eq!(r.order, [2, 1, 0]);
    }

    #[test]
    fn a_standby_region_comes_after_every_active_endpoint_even_a_full_one() {
        let w = Weights::default();
        let standby = Candidate {
            standby: true,
            ..ours(0, 4, 3000.0)
        };
        let silent = Candidate {
            engine: None,
            silent: true,
            ..ours(0, 4, 0.0)
        };
        let r = rank(&[standby, silent, ours(9, 4, 0.0)], &w, 0).unwrap();
        assert_eq!(r.order, [2, 1, 0]);
    }

    #[test]
    fn a_new_prefix_makes_its_home_where_recent_traffic_was_lightest() {
        let w = Weights::default();
        let recent = |r: f64, base: Candidate| Candidate { recent: r, ..base };
        // Endpoint 0 took twice its share lately, 1 half of it: a new prefix goes to 1 even
        // with two more requests running there at the moment.
        let r = rank(
            &[recent(1.0, ours(1, 4, 0.0)), recent(-0.5, ours(3, 4, 0.0))],
            &w,
            0,
        )
        .unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Spread));
        // Not at the price of waiting for a slot: a turn's wait outweighs half a share.
        let r = rank(
            &[recent(0.5, ours(1, 4, 0.0)), recent(0.0, ours(4, 4, 0.0))],
            &w,
            0,
        )
        .unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Load));
        // An even spread changes nothing.
        let r = rank(
            &[recent(0.0, ours(2, 4, 0.0)), recent(0.0, ours(1, 4, 0.0))],
            &w,
            0,
        )
        .unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
    }

    #[test]
    fn equal_endpoints_share_by_the_tie_breaker() {
        let w = Weights::default();
        let all = [c(0.0, 1.0, 0.0), c(0.0, 1.0, 0.0), c(0.0, 1.0, 0.0)];
        let firsts: Vec<usize> = (0..3)
            .map(|t| rank(&all, &w, t).unwrap().order[0])
            .collect();
        assert_eq!(firsts, [0, 1, 2]);
        assert_eq!(rank(&[], &w, 0), None);
    }
}
