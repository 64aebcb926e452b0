//! What Sluice's native services (sluice-mock-llm, sluice-ratelimit, sluice-batch,
//! sluice-cache) share: how they shut down, and how they say which port they bound.

/// Resolves on SIGTERM (what `docker stop`, Kubernetes and scripts/run.sh send) or Ctrl-C:
/// the future a server's graceful shutdown waits on.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler: Ctrl-C still stops it.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Write the port a service bound (`--listen 127.0.0.1:0`) to `path`, for whoever started
/// it: whole, then renamed, so a poller never reads half a number. Nothing without a path.
pub fn write_port_file(path: Option<&std::path::Path>, port: u16) -> std::io::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, port.to_string())?;
    std::fs::rename(&tmp, path)
}
