//! The small surface through which filter logic reaches Envoy.
//!
//! Filter policy is written against [`Host`], so it runs natively in unit tests with
//! [`MockHost`] and in Envoy with `WasmHost` (the `wasm_host` module, wasm32 only).

/// What a filter's request-path logic may ask of the proxy.
pub trait Host {
    /// All request headers, names lower-cased by Envoy; values as raw bytes because a
    /// client may send anything, and a filter must not panic on non-UTF-8.
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    fn remove_request_header(&mut self, name: &str);
    /// Replace (or add) a request header, pseudo-headers such as `:path` included.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Publish a fact as filter state (`set_property([name], value)`).
    fn set_property(&mut self, name: &str, value: &[u8]);
    /// Answer the client directly; nothing goes upstream.
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Make Envoy's route table match again after a header that routes was changed.
    fn clear_route_cache(&mut self);
    /// Wall-clock time, seconds since the Unix epoch.
    fn now_unix_secs(&self) -> i64;
}

/// A recorded reply of [`MockHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An in-memory [`Host`] for native tests: it records every effect.
#[derive(Debug, Default, Clone)]
pub struct MockHost {
    pub headers: Vec<(String, Vec<u8>)>,
    pub properties: Vec<(String, Vec<u8>)>,
    pub reply: Option<Reply>,
    pub route_cache_cleared: bool,
    pub now: i64,
}

impl MockHost {
    pub fn with_headers(headers: &[(&str, &str)]) -> Self {
        Self {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
            ..Self::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

impl Host for MockHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers.clone()
    }
    fn remove_request_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| k != name);
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.remove_request_header(name);
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
    }
    fn set_property(&mut self, name: &str, value: &[u8]) {
        self.properties.push((name.to_string(), value.to_vec()));
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.reply = Some(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }
    fn clear_route_cache(&mut self) {
        self.route_cache_cleared = true;
    }
    fn now_unix_secs(&self) -> i64 {
        self.now
    }
}
