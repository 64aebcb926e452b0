//! The HTTP API: OpenAI's Files and Batches endpoints, each scoped to the caller's tenant.
//!
//! The caller is who key-auth said it is: Envoy's route to this service sets
//! `x-sluice-tenant` and `x-sluice-key-id` from key-auth's filter state (key-auth removes any
//! `x-sluice-*` header a client sent), so the service must be reachable only through Envoy
//! (it listens on 127.0.0.1 by default).

use crate::model::{
    Batch, CreateBatch, FileObject, List, BATCH_ENDPOINTS, COMPLETION_WINDOW, PURPOSE_BATCH,
};
use crate::store::{BlobStore, Owner, Store, StoreError};
use crate::{new_id, now_secs};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sluice_common::{ErrorKind, OpenAiError};
use std::sync::Arc;

pub const TENANT_HEADER: &str = "x-sluice-tenant";
pub const KEY_ID_HEADER: &str = "x-sluice-key-id";

pub struct AppState {
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    /// The largest upload accepted, bytes.
    pub max_file_bytes: usize,
}

/// An error answered in OpenAI's shape.
pub struct ApiError(OpenAiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, self.0.body()).into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        eprintln!("sluice-batch: {e}");
        ApiError(OpenAiError::new(
            ErrorKind::ServerError,
            "The batch service could not complete the request.",
        ))
    }
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError(OpenAiError::new(ErrorKind::InvalidRequest, message).with_param(param))
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError(
        OpenAiError::new(ErrorKind::ModelNotFound, format!("No such {what}: '{id}'"))
            .with_code("not_found"),
    )
}

type ApiResult<T> = Result<T, ApiError>;

/// Who is calling, from the headers Envoy set.
fn owner(headers: &HeaderMap) -> ApiResult<Owner> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    match (get(TENANT_HEADER), get(KEY_ID_HEADER)) {
        (Some(tenant), Some(key_id)) => Ok(Owner { tenant, key_id }),
        _ => Err(ApiError(
            OpenAiError::new(
                ErrorKind::Authentication,
                "No identity: call the batch API through the Sluice gateway with an API key.",
            )
            .with_code("missing_api_key"),
        )),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_file_bytes + 64 * 1024;
    Router::new()
        .route("/v1/files", post(upload).get(list_files))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route("/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn upload(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> ApiResult<Json<FileObject>> {
    let owner = owner(&headers)?;
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| invalid(format!("Could not read the upload: {e}"), "file"))?
    {
        match field.name() {
            Some("purpose") => {
                purpose = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| invalid(e.to_string(), "purpose"))?,
                )
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| invalid(format!("Could not read the file: {e}"), "file"))?;
                file = Some((name, bytes));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| invalid("'purpose' is required.", "purpose"))?;
    if purpose != PURPOSE_BATCH {
        return Err(invalid(
            format!("'{purpose}' is not a supported purpose here: only 'batch'."),
            "purpose",
        ));
    }
    let (filename, bytes) = file.ok_or_else(|| invalid("'file' is required.", "file"))?;
    if bytes.len() > app.max_file_bytes {
        return Err(invalid(
            format!("The file is larger than {} bytes.", app.max_file_bytes),
            "file",
        ));
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(invalid("A batch file must be UTF-8 JSONL.", "file"));
    }
    let object = FileObject {
        id: new_id("file-"),
        object: "file",
        bytes: bytes.len() as u64,
        created_at: now_secs(),
        filename,
        purpose,
        status: "processed",
        expires_at: None,
    };
    app.blobs.put(&object.id, &bytes)?;
    app.store.insert_file(&owner.tenant, &object).await?;
    Ok(Json(object))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<i64>,
    purpose: Option<String>,
}

async fn list_files(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> ApiResult<Json<List<FileObject>>> {
    let owner = owner(&headers)?;
    let limit = page.limit.unwrap_or(10_000).clamp(1, 10_000);
    let (files, more) = app
        .store
        .files(
            &owner.tenant,
            page.purpose.as_deref(),
            page.after.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(List::new(files, more, |f| f.id.clone())))
}

async fn get_file(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<FileObject>> {
    let owner = owner(&headers)?;
    app.store
        .file(&owner.tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("File", &id))
}

async fn file_content(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let owner = owner(&headers)?;
    if app.store.file(&owner.tenant, &id).await?.is_none() {
        return Err(not_found("File", &id));
    }
    let bytes = app.blobs.get(&id)?;
    let mut response = Bytes::from(bytes).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

async fn delete_file(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let owner = owner(&headers)?;
    if !app.store.delete_file(&owner.tenant, &id).await? {
        return Err(not_found("File", &id));
    }
    app.blobs.delete(&id)?;
    Ok(Json(
        serde_json::json!({"id": id, "object": "file", "deleted": true}),
    ))
}

async fn create_batch(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Batch>> {
    let owner = owner(&headers)?;
    let request: CreateBatch = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("Invalid request body: {e}"), "body"))?;
    if !BATCH_ENDPOINTS.contains(&request.endpoint.as_str()) {
        return Err(invalid(
            format!(
                "'{}' is not a supported endpoint; one of {}.",
                request.endpoint,
                BATCH_ENDPOINTS.join(", ")
            ),
            "endpoint",
        ));
    }
    if request.completion_window != COMPLETION_WINDOW {
        return Err(invalid(
            "'completion_window' must be '24h'.",
            "completion_window",
        ));
    }
    if let Some(m) = &request.metadata {
        let ok = m.as_object().is_some_and(|o| {
            o.len() <= 16
                && o.iter()
                    .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512))
        });
        if !ok && !m.is_null() {
            return Err(invalid(
                "'metadata' must be at most 16 string pairs (keys up to 64, values up to 512 characters).",
                "metadata",
            ));
        }
    }
    let file = app
        .store
        .file(&owner.tenant, &request.input_file_id)
        .await?
        .ok_or_else(|| not_found("File", &request.input_file_id))?;
    if file.purpose != PURPOSE_BATCH {
        return Err(invalid(
            "The input file must have purpose 'batch'.",
            "input_file_id",
        ));
    }
    let batch = Batch::validating(
        new_id("batch_"),
        request.endpoint,
        request.input_file_id,
        request.metadata,
        now_secs(),
    );
    app.store.insert_batch(&owner, &batch).await?;
    Ok(Json(batch))
}

async fn get_batch(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    let owner = owner(&headers)?;
    app.store
        .batch(&owner.tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("Batch", &id))
}

async fn list_batches(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> ApiResult<Json<List<Batch>>> {
    let owner = owner(&headers)?;
    let limit = page.limit.unwrap_or(20).clamp(1, 100);
    let (batches, more) = app
        .store
        .batches(&owner.tenant, page.after.as_deref(), limit)
        .await?;
    Ok(Json(List::new(batches, more, |b| b.id.clone())))
}

async fn cancel_batch(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    let owner = owner(&headers)?;
    app.store
        .cancel(&owner.tenant, &id, now_secs())
        .await?
        .map(Json)
        .ok_or_else(|| not_found("Batch", &id))
}
