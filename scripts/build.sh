#!/usr/bin/env bash
# Build every filter to wasm (release) at target/wasm/<crate>.wasm, and the native
# binaries (sluice-mock-llm, sluice) at target/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

# The vocabularies of the open-model tokenizers (llama3, qwen2) come from llama.cpp's tree,
# unpacked in the cache where sluice-tokenizer's build.rs finds them (or SLUICE_VOCAB_DIR).
scripts/llama-src.sh >/dev/null

mapfile -t args < <(cargo_packages "${SLUICE_FILTERS[@]}")
cargo build --quiet --target wasm32-wasip1 --profile wasm-release "${args[@]}"
mkdir -p target/wasm
for f in "${SLUICE_FILTERS[@]}"; do
  name=${f//-/_}
  # cp then mv: Envoy never loads a half-written file.
  cp "target/wasm32-wasip1/wasm-release/$name.wasm" "target/wasm/.$name.wasm.tmp"
  mv "target/wasm/.$name.wasm.tmp" "target/wasm/$name.wasm"
done
# All seven in one module (one VM per worker for the chain: the Envoy template's default).
# Its own cargo run: built with the others, their `filter` feature (each module's entry
# point) would be unified into it.
cargo build --quiet --target wasm32-wasip1 --profile wasm-release -p sluice-filters
cp target/wasm32-wasip1/wasm-release/sluice_filters.wasm target/wasm/.sluice_filters.wasm.tmp
mv target/wasm/.sluice_filters.wasm.tmp target/wasm/sluice_filters.wasm
cargo build --quiet --release -p sluice-mock-llm -p sluice-cli -p sluice-ratelimit -p sluice-batch -p sluice-cache
echo "build: $(ls target/wasm/*.wasm | tr '\n' ' ')target/release/sluice-mock-llm target/release/sluice target/release/sluice-ratelimit target/release/sluice-batch target/release/sluice-cache"
