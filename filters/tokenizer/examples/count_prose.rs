//! Counts the benchmarks' chat prompt (scripts/lib/chat-body.py's prose, about 1.9 KB) N
//! times, each with its number in front as `scripts/bench-chain.sh`'s fresh rows send it, so
//! that a profiler can count the tokenizer's instructions a prompt (deterministic, unlike
//! time on a shared machine):
//!
//! ```text
//! cargo build --release -p sluice-tokenizer --example count_prose
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/count_prose 300 llama3     # Ir / 300 = a prompt's count
//! ```
//!
//! Arguments: N (300), the encoding (o200k_base; any of `sluice_tokenizer::ENCODINGS`),
//! and `json` to count a number-heavy JSON text of about the same size instead of prose.

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let name = args.next().unwrap_or_else(|| "o200k_base".to_string());
    let Some(tokenizer) = sluice_tokenizer::by_name(&name) else {
        eprintln!("count_prose: no encoding {name}");
        std::process::exit(2);
    };
    let unit = match args.next().as_deref() {
        Some("json") => {
            "{\"id\": 12345, \"values\": [3.14159, 2.71828, 1024, 65536], \"date\": \"2026-12-04\"}\n"
        }
        _ => "You are a helpful assistant for a GPU inference platform. ",
    };
    let prose = unit.repeat(1900 / unit.len() + 1);
    let prose = prose.get(..1900).unwrap_or(&prose);
    let mut tokens = 0;
    for i in 0..n {
        tokens += tokenizer.count(std::hint::black_box(&format!("{i} {prose}")));
    }
    println!(
        "{name}: {n} prompts of {} bytes after their number, {tokens} tokens",
        prose.len()
    );
}
