//! What Sluice's native services (sluice-mock-llm, sluice-ratelimit) share.

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
