//! Each engine's metrics page, as the engine writes it (llama.cpp's recorded from the
//! llama-server the test suite builds, three requests in two slots; the others in their
//! documented formats), read into the same load.

use super::*;

fn load(engine: Engine, page: &str) -> EngineLoad {
    engine
        .parse(page)
        .unwrap_or_else(|| panic!("{engine:?}: nothing read"))
}

#[test]
fn vllm_both_kv_cache_names_and_loaded_adapters() {
    let v1 = load(
        Engine::Vllm,
        include_str!("../../tests/metrics/vllm-v1.txt"),
    );
    assert_eq!(
        (v1.waiting, v1.running, v1.kv_cache),
        (3.0, 12.0, Some(0.4375))
    );
    // The newest `lora_requests_info` sample names what is loaded now.
    assert_eq!(v1.loras, ["sql-lora", "chat-lora"]);
    let v0 = load(
        Engine::Vllm,
        include_str!("../../tests/metrics/vllm-v0.txt"),
    );
    assert_eq!(
        (v0.waiting, v0.running, v0.kv_cache),
        (0.0, 7.0, Some(0.91))
    );
    assert!(v0.loras.is_empty());
}

#[test]
fn sglang_tgi_and_triton() {
    let s = load(
        Engine::Sglang,
        include_str!("../../tests/metrics/sglang.txt"),
    );
    assert_eq!((s.waiting, s.running, s.kv_cache), (5.0, 20.0, Some(0.62)));
    let t = load(Engine::Tgi, include_str!("../../tests/metrics/tgi.txt"));
    assert_eq!((t.waiting, t.running, t.kv_cache), (4.0, 16.0, None));
    let n = load(
        Engine::Trtllm,
        include_str!("../../tests/metrics/triton-trtllm.txt"),
    );
    assert_eq!((n.waiting, n.running, n.kv_cache), (2.0, 9.0, Some(0.25)));
}

#[test]
fn trtllm_serve_json_uses_the_newest_iteration() {
    let j = load(
        Engine::Trtllm,
        include_str!("../../tests/metrics/trtllm-serve.json"),
    );
    assert_eq!((j.waiting, j.running, j.kv_cache), (3.0, 6.0, Some(0.3)));
}

#[test]
fn llamacpp_current_and_older_servers() {
    let now = load(
        Engine::Llamacpp,
        include_str!("../../tests/metrics/llamacpp.txt"),
    );
    assert_eq!((now.waiting, now.running, now.kv_cache), (1.0, 2.0, None));
    let old = load(
        Engine::Llamacpp,
        include_str!("../../tests/metrics/llamacpp-old.txt"),
    );
    assert_eq!(
        (old.waiting, old.running, old.kv_cache),
        (1.0, 2.0, Some(0.5))
    );
}

#[test]
fn a_page_of_another_engine_or_garbage_reads_as_nothing() {
    let vllm = include_str!("../../tests/metrics/vllm-v1.txt");
    assert_eq!(Engine::Sglang.parse(vllm), None);
    assert_eq!(Engine::Vllm.parse("<html>502 Bad Gateway</html>"), None);
    assert_eq!(Engine::Trtllm.parse("[{\"iter\": 1}]"), None);
    assert_eq!(Engine::Openai.parse(vllm), None);
    assert_eq!(Engine::Vllm.parse(""), None);
}

#[test]
fn label_values_may_hold_commas_quotes_and_spaces() {
    let page = "m{a=\"x, y\",b=\"say \\\"hi\\\"\"} 2\nm{a=\"z\"} 3 1700000000000\nm bad\n";
    let s = samples(page);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].labels, [("a", "x, y"), ("b", "say \\\"hi\\\"")]);
    assert_eq!(sum(&s, "m", None), Some(5.0));
    assert_eq!(sum(&s, "m", Some(("a", "z"))), Some(3.0));
}

#[test]
fn health_and_metrics_paths() {
    assert_eq!(Engine::Vllm.health_path(), "/health");
    assert_eq!(Engine::Openai.health_path(), "/v1/models");
    assert_eq!(Engine::Openai.metrics_path(), None);
    assert_eq!(Engine::Llamacpp.metrics_path(), Some("/metrics"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Any page, for any engine: read without panicking, and what is read is sane.
        #[test]
        fn any_page_is_read_without_panic(page in ".{0,400}", which in 0usize..6) {
            let engine = [Engine::Vllm, Engine::Sglang, Engine::Tgi, Engine::Trtllm,
                          Engine::Llamacpp, Engine::Openai][which];
            if let Some(l) = engine.parse(&page) {
                prop_assert!(l.waiting.is_finite() && l.running.is_finite());
                prop_assert!(l.kv_cache.is_none_or(|k| (0.0..=1.0).contains(&k)));
            }
        }
    }
}
