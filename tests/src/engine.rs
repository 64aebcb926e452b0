//! A real inference engine for the end-to-end tests: llama.cpp's `llama-server`, built by
//! `scripts/engine.sh` (which prints the directory `SLUICE_ENGINE_DIR` names), serving a
//! tiny random-weight model around Llama 3's real vocabulary.

use crate::process::Proc;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which tiny model: `plain` (any token), `cjk` (favours CJK ideographs: text without spaces)
/// around Llama 3's vocabulary; `qwen` and `gemma` (any token) around Qwen 2's and Gemma 4's.
#[derive(Debug, Clone, Copy)]
pub enum Variant {
    Plain,
    Cjk,
    Qwen,
    Gemma,
}

/// `llama-server` processes, stopped when dropped.
pub struct Engine {
    procs: Vec<Proc>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// The engine's build directory, or `None` (the test is skipped) when it was not built. With
/// `SLUICE_REQUIRE_ENGINE=1` (set by `scripts/test.sh`) a missing engine fails the test.
pub fn engine_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_ENGINE_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            assert!(
                std::env::var("SLUICE_REQUIRE_ENGINE").as_deref() != Ok("1"),
                "SLUICE_ENGINE_DIR is not set: run scripts/engine.sh"
            );
            eprintln!(
                "skipped: SLUICE_ENGINE_DIR is not set (scripts/engine.sh builds the engine)"
            );
            None
        }
    }
}

/// A port nothing listens on now, for a server the test starts next.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Below the kernel's ephemeral range: a port the kernel hands out for `bind(0)` or an
    // outgoing connection can be taken by another process (or this one's clients) between
    // this check and the server's own bind, which then fails with "address in use". Ports
    // below the range are only ever taken by an explicit bind. Each test process walks its
    // own sequence (started from its pid) so concurrent tests do not pick the same one.
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span >= 1_000 {
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOWEST + (start + n) % span;
            if let Ok(port) = u16::try_from(port) {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return port;
                }
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Engine {
    /// `servers` llama-servers with `slots` parallel slots each and `ctx` tokens of context
    /// per slot, serving the model under the name `alias`.
    pub async fn start(
        variant: Variant,
        servers: usize,
        slots: usize,
        ctx: usize,
        alias: &str,
    ) -> Option<Self> {
        Self::start_with(variant, servers, slots, ctx, alias, &[]).await
    }

    /// As [`Engine::start`], with more `llama-server` arguments (`--chat-template-file`).
    pub async fn start_with(
        variant: Variant,
        servers: usize,
        slots: usize,
        ctx: usize,
        alias: &str,
        extra: &[String],
    ) -> Option<Self> {
        let dir = engine_dir()?;
        let model = dir.join(match variant {
            Variant::Plain => "models/tiny-llama-plain.gguf",
            Variant::Cjk => "models/tiny-llama-cjk.gguf",
            Variant::Qwen => "models/tiny-qwen-plain.gguf",
            Variant::Gemma => "models/tiny-gemma-plain.gguf",
        });
        let bin = dir.join("bin/llama-server");
        let tmp = tempfile::Builder::new()
            .prefix("sluice-engine-")
            .tempdir()
            .ok()?;
        let mut procs = Vec::new();
        let mut ports = Vec::new();
        for i in 0..servers {
            let port = free_port();
            let args = [
                "-m".to_string(),
                model.display().to_string(),
                "--alias".into(),
                alias.into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--parallel".into(),
                slots.to_string(),
                "-c".into(),
                (ctx * slots).to_string(),
                "-t".into(),
                "1".into(),
                "--no-webui".into(),
            ];
            let args: Vec<&str> = args.iter().chain(extra).map(String::as_str).collect();
            procs.push(Proc::spawn(
                &format!("llama-server-{i}"),
                &bin,
                &args,
                tmp.path(),
            ));
            ports.push(port);
        }
        let engine = Self {
            procs,
            ports,
            _dir: tmp,
        };
        engine.wait_healthy().await;
        Some(engine)
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in &self.ports {
            loop {
                let ok = reqwest::get(format!("http://127.0.0.1:{port}/health"))
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    for p in &self.procs {
                        p.print_log_tail(40);
                    }
                    panic!("llama-server on {port} did not become healthy");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get(i).copied().unwrap_or(0)
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
    }
}
