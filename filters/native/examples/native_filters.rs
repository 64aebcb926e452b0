//! The seven Sluice filters as one Envoy dynamic module (a measurement build: see
//! `sluice-native`'s docs for what its host does not do yet). Each filter is chosen by the
//! filter name Envoy configures, as `sluice-filters` chooses by root id, from the same list.
//! Built with `cargo build --release -p sluice-native --example native_filters`
//! (`target/release/examples/libnative_filters.so`).

sluice_filters::with_filters!(sluice_native::native_filters);
