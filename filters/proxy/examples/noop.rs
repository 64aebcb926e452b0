//! A filter that does nothing through the same glue as every Sluice filter: what one wasm
//! filter instance costs Envoy per request before it does any work (the floor row of
//! `scripts/bench-chain.sh`). Built with `cargo build --profile wasm-release --target
//! wasm32-wasip1 -p sluice-proxy --example noop`.

#[cfg(target_arch = "wasm32")]
sluice_proxy::filter!(sluice_testkit::probe::Noop);
