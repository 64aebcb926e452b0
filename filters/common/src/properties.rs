//! Names of the filter-state properties through which the filters talk to each other.
//!
//! A filter publishes with `set_property([NAME], value)`; another wasm filter reads it with
//! `get_property([NAME])`; the access log reads `%FILTER_STATE(wasm.NAME:PLAIN)%`.
//! A client cannot forge filter state, which is why these, and never headers, carry identity.

/// The key's public id (never the secret). Written by key-auth.
pub const KEY_ID: &str = "sluice_key_id";
/// Tenant / team of the key. Written by key-auth.
pub const TENANT: &str = "sluice_tenant";
/// JSON of the key's [`crate::Policy`]. Written by key-auth.
pub const POLICY: &str = "sluice_policy";
/// `model` as the client sent it. Written by model-router.
pub const MODEL_REQUESTED: &str = "sluice_model_requested";
/// The upstream model name actually sent. Written by model-router.
pub const MODEL: &str = "sluice_model";
/// The pool (Envoy cluster) chosen. Written by model-router.
pub const ROUTE: &str = "sluice_route";
/// Prompt tokens of the body sent upstream. Written by token-counter.
pub const PROMPT_TOKENS: &str = "sluice_prompt_tokens";
/// Completion tokens, final. Written by token-counter.
pub const COMPLETION_TOKENS: &str = "sluice_completion_tokens";
/// `backend` or `counted`. Written by token-counter.
pub const USAGE_SOURCE: &str = "sluice_usage_source";
/// The request's output cap (`max_completion_tokens`, else `max_tokens`), absent when it
/// sets none. Written by token-counter with the prompt count, so rate-limit can reserve on
/// headers without reading the body again. (An addition to DESIGN.md's table.)
pub const MAX_OUTPUT_TOKENS: &str = "sluice_max_output_tokens";
/// The API family of the request: `chat`, `completions`, `embeddings`, `responses`,
/// `messages`, `count_tokens`. Written by token-counter (which classifies every governed
/// request; DESIGN.md names model-router, which is optional in the chain).
pub const API: &str = "sluice_api";
/// The gateway's own prompt count, kept beside the backend's. Written by token-counter.
pub const PROMPT_TOKENS_ESTIMATED: &str = "sluice_prompt_tokens_estimated";
/// The backend's error message, when the request failed at the backend: an error status
/// (normalised, see `engine_error`) or an error event inside a 200 stream. A request with
/// this set is logged as failed and charged nothing. Written by token-counter.
pub const ERROR: &str = "sluice_error";
/// JSON: PII counts per entity type and the action taken. Written by pii-redaction.
pub const PII: &str = "sluice_pii";
/// `interactive` or `batch`: how the key's requests wait when a pool is saturated. Written
/// by key-auth.
pub const PRIORITY: &str = "sluice_priority";
/// key-auth, for a request sluice-batch sent for a batch's owner: JSON `{"batch_id",
/// "custom_id"}`.
pub const BATCH: &str = "sluice_batch";
/// JSON: which limit decided, remaining, reserved, reconciled. Written by rate-limit.
pub const RATELIMIT: &str = "sluice_ratelimit";
/// JSON: the endpoint chosen and why (`endpoint`, `reason`, `load`, `prefix_blocks`).
/// Written by endpoint-picker.
pub const ENDPOINT: &str = "sluice_endpoint";
/// JSON: what the response cache did (`result`: `hit`, `miss`, `bypass`, `stored`; the
/// `tier` that answered; for a hit the backend time it saved). Written by response-cache.
pub const CACHE: &str = "sluice_cache";

/// The one internal header: Envoy's route table matches it. model-router always overwrites
/// or removes it; key-auth strips every client-sent header with [`INTERNAL_HEADER_PREFIX`].
pub const ROUTE_HEADER: &str = "x-sluice-route";
/// The endpoints to try, best first (`IP:port,IP:port`): Envoy's `override_host` load
/// balancing policy reads it. endpoint-picker always overwrites or removes it.
pub const ENDPOINT_HEADER: &str = "x-sluice-endpoint";
/// No request header with this prefix is trusted when it comes from a client.
pub const INTERNAL_HEADER_PREFIX: &str = "x-sluice-";

/// Every property name, for access-log and documentation checks.
pub const ALL: [&str; 19] = [
    CACHE,
    PRIORITY,
    BATCH,
    ENDPOINT,
    API,
    ERROR,
    PROMPT_TOKENS_ESTIMATED,
    KEY_ID,
    TENANT,
    POLICY,
    MODEL_REQUESTED,
    MODEL,
    ROUTE,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    USAGE_SOURCE,
    MAX_OUTPUT_TOKENS,
    PII,
    RATELIMIT,
];
