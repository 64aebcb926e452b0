//! A filter that makes one kind of host call many times per request, through the same
//! [`WasmHost`](sluice_proxy::WasmHost) as every Sluice filter: against the no-op filter it
//! gives what one host call of that kind costs inside Envoy (`scripts/bench-chain.sh`'s
//! host-call table). Its configuration is `<call> <count>`: `header`, `headers`,
//! `set_header`, `property`, `set_property` (one name), `new_property` (a name per call), `shared_get`, `shared_set`, `metric`, `clock`
//! (on the request's headers), `pause` (hold the headers until the body's last chunk, as
//! the filters that read the body do), or `body` (the whole request body, on its last chunk).

#[cfg(target_arch = "wasm32")]
mod probe {
    use sluice_common::host::{Flow, Host, Lifecycle, MetricKind, Plugin, Side};
    use sluice_common::ConfigError;
    use std::rc::Rc;

    pub struct Probe {
        call: String,
        count: usize,
        metric: Option<u32>,
    }

    pub struct ProbeRequest(Rc<Probe>);

    impl Plugin for Probe {
        const NAME: &'static str = "probe";
        type Request = ProbeRequest;

        fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
            let config = String::from_utf8_lossy(&host.plugin_configuration()).into_owned();
            let mut words = config.split_whitespace();
            let (Some(call), Some(count)) = (words.next(), words.next()) else {
                return Err(ConfigError::invalid("want <call> <count>"));
            };
            let count = count
                .parse()
                .map_err(|_| ConfigError::invalid("count: a number"))?;
            let metric = host.define_metric(MetricKind::Counter, "probe.calls");
            Ok(Self {
                call: call.to_string(),
                count,
                metric,
            })
        }

        fn new_request(self: &Rc<Self>, _context_id: u32) -> ProbeRequest {
            ProbeRequest(self.clone())
        }
    }

    impl Lifecycle for ProbeRequest {
        fn on_request_headers(&mut self, host: &mut dyn Host, end: bool) -> Flow {
            let p = &self.0;
            if p.call == "pause" && !end {
                // Hold the headers until the body is in (as the body-reading filters do).
                return Flow::Pause;
            }
            for i in 0..p.count {
                match p.call.as_str() {
                    "header" => drop(host.header(Side::Request, "content-type")),
                    "headers" => drop(host.headers(Side::Request)),
                    "set_header" => host.set_header(Side::Request, "x-probe", "1"),
                    "property" => drop(host.property(&["request", "path"])),
                    "set_property" => host.set_property("probe", format!("{i}").as_bytes()),
                    "new_property" => host.set_property(&format!("probe_{i}"), b"value"),
                    "shared_get" => drop(host.shared_data("probe")),
                    "shared_set" => drop(host.set_shared_data("probe", b"0123456789", None)),
                    "metric" => {
                        if let Some(id) = p.metric {
                            host.increment_metric(id, 1);
                        }
                    }
                    "clock" => drop(host.now_unix_nanos()),
                    "keyauth" => {
                        drop(host.headers(Side::Request));
                        host.remove_header(Side::Request, "x-nothing");
                        for name in ["p_key_id", "p_tenant", "p_policy", "p_priority"] {
                            host.set_property(name, b"some-value-of-a-property");
                        }
                        if let Some(id) = p.metric {
                            host.increment_metric(id, 1);
                        }
                        let _ = host.now_unix_nanos();
                    }
                    _ => {}
                }
            }
            Flow::Continue
        }

        fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
            if self.0.call == "body" && end {
                for _ in 0..self.0.count {
                    drop(host.body(Side::Request, size));
                }
            }
            Flow::Continue
        }
    }
}

#[cfg(target_arch = "wasm32")]
sluice_proxy::filter!(probe::Probe);
