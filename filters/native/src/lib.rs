//! A Sluice filter's [`Plugin`] run natively inside Envoy through its dynamic-module ABI
//! (`envoy.filters.http.dynamic_modules`), with no wasm VM: the same `Host` boundary
//! ([`EnvoyHost`]), the same lifecycle, each host call a plain function call into Envoy.
//!
//! Why it exists (issue 18): in Envoy's V8 a host call that returns data costs about 1.7
//! µs under load, most of it V8 entering and leaving the module and the call back into the
//! VM that allocates the answer; the chain makes about 75 a request. Built natively the
//! chain costs about half (`scripts/bench-chain.sh`'s native rows;
//! `examples/native_probe.rs`, the probe and no-op plugins; `examples/native_filters.rs`,
//! the seven filters, which the Envoy template loads with `native=true`). It is not yet
//! what the stack loads: [`EnvoyHost`] has no root-context timer (see its docs and
//! docs/architecture.md, "Two builds").
//!
//! Threading: Envoy creates a filter configuration on its main thread and streams on its
//! workers. A [`Plugin`] is single-threaded (it is written for one VM per worker), so each
//! worker thread configures its own from the configuration's bytes on its first stream, as
//! each worker's VM does; the main thread configures one first to refuse a bad
//! configuration at load, as `on_configure` does, and to define the plugin's metrics (Envoy
//! allows a module to define them only then; the workers' plugins find them by name).

mod abi;
mod host;

pub use host::{grpc_answer, EnvoyHost, GrpcAnswer};
use host::{Answer, Defined, Holding, Metrics};

use abi::{EnvoyBuffer, Filter, FilterConfig, HttpHeader, LogLevel};
use rustc_hash::FxHashMap;
use sluice_common::host::{
    chosen_by_root_id, send_error, Flow, Host, Lifecycle, Side, Unconfigured,
};
use sluice_common::{ErrorKind, OpenAiError};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// A configured plugin, its type erased: makes a stream's lifecycle (on a worker), or
/// does the root context's work (on the main thread).
pub use sluice_common::chain::AnyPlugin as Configured;

/// Configure a plugin from a host holding its configuration.
pub use sluice_common::chain::Configure as MakePlugin;

/// [`MakePlugin`] for one plugin type.
pub use sluice_common::chain::configure as make;

/// The filters this module offers, by the `filter_name` Envoy configures.
static FILTERS: OnceLock<&'static [(&'static str, MakePlugin)]> = OnceLock::new();

/// `envoy_dynamic_module_on_program_init`'s work (see [`native_filters!`]): remember the
/// filters, route `log` to Envoy's log; the ABI version string Envoy compares with its own
/// (a mismatch is only warned about).
pub fn init(filters: &'static [(&'static str, MakePlugin)]) -> *const c_char {
    let _ = FILTERS.set(filters);
    if log::set_logger(&EnvoyLog).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    c"v0.1.0".as_ptr()
}

/// The module's entry point: `sluice_native::native_filters!("probe" => Probe);` (a filter
/// name Envoy configures runs the first plugin whose name it contains).
#[macro_export]
macro_rules! native_filters {
    ($($name:literal => $plugin:ty),+ $(,)?) => {
        /// Envoy's first call into the module.
        #[allow(unsafe_code)] // an exported symbol Envoy looks up by name
        #[no_mangle]
        pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const ::std::ffi::c_char {
            static FILTERS: &[(&str, $crate::MakePlugin)] =
                &[$(($name, $crate::make::<$plugin> as $crate::MakePlugin)),+];
            $crate::init(FILTERS)
        }
    };
}

struct EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => LogLevel::Error,
                log::Level::Warn => LogLevel::Warn,
                log::Level::Info => LogLevel::Info,
                log::Level::Debug | log::Level::Trace => LogLevel::Debug,
            };
            abi::log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// A filter configuration as Envoy holds it (shared by all workers).
struct NativeConfig {
    /// Which configuration this is, for each worker's cache of configured plugins and the
    /// handoff queues.
    id: u64,
    name: String,
    bytes: Vec<u8>,
    make: MakePlugin,
    /// The metrics defined while Envoy configured it.
    metrics: Vec<Defined>,
    /// Touched only by the hooks Envoy runs on its main thread (config_new, scheduled,
    /// callout done, destroy); workers read the fields above.
    root: Root,
}

/// The root context: the plugin configured on the main thread, its timer, and its gRPC
/// calls not answered yet (their answers are decoded as gRPC).
struct Root {
    plugin: Rc<dyn Configured>,
    /// Held for its drop, which stops the timer.
    _ticker: Option<Ticker>,
    grpc_callouts: RefCell<Vec<u64>>,
}

/// The root context's timer: a module thread that posts a tick to Envoy's main thread
/// through the configuration's scheduler every period, until dropped (it stops and joins
/// the thread, which deletes the scheduler after its last post).
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(scheduler: abi::Scheduler, period: Duration) -> Option<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sluice-tick".into())
            .spawn(move || {
                let (lock, wake) = &*stopping;
                let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                // The first tick at once (it runs when Envoy's main loop starts): the picker's
                // first scrape is not a period after the first requests.
                scheduler.commit(0);
                while !*stopped {
                    let (guard, timeout) = wake
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(PoisonError::into_inner);
                    stopped = guard;
                    if !*stopped && timeout.timed_out() {
                        scheduler.commit(0);
                    }
                }
                drop(stopped);
                drop(scheduler);
            })
            .map_err(|e| log::error!("cannot start the root context's timer: {e}"))
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A worker's configured plugin, and the tick period it asked for.
#[derive(Clone)]
struct WorkerPlugin {
    plugin: Rc<dyn Configured>,
    tick: Duration,
}

/// Wakes the streams a plugin holds paused, on their workers: Envoy 1.40 gives an HTTP
/// filter no timer on a worker, so a module thread commits each waiting stream's
/// scheduler every period, and the stream's worker runs the plugin's worker tick
/// (`on_http_filter_scheduled`). A stream is armed when a step pauses it and disarmed
/// when it moves on or ends; a commit after that finds the stream gone and does nothing
/// (Envoy's scheduler holds it weakly).
struct Waker {
    waiting: Mutex<Vec<Waiting>>,
    wake: Condvar,
}

struct Waiting {
    /// The stream (its address), to disarm it.
    stream: usize,
    scheduler: abi::Scheduler,
    period: Duration,
    next: std::time::Instant,
}

impl Waker {
    /// The process's waker, its thread started on first use.
    fn get() -> &'static Waker {
        static WAKER: OnceLock<&'static Waker> = OnceLock::new();
        WAKER.get_or_init(|| {
            let waker: &'static Waker = Box::leak(Box::new(Waker {
                waiting: Mutex::new(Vec::new()),
                wake: Condvar::new(),
            }));
            let started = std::thread::Builder::new()
                .name("sluice-wake".into())
                .spawn(move || waker.run());
            if let Err(e) = started {
                log::error!("cannot start the worker wake-up thread: {e}");
            }
            waker
        })
    }

    fn run(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = std::time::Instant::now();
            let mut earliest = None::<std::time::Instant>;
            for w in waiting.iter_mut() {
                if w.next <= now {
                    w.scheduler.commit(0);
                    w.next = now + w.period;
                }
                earliest = Some(earliest.map_or(w.next, |e| e.min(w.next)));
            }
            waiting = match earliest {
                None => self
                    .wake
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wait = at.saturating_duration_since(std::time::Instant::now());
                    self.wake
                        .wait_timeout(waiting, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn arm(&self, stream: usize, scheduler: abi::Scheduler, period: Duration) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.push(Waiting {
            stream,
            scheduler,
            period,
            next: std::time::Instant::now() + period,
        });
        self.wake.notify_one();
    }

    fn disarm(&self, stream: usize) {
        let removed: Vec<Waiting> = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let (gone, kept) = std::mem::take(&mut *waiting)
                .into_iter()
                .partition(|w| w.stream == stream);
            *waiting = kept;
            gone
        };
        // Deleted outside the lock: the thread commits only what the list holds.
        drop(removed);
    }
}

/// One stream's filter.
struct Stream {
    lifecycle: Box<dyn Lifecycle>,
    context_id: u32,
    /// Its worker's plugin, when that plugin holds requests for its worker tick.
    holder: Option<WorkerPlugin>,
    /// Whether the stream is paused with a wake-up armed (see `Waker`).
    armed: bool,
    config: *const NativeConfig,
    holding: Holding,
    /// gRPC calls started and not answered yet (their answers are decoded as gRPC).
    grpc_callouts: Vec<u64>,
    /// Its configuration's id (see `host::stream_completed`).
    config_id: u64,
    /// Whether Envoy said the stream completed.
    completed: bool,
}

/// The lifecycle of a stream whose filter panicked: it is refused (see `with_stream_state`)
/// and nothing more of it runs.
struct Refused;

impl Lifecycle for Refused {
    fn on_request_headers(&mut self, _host: &mut dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Pause
    }

    fn on_request_body(&mut self, _host: &mut dyn Host, _size: usize, _end: bool) -> Flow {
        Flow::Pause
    }
}

thread_local! {
    /// This worker's plugins, by configuration id.
    // Keyed by the module's own configuration ids: FxHash, where SipHash cost a few hundred
    // instructions a stream for nothing a client can choose.
    static PLUGINS: RefCell<FxHashMap<u64, Option<WorkerPlugin>>> = RefCell::new(FxHashMap::default());
    /// When each configuration's worker tick last ran on this worker.
    static LAST_WORKER_TICK: RefCell<FxHashMap<u64, std::time::Instant>> = RefCell::new(FxHashMap::default());
    static NEXT_CONTEXT: Cell<u32> = const { Cell::new(1) };
}

/// The hooks Envoy calls, by the ABI's names.
#[allow(unsafe_code)]
mod hooks {
    use super::*;

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
        config_envoy: *mut c_void,
        name_ptr: *const u8,
        name_len: usize,
        config_ptr: *const u8,
        config_len: usize,
    ) -> *const c_void {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let name = String::from_utf8_lossy(&abi::lent(name_ptr, name_len)).into_owned();
        let bytes = abi::lent(config_ptr, config_len);
        let Some(&make) = FILTERS
            .get()
            .and_then(|filters| chosen_by_root_id(filters, &name))
        else {
            log::error!("no filter {name:?} in this module; configuration rejected");
            return std::ptr::null();
        };
        // Refuse a bad configuration now, as `on_configure` does, define the metrics
        // (Envoy allows it only now), and keep the plugin as the root context.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut metrics = Vec::new();
        let envoy_config = FilterConfig::new(config_envoy);
        let defining = Metrics::Defining(&envoy_config, &mut metrics);
        let mut host = EnvoyHost::configuration(id, &bytes, &name, defining);
        let plugin = match make(&mut host) {
            Ok(plugin) => plugin,
            Err(e) => {
                log::error!("{name}: {e}; configuration rejected");
                return std::ptr::null();
            }
        };
        let ticker = host.tick.and_then(|period| {
            Ticker::start(
                envoy_config.scheduler()?,
                period.max(Duration::from_millis(1)),
            )
        });
        let config = NativeConfig {
            id,
            name,
            bytes,
            make,
            metrics,
            root: Root {
                plugin,
                _ticker: ticker,
                grpc_callouts: RefCell::new(Vec::new()),
            },
        };
        Box::into_raw(Box::new(config)) as *const c_void
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut c_void) {
        if !config.is_null() {
            // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once, after its
            // streams. Dropping it stops its timer first.
            let config = unsafe { Box::from_raw(config as *mut NativeConfig) };
            host::drop_handoff_queues(config.id);
            drop(config);
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
        config: *const c_void,
        filter_envoy: *mut c_void,
    ) -> *mut c_void {
        // SAFETY: the configuration made in config_new lives as long as its filters.
        let Some(cfg) = (unsafe { (config as *const NativeConfig).as_ref() }) else {
            return std::ptr::null_mut();
        };
        let worker = PLUGINS.with(|plugins| {
            plugins
                .borrow_mut()
                .entry(cfg.id)
                .or_insert_with(|| {
                    let defined = Metrics::Defined(&cfg.metrics);
                    let mut host = EnvoyHost::configuration(cfg.id, &cfg.bytes, &cfg.name, defined);
                    match (cfg.make)(&mut host) {
                        Ok(plugin) => Some(WorkerPlugin {
                            plugin,
                            tick: host.tick.unwrap_or(Duration::from_millis(20)),
                        }),
                        Err(e) => {
                            log::error!("{}: {e}", cfg.name);
                            None
                        }
                    }
                })
                .clone()
        });
        let context_id = NEXT_CONTEXT.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1));
            id
        });
        host::register_stream(context_id, filter_envoy);
        host::stream_opened(cfg.id);
        let (lifecycle, holder): (Box<dyn Lifecycle>, _) = match worker {
            Some(w) => (
                w.plugin.new_request(context_id),
                w.plugin.holds_requests().then_some(w),
            ),
            None => (Box::new(Unconfigured { filter: "native" }), None),
        };
        Box::into_raw(Box::new(Stream {
            lifecycle,
            context_id,
            holder,
            armed: false,
            config: cfg,
            holding: Holding::default(),
            grpc_callouts: Vec::new(),
            config_id: cfg.id,
            completed: false,
        })) as *mut c_void
    }

    /// Run a step that decides whether the stream goes on. A pause of a whole request
    /// (`whole`: its last byte is in: nothing from the client will move it on) by a plugin
    /// that holds requests arms its wake-up; a pause for more of the body arms nothing,
    /// so an ordinary request costs no scheduler. Any step disarms the last wake-up (the
    /// stream moved on).
    fn flow_step(
        envoy: *mut c_void,
        stream: *mut c_void,
        whole: bool,
        step: impl FnOnce(&mut Stream, &mut EnvoyHost) -> Flow,
    ) -> u32 {
        with_stream_state(envoy, stream, 0, 1, None, |s, h| {
            if s.armed {
                s.armed = false;
                Waker::get().disarm(stream as usize);
            }
            let flow = step(s, h);
            if let (Flow::Pause, true, Some(holder)) = (flow, whole, &s.holder) {
                if let Some(scheduler) = Filter::new(envoy).scheduler() {
                    Waker::get().arm(stream as usize, scheduler, holder.tick);
                    s.armed = true;
                }
            }
            status(flow)
        })
    }

    /// Run one lifecycle step with the stream's host.
    fn with_stream<R>(
        envoy: *mut c_void,
        stream: *mut c_void,
        default: R,
        on_panic: R,
        step: impl FnOnce(&mut dyn Lifecycle, &mut EnvoyHost) -> R,
    ) -> R {
        with_stream_state(envoy, stream, default, on_panic, None, |s, h| {
            step(s.lifecycle.as_mut(), h)
        })
    }

    /// Run a body step; a pause makes the filter the holder of that side's body.
    fn body_step(envoy: *mut c_void, stream: *mut c_void, side: Side, end_of_stream: bool) -> u32 {
        let whole = side == Side::Request && end_of_stream;
        flow_step(envoy, stream, whole, |s, h| {
            let size = h.body_len(side);
            let flow = match side {
                Side::Request => s.lifecycle.on_request_body(h, size, end_of_stream),
                Side::Response => s.lifecycle.on_response_body(h, size, end_of_stream),
            };
            s.holding.set(side, matches!(flow, Flow::Pause));
            flow
        })
    }

    /// `default` when the stream is gone; `on_panic` when the filter panicked (a status that
    /// stops the stream, which its 500 reply ends); `answer`: the callout answer the hook
    /// delivers.
    fn with_stream_state<R>(
        envoy: *mut c_void,
        stream: *mut c_void,
        default: R,
        on_panic: R,
        answer: Option<&Answer>,
        step: impl FnOnce(&mut Stream, &mut EnvoyHost) -> R,
    ) -> R {
        // SAFETY: made by Box::into_raw in filter_new; Envoy calls a stream's hooks one at a
        // time on its worker, until destroy.
        let Some(stream) = (unsafe { (stream as *mut Stream).as_mut() }) else {
            return default;
        };
        // SAFETY: the configuration outlives its streams.
        let (id, bytes, name, metrics) =
            unsafe { stream.config.as_ref() }.map_or((0, &[][..], "", &[][..]), |c| {
                (
                    c.id,
                    c.bytes.as_slice(),
                    c.name.as_str(),
                    c.metrics.as_slice(),
                )
            });
        let filter = Filter::new(envoy);
        let mut host = EnvoyHost::stream(filter, id, bytes, name, stream.holding, metrics);
        if let Some(answer) = answer {
            host = host.with_answer(answer);
        }
        // No panic may cross into Envoy (it would abort the process). A filter that
        // panicked has left its request half-decided: the client gets the gateway's 500,
        // nothing more of the stream runs through the filter, and nothing ungoverned goes
        // on (the reply ends the stream).
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(stream, &mut host)));
        stream.grpc_callouts.append(&mut host.grpc_started);
        match result {
            Ok(result) => result,
            Err(_) => {
                log::error!("{name}: the filter panicked; the request was refused");
                stream.lifecycle = Box::new(Refused);
                let error = OpenAiError::new(ErrorKind::ServerError, "The gateway failed.")
                    .with_code("gateway_error");
                send_error(&mut host, &error, &[]);
                on_panic
            }
        }
    }

    /// A hook's status: 0 is Continue for headers and bodies alike, 1 StopIteration for
    /// headers and StopIterationAndBuffer for bodies (what a filter's pause means in
    /// proxy-wasm too).
    fn status(flow: Flow) -> u32 {
        match flow {
            Flow::Continue => 0,
            Flow::Pause => 1,
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
        envoy: *mut c_void,
        stream: *mut c_void,
        end_of_stream: bool,
    ) -> u32 {
        flow_step(envoy, stream, end_of_stream, |s, h| {
            s.lifecycle.on_request_headers(h, end_of_stream)
        })
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
        envoy: *mut c_void,
        stream: *mut c_void,
        end_of_stream: bool,
    ) -> u32 {
        body_step(envoy, stream, Side::Request, end_of_stream)
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
        _envoy: *mut c_void,
        _stream: *mut c_void,
    ) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
        envoy: *mut c_void,
        stream: *mut c_void,
        end_of_stream: bool,
    ) -> u32 {
        flow_step(envoy, stream, false, |s, h| {
            s.lifecycle.on_response_headers(h, end_of_stream)
        })
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
        envoy: *mut c_void,
        stream: *mut c_void,
        end_of_stream: bool,
    ) -> u32 {
        body_step(envoy, stream, Side::Response, end_of_stream)
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
        _envoy: *mut c_void,
        _stream: *mut c_void,
    ) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
        envoy: *mut c_void,
        stream: *mut c_void,
    ) {
        with_stream(envoy, stream, (), (), |l, h| l.on_log(h));
        // SAFETY: as in with_stream_state.
        if let Some(s) = unsafe { (stream as *mut Stream).as_mut() } {
            if !s.completed {
                s.completed = true;
                host::stream_completed(s.config_id, Some(&Filter::new(envoy)));
            }
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *mut c_void) {
        if !stream.is_null() {
            // SAFETY: made by Box::into_raw in filter_new; destroyed once.
            let s = unsafe { Box::from_raw(stream as *mut Stream) };
            if !s.completed {
                // Reset before it completed: its counters wait for the next stream's end.
                host::stream_completed(s.config_id, None);
            }
            if s.armed {
                Waker::get().disarm(stream as usize);
            }
            host::forget_stream(s.context_id);
        }
    }

    // Hooks Envoy resolves for every module, for features the native build does not use
    // (callouts, streams it starts, scheduled events, per-route configuration, watermarks).

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
        _name_ptr: *const u8,
        _name_len: usize,
        _config_ptr: *const u8,
        _config_len: usize,
    ) -> *const c_void {
        std::ptr::null()
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
        _c: *mut c_void,
    ) {
    }

    /// A callout the stream started has its answer (or failed: then no headers).
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
        envoy: *mut c_void,
        stream: *mut c_void,
        callout_id: u64,
        _result: u32,
        headers: *const HttpHeader,
        headers_size: usize,
        body: *const EnvoyBuffer,
        body_size: usize,
    ) {
        // SAFETY: as in with_stream_state; the borrow ends before it runs.
        let grpc = unsafe { (stream as *mut Stream).as_mut() }
            .is_some_and(|s| took(&mut s.grpc_callouts, callout_id));
        let answer = Answer::lent(headers, headers_size, body, body_size, grpc);
        let Ok(token) = u32::try_from(callout_id) else {
            return;
        };
        with_stream_state(envoy, stream, (), (), Some(&answer), |s, h| {
            let lifecycle = s.lifecycle.as_mut();
            match &answer.grpc {
                Some(g) => lifecycle.on_grpc_response(h, token, g.status, g.bytes.len()),
                None => lifecycle.on_http_response(h, token, answer.body.len()),
            }
        });
    }

    /// Whether `id` was in `ids` (and take it out).
    fn took(ids: &mut Vec<u64>, id: u64) -> bool {
        let position = ids.iter().position(|&x| x == id);
        position.map(|i| ids.swap_remove(i)).is_some()
    }

    /// Run a root-context step on Envoy's main thread, with the configuration's host.
    fn with_root(
        config_envoy: *mut c_void,
        config: *mut c_void,
        answer: Option<&Answer>,
        step: impl FnOnce(&dyn Configured, &mut EnvoyHost),
    ) {
        // SAFETY: made in config_new; Envoy runs a configuration's hooks on its main
        // thread until it destroys it.
        let Some(cfg) = (unsafe { (config as *const NativeConfig).as_ref() }) else {
            return;
        };
        let main = FilterConfig::new(config_envoy);
        let mut host = EnvoyHost::root(main, cfg.id, &cfg.bytes, &cfg.name, &cfg.metrics);
        if let Some(answer) = answer {
            host = host.with_answer(answer);
        }
        let plugin = cfg.root.plugin.as_ref();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(plugin, &mut host)));
        cfg.root
            .grpc_callouts
            .borrow_mut()
            .append(&mut host.grpc_started);
        if result.is_err() {
            log::error!("{}: the root context panicked", cfg.name);
        }
    }

    /// The root context's timer fired (see `Ticker`).
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
        config_envoy: *mut c_void,
        config: *mut c_void,
        _event: u64,
    ) {
        with_root(config_envoy, config, None, |plugin, host| {
            plugin.on_tick(host)
        });
    }

    /// A callout the root context started has its answer (or failed: then no headers).
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
        config_envoy: *mut c_void,
        config: *mut c_void,
        callout_id: u64,
        _result: u32,
        headers: *const HttpHeader,
        headers_size: usize,
        body: *const EnvoyBuffer,
        body_size: usize,
    ) {
        // SAFETY: as in with_root; the borrow ends before it runs.
        let grpc = unsafe { (config as *const NativeConfig).as_ref() }
            .is_some_and(|c| took(&mut c.root.grpc_callouts.borrow_mut(), callout_id));
        let answer = Answer::lent(headers, headers_size, body, body_size, grpc);
        let Ok(token) = u32::try_from(callout_id) else {
            return;
        };
        with_root(
            config_envoy,
            config,
            Some(&answer),
            |plugin, h| match &answer.grpc {
                Some(g) => plugin.on_grpc_response(h, token, g.status, g.bytes.len()),
                None => plugin.on_http_response(h, token, answer.body.len()),
            },
        );
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
        _envoy: *mut c_void,
        _stream: *mut c_void,
        _id: u64,
        _headers: *const c_void,
        _size: usize,
        _end: bool,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
        _envoy: *mut c_void,
        _stream: *mut c_void,
        _id: u64,
        _data: *const c_void,
        _count: usize,
        _end: bool,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
        _envoy: *mut c_void,
        _stream: *mut c_void,
        _id: u64,
        _trailers: *const c_void,
        _size: usize,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
        _envoy: *mut c_void,
        _stream: *mut c_void,
        _id: u64,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
        _envoy: *mut c_void,
        _stream: *mut c_void,
        _id: u64,
        _reason: u32,
    ) {
    }

    /// A paused stream's wake-up (see `Waker`): run its plugin's worker tick on this
    /// worker, at most once a period for all the streams waiting here.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
        envoy: *mut c_void,
        stream: *mut c_void,
        _event: u64,
    ) {
        with_stream_state(envoy, stream, (), (), None, |s, h| {
            let Some(holder) = &s.holder else {
                return;
            };
            // SAFETY: the configuration outlives its streams.
            let Some(id) = (unsafe { s.config.as_ref() }).map(|c| c.id) else {
                return;
            };
            let now = std::time::Instant::now();
            let due = LAST_WORKER_TICK.with(|last| {
                let mut last = last.borrow_mut();
                let due = last
                    .get(&id)
                    .is_none_or(|t| now.duration_since(*t) >= holder.tick / 2);
                if due {
                    last.insert(id, now);
                }
                due
            });
            if due {
                holder.plugin.on_worker_tick(h);
            }
        });
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
        _envoy: *mut c_void,
        _stream: *mut c_void,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
        _envoy: *mut c_void,
        _stream: *mut c_void,
    ) {
    }
}
