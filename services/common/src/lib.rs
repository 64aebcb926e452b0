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

/// A Redis connection shared by a service's tasks, reconnecting on its own: connect and
/// answer within `timeout` (one retry), Nagle off (small calls, many in flight on one
/// connection: Nagle with delayed ACKs would hold some ~40 ms). The error as text.
#[cfg(feature = "redis")]
pub async fn redis_connection(
    url: &str,
    timeout: std::time::Duration,
) -> Result<redis::aio::ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1)
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| e.to_string())
}
