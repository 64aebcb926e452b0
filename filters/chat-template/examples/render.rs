//! Time to render a chat request with a built-in template, natively or compiled to
//! wasm32-wasip1 (run by scripts/bench.sh in V8 through Node's WASI). Prints `key=value`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use sluice_chat_template::{builtin, messages, ChatInput, ChatTemplate};
use std::time::Instant;

fn main() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let chat = json!({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there! What is the weather in Paris today?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "Thanks, and tomorrow?"}]});
    for name in ["llama-3.1", "qwen-2.5", "qwen-3"] {
        let Some(src) = builtin(name) else {
            println!("{name}=not_built_in");
            continue;
        };
        let t = Instant::now();
        let tmpl = ChatTemplate::new(src, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        println!("{name}_compile_us={:.0}", t.elapsed().as_secs_f64() * 1e6);
        for (case, with_tools) in [("chat", false), ("tools", true)] {
            let input = ChatInput {
                messages: messages::from_openai_chat(&chat).0,
                tools: with_tools.then_some(&tools),
                defaults: None,
                kwargs: None,
                now_unix_secs: 1_796_083_200,
            };
            let n = 2000;
            let t = Instant::now();
            let mut bytes = 0;
            for _ in 0..n {
                bytes += tmpl.render(std::hint::black_box(&input)).unwrap().len();
            }
            assert!(bytes > 0);
            println!(
                "{name}_{case}_render_us={:.1}",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
