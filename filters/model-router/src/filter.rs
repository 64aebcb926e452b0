//! proxy-wasm glue for model-router. No policy here: see route.rs.

use crate::{models_list, route, Api, RequestFacts, RouterConfig, Settings, AFFINITY_HEADER};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use sluice_common::metrics::label;
use sluice_common::{properties, Policy};
use sluice_proxy::{
    header, property, read_body, remove_header, send_error, set_property, write_body, CounterSet,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counter names: public model × pool, both from the configuration.
const MAX_COUNTERS: usize = 1024;

struct Root {
    settings: Option<Rc<Settings>>,
    /// xorshift64 state for weighted draws, seeded from the clock per VM.
    rng: Rc<Cell<u64>>,
    counters: Rc<RefCell<CounterSet>>,
}

impl Default for Root {
    fn default() -> Self {
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Self {
            settings: None,
            rng: Rc::new(Cell::new(seed | 1)),
            counters: Rc::new(RefCell::new(CounterSet::new(MAX_COUNTERS))),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parse =
            |b: &[u8]| sluice_common::parse_config::<RouterConfig>(b).and_then(Settings::new);
        let Some(s) = sluice_proxy::configure("model-router", parse) else {
            return false;
        };
        log::info!(
            "model-router: configured with {} public models",
            s.public_models().len()
        );
        self.settings = Some(Rc::new(s));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            settings: self.settings.clone(),
            rng: self.rng.clone(),
            counters: self.counters.clone(),
            api: None,
        }))
    }
}

struct Http {
    settings: Option<Rc<Settings>>,
    rng: Rc<Cell<u64>>,
    counters: Rc<RefCell<CounterSet>>,
    /// Set while the body of a routed API call is awaited.
    api: Option<Api>,
}

fn policy() -> Option<Policy> {
    property(properties::POLICY).and_then(|p| serde_json::from_str(&p).ok())
}

impl Http {
    fn draw(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Some(settings) = self.settings.clone() else {
            return Action::Continue;
        };
        let method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        if method == "GET" && settings.is_models_path(&path) {
            let allowed = policy().map(|p| p.models);
            let body = models_list(&settings, allowed.as_deref());
            if let Err(e) = hostcalls::send_http_response(
                200,
                vec![("content-type", "application/json")],
                Some(body.as_bytes()),
            ) {
                log::warn!("model-router: send_http_response failed: {e:?}");
            }
            return Action::Pause;
        }
        let Some(api) = settings.api(&method, &path) else {
            // The routing headers are ours: whatever a client sent is never used. (Routed
            // requests get both overwritten once the body is read.)
            remove_header(MapType::HttpRequestHeaders, properties::ROUTE_HEADER);
            remove_header(MapType::HttpRequestHeaders, AFFINITY_HEADER);
            return Action::Continue;
        };
        if end_of_stream {
            let e = sluice_common::OpenAiError::new(
                sluice_common::ErrorKind::InvalidRequest,
                "You must provide a model parameter.",
            );
            send_error(&e, &[]);
            return Action::Pause;
        }
        self.api = Some(api);
        // Hold the headers: the route header and the body's model are set once it is read.
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(api) = self.api else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        self.api = None;
        let Some(settings) = self.settings.clone() else {
            return Action::Continue;
        };
        let body = read_body(BufferType::HttpRequestBody, size);
        let policy = policy();
        let session = header(MapType::HttpRequestHeaders, &settings.session_header);
        let facts = RequestFacts {
            api,
            key_id: policy.as_ref().map(|p| p.key_id.as_str()),
            allowed: policy.as_ref().map(|p| p.models.as_slice()),
            session: session.as_deref(),
            random: self.draw(),
        };
        let decision = match route(&settings, &facts, &body) {
            Ok(d) => d,
            Err(e) => {
                send_error(&e, &[]);
                return Action::Pause;
            }
        };
        if let Some(new_body) = &decision.new_body {
            if !write_body(BufferType::HttpRequestBody, size, new_body) {
                let e = sluice_common::OpenAiError::new(
                    sluice_common::ErrorKind::Unavailable,
                    "The request could not be routed.",
                );
                send_error(&e, &[]);
                return Action::Pause;
            }
            if let Err(e) = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "content-length",
                Some(&new_body.len().to_string()),
            ) {
                log::warn!("model-router: cannot set content-length: {e:?}");
            }
        }
        if let Err(e) = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            properties::ROUTE_HEADER,
            Some(&decision.pool),
        ) {
            log::warn!("model-router: cannot set the route header: {e:?}");
        }
        // Set, or removed: a client's value is never hashed. (`set_map_value` with `None`
        // removes the header.)
        if let Err(e) = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            AFFINITY_HEADER,
            decision.affinity.as_deref(),
        ) {
            log::warn!("model-router: cannot set the affinity header: {e:?}");
        }
        if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::warn!("model-router: clear_route_cache failed: {e:?}");
        }
        set_property(properties::MODEL_REQUESTED, decision.requested.as_bytes());
        set_property(properties::MODEL, decision.model.as_bytes());
        set_property(properties::ROUTE, decision.pool.as_bytes());
        self.counters.borrow_mut().add(
            &format!(
                "sluice.router.requests.model.{}.route.{}",
                label(&decision.alias),
                label(&decision.pool)
            ),
            1,
        );
        Action::Continue
    }
}
