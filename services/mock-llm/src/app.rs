//! The HTTP side of the mock: routing, failure injection, recording, metrics.

use crate::config::MockConfig;
use crate::reply::{self, Api, Call};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Requests kept for `GET /_mock/requests`; the oldest go first, so memory stays bounded.
const MAX_RECORDED: usize = 10_000;
/// Largest request body the mock reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as the upstream saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query string as received (without `?`), empty when there is none.
    pub query: String,
    /// Lower-cased names, in arrival order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub struct App {
    config: RwLock<MockConfig>,
    recorded: Mutex<VecDeque<Recorded>>,
    running: AtomicI64,
    served: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    sim: Arc<crate::sim::Sim>,
}

impl App {
    pub fn new(config: MockConfig) -> Arc<Self> {
        Arc::new(Self {
            config: RwLock::new(config),
            recorded: Mutex::new(VecDeque::new()),
            running: AtomicI64::new(0),
            served: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            sim: Arc::new(crate::sim::Sim::default()),
        })
    }

    fn config(&self) -> MockConfig {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Take one failure from the injected budget, if any is left.
    fn take_failure(&self) -> Option<u16> {
        let mut config = self.config.write().unwrap_or_else(|p| p.into_inner());
        let status = config.fail_status?;
        match config.fail_count {
            Some(0) => None,
            Some(n) => {
                config.fail_count = Some(n - 1);
                Some(status)
            }
            None => Some(status),
        }
    }

    fn record(&self, r: Recorded) {
        let mut q = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == MAX_RECORDED {
            q.pop_front();
        }
        q.push_back(r);
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn openai_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        code,
        &json!({"error": {"message": message, "type": "mock_error", "param": null, "code": null}}),
    )
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return openai_error(413, "request body too large for the mock"),
    };
    match (method.clone(), path.as_str()) {
        (Method::GET, "/health") => {
            if app.config().healthy {
                (StatusCode::OK, "ok\n").into_response()
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n").into_response()
            }
        }
        (Method::GET, "/metrics") => metrics(&app),
        (Method::GET, "/_mock/requests") => {
            let q = app.recorded.lock().unwrap_or_else(|p| p.into_inner());
            json_response(StatusCode::OK, &json!(q.iter().collect::<Vec<_>>()))
        }
        (Method::DELETE, "/_mock/requests") => {
            app.recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/_mock/config") => json_response(StatusCode::OK, &json!(app.config())),
        (Method::PUT, "/_mock/config") => set_config(&app, &body),
        _ => {
            app.record(Recorded {
                method: method.to_string(),
                path: path.clone(),
                query,
                headers: header_pairs(&headers),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            match (method, path.as_str()) {
                (Method::GET, "/v1/models") => models(&app),
                (Method::POST, "/v1/chat/completions") => complete(app, Api::Chat, body).await,
                (Method::POST, "/v1/completions") => complete(app, Api::Completions, body).await,
                (Method::POST, "/v1/responses") => complete(app, Api::Responses, body).await,
                (Method::POST, "/v1/messages") => complete(app, Api::Messages, body).await,
                (Method::POST, "/v1/messages/count_tokens") => match reply::count_tokens(&body) {
                    Ok(v) => json_response(StatusCode::OK, &v),
                    Err(e) => openai_error(400, &e),
                },
                (Method::POST, "/v1/embeddings") => embeddings(&body),
                _ => openai_error(404, "no such endpoint on the mock"),
            }
        }
    }
}

/// `/v1/embeddings`: one small deterministic vector per input, usage as OpenAI reports it.
fn embeddings(body: &[u8]) -> Response {
    let view = match sluice_common::RequestView::parse(sluice_common::Api::Embeddings, body) {
        Ok(v) => v,
        Err(e) => return openai_error(400, &e.message),
    };
    let inputs: Vec<&str> = view.texts();
    let prompt_tokens: u64 = inputs
        .iter()
        .map(|t| t.split_whitespace().count() as u64)
        .sum();
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": bag_of_words(t)}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": view.model().unwrap_or_default(),
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
    )
}

/// Words that say little about what a text asks.
const STOP_WORDS: [&str; 16] = [
    "a", "an", "and", "are", "do", "does", "for", "i", "in", "is", "it", "of", "on", "the", "to",
    "what",
];

/// The mock's embedding: a deterministic bag of words (each word but the stop words hashed
/// into one of 64 dimensions, the vector normalised), so texts that share most of their
/// words are close (a paraphrase) and texts that share none are orthogonal. Enough to test
/// a semantic cache; not a language model.
pub fn bag_of_words(text: &str) -> Vec<f64> {
    let mut v = vec![0.0f64; 64];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| !w.is_empty() && !STOP_WORDS.contains(&w.as_str()))
    {
        let dim = sluice_common::hash::fnv1a(word.as_bytes()) % 64;
        if let Some(x) = v.get_mut(dim as usize) {
            *x += 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        if let Some(x) = v.first_mut() {
            *x = 1.0;
        }
        return v;
    }
    v.iter().map(|x| x / norm).collect()
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn set_config(app: &App, body: &[u8]) -> Response {
    let patch: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return openai_error(400, &e.to_string()),
    };
    let mut config = app.config.write().unwrap_or_else(|p| p.into_inner());
    match config.patched(&patch) {
        Ok(new) => {
            *config = new;
            json_response(StatusCode::OK, &json!(*config))
        }
        Err(e) => openai_error(400, &e),
    }
}

fn models(app: &App) -> Response {
    let data: Vec<_> = app
        .config()
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "sluice-mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn metrics(app: &App) -> Response {
    let config = app.config();
    if config.sim_slots.is_some() {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            app.sim.metrics(&config),
        )
            .into_response();
    }
    let name = config.name;
    let running = app.running.load(Ordering::Relaxed);
    let text = format!(
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{name}\"}} {running}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{name}\"}} 0\n\
         # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{model_name=\"{name}\"}} {}\n\
         # HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{model_name=\"{name}\"}} {}\n",
        app.prompt_tokens.load(Ordering::Relaxed),
        app.generation_tokens.load(Ordering::Relaxed),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Counts a request as running from admission until its body is fully sent or dropped.
struct Running(Arc<App>);

impl Running {
    fn start(app: &Arc<App>) -> Self {
        app.running.fetch_add(1, Ordering::Relaxed);
        Self(app.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn complete(app: Arc<App>, api: Api, body: Bytes) -> Response {
    let running = Running::start(&app);
    let config = app.config();
    if config.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.delay_ms)).await;
    }
    if let Some(status) = app.take_failure() {
        let mut resp = match &config.fail_body {
            Some(body) => json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            ),
            None => openai_error(status, "injected failure"),
        };
        if let Some(v) = config
            .fail_retry_after
            .and_then(|s| s.to_string().parse().ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let call = match Call::parse(api, &body) {
        Ok(c) => c,
        Err(e) => return openai_error(400, &e),
    };
    let plan = match &config.reply_text {
        Some(text) => reply::plan_text(&call, text, config.reply_chunk),
        None => reply::plan(&call, config.reply_tokens),
    };
    let n = app.served.fetch_add(1, Ordering::Relaxed);
    let id = format!("cmpl-mock-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    app.prompt_tokens
        .fetch_add(plan.usage.prompt_tokens, Ordering::Relaxed);
    app.generation_tokens
        .fetch_add(plan.usage.completion_tokens, Ordering::Relaxed);
    let pool = config.name.clone();
    // Engine simulation: wait for a batch slot, then pay prefill and decode.
    let ticket = app
        .sim
        .admit(&config, &call.prompt_text, plan.usage.completion_tokens)
        .await;
    let (ttft_us, token_us) = match &ticket {
        Some(t) => (
            config.ttft_ms * 1000 + u64::try_from(t.prefill.as_micros()).unwrap_or(u64::MAX),
            u64::try_from(t.per_token.as_micros()).unwrap_or(u64::MAX),
        ),
        None => (config.ttft_ms * 1000, config.token_delay_ms * 1000),
    };
    if !call.stream {
        if ticket.is_some() {
            let total = ttft_us + token_us * plan.usage.completion_tokens;
            tokio::time::sleep(Duration::from_micros(total)).await;
        }
        drop(ticket);
        let value = reply::full_response(&call, &plan, &id, created, config.usage);
        let mut resp = json_response(StatusCode::OK, &value);
        if let Ok(v) = pool.parse() {
            resp.headers_mut().insert("x-mock-pool", v);
        }
        return resp;
    }
    let mut events = reply::stream_events(&call, &plan, &id, created, config.usage);
    if let Some(k) = config.stream_error_after {
        // Content chunks are numbered from 1 (event 0 opens the message).
        let keep = usize::try_from(k).unwrap_or(usize::MAX).saturating_add(1);
        events.truncate(keep.min(events.len()));
        if config.stream_error_legacy {
            let error = json!({"code": 400, "message": "injected stream error", "type": "invalid_request_error"});
            events.push(format!("error: {error}\n\n"));
        } else {
            let error = json!({"error": {"object": "error", "message": "injected stream error",
                                         "type": "InternalServerError", "param": null, "code": 500}});
            events.push(format!("data: {error}\n\n"));
        }
    }
    // (delay before in µs, bytes, index of the event it belongs to)
    let mut writes: Vec<(u64, Bytes, usize)> = Vec::with_capacity(events.len() * 2);
    // Simulated, the engine spends one decode step per output token: the events after the
    // first carry those steps, and the closing events (finish, usage, [DONE]) follow at
    // once, as an engine sends them with or right after its last token.
    let steps = ticket
        .as_ref()
        .map(|_| usize::try_from(plan.usage.completion_tokens).unwrap_or(usize::MAX));
    for (i, event) in events.into_iter().enumerate() {
        let delay = match (i, steps) {
            (0, _) => ttft_us,
            (i, Some(n)) if i > n => 0,
            _ => token_us,
        };
        if config.split_events && event.len() > 1 {
            let cut = event.len() / 2;
            let (a, b) = event.split_at(cut);
            writes.push((delay, Bytes::copy_from_slice(a.as_bytes()), i));
            writes.push((20_000, Bytes::copy_from_slice(b.as_bytes()), i));
        } else {
            writes.push((delay, Bytes::from(event), i));
        }
    }
    let disconnect_after = config.disconnect_after;
    // The batch slot (`ticket`) is held until the last byte is sent or the client leaves.
    let stream = futures::stream::unfold(
        (writes.into_iter(), (running, ticket)),
        move |(mut writes, running)| async move {
            let (delay, bytes, event) = writes.next()?;
            if delay > 0 {
                tokio::time::sleep(Duration::from_micros(delay)).await;
            }
            // Content chunks are numbered from 1 (event 0 opens the message).
            if disconnect_after.is_some_and(|k| event as u64 > k) {
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "injected");
                // Pause first so hyper flushes what was sent: the client must see a stream
                // that started and was then cut, not a failed request.
                tokio::time::sleep(Duration::from_millis(20)).await;
                writes.by_ref().for_each(drop);
                return Some((Err(cut), (writes, running)));
            }
            Some((Ok(bytes), (writes, running)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-mock-pool", pool)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| openai_error(500, "cannot build the stream"))
}
