//! A filter that does nothing through the same glue as every Sluice filter: what one wasm
//! filter instance costs Envoy per request before it does any work (the floor row of
//! `scripts/bench-chain.sh`). Built with `cargo build --profile wasm-release --target
//! wasm32-wasip1 -p sluice-proxy --example noop`.

#[cfg(target_arch = "wasm32")]
mod noop {
    use sluice_common::host::{Host, Lifecycle, Plugin};
    use sluice_common::ConfigError;
    use std::rc::Rc;

    pub struct Noop;
    pub struct NoopRequest;

    impl Lifecycle for NoopRequest {}

    impl Plugin for Noop {
        const NAME: &'static str = "noop";
        type Request = NoopRequest;

        fn configure(_host: &mut dyn Host) -> Result<Self, ConfigError> {
            Ok(Self)
        }

        fn new_request(self: &Rc<Self>, _context_id: u32) -> NoopRequest {
            NoopRequest
        }
    }
}

#[cfg(target_arch = "wasm32")]
sluice_proxy::filter!(noop::Noop);
