//! model-router's lifecycle: `GET /v1/models` answered at the headers; a routed API call
//! held until its body is read, then routed (body, route and affinity headers, route cache,
//! published facts); anything else passes with the client's routing headers removed.

use crate::{models_list, route, Api, RequestFacts, RouterConfig, Settings, AFFINITY_HEADER};
use sluice_common::host::{
    plugin_config, replace_request_body, request_line, send_error, text_property, CounterSet, Flow,
    Host, Lifecycle, Plugin, Side,
};
use sluice_common::{properties, ConfigError, ErrorKind, OpenAiError, Policy};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Counter names: public model × pool, both from the configuration.
const MAX_COUNTERS: usize = 1024;

/// The configured filter.
pub struct ModelRouter {
    settings: Settings,
    /// xorshift64 state for weighted draws, seeded from the clock per VM.
    rng: Cell<u64>,
    /// `sluice.router.requests.model.<alias>.route.<pool>`
    counters: RefCell<CounterSet>,
}

/// The requests counter family: its labels' keys and the tags Envoy's stats configuration
/// exports them as (`envoy/envoy.yaml.j2`'s `stats_tags`).
const REQUESTS: &str = "sluice.router.requests";
const REQUESTS_LABELS: [(&str, &str); 2] = [("model", "router_model"), ("route", "route")];

impl ModelRouter {
    pub fn new(settings: Settings, seed: u64) -> Self {
        Self {
            settings,
            rng: Cell::new(seed | 1),
            counters: RefCell::new(CounterSet::new(MAX_COUNTERS)),
        }
    }

    fn draw(&self) -> u64 {
        let x = sluice_common::hash::xorshift64(self.rng.get());
        self.rng.set(x);
        x
    }
}

impl Plugin for ModelRouter {
    const NAME: &'static str = "model-router";
    type Request = RouterRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let settings = Settings::new(plugin_config::<RouterConfig>(host)?)?;
        log::info!(
            "model-router: configured with {} public models",
            settings.public_models().len()
        );
        let seed = host.now_unix_nanos() ^ 0x9e37_79b9_7f4a_7c15;
        let router = Self::new(settings, seed);
        router
            .counters
            .borrow_mut()
            .declare(host, REQUESTS, &REQUESTS_LABELS);
        Ok(router)
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> RouterRequest {
        RouterRequest {
            router: self.clone(),
            awaiting: None,
        }
    }
}

pub struct RouterRequest {
    router: Rc<ModelRouter>,
    /// Set while the body of a routed API call is awaited.
    awaiting: Option<Api>,
}

fn policy(host: &dyn Host) -> Option<Rc<Policy>> {
    text_property(host, properties::POLICY).and_then(|p| Policy::from_published(&p))
}

impl Lifecycle for RouterRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let settings = &self.router.settings;
        let (method, path) = request_line(host);
        if method == "GET" && settings.is_models_path(&path) {
            let policy = policy(host);
            let allowed = policy.as_ref().map(|p| p.models.as_slice());
            let body = models_list(settings, allowed);
            host.send_reply(
                200,
                &[("content-type", "application/json")],
                body.as_bytes(),
            );
            return Flow::Pause;
        }
        let Some(api) = settings.api(&method, &path) else {
            // The routing headers are ours: whatever a client sent is never used. (Routed
            // requests get both overwritten once the body is read.)
            host.remove_header(Side::Request, properties::ROUTE_HEADER);
            host.remove_header(Side::Request, AFFINITY_HEADER);
            return Flow::Continue;
        };
        if end_of_stream {
            let e = OpenAiError::new(
                ErrorKind::InvalidRequest,
                "You must provide a model parameter.",
            );
            send_error(host, &e, &[]);
            return Flow::Pause;
        }
        self.awaiting = Some(api);
        // Hold the headers: the route header and the body's model are set once it is read.
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Some(api) = self.awaiting else {
            return Flow::Continue;
        };
        if !end_of_stream {
            return Flow::Pause;
        }
        self.awaiting = None;
        let router = self.router.clone();
        let settings = &router.settings;
        let body = host.body(Side::Request, size);
        let policy = policy(host);
        let session = host.header(Side::Request, &settings.session_header);
        let facts = RequestFacts {
            api,
            key_id: policy.as_ref().map(|p| p.key_id.as_str()),
            allowed: policy.as_ref().map(|p| p.models.as_slice()),
            session: session.as_deref(),
            random: router.draw(),
        };
        let decision = match route(settings, &facts, &body) {
            Ok(d) => d,
            Err(e) => {
                send_error(host, &e, &[]);
                return Flow::Pause;
            }
        };
        if let Some(new_body) = &decision.new_body {
            if !replace_request_body(host, size, new_body) {
                let e =
                    OpenAiError::new(ErrorKind::Unavailable, "The request could not be routed.");
                send_error(host, &e, &[]);
                return Flow::Pause;
            }
        }
        host.set_header(Side::Request, properties::ROUTE_HEADER, &decision.pool);
        // Set, or removed: a client's value is never hashed.
        match &decision.affinity {
            Some(a) => host.set_header(Side::Request, AFFINITY_HEADER, a),
            None => host.remove_header(Side::Request, AFFINITY_HEADER),
        }
        host.clear_route_cache();
        host.set_property(properties::MODEL_REQUESTED, decision.requested.as_bytes());
        host.set_property(properties::MODEL, decision.model.as_bytes());
        host.set_property(properties::ROUTE, decision.pool.as_bytes());
        router.counters.borrow_mut().add_labeled(
            host,
            &[REQUESTS],
            &[("model", &decision.alias), ("route", &decision.pool)],
            1,
        );
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_testkit::{Call, MockHost};

    fn router(host: &mut MockHost) -> Rc<ModelRouter> {
        host.plugin_config = json!({
            "models": {
                "small": {"targets": [{"pool": "pool-small", "model": "org/Small-8B"}]},
                "same": {"targets": [{"pool": "pool-same"}]},
                "sticky": {"targets": [{"pool": "pool-a"}], "sticky": "session"}
            },
            "affinity": {"from": ["session"]}
        })
        .to_string()
        .into_bytes();
        Rc::new(ModelRouter::configure(host).unwrap())
    }

    fn chat(host: &mut MockHost, body: &str) {
        host.next_request(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-sluice-route", "pool-of-the-client"),
            ("content-length", &body.len().to_string()),
        ]);
        host.request_body = body.as_bytes().to_vec();
    }

    #[test]
    fn a_routed_call_is_held_then_gets_route_body_and_facts() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        let body = r#"{"model":"small","messages":[{"role":"user","content":"hi"}]}"#;
        chat(&mut host, body);
        let mut req = r.new_request(1);
        assert_eq!(req.on_request_headers(&mut host, false), Flow::Pause);
        assert!(host.calls().is_empty());
        assert_eq!(req.on_request_body(&mut host, 10, false), Flow::Pause);
        assert_eq!(
            req.on_request_body(&mut host, body.len(), true),
            Flow::Continue
        );
        let new_body = body.replace("\"small\"", "\"org/Small-8B\"");
        assert_eq!(
            host.calls(),
            vec![
                Call::SetBody(Side::Request, new_body.clone()),
                Call::SetHeader(
                    Side::Request,
                    "content-length".into(),
                    new_body.len().to_string()
                ),
                Call::SetHeader(Side::Request, "x-sluice-route".into(), "pool-small".into()),
                Call::RemoveHeader(Side::Request, AFFINITY_HEADER.into()),
                Call::ClearRouteCache,
                Call::SetProperty("sluice_model_requested".into(), "small".into()),
                Call::SetProperty("sluice_model".into(), "org/Small-8B".into()),
                Call::SetProperty("sluice_route".into(), "pool-small".into()),
                Call::Increment(
                    "sluice.router.requests.model.small.route.pool-small".into(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn the_same_upstream_name_leaves_the_body_alone_and_a_session_sets_affinity() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        let body = r#"{"model":"sticky","messages":[]}"#;
        chat(&mut host, body);
        host.request_headers
            .push(("x-session-id".into(), b"s-1".to_vec()));
        let mut req = r.new_request(1);
        req.on_request_headers(&mut host, false);
        assert_eq!(
            req.on_request_body(&mut host, body.len(), true),
            Flow::Continue
        );
        let effects = host.effects();
        assert!(!effects.iter().any(|c| matches!(c, Call::SetBody(..))));
        assert!(effects.iter().any(
            |c| matches!(c, Call::SetHeader(Side::Request, n, v) if n == AFFINITY_HEADER && !v.is_empty())
        ));
        assert_eq!(host.request_header("x-sluice-route"), Some(&b"pool-a"[..]));
    }

    #[test]
    fn an_unknown_model_is_refused_and_nothing_is_routed() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        let body = r#"{"model":"nope","messages":[]}"#;
        chat(&mut host, body);
        let mut req = r.new_request(1);
        req.on_request_headers(&mut host, false);
        assert_eq!(
            req.on_request_body(&mut host, body.len(), true),
            Flow::Pause
        );
        assert_eq!(host.calls().len(), 1, "{:?}", host.calls());
        let reply = host.reply().unwrap();
        assert_eq!(reply.status, 404);
        assert!(reply.body.contains("model_not_found"));
    }

    #[test]
    fn other_paths_pass_without_the_clients_routing_headers() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        host.next_request(&[
            (":method", "GET"),
            (":path", "/health"),
            ("x-sluice-route", "pool-x"),
            (AFFINITY_HEADER, "ff"),
        ]);
        assert_eq!(
            r.new_request(1).on_request_headers(&mut host, true),
            Flow::Continue
        );
        assert_eq!(
            host.calls(),
            vec![
                Call::RemoveHeader(Side::Request, "x-sluice-route".into()),
                Call::RemoveHeader(Side::Request, AFFINITY_HEADER.into()),
            ]
        );
    }

    #[test]
    fn models_are_listed_at_the_headers_for_the_keys_allowed_models() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        host.next_request(&[(":method", "GET"), (":path", "/v1/models")]);
        host.set_text_property(
            "sluice_policy",
            r#"{"key_id":"k","tenant":"t","models":["st*"],"limits":{}}"#,
        );
        assert_eq!(
            r.new_request(1).on_request_headers(&mut host, true),
            Flow::Pause
        );
        let reply = host.reply().unwrap();
        assert_eq!(reply.status, 200);
        let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()
            ["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, vec!["sticky"]);
    }

    #[test]
    fn a_call_without_a_body_is_refused_at_the_headers() {
        let mut host = MockHost::new();
        let r = router(&mut host);
        chat(&mut host, "");
        assert_eq!(
            r.new_request(1).on_request_headers(&mut host, true),
            Flow::Pause
        );
        assert_eq!(host.reply().unwrap().status, 400);
    }
}
