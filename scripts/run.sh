#!/usr/bin/env bash
# Start the whole local stack: Envoy with the Sluice filters and two mock GPU pools of two
# backends each.
# Prints how to call it; Ctrl-C stops everything.
#
# Environment (all optional): SLUICE_PORT (8080), SLUICE_ADMIN_PORT (9901),
# SLUICE_POOL_PORT (9001; the four backends take this port and the next three), SLUICE_RATELIMIT_PORT (8081),
# SLUICE_BATCH_PORT (8090; sluice-batch, the Files and Batches API behind the gateway),
# SLUICE_REDIS (redis://...; default: the rate-limit service keeps counters in memory),
# SLUICE_STATE_DIR (.sluice),
# SLUICE_BUILD (native: the filters as an Envoy dynamic module, no VM; or wasm: the same
#   filters in Envoy's V8, as Istio loads them; docs/architecture.md,
#   "Two builds"),
# SLUICE_SKIP_BUILD=1 to use what is built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/common.sh

PORT=${SLUICE_PORT:-8080}
ADMIN_PORT=${SLUICE_ADMIN_PORT:-9901}
POOL_PORT=${SLUICE_POOL_PORT:-9001}
STATE=${SLUICE_STATE_DIR:-.sluice}
mkdir -p "$STATE/logs" "$STATE/ecds"
STATE=$(cd "$STATE" && pwd)
SLUICE="$ROOT/target/release/sluice"
export SLUICE_KEY_FILE="$STATE/ecds/key-auth.json"
BUILD=${SLUICE_BUILD:-native}
case "$BUILD" in
  native) build_vars=(-s native=true -s "native_module=$ROOT/target/release/examples/libnative_filters.so") ;;
  wasm) build_vars=() ;;
  *) printf 'run: SLUICE_BUILD must be native or wasm, not %s\n' "$BUILD" >&2; exit 1 ;;
esac

say() { printf 'run: %s\n' "$*"; }
die() { printf 'run: %s\n' "$*" >&2; exit 1; }

# One stack per state dir, and the ports must be free.
if [ -f "$STATE/run.pid" ] && kill -0 "$(cat "$STATE/run.pid")" 2>/dev/null; then
  die "Sluice is already running (pid $(cat "$STATE/run.pid"), state in $STATE). Stop it with Ctrl-C in its terminal or: kill $(cat "$STATE/run.pid")"
fi
for p in "$PORT" "$ADMIN_PORT" "$POOL_PORT" "$((POOL_PORT + 1))" "$((POOL_PORT + 2))" "$((POOL_PORT + 3))" "${SLUICE_RATELIMIT_PORT:-8081}" "${SLUICE_BATCH_PORT:-8090}"; do
  if port_busy "$p"; then
    die "port $p is in use by another program; free it or set SLUICE_PORT / SLUICE_ADMIN_PORT / SLUICE_POOL_PORT"
  fi
done

if [ "${SLUICE_SKIP_BUILD:-0}" != 1 ]; then
  scripts/setup.sh
  scripts/build.sh
fi
ENVOY="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
[ -x "$ENVOY" ] || die "no Envoy at $ENVOY: run scripts/setup.sh"

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping"
    stop_pids "${pids[@]}"
  fi
  rm -f "$STATE/run.pid"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo $$ > "$STATE/run.pid"

# The key file Envoy watches. Kept across runs, so keys you create survive a restart (and a
# switch of SLUICE_BUILD: key_file_render, scripts/lib/common.sh).
key_file_render "$SLUICE" "$SLUICE_KEY_FILE" "$BUILD" -s "wasm_dir=$ROOT/target/wasm" "${build_vars[@]}"
if [ ! -s "$STATE/demo-key" ] || ! "$SLUICE" keys list | grep -q '^key_demo '; then
  "$SLUICE" keys revoke key_demo 2>/dev/null || true
  ( umask 077; "$SLUICE" keys create --tenant demo --id key_demo 2>/dev/null > "$STATE/demo-key" )
fi
DEMO_KEY=$(cat "$STATE/demo-key")
# The secret sluice-batch signs its owner assertions with; key-auth verifies them.
if [ ! -s "$STATE/batch-secret" ]; then
  ( umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/batch-secret" )
fi
"$SLUICE" keys batch-secret --secret-file "$STATE/batch-secret" >/dev/null 2>&1 ||
  die "could not set the batch secret in $SLUICE_KEY_FILE"

# Two GPU pools of two mock backends each: pool-small (a simulated vLLM engine per backend,
# endpoint-picker placing each request by engine load and cached prefix; fails over to
# pool-large) and pool-large (maglev on the affinity hash, bounded load). The aliases that
# route to them are in envoy/filters/model-router.json.
backend() { # name port
  target/release/sluice-mock-llm --listen "127.0.0.1:$2" --name "$1" \
    --models mock-model "${@:3}" >"$STATE/logs/$1.log" 2>&1 &
  pids+=($!)
}
# A fast simulated engine: 16 sequences at once, 0.2 ms per output token.
sim=(--sim-slots 16 --sim-decode-us-per-token 200 --sim-prefill-us-per-token 5)
backend pool-small-0 "$POOL_PORT" "${sim[@]}"
backend pool-small-1 $((POOL_PORT + 1)) "${sim[@]}"
backend pool-large-0 $((POOL_PORT + 2))
backend pool-large-1 $((POOL_PORT + 3))
host() { echo "{\"host\":\"127.0.0.1\",\"port\":$1}"; }
pools_json="[{\"name\":\"pool-small\",\"engine\":\"vllm\",\"failover\":[\"pool-large\"],\"hosts\":[$(host "$POOL_PORT"),$(host $((POOL_PORT + 1)))]},\
{\"name\":\"pool-large\",\"lb\":\"maglev\",\"hosts\":[$(host $((POOL_PORT + 2))),$(host $((POOL_PORT + 3)))]}]"

# sluice-ratelimit: global limits. In memory, or in Redis when SLUICE_REDIS is set
# (redis://127.0.0.1:6379; several Envoys and replicas then share one budget).
RATELIMIT_PORT=${SLUICE_RATELIMIT_PORT:-8081}
rl_args=(--listen "127.0.0.1:$RATELIMIT_PORT")
[ -n "${SLUICE_REDIS:-}" ] && rl_args+=(--redis "$SLUICE_REDIS")
target/release/sluice-ratelimit "${rl_args[@]}" >"$STATE/logs/ratelimit.log" 2>&1 &
pids+=($!)

# sluice-cache: the response cache's shared tier, in memory or in SLUICE_REDIS.
CACHE_PORT=${SLUICE_CACHE_PORT:-8082}
cache_args=(--listen "127.0.0.1:$CACHE_PORT")
[ -n "${SLUICE_REDIS:-}" ] && cache_args+=(--redis "$SLUICE_REDIS")
target/release/sluice-cache "${cache_args[@]}" >"$STATE/logs/cache.log" 2>&1 &
pids+=($!)

# sluice-batch: the Files and Batches API; its lines go back through this gateway.
BATCH_PORT=${SLUICE_BATCH_PORT:-8090}
target/release/sluice-batch --listen "127.0.0.1:$BATCH_PORT" --state-dir "$STATE/batch" \
  --gateway "http://127.0.0.1:$PORT" --secret-file "$STATE/batch-secret" >"$STATE/logs/batch.log" 2>&1 &
pids+=($!)

"$SLUICE" render envoy/envoy.yaml.j2 -o "$STATE/envoy.yaml" \
  -s "listen_port=$PORT" -s "admin_port=$ADMIN_PORT" -s "state_dir=$STATE" \
  -s "pools=$pools_json" -s filters=true -s "wasm_dir=$ROOT/target/wasm" "${build_vars[@]}" \
  -s "ratelimit_port=$RATELIMIT_PORT" -s "batch_port=$BATCH_PORT" \
  -s "cache_port=$CACHE_PORT" \
  -s 'response_cache={"shared":{"cluster":"sluice_cache"},"rules":[{"models":["*"],"apis":["embeddings"]},{"models":["*"],"apis":["chat","completions","responses","messages"]}]}'
"$ENVOY" -c "$STATE/envoy.yaml" --concurrency 2 --base-id "$ADMIN_PORT" \
  --log-level info >"$STATE/logs/envoy.log" 2>&1 &
pids+=($!)

# Ready: Envoy is live and the four backends passed their first health check (in their own
# pools; pool-small also checks pool-large's hosts, its failover). Any process that exits
# during start-up ends the wait.
all_alive() { local p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done; }
stack_ready() {
  envoy_live "$ADMIN_PORT" &&
    [ "$(curl -s "http://127.0.0.1:$ADMIN_PORT/clusters" 2>/dev/null |
         grep -cE "^pool-small::127.0.0.1:($POOL_PORT|$((POOL_PORT + 1)))::health_flags::healthy$|^pool-large::.*health_flags::healthy$")" -eq 4 ]
}
ready_or_dead() { stack_ready || ! all_alive; }
wait_until 60 ready_or_dead || die "Envoy did not become ready in 60 s; see $STATE/logs/envoy.log"
if ! all_alive; then
  tail -n 40 "$STATE"/logs/*.log >&2
  die "a process exited during start-up (logs above, all in $STATE/logs)"
fi

cat <<MSG

  Sluice is up.
    gateway      http://127.0.0.1:$PORT/v1   (filters: the $BUILD build)
    Envoy admin  http://127.0.0.1:$ADMIN_PORT   (metrics: /stats/prometheus)
    GPU pools    pool-small: 127.0.0.1:$POOL_PORT, :$((POOL_PORT + 1)) (simulated vLLM, endpoint-picker)
                 pool-large: :$((POOL_PORT + 2)), :$((POOL_PORT + 3)) (mock backends, maglev)
    models       llama-3.1-8b (pool-small), qwen-2.5-72b (pool-large, 5% canary), auto, mock-model
    ratelimit    127.0.0.1:$RATELIMIT_PORT (gRPC, storage: ${SLUICE_REDIS:-memory})
    batch API    \$OPENAI_BASE_URL/files, /batches (sluice-batch on 127.0.0.1:$BATCH_PORT, state in $STATE/batch)
    cache        embeddings, and requests with temperature 0 or a seed, per tenant
                 (x-sluice-cache: hit|miss|bypass; shared tier: sluice-cache on 127.0.0.1:$CACHE_PORT,
                 storage: ${SLUICE_REDIS:-memory}; docs/filters/response-cache.md)
    state, logs  $STATE   (access log: $STATE/access.log)

  Use it from any OpenAI client:

    export OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1
    export OPENAI_API_KEY=$DEMO_KEY

    curl -s \$OPENAI_BASE_URL/chat/completions -H "Authorization: Bearer \$OPENAI_API_KEY" \\
      -H 'content-type: application/json' \\
      -d '{"model":"auto","messages":[{"role":"user","content":"Hello"}]}'

    curl -s \$OPENAI_BASE_URL/models -H "Authorization: Bearer \$OPENAI_API_KEY"

  Or from any Anthropic client (Messages API, Claude Code):

    export ANTHROPIC_BASE_URL=http://127.0.0.1:$PORT
    export ANTHROPIC_API_KEY=$DEMO_KEY

  Governed: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
  /v1/messages, /v1/messages/count_tokens; GET /v1/models; the batch API (/v1/files,
  /v1/batches: docs/batch.md). Every other path is refused.

  Keys: target/release/sluice keys create --tenant my-team   (list, revoke ID)
  Ctrl-C stops the stack.

MSG

# Stay up until Ctrl-C or until a process dies.
while :; do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      say "a process (pid $p) exited; logs in $STATE/logs"
      exit 1
    fi
  done
  sleep 1
done
