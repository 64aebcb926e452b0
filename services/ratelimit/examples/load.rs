//! Load for sluice-ratelimit: `cargo run --release -p sluice-ratelimit --example load --
//! http://127.0.0.1:8081 [seconds] [concurrency]`. Each call is one decision on one of
//! 1000 subjects (limit overrides, as the Sluice filter sends them). Prints decisions/s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u128>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let mut client = RateLimitServiceClient::new(channel.clone());
            let (done, errors, latencies) = (done.clone(), errors.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut i = t;
                while Instant::now() < deadline {
                    i = (i + 7) % 1000;
                    let request = RateLimitRequest {
                        domain: "sluice".into(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![Entry {
                                key: "subject".into(),
                                value: format!("bench-{i}"),
                            }],
                            limit: Some(RateLimitOverride {
                                requests_per_unit: u32::MAX,
                                unit: 2,
                            }),
                            hits_addend: None,
                            is_negative_hits: false,
                        }],
                        hits_addend: 1,
                    };
                    let started = Instant::now();
                    match client.should_rate_limit(request).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    mine.push(started.elapsed().as_micros());
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "decisions_per_s={:.0} p50_us={} p99_us={} errors={}",
        n as f64 / seconds as f64,
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
}
