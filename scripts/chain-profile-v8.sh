#!/usr/bin/env bash
# The chain's code as V8 runs it: sluice-chain-profile (the whole chain on a mock host, see
# filters/chain-profile) compiled to wasm32-wasip1 and run in Node's V8, beside the same
# program run natively; then V8's own profile of the wasm run (`node --prof`), the functions
# with the most ticks of their own, names demangled. The mock host runs inside the module
# here (in Envoy it is Envoy), so its share is in both columns.
#
#     scripts/chain-profile-v8.sh [REQUESTS (5000)] [PROMPT_BYTES (2000)] [TOP (40)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${1:-5000}
PROMPT_BYTES=${2:-2000}
TOP=${3:-40}
command -v node >/dev/null || { echo "chain-profile-v8: needs node" >&2; exit 1; }
cargo build --quiet --release -p sluice-chain-profile
cargo build --quiet --release --target wasm32-wasip1 -p sluice-chain-profile
WASM=$ROOT/target/wasm32-wasip1/release/sluice-chain-profile.wasm
target/release/sluice-chain-profile --requests "$REQUESTS" --prompt-bytes "$PROMPT_BYTES"
echo
node --no-warnings scripts/lib/wasi-run.mjs "$WASM" --requests "$REQUESTS" --prompt-bytes "$PROMPT_BYTES"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$out" && node --no-warnings --prof "$ROOT/scripts/lib/wasi-run.mjs" "$WASM" \
  --requests "$((REQUESTS * 4))" --prompt-bytes "$PROMPT_BYTES" >/dev/null)
echo
echo "V8's profile of the wasm run ($((REQUESTS * 4)) requests): the $TOP functions with the most ticks of their own"
node --prof-process "$out"/isolate*.log 2>/dev/null | sed -n '/^ \[JavaScript\]:/,/^$/p' |
  sed -n "3,$((TOP + 2))p" | sed -E 's/JS: \*?//' | c++filt | sed -E 's/::h[0-9a-f]{16}//; s/\[[0-9a-f]{16}\]//g'
