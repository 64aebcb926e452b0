//! sluice-filters: the seven filters in one wasm module.
//!
//! Envoy gives each `vm_id` its own V8 VM per worker. With one module per filter the chain
//! runs in seven VMs, and a request enters each of them at every phase; with this module
//! every filter of the chain names the same `vm_id` and code, so one VM per worker holds
//! them all (the two rate-limit stages already shared theirs). Each filter stays its own
//! entry in Envoy's chain, with its own configuration and `root_id`: the root context reads
//! `plugin_root_id` when it is configured and becomes that filter's
//! [`RootGlue`](sluice_proxy::RootGlue). Nothing else changes: the filters' shared-data
//! keys have their own prefixes (`rl:`, `rc:`, `px:`, ...), as they must in one VM.
//!
//! The per-filter modules are still built (the Istio WasmPlugins load one each).

#[cfg(all(target_arch = "wasm32", not(test)))]
mod entry {
    use sluice_proxy::proxy_wasm::hostcalls;
    use sluice_proxy::proxy_wasm::traits::{Context, HttpContext, RootContext};
    use sluice_proxy::proxy_wasm::types::ContextType;
    use sluice_proxy::RootGlue;

    /// The filter a `root_id` names, as the Envoy configs name them
    /// (`sluice.rate_limit.admission`, ...).
    fn root_for(root_id: &str) -> Option<Box<dyn RootContext>> {
        let glue: Box<dyn RootContext> = if root_id.contains("key_auth") {
            Box::new(RootGlue::<sluice_key_auth::lifecycle::KeyAuth>::default())
        } else if root_id.contains("rate_limit") {
            Box::new(RootGlue::<sluice_rate_limit::lifecycle::RateLimit>::default())
        } else if root_id.contains("model_router") {
            Box::new(RootGlue::<sluice_model_router::lifecycle::ModelRouter>::default())
        } else if root_id.contains("pii_redaction") {
            Box::new(RootGlue::<sluice_pii_redaction::lifecycle::PiiRedaction>::default())
        } else if root_id.contains("token_counter") {
            Box::new(RootGlue::<sluice_token_counter::lifecycle::TokenCounter>::default())
        } else if root_id.contains("response_cache") {
            Box::new(RootGlue::<sluice_response_cache::lifecycle::ResponseCache>::default())
        } else if root_id.contains("endpoint_picker") {
            Box::new(RootGlue::<sluice_endpoint_picker::lifecycle::EndpointPicker>::default())
        } else {
            return None;
        };
        Some(glue)
    }

    /// A root context that becomes the filter its `root_id` names at configuration.
    #[derive(Default)]
    pub struct Dispatch {
        filter: Option<Box<dyn RootContext>>,
    }

    impl Context for Dispatch {
        fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
            if let Some(f) = &mut self.filter {
                f.on_grpc_call_response(token, status, size);
            }
        }

        fn on_http_call_response(
            &mut self,
            token: u32,
            headers: usize,
            body: usize,
            trailers: usize,
        ) {
            if let Some(f) = &mut self.filter {
                f.on_http_call_response(token, headers, body, trailers);
            }
        }
    }

    impl RootContext for Dispatch {
        fn on_configure(&mut self, size: usize) -> bool {
            if self.filter.is_none() {
                let root_id = hostcalls::get_property(vec!["plugin_root_id"])
                    .ok()
                    .flatten()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                self.filter = root_for(&root_id);
                if self.filter.is_none() {
                    log::error!(
                        "sluice-filters: root_id {root_id:?} names no Sluice filter; configuration rejected"
                    );
                    return false;
                }
            }
            self.filter.as_mut().is_some_and(|f| f.on_configure(size))
        }

        fn on_tick(&mut self) {
            if let Some(f) = &mut self.filter {
                f.on_tick();
            }
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            self.filter.as_ref()?.create_http_context(context_id)
        }
    }
}

#[cfg(all(target_arch = "wasm32", not(test)))]
sluice_proxy::proxy_wasm::main! {{
    sluice_proxy::proxy_wasm::set_log_level(sluice_proxy::proxy_wasm::types::LogLevel::Info);
    sluice_proxy::proxy_wasm::set_root_context(
        |_| -> Box<dyn sluice_proxy::proxy_wasm::traits::RootContext> {
            Box::new(entry::Dispatch::default())
        },
    );
}}
