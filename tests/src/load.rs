//! Open-loop load for the benchmarks (`tests/examples`): a seeded generator, streamed
//! requests timed to their first byte and their end, arrivals sent each at its time.

use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small deterministic generator (a workload is the same for every run of a seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = sluice_common::hash::xorshift64(self.0);
        self.0
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// The time to the next arrival of a Poisson process of `rate` per second.
    pub fn gap(&mut self, rate: f64) -> f64 {
        -self.unit().max(1e-9).ln() / rate
    }
}

/// One request of a workload: when it is sent (seconds from the start) and its body.
pub trait Arrival: Send + Sync + 'static {
    fn at(&self) -> f64;
    fn body(&self) -> Value;
}

/// How a request went: seconds to its first byte and to its end; `ok` when it got a 2xx
/// and read its whole body.
#[derive(Default, Clone, Copy)]
pub struct Outcome {
    pub ttft: f64,
    pub total: f64,
    pub ok: bool,
}

/// POST `body` as `key` and read the answer as it streams.
pub async fn send(client: reqwest::Client, url: String, key: &str, body: &Value) -> Outcome {
    let start = Instant::now();
    let Ok(r) = client
        .post(url)
        .header("authorization", format!("Bearer {key}"))
        .json(body)
        .send()
        .await
    else {
        return Outcome::default();
    };
    if !r.status().is_success() {
        return Outcome::default();
    }
    let mut stream = r.bytes_stream();
    let mut ttft = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if !c.is_empty() && ttft.is_none() => ttft = Some(start.elapsed().as_secs_f64()),
            Ok(_) => {}
            Err(_) => return Outcome::default(),
        }
    }
    Outcome {
        ttft: ttft.unwrap_or(0.0),
        total: start.elapsed().as_secs_f64(),
        ok: ttft.is_some(),
    }
}

/// Send `arrivals` as `key`, open-loop, each at its time after `start`; their outcomes once
/// all end.
pub async fn drive<A: Arrival>(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    arrivals: Arc<Vec<A>>,
    start: Instant,
) -> Vec<Outcome> {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(arrivals.len());
    for i in 0..arrivals.len() {
        let at = Duration::from_secs_f64(arrivals[i].at());
        tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
        let (client, url, key, body, outcomes) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            arrivals[i].body(),
            outcomes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let o = send(client, url, &key, &body).await;
            outcomes.lock().unwrap().push(o);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let done = outcomes.lock().unwrap().clone();
    done
}

/// The `p` quantile (0..1) of `values` (sorted in place); NaN when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}
