//! sluice-chain-profile: the whole filter chain, natively, on the benchmark's request.
//!
//! Each filter is configured as `scripts/bench-chain.sh` configures it in Envoy, and one
//! chat request after another goes through every filter's lifecycle in Envoy's order
//! (request headers and body in chain order, the response in reverse, then the logs), on
//! one [`MockHost`] standing in for Envoy, each filter seeing it through a [`CountingHost`].
//! For each filter it prints the native time per request, the host calls per request (each a
//! crossing of the wasm boundary in Envoy) and the bytes copied into and out of the VM.
//! Native time is not V8's, and the mock host is not Envoy: the table says where the work
//! is, and `perf record` (or `valgrind --tool=callgrind`) on this binary says which code
//! does it, with symbols, which the wasm in Envoy does not give.
//!
//!     sluice-chain-profile [--requests N] [--prompt-bytes N] [--calls] [--disturb-kb N] [--fresh] [--one-filter]
//!
//! `--one-filter` runs the filters after the buffer filter as one `sluice.chain`, as the
//! Envoy template does by default (one row for the six).
//!
//! `--fresh` puts the request's number before its prompt's first word, so that no memo of a
//! text seen before helps (the benchmarks' rows "every prompt new").
//! `--disturb-kb N` writes N KB of other memory between requests (untimed), as the rest of
//! Envoy's work does between two requests of a VM: what the caches being cold costs the
//! filters. `--calls` adds each filter's calls by kind, and what the first request published. A
//! filter that answers the request itself (any local reply) is an error: the profile is of
//! the request that passes every filter.

use sluice_common::chain::{configure, AnyPlugin, Configure};
use sluice_common::host::{Flow, Host, Lifecycle};
use sluice_endpoint_picker::lifecycle::EndpointPicker;
use sluice_filters::SluiceChain;
use sluice_key_auth::lifecycle::KeyAuth;
use sluice_model_router::lifecycle::ModelRouter;
use sluice_pii_redaction::lifecycle::PiiRedaction;
use sluice_rate_limit::lifecycle::RateLimit;
use sluice_response_cache::lifecycle::ResponseCache;
use sluice_testkit::{Call, CountingHost, HostCalls, MockHost};
use sluice_token_counter::lifecycle::TokenCounter;
use std::error::Error;
use std::rc::Rc;
use std::time::{Duration, Instant};

const KEY: &str = "sk-sluice-profile-0123456789abcdef";
const ENDPOINT: &str = "127.0.0.1:9001";
/// vLLM's gauges as the picker scrapes them.
const METRICS: &str = "vllm:num_requests_running{model_name=\"m\"} 1\n\
                       vllm:num_requests_waiting{model_name=\"m\"} 0\n\
                       vllm:kv_cache_usage_perc{model_name=\"m\"} 0.1\n";

/// One filter of the chain (or, with `--one-filter`, several as one): its name and its
/// configured plugin.
struct Stage {
    name: &'static str,
    plugin: Rc<dyn AnyPlugin>,
    time: Duration,
    calls: HostCalls,
}

impl Stage {
    fn new(name: &'static str, plugin: Rc<dyn AnyPlugin>) -> Self {
        Self {
            name,
            plugin,
            time: Duration::ZERO,
            calls: HostCalls::default(),
        }
    }
}

/// A filter as Envoy configures it: its name in the table, its root id, its configuration.
struct Filter {
    label: &'static str,
    root_id: &'static str,
    config: String,
    configure: Configure,
}

/// Configure a plugin on `host` with `config` and the root id Envoy would give it.
fn configure_on(
    host: &mut MockHost,
    root_id: &str,
    config: &str,
    configure: Configure,
) -> Result<Rc<dyn AnyPlugin>, Box<dyn Error>> {
    host.plugin_config = config.as_bytes().to_vec();
    host.set_text_property("plugin_root_id", root_id);
    Ok(configure(host).map_err(|e| format!("{root_id}: {e}"))?)
}

fn file(path: &str) -> Result<String, Box<dyn Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    Ok(std::fs::read_to_string(format!("{root}{path}"))?)
}

/// The chain's filters as the benchmark's Envoy runs them (endpoint-picker on an engine
/// pool), in order.
fn filters() -> Result<Vec<Filter>, Box<dyn Error>> {
    let keys = serde_json::json!({"keys": [{"id": "profile", "tenant": "profile",
        "sha256": hex::encode(sluice_key_auth::digest(KEY))}]});
    let router =
        r#"{"models":{"mock-model":{"targets":[{"pool":"pool-a","model":"org/mock-model-8b"}]}}}"#;
    let cache = r#"{"rules":[{"models":["*"],"apis":["embeddings"]},{"models":["*"],"apis":["chat","completions","responses","messages"]}]}"#;
    let picker = serde_json::json!({"pools": [{"name": "pool-a", "engine": "vllm",
        "endpoints": [{"address": ENDPOINT, "metrics_cluster": "pool-a-metrics"}]}]});
    let rate_limit = file("envoy/filters/rate-limit.json")?;
    let filter = |label, root_id, config: String, configure| Filter {
        label,
        root_id,
        config,
        configure,
    };
    Ok(vec![
        filter(
            "key-auth",
            "sluice.key_auth",
            keys.to_string(),
            configure::<KeyAuth>,
        ),
        filter(
            "rate-limit admission",
            "sluice.rate_limit.admission",
            rate_limit.clone(),
            configure::<RateLimit>,
        ),
        filter(
            "model-router",
            "sluice.model_router",
            router.into(),
            configure::<ModelRouter>,
        ),
        filter(
            "pii-redaction",
            "sluice.pii_redaction",
            file("envoy/filters/pii-redaction.json")?,
            configure::<PiiRedaction>,
        ),
        filter(
            "token-counter",
            "sluice.token_counter",
            file("envoy/filters/token-counter.json")?,
            configure::<TokenCounter>,
        ),
        filter(
            "response-cache",
            "sluice.response_cache",
            cache.into(),
            configure::<ResponseCache>,
        ),
        filter(
            "rate-limit tokens",
            "sluice.rate_limit.tokens",
            rate_limit,
            configure::<RateLimit>,
        ),
        filter(
            "endpoint-picker",
            "sluice.endpoint_picker",
            picker.to_string(),
            configure::<EndpointPicker>,
        ),
    ])
}

/// The stages, and the plugin whose root context scrapes the engine.
type ConfiguredChain = (Vec<Stage>, Rc<dyn AnyPlugin>);

/// The chain configured on `host`: each filter its own stage, or with `one_filter` the
/// filters after the buffer filter (the third on) as one `sluice.chain`, as the Envoy
/// template runs them by default. And the plugin whose root context scrapes the engine.
fn chain(host: &mut MockHost, one_filter: bool) -> Result<ConfiguredChain, Box<dyn Error>> {
    let filters = filters()?;
    let mut stages = Vec::new();
    for f in &filters {
        if one_filter && stages.len() == 2 {
            break;
        }
        stages.push(Stage::new(
            f.label,
            configure_on(host, f.root_id, &f.config, f.configure)?,
        ));
    }
    if one_filter {
        let members: Vec<serde_json::Value> = filters
            .iter()
            .skip(2)
            .map(|f| serde_json::json!({"name": f.root_id, "config": f.config}))
            .collect();
        let config = serde_json::json!({ "filters": members }).to_string();
        stages.push(Stage::new(
            "sluice.chain (the six after the buffer)",
            configure_on(host, "sluice.chain", &config, configure::<SluiceChain>)?,
        ));
    }
    let root = stages
        .last()
        .map(|s| Rc::clone(&s.plugin))
        .ok_or("no filters")?;
    host.now_ms = 1_700_000_000_000;
    Ok((stages, root))
}

/// One scrape of the endpoint's engine, answered as vLLM answers: the picker ranks on a
/// fresh report.
fn scrape(host: &mut MockHost, picker: &dyn AnyPlugin) {
    host.take_calls();
    let before = host.tokens_issued();
    picker.on_tick(host);
    let paths = host.take_calls().into_iter().filter_map(|c| match c {
        Call::DispatchHttp { path, .. } => Some(path),
        _ => None,
    });
    for (token, path) in (before + 1..).zip(paths) {
        let body = if path.contains("metrics") {
            METRICS
        } else {
            ""
        };
        host.http_answer = (
            vec![(":status".into(), b"200".to_vec())],
            body.as_bytes().to_vec(),
        );
        picker.on_http_response(host, token, body.len());
    }
}

fn request_body(prompt_bytes: usize) -> String {
    let text: String = "You are a helpful assistant for a GPU inference platform. "
        .chars()
        .cycle()
        .take(prompt_bytes.saturating_sub(100))
        .collect();
    serde_json::json!({"model": "mock-model", "max_tokens": 16, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]})
    .to_string()
}

const REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"org/mock-model-8b","choices":[{"index":0,"message":{"role":"assistant","content":"GPUs serve many requests at once when their batches are full."},"finish_reason":"stop"}],"usage":{"prompt_tokens":420,"completion_tokens":16,"total_tokens":436}}"#;

/// Run `step` for every stage (in `order`), each through its own counting view of `host`.
fn each(
    stages: &mut [Stage],
    requests: &mut [Box<dyn Lifecycle>],
    host: &mut MockHost,
    reverse: bool,
    mut step: impl FnMut(&mut dyn Lifecycle, &mut dyn Host, usize) -> Flow,
) -> Result<(), String> {
    let mut order: Vec<usize> = (0..stages.len()).collect();
    if reverse {
        order.reverse();
    }
    for i in order {
        let (Some(stage), Some(request)) = (stages.get_mut(i), requests.get_mut(i)) else {
            continue;
        };
        // The body's size as Envoy passes it (not a call of the filter's).
        let size = if reverse {
            host.response_body.len()
        } else {
            host.request_body.len()
        };
        let mut counting = CountingHost::new(host);
        let start = Instant::now();
        step(request.as_mut(), &mut counting, size);
        stage.time += start.elapsed();
        stage.calls.merge(counting.calls.into_inner());
        if let Some(reply) = host.reply() {
            return Err(format!(
                "{} answered {}: {}",
                stage.name, reply.status, reply.body
            ));
        }
    }
    Ok(())
}

/// Write a byte in each cache line of `memory` (a different value each request, so that
/// nothing can be skipped): the caches hold little of the chain's code and data after it.
fn disturb(memory: &mut [u8], request: u32) {
    for line in memory.chunks_mut(64) {
        if let Some(b) = line.first_mut() {
            *b = b.wrapping_add(request.to_le_bytes()[0] | 1);
        }
    }
    std::hint::black_box(&memory);
}

/// What `requests` requests cost each filter, and the filter state the last one left.
struct Profile {
    stages: Vec<Stage>,
    body_bytes: usize,
    published: Vec<(String, String)>,
    /// The last request's headers and body as they went upstream, and its answer's body
    /// as it went to the client.
    upstream: (Vec<(String, Vec<u8>)>, Vec<u8>),
    answer: Vec<u8>,
}

/// What to profile.
#[derive(Debug, Clone, Copy)]
struct Options {
    requests: u32,
    prompt_bytes: usize,
    disturb_kb: usize,
    fresh: bool,
    one_filter: bool,
}

fn profile(options: Options) -> Result<Profile, Box<dyn Error>> {
    let Options {
        requests,
        prompt_bytes,
        disturb_kb,
        fresh,
        one_filter,
    } = options;
    let mut other_memory = vec![0u8; disturb_kb << 10];
    let mut host = MockHost::new();
    let (mut stages, picker) = chain(&mut host, one_filter)?;
    scrape(&mut host, picker.as_ref());
    let body = request_body(prompt_bytes);
    let authorization = format!("Bearer {KEY}");
    let mut upstream = (Vec::new(), Vec::new());
    for id in 0..requests {
        disturb(&mut other_memory, id);
        if id % 450 == 449 {
            // A millisecond a request: the picker scrapes every 500 ms.
            scrape(&mut host, picker.as_ref());
        }
        host.next_request(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "localhost"),
            ("content-type", "application/json"),
            ("authorization", &authorization),
            ("x-request-id", "4f1c2a90-profile"),
        ]);
        // With `fresh`, a number before the prompt's first word (as scripts/lib/post.lua's
        // BENCH_FRESH): nothing a filter remembers of a text it saw helps.
        host.request_body = if fresh {
            body.replacen(
                "\"content\":\"You are",
                &format!("\"content\":\"{id} You are"),
                1,
            )
        } else {
            body.clone()
        }
        .into_bytes();
        host.now_ms += 1;
        let mut live: Vec<Box<dyn Lifecycle>> = Vec::with_capacity(stages.len());
        for s in &mut stages {
            let start = Instant::now();
            live.push(s.plugin.new_request(id + 2));
            s.time += start.elapsed();
        }
        // Envoy passes the headers on only when a filter lets them go, and the whole body
        // follows (the buffer filter holds it before model-router): each filter sees its
        // headers and then the body before the next one sees anything.
        each(&mut stages, &mut live, &mut host, false, |r, h, size| {
            r.on_request_headers(h, false);
            r.on_request_body(h, size, true)
        })?;
        upstream = (host.request_headers.clone(), host.request_body.clone());
        host.set_response_headers(&[(":status", "200"), ("content-type", "application/json")]);
        host.response_body = REPLY.as_bytes().to_vec();
        each(&mut stages, &mut live, &mut host, true, |r, h, size| {
            r.on_response_headers(h, false);
            r.on_response_body(h, size, true)
        })?;
        each(&mut stages, &mut live, &mut host, false, |r, h, _| {
            r.on_log(h);
            Flow::Continue
        })?;
    }
    let mut published: Vec<(String, String)> = host
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    published.sort();
    Ok(Profile {
        stages,
        body_bytes: body.len(),
        published,
        upstream,
        answer: host.response_body.clone(),
    })
}

fn run(options: Options, show_calls: bool) -> Result<(), Box<dyn Error>> {
    let Profile {
        stages,
        body_bytes,
        published,
        upstream,
        answer,
    } = profile(options)?;
    let requests = options.requests;
    let n = f64::from(requests.max(1));
    // Built for wasm32-wasip1 it runs in a wasm engine (V8 under Node:
    // `scripts/chain-profile-v8.sh`), the mock host compiled in with the filters.
    let runs_on = if cfg!(target_arch = "wasm32") {
        "in a wasm engine"
    } else {
        "natively"
    };
    println!(
        "sluice-chain-profile: {requests} requests, {body_bytes}-byte chat, {runs_on} on a mock host"
    );
    println!(
        "| {:<22} | {:>10} | {:>10} | {:>12} | {:>13} |",
        "filter", "us/request", "host calls", "bytes into VM", "bytes out of VM"
    );
    println!(
        "|{:-<24}|{:-<12}|{:-<12}|{:-<14}|{:-<15}|",
        "", "", "", "", ""
    );
    for s in &stages {
        println!(
            "| {:<22} | {:>10.1} | {:>10.1} | {:>12.0} | {:>13.0} |",
            s.name,
            s.time.as_secs_f64() * 1e6 / n,
            s.calls.total() as f64 / n,
            s.calls.bytes_in as f64 / n,
            s.calls.bytes_out as f64 / n,
        );
        if show_calls {
            let kinds: Vec<String> = s
                .calls
                .by_kind
                .iter()
                .map(|(k, c)| format!("{k} {:.1}", *c as f64 / n))
                .collect();
            println!("|   {}", kinds.join(", "));
        }
    }
    if show_calls {
        // Every filter did its whole work (the picker ranked on the engine's report).
        for (name, value) in &published {
            println!("{name} = {value}");
        }
        println!(
            "upstream: {} headers, a {}-byte body; the answer: {} bytes",
            upstream.0.len(),
            upstream.1.len(),
            answer.len()
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut o = Options {
        requests: 2000,
        prompt_bytes: 2000,
        disturb_kb: 0,
        fresh: false,
        one_filter: false,
    };
    let mut show_calls = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => o.requests = args.next().ok_or("--requests N")?.parse()?,
            "--prompt-bytes" => o.prompt_bytes = args.next().ok_or("--prompt-bytes N")?.parse()?,
            "--calls" => show_calls = true,
            "--fresh" => o.fresh = true,
            "--one-filter" => o.one_filter = true,
            "--disturb-kb" => o.disturb_kb = args.next().ok_or("--disturb-kb N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    run(o, show_calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The profile is of the request that passes every filter doing its whole work: each
    /// filter made host calls, and the facts of each are there (the picker ranked the
    /// endpoint on its engine report instead of leaving it to Envoy).
    #[test]
    fn every_filter_does_its_whole_work_on_the_profiled_request() {
        let p = profile(options(false)).unwrap();
        assert_eq!(p.stages.len(), 8);
        for s in &p.stages {
            assert!(s.calls.total() >= 3, "{}: {:?}", s.name, s.calls);
        }
        let fact = |name: &str| {
            p.published
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(fact("sluice_tenant"), "profile");
        assert_eq!(fact("sluice_route"), "pool-a");
        assert_eq!(fact("sluice_model"), "org/mock-model-8b");
        assert!(fact("sluice_prompt_tokens").parse::<u64>().unwrap() > 300);
        assert_eq!(fact("sluice_completion_tokens"), "16");
        assert!(fact("sluice_endpoint").contains("\"endpoint\":\"127.0.0.1:9001\""));
        assert!(
            fact("sluice_cache").contains("bypass"),
            "{}",
            fact("sluice_cache")
        );
        let picker = p.stages.last().unwrap();
        assert!(picker.calls.by_kind.get("set_header") == Some(&3));
    }

    fn options(one_filter: bool) -> Options {
        Options {
            requests: 3,
            prompt_bytes: 2000,
            disturb_kb: 64,
            fresh: true,
            one_filter,
        }
    }

    /// The six filters after the buffer filter as one `sluice.chain` leave the same facts,
    /// send the same request upstream and the same answer back as the six one by one, and
    /// make the same host calls (in one filter instead of six) but for the reads the chain
    /// answers from what an earlier member read in the same hook: each side's body is
    /// copied in once a request.
    #[test]
    fn the_filters_as_one_do_what_they_do_one_by_one() {
        let apart = profile(options(false)).unwrap();
        let one = profile(options(true)).unwrap();
        assert_eq!(one.stages.len(), 3);
        assert_eq!(one.published, apart.published);
        assert_eq!(one.upstream, apart.upstream);
        assert_eq!(one.answer, apart.answer);
        let calls = |stages: &[Stage]| {
            let mut all = HostCalls::default();
            for s in stages.iter().skip(2) {
                all.merge(s.calls.clone());
            }
            all
        };
        let (one_calls, apart_calls) = (calls(&one.stages), calls(&apart.stages));
        let reads = ["body", "header", "headers", "property"];
        let writes = |c: &HostCalls| {
            let mut w = c.by_kind.clone();
            w.retain(|kind, _| !reads.contains(kind));
            w
        };
        assert_eq!(writes(&one_calls), writes(&apart_calls));
        for kind in reads {
            let n = |c: &HostCalls| c.by_kind.get(kind).copied().unwrap_or(0);
            assert!(n(&one_calls) <= n(&apart_calls), "{kind}: {one_calls:?}");
        }
        // Three requests, a body each way.
        assert_eq!(one_calls.by_kind.get("body"), Some(&6));
        assert!(apart_calls.by_kind.get("body") > Some(&12));
        assert!(one_calls.total() > 100, "{one_calls:?}");
    }
}
