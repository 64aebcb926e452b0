use clap::Parser;
use sluice_cache::{app, Cache, Memory, Outcomes, Redis, SemanticIndexes, Storage};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The response cache's shared tier (see docs/filters/response-cache.md).
#[derive(Parser, Debug)]
#[command(name = "sluice-cache", version)]
struct Args {
    /// HTTP address; port 0 picks a free one (see --port-file). Only Envoy calls it: keep
    /// it on a private address.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Entries in Redis (redis://host:port), shared by every replica and every Envoy.
    /// Without it, in this process's memory.
    #[arg(long, env = "SLUICE_CACHE_REDIS")]
    redis: Option<String>,
    /// Longest wait for Redis before answering 503 (the filter then treats it as a miss).
    #[arg(long, default_value_t = 50)]
    redis_timeout_ms: u64,
    /// The largest entry accepted.
    #[arg(long, default_value_t = 4 << 20)]
    max_entry_bytes: usize,
    /// In memory: the most bytes of entries kept (the oldest go first).
    #[arg(long, default_value_t = 256 << 20)]
    memory_bytes: usize,
    /// The semantic tier: the most prompt vectors kept per index (tenant, API, model).
    #[arg(long, default_value_t = 10_000)]
    semantic_vectors: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (storage, backend) = match &args.redis {
        Some(url) => (
            Storage::Redis(
                Redis::connect(url, Duration::from_millis(args.redis_timeout_ms))
                    .await
                    .map_err(|e| e.0)?,
            ),
            "redis",
        ),
        None => (
            Storage::Memory(Mutex::new(Memory::new(args.memory_bytes))),
            "memory",
        ),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    sluice_service::write_port_file(args.port_file.as_deref(), bound.port())?;
    eprintln!("sluice-cache listening on {bound} (storage: {backend})");
    let cache = Arc::new(Cache {
        storage,
        max_entry_bytes: args.max_entry_bytes,
        outcomes: Outcomes::default(),
        semantic: SemanticIndexes::new(args.semantic_vectors),
    });
    let report = cache.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let o = &report.outcomes;
            eprintln!(
                "sluice-cache: hits={} misses={} stores={} unavailable={}",
                o.hits.load(Ordering::Relaxed),
                o.misses.load(Ordering::Relaxed),
                o.stores.load(Ordering::Relaxed),
                o.unavailable.load(Ordering::Relaxed)
            );
        }
    });
    axum::serve(listener, app(cache))
        .with_graceful_shutdown(sluice_service::terminated())
        .await?;
    Ok(())
}
