//! `sluice_common::chain`: several filters as one Envoy filter, each member seeing the
//! stream as it would as its own filter. The members here are scripted: each logs what it
//! is given and does what its configuration says (hold, buffer, call out, reply, rewrite).

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use sluice_common::chain::{configure, Chain, ChainRequest, Configure, Members};
use sluice_common::host::{
    plugin_config, text_property, Flow, GrpcCall, Host, Lifecycle, Plugin, Side,
};
use sluice_common::ConfigError;
use sluice_testkit::{Call, CountingHost, HostCalls, MockHost};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn log(line: String) {
    LOG.with(|l| l.borrow_mut().push(line));
}

fn take_log() -> Vec<String> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Script {
    id: String,
    /// Hold the request's headers until its body is in.
    hold_headers: bool,
    /// Buffer the request body until its end.
    buffer: bool,
    /// At the request body's end: a gRPC call, the request held until its answer.
    callout: bool,
    /// At the request body's end: answer 403.
    reply: bool,
    /// At the request body's end: append this to it.
    append: Option<String>,
    tick_ms: Option<u64>,
    holds: bool,
    /// At the end of its stream: release this other (queued) stream.
    release: Option<u32>,
    /// Answer the client when its callout is answered (a cache hit found by a callout).
    reply_on_answer: bool,
    /// Append this to the response's body at its end, and name itself in a header.
    mark_response: Option<String>,
    /// Log the request's `x-note` header and `note` property it reads at each request hook;
    /// at the request body's end (after `append`) write its id to both.
    note: bool,
    /// Done on the request's headers, each read logged.
    head_ops: Vec<Op>,
    /// Done at the request body's end (after `note`), each read logged.
    body_ops: Vec<Op>,
}

/// One read or write of a scripted member's request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    ReadBody(usize),
    /// Replace the body's first `.0` bytes.
    WriteBody(usize, String),
    ReadHeader(String),
    ReadHeaders,
    ReadHeaderStrings(Vec<String>),
    SetHeader(String, String),
    RemoveHeader(String),
    ReadProperty(String),
    SetProperty(String, String),
}

impl Op {
    fn run(&self, id: &str, host: &mut dyn Host) {
        let result = match self {
            Op::ReadBody(n) => format!(
                "{:?}",
                String::from_utf8_lossy(&host.body(Side::Request, *n))
            ),
            Op::WriteBody(n, bytes) => {
                format!("{}", host.set_body(Side::Request, *n, bytes.as_bytes()))
            }
            Op::ReadHeader(name) => format!("{:?}", host.header(Side::Request, name)),
            Op::ReadHeaders => {
                let mut lent = Vec::new();
                host.with_headers(Side::Request, &mut |h| {
                    lent = h
                        .iter()
                        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                        .collect();
                });
                format!("{:?} {lent:?}", host.headers(Side::Request))
            }
            Op::ReadHeaderStrings(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                format!("{:?}", host.header_strings(Side::Request, &names))
            }
            Op::SetHeader(name, value) => {
                host.set_header(Side::Request, name, value);
                String::new()
            }
            Op::RemoveHeader(name) => {
                host.remove_header(Side::Request, name);
                String::new()
            }
            Op::ReadProperty(name) => format!("{:?}", host.property(&[name])),
            Op::SetProperty(name, value) => {
                host.set_property(name, value.as_bytes());
                String::new()
            }
        };
        log(format!("{id} {self:?} -> {result}"));
    }
}

struct Scripted(Script);

struct ScriptedRequest(Script);

impl Plugin for Scripted {
    const NAME: &'static str = "scripted";
    type Request = ScriptedRequest;

    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let script: Script = plugin_config(host)?;
        if script.id.is_empty() {
            return Err(ConfigError::invalid("id: empty"));
        }
        let root_id = text_property(host, "plugin_root_id").unwrap_or_default();
        log(format!("{} configured as {root_id}", script.id));
        if let Some(ms) = script.tick_ms {
            host.set_tick_period(Duration::from_millis(ms));
        }
        Ok(Self(script))
    }

    fn new_request(self: &Rc<Self>, _context_id: u32) -> ScriptedRequest {
        ScriptedRequest(self.0.clone())
    }

    fn on_tick(&self, _host: &mut dyn Host) {
        log(format!("{} tick", self.0.id));
    }

    fn holds_requests(&self) -> bool {
        self.0.holds
    }
}

impl Lifecycle for ScriptedRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end: bool) -> Flow {
        log(format!("{} request headers end={end}", self.0.id));
        if self.0.note {
            log_notes(&self.0.id, host);
        }
        for op in &self.0.head_ops {
            op.run(&self.0.id, host);
        }
        if self.0.hold_headers && !end {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        let body = host.body(Side::Request, size);
        log(format!(
            "{} request body {:?} end={end}",
            self.0.id,
            String::from_utf8_lossy(&body)
        ));
        if !end {
            return if self.0.buffer {
                Flow::Pause
            } else {
                Flow::Continue
            };
        }
        if let Some(extra) = &self.0.append {
            let mut longer = body.clone();
            longer.extend_from_slice(extra.as_bytes());
            assert!(host.set_body(Side::Request, size, &longer));
        }
        if self.0.note {
            log_notes(&self.0.id, host);
            host.set_header(Side::Request, "x-note", &self.0.id);
            host.set_property("note", self.0.id.as_bytes());
        }
        for op in &self.0.body_ops {
            op.run(&self.0.id, host);
        }
        if self.0.reply {
            host.send_reply(403, &[], b"refused");
            return Flow::Pause;
        }
        if self.0.callout {
            let call = GrpcCall {
                cluster: "rls",
                service: "s",
                method: "m",
                message: b"",
                timeout: Duration::from_secs(1),
            };
            let token = host.dispatch_grpc(&call);
            log(format!("{} called out: {token:?}", self.0.id));
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end: bool) -> Flow {
        let status = host.header(Side::Response, ":status").unwrap_or_default();
        log(format!("{} response headers {status} end={end}", self.0.id));
        if self.0.mark_response.is_some() {
            host.set_header(Side::Response, "x-seen-by", &self.0.id);
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        let body = host.body(Side::Response, size);
        log(format!(
            "{} response body {:?} end={end}",
            self.0.id,
            String::from_utf8_lossy(&body)
        ));
        if let (Some(mark), true) = (&self.0.mark_response, end) {
            let mut longer = body;
            longer.extend_from_slice(mark.as_bytes());
            assert!(host.set_body(Side::Response, size, &longer));
        }
        Flow::Continue
    }

    fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, _status: u32, _size: usize) {
        log(format!("{} answer {token}", self.0.id));
        if self.0.reply_on_answer {
            host.send_reply(200, &[], b"from the answer");
        } else {
            host.resume(Side::Request);
        }
    }

    fn on_log(&mut self, host: &mut dyn Host) {
        log(format!("{} log", self.0.id));
        if let Some(other) = self.0.release {
            host.set_effective_context(other);
            host.resume(Side::Request);
        }
    }
}

/// What a `note` member reads: the request's `x-note` header and `note` property.
fn log_notes(id: &str, host: &dyn Host) {
    let header = host.header(Side::Request, "x-note");
    let headers = host.header_strings(Side::Request, &["x-note", ":path"]);
    let property = text_property(host, "note");
    log(format!("{id} reads {header:?} {headers:?} {property:?}"));
}

struct Scripts;

impl Members for Scripts {
    const FILTERS: &'static [(&'static str, Configure)] =
        &[("scripted", configure::<Scripted> as Configure)];
}

type ScriptedChain = Rc<Chain<Scripts>>;

fn configured(
    host: &mut MockHost,
    members: serde_json::Value,
) -> Result<ScriptedChain, ConfigError> {
    host.plugin_config = serde_json::json!({ "filters": members })
        .to_string()
        .into_bytes();
    let chain = Chain::<Scripts>::configure(host).map(Rc::new);
    take_log();
    chain
}

/// A chain of scripted members, each `(id, script)`.
fn chain_of(
    host: &mut MockHost,
    scripts: &[(&str, serde_json::Value)],
) -> Result<ScriptedChain, ConfigError> {
    let members: Vec<serde_json::Value> = scripts
        .iter()
        .map(|(id, script)| member(id, script.clone()))
        .collect();
    configured(host, members.into())
}

fn member(id: &str, script: serde_json::Value) -> serde_json::Value {
    let mut config = script;
    if let Some(fields) = config.as_object_mut() {
        fields.insert("id".into(), id.into());
    }
    serde_json::json!({"name": format!("scripted.{id}"), "config": config})
}

fn resumes(host: &MockHost) -> usize {
    host.calls()
        .iter()
        .filter(|c| matches!(c, Call::Resume(Side::Request)))
        .count()
}

fn post(host: &mut MockHost, body: &str) {
    host.next_request(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    host.request_body = body.as_bytes().to_vec();
}

fn respond(host: &mut MockHost, request: &mut ChainRequest, body: &str) {
    host.set_response_headers(&[(":status", "200")]);
    host.response_body = body.as_bytes().to_vec();
    assert_eq!(request.on_response_headers(host, false), Flow::Continue);
    assert_eq!(
        request.on_response_body(host, body.len(), true),
        Flow::Continue
    );
    request.on_log(host);
}

#[test]
fn members_see_the_stream_in_envoys_order() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[("a", serde_json::json!({})), ("b", serde_json::json!({}))],
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Continue);
    respond(&mut host, &mut r, "ok");
    assert_eq!(
        take_log(),
        [
            "a request headers end=false",
            "b request headers end=false",
            "a request body \"{}\" end=true",
            "b request body \"{}\" end=true",
            "b response headers 200 end=false",
            "a response headers 200 end=false",
            "b response body \"ok\" end=true",
            "a response body \"ok\" end=true",
            "a log",
            "b log",
        ]
    );
    assert_eq!(resumes(&host), 0);

    // A request without a body: the headers end the stream for every member.
    host.next_request(&[(":method", "GET"), (":path", "/v1/models")]);
    let mut r = chain.new_request(2);
    assert_eq!(r.on_request_headers(&mut host, true), Flow::Continue);
    assert_eq!(
        take_log(),
        ["a request headers end=true", "b request headers end=true"]
    );
}

#[test]
fn a_member_holding_the_headers_holds_the_members_after_it() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[
            ("a", serde_json::json!({})),
            ("b", serde_json::json!({"hold_headers": true})),
            ("c", serde_json::json!({"hold_headers": true})),
        ],
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Pause);
    assert_eq!(
        take_log(),
        ["a request headers end=false", "b request headers end=false"]
    );
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Continue);
    assert_eq!(
        take_log(),
        [
            "a request body \"{}\" end=true",
            "b request body \"{}\" end=true",
            "c request headers end=false",
            "c request body \"{}\" end=true",
        ]
    );
}

#[test]
fn a_callout_holds_the_chain_until_its_member_resumes() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[
            ("a", serde_json::json!({"callout": true})),
            ("b", serde_json::json!({"callout": true})),
            ("c", serde_json::json!({})),
        ],
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Pause);
    assert_eq!(
        take_log(),
        [
            "a request headers end=false",
            "b request headers end=false",
            "c request headers end=false",
            "a request body \"{}\" end=true",
            "a called out: Some(1)",
        ]
    );
    // An answer for a token no member started is dropped.
    r.on_grpc_response(&mut host, 7, 0, 0);
    assert!(take_log().is_empty());
    // a's answer: b runs, calls out in turn; Envoy is not told to go on.
    r.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(
        take_log(),
        [
            "a answer 1",
            "b request body \"{}\" end=true",
            "b called out: Some(2)"
        ]
    );
    assert_eq!(resumes(&host), 0);
    // b's answer: c runs, and then Envoy goes on, once.
    r.on_grpc_response(&mut host, 2, 0, 0);
    assert_eq!(take_log(), ["b answer 2", "c request body \"{}\" end=true"]);
    assert_eq!(resumes(&host), 1);
    respond(&mut host, &mut r, "ok");
    assert_eq!(take_log()[0], "c response headers 200 end=false");
}

#[test]
fn a_local_reply_stops_the_chain_and_only_members_that_saw_the_request_see_the_response() {
    let mut host = MockHost::new();
    let chain = configured(
        &mut host,
        serde_json::json!([
            member(
                "a",
                serde_json::json!({"hold_headers": true, "mark_response": ", seen by a"})
            ),
            member("b", serde_json::json!({"reply": true})),
            member("c", serde_json::json!({}))
        ]),
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Pause);
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Pause);
    // The reply passed the members before b (as Envoy passes a filter's reply through the
    // filters before it), and they changed it, before it went to Envoy.
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "refused, seen by a");
    assert!(reply.headers.contains(&("x-seen-by".into(), "a".into())));
    // Envoy does not pass it back through the chain.
    host.set_response_headers(&[(":status", "403")]);
    host.response_body = reply.body.into_bytes();
    assert_eq!(r.on_response_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_response_body(&mut host, 18, true), Flow::Continue);
    r.on_log(&mut host);
    assert_eq!(
        take_log(),
        [
            "a request headers end=false",
            "a request body \"{}\" end=true",
            "b request headers end=false",
            "b request body \"{}\" end=true",
            "a response headers 403 end=false",
            "a response body \"refused\" end=true",
            "a log",
            "b log",
        ]
    );
    assert_eq!(resumes(&host), 0);
    assert_eq!(
        host.calls()
            .iter()
            .filter(|c| matches!(c, Call::SendReply { .. }))
            .count(),
        1
    );
}

#[test]
fn a_buffering_member_gets_the_whole_buffer_and_the_members_before_it_each_new_chunk() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[
            ("a", serde_json::json!({"append": "!"})),
            ("b", serde_json::json!({"buffer": true})),
            ("c", serde_json::json!({})),
        ],
    )
    .unwrap();
    post(&mut host, "abc");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_request_body(&mut host, 3, false), Flow::Pause);
    // Envoy holds "abc" and adds the next chunk.
    host.request_body = b"abcdef".to_vec();
    assert_eq!(r.on_request_body(&mut host, 6, true), Flow::Continue);
    assert_eq!(
        take_log(),
        [
            "a request headers end=false",
            "b request headers end=false",
            "c request headers end=false",
            "a request body \"abc\" end=false",
            "b request body \"abc\" end=false",
            "a request body \"def\" end=true",
            "b request body \"abcdef!\" end=true",
            "c request body \"abcdef!\" end=true",
        ]
    );
    assert_eq!(host.request_body, b"abcdef!");
}

#[test]
fn streamed_chunks_pass_one_at_a_time() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[("a", serde_json::json!({})), ("b", serde_json::json!({}))],
    )
    .unwrap();
    post(&mut host, "");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    take_log();
    host.set_response_headers(&[(":status", "200")]);
    assert_eq!(r.on_response_headers(&mut host, false), Flow::Continue);
    for (chunk, end) in [("data: 1\n\n", false), ("data: 2\n\n", false), ("", true)] {
        host.response_body = chunk.as_bytes().to_vec();
        assert_eq!(
            r.on_response_body(&mut host, chunk.len(), end),
            Flow::Continue
        );
    }
    assert_eq!(
        take_log(),
        [
            "b response headers 200 end=false",
            "a response headers 200 end=false",
            "b response body \"data: 1\\n\\n\" end=false",
            "a response body \"data: 1\\n\\n\" end=false",
            "b response body \"data: 2\\n\\n\" end=false",
            "a response body \"data: 2\\n\\n\" end=false",
            "b response body \"\" end=true",
            "a response body \"\" end=true",
        ]
    );
}

#[test]
fn configuration_names_each_member_and_ticks_each_at_its_own_period() {
    let mut host = MockHost::new();
    host.plugin_config = serde_json::json!({"filters": [
        member("a", serde_json::json!({"tick_ms": 1000})),
        {"name": "scripted.b", "config": "{\"id\":\"b\",\"tick_ms\":100}"},
    ]})
    .to_string()
    .into_bytes();
    let chain = Chain::<Scripts>::configure(&mut host).unwrap();
    assert_eq!(
        take_log(),
        ["a configured as scripted.a", "b configured as scripted.b"]
    );
    assert_eq!(
        chain.names().collect::<Vec<_>>(),
        ["scripted.a", "scripted.b"]
    );
    // The chain's timer runs at the shortest period; each member ticks at its own.
    assert!(host
        .calls()
        .contains(&Call::SetTickPeriod(Duration::from_millis(100))));
    host.now_ms = 1_000_000;
    chain.on_tick(&mut host);
    assert_eq!(take_log(), ["a tick", "b tick"]);
    host.now_ms += 100;
    chain.on_tick(&mut host);
    assert_eq!(take_log(), ["b tick"]);
    host.now_ms += 900;
    chain.on_tick(&mut host);
    assert_eq!(take_log(), ["a tick", "b tick"]);

    let refused = |members: serde_json::Value| {
        let mut host = MockHost::new();
        chain_err(&mut host, members)
    };
    assert!(refused(serde_json::json!([])).contains("between 1 and 8"));
    assert!(refused(serde_json::json!([{"name": "other", "config": {}}])).contains("no filter"));
    assert!(refused(serde_json::json!([member(
        "a",
        serde_json::json!({"bogus": 1})
    )]))
    .contains("filters[0] (scripted.a)"));
    // A member that releases held requests from its worker tick resumes Envoy directly:
    // nothing may come after it.
    assert!(refused(serde_json::json!([
        member("a", serde_json::json!({"holds": true})),
        member("b", serde_json::json!({}))
    ]))
    .contains("must be the chain's last"));
    assert!(chain_of(
        &mut MockHost::new(),
        &[
            ("a", serde_json::json!({})),
            ("b", serde_json::json!({"holds": true}))
        ]
    )
    .unwrap()
    .holds_requests());
}

fn chain_err(host: &mut MockHost, members: serde_json::Value) -> String {
    configured(host, members).map_or_else(|e| e.to_string(), |_| "accepted".into())
}

/// A member that releases another stream (the picker's queue, when a request ends) resumes
/// that stream in Envoy at once; the chain's own stream is set back for the next member.
#[test]
fn a_resume_for_another_stream_goes_to_envoy_at_once() {
    let mut host = MockHost::new();
    let chain = chain_of(
        &mut host,
        &[
            ("a", serde_json::json!({"release": 9})),
            ("b", serde_json::json!({})),
        ],
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(4);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Continue);
    host.take_calls();
    r.on_log(&mut host);
    assert_eq!(
        host.effects(),
        [
            Call::SetEffectiveContext(9),
            Call::Resume(Side::Request),
            Call::SetEffectiveContext(4),
        ]
    );
    assert_eq!(take_log()[4..], ["a log", "b log"]);
}

/// A reply made when a callout is answered (a cache hit in the shared tier) ends the
/// request there and passes the members before its maker; every member that saw the
/// request (c saw its headers) sees the stream end.
#[test]
fn a_reply_from_a_callout_answer_passes_the_members_before_it() {
    let mut host = MockHost::new();
    let chain = configured(
        &mut host,
        serde_json::json!([
            member("a", serde_json::json!({})),
            member(
                "b",
                serde_json::json!({"callout": true, "reply_on_answer": true})
            ),
            member("c", serde_json::json!({}))
        ]),
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    assert_eq!(r.on_request_headers(&mut host, false), Flow::Continue);
    assert_eq!(r.on_request_body(&mut host, 2, true), Flow::Pause);
    take_log();
    r.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(resumes(&host), 0);
    assert_eq!(host.reply().unwrap().body, "from the answer");
    respond(&mut host, &mut r, "from the answer");
    assert_eq!(
        take_log(),
        [
            "b answer 1",
            "a response headers 200 end=false",
            "a response body \"from the answer\" end=true",
            "a log",
            "b log",
            "c log",
        ]
    );
}

/// What the members read during one of Envoy's hooks is read from Envoy once (reads are
/// copies in proxy-wasm): a later member is answered from it, a member's body write is
/// spliced into it, filter state written answers the next read of its name, a header write
/// makes the next read go to Envoy again; and the next hook reads Envoy afresh.
#[test]
fn members_read_the_stream_once_a_hook_and_see_each_others_writes() {
    let mut host = MockHost::new();
    let note = serde_json::json!({"note": true});
    let chain = chain_of(
        &mut host,
        &[
            ("a", serde_json::json!({"note": true, "append": "+a"})),
            ("b", note.clone()),
            ("c", note),
        ],
    )
    .unwrap();
    post(&mut host, "{}");
    let mut r = chain.new_request(1);
    let reads = |calls: HostCalls| {
        ["body", "headers", "header", "property"].map(|k| calls.by_kind.get(k).copied())
    };
    let mut counting = CountingHost::new(&mut host);
    assert_eq!(r.on_request_headers(&mut counting, false), Flow::Continue);
    // One read of the headers; each member's read of `note` goes to Envoy (nothing wrote it).
    assert_eq!(
        reads(counting.calls.into_inner()),
        [None, Some(1), None, Some(3)]
    );
    let path = "Some(\"/v1/chat/completions\")";
    assert_eq!(
        take_log(),
        [
            "a request headers end=false".to_string(),
            format!("a reads None [None, {path}] None"),
            "b request headers end=false".to_string(),
            format!("b reads None [None, {path}] None"),
            "c request headers end=false".to_string(),
            format!("c reads None [None, {path}] None"),
        ]
    );
    // Between two hooks Envoy (or a filter before the chain) changes the request.
    host.set_header(Side::Request, "x-note", "envoy");
    let mut counting = CountingHost::new(&mut host);
    assert_eq!(r.on_request_body(&mut counting, 2, true), Flow::Continue);
    // The body once; the headers again after each member's header write; `note` from Envoy
    // only before a member wrote it.
    assert_eq!(
        reads(counting.calls.into_inner()),
        [Some(1), Some(3), None, Some(1)]
    );
    assert_eq!(
        take_log(),
        [
            "a request body \"{}\" end=true".to_string(),
            format!("a reads Some(\"envoy\") [Some(\"envoy\"), {path}] None"),
            "b request body \"{}+a\" end=true".to_string(),
            format!("b reads Some(\"a\") [Some(\"a\"), {path}] Some(\"a\")"),
            "c request body \"{}+a\" end=true".to_string(),
            format!("c reads Some(\"b\") [Some(\"b\"), {path}] Some(\"b\")"),
        ]
    );
    assert_eq!(host.request_body, b"{}+a");
    assert_eq!(host.request_header("x-note"), Some(&b"c"[..]));
    assert_eq!(host.text_property("note"), Some("c"));
}

fn op() -> impl Strategy<Value = Op> {
    let name = prop::sample::select(vec!["x-a", "x-b", "x-dup", ":path", "content-length"])
        .prop_map(str::to_string);
    let text = "[a-z{}\"]{0,12}";
    prop_oneof![
        (0usize..48).prop_map(Op::ReadBody),
        ((0usize..48), text).prop_map(|(n, t)| Op::WriteBody(n, t)),
        name.clone().prop_map(Op::ReadHeader),
        Just(Op::ReadHeaders),
        prop::collection::vec(name.clone(), 0..3).prop_map(Op::ReadHeaderStrings),
        (name.clone(), "[a-z0-9]{0,6}").prop_map(|(n, v)| Op::SetHeader(n, v)),
        name.prop_map(Op::RemoveHeader),
        prop::sample::select(vec!["p_a", "p_b"]).prop_map(|n| Op::ReadProperty(n.into())),
        (prop::sample::select(vec!["p_a", "p_b"]), "[a-z]{0,6}")
            .prop_map(|(n, v)| Op::SetProperty(n.into(), v)),
    ]
}

/// What scripted members logged over a request, and the request and filter state they left.
#[derive(Debug, PartialEq)]
struct Left {
    log: Vec<String>,
    body: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    properties: Vec<(String, Vec<u8>)>,
}

/// One run of scripted members (each its ops on the request's headers and body) over a
/// request, on a host whose reads are copies or lent.
fn run_scripts(
    members: &[(Vec<Op>, Vec<Op>)],
    body: &str,
    reads_lent: bool,
) -> Result<Left, ConfigError> {
    let mut host = MockHost::new();
    host.reads_lent = reads_lent;
    let scripts: Vec<(String, serde_json::Value)> = members
        .iter()
        .enumerate()
        .map(|(i, (head, body))| {
            (
                format!("m{i}"),
                serde_json::json!({"head_ops": head, "body_ops": body}),
            )
        })
        .collect();
    let scripts: Vec<(&str, serde_json::Value)> = scripts
        .iter()
        .map(|(id, s)| (id.as_str(), s.clone()))
        .collect();
    let chain = chain_of(&mut host, &scripts)?;
    host.next_request(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("x-dup", "one"),
        ("x-dup", "two"),
        ("content-length", &body.len().to_string()),
    ]);
    host.request_body = body.as_bytes().to_vec();
    let mut r = chain.new_request(1);
    r.on_request_headers(&mut host, false);
    let size = host.request_body.len();
    r.on_request_body(&mut host, size, true);
    let mut properties: Vec<(String, Vec<u8>)> = host.properties.clone().into_iter().collect();
    properties.sort();
    Ok(Left {
        log: take_log(),
        body: host.request_body.clone(),
        headers: host.request_headers.clone(),
        properties,
    })
}

proptest! {
    /// Whatever the members read and write during a hook, what each is given with the reads
    /// kept (the wasm build) is what it is given reading the host every time (the native
    /// build), and the request they leave is the same.
    #[test]
    fn kept_reads_give_what_the_host_gives(
        members in prop::collection::vec(
            (prop::collection::vec(op(), 0..5), prop::collection::vec(op(), 0..7)),
            1..4,
        ),
        body in "[a-z{}\"]{0,40}",
    ) {
        let kept = run_scripts(&members, &body, false);
        let lent = run_scripts(&members, &body, true);
        prop_assert!(kept.is_ok());
        prop_assert_eq!(kept, lent);
    }
}
