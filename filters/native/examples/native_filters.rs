//! The seven Sluice filters as one Envoy dynamic module (a measurement build: see
//! `sluice-native`'s docs for what its host does not do yet). Each filter is chosen by the
//! filter name Envoy configures, as `sluice-filters` chooses by root id. Built with
//! `cargo build --release -p sluice-native --example native_filters`
//! (`target/release/examples/libnative_filters.so`).

sluice_native::native_filters!(
    "key_auth" => sluice_key_auth::lifecycle::KeyAuth,
    "rate_limit" => sluice_rate_limit::lifecycle::RateLimit,
    "model_router" => sluice_model_router::lifecycle::ModelRouter,
    "pii_redaction" => sluice_pii_redaction::lifecycle::PiiRedaction,
    "token_counter" => sluice_token_counter::lifecycle::TokenCounter,
    "response_cache" => sluice_response_cache::lifecycle::ResponseCache,
    "endpoint_picker" => sluice_endpoint_picker::lifecycle::EndpointPicker,
);
