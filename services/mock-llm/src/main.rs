use clap::Parser;
use sluice_mock_llm::{router, App, MockConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// OpenAI-compatible GPU-backend stand-in. Delays default to zero so a benchmark measures
/// the gateway, not the mock.
#[derive(Parser, Debug)]
#[command(name = "sluice-mock-llm", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one (see --port-file).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Pool name, returned in `x-mock-pool`.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Models listed by /v1/models (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "mock-model")]
    models: Vec<String>,
    /// Never report usage, even when asked (like TGI).
    #[arg(long)]
    no_usage: bool,
    /// Tokens per reply (capped by max_tokens).
    #[arg(long, default_value_t = 16)]
    reply_tokens: u64,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Serve at most this many connections at once and accept no more until one closes
    /// (an engine with a fixed number of HTTP threads); default: no limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// The kernel's accept queue for this socket (an older engine's small listen backlog).
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
    /// Engine simulation: at most this many sequences run at once; the rest wait.
    #[arg(long)]
    sim_slots: Option<usize>,
    /// Engine simulation: prefill cost per prompt token not in the prefix cache.
    #[arg(long, default_value_t = 200)]
    sim_prefill_us_per_token: u64,
    /// Engine simulation: decode cost per output token with a batch of one.
    #[arg(long, default_value_t = 5_000)]
    sim_decode_us_per_token: u64,
    /// Engine simulation: decode slowdown per other running sequence, percent.
    #[arg(long, default_value_t = 10)]
    sim_batch_slowdown_pct: u64,
    /// Engine simulation: prefix cache size in 64-byte prompt blocks.
    #[arg(long, default_value_t = 1024)]
    sim_cache_blocks: usize,
    /// Engine simulation: how stale /metrics may be.
    #[arg(long, default_value_t = 250)]
    sim_metrics_lag_ms: u64,
    /// Engine simulation: the KV cache's size in tokens, for its usage gauge (default: the
    /// prefix cache's size).
    #[arg(long)]
    sim_kv_tokens: Option<u64>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        name: args.name,
        models: args.models,
        usage: !args.no_usage,
        reply_tokens: args.reply_tokens,
        delay_ms: args.delay_ms,
        ttft_ms: args.ttft_ms,
        token_delay_ms: args.token_delay_ms,
        sim_slots: args.sim_slots,
        sim_prefill_us_per_token: args.sim_prefill_us_per_token,
        sim_decode_us_per_token: args.sim_decode_us_per_token,
        sim_batch_slowdown_pct: args.sim_batch_slowdown_pct,
        sim_cache_blocks: args.sim_cache_blocks,
        sim_metrics_lag_ms: args.sim_metrics_lag_ms,
        sim_kv_tokens: args.sim_kv_tokens,
        ..MockConfig::default()
    };
    let listener = sluice_mock_llm::listener::bind(args.listen, args.backlog)?;
    let bound = listener.local_addr()?;
    sluice_service::write_port_file(args.port_file.as_deref(), bound.port())?;
    eprintln!(
        "sluice-mock-llm {} listening on http://{bound}",
        config.name
    );
    let app = router(App::new(config));
    match args.max_connections {
        Some(n) => {
            let gated = sluice_mock_llm::listener::GatedListener::new(listener, n.max(1));
            axum::serve(gated, app)
                .with_graceful_shutdown(sluice_service::terminated())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(sluice_service::terminated())
                .await
        }
    }
}
