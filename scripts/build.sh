#!/usr/bin/env bash
# Build every filter to wasm (release) at target/wasm/<crate>.wasm, and the native
# binaries (sluice-mock-llm, sluice) at target/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

# The vocabularies of the open-model tokenizers (llama3, qwen2) come from llama.cpp's tree,
# unpacked in the cache where sluice-tokenizer's build.rs finds them (or SLUICE_VOCAB_DIR).
scripts/llama-src.sh >/dev/null

# optimize_wasm NAME: cargo's target/wasm32-wasip1/wasm-release/NAME.wasm, run through
# binaryen's wasm-opt -O3, at target/wasm/NAME.wasm. Binaryen's passes work on the wasm
# itself after LLVM (locals, control flow, inlining, as V8 will compile them): the code
# section 17% smaller, the data segments' zero runs dropped, and the chain costs V8 less CPU
# a request (docs/benchmarks.md, "wasm-opt after rustc"). Only when cargo's output is
# newer than ours: 20 s for the 34 MB one-module build. The features are those rustc's
# wasm32-wasip1 output uses; wasm-opt refuses a module that uses any other, so a new one
# shows up here, not in Envoy.
optimize_wasm() {
  local src="target/wasm32-wasip1/wasm-release/$1.wasm" dest="target/wasm/$1.wasm"
  [ -f "$dest" ] && [ "$dest" -nt "$src" ] && return 0
  command -v wasm-opt >/dev/null || { echo "build: no wasm-opt: run scripts/setup.sh (Debian's binaryen)" >&2; exit 1; }
  # To a temporary name, then mv: Envoy never loads a half-written file.
  wasm-opt -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals "$src" -o "target/wasm/.$1.wasm.tmp"
  mv "target/wasm/.$1.wasm.tmp" "$dest"
}

mapfile -t args < <(cargo_packages "${SLUICE_FILTERS[@]}")
cargo build --quiet --target wasm32-wasip1 --profile wasm-release "${args[@]}"
mkdir -p target/wasm
for f in "${SLUICE_FILTERS[@]}"; do
  optimize_wasm "${f//-/_}"
done
# All seven in one module (one VM per worker for the chain: the Envoy template's default).
# Its own cargo run: built with the others, their `filter` feature (each module's entry
# point) would be unified into it.
cargo build --quiet --target wasm32-wasip1 --profile wasm-release -p sluice-filters
optimize_wasm sluice_filters
cargo build --quiet --release -p sluice-mock-llm -p sluice-cli -p sluice-ratelimit -p sluice-batch -p sluice-cache
# The same filters, and the probe plugins, as Envoy dynamic modules (sluice-native: the
# template's native=true, the benchmarks' native rows, the end-to-end tests of it).
cargo build --quiet --release -p sluice-native --example native_probe --example native_filters
echo "build: $(ls target/wasm/*.wasm | tr '\n' ' ')target/release/sluice-mock-llm target/release/sluice target/release/sluice-ratelimit target/release/sluice-batch target/release/sluice-cache target/release/examples/libnative_probe.so target/release/examples/libnative_filters.so"
