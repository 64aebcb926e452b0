//! proxy-wasm glue: configuration, counters, and the per-request hook. No policy here.

use crate::{on_request_headers, Denial, KeyAuthConfig, KeyStore, Outcome};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use sluice_proxy::{define_counter, increment, WasmHost};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(KeyAuthRoot::default()) });
}}

/// Counter ids, defined once per VM. Envoy shows them as
/// `wasmcustom.sluice.key_auth.{allowed,denied.<reason>}`.
struct Counters {
    allowed: Option<u32>,
    denied: [Option<u32>; Denial::ALL.len()],
}

impl Counters {
    fn define() -> Self {
        Self {
            allowed: define_counter("sluice.key_auth.allowed"),
            denied: Denial::ALL
                .map(|d| define_counter(&format!("sluice.key_auth.denied.{}", d.reason()))),
        }
    }

    fn denied(&self, denial: Denial) -> Option<u32> {
        Denial::ALL
            .iter()
            .position(|d| *d == denial)
            .and_then(|i| self.denied.get(i).copied().flatten())
    }
}

struct State {
    store: KeyStore,
    counters: Counters,
}

#[derive(Default)]
struct KeyAuthRoot {
    state: Option<Rc<State>>,
}

impl Context for KeyAuthRoot {}

impl RootContext for KeyAuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parse = |b: &[u8]| {
            sluice_common::parse_config::<KeyAuthConfig>(b)
                .and_then(|config| KeyStore::from_config(&config))
        };
        // On `None` Envoy rejects this config and keeps the previous one.
        let Some(store) = sluice_proxy::configure("key-auth", parse) else {
            return false;
        };
        log::info!("key-auth: configured with {} keys", store.len());
        self.state = Some(Rc::new(State {
            store,
            counters: Counters::define(),
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(KeyAuthHttp {
            state: self.state.clone(),
        }))
    }
}

struct KeyAuthHttp {
    /// `None` only if Envoy created a context despite a failed configure: fail closed.
    state: Option<Rc<State>>,
}

impl Context for KeyAuthHttp {}

impl HttpContext for KeyAuthHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let empty = KeyStore::default();
        let store = self.state.as_ref().map_or(&empty, |s| &s.store);
        match on_request_headers(store, &mut WasmHost) {
            Outcome::Allowed { key_id } => {
                log::debug!("key-auth: allowed key {key_id}");
                increment(self.state.as_ref().and_then(|s| s.counters.allowed), 1);
                Action::Continue
            }
            Outcome::Denied(denial) => {
                log::debug!("key-auth: denied ({})", denial.reason());
                increment(
                    self.state.as_ref().and_then(|s| s.counters.denied(denial)),
                    1,
                );
                Action::Pause
            }
        }
    }
}
