#!/usr/bin/env bash
# The same POST load (a ~2 KB chat body) direct to the mock backend, through bare Envoy
# (same config, no Sluice wasm filters) and through the Sluice filter chain. Prints
# requests/s and p50/p99 latency for each, and the differences and ratios; then, one
# request at a time, what single filters add, large prompts (pii-redaction and the whole
# chain on a 100 KB prompt, the tokenizer on 512 KB, endpoint-picker on 200 KB), and the
# tokenizer, pii-redaction and sluice-ratelimit outside Envoy.
#
# Numbers on a shared 2-core machine are noisy: compare the rows of one run, not runs.
# The chain is the build scripts/run.sh loads (BENCH_BUILD, default native: the filters as
# an Envoy dynamic module; the compose stack's too); the "wasm" row is the same chain in
# Envoy's V8, as Istio loads it.
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (16), BENCH_THREADS (1),
# BENCH_ENVOY_CONCURRENCY (1), BENCH_BUILD (native or wasm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-16}
THREADS=${BENCH_THREADS:-1}
ENVOY_CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-1}
BUILD=${BENCH_BUILD:-native}
case "$BUILD" in
  native) BUILD_VARS=(-s native=true -s "native_module=$ROOT/target/release/examples/libnative_filters.so") ;;
  wasm) BUILD_VARS=() ;;
  *) echo "bench: BENCH_BUILD must be native or wasm" >&2; exit 1 ;;
esac

scripts/setup.sh >/dev/null
scripts/build.sh >/dev/null
ENVOY="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
SLUICE="$ROOT/target/release/sluice"
scratch_dir

wait_file() { wait_until 30 file_written "$1" || { echo "bench: $1 never appeared" >&2; exit 1; }; }

# The backend: zero delays, so the numbers are the gateway's.
target/release/sluice-mock-llm --listen 127.0.0.1:0 --port-file "$work/mock.port" \
  --name pool-a --reply-tokens 16 >"$work/mock.log" 2>&1 &
pids+=($!)
wait_file "$work/mock.port"
MOCK_PORT=$(cat "$work/mock.port")

# One key for the chain.
mkdir -p "$work/chain/ecds" "$work/bare/ecds" "$work/nopii/ecds" "$work/norouter/ecds" "$work/picker/ecds" \
  "$work/enginecfg/ecds" "$work/wasm/ecds"
"$SLUICE" render envoy/ecds/key-auth.json.j2 -o "$work/chain/ecds/key-auth.json" \
  -s "wasm_dir=$ROOT/target/wasm" "${BUILD_VARS[@]}" -s 'key_auth_config={"keys":[]}'
# The wasm row's key file (its resource names the wasm filter).
"$SLUICE" render envoy/ecds/key-auth.json.j2 -o "$work/wasm/ecds/key-auth.json" \
  -s "wasm_dir=$ROOT/target/wasm" -s 'key_auth_config={"keys":[]}'
WKEY=$(SLUICE_KEY_FILE="$work/wasm/ecds/key-auth.json" "$SLUICE" keys create --tenant bench 2>/dev/null)
KEY=$(SLUICE_KEY_FILE="$work/chain/ecds/key-auth.json" "$SLUICE" keys create --tenant bench 2>/dev/null)
# A key with limits (never reached): measures the rate-limit decisions themselves.
LKEY=$(SLUICE_KEY_FILE="$work/chain/ecds/key-auth.json" "$SLUICE" keys create --tenant bench \
  --rpm 1000000000 --tpm 1000000000000 --max-parallel 1000000 2>/dev/null)

# The global tier: sluice-ratelimit with Redis, for a third Envoy whose key limits are global.
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
RL_PORT=$(free_port)
target/release/sluice-ratelimit --listen "127.0.0.1:$RL_PORT" --redis-timeout-ms 100 \
  --redis "redis://127.0.0.1:$REDIS_PORT" >"$work/ratelimit.log" 2>&1 &
pids+=($!)
wait_until 10 port_busy "$RL_PORT" || true
mkdir -p "$work/global/ecds"
cp "$work/chain/ecds/key-auth.json" "$work/global/ecds/key-auth.json"
cp "$work/chain/ecds/key-auth.json" "$work/nopii/ecds/key-auth.json"
cp "$work/chain/ecds/key-auth.json" "$work/norouter/ecds/key-auth.json"
cp "$work/chain/ecds/key-auth.json" "$work/picker/ecds/key-auth.json"
cp "$work/chain/ecds/key-auth.json" "$work/enginecfg/ecds/key-auth.json"

# The router maps the benchmark's model to pool-a under another upstream name, so every
# request is routed and its body rewritten (the router's full per-request work).
ROUTER_CONFIG='{"models":{"mock-model":{"targets":[{"pool":"pool-a","model":"org/mock-model-8b"}]}}}'
start_envoy() { # name filters [extra -s vars...]; sets PORT_<name>
  local name=$1 filters=$2 port admin
  shift 2
  # The build's filters (the wasm row's are always wasm).
  if [ "$name" != wasm ]; then set -- "${BUILD_VARS[@]}" "$@"; fi
  set -- -s "model_router_config=$ROUTER_CONFIG" "$@"
  port=$(free_port); admin=$(free_port)
  while [ "$admin" = "$port" ]; do admin=$(free_port); done
  "$SLUICE" render envoy/envoy.yaml.j2 -o "$work/$name/envoy.yaml" \
    -s "listen_port=$port" -s "admin_port=$admin" -s "state_dir=$work/$name" \
    -s "pools=[{\"name\":\"pool-a\",\"host\":\"127.0.0.1\",\"port\":$MOCK_PORT}]" -s "filters=$filters" -s "wasm_dir=$ROOT/target/wasm" "$@"
  if [ "${STRIP_PICKER:-}" = 1 ]; then
    # The engine pool's Envoy config (override_host, metrics clusters) without the
    # endpoint-picker filter: splits the picker's cost into the filter's and the config's.
    .venv/bin/python - "$work/$name/envoy.yaml" <<'PY'
import sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
for listener in config["static_resources"]["listeners"]:
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            hcm = f.get("typed_config", {})
            if "http_filters" in hcm:
                hcm["http_filters"] = [h for h in hcm["http_filters"] if h["name"] != "sluice.endpoint_picker"]
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY
  fi
  "$ENVOY" -c "$work/$name/envoy.yaml" --concurrency "$ENVOY_CONCURRENCY" --base-id "$admin" \
    --log-level info >"$work/$name/envoy.log" 2>&1 &
  pids+=($!)
  printf -v "PID_$name" '%s' "$!"
  pool_a_healthy() { envoy_live "$admin" && curl -s "http://127.0.0.1:$admin/clusters" | grep -qE '^pool-a::.*health_flags::healthy$'; }
  wait_until 30 pool_a_healthy || { cat "$work/$name/envoy.log" >&2; exit 1; }
  printf -v "PORT_$name" '%s' "$port"
}
start_envoy bare false
start_envoy chain true
start_envoy wasm true
# The chain with pii-redaction scanning nothing: isolates token-counter's and pii's costs.
start_envoy nopii true -s 'pii_config={"scan_requests":false,"scan_responses":false}'
# The chain without model-router: isolates the router's cost.
start_envoy norouter true -s model_router=false
# The chain with endpoint-picker on the pool (engine "vllm": the mock's /metrics is scraped).
start_envoy picker true -s "pools=[{\"name\":\"pool-a\",\"engine\":\"vllm\",\"host\":\"127.0.0.1\",\"port\":$MOCK_PORT}]"
# The same engine pool without the picker filter (Envoy's least_request decides).
STRIP_PICKER=1 start_envoy enginecfg true -s "pools=[{\"name\":\"pool-a\",\"engine\":\"vllm\",\"host\":\"127.0.0.1\",\"port\":$MOCK_PORT}]"
start_envoy global true -s "ratelimit_port=$RL_PORT" \
  -s 'rate_limit_config={"key_tier":"global","global":{"cluster":"sluice_ratelimit","timeout_ms":50,"failure_mode":"deny"}}'
BARE_PORT=$PORT_bare
NOPII_PORT=$PORT_nopii
NOROUTER_PORT=$PORT_norouter
CHAIN_PORT=$PORT_chain
WASM_PORT=$PORT_wasm
PICKER_PORT=$PORT_picker
ENGINECFG_PORT=$PORT_enginecfg
GLOBAL_PORT=$PORT_global

# A ~2 KB chat body.
.venv/bin/python scripts/lib/chat-body.py "$work/body.json"
export BENCH_BODY=$work/body.json

# Sanity: each target answers 200 before it is measured.
for p in "$MOCK_PORT" "$BARE_PORT" "$NOPII_PORT" "$NOROUTER_PORT" "$CHAIN_PORT" "$PICKER_PORT" "$ENGINECFG_PORT" "$GLOBAL_PORT" "$WASM_PORT"; do
  key=$KEY
  [ "$p" = "$WASM_PORT" ] && key=$WKEY
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/v1/chat/completions" \
    -H "authorization: Bearer $key" -H 'content-type: application/json' --data @"$work/body.json" || true)
  [ "$code" = 200 ] || { echo "bench: port $p answered $code"; tail -n 20 "$work"/*/envoy.log; exit 1; }
done

run() { # name port key
  BENCH_KEY=$3 wrk -t"$THREADS" -c"$CONNS" -d2s -s scripts/lib/post.lua "http://127.0.0.1:$2/v1/chat/completions" >/dev/null
  BENCH_KEY=$3 wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency -s scripts/lib/post.lua \
    "http://127.0.0.1:$2/v1/chat/completions" >"$work/$1.wrk"
}
run direct "$MOCK_PORT" "$KEY"
run bare "$BARE_PORT" "$KEY"
run nopii "$NOPII_PORT" "$KEY"
run norouter "$NOROUTER_PORT" "$KEY"
run chain "$CHAIN_PORT" "$KEY"
run wasm "$WASM_PORT" "$WKEY"
run limits "$CHAIN_PORT" "$LKEY"
run global "$GLOBAL_PORT" "$LKEY"

.venv/bin/python - "$work" "$SECONDS_PER_RUN" "$CONNS" "$ENVOY_CONCURRENCY" "$BUILD" <<'PY'
import sys
sys.path.insert(0, "scripts/lib")
from wrk_summary import summary
work, secs, conns, conc, build = sys.argv[1:]
rows = {name: summary(open(f"{work}/{name}.wrk").read())
        for name in ("direct", "bare", "nopii", "norouter", "chain", "wasm", "limits", "global")}
print(f"bench: {secs}s per target, {conns} connections, Envoy --concurrency {conc}, ~2 KB chat POST")
print(f"  chain: key-auth + rate-limit + model-router + pii-redaction + token-counter, key without limits, the {build} build;")
print("  wasm: the same chain in Envoy's V8 (what Istio loads);")
print("  nopii: the chain with pii-redaction scanning nothing; norouter: the chain without model-router;")
print("  limits: same chain, key with")
print("  rpm/tpm/max-parallel (local tier); global: the key's limits in sluice-ratelimit + Redis")
print(f"{'target':<8} {'req/s':>10} {'p50 us':>10} {'p99 us':>10} {'non-2xx':>8}")
for name, (rps, p50, p99, err) in rows.items():
    print(f"{name:<8} {rps:>10.0f} {p50:>10.1f} {p99:>10.1f} {err:>8}")
b, c, d, n, r = rows["bare"], rows["chain"], rows["direct"], rows["nopii"], rows["norouter"]
l, g = rows["limits"], rows["global"]
print(f"rate-limit local decisions (limits vs chain): p50 +{l[1]-c[1]:.1f} us, p99 +{l[2]-c[2]:.1f} us, throughput x{l[0]/c[0]:.2f}")
print(f"rate-limit global path (global vs limits): p50 +{g[1]-l[1]:.1f} us, p99 +{g[2]-l[2]:.1f} us (p99 {g[2]:.0f} us), throughput x{g[0]/l[0]:.2f}")
print(f"model-router, alias + body rewrite, ~2 KB body (chain vs norouter): p50 +{c[1]-r[1]:.1f} us, p99 +{c[2]-r[2]:.1f} us")
print(f"pii-redaction, every entity on, ~2 KB prompt + JSON reply (chain vs nopii): p50 +{c[1]-n[1]:.1f} us, p99 +{c[2]-n[2]:.1f} us")
print(f"chain vs bare Envoy: p50 +{c[1]-b[1]:.1f} us, p99 +{c[2]-b[2]:.1f} us, throughput x{c[0]/b[0]:.2f}")
w = rows["wasm"]
print(f"wasm chain vs bare Envoy: p50 +{w[1]-b[1]:.1f} us, p99 +{w[2]-b[2]:.1f} us, throughput x{w[0]/b[0]:.2f}")
print(f"bare Envoy vs direct: p50 +{b[1]-d[1]:.1f} us, throughput x{b[0]/d[0]:.2f}")
if any(r[3] for r in rows.values()):
    sys.exit("bench: some responses were not 2xx")
PY

# ---- model-router, pii-redaction and endpoint-picker alone: alternating requests ----
# Their costs (tens of microseconds) are below the drift between the long rows above (and
# between rounds of short runs), so one client sends the same request to each Envoy in
# turn on kept-alive connections, 2,000 rounds, and the medians are compared.
declare -A med
# Each Envoy's CPU time per request is read too (its threads' schedstat): steadier than
# latency, which moves with how the two cores are scheduled.
declare -A cpu
while read -r name us cpu_us; do med[$name]=$us; cpu[$name]=$cpu_us; done < <(.venv/bin/python scripts/lib/alternate.py \
  "$work/body.json" "$KEY" 2000 200 norouter:$NOROUTER_PORT:$PID_norouter nopii:$NOPII_PORT:$PID_nopii \
  chain:$CHAIN_PORT:$PID_chain picker:$PICKER_PORT:$PID_picker enginecfg:$ENGINECFG_PORT:$PID_enginecfg)
diff_us() { awk -v a="${med[$1]}" -v b="${med[$2]}" -v ca="${cpu[$1]}" -v cb="${cpu[$2]}" \
  'BEGIN { printf "%+.0f us p50 (CPU %+.0f us)", a - b, ca - cb }'; }
printf 'alternating, 2,000 rounds on kept-alive connections, median (Envoy CPU per request): chain %.0f us (%.0f), without model-router %.0f us (%.0f), pii-redaction scanning nothing %.0f us (%.0f)\n' \
  "${med[chain]}" "${cpu[chain]}" "${med[norouter]}" "${cpu[norouter]}" "${med[nopii]}" "${cpu[nopii]}"
echo "model-router (alias + body rewrite, 2 KB): $(diff_us chain norouter);" \
  "pii-redaction (every entity, 2 KB prompt + JSON reply): $(diff_us chain nopii)"
echo "endpoint-picker (score, prefix index, 2 KB): $(diff_us picker chain): the filter" \
  "$(diff_us picker enginecfg), the engine pool's Envoy config (override_host, metrics" \
  "cluster, probes) $(diff_us enginecfg chain)"

# ---- Tokenizer: inside Envoy, in V8 outside Envoy, and natively against tiktoken-rs ----
# A ~512 KB prompt of the mixed corpus (prose, code, CJK, emoji, whitespace and digit runs,
# long words) through the chain (pii-redaction off) and through bare Envoy: the difference is
# what token-counter costs (JSON parsing and counting), so size / difference is a floor of
# its speed in Envoy.
.venv/bin/python - "$work/big.json" <<'PY'
import json, sys
corpus = json.load(open("filters/tokenizer/tests/corpus.json"))
text = "\n".join(e["text"] for e in corpus)
text = (text * (512_000 // len(text.encode()) + 1))[:512_000]
json.dump({"model": "mock-model", "max_tokens": 1,
           "messages": [{"role": "user", "content": text}]}, open(sys.argv[1], "w"))
PY
median_ms() { # port [body file] -> median of 15 request times in ms
  for _ in $(seq 15); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$1/v1/chat/completions" \
      -H "authorization: Bearer $KEY" -H 'content-type: application/json' --data @"${2:-$work/big.json}"
  done | sort -n | sed -n 8p | awk '{printf "%.2f", $1 * 1000}'
}
median_ms "$BARE_PORT" >/dev/null; median_ms "$NOPII_PORT" >/dev/null   # warm up
bare_ms=$(median_ms "$BARE_PORT")
chain_ms=$(median_ms "$NOPII_PORT")
size=$(stat -c %s "$work/big.json")
echo
echo "tokenizer in Envoy: ${size}-byte prompt: bare ${bare_ms} ms, chain ${chain_ms} ms" \
  "-> token-counter $(awk -v s="$size" -v b="$bare_ms" -v c="$chain_ms" 'BEGIN { d = c - b; if (d <= 0) print "n/a (below noise)"; else printf "%.1f MB/s (parse + count)", s / 1e6 / (d / 1000) }')"
grep -h "tokenizers ready" "$work/chain/envoy.log" | head -1 | sed 's/.*token-counter: /tokenizer in Envoy: /'

# ---- pii-redaction: a 100 KB prompt through the chain with and without it; scan speed ----
.venv/bin/python - "$work/pii.json" <<'PY'
import json, sys
corpus = json.load(open("filters/tokenizer/tests/corpus.json"))
prose = "\n".join(e["text"] for e in corpus)[:2000]
parts, i = [], 0
while sum(map(len, parts)) < 100_000:
    parts.append(prose + f" contact user{i}@example.org or +1 415 555 {i % 10000:04d} ")
    i += 1
json.dump({"model": "mock-model", "max_tokens": 1,
           "messages": [{"role": "user", "content": "".join(parts)}]}, open(sys.argv[1], "w"))
PY
# Requests alternate between the two Envoys (41 each), so the machine's drift hits both alike.
# With ALTERNATE_FRESH=1 in its environment, a new prompt every request (alternate.py).
paired_ms() { # port_off port_on body [key] -> "median_off median_on" in ms (41 alternating pairs)
  .venv/bin/python scripts/lib/alternate.py "$3" "${4:-$KEY}" 41 0 off:"$1" on:"$2" |
    awk '{ ms[$1] = $2 / 1000 } END { printf "%.2f %.2f\n", ms["off"], ms["on"] }'
}
added_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", b - a }'; } # off on -> on - off
paired_ms "$NOPII_PORT" "$CHAIN_PORT" "$work/pii.json" >/dev/null   # warm up
read -r off_ms on_ms < <(paired_ms "$NOPII_PORT" "$CHAIN_PORT" "$work/pii.json")
echo
echo "pii-redaction in Envoy: $(stat -c %s "$work/pii.json")-byte prompt (every entity redacted):" \
  "off ${off_ms} ms, on ${on_ms} ms -> $(added_ms "$off_ms" "$on_ms") ms"
# The whole chain on that prompt, a new one every request (nothing remembered: parsed,
# scanned and redacted, counted), against bare Envoy: issue 18's "a 100 KB prompt".
chain_added() { # port key -> "bare X ms, chain Y ms -> +Z ms"
  local bare chain
  ALTERNATE_FRESH=1 paired_ms "$BARE_PORT" "$1" "$work/pii.json" "$2" >/dev/null # warm up
  read -r bare chain < <(ALTERNATE_FRESH=1 paired_ms "$BARE_PORT" "$1" "$work/pii.json" "$2")
  echo "bare $bare ms, chain $chain ms -> $(added_ms "$bare" "$chain") ms"
}
echo "the whole chain on it, a new prompt every request: the $BUILD build $(chain_added "$CHAIN_PORT" "$KEY");" \
  "in V8 $(chain_added "$WASM_PORT" "$WKEY")"
# endpoint-picker on a 200 KB prompt (its prompt read and prefix index are linear in size).
.venv/bin/python - "$work/picker.json" <<'PY'
import json, sys
text = ("You are a helpful assistant for a GPU inference platform. " * 4000)[:200_000]
json.dump({"model": "mock-model", "max_tokens": 1,
           "messages": [{"role": "user", "content": text}]}, open(sys.argv[1], "w"))
PY
paired_ms "$CHAIN_PORT" "$PICKER_PORT" "$work/picker.json" >/dev/null   # warm up
read -r off_ms on_ms < <(paired_ms "$CHAIN_PORT" "$PICKER_PORT" "$work/picker.json")
echo "endpoint-picker in Envoy: $(stat -c %s "$work/picker.json")-byte prompt:" \
  "without ${off_ms} ms, with ${on_ms} ms -> $(added_ms "$off_ms" "$on_ms") ms"
cargo build --quiet --profile wasm-release -p sluice-pii-redaction --no-default-features \
  --example throughput --target wasm32-wasip1
echo "pii-redaction in V8 (Node WASI): $(node --no-warnings scripts/lib/wasi-run.mjs \
  target/wasm32-wasip1/wasm-release/examples/throughput.wasm | tr '\n' ' ')"
echo "pii-redaction native: $(cargo run --quiet --release -p sluice-pii-redaction --example throughput | tr '\n' ' ')"

cargo build --quiet --profile wasm-release -p sluice-tokenizer --example throughput --target wasm32-wasip1
echo "tokenizer in V8 (Node WASI, same engine as Envoy): $(node --no-warnings scripts/lib/wasi-run.mjs \
  target/wasm32-wasip1/wasm-release/examples/throughput.wasm | tr '\n' ' ')"
echo "tokenizer native: $(cargo run --quiet --release -p sluice-tokenizer --example throughput | tr '\n' ' ')"
cargo build --quiet --profile wasm-release -p sluice-chat-template --example render --target wasm32-wasip1
echo "chat templates in V8 (Node WASI), per request: $(node --no-warnings scripts/lib/wasi-run.mjs \
  target/wasm32-wasip1/wasm-release/examples/render.wasm | tr '\n' ' ')"

# ---- sluice-ratelimit with Redis: decisions per second, the service on one core ----
cargo build --quiet --release -p sluice-ratelimit --examples
# The Envoys are done: stop them so their health checks do not share the cores.
pkill -TERM -f "$work/[a-z]*/envoy.yaml" 2>/dev/null || true
sleep 1
kill "$(pgrep -f "sluice-ratelimit --listen 127.0.0.1:$RL_PORT")" 2>/dev/null || true
SOLO_PORT=$(free_port)
taskset -c 0 target/release/sluice-ratelimit --listen "127.0.0.1:$SOLO_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" >"$work/ratelimit-solo.log" 2>&1 &
pids+=($!)
wait_until 10 port_busy "$SOLO_PORT" || true
for c in 16 256; do
  echo "sluice-ratelimit + Redis, service pinned to 1 core, $c concurrent calls:" \
    "$(taskset -c 1 target/release/examples/load "http://127.0.0.1:$SOLO_PORT" 5 "$c")"
done
