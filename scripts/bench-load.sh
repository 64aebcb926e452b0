#!/usr/bin/env bash
# Envoy's CPU a request under load, layer by layer: what a throughput target is made of.
# Each Envoy (--concurrency 2) gets wrk at BENCH_CONNECTIONS in turn, BENCH_ROUNDS rounds of
# BENCH_SECONDS; its CPU over the run (utime + stime of all its threads, /proc/PID/stat)
# divided by the requests it answered. The rows: bare Envoy; one and three wasm filters
# that do nothing (the wasm build has three: key-auth, rate-limit admission and the chain
# after the buffer); one filter making the 72 host calls the chain made a request before
# reads were kept for a hook (the probe's `chain` mode: no work, holding both sides as the
# body filters do); the chain as the template runs it, in V8 and natively. Medians of the
# rounds. With BENCH_PERF=1, a perf profile of the V8 chain under load split by where the
# CPU went (needs perf). With BENCH_LAYOUTS=1, instead: the native chain with the filters
# after the buffer as one Envoy filter against each its own, two Envoys of each (two Envoys
# of one build differ under load by as much as the layouts might).
#
#     scripts/bench-load.sh
#     BENCH_LAYOUTS=1 BENCH_ROUNDS=5 BENCH_SECONDS=5 scripts/bench-load.sh
#
# Environment: BENCH_ROUNDS (3), BENCH_SECONDS (6), BENCH_CONNECTIONS (32),
# BENCH_ENVOY_CONCURRENCY (2), BENCH_PROMPT_BYTES (2000), BENCH_PERF (0), BENCH_LAYOUTS (0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_PER_RUN=${BENCH_SECONDS:-6}
CONNS=${BENCH_CONNECTIONS:-32}
ENVOY_CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}

build_bench_envoys
. scripts/lib/chain-envoys.sh

declare -A what=(
  [bare]="bare Envoy 1.40"
  [noop1]="one wasm filter that does nothing"
  [noop3]="three (the wasm build's number of filters)"
  [calls]="one filter making the chain's 72 host calls"
  [one]="the chain in V8 (the template's default)"
  [native_one]="the chain natively (dynamic module)"
  [apart_a]="natively, each filter its own: Envoy A"
  [one_a]="natively, as one filter: Envoy A"
  [apart_b]="natively, each filter its own: Envoy B"
  [one_b]="natively, as one filter: Envoy B"
)
if [ "${BENCH_LAYOUTS:-0}" = 1 ]; then
  for e in a b; do
    NATIVE=true start_envoy "apart_$e" sluice.rate_limit.tokens "$PLAIN_POOL"
    NATIVE=true ONE_FILTER=true start_envoy "one_$e" sluice.chain "$PLAIN_POOL"
  done
  ROWS=(apart_a one_a apart_b one_b)
else
  start_envoy bare none "$PLAIN_POOL"
  start_envoy noop1 noop:1 "$PLAIN_POOL"
  start_envoy noop3 noop:3 "$PLAIN_POOL"
  start_envoy calls probe:chain:1 "$PLAIN_POOL"
  ONE_FILTER=true start_envoy one sluice.chain "$PLAIN_POOL"
  NATIVE=true ONE_FILTER=true start_envoy native_one sluice.chain "$PLAIN_POOL"
  ROWS=(bare noop1 noop3 calls one native_one)
fi
"$PY" scripts/lib/chat-body.py "$work/body.json" "${BENCH_PROMPT_BYTES:-2000}"
export BENCH_BODY=$work/body.json BENCH_KEY=$KEY BENCH_FRESH=0

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A rps cpu
for _ in $(seq "$ROUNDS"); do
  for name in "${ROWS[@]}"; do
    port_var=PORT_$name pid_var=PID_$name
    url="http://127.0.0.1:${!port_var}/v1/chat/completions"
    wrk -t1 -c"$CONNS" -d1s -s scripts/lib/post.lua "$url" >/dev/null
    before=$(cpu_ticks "${!pid_var}")
    out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" -s scripts/lib/post.lua "$url")
    after=$(cpu_ticks "${!pid_var}")
    if grep -q "Non-2xx" <<<"$out"; then
      echo "bench-load: $name answered non-2xx" >&2
      exit 1
    fi
    read -r r us < <(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" '
      /requests in/ { n = $1 } /Requests\/sec/ { r = $2 }
      END { printf "%.0f %.1f\n", r, t / hz * 1e6 / n }' <<<"$out")
    rps[$name]+="$r " cpu[$name]+="$us "
  done
done
echo "bench-load: $(stat -c %s "$work/body.json")-byte chat, wrk at $CONNS connections, $ROUNDS rounds of" \
  "$SECONDS_PER_RUN s (medians); Envoy --concurrency $ENVOY_CONCURRENCY, its CPU over the run a request"
printf '| %-44s | %10s | %14s |\n' row "req/s" "Envoy CPU/req"
printf '|%s|%s|%s|\n' "----------------------------------------------" "------------" "----------------"
for name in "${ROWS[@]}"; do
  rps[$name]=$(median <<<"${rps[$name]}") cpu[$name]=$(median <<<"${cpu[$name]}")
  printf '| %-44s | %10.0f | %11.1f us |\n' "${what[$name]}" "${rps[$name]}" "${cpu[$name]}"
done
[ "${BENCH_LAYOUTS:-0}" = 1 ] && exit 0
awk -v b="${cpu[bare]}" -v n1="${cpu[noop1]}" -v n3="${cpu[noop3]}" -v c="${cpu[calls]}" \
  -v o="${cpu[one]}" -v nat="${cpu[native_one]}" -v rb="${rps[bare]}" -v ro="${rps[one]}" \
  -v rn="${rps[native_one]}" 'BEGIN {
  printf "the V8 chain over bare Envoy, %+.0f us a request: the first filter %+.0f, two more %+.0f,", o - b, n1 - b, n3 - n1
  printf " 72 host calls %+.0f (no work), the rest (the filters'"'"' work in V8, Envoy'"'"'s side of it) %+.0f\n", c - n1, o - n3 - (c - n1)
  printf "throughput: the V8 chain %.0f%% of bare Envoy'"'"'s, natively %.0f%% (natively %+.0f us a request over bare)\n", 100 * ro / rb, 100 * rn / rb, nat - b }'

if [ "${BENCH_PERF:-0}" != 0 ]; then
  command -v perf >/dev/null || { echo "bench-load: BENCH_PERF=1 needs perf" >&2; exit 1; }
  url="http://127.0.0.1:$PORT_one/v1/chat/completions"
  wrk -t1 -c"$CONNS" -d"$((SECONDS_PER_RUN + 2))s" -s scripts/lib/post.lua "$url" >/dev/null &
  wrk_pid=$!
  sleep 1
  perf record -q -F 999 -g -p "$PID_one" -o "$work/perf.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null
  wait "$wrk_pid" || true
  perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null >"$work/perf.txt" || true
  echo
  echo "where the V8 chain's Envoy CPU went under load (perf, self time):"
  "$PY" scripts/lib/perf-split.py "$work/perf.txt"
fi
