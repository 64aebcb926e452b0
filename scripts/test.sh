#!/usr/bin/env bash
# Every test: setup, build, format, lints (native and wasm32), unit tests, end-to-end tests
# against real Envoy and a real engine (llama.cpp's llama-server, built once and cached by
# scripts/engine.sh), a fuzz smoke run of every fuzz target, and the OpenAI and Anthropic
# SDK smoke test against the stack scripts/run.sh starts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
# A clean clone gains nothing from incremental state, and it is half of target/debug.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# Each step says when it began (seconds since the start): where CI's time goes.
step() { printf '\n== %s (at %ss)\n' "$*" "$SECONDS"; }

step setup
scripts/setup.sh
step build
scripts/build.sh

step "cargo fmt --check"
cargo fmt --all --check

step "clippy (native)"
cargo clippy --quiet --workspace --all-targets -- -D warnings
mapfile -t FILTER_CRATES < <(cargo_packages "${SLUICE_WASM_CRATES[@]}")
step "clippy (wasm32-wasip1, filters)"
cargo clippy --quiet --target wasm32-wasip1 "${FILTER_CRATES[@]}" --all-targets -- -D warnings
# The one-module build (linked alone: see scripts/build.sh).
cargo clippy --quiet --target wasm32-wasip1 -p sluice-filters -- -D warnings

step "deployment configs: Istio resources against the CRD schemas, docker-compose"
deploy=$(mktemp -d)
crds=envoy/istio/crds
if [ -d ../shared/istio-crds ]; then
  # The workspace's CRDs are the reference; the vendored copy must match them.
  for f in ../shared/istio-crds/*.yaml; do
    cmp -s "$f" "envoy/istio/crds/$(basename "$f")" || { echo "envoy/istio/crds/$(basename "$f") differs from $f"; exit 1; }
  done
  crds=../shared/istio-crds
fi
for src in oci file; do
  target/release/sluice render envoy/istio/wasmplugins.yaml.j2 -o "$deploy/wasmplugins-$src.yaml" -s "wasm_source=$src"
done
for ctx in GATEWAY SIDECAR_INBOUND; do
  target/release/sluice render envoy/istio/envoyfilters.yaml.j2 -o "$deploy/envoyfilters-$ctx.yaml" -s "context=$ctx"
done
target/release/sluice render envoy/istio/destinationrules.yaml.j2 -o "$deploy/destinationrules.yaml" \
  -s 'pools=[{"name":"pool-small"},{"name":"pool-large","lb":"maglev"},{"name":"pool-ring","lb":"ring_hash"}]'
.venv/bin/python tests/deploy/check_istio_locality.py target/release/sluice "$deploy"
.venv/bin/python tests/deploy/validate_istio.py "$crds" "$deploy"/*.yaml
.venv/bin/python tests/deploy/check_istio_chain.py "$deploy"
scripts/compose.sh --render-only >/dev/null
docker-compose -f docker-compose.yml config -q
.venv/bin/python tests/deploy/check_compose.py "$ROOT" "$ROOT/.venv/bin/envoy"
rm -rf "$deploy"

step "real inference engine: llama.cpp llama-server and tiny models (scripts/engine.sh, cached)"
SLUICE_ENGINE_DIR=$(scripts/engine.sh | tail -1)
export SLUICE_ENGINE_DIR SLUICE_REQUIRE_ENGINE=1

step "unit and end-to-end tests, native and wasm builds (real Envoy: $ROOT/.venv/bin/envoy; real engine: $SLUICE_ENGINE_DIR)"
export ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
# Every test binary runs against the native build (what scripts/run.sh and the compose
# stack load); Istio loads the wasm build (docs/architecture.md, "Two builds"): the --wasm-suite
# suites run once more with each filter in Envoy's V8 (SLUICE_E2E_BUILD=wasm) — the ones
# that exercise what the wasm host does differently: ECDS key rotation, body rewriting,
# callouts from requests and from the root context, its timer and per-VM handoff queues
# (global limits, the cache's shared tier, the picker's scraping and queue). The others
# pass against it too and are left out to keep CI within its time budget. Two binaries at
# a time (SLUICE_TEST_JOBS): most of an end-to-end suite's time is waiting.
.venv/bin/python scripts/lib/test-binaries.py --wasm-suite key_auth --wasm-suite pii \
  --wasm-suite rate_limit_global --wasm-suite response_cache --wasm-suite endpoint_picker
cargo test --quiet --workspace --doc

step "filter unit tests compiled to wasm32-wasip1, run in V8 (Node WASI)"
command -v node >/dev/null || { echo "node is needed to run wasm tests"; exit 1; }
cargo test --quiet --target wasm32-wasip1 --release "${FILTER_CRATES[@]}"

step "fuzz smoke: every cargo-fuzz target for a few seconds (scripts/fuzz.sh)"
# Without AddressSanitizer here: the fuzzed crates forbid unsafe code, a panic is a finding
# with or without it, and its build costs CI about a minute (docs/testing.md, "Where CI's
# time goes"). `scripts/fuzz.sh` alone keeps it.
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none} scripts/fuzz.sh "${SLUICE_FUZZ_SECONDS:-10}"

step "OpenAI and Anthropic SDK smoke test against scripts/run.sh"
state=$(mktemp -d)
# Free ports for the stack, so a developer's running stack is not disturbed.
port=$(free_port); admin=$(free_port); pool=$(free_port 4); rlport=$(free_port); batchport=$(free_port)
cacheport=$(free_port)
SLUICE_PORT=$port SLUICE_ADMIN_PORT=$admin SLUICE_POOL_PORT=$pool SLUICE_RATELIMIT_PORT=$rlport \
  SLUICE_BATCH_PORT=$batchport SLUICE_CACHE_PORT=$cacheport \
  SLUICE_STATE_DIR=$state \
  SLUICE_SKIP_BUILD=1 scripts/run.sh >"$state/run.out" 2>&1 &
run_pid=$!
cleanup() { stop_pids "$run_pid"; wait "$run_pid" 2>/dev/null || true; }
trap cleanup EXIT
up_or_gone() { file_has "$state/run.out" "Sluice is up" || ! kill -0 "$run_pid" 2>/dev/null; }
wait_until 60 up_or_gone || true
file_has "$state/run.out" "Sluice is up" || { cat "$state/run.out"; echo "run.sh did not come up"; exit 1; }
# Use exactly the lines run.sh printed for the user.
eval "$(grep -E '^\s+export OPENAI_' "$state/run.out" | sed 's/^ *//')"
if ! SLUICE_STATE_DIR=$state SLUICE_POOL_PORT=$pool .venv/bin/python tests/sdk/sdk_smoke.py; then
  tail -n 50 "$state"/logs/*.log
  exit 1
fi
