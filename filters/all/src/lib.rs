//! sluice-filters: the seven filters in one wasm module.
//!
//! Envoy gives each `vm_id` its own V8 VM per worker. With one module per filter the chain
//! runs in seven VMs, and a request enters each of them at every phase; with this module
//! every filter of the chain names the same `vm_id` and code, so one VM per worker holds
//! them all (the two rate-limit stages already shared theirs). Each filter stays its own
//! entry in Envoy's chain, with its own configuration and `root_id`; the root context
//! becomes the filter its root id names ([`sluice_proxy::RootById`]). Nothing else changes:
//! the filters' shared-data keys have their own prefixes (`rl:`, `rc:`, `px:`, ...), as
//! they must in one VM.
//!
//! The per-filter modules are still built (the Istio WasmPlugins load one each).

use sluice_common::chain::{configure, Chain, ChainRequest, Configure};
use sluice_common::host::{Host, Plugin};
use sluice_common::ConfigError;
use std::rc::Rc;

// The filters' crates, for `with_filters!`'s expansion in another crate.
pub use {
    sluice_endpoint_picker, sluice_key_auth, sluice_model_router, sluice_pii_redaction,
    sluice_rate_limit, sluice_response_cache, sluice_token_counter,
};

/// The seven filters, each after the part of its root id (or filter name) that chooses it
/// (`sluice.rate_limit.admission` runs `rate_limit`), and [`SluiceChain`] (`sluice.chain`:
/// several of them as one Envoy filter): one list for every build of the chain.
/// `with_filters!(some::glue)` expands to `some::glue!("chain" => SluiceChain, "key_auth" =>
/// KeyAuth, ...)` (`sluice_proxy::filters` for the wasm module,
/// `sluice_native::native_filters` for the dynamic module).
#[macro_export]
macro_rules! with_filters {
    ($($glue:tt)+) => {
        $($glue)+!(
            "chain" => $crate::SluiceChain,
            "key_auth" => $crate::sluice_key_auth::lifecycle::KeyAuth,
            "rate_limit" => $crate::sluice_rate_limit::lifecycle::RateLimit,
            "model_router" => $crate::sluice_model_router::lifecycle::ModelRouter,
            "pii_redaction" => $crate::sluice_pii_redaction::lifecycle::PiiRedaction,
            "token_counter" => $crate::sluice_token_counter::lifecycle::TokenCounter,
            "response_cache" => $crate::sluice_response_cache::lifecycle::ResponseCache,
            "endpoint_picker" => $crate::sluice_endpoint_picker::lifecycle::EndpointPicker,
        );
    };
}

/// The filters a [`SluiceChain`] may hold, by the part of the root id that chooses each.
const MEMBERS: &[(&str, Configure)] = &[
    ("key_auth", configure::<sluice_key_auth::lifecycle::KeyAuth>),
    (
        "rate_limit",
        configure::<sluice_rate_limit::lifecycle::RateLimit>,
    ),
    (
        "model_router",
        configure::<sluice_model_router::lifecycle::ModelRouter>,
    ),
    (
        "pii_redaction",
        configure::<sluice_pii_redaction::lifecycle::PiiRedaction>,
    ),
    (
        "token_counter",
        configure::<sluice_token_counter::lifecycle::TokenCounter>,
    ),
    (
        "response_cache",
        configure::<sluice_response_cache::lifecycle::ResponseCache>,
    ),
    (
        "endpoint_picker",
        configure::<sluice_endpoint_picker::lifecycle::EndpointPicker>,
    ),
];

/// Several of the filters as one Envoy filter (`sluice.chain`; its configuration
/// `{"filters": [{"name": "sluice.model_router", "config": ...}, ...]}`): one filter
/// instance instead of one per filter, each member seeing the stream as it would as its own
/// filter ([`sluice_common::chain`]; docs/architecture.md, "One Envoy filter for the
/// filters after the buffer").
pub struct SluiceChain(Chain);

impl Plugin for SluiceChain {
    const NAME: &'static str = "sluice.chain";
    type Request = ChainRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let chain = Chain::configure(host, MEMBERS)?;
        log::info!(
            "sluice.chain: configured with {}",
            chain.names().collect::<Vec<_>>().join(", ")
        );
        Ok(Self(chain))
    }

    fn new_request(self: &Rc<Self>, context_id: u32) -> ChainRequest {
        self.0.new_request(context_id)
    }

    fn on_tick(&self, host: &mut dyn Host) {
        self.0.on_tick(host);
    }

    fn on_worker_tick(&self, host: &mut dyn Host) {
        self.0.on_worker_tick(host);
    }

    fn holds_requests(&self) -> bool {
        self.0.holds_requests()
    }

    fn on_grpc_response(&self, host: &mut dyn Host, token: u32, status: u32, size: usize) {
        self.0.on_grpc_response(host, token, status, size);
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize) {
        self.0.on_http_response(host, token, body_size);
    }
}

// The root ids as the Envoy configs name them (`sluice.rate_limit.admission`, ...).
#[cfg(all(target_arch = "wasm32", not(test), feature = "entry"))]
with_filters!(sluice_proxy::filters);
