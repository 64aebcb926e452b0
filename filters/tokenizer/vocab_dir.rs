// Where llama.cpp's vocabularies and chat templates are (its `models/` directory, which
// scripts/llama-src.sh unpacks): `SLUICE_VOCAB_DIR`, else the cache. One copy, included by
// the build scripts of sluice-tokenizer and sluice-chat-template and by their tests.

/// llama.cpp's `models/` directory, if a location is known (it may not exist).
fn vocab_dir() -> Option<std::path::PathBuf> {
    if let Ok(d) = std::env::var("SLUICE_VOCAB_DIR") {
        return Some(d.into());
    }
    let cache = std::env::var("SLUICE_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|_| {
            std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cache/sluice"))
        })
        .ok()?;
    Some(cache.join("llama.cpp-0.3.36/src/models"))
}
