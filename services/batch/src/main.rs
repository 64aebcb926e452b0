//! sluice-batch: serve the Files and Batches API and run batches.

use clap::Parser;
use sluice_batch::api::{router, AppState};
use sluice_batch::store::{DiskBlobs, Store};
use sluice_batch::webhook::Webhooks;
use sluice_batch::worker::{Worker, WorkerConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    version,
    about = "The OpenAI Files and Batches API for self-hosted models, behind Sluice"
)]
struct Args {
    /// Where the API listens (only Envoy should reach it).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Write the port actually bound to this file (for `--listen 127.0.0.1:0`).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// State directory: the embedded database (batch.db) and the files (files/).
    #[arg(long, env = "SLUICE_BATCH_DIR", default_value = "./batch-state")]
    state_dir: PathBuf,
    /// The database instead of <state-dir>/batch.db: `postgres://user@host/db` for several
    /// replicas sharing the work (each batch worked by one replica at a time, by lease).
    #[arg(long, env = "SLUICE_BATCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Where file contents live instead of <state-dir>/files: replicas share it (a shared
    /// volume).
    #[arg(long, env = "SLUICE_BATCH_FILES_DIR")]
    files_dir: Option<PathBuf>,
    /// The gateway the lines go through.
    #[arg(
        long,
        env = "SLUICE_BATCH_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// File holding the secret shared with key-auth's `batch_secret` (at least 32 bytes).
    #[arg(long, env = "SLUICE_BATCH_SECRET_FILE")]
    secret_file: PathBuf,
    /// Most lines in flight at once (the worker starts at one and grows while the gateway
    /// accepts).
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Most requests in one input file (OpenAI: 50,000).
    #[arg(long, default_value_t = 50_000)]
    max_lines: usize,
    /// How long a batch stays claimed by a worker that stopped renewing (a killed process):
    /// after it, another worker (or this one, restarted) resumes the batch.
    #[arg(long, default_value_t = 15_000)]
    lease_ms: u64,
    /// Completion webhooks (JSON): `{"tenants": {"<tenant>": {"url", "secret"}}, "keys":
    /// {"<key id>": {...}}}`; see docs/batch.md.
    #[arg(long, env = "SLUICE_BATCH_WEBHOOKS")]
    webhooks: Option<PathBuf>,
    /// Largest upload, bytes (OpenAI: 200 MB).
    #[arg(long, default_value_t = 200 * 1024 * 1024)]
    max_file_bytes: usize,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("sluice-batch: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::fs::read(&args.secret_file)?;
    let secret = String::from_utf8(secret)?.trim().as_bytes().to_vec();
    if secret.len() < sluice_common::batch::MIN_SECRET_BYTES {
        return Err(format!(
            "the secret in {} is shorter than {} bytes",
            args.secret_file.display(),
            sluice_common::batch::MIN_SECRET_BYTES
        )
        .into());
    }
    std::fs::create_dir_all(&args.state_dir)?;
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.state_dir.join("batch.db").display()),
    };
    let store = Store::open(&url).await?;
    let files = args
        .files_dir
        .clone()
        .unwrap_or_else(|| args.state_dir.join("files"));
    let blobs = Arc::new(DiskBlobs::new(&files)?);
    let worker = Arc::new(Worker {
        store: store.clone(),
        blobs: blobs.clone(),
        config: WorkerConfig {
            webhooks: match &args.webhooks {
                Some(path) => Webhooks::load(path)?,
                None => Webhooks::default(),
            },
            gateway: args.gateway.trim_end_matches('/').to_string(),
            secret,
            max_in_flight: args.max_in_flight,
            max_lines: args.max_lines,
            lease_ms: args.lease_ms.max(300),
            poll_ms: 200,
        },
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()?,
        id: sluice_batch::new_id("worker-"),
    });
    tokio::spawn(worker.clone().deliver());
    tokio::spawn(worker.run());
    let app = router(Arc::new(AppState {
        store,
        blobs,
        max_file_bytes: args.max_file_bytes,
    }));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let port = listener.local_addr()?.port();
    sluice_service::write_port_file(args.port_file.as_deref(), port)?;
    eprintln!(
        "sluice-batch: listening on {}, lines through {}",
        listener.local_addr()?,
        args.gateway
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(sluice_service::terminated())
        .await?;
    Ok(())
}
