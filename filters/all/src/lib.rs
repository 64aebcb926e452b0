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

use sluice_common::chain::{configure, Chain, Configure, Members};

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

/// `with_filters!`'s list as the filters a [`SluiceChain`] may hold.
macro_rules! members {
    ($($part:literal => $plugin:ty),+ $(,)?) => {
        const MEMBERS: &[(&str, Configure)] = &[$(($part, configure::<$plugin> as Configure)),+];
    };
}
with_filters!(members);

/// The filters of this module, as a chain's members.
pub struct SluiceFilters;

impl Members for SluiceFilters {
    const FILTERS: &'static [(&'static str, Configure)] = MEMBERS;
}

/// Several of the filters as one Envoy filter (`sluice.chain`; its configuration
/// `{"filters": [{"name": "sluice.model_router", "config": ...}, ...]}`): one filter
/// instance instead of one per filter, each member seeing the stream as it would as its own
/// filter ([`sluice_common::chain`]; docs/architecture.md, "One Envoy filter after the
/// buffer").
pub type SluiceChain = Chain<SluiceFilters>;

// The root ids as the Envoy configs name them (`sluice.rate_limit.admission`, ...).
#[cfg(all(target_arch = "wasm32", not(test), feature = "entry"))]
with_filters!(sluice_proxy::filters);
