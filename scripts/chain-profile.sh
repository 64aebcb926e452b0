#!/usr/bin/env bash
# Instructions each filter executes per request, natively (deterministic, unlike time on this
# machine): sluice-chain-profile under callgrind, its lifecycle handlers' inclusive costs
# summed per filter (the mock host's share of the calls they make included). Then the
# profile's own table (time, host calls, bytes). Needs valgrind (apt-get install valgrind).
#
#     scripts/chain-profile.sh [REQUESTS (500)] [PROMPT_BYTES (2000)] [--fresh]
#
# --fresh (or any further sluice-chain-profile argument) is passed on: a new prompt each
# request, so that no memo of a text or body seen before answers for it.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-500}
PROMPT_BYTES=${2:-2000}
EXTRA=("${@:3}")
command -v valgrind >/dev/null || { echo "chain-profile: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release -p sluice-chain-profile
out=$(mktemp)
trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" \
  target/release/sluice-chain-profile --requests "$REQUESTS" --prompt-bytes "$PROMPT_BYTES" "${EXTRA[@]}" >/dev/null 2>&1
callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null |
  "${SLUICE_PYTHON:-python3}" scripts/lib/callgrind-split.py "$REQUESTS"
echo
target/release/sluice-chain-profile --requests 5000 --prompt-bytes "$PROMPT_BYTES" "${EXTRA[@]}"
