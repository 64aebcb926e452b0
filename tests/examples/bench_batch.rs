//! The batch benchmark (`scripts/bench-batch.sh`): does a large batch fill a pool's idle
//! capacity without slowing interactive traffic? One pool of simulated engines
//! (sluice-mock-llm's engine simulation) behind the whole Sluice chain in real Envoy,
//! endpoint-picker with flow control, sluice-batch sending a 10,000-line batch through the
//! gateway. Three phases on one stack:
//!
//! 1. interactive traffic alone (streamed chats arriving open-loop, Poisson): latency p50/p99
//!    and the share of the pool's slots it keeps busy;
//! 2. the batch alone on the idle pool: its lines per second (what idle capacity gives it);
//! 3. the same interactive traffic (same seed) with the batch running: latency p50/p99 and
//!    the batch's lines per second, against what the slots interactive leaves idle would
//!    give it (phase 2's rate times the idle share).
//!
//! Environment: BENCH_BATCH_SECONDS (each phase, default 30), BENCH_BATCH_LOAD (interactive
//! load, share of the pool's capacity, default 0.4), BENCH_BATCH_HEADROOM (endpoint-picker
//! `flow.batch_headroom` values to compare, `off` for flow control off; default "1,2,4,off").

use serde_json::{json, Value};
use sluice_e2e::load::{percentile, Outcome, Rng};
use sluice_e2e::{key_record, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "sk-sluice-bench-interactive-0123456789";
const OWNER: &str = "sk-sluice-bench-batch-owner-0123456789";
const ENDPOINTS: usize = 2;
const SLOTS: u64 = 8;
const PREFILL_US: u64 = 100;
/// A decode step of 20 ms, 2% slower per other running sequence: decode is bound by memory
/// bandwidth, so a GPU's step grows slowly with the batch until compute bounds it (vLLM's
/// inter-token latency rises by a few percent per added sequence at small batches).
const DECODE_US: u64 = 20_000;
const SLOWDOWN_PCT: u64 = 2;
const BATCH_LINES: usize = 10_000;
const BATCH_MAX_TOKENS: u64 = 16;

struct Arrival {
    at: f64,
    prompt: String,
    max_tokens: u64,
}

impl sluice_e2e::load::Arrival for Arrival {
    fn at(&self) -> f64 {
        self.at
    }
    fn body(&self) -> Value {
        json!({"model": "mock-model", "stream": true, "max_tokens": self.max_tokens,
               "messages": [{"role": "user", "content": self.prompt}]})
    }
}

/// Interactive arrivals, sent open-loop from now.
async fn drive(client: &reqwest::Client, url: &str, arrivals: Arc<Vec<Arrival>>) -> Vec<Outcome> {
    sluice_e2e::load::drive(client, url, KEY, arrivals, Instant::now()).await
}

/// Interactive chats at `rate` per second for `seconds`: short prompts, 8 to 24 tokens out.
fn workload(rate: f64, seconds: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.gap(rate);
        if t >= seconds {
            return out;
        }
        let n = out.len();
        out.push(Arrival {
            at: t,
            prompt: format!("Question {n}: {}", "why is the sky blue? ".repeat(8)),
            max_tokens: rng.range(8, 24),
        });
    }
}

/// A request's service time at a batch of `running` sequences.
fn service_s(prompt_bytes: f64, output: f64, running: f64) -> f64 {
    let per_token = DECODE_US as f64 * (1.0 + SLOWDOWN_PCT as f64 / 100.0 * (running - 1.0));
    (prompt_bytes / 4.0 * PREFILL_US as f64 + output * per_token) / 1e6
}

/// The pool's interactive capacity in requests per second (every slot busy).
fn capacity(arrivals: &[Arrival]) -> f64 {
    let n = arrivals.len().max(1) as f64;
    let prompt = arrivals.iter().map(|a| a.prompt.len() as f64).sum::<f64>() / n;
    let output = arrivals.iter().map(|a| a.max_tokens as f64).sum::<f64>() / n;
    ENDPOINTS as f64 * SLOTS as f64 / service_s(prompt, output, SLOTS as f64)
}

/// Latency p50/p99 (ms): first token, then whole request; and the share that failed.
fn latency(done: &[Outcome]) -> ([f64; 4], f64) {
    let ok: Vec<&Outcome> = done.iter().filter(|o| o.ok).collect();
    let mut ttft: Vec<f64> = ok.iter().map(|o| o.ttft * 1000.0).collect();
    let mut total: Vec<f64> = ok.iter().map(|o| o.total * 1000.0).collect();
    (
        [
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.99),
            percentile(&mut total, 0.5),
            percentile(&mut total, 0.99),
        ],
        1.0 - ok.len() as f64 / done.len().max(1) as f64,
    )
}

/// Batch lines answered so far (the access log's records of batch lines, status 200).
fn batch_lines_done(s: &Stack) -> usize {
    s.batch_records()
        .iter()
        .filter(|l| l["status"] == 200)
        .count()
}

/// Mean running sequences per endpoint, sampled every 200 ms until `until`.
async fn sample_running(engines: Vec<String>, until: Instant) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    while Instant::now() < until {
        for e in &engines {
            sum += sluice_e2e::engine_metric(e, "vllm:num_requests_running")
                .await
                .unwrap_or(0.0);
        }
        n += engines.len() as f64;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sum / f64::max(n, 1.0)
}

async fn stack(headroom: Option<u64>) -> Stack {
    let sim = [
        "--sim-slots",
        &SLOTS.to_string(),
        "--sim-prefill-us-per-token",
        &PREFILL_US.to_string(),
        "--sim-decode-us-per-token",
        &DECODE_US.to_string(),
        "--sim-batch-slowdown-pct",
        &SLOWDOWN_PCT.to_string(),
        "--sim-metrics-lag-ms",
        "100",
        "--reply-tokens",
        "1000",
    ]
    .map(String::from);
    let s = Stack::start(StackOptions {
        pools: vec!["pool-gpu"],
        backends: ENDPOINTS,
        pool_options: vec![(
            "pool-gpu",
            json!({"engine": "vllm", "max_concurrency": SLOTS, "max_connections": 4 * SLOTS}),
        )],
        mock_args: sim.to_vec(),
        keys: KeyAuthConfig {
            keys: vec![
                key_record("key_interactive", KEY, "app"),
                key_record("key_batch", OWNER, "offline"),
            ],
            ..Default::default()
        },
        vars: vec![
            (
                "model_router_config".into(),
                json!({"models": {"*": {"targets": [{"pool": "pool-gpu"}]}}}),
            ),
            (
                "endpoint_picker".into(),
                json!({"flow": {"enabled": headroom.is_some(),
                                "batch_headroom": headroom.unwrap_or(0)}}),
            ),
        ],
        batch: true,
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    s
}

/// Upload BATCH_LINES lines and start a batch of them as the batch owner; its id.
async fn start_batch(s: &Stack) -> String {
    let text: String = (0..BATCH_LINES)
        .map(|i| {
            json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "mock-model", "max_tokens": BATCH_MAX_TOKENS,
                            "messages": [{"role": "user", "content": format!("Summarize document {i}: {}", "lorem ipsum ".repeat(12))}]}})
            .to_string()
                + "\n"
        })
        .collect();
    let file = s.upload_batch_input(OWNER, text).await;
    s.create_batch(OWNER, &file).await
}

async fn cancel(s: &Stack, client: &reqwest::Client, id: &str) {
    let _ = client
        .post(format!("{}/v1/batches/{id}/cancel", s.gateway))
        .header("authorization", format!("Bearer {OWNER}"))
        .send()
        .await;
}

/// Lines per second the batch completes over `seconds` (after `warm` seconds of ramp-up).
async fn batch_rate(s: &Stack, warm: f64, seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(warm)).await;
    let before = batch_lines_done(s);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    (batch_lines_done(s) - before) as f64 / seconds
}

#[tokio::main]
async fn main() {
    let env_f64 = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env_f64("BENCH_BATCH_SECONDS", 30.0);
    let load = env_f64("BENCH_BATCH_LOAD", 0.4);
    // A headroom, or `off`: flow control off (batch lines reach the engines' queues; only
    // the service's pace holds them back).
    let headrooms: Vec<Option<u64>> = std::env::var("BENCH_BATCH_HEADROOM")
        .unwrap_or_else(|_| "1,2,4,off".into())
        .split(',')
        .map(|v| v.trim().parse().ok())
        .collect();
    let cap = capacity(&workload(10.0, 60.0, 7));
    let arrivals = Arc::new(workload(cap * load, seconds, 42));
    let batch_line_s = service_s(200.0, BATCH_MAX_TOKENS as f64, SLOTS as f64);
    println!(
        "pool: {ENDPOINTS} simulated engines x {SLOTS} slots, decode {DECODE_US} us/token (+{SLOWDOWN_PCT}%/running), prefill {PREFILL_US} us/token; interactive: {} streamed chats in {seconds} s ({:.0}% of ~{cap:.1} req/s); batch: {BATCH_LINES} lines of {BATCH_MAX_TOKENS} tokens (a full pool: ~{:.0} lines/s)",
        arrivals.len(),
        load * 100.0,
        ENDPOINTS as f64 * SLOTS as f64 / batch_line_s
    );
    println!("| headroom | phase | TTFT p50 | TTFT p99 | e2e p50 | e2e p99 | failed | batch lines/s | slots busy (interactive) | batch share of idle |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    for h in headrooms {
        let s = stack(h).await;
        let headroom = h.map_or("off".to_string(), |h| h.to_string());
        let url = format!("{}/v1/chat/completions", s.gateway);
        let engines: Vec<String> = s
            .backends("pool-gpu")
            .iter()
            .map(|m| m.url.clone())
            .collect();
        // Warm-up (unmeasured): connections, the first requests' costs.
        drive(&client, &url, Arc::new(workload(cap * load, 3.0, 4242))).await;
        // 1. Interactive alone.
        let sampling = tokio::spawn(sample_running(
            engines.clone(),
            Instant::now() + Duration::from_secs_f64(seconds),
        ));
        let alone = drive(&client, &url, arrivals.clone()).await;
        let running = sampling.await.unwrap_or(f64::NAN);
        let busy = running / SLOTS as f64;
        let (lat, failed) = latency(&alone);
        println!(
            "| {headroom} | interactive alone | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1}% | - | {:.0}% | - |",
            lat[0], lat[1], lat[2], lat[3], failed * 100.0, busy * 100.0
        );
        // 2. The batch alone on the idle pool.
        let id = start_batch(&s).await;
        let window = seconds.min(20.0);
        let sampling = tokio::spawn(sample_running(
            engines.clone(),
            Instant::now() + Duration::from_secs_f64(5.0 + window),
        ));
        let idle_rate = batch_rate(&s, 5.0, window).await;
        let batch_busy = sampling.await.unwrap_or(f64::NAN) / SLOTS as f64;
        if std::env::var("BENCH_BATCH_DEBUG").is_ok() {
            let log = s.batch_log(0);
            for l in log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!("  {l}");
            }
        }
        println!(
            "| {headroom} | batch alone | - | - | - | - | - | {idle_rate:.1} | 0% (batch: {:.0}%) | - |",
            batch_busy * 100.0
        );
        // 3. Interactive with the batch running.
        let (before, started) = (batch_lines_done(&s), Instant::now());
        let with = drive(&client, &url, arrivals.clone()).await;
        let with_rate = (batch_lines_done(&s) - before) as f64 / started.elapsed().as_secs_f64();
        let (lat2, failed2) = latency(&with);
        let idle_share = (with_rate / (idle_rate * (1.0 - busy).max(1e-9))) * 100.0;
        println!(
            "| {headroom} | interactive + batch | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1}% | {with_rate:.1} | {:.0}% | {idle_share:.0}% |",
            lat2[0], lat2[1], lat2[2], lat2[3], failed2 * 100.0, busy * 100.0
        );
        println!(
            "| {headroom} | ratio | {:.2} | {:.2} | {:.2} | {:.2} | | | | |",
            lat2[0] / lat[0],
            lat2[1] / lat[1],
            lat2[2] / lat[2],
            lat2[3] / lat[3]
        );
        cancel(&s, &client, &id).await;
        drop(s);
    }
}
