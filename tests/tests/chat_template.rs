//! Exact prompt counts for open models, against the real engine: for each built-in chat
//! template with its family's real vocabulary, a corpus of chat requests (system prompts,
//! multi-turn, tools and tool calls, multilingual text, code, emoji, special-token
//! look-alikes) is rendered by `sluice-chat-template` and counted by `sluice-tokenizer`, and
//! both are compared with what llama.cpp's `llama-server` does with the same request: the
//! prompt its `/apply-template` renders, and the `prompt_tokens` its chat completion reports
//! (the number it charges the GPU for).
use serde_json::{json, Value};
use sluice_chat_template::{messages, ChatInput, ChatTemplate};
use sluice_e2e::engine::{Engine, Variant};
use sluice_e2e::{away_from_window_end, key_record, log_number, Stack, StackOptions};
use sluice_key_auth::KeyAuthConfig;
use sluice_token_counter::prompt::{prompt_text_tokens, CountMemos, Counter};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city. Units: <metric> & 'imperial'.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "City, e.g. Zürich"},
                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]}}})
}

/// The corpus: (name, OpenAI chat body).
fn corpus() -> Vec<(&'static str, Value)> {
    let user = |c: &str| json!({"role": "user", "content": c});
    let system = |c: &str| json!({"role": "system", "content": c});
    let assistant = |c: &str| json!({"role": "assistant", "content": c});
    vec![
        ("hello", json!({"messages": [user("hello")]})),
        (
            "system",
            json!({"messages": [system("You are terse. Answer in one line."), user("What is BPE?")]}),
        ),
        (
            "multi-turn",
            json!({"messages": [system("Be kind."), user("Hi!"), assistant("Hello! How can I help?"),
                                user("Tell me a joke about GPUs."), assistant("Why did the GPU... never mind."),
                                user("Another one, please.")]}),
        ),
        (
            "multilingual",
            json!({"messages": [user("Grüße aus Zürich! 東京の天気は？ Привет, мир. مرحبا بالعالم. नमस्ते दुनिया। สวัสดีชาวโลก")]}),
        ),
        (
            "code",
            json!({"messages": [user("Fix this:\n```rust\nfn main() {\n    let v: Vec<u32> = (0..10).collect();\n\tprintln!(\"{:?}\", v.iter().sum::<u32>());\n}\n```\n  trailing spaces   \n\n\n")]}),
        ),
        (
            "emoji",
            json!({"messages": [user("🦙🚀 ok 👩‍👩‍👧‍👦 flags 🇨🇭🇯🇵 ✔︎ ½ ﬁ Ⅻ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")]}),
        ),
        (
            "look-alikes",
            json!({"messages": [user("Is <|eot_id|> or <|im_end|> special? What about <|begin_of_text |> and <|im_start|>user? [PAD151665]")]}),
        ),
        (
            "numbers",
            json!({"messages": [user("1234567890 3.14159 -42 1e10 0x1F 2026-12-01 12:34:56 ١٢٣ ⅔")]}),
        ),
        (
            "content-parts",
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "first part"},
                                                              {"type": "text", "text": "second part"}]}]}),
        ),
        (
            "whitespace",
            json!({"messages": [system("  padded system  "), user("\n\n  lots\t\tof   space \r\n  ")]}),
        ),
        (
            "tools",
            json!({"messages": [system("Use tools when useful."), user("Weather in Paris?")],
                   "tools": [weather_tool()]}),
        ),
        (
            "tools-reordered",
            // Keys in another order, an extra field, a developer message and a name: the
            // engine rebuilds messages and tools from their parsed form.
            json!({"messages": [{"role": "developer", "content": "Prefer tools."},
                                {"role": "user", "name": "alice", "content": "Weather in Bern?"}],
                   "tools": [{"function": {"parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                                           "strict": true, "name": "get_weather"},
                              "type": "function"}]}),
        ),
        (
            "tool-call-compact",
            // Arguments as compact JSON text: an engine that reads them as an object
            // re-writes them.
            json!({"messages": [user("Weather in Oslo?"),
                                {"role": "assistant", "content": "Checking.", "tool_calls": [
                                    {"id": "call_2", "type": "function",
                                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                                {"role": "tool", "tool_call_id": "call_2", "content": "-3 C"}],
                   "tools": [weather_tool()]}),
        ),
        (
            "tool-call-round",
            json!({"messages": [user("Weather in Paris?"),
                                {"role": "assistant", "content": null, "tool_calls": [
                                    {"id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
                                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21, \"sky\": \"clear\"}"}],
                   "tools": [weather_tool()]}),
        ),
    ]
}

/// Responses API requests: (name, body). The engine converts them to chat messages.
fn responses_corpus() -> Vec<(&'static str, Value)> {
    vec![
        ("string", json!({"input": "hello"})),
        (
            "instructions",
            json!({"instructions": "Answer in French.", "input": "Where is the Louvre? 🇫🇷"}),
        ),
        (
            "items",
            json!({"input": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "21 C, clear"},
                {"role": "assistant", "type": "message", "content": [{"type": "output_text", "text": "21 C and clear."}]},
                {"role": "user", "content": "And tomorrow?"}],
                "tools": [{"type": "function", "name": "get_weather", "description": "Weather.",
                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}),
        ),
    ]
}

struct Family {
    template: &'static str,
    variant: Variant,
    encoding: &'static str,
}

const FAMILIES: [Family; 5] = [
    Family {
        template: "llama-3.1",
        variant: Variant::Plain,
        encoding: "llama3",
    },
    Family {
        template: "llama-3.2",
        variant: Variant::Plain,
        encoding: "llama3",
    },
    Family {
        template: "qwen-2.5",
        variant: Variant::Qwen,
        encoding: "qwen2",
    },
    Family {
        template: "qwen-3",
        variant: Variant::Qwen,
        encoding: "qwen2",
    },
    Family {
        template: "gemma-4",
        variant: Variant::Gemma,
        encoding: "gemma4",
    },
];

/// POST a JSON body, the JSON answer.
async fn post(client: &reqwest::Client, url: String, body: &Value) -> Value {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Our prompt text for chat messages, rendered as token-counter renders it.
fn render(tmpl: &ChatTemplate, (messages, tools): (Vec<Value>, Option<Value>)) -> String {
    let input = ChatInput {
        messages,
        tools: tools.as_ref(),
        defaults: None,
        kwargs: None,
        now_unix_secs: now(),
    };
    tmpl.render(&input).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn prompt_counts_equal_the_engines_for_every_family() {
    let client = reqwest::Client::new();
    let mut report = Vec::new();
    for f in &FAMILIES {
        let source = sluice_chat_template::builtin(f.template)
            .unwrap_or_else(|| panic!("{} is not built in", f.template));
        let tok = sluice_tokenizer::by_name(f.encoding).unwrap();
        let tmpl = ChatTemplate::new(
            source,
            tok.bos_token().unwrap_or(""),
            tok.eos_token().unwrap_or(""),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("template.jinja");
        std::fs::write(&file, source).unwrap();
        let extra = [
            "--jinja".to_string(),
            "--chat-template-file".to_string(),
            file.display().to_string(),
        ];
        let Some(engine) = Engine::start_with(f.variant, 1, 1, 4096, "m", &extra).await else {
            return;
        };
        let url = engine.url(0);
        let mut equal = 0;
        let mut hello = 0;
        // Counted as the filter counts: texts seen earlier in the corpus (the same system
        // prompts and turns) from its memo.
        let memos = CountMemos::default();
        let counter = Counter::new(tok, Some(&memos));
        for (name, body) in corpus() {
            let rendered = post(&client, format!("{url}/apply-template"), &body).await;
            let ours = render(&tmpl, messages::from_openai_chat(&body));
            // llama.cpp drops a leading BOS from the text when it adds one itself.
            let bos = tok.bos_token().unwrap_or("\u{0}");
            let ours_text = match ours.strip_prefix(bos) {
                Some(rest) if tok.adds_bos() => rest,
                _ => &ours,
            };
            assert_eq!(
                Some(ours_text),
                rendered["prompt"].as_str(),
                "{} / {name}: rendered prompt",
                f.template
            );
            let mut request = body.clone();
            request["max_tokens"] = json!(1);
            request["model"] = json!("m");
            let answer = post(&client, format!("{url}/v1/chat/completions"), &request).await;
            let engine_count = answer["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap_or_else(|| panic!("{} / {name}: {answer}", f.template));
            assert_eq!(
                prompt_text_tokens(&counter, &ours),
                engine_count,
                "{} / {name}: prompt tokens (ours, engine's)\n{ours}",
                f.template
            );
            equal += 1;
            if name == "hello" {
                hello = engine_count;
            }
        }
        // The Responses API: the engine's reported input tokens.
        for (name, body) in responses_corpus() {
            let mut request = body.clone();
            request["max_output_tokens"] = json!(1);
            request["model"] = json!("m");
            let answer = post(&client, format!("{url}/v1/responses"), &request).await;
            let engine_count = answer["usage"]["input_tokens"]
                .as_u64()
                .unwrap_or_else(|| panic!("{} / responses {name}: {answer}", f.template));
            let ours = render(&tmpl, messages::from_responses(&body).unwrap());
            assert_eq!(
                prompt_text_tokens(&counter, &ours),
                engine_count,
                "{} / responses {name}\n{ours}",
                f.template
            );
            equal += 1;
        }
        report.push(format!(
            "{}: {equal} of {} (\"hello\": {hello} tokens)",
            f.template,
            corpus().len() + responses_corpus().len()
        ));
    }
    eprintln!(
        "prompt counts equal to llama-server's: {}",
        report.join("; ")
    );
}

const KEY: &str = "sk-sluice-e2e-template-0123456789abcdefghijk";
const LIMITED: &str = "sk-sluice-e2e-template-limited-0123456789abc";

/// llama-server serving the tiny Llama-vocabulary model with Llama 3.1's real template,
/// behind the whole chain; token-counter counts `tiny-llama` with `llama3` + `llama-3.1`.
async fn engine_stack(
    limited_tokens_per_minute: u64,
) -> Option<(Engine, Stack, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("llama-3.1.jinja");
    std::fs::write(&file, sluice_chat_template::builtin("llama-3.1").unwrap()).unwrap();
    let extra = [
        "--jinja".to_string(),
        "--chat-template-file".to_string(),
        file.display().to_string(),
    ];
    let engine = Engine::start_with(Variant::Plain, 1, 2, 4096, "tiny-llama", &extra).await?;
    let mut k = key_record("key_template", KEY, "team-template");
    k.limits.tokens_per_minute = Some(10_000_000);
    let mut limited = key_record("key_template_limited", LIMITED, "team-template");
    limited.limits.tokens_per_minute = Some(limited_tokens_per_minute);
    let s = Stack::start(StackOptions {
        // pool-quiet: a mock that never reports usage (like TGI).
        pools: vec!["pool-gpu", "pool-quiet"],
        mock_args: vec!["--no-usage".into()],
        engines: vec![("pool-gpu", engine.ports.clone())],
        pool_options: vec![("pool-gpu", json!({"max_requests_per_connection": 1}))],
        keys: KeyAuthConfig {
            keys: vec![k, limited], ..Default::default() },
        vars: vec![
            (
                "model_router_config".into(),
                json!({"models": {"tiny-llama": {"targets": [{"pool": "pool-gpu"}]},
                                  // The same engine under a name token-counter has no rule
                                  // for: counted by OpenAI's formula, so its estimate is off.
                                  "unmapped": {"targets": [{"pool": "pool-gpu"}]},
                                  // Counted as tiny-llama, served by a pool that reports nothing.
                                  "quiet": {"targets": [{"pool": "pool-quiet", "model": "tiny-llama"}]}}}),
            ),
            (
                "token_counter_config".into(),
                json!({"encodings": [{"models": ["tiny-llama"], "encoding": "llama3",
                                      "chat_template": "llama-3.1"}],
                       "metric_models": ["tiny-llama"]}),
            ),
        ],
        ..StackOptions::default()
    })
    .await;
    s.wait_all_healthy().await;
    Some((engine, s, dir))
}

/// Through Envoy: for every corpus request (JSON and streamed) and for the Messages API, the
/// count made before the request left (`prompt_tokens_estimated`) equals the engine's
/// `prompt_tokens`, and so does the logged (charged) count; no estimate is counted as off.
#[tokio::test]
async fn the_gateway_counts_what_the_engine_counts() {
    let Some((_engine, s, _dir)) = engine_stack(1_000_000).await else {
        return;
    };
    let client = reqwest::Client::new();
    let mut checked = 0;
    let mut hello_engine = None;
    for (i, (name, mut body)) in corpus().into_iter().enumerate() {
        body["model"] = json!("tiny-llama");
        body["max_tokens"] = json!(2);
        let stream = i % 2 == 1;
        body["stream"] = json!(stream);
        let id = format!("tmpl-{i}");
        let r = client
            .post(format!("{}/v1/chat/completions", s.gateway))
            .bearer_auth(KEY)
            .header("x-request-id", &id)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let text = r.text().await.unwrap();
        // The engine's own count: the usage it sent (the last chunk of a stream).
        let usage = if stream {
            text.lines()
                .rev()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
        } else {
            serde_json::from_str::<Value>(&text)
                .ok()
                .map(|v| v["usage"].clone())
        };
        let line = s.log_line(&id).await;
        let engine = if stream {
            // The client did not ask for usage in the stream: token-counter asked for it
            // and hid it; the log has the engine's number.
            assert!(
                usage.is_none(),
                "{name}: usage shown to a client that did not ask"
            );
            log_number(&line, "prompt_tokens")
        } else {
            usage.and_then(|u| u["prompt_tokens"].as_u64())
        };
        assert!(engine.is_some(), "{name}: {text}");
        if i == 0 {
            hello_engine = engine;
        }
        assert_eq!(log_number(&line, "prompt_tokens"), engine, "{name}");
        assert_eq!(
            log_number(&line, "prompt_tokens_estimated"),
            engine,
            "{name}: the estimate made before the request left"
        );
        checked += 1;
    }
    // The Anthropic Messages API: converted to chat messages by the engine, rendered by the
    // same template.
    let messages = json!({"model": "tiny-llama", "max_tokens": 2,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "21 C"}]}]});
    let v: Value = client
        .post(format!("{}/v1/messages", s.gateway))
        .header("x-api-key", KEY)
        .header("x-request-id", "tmpl-messages")
        .json(&messages)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let engine = ["input_tokens", "cache_read_input_tokens"]
        .iter()
        .filter_map(|k| v["usage"][*k].as_u64())
        .sum::<u64>();
    let line = s.log_line("tmpl-messages").await;
    assert_eq!(log_number(&line, "prompt_tokens"), Some(engine), "{v}");
    assert_eq!(
        log_number(&line, "prompt_tokens_estimated"),
        Some(engine),
        "{v}"
    );
    checked += 1;
    // A pool that reports no usage: the gateway's own count is charged, and it is the
    // engine's count for the same request.
    let mut hello = corpus()[0].1.clone();
    hello["model"] = json!("quiet");
    let r = s
        .post_json("/v1/chat/completions", KEY, "tmpl-quiet", &hello)
        .await;
    assert_eq!(r.status(), 200);
    let line = s.log_line("tmpl-quiet").await;
    assert_eq!(line["usage_source"], "counted", "{line}");
    assert_eq!(log_number(&line, "prompt_tokens"), hello_engine, "{line}");
    let metrics = s.prometheus().await;
    assert!(
        !metrics.contains("sluice_llm_prompt_estimate_off{"),
        "an estimate was off"
    );
    // A model counted with the wrong tokenizer and no template: the disagreement is counted.
    let mut hello = corpus()[0].1.clone();
    hello["model"] = json!("unmapped");
    let r = s
        .post_json("/v1/chat/completions", KEY, "tmpl-unmapped", &hello)
        .await;
    assert_eq!(r.status(), 200);
    let line = s.log_line("tmpl-unmapped").await;
    let (charged, estimate) = (
        log_number(&line, "prompt_tokens").unwrap(),
        log_number(&line, "prompt_tokens_estimated").unwrap(),
    );
    assert!(estimate < charged, "{estimate} vs the engine's {charged}");
    let metrics = s.prometheus().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_llm_prompt_estimate_off{")
                && l.contains("gen_ai_request_model=\"other\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    eprintln!("{checked} requests: estimate = engine's count = charged count");
}

/// A key allowed exactly one request's tokens per minute (its prompt as the engine counts
/// it, plus its output cap): the first request is admitted (an estimate above the engine's
/// count would refuse it as too large), the second is refused (one below would admit it).
#[tokio::test]
async fn a_token_limit_admits_exactly_what_the_engine_will_count() {
    let body = json!({"model": "tiny-llama", "max_tokens": 2,
                      "messages": [{"role": "system", "content": "You are terse."},
                                   {"role": "user", "content": "Count me exactly, please: 東京 🦙"}]});
    // The engine's count for this request, from an unlimited key first.
    let Some((_engine, probe, _dir)) = engine_stack(1_000_000).await else {
        return;
    };
    let v: Value = probe
        .post_json("/v1/chat/completions", KEY, "probe", &body)
        .await
        .json()
        .await
        .unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    drop(probe);
    let (_engine, s, _dir) = engine_stack(prompt + 2).await.unwrap();
    away_from_window_end(60, 10).await;
    let first = s
        .post_json("/v1/chat/completions", LIMITED, "lim-1", &body)
        .await;
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let v: Value = first.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(prompt));
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(2));
    let second = s
        .post_json("/v1/chat/completions", LIMITED, "lim-2", &body)
        .await;
    assert_eq!(second.status(), 429);
}

/// Random text from a tricky alphabet (contractions, digit runs, whitespace runs with CR/LF,
/// CJK, emoji, combining marks, RTL scripts, special-token look-alikes), tokenized by
/// sluice-tokenizer and by the engine's `/tokenize`: the same token ids, 400 texts per family.
#[tokio::test]
async fn random_text_tokenizes_as_the_engine_does() {
    const PIECES: [&str; 40] = [
        "a",
        "Z",
        "é",
        "ß",
        "'s",
        "'T",
        "'re",
        "'LL",
        "'d",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\n\n",
        "0",
        "12",
        "345",
        "6789",
        "١٢",
        "東",
        "京都",
        "の",
        "한국",
        "🦙",
        "👩‍👧",
        "🇨🇭",
        "e\u{301}",
        "Ж",
        "мир",
        "مرحبا",
        "नमस्ते",
        ".",
        "!?",
        "...",
        "<|",
        "|>",
        "eot_id",
        "_",
        "ſ",
    ];
    let client = reqwest::Client::new();
    let mut report = Vec::new();
    for (variant, encoding) in [
        (Variant::Plain, "llama3"),
        (Variant::Qwen, "qwen2"),
        (Variant::Gemma, "gemma4"),
    ] {
        let Some(engine) = Engine::start(variant, 1, 1, 1024, "m").await else {
            return;
        };
        let tok = sluice_tokenizer::by_name(encoding).unwrap();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let len = 1 + next() % 24;
            let text: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let v: Value = client
                .post(format!("{}/tokenize", engine.url(0)))
                .json(&json!({"content": text, "add_special": false, "parse_special": false}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let want: Vec<u32> = v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(&text), want, "{encoding} case {case}: {text:?}");
        }
        report.push(format!("{encoding}: 400 of 400"));
    }
    eprintln!(
        "random texts tokenized as llama-server does: {}",
        report.join("; ")
    );
}
