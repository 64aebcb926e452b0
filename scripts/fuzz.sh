#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of what parses untrusted bytes: the request
# views of every API, SSE streams and each API's stream handling, the PII detector and the
# stream redactor (any split equals the whole), the tokenizer, key-auth's credentials.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]    # SECONDS per target (default 60); all targets
#   FUZZ_RUNS=10000000 scripts/fuzz.sh        # a fixed number of executions per target instead
#   FUZZ_FLAGS="-max_len=1024" scripts/fuzz.sh # more libFuzzer flags
#   FUZZ_SANITIZER=none scripts/fuzz.sh       # without AddressSanitizer (default: address)
#
# Installs what it needs once: a nightly toolchain (libFuzzer's instrumentation needs it)
# and cargo-fuzz. The corpus grows in fuzz/corpus/<target> (git-ignored); a crash is saved
# in fuzz/artifacts/<target>/ and fails the run. Prints one line per target:
#   fuzz: <target>: <executions> executions in <s> s, <findings> findings
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request_views sse_streams pii_detect pii_stream tokenizer credentials)
CARGO_FUZZ_VERSION=0.13.2

say() { printf 'fuzz: %s\n' "$*"; }

if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (minimal profile)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

SANITIZER=${FUZZ_SANITIZER:-address}
cd fuzz
cargo +nightly fuzz build -O -s "$SANITIZER"
failed=0
total=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  start=$(date +%s)
  if [ -n "${FUZZ_RUNS:-}" ]; then limit=(-runs="$FUZZ_RUNS"); else limit=(-max_total_time="$SECONDS_PER_TARGET"); fi
  if cargo +nightly fuzz run -O -s "$SANITIZER" "$t" "corpus/$t" -- \
      "${limit[@]}" -rss_limit_mb=2048 -timeout=10 ${FUZZ_FLAGS:-} \
      -print_final_stats=1 >"$log" 2>&1; then
    findings=0
  else
    findings=1
    failed=1
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 || true
  fi
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  total=$((total + runs))
  say "$t: $runs executions in $(( $(date +%s) - start )) s, $findings findings"
  rm -f "$log"
done
say "total: $total executions over ${#TARGETS[@]} targets"
exit $failed
