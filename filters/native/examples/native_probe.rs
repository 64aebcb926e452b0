//! The probe and no-op filters of `sluice_testkit::probe` as an Envoy dynamic module: the
//! same host calls and filter instances as the wasm probe, with no VM
//! (`scripts/bench-chain.sh`'s native rows). Built with `cargo build --release -p
//! sluice-native --example native_probe` (`target/release/examples/libnative_probe.so`).

sluice_native::native_filters!(
    "probe" => sluice_testkit::probe::Probe,
    "noop" => sluice_testkit::probe::Noop,
);
