//! Several filters run as one Envoy filter: [`Chain`].
//!
//! Each filter instance costs Envoy work a request even when it does nothing (its filter
//! object, the filter manager's wrappers, the VM entered at every phase): the native chain
//! as one Envoy filter instead of six runs 20,000 fewer instructions a request on Envoy's
//! worker (`docs/benchmarks.md`, "One Envoy filter after the buffer"). The filters after
//! Envoy's buffer filter (model-router, pii-redaction, token-counter, response-cache,
//! rate-limit's tokens stage, endpoint-picker) are adjacent in the chain, so they can be one.
//!
//! A [`Chain`] calls its members' lifecycles as Envoy would call them as separate filters:
//! the request's headers and body in chain order, the response in reverse; a member that
//! pauses holds everything after it (a pause on a body chunk buffers it: the members before
//! it are then given each new chunk alone, it and the members after it the whole buffer); a
//! member that resumes after a callout lets the members after it run before Envoy is told
//! to go on; a local reply stops the chain there and passes the members before its maker
//! (Envoy passes a filter's reply through the filters before it, not through itself), which
//! may change it, before it is sent; the response then passes the members that saw the
//! request. Each member keeps its own configuration, root id, metrics, tick period,
//! callouts and handoff queues. The one rule it adds: a member that releases requests it
//! holds from its worker tick (the picker's flow control resumes a stream directly) must be
//! the last.

use crate::config::{parse_config, ConfigError};
use crate::host::{
    chosen_by_root_id, named_strings, Flow, GrpcCall, HandoffQueue, Host, HttpCall, LentHeaders,
    Lifecycle, MetricFamily, MetricKind, Plugin, SharedDataError, Side,
};
use serde::Deserialize;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell, RefMut};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

/// A configured filter, its type erased: what a host or a [`Chain`] needs of a [`Plugin`].
pub trait AnyPlugin {
    fn new_request(&self, context_id: u32) -> Box<dyn Lifecycle>;
    fn on_tick(&self, host: &mut dyn Host);
    fn on_worker_tick(&self, host: &mut dyn Host);
    fn holds_requests(&self) -> bool;
    fn on_grpc_response(&self, host: &mut dyn Host, token: u32, status: u32, size: usize);
    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize);
}

struct Erased<P: Plugin>(Rc<P>);

impl<P: Plugin> AnyPlugin for Erased<P>
where
    P::Request: 'static,
{
    fn new_request(&self, context_id: u32) -> Box<dyn Lifecycle> {
        Box::new(self.0.new_request(context_id))
    }

    fn on_tick(&self, host: &mut dyn Host) {
        self.0.on_tick(host);
    }

    fn on_worker_tick(&self, host: &mut dyn Host) {
        self.0.on_worker_tick(host);
    }

    fn holds_requests(&self) -> bool {
        self.0.holds_requests()
    }

    fn on_grpc_response(&self, host: &mut dyn Host, token: u32, status: u32, size: usize) {
        self.0.on_grpc_response(host, token, status, size);
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize) {
        self.0.on_http_response(host, token, body_size);
    }
}

/// How a filter is configured, its type erased.
pub type Configure = fn(&mut dyn Host) -> Result<Rc<dyn AnyPlugin>, ConfigError>;

/// [`Configure`] for one plugin type.
pub fn configure<P: Plugin>(host: &mut dyn Host) -> Result<Rc<dyn AnyPlugin>, ConfigError>
where
    P::Request: 'static,
{
    Ok(Rc::new(Erased(Rc::new(P::configure(host)?))))
}

/// At most this many members (a request's progress is kept on the stack up to it).
pub const MAX_MEMBERS: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainConfig {
    filters: Vec<MemberConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberConfig {
    /// The member's root id (`sluice.rate_limit.tokens`): which filter, and what it reads
    /// as `plugin_root_id`.
    name: String,
    /// Its configuration: a JSON document, or a string holding one (as Envoy's
    /// `StringValue` gives a filter its configuration).
    config: serde_json::Value,
}

/// One filter of a chain.
struct Member {
    name: Rc<str>,
    plugin: Rc<dyn AnyPlugin>,
    /// The tick period it asked for while configured, and when its next tick is due
    /// (nanoseconds of the host's clock; 0: at the first tick).
    period: Option<Duration>,
    due: Cell<u64>,
}

/// The filters a [`Chain`] may hold: each module names its own.
pub trait Members: 'static {
    /// Each filter after the part of a root id that chooses it (`sluice.rate_limit.tokens`
    /// runs `rate_limit`), as in a module of several filters.
    const FILTERS: &'static [(&'static str, Configure)];
}

/// Several filters as one: see the module documentation. `M` says which filters it may
/// hold; the configuration, which of them and in what order.
pub struct Chain<M: Members> {
    members: Vec<Member>,
    /// Callouts the members' root contexts started: token → member.
    root_tokens: RefCell<Tokens>,
    /// The host's reads are copies: each request keeps its members' reads of a hook
    /// ([`HookReads`]).
    keep_reads: bool,
    filters: PhantomData<fn() -> M>,
}

type Tokens = SmallVec<[(u32, usize); 4]>;

impl<M: Members> Chain<M> {
    /// The members' root ids, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| &*m.name)
    }

    /// Run member `i`'s root-context work through its own view of `host`.
    fn with_root_member(
        &self,
        host: &mut dyn Host,
        i: usize,
        work: impl FnOnce(&dyn AnyPlugin, &mut dyn Host),
    ) {
        let Some(m) = self.members.get(i) else { return };
        let mut events = Events::default();
        let mut tokens = Tokens::new();
        let mut member_host = MemberHost::root(host, i, &m.name, &[], &mut events, &mut tokens);
        work(m.plugin.as_ref(), &mut member_host);
        self.root_tokens.borrow_mut().extend(tokens);
    }
}

impl<M: Members> Plugin for Chain<M> {
    const NAME: &'static str = "sluice.chain";
    type Request = ChainRequest;

    /// Configure each member the chain's configuration names, from `M::FILTERS`.
    fn configure(host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config: ChainConfig = parse_config(&host.plugin_configuration())?;
        if config.filters.is_empty() || config.filters.len() > MAX_MEMBERS {
            return Err(ConfigError::invalid(format!(
                "filters: between 1 and {MAX_MEMBERS} filters, not {}",
                config.filters.len()
            )));
        }
        let mut members = Vec::with_capacity(config.filters.len());
        let mut ticks = Vec::new();
        for (i, m) in config.filters.into_iter().enumerate() {
            let Some(make) =
                chosen_by_root_id(M::FILTERS, &m.name).filter(|_| !m.name.contains("chain"))
            else {
                return Err(ConfigError::invalid(format!(
                    "filters[{i}].name: no filter {:?} in this module",
                    m.name
                )));
            };
            let bytes = match m.config {
                serde_json::Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            let mut events = Events::default();
            let mut tokens = Tokens::new();
            let mut member_host =
                MemberHost::root(host, i, &m.name, &bytes, &mut events, &mut tokens);
            let plugin = make(&mut member_host)
                .map_err(|e| ConfigError::invalid(format!("filters[{i}] ({}): {e}", m.name)))?;
            if let Some(p) = events.tick {
                ticks.push(p);
            }
            members.push(Member {
                name: m.name.into(),
                plugin,
                period: events.tick,
                due: Cell::new(0),
            });
        }
        let last = members.len().saturating_sub(1);
        if let Some((i, m)) = members
            .iter()
            .enumerate()
            .find(|(i, m)| m.plugin.holds_requests() && *i != last)
        {
            return Err(ConfigError::invalid(format!(
                "filters[{i}] ({}): a filter that holds requests for its worker tick must be the chain's last",
                m.name
            )));
        }
        if let Some(period) = ticks.into_iter().min() {
            host.set_tick_period(period);
        }
        let chain = Self {
            members,
            root_tokens: RefCell::new(Tokens::new()),
            keep_reads: host.reads_are_copies(),
            filters: PhantomData,
        };
        log::info!(
            "sluice.chain: configured with {}",
            chain.names().collect::<Vec<_>>().join(", ")
        );
        Ok(chain)
    }

    fn new_request(self: &Rc<Self>, context_id: u32) -> ChainRequest {
        ChainRequest {
            context_id,
            members: self
                .members
                .iter()
                .map(|m| (m.plugin.new_request(context_id), Rc::clone(&m.name)))
                .collect(),
            started: 0,
            sides: PerSide::default(),
            tokens: Tokens::new(),
            replied_here: false,
            reads: self.keep_reads.then(RefCell::default),
        }
    }

    /// Each member's root tick when its own period has passed.
    fn on_tick(&self, host: &mut dyn Host) {
        let now = host.now_unix_nanos();
        for (i, m) in self.members.iter().enumerate() {
            let Some(period) = m.period else { continue };
            if now < m.due.get() {
                continue;
            }
            let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
            m.due.set(now.saturating_add(period_ns));
            self.with_root_member(host, i, |plugin, h| plugin.on_tick(h));
        }
    }

    fn on_worker_tick(&self, host: &mut dyn Host) {
        for i in 0..self.members.len() {
            self.with_root_member(host, i, |plugin, h| plugin.on_worker_tick(h));
        }
    }

    fn holds_requests(&self) -> bool {
        self.members.iter().any(|m| m.plugin.holds_requests())
    }

    fn on_grpc_response(&self, host: &mut dyn Host, token: u32, status: u32, size: usize) {
        // The borrow ends before the member runs (it may call out again).
        let member = take_token(&mut self.root_tokens.borrow_mut(), token);
        if let Some(i) = member {
            self.with_root_member(host, i, |p, h| p.on_grpc_response(h, token, status, size));
        }
    }

    fn on_http_response(&self, host: &mut dyn Host, token: u32, body_size: usize) {
        // The borrow ends before the member runs (it may call out again).
        let member = take_token(&mut self.root_tokens.borrow_mut(), token);
        if let Some(i) = member {
            self.with_root_member(host, i, |p, h| p.on_http_response(h, token, body_size));
        }
    }
}

fn take_token(tokens: &mut Tokens, token: u32) -> Option<usize> {
    let at = tokens.iter().position(|(t, _)| *t == token)?;
    Some(tokens.swap_remove(at).1)
}

/// How far one member has got in one direction of the stream.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// It was given the headers.
    headers_given: bool,
    /// It let the headers (and what of the body it was given) go on.
    passed: bool,
    /// Bytes at the front of Envoy's buffered body it has let go on.
    body_passed: usize,
    /// It let the body's last byte go on.
    ended: bool,
}

/// One direction of the stream as Envoy has delivered it to the chain.
#[derive(Debug, Default)]
struct Direction {
    headers_in: bool,
    /// The headers end the stream: no body follows.
    headers_end: bool,
    /// Envoy's buffered body (what the chain holds plus the chunk being delivered): its
    /// size, and whether its last byte is in.
    body: Option<(usize, bool)>,
    /// By position in this direction's order.
    progress: SmallVec<[Progress; MAX_MEMBERS]>,
    /// A member answered the client: nothing more runs in this direction.
    stopped: bool,
}

/// What a member did through its host during one call.
#[derive(Debug, Default)]
struct Events {
    resumed: PerSide<bool>,
    replied: bool,
    /// Bytes its body writes added to each side's body (negative: removed).
    body_delta: PerSide<isize>,
    tick: Option<Duration>,
    /// It acts on another stream now (`set_effective_context`): the chain sets its own
    /// stream back before the next member runs.
    elsewhere: bool,
    /// The local reply it made before the response began, not sent yet: Envoy passes a
    /// filter's reply through the filters before it, not through the filter that made it,
    /// so the chain passes it through the members before this one, then sends it.
    reply: Option<PendingReply>,
}

/// A local reply on its way to the client through the members before the one that made it.
#[derive(Debug, Default)]
struct PendingReply {
    /// `:status` first, as Envoy's response headers have it.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl PendingReply {
    fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let mut all = Vec::with_capacity(headers.len() + 2);
        all.push((":status".to_string(), status.to_string()));
        all.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string())),
        );
        Self {
            headers: all,
            body: body.to_vec(),
        }
    }

    fn find(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Send it as the members before its maker left it.
    fn send(&self, host: &mut dyn Host) {
        let status = self
            .find(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        // Envoy sets the length of the body it sends.
        let headers: SmallVec<[(&str, &str); 8]> = self
            .headers
            .iter()
            .filter(|(k, _)| k != ":status" && k != "content-length")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        host.send_reply(status, &headers, &self.body);
    }
}

/// One value for each side of the stream.
#[derive(Debug, Default, Clone, Copy)]
struct PerSide<T> {
    request: T,
    response: T,
}

impl<T> PerSide<T> {
    fn get(&self, side: Side) -> &T {
        match side {
            Side::Request => &self.request,
            Side::Response => &self.response,
        }
    }

    fn get_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
    }
}

/// What the members read of their stream during one Envoy hook, kept so that the next
/// member to read it is answered without a host call, when the host's reads are copies
/// (proxy-wasm: a body read there is a call, a call back into the VM to allocate, and a
/// copy; five members read the request's body). Emptied at every hook, since between hooks
/// Envoy and the filters around the chain may change the stream. A member's write keeps
/// what is kept true: a body write is spliced into it as Envoy splices it into its buffer,
/// filter state a member writes answers the next read of that name (as Envoy's filter state
/// would), and a header write drops that side's headers (Envoy's rules for a repeated name
/// are its own).
#[derive(Debug, Default)]
struct HookReads {
    headers: PerSide<Option<HeaderList>>,
    bodies: PerSide<Option<BodyRead>>,
    /// Filter state written by the members during this hook: name, value.
    written: SmallVec<[(String, Vec<u8>); 8]>,
}

/// A side's headers as [`Host::headers`] gives them.
type HeaderList = Vec<(String, Vec<u8>)>;

/// The front of a buffered body as read.
#[derive(Debug)]
struct BodyRead {
    bytes: Vec<u8>,
    /// `bytes` is all of the buffer: the host gave fewer bytes than were asked for.
    whole: bool,
}

impl HookReads {
    /// A side's headers, read once.
    fn headers(&mut self, host: &dyn Host, side: Side) -> &[(String, Vec<u8>)] {
        self.headers
            .get_mut(side)
            .get_or_insert_with(|| host.headers(side))
    }

    /// One header as [`Host::header`] gives it. A name that occurs more than once is
    /// asked of the host (which of its values the host gives is the host's rule).
    fn header(&mut self, host: &dyn Host, side: Side, name: &str) -> Option<String> {
        let mut found = self
            .headers(host, side)
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (None, _) => None,
            (Some((_, value)), None) => std::str::from_utf8(value).ok().map(str::to_owned),
            (Some(_), Some(_)) => host.header(side, name),
        }
    }

    fn header_written(&mut self, side: Side) {
        *self.headers.get_mut(side) = None;
    }

    /// The first `size` bytes of a side's buffered body.
    fn body(&mut self, host: &dyn Host, side: Side, size: usize) -> Vec<u8> {
        if let Some(b) = self.bodies.get(side) {
            if size <= b.bytes.len() || b.whole {
                // A slice's copy is one memcpy (an iterator's, a byte at a time in V8).
                let kept = b.bytes.get(..size).unwrap_or(&b.bytes);
                return kept.to_vec();
            }
        }
        let bytes = host.body(side, size);
        *self.bodies.get_mut(side) = Some(BodyRead {
            bytes: bytes.clone(),
            whole: bytes.len() < size,
        });
        bytes
    }

    /// The first `size` bytes of a side's body were replaced by `bytes` (`written`: the
    /// host took the write). Envoy drains them from its buffer and puts `bytes` in front.
    fn body_written(&mut self, side: Side, size: usize, bytes: &[u8], written: bool) {
        let kept = self.bodies.get_mut(side).take();
        if !written {
            return;
        }
        *self.bodies.get_mut(side) = kept.and_then(|b| {
            let rest = match b.bytes.get(size..) {
                Some(rest) => rest,
                // All of it replaced (Envoy drains no more than it holds).
                None if b.whole => &[],
                None => return None,
            };
            let mut now = Vec::with_capacity(bytes.len() + rest.len());
            now.extend_from_slice(bytes);
            now.extend_from_slice(rest);
            Some(BodyRead {
                bytes: now,
                whole: b.whole,
            })
        });
    }

    /// Filter state a member wrote during this hook.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let [name] = path else { return None };
        self.written
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn property_written(&mut self, name: &str, value: &[u8]) {
        match self.written.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.written.push((name.to_string(), value.to_vec())),
        }
    }
}

/// A member's lifecycle for one stream, and its root id.
type MemberRequest = (Box<dyn Lifecycle>, Rc<str>);

/// A stream's lifecycle through a [`Chain`].
pub struct ChainRequest {
    /// Envoy's id of the stream.
    context_id: u32,
    /// Each member's lifecycle and root id.
    members: SmallVec<[MemberRequest; MAX_MEMBERS]>,
    /// How many members were given the request's headers (the response's members).
    started: usize,
    /// Each direction as Envoy has delivered it.
    sides: PerSide<Direction>,
    /// Callouts the members started: token → member.
    tokens: Tokens,
    /// A member answered the request and the chain sent it (see [`PendingReply`]): Envoy
    /// does not pass it back through the chain.
    replied_here: bool,
    /// What the members read during the hook under way, when the host's reads are copies.
    reads: Option<RefCell<HookReads>>,
}

/// How a member's view of the host is set up for one call (see [`MemberHost`]).
#[derive(Default)]
struct View<'r> {
    body: Option<(Side, usize)>,
    capture_reply: bool,
    reply: Option<&'r mut PendingReply>,
}

impl<'r> View<'r> {
    fn passing(reply: &'r mut PendingReply) -> Self {
        Self {
            reply: Some(reply),
            ..Self::default()
        }
    }
}

/// Which hook a member is given.
#[derive(Clone, Copy)]
enum Step {
    Headers(bool),
    Body {
        offset: usize,
        size: usize,
        end: bool,
    },
}

impl ChainRequest {
    fn direction(&mut self, side: Side) -> &mut Direction {
        self.sides.get_mut(side)
    }

    /// A new hook of Envoy's: what the members read before may have changed.
    fn forget_reads(&mut self) {
        if let Some(reads) = &mut self.reads {
            *reads.get_mut() = HookReads::default();
        }
    }

    /// The response has begun: a reply now replaces it rather than ending the request.
    fn response_begun(&self) -> bool {
        self.sides.response.headers_in
    }

    /// The member at position `pos` of `side`'s order.
    fn member_at(&self, side: Side, pos: usize) -> usize {
        match side {
            Side::Request => pos,
            Side::Response => self.started.saturating_sub(pos + 1),
        }
    }

    fn len(&self, side: Side) -> usize {
        match side {
            Side::Request => self.members.len(),
            Side::Response => self.started,
        }
    }

    /// Give member `i` one hook through its view of `host`.
    fn call(&mut self, host: &mut dyn Host, i: usize, side: Side, step: Step) -> (Flow, Events) {
        let view = View {
            body: match step {
                Step::Body { offset, .. } if offset > 0 => Some((side, offset)),
                _ => None,
            },
            capture_reply: !self.response_begun(),
            reply: None,
        };
        self.run_member(host, i, view, |lifecycle, h| match (side, step) {
            (Side::Request, Step::Headers(end)) => lifecycle.on_request_headers(h, end),
            (Side::Response, Step::Headers(end)) => lifecycle.on_response_headers(h, end),
            (Side::Request, Step::Body { size, end, .. }) => {
                lifecycle.on_request_body(h, size, end)
            }
            (Side::Response, Step::Body { size, end, .. }) => {
                lifecycle.on_response_body(h, size, end)
            }
        })
        .unwrap_or((Flow::Continue, Events::default()))
    }

    /// Run `work` on member `i`'s lifecycle through its view of `host`: its result, and
    /// what the member did through the host. A member that acted on another stream leaves
    /// the chain's own set back for the next (as its own filter's next hook would start on
    /// its own stream).
    fn run_member<R>(
        &mut self,
        host: &mut dyn Host,
        i: usize,
        view: View,
        work: impl FnOnce(&mut dyn Lifecycle, &mut dyn Host) -> R,
    ) -> Option<(R, Events)> {
        let mut events = Events::default();
        let (lifecycle, name) = self.members.get_mut(i)?;
        let result = work(
            lifecycle.as_mut(),
            &mut MemberHost {
                inner: host,
                member: i,
                name,
                config: &[],
                body: view.body,
                events: &mut events,
                tokens: &mut self.tokens,
                own: Some(self.context_id),
                capture_reply: view.capture_reply,
                reply: view.reply,
                reads: self.reads.as_ref(),
            },
        );
        if events.elsewhere {
            host.set_effective_context(self.context_id);
        }
        Some((result, events))
    }

    /// Member progress at position `pos` of `side`'s order.
    fn progress(&mut self, side: Side, pos: usize) -> Option<&mut Progress> {
        self.direction(side).progress.get_mut(pos)
    }

    /// Move `side` on as far as its members let it: each in order is given what Envoy has
    /// delivered that it has not seen. Continue when every member let everything go on
    /// (Envoy's buffered body then moves on, and the next chunk starts a new buffer).
    fn advance(&mut self, host: &mut dyn Host, side: Side) -> Flow {
        let n = self.len(side);
        let dir = self.direction(side);
        if dir.stopped || !dir.headers_in {
            return Flow::Pause;
        }
        dir.progress.resize(n, Progress::default());
        let headers_end = dir.headers_end;
        for pos in 0..n {
            let i = self.member_at(side, pos);
            let Some(p) = self.progress(side, pos).map(|p| *p) else {
                return Flow::Pause;
            };
            if !p.headers_given {
                if side == Side::Request {
                    self.started = self.started.max(i + 1);
                }
                if let Some(p) = self.progress(side, pos) {
                    p.headers_given = true;
                }
                let (flow, mut events) = self.call(host, i, side, Step::Headers(headers_end));
                if events.replied {
                    return self.replied(host, side, i, &mut events);
                }
                if flow == Flow::Continue || *events.resumed.get(side) {
                    if let Some(p) = self.progress(side, pos) {
                        p.passed = true;
                        p.ended = headers_end;
                    }
                } else if self.direction(side).body.is_none() {
                    // It holds the headers; the body, when it comes, is given to it.
                    return Flow::Pause;
                }
            }
            let body = self.direction(side).body;
            let Some(p) = self.progress(side, pos).map(|p| *p) else {
                return Flow::Pause;
            };
            if let Some((total, end)) = body {
                if p.body_passed < total || (end && !p.ended) {
                    let step = Step::Body {
                        offset: p.body_passed,
                        size: total - p.body_passed,
                        end,
                    };
                    let (flow, mut events) = self.call(host, i, side, step);
                    let total = total.saturating_add_signed(*events.body_delta.get(side));
                    let dir = self.direction(side);
                    if let Some(b) = dir.body.as_mut() {
                        b.0 = total;
                    }
                    // What the members before it let go on is the body as this one left it.
                    for q in dir.progress.iter_mut().take(pos) {
                        q.body_passed = total;
                    }
                    if events.replied {
                        return self.replied(host, side, i, &mut events);
                    }
                    if flow == Flow::Pause && !*events.resumed.get(side) {
                        return Flow::Pause;
                    }
                    if let Some(p) = self.progress(side, pos) {
                        p.passed = true;
                        p.body_passed = total;
                        p.ended = end;
                    }
                }
            }
            if !self.progress(side, pos).is_some_and(|p| p.passed) {
                return Flow::Pause;
            }
        }
        // Everything delivered goes on: Envoy's buffer is emptied downstream.
        let dir = self.direction(side);
        if let Some((_, end)) = dir.body {
            dir.body = if end { Some((0, true)) } else { None };
            for p in &mut dir.progress {
                p.body_passed = 0;
            }
        }
        Flow::Continue
    }

    /// Member `i` answered the client: the direction under way stops there. A reply made
    /// before the response began goes through the members before `i` (in reverse, as
    /// Envoy passes a filter's reply through the filters before it), then to Envoy.
    fn replied(&mut self, host: &mut dyn Host, side: Side, i: usize, events: &mut Events) -> Flow {
        self.direction(side).stopped = true;
        let Some(mut reply) = events.reply.take() else {
            return Flow::Pause;
        };
        // Nothing to wait for: the whole reply is here (a pause is not kept).
        for j in (0..i).rev() {
            let empty = reply.body.is_empty();
            let view = View::passing(&mut reply);
            self.run_member(host, j, view, |l, h| l.on_response_headers(h, empty));
            if !empty {
                let size = reply.body.len();
                let view = View::passing(&mut reply);
                self.run_member(host, j, view, |l, h| l.on_response_body(h, size, true));
            }
        }
        reply.send(host);
        self.replied_here = true;
        Flow::Pause
    }

    /// Envoy delivers a body: all of it that the chain holds, and the new chunk.
    fn body(&mut self, host: &mut dyn Host, side: Side, size: usize, end: bool) -> Flow {
        self.direction(side).body = Some((size, end));
        self.advance(host, side)
    }

    fn headers(&mut self, host: &mut dyn Host, side: Side, end: bool) -> Flow {
        let dir = self.direction(side);
        dir.headers_in = true;
        dir.headers_end = end;
        self.advance(host, side)
    }

    /// A callout's answer to member `i`: if it resumed its side, the members after it run,
    /// and Envoy goes on only when all of them let it.
    fn answer(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        deliver: impl FnOnce(&mut dyn Lifecycle, &mut dyn Host),
    ) {
        let Some(i) = take_token(&mut self.tokens, token) else {
            return;
        };
        let view = View {
            capture_reply: !self.response_begun(),
            ..View::default()
        };
        let Some(((), mut events)) = self.run_member(host, i, view, deliver) else {
            return;
        };
        if events.replied {
            let side = if self.response_begun() {
                Side::Response
            } else {
                Side::Request
            };
            self.replied(host, side, i, &mut events);
            return;
        }
        for side in [Side::Request, Side::Response] {
            if !*events.resumed.get(side) {
                continue;
            }
            // The member lets go of everything it was given on this side.
            let pos = match side {
                Side::Request => Some(i),
                Side::Response => self.started.checked_sub(i + 1),
            };
            let dir = self.direction(side);
            if let Some(b) = dir.body.as_mut() {
                b.0 = b.0.saturating_add_signed(*events.body_delta.get(side));
            }
            let body = dir.body;
            if let (Some(pos), Some((total, _))) = (pos, body) {
                for q in dir.progress.iter_mut().take(pos) {
                    q.body_passed = total;
                }
            }
            if let Some(p) = pos.and_then(|pos| dir.progress.get_mut(pos)) {
                p.passed = true;
                if let Some((total, end)) = body {
                    p.body_passed = total;
                    p.ended = end;
                } else {
                    p.ended = dir.headers_end;
                }
            }
            if self.advance(host, side) == Flow::Continue {
                host.resume(side);
            }
        }
    }
}

/// Each of Envoy's hooks starts with nothing read (see [`HookReads`]).
impl Lifecycle for ChainRequest {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        self.forget_reads();
        self.headers(host, Side::Request, end_of_stream)
    }

    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        self.forget_reads();
        self.body(host, Side::Request, size, end)
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        if self.replied_here {
            return Flow::Continue;
        }
        self.forget_reads();
        self.headers(host, Side::Response, end_of_stream)
    }

    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end: bool) -> Flow {
        if self.replied_here {
            return Flow::Continue;
        }
        self.forget_reads();
        self.body(host, Side::Response, size, end)
    }

    fn on_grpc_response(&mut self, host: &mut dyn Host, token: u32, status: u32, size: usize) {
        self.forget_reads();
        self.answer(host, token, |l, h| {
            l.on_grpc_response(h, token, status, size)
        });
    }

    fn on_http_response(&mut self, host: &mut dyn Host, token: u32, body_size: usize) {
        self.forget_reads();
        self.answer(host, token, |l, h| l.on_http_response(h, token, body_size));
    }

    /// Every member that saw the request, in chain order.
    fn on_log(&mut self, host: &mut dyn Host) {
        self.forget_reads();
        for i in 0..self.started {
            self.run_member(host, i, View::default(), |l, h| l.on_log(h));
        }
    }
}

/// A member's view of the host: its own configuration and root id, its callouts recorded
/// for the chain, its resumes and replies noted instead of (resumes) or as well as
/// (replies) reaching Envoy, and, when it is given a body chunk after the part of Envoy's
/// buffer it already let go on, that buffer from the chunk on.
struct MemberHost<'a> {
    inner: &'a mut dyn Host,
    member: usize,
    name: &'a str,
    config: &'a [u8],
    /// The side whose body this member sees from an offset, and the offset.
    body: Option<(Side, usize)>,
    events: &'a mut Events,
    tokens: &'a mut Tokens,
    /// The stream this member's call is about; `None` for the root context's work, whose
    /// resumes and replies (a request the member held, released from its worker tick) go
    /// to Envoy at once, as do those a member makes for another stream
    /// (`set_effective_context`: the picker releasing a queued request when one ends).
    own: Option<u32>,
    /// Keep a reply to this stream for the chain to pass on (the response has not begun).
    capture_reply: bool,
    /// The reply being passed through this member: its response headers and body.
    reply: Option<&'a mut PendingReply>,
    /// What the members read of this stream during this hook (see [`HookReads`]).
    reads: Option<&'a RefCell<HookReads>>,
}

impl<'a> MemberHost<'a> {
    /// A member's view for its configuration or its root context's work.
    fn root(
        inner: &'a mut dyn Host,
        member: usize,
        name: &'a str,
        config: &'a [u8],
        events: &'a mut Events,
        tokens: &'a mut Tokens,
    ) -> Self {
        Self {
            inner,
            member,
            name,
            config,
            body: None,
            events,
            tokens,
            own: None,
            capture_reply: false,
            reply: None,
            reads: None,
        }
    }

    /// The reply being passed through this member, when `side` is its response.
    fn reply_for(&self, side: Side) -> Option<&PendingReply> {
        self.reply.as_deref().filter(|_| side == Side::Response)
    }

    fn reply_for_mut(&mut self, side: Side) -> Option<&mut PendingReply> {
        self.reply.as_deref_mut().filter(|_| side == Side::Response)
    }

    /// Whether a resume or a reply now is about the stream the chain is running.
    fn for_this_stream(&self) -> bool {
        self.own.is_some() && !self.events.elsewhere
    }

    fn offset(&self, side: Side) -> usize {
        match self.body {
            Some((s, offset)) if s == side => offset,
            _ => 0,
        }
    }

    /// What the members read of this stream during this hook, when the chain keeps it and
    /// this call is about this stream.
    fn kept(&self) -> Option<RefMut<'_, HookReads>> {
        self.reads
            .filter(|_| self.for_this_stream())
            .map(RefCell::borrow_mut)
    }

    /// The first `size` bytes of Envoy's buffered body on `side`.
    fn buffered(&self, side: Side, size: usize) -> Vec<u8> {
        match self.kept() {
            Some(mut kept) => kept.body(&*self.inner, side, size),
            None => self.inner.body(side, size),
        }
    }

    /// Replace the first `size` bytes of Envoy's buffered body on `side`.
    fn set_buffered(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        let written = self.inner.set_body(side, size, bytes);
        if let Some(mut kept) = self.kept() {
            kept.body_written(side, size, bytes, written);
        }
        written
    }

    fn header_written(&self, side: Side) {
        if let Some(mut kept) = self.kept() {
            kept.header_written(side);
        }
    }

    /// `f` of `side`'s headers as kept for this hook (read from the host the first time),
    /// when the chain keeps them.
    fn with_kept_headers<R>(
        &self,
        side: Side,
        f: impl FnOnce(&[(String, Vec<u8>)]) -> R,
    ) -> Option<R> {
        self.kept()
            .map(|mut kept| f(kept.headers(&*self.inner, side)))
    }
}

impl Host for MemberHost<'_> {
    fn plugin_configuration(&self) -> Vec<u8> {
        self.config.to_vec()
    }

    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        match self.reply_for(side) {
            Some(r) => r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect(),
            None => self
                .with_kept_headers(side, <[_]>::to_vec)
                .unwrap_or_else(|| self.inner.headers(side)),
        }
    }

    fn with_headers(&self, side: Side, f: &mut dyn FnMut(LentHeaders)) {
        match self.reply_for(side) {
            Some(r) => {
                let lent: SmallVec<[(&str, &[u8]); 8]> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes()))
                    .collect();
                f(&lent);
            }
            None => {
                let lent_kept = self.with_kept_headers(side, |headers| {
                    let lent: SmallVec<[(&str, &[u8]); 16]> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_slice()))
                        .collect();
                    f(&lent);
                });
                if lent_kept.is_none() {
                    self.inner.with_headers(side, f);
                }
            }
        }
    }

    fn header(&self, side: Side, name: &str) -> Option<String> {
        match self.reply_for(side) {
            Some(r) => r.find(name).map(str::to_owned),
            None => self
                .kept()
                .map(|mut kept| kept.header(&*self.inner, side, name))
                .unwrap_or_else(|| self.inner.header(side, name)),
        }
    }

    fn header_strings(&self, side: Side, names: &[&str]) -> Vec<Option<String>> {
        match self.reply_for(side) {
            Some(r) => names.iter().map(|n| r.find(n).map(str::to_owned)).collect(),
            None => self
                .with_kept_headers(side, |headers| named_strings(headers, names))
                .unwrap_or_else(|| self.inner.header_strings(side, names)),
        }
    }

    fn set_header(&mut self, side: Side, name: &str, value: &str) {
        match self.reply_for_mut(side) {
            Some(r) => {
                r.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                r.headers
                    .push((name.to_ascii_lowercase(), value.to_string()));
            }
            None => {
                self.inner.set_header(side, name, value);
                self.header_written(side);
            }
        }
    }

    fn remove_header(&mut self, side: Side, name: &str) {
        match self.reply_for_mut(side) {
            Some(r) => r.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name)),
            None => {
                self.inner.remove_header(side, name);
                self.header_written(side);
            }
        }
    }

    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        if let Some(r) = self.reply_for(side) {
            return r.body.get(..size).unwrap_or(&r.body).to_vec();
        }
        let offset = self.offset(side);
        if offset == 0 {
            return self.buffered(side, size);
        }
        let mut whole = self.buffered(side, offset.saturating_add(size));
        whole.drain(..offset.min(whole.len()));
        whole
    }

    fn set_body(&mut self, side: Side, size: usize, bytes: &[u8]) -> bool {
        if let Some(r) = self.reply_for_mut(side) {
            let cut = size.min(r.body.len());
            r.body.splice(..cut, bytes.iter().copied());
            return true;
        }
        let offset = self.offset(side);
        let written = if offset == 0 {
            self.set_buffered(side, size, bytes)
        } else {
            let mut whole = self.buffered(side, offset);
            whole.extend_from_slice(bytes);
            self.set_buffered(side, offset.saturating_add(size), &whole)
        };
        if written {
            let added = isize::try_from(bytes.len()).unwrap_or(isize::MAX);
            let removed = isize::try_from(size).unwrap_or(isize::MAX);
            let delta = self.events.body_delta.get_mut(side);
            *delta = delta.saturating_add(added - removed);
        }
        written
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if path == ["plugin_root_id"] {
            return Some(self.name.as_bytes().to_vec());
        }
        if let Some(value) = self.kept().and_then(|kept| kept.property(path)) {
            return Some(value);
        }
        self.inner.property(path)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        self.inner.set_property(name, value);
        if let Some(mut kept) = self.kept() {
            kept.property_written(name, value);
        }
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.shared_data(key)
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.inner.set_shared_data(key, value, cas)
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall) -> Option<u32> {
        let token = self.inner.dispatch_grpc(call)?;
        self.tokens.push((token, self.member));
        Some(token)
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        self.inner.grpc_response(size)
    }

    fn grpc_status(&self) -> (u32, Option<String>) {
        self.inner.grpc_status()
    }

    fn dispatch_http(&mut self, call: &HttpCall) -> Option<u32> {
        let token = self.inner.dispatch_http(call)?;
        self.tokens.push((token, self.member));
        Some(token)
    }

    fn http_response(&self, body_size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        self.inner.http_response(body_size)
    }

    /// Noted: the chain ticks at its members' shortest period and each member at its own.
    fn set_tick_period(&mut self, period: Duration) {
        self.events.tick = Some(period);
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if !self.for_this_stream() {
            self.inner.send_reply(status, headers, body);
            return;
        }
        self.events.replied = true;
        if let Some(reply) = self.reply.as_deref_mut() {
            // A member answering a reply on its way replaces it.
            *reply = PendingReply::new(status, headers, body);
        } else if self.capture_reply {
            self.events.reply = Some(PendingReply::new(status, headers, body));
        } else {
            self.inner.send_reply(status, headers, body);
        }
    }

    /// Noted: the chain moves on to the members after this one, and tells Envoy only when
    /// they all let the stream go on.
    fn resume(&mut self, side: Side) {
        if self.for_this_stream() {
            *self.events.resumed.get_mut(side) = true;
        } else {
            self.inner.resume(side);
        }
    }

    fn set_effective_context(&mut self, context_id: u32) {
        self.events.elsewhere = self.own.is_some_and(|own| own != context_id);
        self.inner.set_effective_context(context_id);
    }

    fn clear_route_cache(&mut self) {
        self.inner.clear_route_cache();
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        self.inner.define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, n: u64) {
        self.inner.increment_metric(id, n);
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        self.inner.record_metric(id, value);
    }

    fn define_metric_family(&mut self, family: &MetricFamily) -> Option<u32> {
        self.inner.define_metric_family(family)
    }

    fn increment_labeled(&mut self, id: u32, values: &[&str], n: u64) {
        self.inner.increment_labeled(id, values, n);
    }

    /// Each member's queues are its own, whatever it names them.
    fn handoff_queue(&mut self, name: &str) -> HandoffQueue {
        self.inner.handoff_queue(&format!("{}:{name}", self.member))
    }

    fn now_unix_nanos(&self) -> u64 {
        self.inner.now_unix_nanos()
    }

    fn reads_are_copies(&self) -> bool {
        self.inner.reads_are_copies()
    }
}
