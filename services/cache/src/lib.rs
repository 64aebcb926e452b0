//! sluice-cache: the response cache's shared tier.
//!
//! Every Envoy's response-cache filter keeps a local tier in its shared data and, in front
//! of nothing else, asks this service for what the other Envoys stored: `GET
//! /v1/entries/{key}` (the entry's bytes, or 404) and `PUT /v1/entries/{key}` with
//! `x-sluice-ttl-ms` (stored until then). A key is the filter's SHA-256 (64 hex digits) of
//! the tenant, model and canonical request; an entry is opaque here (the filter's own
//! encoding, which carries the key again, so a wrong answer is never served). Storage is
//! Redis, shared by every replica, or this process's memory (one machine).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The header that says how long an entry lives.
pub const TTL_HEADER: &str = "x-sluice-ttl-ms";
/// The longest an entry may live: 30 days.
const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Why the storage did not answer.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// Entries in this process's memory: bounded by bytes, the oldest stored evicted first.
#[derive(Debug, Default)]
pub struct Memory {
    entries: HashMap<String, (Vec<u8>, Instant)>,
    order: VecDeque<String>,
    bytes: usize,
    max_bytes: usize,
}

impl Memory {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let (value, until) = self.entries.get(key)?;
        (Instant::now() < *until).then(|| value.clone())
    }

    fn put(&mut self, key: String, value: Vec<u8>, ttl: Duration) {
        if value.len() > self.max_bytes {
            return;
        }
        if let Some((old, _)) = self.entries.remove(&key) {
            self.bytes -= old.len();
            self.order.retain(|k| *k != key);
        }
        while self.bytes + value.len() > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
        self.bytes += value.len();
        self.order.push_back(key.clone());
        self.entries.insert(key, (value, Instant::now() + ttl));
    }
}

/// Entries in Redis (`SET key value PX ttl`), under `sluice:cache:<key>`. Redis bounds
/// them by its own `maxmemory` and eviction policy.
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
}

impl Redis {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, Unavailable> {
        let conn = sluice_service::redis_connection(url, timeout)
            .await
            .map_err(Unavailable)?;
        Ok(Self { conn, timeout })
    }

    fn name(key: &str) -> String {
        format!("sluice:cache:{key}")
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::name(key));
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| Unavailable("redis timed out".into()))?
            .map_err(|e| Unavailable(e.to_string()))
    }

    async fn put(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), Unavailable> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::name(key)).arg(value).arg("PX").arg(ttl_ms);
        let call = cmd.query_async::<()>(&mut conn);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| Unavailable("redis timed out".into()))?
            .map_err(|e| Unavailable(e.to_string()))
    }
}

pub enum Storage {
    Memory(Mutex<Memory>),
    Redis(Redis),
}

impl Storage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.lock().unwrap_or_else(|p| p.into_inner()).get(key)),
            Self::Redis(r) => r.get(key).await,
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), Unavailable> {
        match self {
            Self::Memory(m) => {
                let ttl = Duration::from_millis(ttl_ms);
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(key.into(), value, ttl);
                Ok(())
            }
            Self::Redis(r) => r.put(key, &value, ttl_ms).await,
        }
    }
}

/// What the service answered, for its periodic report.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    pub unavailable: AtomicU64,
}

/// Nearest-neighbour indexes for the semantic tier: per index (the filter's hash of the
/// tenant, the API, the model and the request's fields other than its prompt), the vectors
/// of stored answers' prompts and their entries' keys. In this process's memory, searched
/// exhaustively (cosine similarity), at most `max_per_index` vectors each (the oldest
/// dropped): an index lost in a restart only costs misses; the entries it names stay in
/// the storage.
#[derive(Debug, Default)]
pub struct SemanticIndexes {
    indexes: Mutex<HashMap<String, VecDeque<Indexed>>>,
    pub max_per_index: usize,
}

#[derive(Debug)]
struct Indexed {
    vector: Vec<f32>,
    key: String,
    until: Instant,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

impl SemanticIndexes {
    pub fn new(max_per_index: usize) -> Self {
        Self {
            indexes: Mutex::default(),
            max_per_index,
        }
    }

    fn insert(&self, index: &str, key: String, vector: Vec<f32>, ttl: Duration) {
        let mut all = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        let list = all.entry(index.to_string()).or_default();
        let now = Instant::now();
        list.retain(|e| e.until > now && e.key != key);
        while list.len() >= self.max_per_index.max(1) {
            list.pop_front();
        }
        list.push_back(Indexed {
            vector,
            key,
            until: now + ttl,
        });
    }

    /// The key of the closest live vector at `threshold` or above, and its similarity.
    fn nearest(&self, index: &str, vector: &[f32], threshold: f32) -> Option<(String, f32)> {
        let all = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        all.get(index)?
            .iter()
            .filter(|e| e.until > now)
            .map(|e| (e.key.clone(), cosine(&e.vector, vector)))
            .filter(|(_, s)| *s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

pub struct Cache {
    pub storage: Storage,
    pub max_entry_bytes: usize,
    pub outcomes: Outcomes,
    pub semantic: SemanticIndexes,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Insert {
    key: String,
    vector: Vec<f32>,
    ttl_ms: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Lookup {
    vector: Vec<f32>,
    threshold: f32,
}

/// The most dimensions a vector may have.
const MAX_DIMENSIONS: usize = 8192;

async fn semantic_insert(
    State(cache): State<Arc<Cache>>,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(i) = serde_json::from_slice::<Insert>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if !valid_key(&index)
        || !valid_key(&i.key)
        || i.vector.is_empty()
        || i.vector.len() > MAX_DIMENSIONS
        || !(1..=MAX_TTL_MS).contains(&i.ttl_ms)
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    cache
        .semantic
        .insert(&index, i.key, i.vector, Duration::from_millis(i.ttl_ms));
    StatusCode::NO_CONTENT.into_response()
}

/// The entry of the nearest prompt at the threshold or above (`x-sluice-similarity` says
/// how near), or 404.
async fn semantic_lookup(
    State(cache): State<Arc<Cache>>,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(l) = serde_json::from_slice::<Lookup>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if !valid_key(&index) || l.vector.is_empty() || l.vector.len() > MAX_DIMENSIONS {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some((key, similarity)) = cache.semantic.nearest(&index, &l.vector, l.threshold) else {
        cache.outcomes.misses.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NOT_FOUND.into_response();
    };
    match cache.storage.get(&key).await {
        Ok(Some(value)) => {
            cache.outcomes.hits.fetch_add(1, Ordering::Relaxed);
            let mut r = (StatusCode::OK, value).into_response();
            if let Ok(v) = format!("{similarity:.4}").parse() {
                r.headers_mut().insert(SIMILARITY_HEADER, v);
            }
            r
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(&cache, &e),
    }
}

/// How similar the prompt of a semantic hit was to the one asked.
pub const SIMILARITY_HEADER: &str = "x-sluice-similarity";

/// A key is 64 lower-case hex digits (the filter's SHA-256): nothing else reaches storage.
fn valid_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unavailable(cache: &Cache, e: &Unavailable) -> Response {
    cache.outcomes.unavailable.fetch_add(1, Ordering::Relaxed);
    eprintln!("sluice-cache: storage unavailable: {}", e.0);
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

async fn get_entry(State(cache): State<Arc<Cache>>, Path(key): Path<String>) -> Response {
    if !valid_key(&key) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match cache.storage.get(&key).await {
        Ok(Some(value)) => {
            cache.outcomes.hits.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, value).into_response()
        }
        Ok(None) => {
            cache.outcomes.misses.fetch_add(1, Ordering::Relaxed);
            StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => unavailable(&cache, &e),
    }
}

async fn put_entry(
    State(cache): State<Arc<Cache>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ttl_ms = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| (1..=MAX_TTL_MS).contains(t));
    let Some(ttl_ms) = ttl_ms.filter(|_| valid_key(&key)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if body.len() > cache.max_entry_bytes {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    match cache.storage.put(&key, body.to_vec(), ttl_ms).await {
        Ok(()) => {
            cache.outcomes.stores.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => unavailable(&cache, &e),
    }
}

/// The service's routes.
pub fn app(cache: Arc<Cache>) -> Router {
    Router::new()
        .route("/v1/entries/{key}", get(get_entry).put(put_entry))
        .route("/v1/semantic/{index}/insert", post(semantic_insert))
        .route("/v1/semantic/{index}/lookup", post(semantic_lookup))
        .route("/health", get(|| async { "ok\n" }))
        // An entry is checked against max_entry_bytes itself; a vector may be larger.
        .layer(axum::extract::DefaultBodyLimit::max(
            cache.max_entry_bytes.max(256 << 10) + 1,
        ))
        .with_state(cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn cache(max_bytes: usize) -> Arc<Cache> {
        Arc::new(Cache {
            storage: Storage::Memory(Mutex::new(Memory::new(max_bytes))),
            max_entry_bytes: 100,
            outcomes: Outcomes::default(),
            semantic: SemanticIndexes::new(3),
        })
    }

    async fn call(
        c: &Arc<Cache>,
        method: &str,
        key: &str,
        ttl: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut r = Request::builder()
            .method(method)
            .uri(format!("/v1/entries/{key}"));
        if let Some(t) = ttl {
            r = r.header(TTL_HEADER, t);
        }
        let resp = app(c.clone())
            .oneshot(r.body(Body::from(body.to_vec())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    #[tokio::test]
    async fn entries_are_stored_found_and_expire() {
        let c = cache(1000);
        let k = "a".repeat(64);
        assert_eq!(call(&c, "GET", &k, None, b"").await.0, 404);
        assert_eq!(call(&c, "PUT", &k, Some("150"), b"entry").await.0, 204);
        assert_eq!(
            call(&c, "GET", &k, None, b"").await,
            (200, b"entry".to_vec())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(call(&c, "GET", &k, None, b"").await.0, 404, "expired");
    }

    #[tokio::test]
    async fn bad_keys_ttls_and_sizes_are_refused() {
        let c = cache(1000);
        let k = "b".repeat(64);
        assert_eq!(call(&c, "GET", "etc", None, b"").await.0, 400);
        assert_eq!(call(&c, "GET", &"G".repeat(64), None, b"").await.0, 400);
        assert_eq!(call(&c, "PUT", &k, None, b"x").await.0, 400, "no ttl");
        assert_eq!(call(&c, "PUT", &k, Some("0"), b"x").await.0, 400);
        assert_eq!(call(&c, "PUT", &k, Some("10"), &[0u8; 101]).await.0, 413);
    }

    async fn post_json(c: &Arc<Cache>, uri: &str, body: &str) -> (u16, Option<String>, Vec<u8>) {
        let resp = app(c.clone())
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri(uri)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let sim = resp
            .headers()
            .get(SIMILARITY_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, sim, bytes.to_vec())
    }

    #[tokio::test]
    async fn the_nearest_prompt_above_the_threshold_answers_within_its_index() {
        let c = cache(1000);
        let (index, other) = ("1".repeat(64), "2".repeat(64));
        let (k1, k2) = ("a".repeat(64), "b".repeat(64));
        call(&c, "PUT", &k1, Some("60000"), b"one").await;
        call(&c, "PUT", &k2, Some("60000"), b"two").await;
        let insert = |k: &str, v: &str| format!(r#"{{"key":"{k}","vector":{v},"ttl_ms":60000}}"#);
        let at = |i: &str, op: &str| format!("/v1/semantic/{i}/{op}");
        assert_eq!(
            post_json(&c, &at(&index, "insert"), &insert(&k1, "[1,0,0]"))
                .await
                .0,
            204
        );
        assert_eq!(
            post_json(&c, &at(&index, "insert"), &insert(&k2, "[0,1,0]"))
                .await
                .0,
            204
        );
        let near = post_json(
            &c,
            &at(&index, "lookup"),
            r#"{"vector":[0.9,0.1,0],"threshold":0.9}"#,
        )
        .await;
        assert_eq!((near.0, near.2.as_slice()), (200, b"one".as_slice()));
        assert_eq!(near.1.as_deref(), Some("0.9939"));
        let far = post_json(
            &c,
            &at(&index, "lookup"),
            r#"{"vector":[0,0,1],"threshold":0.5}"#,
        )
        .await;
        assert_eq!(far.0, 404);
        let elsewhere = post_json(
            &c,
            &at(&other, "lookup"),
            r#"{"vector":[1,0,0],"threshold":0.5}"#,
        )
        .await;
        assert_eq!(
            elsewhere.0, 404,
            "another index (tenant, model) sees nothing"
        );
        assert_eq!(
            post_json(&c, &at("x", "lookup"), r#"{"vector":[1],"threshold":0.5}"#)
                .await
                .0,
            400
        );
        assert_eq!(
            post_json(&c, &at(&index, "insert"), r#"{"key":"k"}"#)
                .await
                .0,
            400
        );
    }

    #[test]
    fn memory_evicts_the_oldest_to_stay_within_its_bytes() {
        let mut m = Memory::new(10);
        let ttl = Duration::from_secs(60);
        m.put("a".into(), vec![0; 4], ttl);
        m.put("b".into(), vec![0; 4], ttl);
        m.put("c".into(), vec![0; 4], ttl);
        assert!(m.get("a").is_none());
        assert!(m.get("b").is_some() && m.get("c").is_some());
        m.put("c".into(), vec![0; 2], ttl);
        assert_eq!(m.bytes, 6, "a replaced entry's bytes are freed");
        m.put("huge".into(), vec![0; 11], ttl);
        assert!(m.get("huge").is_none());
    }
}
