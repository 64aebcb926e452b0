#!/usr/bin/env bash
# The response cache's cost and worth. Part 1: the same ~2 KB chat POST, with wrk, through
#   bare      Envoy without the Sluice filters, to a zero-latency mock (baseline);
#   miss      the whole chain with the cache on, every request a new prompt (a lookup that
#             misses, the answer copied and stored, the oldest entry evicted);
#   local     the whole chain, the same request each time: a local-tier hit;
#   shared    the whole chain, two requests in turn with a one-slot local tier, so each is a
#             local miss and a hit in sluice-cache's Redis.
# Part 2: a workload with 30% repeats (temperature 0) through a pool of two simulated
# engines (sluice-mock-llm --sim-*), then `sluice usage` on its access log: hit ratio,
# tokens served from the cache, GPU seconds saved.
#
# Numbers on a shared 2-core machine are noisy: compare the rows of one run, not runs.
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (8), BENCH_CACHE_REQUESTS (300).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-8}
REQUESTS=${BENCH_CACHE_REQUESTS:-300}

scripts/setup.sh >/dev/null
scripts/build.sh >/dev/null
ENVOY="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
SLUICE="$ROOT/target/release/sluice"
scratch_dir
wait_file() { wait_until 30 file_written "$1" || { echo "bench: $1 never appeared" >&2; exit 1; }; }

mock() { # name [flags...] -> port in $work/<name>.port
  local name=$1
  shift
  target/release/sluice-mock-llm --listen 127.0.0.1:0 --port-file "$work/$name.port" \
    --name "$name" --models mock-model "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_file "$work/$name.port"
}
mock fast --reply-tokens 16
FAST=$(cat "$work/fast.port")
# Two simulated engines: 8 sequences each, prefill and decode costs like a small GPU.
mock sim0 --sim-slots 8 --sim-decode-us-per-token 3000 --sim-prefill-us-per-token 100 --reply-tokens 48
mock sim1 --sim-slots 8 --sim-decode-us-per-token 3000 --sim-prefill-us-per-token 100 --reply-tokens 48
SIM0=$(cat "$work/sim0.port"); SIM1=$(cat "$work/sim1.port")

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
CACHE_PORT=$(free_port)
target/release/sluice-cache --listen "127.0.0.1:$CACHE_PORT" --redis "redis://127.0.0.1:$REDIS_PORT" \
  >"$work/cache.log" 2>&1 &
pids+=($!)
wait_until 10 port_busy "$CACHE_PORT" || { cat "$work/cache.log"; exit 1; }

mkdir -p "$work/keys"
"$SLUICE" render envoy/ecds/key-auth.json.j2 -o "$work/keys/key-auth.json" \
  -s "wasm_dir=$ROOT/target/wasm" -s 'key_auth_config={"keys":[]}'
KEY=$(SLUICE_KEY_FILE="$work/keys/key-auth.json" "$SLUICE" keys create --tenant bench 2>/dev/null)

ALWAYS='"rules":[{"models":["*"],"apis":["chat"],"when":"always"}]'
start_envoy() { # name filters pools [extra -s vars...]; sets PORT_<name>
  local name=$1 filters=$2 pools=$3 port admin
  shift 3
  port=$(free_port); admin=$(free_port)
  while [ "$admin" = "$port" ]; do admin=$(free_port); done
  mkdir -p "$work/$name/ecds"
  cp "$work/keys/key-auth.json" "$work/$name/ecds/key-auth.json"
  "$SLUICE" render envoy/envoy.yaml.j2 -o "$work/$name/envoy.yaml" \
    -s "listen_port=$port" -s "admin_port=$admin" -s "state_dir=$work/$name" \
    -s "pools=$pools" -s "filters=$filters" -s "wasm_dir=$ROOT/target/wasm" \
    -s 'model_router_config={"models":{"mock-model":{"targets":[{"pool":"pool-a"}]}}}' "$@"
  "$ENVOY" -c "$work/$name/envoy.yaml" --concurrency 1 --base-id "$admin" \
    --file-flush-interval-msec 100 --log-level info >"$work/$name/envoy.log" 2>&1 &
  pids+=($!)
  ready() { envoy_live "$admin" && curl -s "http://127.0.0.1:$admin/clusters" | grep -qE '^pool-a::.*health_flags::healthy$'; }
  wait_until 30 ready || { cat "$work/$name/envoy.log" >&2; exit 1; }
  printf -v "PORT_$name" '%s' "$port"
  printf -v "ADMIN_$name" '%s' "$admin"
}
FAST_POOL="[{\"name\":\"pool-a\",\"host\":\"127.0.0.1\",\"port\":$FAST}]"
start_envoy bare false "$FAST_POOL"
start_envoy local true "$FAST_POOL" -s "response_cache={$ALWAYS}"
start_envoy shared true "$FAST_POOL" -s "cache_port=$CACHE_PORT" \
  -s "response_cache={$ALWAYS,\"local\":{\"slots\":1},\"shared\":{\"cluster\":\"sluice_cache\",\"timeout_ms\":50}}"

# Request bodies: a ~2 KB chat; `mode` picks how wrk varies it.
cat >"$work/body.lua" <<'LUA'
local text = string.rep("You are a helpful assistant for a GPU inference platform. ", 33)
local mode = os.getenv("BENCH_MODE")
local n = 0
request = function()
  n = n + 1
  local tag = "same"
  if mode == "unique" then tag = tostring(n) .. "-" .. tostring(math.random(1e9))
  elseif mode == "pair" then tag = tostring(n % 2) end
  local body = '{"model":"mock-model","max_tokens":16,"messages":[{"role":"user","content":"'
    .. text .. tag .. '"}]}'
  return wrk.format("POST", "/v1/chat/completions",
    {["content-type"] = "application/json", ["authorization"] = "Bearer " .. os.getenv("BENCH_KEY")}, body)
end
LUA
run() { # name port mode
  BENCH_KEY=$KEY BENCH_MODE=$3 wrk -t1 -c"$CONNS" -d2s -s "$work/body.lua" "http://127.0.0.1:$2" >/dev/null
  BENCH_KEY=$KEY BENCH_MODE=$3 wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency -s "$work/body.lua" \
    "http://127.0.0.1:$2" >"$work/$1.wrk"
}
run bare "$PORT_bare" same
run miss "$PORT_local" unique
run local "$PORT_local" same
run shared "$PORT_shared" pair
stats() { curl -s "http://127.0.0.1:$1/stats/prometheus" 2>/dev/null | grep -E "^sluice_cache_(hit|miss|error)\{" || true; }

.venv/bin/python - "$work" "$SECONDS_PER_RUN" "$CONNS" <<'PY'
import sys
sys.path.insert(0, "scripts/lib")
from wrk_summary import summary
work, secs, conns = sys.argv[1:]
rows = {name: summary(open(f"{work}/{name}.wrk").read()) for name in ("bare", "miss", "local", "shared")}
print(f"bench-cache: {secs}s per target, {conns} connections, Envoy --concurrency 1, ~2 KB chat POST")
print(f"{'target':<8} {'req/s':>10} {'p50 us':>10} {'p99 us':>10} {'non-2xx':>8}")
for name, (rps, p50, p99, err) in rows.items():
    print(f"{name:<8} {rps:>10.0f} {p50:>10.1f} {p99:>10.1f} {err:>8}")
b, m, l, s = rows["bare"], rows["miss"], rows["local"], rows["shared"]
print(f"local hit vs miss to a zero-latency mock: p50 {l[1]:.0f} vs {m[1]:.0f} us (x{l[1]/m[1]:.2f}); "
      f"vs bare Envoy to the mock: {l[1]-b[1]:+.0f} us")
print(f"shared (Redis) hit vs local hit: p50 {s[1]-l[1]:+.0f} us (target within 500 us)")
if any(r[3] for r in rows.values()):
    sys.exit("bench-cache: some responses were not 2xx")
PY
echo "cache outcomes, local Envoy (miss and local rows): $(stats "$ADMIN_local" | tr '\n' ' ')"
echo "cache outcomes, shared Envoy: $(stats "$ADMIN_shared" | tr '\n' ' ')"

# ---- Part 2: 30% repeats through simulated engines ----
SIM_POOL="[{\"name\":\"pool-a\",\"hosts\":[{\"host\":\"127.0.0.1\",\"port\":$SIM0},{\"host\":\"127.0.0.1\",\"port\":$SIM1}]}]"
start_envoy sim true "$SIM_POOL" -s 'response_cache={"rules":[{"models":["*"],"apis":["chat"]}]}'
.venv/bin/python - "$PORT_sim" "$KEY" "$REQUESTS" <<'PY'
import json, random, sys, threading, time, urllib.request
port, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
prompts, sent = [], []
for i in range(n):
    if prompts and rng.random() < 0.3:
        sent.append(rng.choice(prompts))
    else:
        p = f"Question {i}: " + " ".join(rng.choice(["rivers", "GPUs", "tokens", "caches", "tenants"]) for _ in range(40))
        prompts.append(p)
        sent.append(p)
lock, i_next, statuses = threading.Lock(), [0], []
def worker():
    while True:
        with lock:
            if i_next[0] >= n:
                return
            i = i_next[0]
            i_next[0] += 1
        body = json.dumps({"model": "mock-model", "temperature": 0, "max_tokens": 48,
                           "messages": [{"role": "user", "content": sent[i]}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req) as r:
            r.read()
            statuses.append(r.status)
t0 = time.time()
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
repeats = n - len(prompts)
print(f"workload: {n} requests, {repeats} repeats of an earlier prompt ({repeats / n:.0%}), 8 clients, "
      f"{time.time() - t0:.1f} s, {statuses.count(200)} answered 200")
PY
sleep 0.5   # the access log is flushed every 100 ms
"$SLUICE" usage --log "$work/sim/access.log"
echo "(hit ratio: CACHED / REQUESTS; a repeat sent while its first answer is still being generated is a miss)"
