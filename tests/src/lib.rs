//! End-to-end harness: starts real Envoy with the built `.wasm` filters, `sluice-mock-llm`
//! pools, and talks to them over real HTTP.
//!
//! Every process listens on a port the kernel picked (port 0), found back through a port
//! file (mocks) or Envoy's admin API (listener), so parallel tests never collide. Each
//! Envoy gets its own `--base-id`. Logs go to files in the stack's temp dir and are printed
//! only when a test fails. Dropping a [`Stack`] stops everything it started.
//!
//! This is test support code: a setup step that fails must fail the test, loudly.
pub mod engine;
pub mod load;
pub mod postgres;
pub mod process;

use process::Proc;
use serde_json::Value;
use sluice_key_auth::KeyAuthConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's. Missing is a failure, never a
/// skip: a green run without Envoy would prove nothing.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "no Envoy binary at {} (run scripts/setup.sh, or set ENVOY_BIN)",
        path.display()
    );
    path
}

/// A file that `scripts/build.sh` produces.
pub fn built(rel: &str) -> PathBuf {
    let path = repo_root().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build.sh first",
        path.display()
    );
    path
}

/// sluice-native's module of the seven filters (`scripts/build.sh` builds it).
pub fn native_module() -> PathBuf {
    built("target/release/examples/libnative_filters.so")
}

pub fn wasm_dir() -> PathBuf {
    built("target/wasm/sluice_key_auth.wasm");
    built("target/wasm/sluice_token_counter.wasm");
    built("target/wasm/sluice_rate_limit.wasm");
    // What the Envoy template loads by default: all the filters in one module.
    built("target/wasm/sluice_filters.wasm");
    repo_root().join("target/wasm")
}

pub fn mock_bin() -> PathBuf {
    built("target/release/sluice-mock-llm")
}

pub fn cli_bin() -> PathBuf {
    built("target/release/sluice")
}

pub fn ratelimit_bin() -> PathBuf {
    built("target/release/sluice-ratelimit")
}

pub fn batch_bin() -> PathBuf {
    built("target/release/sluice-batch")
}

pub fn cache_bin() -> PathBuf {
    built("target/release/sluice-cache")
}

/// Send `request`; its JSON answer.
async fn json_answer(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Replica 0 is `batch` (its log `batch.log`), the others `batch-1`, `batch-2`, ...
fn batch_replica_name(replica: usize) -> String {
    if replica == 0 {
        "batch".into()
    } else {
        format!("batch-{replica}")
    }
}

/// The secret the stack's key-auth and sluice-batch share (tests only).
pub const BATCH_SECRET: &str = "e2e-batch-secret-0123456789abcdef0123";

/// A redis-server on a free port, stopped when dropped (or with [`RedisServer::stop`]).
pub struct RedisServer {
    proc: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = which("redis-server").expect("redis-server is missing: run scripts/setup.sh");
        let proc = Proc::spawn(
            "redis",
            &bin,
            &[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            dir.path(),
        );
        eventually("redis to listen", Duration::from_secs(10), || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            proc: Some(proc),
            port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        let _ = &self.dir;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// Poll `check` every 50 ms until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One mock GPU pool.
pub struct Mock {
    pub name: String,
    /// The pool (Envoy cluster) this backend belongs to.
    pub pool: String,
    pub port: u16,
    pub url: String,
}

impl Mock {
    /// Every LLM request the pool received (method, path, headers, body).
    pub async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/_mock/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn clear(&self) {
        reqwest::Client::new()
            .delete(format!("{}/_mock/requests", self.url))
            .send()
            .await
            .unwrap();
    }

    /// Change the pool's behaviour (see `MockConfig`).
    pub async fn configure(&self, patch: Value) {
        let r = reqwest::Client::new()
            .put(format!("{}/_mock/config", self.url))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "mock config refused: {patch}");
    }
}

/// A sample of an engine's Prometheus page (`GET <url>/metrics`): the value of the first
/// line of metric `name`, whatever its labels.
pub async fn engine_metric(url: &str, name: &str) -> Option<f64> {
    let page = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The header value of a recorded request, if present.
pub fn recorded_header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

/// Set every field of the JSON object `extra` on `target` (a pool's or a host's extra
/// settings over its defaults).
pub fn merge_fields(target: &mut Value, extra: &Value) {
    for (k, v) in extra.as_object().into_iter().flatten() {
        target[k] = v.clone();
    }
}

/// What a [`Stack`] starts.
pub struct StackOptions {
    pub pools: Vec<&'static str>,
    pub filters: bool,
    pub keys: KeyAuthConfig,
    /// Extra template variables for `envoy/envoy.yaml.j2`.
    pub vars: Vec<(String, Value)>,
    /// sluice-ratelimit's storage: its memory (None) or this Redis.
    pub redis: Option<String>,
    /// Mock backends per pool. With one, the mock is named like its pool; with more,
    /// `<pool>-0`, `<pool>-1`, ...
    pub backends: usize,
    /// Extra fields of a pool in the template's `pools` (`lb`, `failover`), by pool name.
    pub pool_options: Vec<(&'static str, Value)>,
    /// Pools served by real engines already listening on these ports (no mock is started
    /// for them); see [`engine::Engine`].
    pub engines: Vec<(&'static str, Vec<u16>)>,
    /// Extra start-up flags for every mock backend (e.g. `--max-connections 4`).
    pub mock_args: Vec<String>,
    /// Extra fields of a host in its pool's `hosts` (`region`, `zone`, `priority`), by the
    /// mock's name.
    pub host_options: Vec<(&'static str, Value)>,
    /// sluice-batch behind the gateway (`/v1/files`, `/v1/batches`), key-auth accepting
    /// its owner assertions.
    pub batch: bool,
    /// sluice-batch's `--webhooks` file, when set.
    pub batch_webhooks: Option<Value>,
    /// sluice-batch replicas (each its own port, all in Envoy's `sluice_batch` cluster);
    /// more than one needs `batch_database`.
    pub batch_replicas: usize,
    /// sluice-batch's `--database-url` (e.g. a [`postgres::Postgres`]'s); the replicas
    /// then share it and one files directory.
    pub batch_database: Option<String>,
    /// Extra sluice-batch flags (e.g. `--max-in-flight 4`).
    pub batch_args: Vec<String>,
    /// sluice-cache (the response cache's shared tier) as the gateway's `sluice_cache`
    /// cluster, its entries in memory or in `cache_redis`.
    pub cache_service: bool,
    pub cache_redis: Option<String>,
    /// The filters from sluice-native's dynamic module (the template's `native`, what
    /// `scripts/run.sh` and the compose stack load), or else the wasm module (what Istio
    /// loads). By default native; `SLUICE_E2E_BUILD=wasm` runs a suite against the wasm
    /// build.
    pub native: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            pools: vec!["pool-a", "pool-b"],
            filters: true,
            keys: KeyAuthConfig::default(),
            vars: Vec::new(),
            redis: None,
            backends: 1,
            pool_options: Vec::new(),
            engines: Vec::new(),
            mock_args: Vec::new(),
            host_options: Vec::new(),
            batch: false,
            batch_webhooks: None,
            batch_replicas: 1,
            batch_database: None,
            batch_args: Vec::new(),
            cache_service: false,
            cache_redis: None,
            native: std::env::var_os("SLUICE_E2E_BUILD").is_none_or(|v| v != "wasm"),
        }
    }
}

/// Envoy plus mock pools, all on free loopback ports, in one temp dir.
pub struct Stack {
    pub gateway: String,
    pub admin: String,
    pub pools: Vec<Mock>,
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
    /// Some pool balances by consistent hash (maglev / ring_hash).
    hash_pools: bool,
    /// The filters are sluice-native's (`StackOptions::native`).
    pub native: bool,
    /// How each sluice-batch replica was started (to start it again after a kill) and
    /// the first one's URL.
    batch_args: Vec<Vec<String>>,
    pub batch_url: Option<String>,
}

impl StackOptions {
    /// Whether the stack needs sluice-ratelimit: a rate-limit config with a `global`
    /// section, or a Redis to keep its counters in.
    pub fn needs_ratelimit(&self) -> bool {
        self.redis.is_some()
            || self.vars.iter().any(|(name, v)| {
                name.starts_with("rate_limit") && v.get("global").is_some_and(|g| !g.is_null())
            })
    }
}

/// The steps of starting a [`Stack`], each its own method; [`Stack::start`] runs them in
/// order and skips what the options do not need (sluice-ratelimit without a global limit).
pub struct StackBuilder {
    options: StackOptions,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    pools: Vec<Mock>,
    ratelimit_port: Option<u16>,
    cache_port: Option<u16>,
    /// Set when sluice-batch must know the gateway's address before Envoy starts.
    listen_port: Option<u16>,
    batch_ports: Vec<u16>,
    batch_args: Vec<Vec<String>>,
}

impl StackBuilder {
    pub fn new(options: StackOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-e2e-")
            .tempdir()
            .unwrap();
        Self {
            options,
            dir,
            procs: Vec::new(),
            pools: Vec::new(),
            ratelimit_port: None,
            cache_port: None,
            listen_port: None,
            batch_ports: Vec::new(),
            batch_args: Vec::new(),
        }
    }

    /// The pools served by real engines already listening.
    pub fn add_engines(&mut self) {
        for (pool, ports) in &self.options.engines {
            for (i, port) in ports.iter().enumerate() {
                self.pools.push(Mock {
                    name: format!("{pool}-{i}"),
                    pool: pool.to_string(),
                    port: *port,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
        }
    }

    /// A mock backend per pool (or `backends` of them) for every pool no engine serves.
    pub async fn start_mocks(&mut self) {
        let pools = self.options.pools.clone();
        for pool in pools {
            if self.options.engines.iter().any(|(p, _)| *p == pool) {
                continue;
            }
            let n = self.options.backends.max(1);
            for i in 0..n {
                let name = if n > 1 {
                    format!("{pool}-{i}")
                } else {
                    pool.to_string()
                };
                let port_file = self.dir.path().join(format!("{name}.port"));
                let mut args = vec![
                    "--listen",
                    "127.0.0.1:0",
                    "--name",
                    &name,
                    "--port-file",
                    port_file.to_str().unwrap(),
                ];
                args.extend(self.options.mock_args.iter().map(String::as_str));
                self.procs
                    .push(Proc::spawn(&name, &mock_bin(), &args, self.dir.path()));
                let port: u16 = wait_for_file(&port_file, &mut self.procs)
                    .await
                    .parse()
                    .unwrap();
                self.pools.push(Mock {
                    name,
                    pool: pool.to_string(),
                    port,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
        }
    }

    /// Start a service on a free port (`--listen 127.0.0.1:0 --port-file`, then `args`);
    /// its port, once it has bound it.
    async fn start_service(&mut self, name: &str, bin: &Path, args: &[String]) -> u16 {
        let port_file = self.dir.path().join(format!("{name}.port"));
        let mut argv = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--port-file".to_string(),
            port_file.to_str().unwrap().to_string(),
        ];
        argv.extend_from_slice(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.procs
            .push(Proc::spawn(name, bin, &argv, self.dir.path()));
        wait_for_file(&port_file, &mut self.procs)
            .await
            .parse()
            .unwrap()
    }

    /// `--redis-timeout-ms 100`, and `--redis URL` when given.
    fn redis_args(url: Option<&String>) -> Vec<String> {
        let mut args = vec!["--redis-timeout-ms".to_string(), "100".to_string()];
        if let Some(url) = url {
            args.push("--redis".into());
            args.push(url.clone());
        }
        args
    }

    /// sluice-ratelimit, in memory or on the options' Redis.
    pub async fn start_ratelimit(&mut self) {
        let args = Self::redis_args(self.options.redis.as_ref());
        self.ratelimit_port = Some(
            self.start_service("ratelimit", &ratelimit_bin(), &args)
                .await,
        );
    }

    /// sluice-cache, in memory or on the options' `cache_redis`.
    pub async fn start_cache(&mut self) {
        let args = Self::redis_args(self.options.cache_redis.as_ref());
        self.cache_port = Some(self.start_service("cache", &cache_bin(), &args).await);
    }

    /// sluice-batch, sending its lines to the gateway's listener (its port chosen here),
    /// with the secret key-auth will accept its assertions under.
    pub async fn start_batch(&mut self) {
        let listen = engine::free_port();
        self.listen_port = Some(listen);
        self.options.keys.batch_secret = Some(BATCH_SECRET.into());
        let secret_file = self.dir.path().join("batch.secret");
        std::fs::write(&secret_file, BATCH_SECRET).unwrap();
        let files = self.dir.path().join("batch-files");
        for replica in 0..self.options.batch_replicas.max(1) {
            let name = batch_replica_name(replica);
            let port_file = self.dir.path().join(format!("{name}.port"));
            // A fixed port (not 0): Envoy's cluster names it, and a restart must get it again.
            let mut args: Vec<String> = vec![
                "--listen".into(),
                format!("127.0.0.1:{}", engine::free_port()),
                "--port-file".into(),
                port_file.to_str().unwrap().into(),
                "--state-dir".into(),
                self.dir.path().join(&name).to_str().unwrap().into(),
                "--gateway".into(),
                format!("http://127.0.0.1:{listen}"),
                "--secret-file".into(),
                secret_file.to_str().unwrap().into(),
                // A killed service's batches resume within a second of its restart.
                "--lease-ms".into(),
                "1000".into(),
            ];
            if let Some(url) = &self.options.batch_database {
                args.extend([
                    "--database-url".into(),
                    url.clone(),
                    "--files-dir".into(),
                    files.to_str().unwrap().into(),
                ]);
            }
            args.extend(self.options.batch_args.iter().cloned());
            if let Some(hooks) = &self.options.batch_webhooks {
                let file = self.dir.path().join("webhooks.json");
                std::fs::write(&file, hooks.to_string()).unwrap();
                args.push("--webhooks".into());
                args.push(file.to_str().unwrap().into());
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            self.procs
                .push(Proc::spawn(&name, &batch_bin(), &argv, self.dir.path()));
            self.batch_ports.push(
                wait_for_file(&port_file, &mut self.procs)
                    .await
                    .parse()
                    .unwrap(),
            );
            self.batch_args.push(args);
        }
    }

    /// The key file key-auth watches.
    pub fn write_keys(&self) {
        let state = self.dir.path();
        std::fs::create_dir_all(state.join("ecds")).unwrap();
        write_key_file(
            &state.join("ecds/key-auth.json"),
            &self.options.keys,
            self.options.native,
        );
    }

    /// `envoy/envoy.yaml.j2` rendered for these pools and options; the config's path.
    pub fn render_envoy_config(&self) -> PathBuf {
        let o = &self.options;
        let pools_json: Vec<Value> = o
            .pools
            .iter()
            .map(|pool| {
                let hosts: Vec<Value> = self
                    .pools
                    .iter()
                    .filter(|m| m.pool == *pool)
                    .map(|m| {
                        let mut h = serde_json::json!({"host": "127.0.0.1", "port": m.port});
                        for (_, extra) in o.host_options.iter().filter(|(n, _)| *n == m.name) {
                            merge_fields(&mut h, extra);
                        }
                        h
                    })
                    .collect();
                let mut p = serde_json::json!({"name": pool, "hosts": hosts});
                for (_, extra) in o.pool_options.iter().filter(|(n, _)| n == pool) {
                    merge_fields(&mut p, extra);
                }
                p
            })
            .collect();
        let state = self.dir.path();
        let mut vars: BTreeMap<String, minijinja::Value> = BTreeMap::new();
        // Without a router config of its own, a test's every model goes to the first pool
        // under the name it sent (a pass-through alias).
        vars.insert(
            "model_router_config".into(),
            minijinja::Value::from_serialize(serde_json::json!({
                "models": {"*": {"targets": [{"pool": o.pools.first().copied().unwrap_or("pool-a")}]}}
            })),
        );
        vars.insert("listen_port".into(), self.listen_port.unwrap_or(0).into());
        if o.native {
            vars.insert("native".into(), true.into());
            vars.insert(
                "native_module".into(),
                native_module().to_str().unwrap().into(),
            );
        }
        if let Some(port) = self.batch_ports.first() {
            vars.insert("batch_port".into(), (*port).into());
            vars.insert(
                "batch_ports".into(),
                minijinja::Value::from_serialize(&self.batch_ports),
            );
        }
        vars.insert("admin_port".into(), 0.into());
        vars.insert("state_dir".into(), state.to_str().unwrap().into());
        vars.insert("filters".into(), o.filters.into());
        vars.insert(
            "pools".into(),
            minijinja::Value::from_serialize(&pools_json),
        );
        vars.insert("health_interval".into(), "1s".into());
        vars.insert("wasm_dir".into(), wasm_dir().to_str().unwrap().into());
        if let Some(port) = self.ratelimit_port {
            vars.insert("ratelimit_port".into(), port.into());
        }
        if let Some(port) = self.cache_port {
            vars.insert("cache_port".into(), port.into());
        }
        for (k, v) in &o.vars {
            vars.insert(k.clone(), minijinja::Value::from_serialize(v));
        }
        let config = state.join("envoy.yaml");
        sluice_cli::render::render_file(&repo_root().join("envoy/envoy.yaml.j2"), &config, &vars)
            .unwrap();
        config
    }

    /// Envoy on `config`; the stack once it is ready (healthy pools, a bound listener).
    pub async fn start_envoy(mut self, config: &Path) -> Stack {
        let state = self.dir.path().to_path_buf();
        let admin_file = state.join("admin.address");
        let base_id = next_base_id();
        self.procs.push(Proc::spawn(
            "envoy",
            &envoy_bin(),
            &[
                "-c",
                config.to_str().unwrap(),
                "--concurrency",
                "2",
                "--base-id",
                &base_id.to_string(),
                "--admin-address-path",
                admin_file.to_str().unwrap(),
                "--log-level",
                "info",
                "--file-flush-interval-msec",
                "100",
            ],
            &state,
        ));
        let admin = format!(
            "http://{}",
            wait_for_file(&admin_file, &mut self.procs).await
        );
        let hash_pools = self
            .options
            .pool_options
            .iter()
            .any(|(_, o)| o.get("lb").is_some_and(|lb| lb != "least_request"));
        let mut stack = Stack {
            gateway: String::new(),
            admin,
            pools: self.pools,
            dir: self.dir,
            procs: self.procs,
            hash_pools,
            native: self.options.native,
            batch_url: self
                .batch_ports
                .first()
                .map(|p| format!("http://127.0.0.1:{p}")),
            batch_args: self.batch_args,
        };
        stack.gateway = stack.wait_ready().await;
        stack
    }
}

impl Stack {
    /// Every step of [`StackBuilder`] the options need, in order.
    pub async fn start(options: StackOptions) -> Self {
        let needs_ratelimit = options.needs_ratelimit();
        let mut b = StackBuilder::new(options);
        b.add_engines();
        b.start_mocks().await;
        if needs_ratelimit {
            b.start_ratelimit().await;
        }
        if b.options.batch {
            b.start_batch().await;
        }
        if b.options.cache_service {
            b.start_cache().await;
        }
        b.write_keys();
        let config = b.render_envoy_config();
        b.start_envoy(&config).await
    }

    /// Wait for `/ready` to say LIVE, then read the listener's bound port.
    async fn wait_ready(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Ok(r) = reqwest::get(format!("{}/ready", self.admin)).await {
                if r.text().await.map(|t| t.trim() == "LIVE").unwrap_or(false) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not become ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Ready means the pools' first active health checks passed, too: before that Envoy
        // answers 503 no_healthy_upstream.
        let admin = self.admin.clone();
        // `<pool>::127.0.0.1:<port>::health_flags::healthy`, one line per backend.
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|m| format!("{}::127.0.0.1:{}::health_flags::", m.pool, m.port))
            .collect();
        eventually(
            "every backend to pass its health check",
            Duration::from_secs(30),
            || {
                let (admin, pools) = (admin.clone(), pools.clone());
                async move {
                    let text = reqwest::get(format!("{admin}/clusters"))
                        .await
                        .ok()?
                        .text()
                        .await
                        .ok()?;
                    pools
                        .iter()
                        .all(|p| text.lines().any(|l| l == format!("{p}healthy")))
                        .then_some(())
                }
            },
        )
        .await;
        // Consistent-hash pools: each worker's hash table follows the health changes a
        // moment after the admin page shows them; before that, every hash may land on the
        // host that turned healthy first.
        if self.hash_pools {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let listeners: Value = reqwest::get(format!("{}/listeners?format=json", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .unwrap_or_else(|| panic!("no bound listener in {listeners}"));
        format!("http://127.0.0.1:{port}")
    }

    fn assert_running(&mut self) {
        for p in &mut self.procs {
            if let Some(status) = p.exited() {
                panic!("{} exited during start-up: {status}", p.name);
            }
        }
    }

    /// Stop a process of the stack by name (`ratelimit`, `pool-a`, ...), as a crash would.
    pub fn kill(&mut self, name: &str) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
            p.stop();
        }
    }

    /// SIGKILL sluice-batch, as a crash would, then start it again on the same state; its
    /// new URL.
    pub async fn restart_batch(&mut self) -> String {
        self.kill_batch(0);
        self.start_batch_replica(0).await
    }

    /// SIGKILL one sluice-batch replica, as a crash would.
    pub fn kill_batch(&mut self, replica: usize) {
        let name = batch_replica_name(replica);
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
            p.kill_hard();
        }
        self.procs.retain(|p| p.name != name);
    }

    /// Start a replica killed by [`Self::kill_batch`] again, as it was started; its URL.
    pub async fn start_batch_replica(&mut self, replica: usize) -> String {
        let name = batch_replica_name(replica);
        let port_file = self.dir.path().join(format!("{name}.port"));
        let _ = std::fs::remove_file(&port_file);
        let args: Vec<&str> = self.batch_args[replica]
            .iter()
            .map(String::as_str)
            .collect();
        self.procs
            .push(Proc::spawn(&name, &batch_bin(), &args, self.dir.path()));
        let port: u16 = wait_for_file(&port_file, &mut self.procs)
            .await
            .parse()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        if replica == 0 {
            self.batch_url = Some(url.clone());
        }
        url
    }

    /// GET `path` from the gateway as `key`; the JSON answer.
    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        json_answer(
            reqwest::Client::new()
                .get(format!("{}{path}", self.gateway))
                .header("authorization", format!("Bearer {key}")),
        )
        .await
    }

    /// The access log's records of batch lines (those with a `batch` field).
    pub fn batch_records(&self) -> Vec<Value> {
        self.access_log()
            .into_iter()
            .filter(|l| l["batch"].as_str().is_some_and(|b| b.contains("batch_")))
            .collect()
    }

    /// Upload `jsonl` as a batch input file as `key` (OpenAI's multipart `POST /v1/files`);
    /// the file id.
    pub async fn upload_batch_input(&self, key: &str, jsonl: String) -> String {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::bytes(jsonl.into_bytes()).file_name("lines.jsonl"),
            );
        let file = json_answer(
            reqwest::Client::new()
                .post(format!("{}/v1/files", self.gateway))
                .header("authorization", format!("Bearer {key}"))
                .multipart(form),
        )
        .await;
        file["id"].as_str().unwrap().to_string()
    }

    /// A chat-completions batch of input file `file` as `key`; its id.
    pub async fn create_batch(&self, key: &str, file: &str) -> String {
        let batch = json_answer(
            reqwest::Client::new()
                .post(format!("{}/v1/batches", self.gateway))
                .header("authorization", format!("Bearer {key}"))
                .json(
                    &serde_json::json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                                          "completion_window": "24h"}),
                ),
        )
        .await;
        batch["id"].as_str().unwrap().to_string()
    }

    /// Wait until the batch at `path` (`/v1/batches/<id>`) has `status`; the batch.
    pub async fn wait_batch(
        &self,
        key: &str,
        path: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        eventually(
            &format!("the batch to be {status}"),
            timeout,
            || async move {
                let b = self.get_json(key, path).await;
                (b["status"] == status).then_some(b)
            },
        )
        .await
    }

    /// A sluice-batch replica's log.
    pub fn batch_log(&self, replica: usize) -> String {
        let name = batch_replica_name(replica);
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(Proc::log)
            .unwrap_or_default()
    }

    pub fn pool(&self, name: &str) -> &Mock {
        self.pools.iter().find(|p| p.name == name).unwrap()
    }

    /// The backends of a pool, in order.
    pub fn backends(&self, pool: &str) -> Vec<&Mock> {
        self.pools.iter().filter(|m| m.pool == pool).collect()
    }

    /// How many requests for `path` the backends of `pool` received, in all.
    pub async fn received(&self, pool: &str, path: &str) -> usize {
        let mut n = 0;
        for b in self.backends(pool) {
            n += b
                .requests()
                .await
                .iter()
                .filter(|r| r["path"] == path)
                .count();
        }
        n
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("ecds/key-auth.json")
    }

    /// A filter's own counter or gauge (its name without the build's namespace: Envoy puts
    /// a wasm filter's under `wasmcustom.`, a dynamic module's under `dynamicmodulescustom.`).
    pub async fn filter_stat(&self, name: &str) -> u64 {
        let namespace = if self.native {
            "dynamicmodulescustom"
        } else {
            "wasmcustom"
        };
        self.stat(&format!("{namespace}.{name}")).await
    }

    /// Where key-auth's configuration sits in the key file (the ECDS resource of a wasm
    /// filter, or of a dynamic-module one).
    pub fn key_config_pointer(&self) -> &'static str {
        if self.native {
            "/resources/0/typed_config/filter_config/value"
        } else {
            "/resources/0/typed_config/config/configuration/value"
        }
    }

    /// An Envoy counter or gauge from the admin API (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let text = reqwest::get(format!(
            "{}/stats?filter=^{}$",
            self.admin,
            regex_escape(name)
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn prometheus(&self) -> String {
        let text = reqwest::get(format!("{}/stats/prometheus", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if !self.native {
            return text;
        }
        // The names Prometheus stores with deploy/prometheus's relabeling: the native
        // build's metrics without Envoy's dynamic-module prefix, as the wasm build's.
        text.lines()
            .map(|l| {
                let l = l.replacen("# TYPE envoy_dynamicmodulescustom_", "# TYPE ", 1);
                match l.strip_prefix("envoy_dynamicmodulescustom_") {
                    Some(rest) => rest.to_string(),
                    None => l,
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A chat completion through the gateway with `key` (and `extra` headers), its body read
    /// to the end as a client does (until then Envoy counts the request as active): the
    /// status and the mock backend that answered (`x-mock-pool`, empty for another backend).
    pub async fn chat_via(&self, key: &str, body: &Value, extra: &[(&str, &str)]) -> (u16, String) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.gateway))
            .header("authorization", format!("Bearer {key}"))
            .json(body);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let backend = r
            .headers()
            .get("x-mock-pool")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        (status, backend)
    }

    /// Envoy's `/clusters` admin page: per host, `<cluster>::<host:port>::<stat>::<value>`.
    pub async fn clusters(&self) -> String {
        reqwest::get(format!("{}/clusters", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Each backend's health flags in Envoy (`healthy`, `/failed_active_hc`, ...), by port.
    pub async fn backend_flags(&self) -> std::collections::HashMap<u16, String> {
        let text = self.clusters().await;
        let mut flags = std::collections::HashMap::new();
        for m in &self.pools {
            let prefix = format!("{}::127.0.0.1:{}::health_flags::", m.pool, m.port);
            if let Some(l) = text.lines().find(|l| l.starts_with(&prefix)) {
                flags.insert(m.port, l[prefix.len()..].to_string());
            }
        }
        flags
    }

    /// Wait until Envoy's first health checks have passed for every backend (a host is out
    /// of rotation until then, so a test of balancing or retries must start after).
    pub async fn wait_all_healthy(&self) {
        eventually(
            "every backend healthy in Envoy",
            Duration::from_secs(15),
            || async {
                let flags = self.backend_flags().await;
                (flags.len() == self.pools.len() && flags.values().all(|f| f == "healthy"))
                    .then_some(())
            },
        )
        .await;
        // The admin page shows the main thread's view; measured here, the workers' load
        // balancers start sending to a newly healthy host up to ~2 s later.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    /// The JSON access-log lines written so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Everything the processes logged so far, for assertions about what is never logged.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(Proc::log)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Run the `sluice` CLI against this stack's key file; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(cli_bin())
            .args(args)
            .env("SLUICE_KEY_FILE", self.key_file())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Wait until Envoy has applied `n` key-file updates in total (the first load counts).
    pub async fn wait_key_updates(&self, n: u64) {
        eventually(
            "the key file to reload",
            Duration::from_secs(10),
            || async {
                (self
                    .stat("extension_config_discovery.http_filter.sluice.key_auth.update_success")
                    .await
                    >= n)
                    .then_some(())
            },
        )
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                p.print_log_tail(400);
            }
            let log =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            eprintln!("----- access log -----\n{log}----- end of access log -----");
        }
        for p in &mut self.procs {
            p.stop();
        }
    }
}

/// Write a key file (ECDS resource) for `keys`, as `scripts/run.sh` and the CLI do: for
/// the wasm filter, or for the native one.
pub fn write_key_file(path: &Path, keys: &KeyAuthConfig, native: bool) {
    let mut vars: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    vars.insert("wasm_dir".into(), wasm_dir().to_str().unwrap().into());
    if native {
        vars.insert("native".into(), true.into());
        vars.insert(
            "native_module".into(),
            native_module().to_str().unwrap().into(),
        );
    }
    vars.insert(
        "key_auth_config".into(),
        minijinja::Value::from_serialize(keys),
    );
    sluice_cli::render::render_file(
        &repo_root().join("envoy/ecds/key-auth.json.j2"),
        path,
        &vars,
    )
    .unwrap();
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

async fn wait_for_file(path: &Path, procs: &mut [Proc]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                p.print_log_tail(200);
                panic!("{} exited during start-up: {status}", p.name);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `--base-id` no other Envoy of this machine uses: derived from the pid and a counter,
/// so parallel test binaries and the local stack do not share hot-restart memory.
fn next_base_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    1000 + (std::process::id() % 100_000) * 16 + NEXT.fetch_add(1, Ordering::Relaxed) % 16
}

/// A key record for `secret`, enabled, all models, no limits.
pub fn key_record(id: &str, secret: &str, tenant: &str) -> sluice_key_auth::KeyRecord {
    sluice_key_auth::KeyRecord {
        id: id.into(),
        sha256: sluice_key_auth::keystore::digest(secret)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        tenant: tenant.into(),
        enabled: true,
        expires_at: None,
        models: vec!["*".into()],
        limits: Default::default(),
        priority: Default::default(),
        prefix: None,
        created_at: None,
    }
}

/// A small chat request body.
pub fn chat_body(stream: bool) -> Value {
    serde_json::json!({
        "model": "mock-model",
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the gateway."}]
    })
}

impl Stack {
    /// The access-log line of the request with `x-request-id: id` (waits for the flush).
    pub async fn log_line(&self, id: &str) -> Value {
        eventually(
            &format!("the access log line of {id}"),
            Duration::from_secs(10),
            || async {
                self.access_log()
                    .into_iter()
                    .find(|l| l["request_id"] == id)
            },
        )
        .await
    }

    /// POST a JSON body to the gateway with a key and a request id.
    pub async fn post_json(
        &self,
        path: &str,
        key: &str,
        id: &str,
        body: &Value,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.gateway))
            .header("authorization", format!("Bearer {key}"))
            .header("x-request-id", id)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// A numeric access-log field (filter state is logged as a string).
pub fn log_number(line: &Value, field: &str) -> Option<u64> {
    match &line[field] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Fixed rate-limit windows are aligned to the epoch (a minute window starts at :00, an hour
/// window at the hour). A test that counts admissions within one window waits out the last
/// `margin` seconds of the current one, so a slow run cannot straddle a boundary.
pub async fn away_from_window_end(window_secs: u64, margin_secs: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = window_secs - now % window_secs;
    if left <= margin_secs {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Send `n` chat requests at once, round-robin over `gateways` and `keys` (as `x-api-key`);
/// the statuses, in request order.
pub async fn burst(gateways: &[&str], keys: &[&str], n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let requests = (0..n).map(|i| {
        let url = format!("{}/v1/chat/completions", gateways[i % gateways.len()]);
        let key = keys[i % keys.len()].to_string();
        let client = client.clone();
        async move {
            let r = client
                .post(url)
                .header("x-api-key", key)
                .json(&chat_body(false))
                .send();
            r.await.unwrap().status().as_u16()
        }
    });
    futures::future::join_all(requests).await
}
