//! The probe filter of `sluice_testkit::probe` as a wasm module: what one host call of a
//! kind costs inside Envoy (`scripts/bench-chain.sh`). Built with `cargo build --profile
//! wasm-release --target wasm32-wasip1 -p sluice-proxy --example probe`.

#[cfg(target_arch = "wasm32")]
sluice_proxy::filter!(sluice_testkit::probe::Probe);
