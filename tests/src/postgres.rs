//! A throwaway PostgreSQL server (Debian's `postgresql` package) for the tests that need a
//! real one: its own data directory and port, trust authentication, stopped on drop.

use crate::process::Proc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Postgres {
    proc: Proc,
    pub url: String,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// Debian installs the server outside PATH: `/usr/lib/postgresql/<major>/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)")
    })
}

/// PostgreSQL refuses to run as root: as root, run it as the `postgres` user the Debian
/// package creates (`setpriv` execs, so the child is the server itself).
fn command_as_server_user(bin: &Path) -> (PathBuf, Vec<String>) {
    if nix::unistd::Uid::effective().is_root() {
        (
            PathBuf::from("setpriv"),
            vec![
                "--reuid=postgres".into(),
                "--regid=postgres".into(),
                "--init-groups".into(),
                "--".into(),
                bin.to_string_lossy().into_owned(),
            ],
        )
    } else {
        (bin.to_path_buf(), Vec::new())
    }
}

impl Postgres {
    pub async fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            // The server's user must reach its directory and own the data.
            let ok = Command::new("chmod")
                .args(["755", dir.path().to_str().unwrap()])
                .status()
                .unwrap()
                .success()
                && Command::new("chown")
                    .args(["-R", "postgres:postgres", data.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success();
            assert!(ok, "cannot hand {} to the postgres user", data.display());
        }
        let (cmd, mut args) = command_as_server_user(&bin.join("initdb"));
        args.extend(
            [
                "-D",
                data.to_str().unwrap(),
                "-U",
                "sluice",
                "-A",
                "trust",
                "--no-sync",
            ]
            .map(String::from),
        );
        let out = Command::new(&cmd).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::engine::free_port();
        let (cmd, mut args) = command_as_server_user(&bin.join("postgres"));
        args.extend(
            [
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-k",
                data.to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn("postgres", &cmd, &args, dir.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc.log().contains("ready to accept connections") {
            if proc.exited().is_some() || Instant::now() > deadline {
                proc.print_log_tail(30);
                panic!("PostgreSQL did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            proc,
            url: format!("postgres://sluice@127.0.0.1:{port}/postgres"),
            bin,
            _dir: dir,
        }
    }

    /// One SQL statement's rows through `psql` (unaligned, tuples only, `|` between
    /// columns): what a test reads to check the state the services keep.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([&self.url, "-XAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client).
        if let Ok(pid) = i32::try_from(self.proc.pid()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        self.proc.stop();
    }
}
