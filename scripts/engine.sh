#!/usr/bin/env bash
# Build the real inference engine the end-to-end suite runs against: llama.cpp's C++
# `llama-server`, from the llama.cpp tree vendored in PyPI's llama-cpp-python source
# distribution (scripts/llama-src.sh), and a tiny random-weight model around a real
# vocabulary (tests/engine/make_model.py). Everything is cached outside the clone, so a warm run does not rebuild:
#   ${SLUICE_CACHE:-$HOME/.cache/sluice}/llama.cpp-<version>/
# Prints the cache directory on its last line. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SRC=$(scripts/llama-src.sh | tail -1)
CACHE=$(dirname "$SRC")
say() { printf 'engine: %s\n' "$*" >&2; }

exec 9>"$CACHE/.lock"
flock 9 # two test runs on one machine build once

if ! command -v cmake >/dev/null 2>&1; then
  say "installing cmake (Debian)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi

if [ ! -x "$CACHE/bin/llama-server" ]; then
  say "building llama-server (cmake, $(nproc) jobs; cached after the first run)"
  cmake -S "$CACHE/src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF >"$CACHE/cmake.log" 2>&1 || { tail -30 "$CACHE/cmake.log"; exit 1; }
  cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log"; exit 1; }
  mkdir -p "$CACHE/bin"
  cp "$CACHE/build/bin/llama-server" "$CACHE/bin/llama-server.part"
  mv "$CACHE/bin/llama-server.part" "$CACHE/bin/llama-server"
fi

# Tiny models: gguf-py from the same tree writes them (numpy from the venv), keyed by a hash
# of the script that writes them.
gen=$(sha256sum "$ROOT/tests/engine/make_model.py" | cut -c1-12)
write_model() { # <name> <vocab file> <variant> <family>
  local model="$CACHE/models/$1-$gen.gguf"
  if [ ! -f "$model" ]; then
    if ! "$ROOT/.venv/bin/python" -c "import numpy" 2>/dev/null; then
      say "installing numpy into .venv (gguf-py writes the test models)"
      "$ROOT/.venv/bin/pip" install -q "numpy==2.3.5"
    fi
    say "writing $model"
    mkdir -p "$CACHE/models"
    PYTHONPATH="$CACHE/src/gguf-py" "$ROOT/.venv/bin/python" "$ROOT/tests/engine/make_model.py" \
      --vocab "$CACHE/src/models/$2" --variant "$3" --family "$4" --out "$model.part"
    mv "$model.part" "$model"
  fi
  ln -sf "$model" "$CACHE/models/$1.gguf"
}
write_model tiny-llama-plain ggml-vocab-llama-bpe.gguf plain llama3
write_model tiny-llama-cjk ggml-vocab-llama-bpe.gguf cjk llama3
write_model tiny-qwen-plain ggml-vocab-qwen2.gguf plain qwen2
write_model tiny-gemma-plain ggml-vocab-gemma-4.gguf plain gemma4
echo "$CACHE"
