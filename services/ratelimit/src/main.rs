use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use sluice_ratelimit::limits::LimitsFile;
use sluice_ratelimit::service::{Outcomes, RateLimiter};
use sluice_ratelimit::storage::{Memory, Redis, Storage};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Envoy RLS v3 service for Sluice's global limits.
#[derive(Parser, Debug)]
#[command(name = "sluice-ratelimit", version)]
struct Args {
    /// gRPC address; port 0 picks a free one (see --port-file).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Counters in Redis (redis://host:port), shared by every replica and every Envoy.
    /// Without it, in this process's memory.
    #[arg(long, env = "SLUICE_RATELIMIT_REDIS")]
    redis: Option<String>,
    /// Longest wait for Redis before answering UNAVAILABLE.
    #[arg(long, default_value_t = 50)]
    redis_timeout_ms: u64,
    /// Static limits (envoyproxy/ratelimit YAML) for descriptors without a limit override.
    #[arg(long)]
    limits: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let limits = match &args.limits {
        Some(p) => Some(
            LimitsFile::parse(&std::fs::read_to_string(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let storage = match &args.redis {
        Some(url) => {
            Storage::Redis(Redis::connect(url, Duration::from_millis(args.redis_timeout_ms)).await?)
        }
        None => Storage::Memory(Memory::default()),
    };
    let backend = if args.redis.is_some() {
        "redis"
    } else {
        "memory"
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    sluice_service::write_port_file(args.port_file.as_deref(), bound.port())?;
    eprintln!("sluice-ratelimit listening on {bound} (storage: {backend})");
    let limiter = Arc::new(RateLimiter {
        limits,
        storage,
        outcomes: Outcomes::default(),
    });
    let report = limiter.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let o = &report.outcomes;
            eprintln!(
                "sluice-ratelimit: ok={} over_limit={} unavailable={}",
                o.ok.load(Ordering::Relaxed),
                o.over_limit.load(Ordering::Relaxed),
                o.unavailable.load(Ordering::Relaxed)
            );
        }
    });
    // Decisions are small request/response pairs on long-lived HTTP/2 connections: with
    // Nagle's algorithm on, a response written while the previous one is unacknowledged
    // waits for the peer's delayed ACK (~40 ms).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn {
                if let Err(e) = c.set_nodelay(true) {
                    eprintln!("sluice-ratelimit: cannot set TCP_NODELAY: {e}");
                }
            }
            conn
        },
    );
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::from_arc(limiter))
        .serve_with_incoming_shutdown(incoming, sluice_service::terminated())
        .await?;
    Ok(())
}
