//! Choosing the endpoint: load first, the prefix cache when it does not cost load.

use crate::engine::EngineLoad;
use serde::{Deserialize, Serialize};

/// How the picker weighs what it knows. Defaults suit a pool of equal GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Cost of one request waiting in an engine's queue (a running one costs 1).
    pub waiting: f64,
    /// Cost of a full KV cache (scaled by the utilisation, 0 to 1).
    pub kv_cache: f64,
    /// What holding the whole prompt prefix in cache is worth, in requests of load; a
    /// partial prefix is worth its share.
    pub prefix: f64,
    /// What having the requested LoRA adapter already loaded is worth, in requests of load
    /// (an engine that must load it first makes the request wait).
    pub lora: f64,
    /// An endpoint with this many requests waiting (or a KV cache this full) is saturated:
    /// its prefix no longer attracts requests.
    pub saturated_waiting: f64,
    pub saturated_kv_cache: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            waiting: 2.0,
            kv_cache: 4.0,
            prefix: 3.0,
            lora: 2.0,
            saturated_waiting: 2.0,
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
    /// Share of the prompt's indexed prefix it holds, 0 to 1.
    pub prefix: f64,
    /// The requested model is a LoRA adapter this endpoint has loaded.
    pub lora_loaded: bool,
    /// Requests it serves at once (its batch slots), when the pool says.
    pub slots: Option<u64>,
}

/// What a request over an endpoint's slots costs in the score: more than any load.
const FULL_PENALTY: f64 = 1e6;

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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Prefix => "prefix",
            Self::Lora => "lora",
        }
    }
}

/// The endpoints in the order to try them (best first; the rest are Envoy's retry
/// order), and why the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub order: Vec<usize>,
    pub reason: Reason,
    /// The first endpoint's load and score, for the decision record.
    pub load: f64,
    pub score: f64,
}

impl Candidate {
    /// Requests on the endpoint: the engine's count, or the gateway's own when that is
    /// higher (the engine's report lags by up to a scrape interval).
    pub fn load(&self, w: &Weights) -> f64 {
        let engine = self.engine.as_ref().map_or(0.0, |e| {
            e.running + w.waiting * e.waiting + w.kv_cache * e.kv_cache.unwrap_or(0.0)
        });
        engine.max(self.in_flight as f64)
    }

    /// Requests on it, waiting or running: the engine's count or the gateway's, the higher.
    pub fn requests(&self) -> f64 {
        let engine = self.engine.as_ref().map_or(0.0, |e| e.running + e.waiting);
        engine.max(self.in_flight as f64)
    }

    /// No room: its queue or KV cache is full by the engine's report, or (with known
    /// slots) one more request would have to wait for a slot.
    pub fn saturated(&self, w: &Weights) -> bool {
        let engine_full = self.engine.as_ref().is_some_and(|e| {
            e.waiting >= w.saturated_waiting
                || e.kv_cache.is_some_and(|k| k >= w.saturated_kv_cache)
        });
        let slots_full = self.slots.is_some_and(|s| self.requests() + 1.0 > s as f64);
        engine_full || slots_full
    }

    fn score(&self, w: &Weights) -> f64 {
        // With known slots, the gateway's own count is exact: an endpoint whose slots its
        // requests fill comes after every endpoint with room, whatever a lagging engine
        // report says.
        let full = self
            .slots
            .filter(|s| self.in_flight >= *s)
            .map_or(0.0, |s| FULL_PENALTY * (self.in_flight - s + 1) as f64);
        // Affinity is worth a shorter prefill or no adapter load, never a wait for a slot.
        if self.saturated(w) {
            return self.load(w) + full;
        }
        let lora = if self.lora_loaded { w.lora } else { 0.0 };
        self.load(w) - w.prefix * self.prefix.clamp(0.0, 1.0) - lora
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
    let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    let score = |i: usize| candidates.get(i).map_or(f64::MAX, |c| c.score(w));
    // Stable: among equal scores the rotated order stands.
    order.sort_by(|a, b| score(*a).total_cmp(&score(*b)));
    let first = *order.first()?;
    let chosen = candidates.get(first)?;
    let least_load = candidates
        .iter()
        .map(|c| c.load(w))
        .fold(f64::MAX, f64::min);
    let reason = if chosen.load(w) <= least_load {
        Reason::Load
    } else if chosen.lora_loaded && chosen.prefix == 0.0 {
        Reason::Lora
    } else {
        Reason::Prefix
    };
    Some(Ranking {
        order,
        reason,
        load: chosen.load(w),
        score: chosen.score(w),
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

    fn c(waiting: f64, running: f64, prefix: f64) -> Candidate {
        Candidate {
            engine: engine(waiting, running, 0.1),
            in_flight: 0,
            prefix,
            lora_loaded: false,
            slots: None,
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
        let r = rank(&[c(0.0, 3.0, 1.0), c(0.0, 2.0, 0.0)], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // Saturated (a queue of 2): the prefix no longer attracts; the request spills.
        let r = rank(&[c(2.0, 4.0, 1.0), c(0.0, 4.0, 0.0)], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
        // Far more loaded: load wins even without saturation.
        let r = rank(&[c(1.0, 8.0, 1.0), c(0.0, 1.0, 0.0)], &w, 0).unwrap();
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
            ..c(1.0, 6.0, 0.0)
        };
        assert_eq!(
            rank(&[c(0.0, 1.0, 0.0), busy_lora], &w, 0).unwrap().order[0],
            0
        );
    }

    #[test]
    fn with_known_slots_affinity_never_costs_a_wait() {
        let w = Weights::default();
        let slots = |c: Candidate| Candidate {
            slots: Some(4),
            ..c
        };
        // Three of four slots busy: the prefix still wins over an idle endpoint.
        let r = rank(&[slots(c(0.0, 3.0, 1.0)), slots(c(0.0, 1.0, 0.0))], &w, 1).unwrap();
        assert_eq!((r.order[0], r.reason), (0, Reason::Prefix));
        // All four busy: the request would wait for a slot there; it goes elsewhere.
        let r = rank(&[slots(c(0.0, 4.0, 1.0)), slots(c(0.0, 3.0, 0.0))], &w, 0).unwrap();
        assert_eq!((r.order[0], r.reason), (1, Reason::Load));
    }

    #[test]
    fn an_endpoint_whose_slots_the_gateway_fills_comes_last_whatever_its_report() {
        let w = Weights::default();
        let full_by_us = Candidate {
            in_flight: 1,
            slots: Some(1),
            ..c(0.0, 0.0, 0.0)
        };
        let busy_by_report = Candidate {
            slots: Some(1),
            ..c(0.0, 1.0, 0.0)
        };
        let r = rank(&[full_by_us, busy_by_report], &w, 0).unwrap();
        assert_eq!(r.order, [1, 0]);
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
