//! proxy-wasm glue: configuration, counters, and the per-request hook. No policy here.

use crate::wasm_host::{define_counter, increment, WasmHost};
use crate::{on_request_headers, Denial, KeyAuthConfig, KeyStore, Outcome};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
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
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("key-auth: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let store = sluice_common::parse_config::<KeyAuthConfig>(&bytes)
            .and_then(|config| KeyStore::from_config(&config));
        match store {
            Ok(store) => {
                log::info!("key-auth: configured with {} keys", store.len());
                self.state = Some(Rc::new(State {
                    store,
                    counters: Counters::define(),
                }));
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject this config and keep the previous one.
                log::error!("key-auth: configuration rejected: {e}");
                false
            }
        }
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
                increment(self.state.as_ref().and_then(|s| s.counters.allowed));
                Action::Continue
            }
            Outcome::Denied(denial) => {
                log::debug!("key-auth: denied ({})", denial.reason());
                increment(self.state.as_ref().and_then(|s| s.counters.denied(denial)));
                Action::Pause
            }
        }
    }
}
