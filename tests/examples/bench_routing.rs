//! The routing benchmark (`scripts/bench-routing.sh`): one pool of four simulated engines
//! (sluice-mock-llm's engine simulation), the whole Sluice chain in real Envoy, and a
//! workload of multi-turn chats from eight tenants with long system prompts, arriving
//! open-loop (Poisson) at 50%, 80% and 100% of the pool's capacity. For each balancing mode —
//! round robin, least_request, maglev on a prefix hash, endpoint-picker — it reports time to
//! first token p50/p99, end-to-end latency p50, completed requests per second, the engines'
//! prefix-cache hit rate, prompt tokens they had to prefill, and their mean queue.
//!
//! Environment: BENCH_ROUTING_SECONDS (arrivals per cell, default 15), BENCH_ROUTING_LOADS
//! (default "0.5,0.8,1.0"), BENCH_ROUTING_MODES (default all four), BENCH_ROUTING_PICKER
//! (endpoint-picker settings to try, JSON), BENCH_ROUTING_POOL (pool options to try, JSON),
//! BENCH_ROUTING_SYSTEM_BYTES (each tenant's system prompt, default 12,000).

use serde_json::{json, Value};
use sluice_e2e::load::{drive, percentile, Outcome, Rng};
use sluice_e2e::{key_record, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "sk-sluice-bench-routing-0123456789abcdef";
const ENDPOINTS: usize = 4;
const SLOTS: u64 = 4;
const PREFILL_US: u64 = 100;
/// A large model's decode step at a full batch (20 ms a token), and short answers: the
/// service time of a request is GPU-like while the gateway relays few events per second
/// (with 4 ms tokens and 16-64 of them, two cores spent their time relaying the stream and
/// the cells measured the machine, not the balancing).
const DECODE_US: u64 = 20_000;
const SLOWDOWN_PCT: u64 = 10;
const TENANTS: usize = 8;
/// Each tenant's system prompt, by default: 12 KB, about 3,000 tokens (agents' and RAG
/// prompts run to thousands of tokens).
const SYSTEM_BYTES: usize = 12_000;
const MAX_TURNS: usize = 6;
/// Unmeasured traffic before each cell.
const WARMUP_SECONDS: f64 = 5.0;

/// A JSON value from the environment variable `name`, when it is set and parses.
fn env_json(name: &str) -> Option<Value> {
    std::env::var(name)
        .ok()
        .and_then(|v| serde_json::from_str(&v).ok())
}

/// The system prompts' size: BENCH_ROUTING_SYSTEM_BYTES or [`SYSTEM_BYTES`].
fn system_bytes() -> usize {
    std::env::var("BENCH_ROUTING_SYSTEM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SYSTEM_BYTES)
}

/// Prefix cache per engine, in 64-byte blocks: four system prompts' worth, what two
/// tenants' prompts and conversations take (what affinity gives an engine), less than the
/// eight tenants' together (what every engine would need without affinity).
fn cache_blocks() -> usize {
    4 * system_bytes() / 64
}

const WORDS: [&str; 16] = [
    "table", "query", "join", "index", "latency", "replica", "tenant", "budget", "schema",
    "vector", "cache", "shard", "region", "stream", "window", "token",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request of the workload: when it arrives (seconds from the start), its messages and
/// its output length.
struct Arrival {
    at: f64,
    messages: Vec<Value>,
    max_tokens: u64,
}

impl sluice_e2e::load::Arrival for Arrival {
    fn at(&self) -> f64 {
        self.at
    }
    fn body(&self) -> Value {
        json!({"model": "mock-model", "stream": true, "max_tokens": self.max_tokens,
               "messages": self.messages})
    }
}

/// Arrivals at `rate` per second for `seconds`: a tenant at random; 60% continue one of the
/// tenant's open conversations (its history plus a new question), the rest start one.
fn workload(rate: f64, seconds: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed | 1);
    // The tenants' system prompts are the same whatever the seed (the warm-up's arrivals
    // share them with the measured ones).
    let mut prompts = Rng(0x5eed);
    let bytes = system_bytes();
    let systems: Vec<String> = (0..TENANTS)
        .map(|t| {
            let mut s = format!("You are the assistant of tenant {t}. Rules: ");
            while s.len() < bytes {
                s.push_str(&sentence(&mut prompts, 12));
                s.push_str(". ");
            }
            s
        })
        .collect();
    let mut open: Vec<Vec<Vec<Value>>> = vec![Vec::new(); TENANTS];
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.gap(rate);
        if t >= seconds {
            return out;
        }
        let tenant = (rng.next_u64() % TENANTS as u64) as usize;
        let conversations = &mut open[tenant];
        let continue_one = !conversations.is_empty() && rng.unit() < 0.6;
        let messages = if continue_one {
            let i = (rng.next_u64() % conversations.len() as u64) as usize;
            let c = &mut conversations[i];
            c.push(json!({"role": "assistant", "content": sentence(&mut rng, 40)}));
            c.push(json!({"role": "user", "content": sentence(&mut rng, 20)}));
            let m = c.clone();
            if c.len() > 2 * MAX_TURNS {
                conversations.remove(i);
            }
            m
        } else {
            let c = vec![
                json!({"role": "system", "content": systems[tenant]}),
                json!({"role": "user", "content": sentence(&mut rng, 20)}),
            ];
            conversations.push(c.clone());
            c
        };
        out.push(Arrival {
            at: t,
            messages,
            max_tokens: rng.range(4, 16),
        });
    }
}

/// The pool's capacity in requests per second with no prefix cache: each endpoint runs
/// SLOTS sequences, each costing a full prefill and its decode at a full batch.
fn capacity(arrivals: &[Arrival]) -> f64 {
    let n = arrivals.len().max(1) as f64;
    let prompt_tokens: f64 = arrivals
        .iter()
        .map(|a| {
            a.messages
                .iter()
                .map(|m| m["content"].as_str().unwrap_or("").len())
                .sum::<usize>() as f64
                / 4.0
        })
        .sum::<f64>()
        / n;
    let output: f64 = arrivals.iter().map(|a| a.max_tokens as f64).sum::<f64>() / n;
    let per_token = DECODE_US as f64 * (1.0 + SLOWDOWN_PCT as f64 / 100.0 * (SLOTS - 1) as f64);
    let service_s = (prompt_tokens * PREFILL_US as f64 + output * per_token) / 1e6;
    ENDPOINTS as f64 * SLOTS as f64 / service_s
}

/// A counter or gauge from an engine's /metrics page (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    sluice_e2e::engine_metric(url, name).await.unwrap_or(0.0)
}

/// The engines' prompt tokens prefilled, prefix-cache hits and queries (tokens), summed.
async fn cache_counters(engines: &[String]) -> (f64, f64, f64) {
    let mut sum = (0.0, 0.0, 0.0);
    for e in engines {
        sum.0 += metric(e, "vllm:prompt_tokens_total").await;
        sum.1 += metric(e, "vllm:prefix_cache_hits_total").await;
        sum.2 += metric(e, "vllm:prefix_cache_queries_total").await;
    }
    sum
}

async fn stack(mode: &str) -> Stack {
    let (mut pool_options, router) = match mode {
        "round_robin" => (json!({"lb": "round_robin"}), json!({})),
        "least_request" => (json!({}), json!({})),
        "maglev_prefix" => (
            json!({"lb": "maglev"}),
            json!({"affinity": {"from": ["prefix"], "prefix_bytes": 1024}}),
        ),
        _ => (json!({"engine": "vllm"}), json!({})),
    };
    // Every mode knows the engines' batch slots and gets the same connection headroom (an
    // engine pool's default): Envoy's connection pools are per worker, and with exactly
    // the slots one worker's idle connections made another queue its requests for
    // seconds (least_request's TTFT p99 5.3 s against 0.2 s with headroom, one run each).
    pool_options["max_concurrency"] = json!(SLOTS);
    pool_options["max_connections"] = json!(4 * SLOTS);
    // BENCH_ROUTING_POOL: pool options to try (JSON, merged), e.g. {"max_concurrency": 64}.
    if let Some(extra) = env_json("BENCH_ROUTING_POOL") {
        sluice_e2e::merge_fields(&mut pool_options, &extra);
    }
    let mut router_config = json!({"models": {"*": {"targets": [{"pool": "pool-gpu"}]}}});
    if let Some(a) = router.get("affinity") {
        router_config["affinity"] = a.clone();
    }
    let sim = [
        "--sim-slots".to_string(),
        SLOTS.to_string(),
        "--sim-prefill-us-per-token".into(),
        PREFILL_US.to_string(),
        "--sim-decode-us-per-token".into(),
        DECODE_US.to_string(),
        "--sim-batch-slowdown-pct".into(),
        SLOWDOWN_PCT.to_string(),
        "--sim-cache-blocks".into(),
        cache_blocks().to_string(),
        // A KV cache of 64k tokens (a small GPU's): a full batch of long prompts uses a
        // share of it, as on a real engine, while the prefix cache above stays small.
        "--sim-kv-tokens".into(),
        "65536".into(),
        "--sim-metrics-lag-ms".into(),
        "250".into(),
        "--reply-tokens".into(),
        "1000".into(),
    ];
    let mut vars = vec![
        ("model_router_config".into(), router_config),
        ("max_request_bytes".into(), json!(4 * 1024 * 1024)),
    ];
    // BENCH_ROUTING_PICKER: endpoint-picker settings to try (JSON, as the template's
    // `endpoint_picker` variable), e.g. {"weights": {"prefix": 2}}.
    if let Some(picker) = env_json("BENCH_ROUTING_PICKER") {
        vars.push(("endpoint_picker".into(), picker));
    }
    let s = Stack::start(StackOptions {
        pools: vec!["pool-gpu"],
        backends: ENDPOINTS,
        pool_options: vec![("pool-gpu", pool_options)],
        mock_args: sim.to_vec(),
        keys: KeyAuthConfig {
            keys: vec![key_record("key_bench", KEY, "bench")],
            ..Default::default()
        },
        vars,
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    s
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::var("BENCH_ROUTING_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0);
    let loads: Vec<f64> = std::env::var("BENCH_ROUTING_LOADS")
        .unwrap_or_else(|_| "0.5,0.8,1.0".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let modes_env = std::env::var("BENCH_ROUTING_MODES")
        .unwrap_or_else(|_| "round_robin,least_request,maglev_prefix,picker".into());
    let modes: Vec<&str> = modes_env.split(',').map(str::trim).collect();
    // The capacity from a workload at a nominal rate (its mix, not its length, matters).
    let cap = capacity(&workload(10.0, 60.0, 7));
    println!(
        "pool: {ENDPOINTS} simulated engines x {SLOTS} slots, prefill {PREFILL_US} us/token, decode {DECODE_US} us/token (+{SLOWDOWN_PCT}%/running); system prompts {} bytes, prefix cache {} blocks of 64 bytes per engine; capacity without prefix cache ~{cap:.1} req/s; {seconds} s of arrivals per cell",
        system_bytes(),
        cache_blocks()
    );
    println!("| load | mode | sent | ok/s | TTFT p50 | TTFT p99 | e2e p50 | prefix hit | prefilled tokens | mean queue |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for load in &loads {
        let arrivals = Arc::new(workload(cap * load, seconds, 42));
        for mode in &modes {
            let s = stack(mode).await;
            let url = format!("{}/v1/chat/completions", s.gateway);
            let engines: Vec<String> = s
                .backends("pool-gpu")
                .iter()
                .map(|m| m.url.clone())
                .collect();
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap();
            // Warm-up, not measured: the same kind of traffic (another seed) for
            // WARMUP_SECONDS, so every mode starts with the system prompts cached somewhere
            // and the cells measure steady state, not eight cold misses.
            let warmup = Arc::new(workload(cap * load, WARMUP_SECONDS, 4242));
            drive(&client, &url, KEY, warmup, Instant::now()).await;
            let before = cache_counters(&engines).await;
            let start = Instant::now();
            // Sample the engines' queues while the load runs.
            let sampling = {
                let engines = engines.clone();
                tokio::spawn(async move {
                    let mut sum = 0.0;
                    let mut n: f64 = 0.0;
                    while start.elapsed().as_secs_f64() < seconds {
                        for e in &engines {
                            sum += metric(e, "vllm:num_requests_waiting").await;
                        }
                        n += 1.0;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    sum / n.max(1.0)
                })
            };
            let done = drive(&client, &url, KEY, arrivals.clone(), start).await;
            let elapsed = start.elapsed().as_secs_f64();
            let queue = sampling.await.unwrap_or(f64::NAN);
            // Let the lagging gauges catch up before reading the counters.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = cache_counters(&engines).await;
            let ok: Vec<&Outcome> = done.iter().filter(|o| o.ok).collect();
            let mut ttft: Vec<f64> = ok.iter().map(|o| o.ttft * 1000.0).collect();
            let mut total: Vec<f64> = ok.iter().map(|o| o.total * 1000.0).collect();
            let queries = after.2 - before.2;
            let hit = if queries > 0.0 {
                (after.1 - before.1) / queries
            } else {
                0.0
            };
            println!(
                "| {:.0}% | {mode} | {} | {:.1} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0}% | {:.0} | {:.1} |",
                load * 100.0,
                arrivals.len(),
                ok.len() as f64 / elapsed,
                percentile(&mut ttft, 0.5),
                percentile(&mut ttft, 0.99),
                percentile(&mut total, 0.5),
                hit * 100.0,
                after.0 - before.0,
                queue,
            );
            if std::env::var("BENCH_ROUTING_DEBUG").is_ok() {
                let log = s.access_log();
                let mut hosts = std::collections::BTreeMap::<String, usize>::new();
                let mut statuses = std::collections::BTreeMap::<String, usize>::new();
                let mut queued: Vec<f64> = Vec::new();
                for l in &log {
                    *hosts
                        .entry(l["upstream_host"].as_str().unwrap_or("-").to_string())
                        .or_default() += 1;
                    *statuses.entry(l["status"].to_string()).or_default() += 1;
                    if let Some(d) = l["endpoint"]
                        .as_str()
                        .and_then(|e| serde_json::from_str::<Value>(e).ok())
                    {
                        if let Some(q) = d["queued_ms"].as_f64() {
                            queued.push(q);
                        }
                    }
                }
                for l in s.prometheus().await.lines().filter(|l| {
                    l.starts_with("sluice_endpoint_in_flight")
                        || l.starts_with("sluice_endpoint_queued")
                }) {
                    eprintln!("  {l}");
                }
                // The tail: the slowest first bytes and how each was placed.
                let mut slow: Vec<&Value> = log.iter().collect();
                slow.sort_by(|a, b| {
                    b["ttfb_ms"]
                        .as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&a["ttfb_ms"].as_f64().unwrap_or(0.0))
                });
                for l in slow.iter().take(8) {
                    eprintln!(
                        "  slow: ttfb {} ms prompt {} tokens, {} {}",
                        l["ttfb_ms"], l["prompt_tokens"], l["timestamp"], l["endpoint"]
                    );
                }
                eprintln!("{mode}: hosts {hosts:?} statuses {statuses:?} queued {} p50 {:.0} ms max {:.0} ms",
                    queued.len(), percentile(&mut queued.clone(), 0.5), queued.iter().cloned().fold(0.0, f64::max));
            }
            drop(s);
        }
    }
}
