#!/usr/bin/env sh
# Cargo runner for wasm32-wasip1 (see .cargo/config.toml): the program in V8 via Node's WASI.
exec node --no-warnings "$(dirname "$0")/wasi-run.mjs" "$@"
