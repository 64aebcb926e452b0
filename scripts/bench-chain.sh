#!/usr/bin/env bash
# Where the filter chain's cost per request goes: one Envoy per prefix of the chain (bare,
# then key-auth, then + rate-limit admission, + model-router, ...), the same ~2 KB chat sent
# to each in turn on kept-alive connections, and each Envoy's CPU time per request (its
# threads' schedstat) and median latency; the difference between consecutive prefixes is
# what that filter adds. Then throughput (wrk, BENCH_CONNECTIONS) and latency at one
# connection for bare Envoy and the whole chain, side by side, with the same chat and with a
# new prompt every request (rows named _fresh); and with BENCH_PERF=1 a perf
# profile of the whole chain under load split by where the CPU went (the filters' wasm code
# in V8, V8 itself, Envoy's wasm host calls, the rest of Envoy, the kernel). Beside the wasm
# floor rows (no-op filters, the chain's host calls in one probe filter), the same plugins
# as an Envoy dynamic module (sluice-native): what the wasm boundary itself costs.
#
# With BENCH_BASELINE=<git revision>, the whole chain built from that revision (its wasm,
# built once in a worktree under target/baseline/) runs beside this build's in the same
# alternating rounds and wrk rows: a before and after from one run, as the machine drifts.
# A revision whose module has sluice.chain runs it as the template's default does (the
# filters after the buffer as one), against this build's one_picker; an older one each
# filter its own, against picker.
#
# The side by side also has TensorZero (a Rust LLM gateway, with no policies) in front of the
# same mock, as issue 18 compares: the gateway PyPI's `tensorzero` package starts
# (scripts/tensorzero.sh installs it once; BENCH_TENSORZERO=0 leaves the row out).
#
# Environment: BENCH_ROUNDS (2000), BENCH_SECONDS (5), BENCH_WRK_ROUNDS (3), BENCH_CONNECTIONS (32),
# BENCH_ENVOY_CONCURRENCY (2), BENCH_PROMPT_BYTES (2000), BENCH_PERF (0), BENCH_PERF_OUT,
# BENCH_PERF_DATA, BENCH_BASELINE, BENCH_TENSORZERO (1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
ROUNDS=${BENCH_ROUNDS:-2000}
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNECTIONS:-32}
ENVOY_CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}
PROMPT_BYTES=${BENCH_PROMPT_BYTES:-2000}

build_bench_envoys
BASELINE_WASM=""
if [ -n "${BENCH_BASELINE:-}" ]; then
  rev=$(git rev-parse --short "$BENCH_BASELINE")
  BASELINE_WASM=$ROOT/target/baseline/wasm-$rev
  if [ ! -f "$BASELINE_WASM/sluice_endpoint_picker.wasm" ]; then
    tree=$ROOT/target/baseline/tree-$rev
    [ -d "$tree" ] || git worktree add --detach "$tree" "$rev" >/dev/null
    mapfile -t args < <(cargo_packages "${SLUICE_FILTERS[@]}")
    (cd "$tree" && CARGO_TARGET_DIR=$ROOT/target/baseline/build cargo build --quiet \
      --target wasm32-wasip1 --profile wasm-release "${args[@]}")
    mkdir -p "$BASELINE_WASM"
    for f in "${SLUICE_FILTERS[@]}"; do
      cp "$ROOT/target/baseline/build/wasm32-wasip1/wasm-release/${f//-/_}.wasm" "$BASELINE_WASM/"
    done
    if [ -d "$tree/filters/all" ]; then
      (cd "$tree" && CARGO_TARGET_DIR=$ROOT/target/baseline/build cargo build --quiet \
        --target wasm32-wasip1 --profile wasm-release -p sluice-filters)
      cp "$ROOT/target/baseline/build/wasm32-wasip1/wasm-release/sluice_filters.wasm" "$BASELINE_WASM/"
    fi
    git worktree remove --force "$tree"
  fi
fi
. scripts/lib/chain-envoys.sh
TENSORZERO_URL=""
if [ "${BENCH_TENSORZERO:-1}" != 0 ]; then
  tz_python=$(scripts/tensorzero.sh | tail -1) ||
    { echo "bench-chain: TensorZero did not install (BENCH_TENSORZERO=0 leaves its row out)" >&2; exit 1; }
  "$tz_python" scripts/lib/tensorzero-gateway.py "$MOCK_PORT" "$work" >"$work/tensorzero.log" 2>&1 &
  pids+=($!)
  wait_until 30 file_written "$work/tensorzero.url" || { cat "$work/tensorzero.log" >&2; exit 1; }
  TENSORZERO_URL=$(cat "$work/tensorzero.url")
fi

# The prefixes, in chain order: name, the last filter kept, what that filter adds.
STEPS=(
  "bare none bare-Envoy"
  "key_auth sluice.key_auth key-auth"
  "admission sluice.rate_limit.admission rate-limit-admission"
  "router sluice.model_router model-router"
  "pii sluice.pii_redaction pii-redaction"
  "tokens sluice.token_counter token-counter"
  "cache sluice.response_cache response-cache"
  "chain sluice.rate_limit.tokens rate-limit-tokens"
)
# Started first and never measured: in three of five runs by hand, the first Envoy with the
# filters to start spent 40-80 us of CPU a request more than later ones running the same
# build (docs/benchmarks.md, "Comparing two builds"); here it would land on key-auth's row.
start_envoy unmeasured sluice.key_auth "$PLAIN_POOL"
targets=()
for step in "${STEPS[@]}"; do
  read -r name last _ <<<"$step"
  start_envoy "$name" "$last" "$PLAIN_POOL"
  pid_var=PID_$name port_var=PORT_$name
  targets+=("$name:${!port_var}:${!pid_var}")
done
# The floor: bare Envoy with one, and with eight, wasm filters that do nothing in one VM (the
# chain has eight filter instances in one VM); and one filter making the host calls the whole
# chain with endpoint-picker makes a request, by kind and phase, without its work (the probe's
# `chain` mode).
start_envoy noop1 noop:1 "$PLAIN_POOL"
start_envoy noop8 noop:8 "$PLAIN_POOL"
start_envoy calls probe:chain:1 "$PLAIN_POOL"
targets+=("noop1:$PORT_noop1:$PID_noop1" "noop8:$PORT_noop8:$PID_noop8" "calls:$PORT_calls:$PID_calls")
# The same three natively: the same plugins as an Envoy dynamic module (sluice-native's
# native_probe example), no VM. What the wasm boundary itself costs.
start_envoy native1 native_noop:1 "$PLAIN_POOL"
start_envoy native8 native_noop:8 "$PLAIN_POOL"
start_envoy native_calls native_probe:chain:1 "$PLAIN_POOL"
targets+=("native1:$PORT_native1:$PID_native1" "native8:$PORT_native8:$PID_native8"
  "native_calls:$PORT_native_calls:$PID_native_calls")
# The same prefixes as an Envoy dynamic module (sluice-native's native_filters: the same
# filters and configurations, no VM; native_chain is the whole chain), and the whole chain
# with endpoint-picker natively.
for step in "${STEPS[@]:1}" "picker sluice.endpoint_picker endpoint-picker"; do
  read -r name last _ <<<"$step"
  pool=$PLAIN_POOL
  [ "$name" = picker ] && pool=$ENGINE_POOL
  NATIVE=true start_envoy "native_$name" "$last" "$pool"
  pid_var=PID_native_$name port_var=PORT_native_$name
  targets+=("native_$name:${!port_var}:${!pid_var}")
done
# The whole chain on an engine pool: endpoint-picker last.
start_envoy picker sluice.endpoint_picker "$ENGINE_POOL"
targets+=("picker:$PORT_picker:$PID_picker")
# The filters after the buffer filter as one Envoy filter (sluice.chain, the template's
# default), in V8 and natively, without and with endpoint-picker.
ONE_FILTER=true start_envoy one sluice.chain "$PLAIN_POOL"
NATIVE=true ONE_FILTER=true start_envoy native_one sluice.chain "$PLAIN_POOL"
ONE_FILTER=true start_envoy one_picker sluice.chain "$ENGINE_POOL"
NATIVE=true ONE_FILTER=true start_envoy native_one_picker sluice.chain "$ENGINE_POOL"
targets+=("one:$PORT_one:$PID_one" "native_one:$PORT_native_one:$PID_native_one"
  "one_picker:$PORT_one_picker:$PID_one_picker"
  "native_one_picker:$PORT_native_one_picker:$PID_native_one_picker")
# The same chain with a module and a VM per filter (the layout before sluice-filters).
ONE_VM=false start_envoy sepvm sluice.endpoint_picker "$ENGINE_POOL"
targets+=("sepvm:$PORT_sepvm:$PID_sepvm")
BASE_AGAINST=picker
if [ -n "$BASELINE_WASM" ]; then
  base_one_vm=false base_one_filter=false base_last=sluice.endpoint_picker
  [ -f "$BASELINE_WASM/sluice_filters.wasm" ] && base_one_vm=true
  if $base_one_vm && grep -q sluice.chain "$BASELINE_WASM/sluice_filters.wasm"; then
    BASE_AGAINST=one_picker base_one_filter=true base_last=sluice.chain
  fi
  ONE_FILTER=$base_one_filter ONE_VM=$base_one_vm WASM_DIR=$BASELINE_WASM \
    start_envoy baseline "$base_last" "$ENGINE_POOL"
  targets+=("baseline:$PORT_baseline:$PID_baseline")
fi

"$PY" scripts/lib/chat-body.py "$work/body.json" "$PROMPT_BYTES"
"$PY" scripts/lib/chat-body.py "$work/body-tensorzero.json" "$PROMPT_BYTES" tensorzero::model_name::mock
export BENCH_BODY=$work/body.json BENCH_KEY=$KEY

declare -A med cpu
# delta A B: A - B, signed, whole numbers.
delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f", a - b }'; }
while read -r name us cpu_us; do med[$name]=$us; cpu[$name]=$cpu_us; done < <(
  "$PY" scripts/lib/alternate.py "$work/body.json" "$KEY" "$ROUNDS" 200 "${targets[@]}")

echo "bench-chain: $(stat -c %s "$work/body.json")-byte chat, one client sending it to each Envoy" \
  "(--concurrency $ENVOY_CONCURRENCY) in turn, $ROUNDS rounds on kept-alive connections;" \
  "each Envoy's CPU per request (schedstat over the rounds) and median latency"
# prefix_table PREFIX: the table, for the Envoys named PREFIX<step> (bare Envoy first).
prefix_table() {
  local prev="" name key what cpu_adds p50_adds
  printf '| %-22s | %12s | %12s | %12s | %12s |\n' "chain up to" "CPU us/req" "filter adds" "p50 us" "filter adds"
  printf '|%s|%s|%s|%s|%s|\n' "------------------------" "--------------" "--------------" "--------------" "--------------"
  for step in "${STEPS[@]}" "picker sluice.endpoint_picker endpoint-picker"; do
    read -r name _ what <<<"$step"
    key=$1$name
    [ "$name" = bare ] && key=bare
    cpu_adds="" p50_adds=""
    if [ -n "$prev" ]; then
      cpu_adds=$(delta "${cpu[$key]}" "${cpu[$prev]}") p50_adds=$(delta "${med[$key]}" "${med[$prev]}")
    fi
    printf '| %-22s | %12.0f | %12s | %12.0f | %12s |\n' "$what" "${cpu[$key]}" "$cpu_adds" "${med[$key]}" "$p50_adds"
    prev=$key
  done
}
prefix_table ""
for n in 1 8; do
  echo "bare Envoy + $n no-op wasm filter(s): CPU $(delta "${cpu[noop$n]}" "${cpu[bare]}") us/req," \
    "p50 $(delta "${med[noop$n]}" "${med[bare]}") us"
done
echo "one filter making the chain's host calls (72 a request, no work): CPU" \
  "$(delta "${cpu[calls]}" "${cpu[noop1]}") us/req over one no-op filter"
# Where the whole chain's CPU over bare Envoy goes: the first filter, the seven more filter
# instances, the host calls, and what is left (the filters' own code and what Envoy does
# for their pauses and writes).
awk -v bare="${cpu[bare]}" -v n1="${cpu[noop1]}" -v n8="${cpu[noop8]}" -v calls="${cpu[calls]}" \
  -v chain="${cpu[picker]}" 'BEGIN {
  first = n1 - bare; more = n8 - n1; c = calls - n1; rest = chain - bare - first - more - c
  printf "whole chain with endpoint-picker, CPU over bare Envoy %+.0f us/req: first filter %+.0f," \
    " seven more instances %+.0f, host calls %+.0f, the rest (the filters'"'"' work and Envoy'"'"'s side of it) %+.0f\n",
    chain - bare, first, more, c, rest }'
echo "the same natively (an Envoy dynamic module, no VM), over bare Envoy: one no-op filter CPU" \
  "$(delta "${cpu[native1]}" "${cpu[bare]}") us/req (wasm $(delta "${cpu[noop1]}" "${cpu[bare]}"))," \
  "eight $(delta "${cpu[native8]}" "${cpu[bare]}") (wasm $(delta "${cpu[noop8]}" "${cpu[bare]}"))," \
  "the chain's host calls in one filter $(delta "${cpu[native_calls]}" "${cpu[bare]}")" \
  "(wasm $(delta "${cpu[calls]}" "${cpu[bare]}")); p50 of the calls' filter" \
  "$(delta "${med[native_calls]}" "${med[bare]}") us (wasm $(delta "${med[calls]}" "${med[bare]}"))"
printf '| %-22s | %12.0f | %12s | %12.0f | %12s |\n' "same, a VM per filter" "${cpu[sepvm]}" "" "${med[sepvm]}" ""
[ -z "$BASELINE_WASM" ] || printf '| %-22s | %12.0f | %12s | %12.0f | %12s |\n' "same, $BENCH_BASELINE" \
  "${cpu[baseline]}" "" "${med[baseline]}" ""
echo "one VM for the chain (sluice-filters) against a VM per filter: CPU" \
  "$(delta "${cpu[picker]}" "${cpu[sepvm]}") us/req," \
  "p50 $(delta "${med[picker]}" "${med[sepvm]}") us"
if [ -n "$BASELINE_WASM" ]; then
  echo "this build against $BENCH_BASELINE (whole chain with endpoint-picker, $BASE_AGAINST): CPU" \
    "$(delta "${cpu[$BASE_AGAINST]}" "${cpu[baseline]}") us/req," \
    "p50 $(delta "${med[$BASE_AGAINST]}" "${med[baseline]}") us"
fi
echo "whole chain over bare Envoy: CPU $(delta "${cpu[chain]}" "${cpu[bare]}") us/req," \
  "p50 $(delta "${med[chain]}" "${med[bare]}") us"
echo "whole chain natively (dynamic module) over bare Envoy: CPU" \
  "$(delta "${cpu[native_chain]}" "${cpu[bare]}") us/req, p50 $(delta "${med[native_chain]}" "${med[bare]}") us"
echo
echo "the same prefixes natively (an Envoy dynamic module, no VM):"
prefix_table native_
# The six after the buffer as one Envoy filter against each its own, same build.
for pair in "one chain" "native_one native_chain" "one_picker picker" "native_one_picker native_picker"; do
  read -r a b <<<"$pair"
  echo "$a (the filters after the buffer as one Envoy filter) against $b: CPU" \
    "$(delta "${cpu[$a]}" "${cpu[$b]}") us/req, p50 $(delta "${med[$a]}" "${med[$b]}") us"
done

# ---- What one host call costs: a filter making 50 of one kind a request, against the no-op ----
HOST_CALLS=(header headers set_header property set_property shared_get shared_set metric clock body)
probes=("noop1:$PORT_noop1:$PID_noop1")
for call in "${HOST_CALLS[@]}"; do
  start_envoy "probe_$call" "probe:$call:50" "$PLAIN_POOL"
  port_var=PORT_probe_$call pid_var=PID_probe_$call
  probes+=("probe_$call:${!port_var}:${!pid_var}")
done
while read -r name us cpu_us; do med[$name]=$us; cpu[$name]=$cpu_us; done < <(
  "$PY" scripts/lib/alternate.py "$work/body.json" "$KEY" "$ROUNDS" 200 "${probes[@]}")
echo
echo "one host call through the filters' WasmHost, in Envoy (50 a request, CPU against the no-op filter):"
for call in "${HOST_CALLS[@]}"; do
  printf '  %-13s %6.2f us\n' "$call" "$(awk -v a="${cpu[probe_$call]}" -v b="${cpu[noop1]}" 'BEGIN{print (a-b)/50}')"
  pid_var=PID_probe_$call; kill -TERM "${!pid_var}" 2>/dev/null || true
done

# ---- Side by side: throughput at BENCH_CONNECTIONS, latency at 1 ----
wrk_run() { # name port connections -> "rps p50_us p99_us non2xx"; a name ending in _fresh: every prompt new
  local fresh=0 url="http://127.0.0.1:$2/v1/chat/completions" body=$BENCH_BODY
  [[ $1 == *_fresh ]] && fresh=1
  [[ $1 == tensorzero* ]] && url=$TENSORZERO_URL/chat/completions body=$work/body-tensorzero.json
  BENCH_BODY=$body BENCH_FRESH=$fresh wrk -t1 -c"$3" -d1s -s scripts/lib/post.lua "$url" >/dev/null
  BENCH_BODY=$body BENCH_FRESH=$fresh wrk -t1 -c"$3" -d"${SECONDS_PER_RUN}s" --latency -s scripts/lib/post.lua \
    "$url" | "$PY" scripts/lib/wrk_summary.py
}
# Only the Envoys measured here keep running (the others' timers would share the cores).
stop=(unmeasured noop1 noop8 calls native1 native8 native_calls native_picker one_picker native_one_picker)
for step in "${STEPS[@]}"; do
  read -r name _ <<<"$step"
  stop+=("$name")
  [ "$name" = bare ] || stop+=("native_$name")
done
for n in "${stop[@]}"; do
  case $n in bare | chain | native_chain | one | native_one | "$BASE_AGAINST" | "${BENCH_PERF:-}") continue ;; esac
  pid_var=PID_$n
  kill -TERM "${!pid_var}" 2>/dev/null || true
done
sleep 1
echo
WRK_ROUNDS=${BENCH_WRK_ROUNDS:-3}
echo "side by side: wrk, $WRK_ROUNDS interleaved rounds of $SECONDS_PER_RUN s per target (medians);" \
  "throughput at $CONNS connections, latency at 1"
# The same chat every request (what the memos of token-counter and pii-redaction serve), and
# a new prompt every request (_fresh: what they cannot).
rows=(direct:$MOCK_PORT bare:$PORT_bare chain:$PORT_chain native_chain:$PORT_native_chain
  one:$PORT_one native_one:$PORT_native_one
  picker:$PORT_picker sepvm:$PORT_sepvm bare_fresh:$PORT_bare chain_fresh:$PORT_chain
  native_chain_fresh:$PORT_native_chain native_one_fresh:$PORT_native_one)
[ -z "$BASELINE_WASM" ] || rows+=(baseline:$PORT_baseline baseline_fresh:$PORT_baseline)
[ "$BASE_AGAINST" = picker ] || rows+=("$BASE_AGAINST:$PORT_one_picker")
[ -z "$TENSORZERO_URL" ] || rows+=(tensorzero:0 tensorzero_fresh:0)
declare -A rps p50 p99
for round in $(seq "$WRK_ROUNDS"); do
  for t in "${rows[@]}"; do
    name=${t%%:*} port=${t#*:}
    read -r r _ _ e < <(wrk_run "$name" "$port" "$CONNS")
    read -r _ a b e1 < <(wrk_run "$name" "$port" 1)
    [ "$e" = 0 ] && [ "$e1" = 0 ] || { echo "bench-chain: $name answered non-2xx" >&2; exit 1; }
    rps[$name]+="$r " p50[$name]+="$a " p99[$name]+="$b "
  done
done
printf '| %-16s | %10s | %10s | %10s |\n' target "req/s at $CONNS" "p50 at 1" "p99 at 1"
printf '|%s|%s|%s|%s|\n' "------------------" "------------" "------------" "------------"
for t in "${rows[@]}"; do
  name=${t%%:*}
  rps[$name]=$(median <<<"${rps[$name]}") p50[$name]=$(median <<<"${p50[$name]}") p99[$name]=$(median <<<"${p99[$name]}")
  printf '| %-16s | %10.0f | %7.0f us | %7.0f us |\n' "$name" "${rps[$name]}" "${p50[$name]}" "${p99[$name]}"
done
awk -v c="${rps[chain]}" -v b="${rps[bare]}" -v cp="${p50[chain]}" -v bp="${p50[bare]}" \
  -v c9="${p99[chain]}" -v b9="${p99[bare]}" 'BEGIN {
  printf "whole chain: %.0f%% of bare Envoy'"'"'s throughput; p50 %+.0f us, p99 %+.0f us over bare Envoy\n", 100 * c / b, cp - bp, c9 - b9 }'
awk -v c="${rps[chain_fresh]}" -v b="${rps[bare_fresh]}" -v cp="${p50[chain_fresh]}" -v bp="${p50[bare_fresh]}" \
  -v c9="${p99[chain_fresh]}" -v b9="${p99[bare_fresh]}" 'BEGIN {
  printf "whole chain, every prompt new: %.0f%% of bare Envoy'"'"'s throughput; p50 %+.0f us, p99 %+.0f us over bare Envoy\n", 100 * c / b, cp - bp, c9 - b9 }'
awk -v c="${rps[native_chain]}" -v b="${rps[bare]}" -v w="${rps[chain]}" -v cp="${p50[native_chain]}" \
  -v bp="${p50[bare]}" -v c9="${p99[native_chain]}" -v b9="${p99[bare]}" 'BEGIN {
  printf "whole chain natively (dynamic module): %.0f%% of bare Envoy'"'"'s throughput (x%.2f the wasm chain); p50 %+.0f us, p99 %+.0f us over bare Envoy\n", 100 * c / b, c / w, cp - bp, c9 - b9 }'
awk -v c="${rps[native_chain_fresh]}" -v b="${rps[bare_fresh]}" -v cp="${p50[native_chain_fresh]}" -v bp="${p50[bare_fresh]}" 'BEGIN {
  printf "whole chain natively, every prompt new: %.0f%% of bare Envoy'"'"'s throughput; p50 %+.0f us over bare Envoy\n", 100 * c / b, cp - bp }'
if [ -n "$TENSORZERO_URL" ]; then
  awk -v n="${rps[native_chain]}" -v w="${rps[chain]}" -v t="${rps[tensorzero]}" -v nf="${rps[native_chain_fresh]}" \
    -v wf="${rps[chain_fresh]}" -v tf="${rps[tensorzero_fresh]}" -v tp="${p50[tensorzero]}" -v bp="${p50[bare]}" 'BEGIN {
    printf "against TensorZero (no policies; p50 %+.0f us over bare Envoy): the native chain x%.2f its throughput, the wasm chain x%.2f; every prompt new: x%.2f and x%.2f\n", tp - bp, n / t, w / t, nf / tf, wf / tf }'
fi
# The filters after the buffer as one Envoy filter (sluice.chain, the template's default).
awk -v o="${rps[one]}" -v c="${rps[chain]}" -v no="${rps[native_one]}" -v n="${rps[native_chain]}" \
  -v b="${rps[bare]}" -v op="${p50[one]}" -v nop="${p50[native_one]}" -v bp="${p50[bare]}" \
  -v o9="${p99[one]}" -v no9="${p99[native_one]}" -v b9="${p99[bare]}" 'BEGIN {
  printf "as one Envoy filter: in V8 %.0f%% of bare Envoy'"'"'s throughput (x%.2f each its own), p50 %+.0f us, p99 %+.0f us over bare; natively %.0f%% (x%.2f), p50 %+.0f us, p99 %+.0f us\n", 100 * o / b, o / c, op - bp, o9 - b9, 100 * no / b, no / n, nop - bp, no9 - b9 }'
awk -v c="${rps[native_one_fresh]}" -v b="${rps[bare_fresh]}" -v cp="${p50[native_one_fresh]}" -v bp="${p50[bare_fresh]}" 'BEGIN {
  printf "as one Envoy filter natively, every prompt new: %.0f%% of bare Envoy'"'"'s throughput; p50 %+.0f us over bare Envoy\n", 100 * c / b, cp - bp }'
if [ -n "$TENSORZERO_URL" ]; then
  awk -v n="${rps[native_one]}" -v w="${rps[one]}" -v t="${rps[tensorzero]}" -v nf="${rps[native_one_fresh]}" \
    -v tf="${rps[tensorzero_fresh]}" 'BEGIN {
    printf "as one Envoy filter against TensorZero: natively x%.2f its throughput, in V8 x%.2f; every prompt new, natively x%.2f\n", n / t, w / t, nf / tf }'
fi
awk -v c="${rps[picker]}" -v s="${rps[sepvm]}" -v cp="${p50[picker]}" -v sp="${p50[sepvm]}" 'BEGIN {
  printf "whole chain with endpoint-picker, one VM against a VM per filter: throughput x%.2f, p50 %+.0f us\n", c / s, cp - sp }'
if [ -n "$BASELINE_WASM" ]; then
  awk -v c="${rps[$BASE_AGAINST]}" -v s="${rps[baseline]}" -v cp="${p50[$BASE_AGAINST]}" -v sp="${p50[baseline]}" -v r="$BENCH_BASELINE" -v a="$BASE_AGAINST" 'BEGIN {
    printf "whole chain with endpoint-picker (%s) against %s: throughput x%.2f, p50 %+.0f us\n", a, r, c / s, cp - sp }'
  awk -v c="${rps[$BASE_AGAINST]}" -v s="${rps[baseline_fresh]}" -v b="${rps[bare_fresh]}" -v r="$BENCH_BASELINE" 'BEGIN {
    printf "%s with every prompt new: %.0f%% of bare Envoy'"'"'s throughput (against the chain with the picker, same prompt: %.0f%%)\n", r, 100 * s / b, 100 * c / b }'
fi

# ---- Where the whole chain's CPU goes (perf, BENCH_PERF=1; or BENCH_PERF=<row> for another) ----
if [ "${BENCH_PERF:-0}" != 0 ]; then
  target=chain
  [ "$BENCH_PERF" = 1 ] || target=$BENCH_PERF
  port_var=PORT_$target pid_var=PID_$target
  command -v perf >/dev/null || { echo "bench-chain: BENCH_PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 1; }
  wrk -t1 -c"$CONNS" -d"$((SECONDS_PER_RUN + 2))s" -s scripts/lib/post.lua "http://127.0.0.1:${!port_var}/v1/chat/completions" >/dev/null &
  wrk_pid=$!
  sleep 1
  # BENCH_PERF_DATA=FILE: DWARF call graphs (the stripped Envoy has no frame pointers to
  # walk: a call into Envoy is seen under the module's frame that made it), kept in FILE.
  graph=(-g)
  [ -z "${BENCH_PERF_DATA:-}" ] || graph=(--call-graph dwarf,16384)
  perf record -q -F 999 "${graph[@]}" -p "${!pid_var}" -o "$work/perf.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null
  [ -z "${BENCH_PERF_DATA:-}" ] || cp "$work/perf.data" "$BENCH_PERF_DATA"
  wait "$wrk_pid" || true
  perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null >"$work/perf.txt" || true
  echo
  echo "where the CPU of '$target' went (perf, self time, $CONNS connections):"
  "$PY" scripts/lib/perf-split.py "$work/perf.txt"
  # BENCH_PERF_OUT=FILE keeps the whole report.
  [ -z "${BENCH_PERF_OUT:-}" ] || cp "$work/perf.txt" "$BENCH_PERF_OUT"
fi
