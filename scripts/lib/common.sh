# Shared by scripts/*.sh (sourced, not run): the filter list, free ports, waiting for
# something to come up, and stopping what a script started.

# The wasm filters, in chain order (scripts/build.sh builds each to target/wasm/<crate>.wasm).
SLUICE_FILTERS=(sluice-key-auth sluice-rate-limit sluice-model-router sluice-pii-redaction sluice-token-counter sluice-response-cache sluice-endpoint-picker)
# Every crate compiled to wasm32: the filters and what they are made of. Linted and
# unit-tested for wasm32 (in V8) by scripts/test.sh.
SLUICE_WASM_CRATES=(sluice-common sluice-proxy sluice-testkit sluice-tokenizer sluice-chat-template "${SLUICE_FILTERS[@]}")

# `-p crate` for each argument.
cargo_packages() {
  local c
  for c in "$@"; do printf -- '-p\n%s\n' "$c"; done
}

# A free TCP port on 127.0.0.1; with N, the first of N consecutive free ports.
free_port() {
  "${SLUICE_PYTHON:-.venv/bin/python}" - "${1:-1}" <<'PY'
import socket, sys
n = int(sys.argv[1])
for _ in range(200):
    socks = []
    try:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); base = s.getsockname()[1]; socks.append(s)
        for i in range(1, n):
            t = socket.socket(); t.bind(("127.0.0.1", base + i)); socks.append(t)
        print(base)
        break
    except OSError:
        continue
    finally:
        for s in socks: s.close()
PY
}

# Whether something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds; 1 on timeout.
wait_until() {
  local tries=$(($1 * 10))
  shift
  for _ in $(seq "$tries"); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

file_written() { [ -s "$1" ]; }
file_has() { grep -q "$2" "$1" 2>/dev/null; }
envoy_live() { [ "$(curl -s "http://127.0.0.1:$1/ready" 2>/dev/null)" = LIVE ]; }

# stop_pids PID...: TERM, up to 5 s to exit, then KILL.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local alive p
  for _ in $(seq 50); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

# A scratch directory in $work, and $pids: when the script exits, every process in $pids is
# stopped and the directory removed.
scratch_dir() {
  work=$(mktemp -d)
  pids=()
  trap 'stop_pids "${pids[@]}"; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# What the chain benchmarks (scripts/bench-chain.sh, scripts/bench-load.sh) start their
# Envoys from: the filters in both builds and the native probe (build.sh), the wasm no-op
# and probe filters. Sets NOOP_WASM, PROBE_WASM and ENVOY.
build_bench_envoys() {
  scripts/setup.sh >/dev/null
  scripts/build.sh >/dev/null
  cargo build --quiet --profile wasm-release --target wasm32-wasip1 -p sluice-proxy --example noop --example probe
  NOOP_WASM=$ROOT/target/wasm32-wasip1/wasm-release/examples/noop.wasm
  PROBE_WASM=$ROOT/target/wasm32-wasip1/wasm-release/examples/probe.wasm
  ENVOY="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
}

# median: the median of the numbers on stdin, separated by spaces or newlines.
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The key file Envoy watches: an ECDS resource naming its build's filter (a wasm filter or
# the dynamic module). key_file_render SLUICE FILE BUILD RENDER_VARS...: with no FILE, render
# one with no keys; with a FILE of the other build, render it again for BUILD with the keys
# and batch secret it holds (`sluice keys config`), so keys survive a switch of builds.
key_file_build() { if grep -q DynamicModuleFilter "$1"; then echo native; else echo wasm; fi; }
key_file_render() {
  local sluice=$1 file=$2 build=$3 config='{"keys":[]}'
  shift 3
  if [ -f "$file" ]; then
    [ "$(key_file_build "$file")" != "$build" ] || return 0
    config=$("$sluice" keys config --key-file "$file")
  fi
  "$sluice" render envoy/ecds/key-auth.json.j2 -o "$file" "$@" -s "key_auth_config=$config"
}
