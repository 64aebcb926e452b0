# Sourced by scripts/bench-chain.sh and scripts/envoy-callgrind.sh (after
# scripts/lib/common.sh, from the repository's root, ROOT set): a scratch directory, the mock
# backend (MOCK_PORT), a key (KEY) in the wasm and the native build's ECDS resources, and
# start_envoy, which starts an Envoy running the chain up to a filter, or a floor row.
# ENVOY is the Envoy binary (or a wrapper that runs it); ENVOY_CONCURRENCY its workers;
# NATIVE_MODULE the native chain's module (default this build's: another to compare a
# build of another revision).
SLUICE="$ROOT/target/release/sluice"
PY="$ROOT/.venv/bin/python"
scratch_dir

target/release/sluice-mock-llm --listen 127.0.0.1:0 --port-file "$work/mock.port" \
  --name pool-a --reply-tokens 16 >"$work/mock.log" 2>&1 &
pids+=($!)
wait_until 30 file_written "$work/mock.port" || { echo "${0##*/}: no mock" >&2; exit 1; }
MOCK_PORT=$(cat "$work/mock.port")
mkdir -p "$work/keys/ecds"
"$SLUICE" render envoy/ecds/key-auth.json.j2 -o "$work/keys/ecds/key-auth.json" \
  -s "wasm_dir=$ROOT/target/wasm" -s 'key_auth_config={"keys":[]}'
KEY=$(SLUICE_KEY_FILE="$work/keys/ecds/key-auth.json" "$SLUICE" keys create --tenant bench 2>/dev/null)
# The same keys in the native build's ECDS resource (NATIVE=true start_envoy).
NATIVE_MODULE=${NATIVE_MODULE:-$ROOT/target/release/examples/libnative_filters.so}
mkdir -p "$work/keys/native"
"$SLUICE" render envoy/ecds/key-auth.json.j2 -o "$work/keys/native/key-auth.json" \
  -s "wasm_dir=$ROOT/target/wasm" -s native=true -s "native_module=$NATIVE_MODULE" \
  -s "key_auth_config=$("$SLUICE" keys config --key-file "$work/keys/ecds/key-auth.json")"

ROUTER_CONFIG='{"models":{"mock-model":{"targets":[{"pool":"pool-a","model":"org/mock-model-8b"}]}}}'
# As scripts/run.sh configures it: chat without temperature 0 or a seed is not cached
# (the filter's bypass path), embeddings are.
CACHE_CONFIG='{"rules":[{"models":["*"],"apis":["embeddings"]},{"models":["*"],"apis":["chat","completions","responses","messages"]}]}'
PLAIN_POOL="[{\"name\":\"pool-a\",\"host\":\"127.0.0.1\",\"port\":$MOCK_PORT}]"
ENGINE_POOL="[{\"name\":\"pool-a\",\"engine\":\"vllm\",\"host\":\"127.0.0.1\",\"port\":$MOCK_PORT}]"

# start_envoy NAME LAST_FILTER POOLS [extra -s vars...]: the chain up to and including
# LAST_FILTER (an http_filters name; "none" for bare Envoy; "noop:N" for bare Envoy with N
# wasm filters that do nothing; "probe:CALL:COUNT" for bare Envoy with one filter making
# COUNT host calls CALL a request). The filters' wasm from WASM_DIR (default this build's);
# ONE_VM=false: a module and a VM per filter instead of sluice_filters.wasm in one VM.
# ONE_FILTER=true: the filters after the buffer filter as one Envoy filter (sluice.chain, the
# template's default); by default each its own, so that a prefix can end at any of them.
# Sets PORT_<NAME>, PID_<NAME>.
start_envoy() {
  local name=$1 last=$2 pools=$3 port admin filters=true router=true
  shift 3
  case "$last" in none | noop:* | probe:* | native_*) filters=false ;; esac
  case "$last" in none | noop:* | probe:* | native_* | sluice.key_auth | sluice.rate_limit.admission) router=false ;; esac
  port=$(free_port); admin=$(free_port)
  while [ "$admin" = "$port" ]; do admin=$(free_port); done
  mkdir -p "$work/$name/ecds"
  local wasm=${WASM_DIR:-$ROOT/target/wasm} one_vm=${ONE_VM:-true} one_filter=${ONE_FILTER:-false}
  local keys=$work/keys/ecds/key-auth.json native_vars=()
  if [ "${NATIVE:-false}" = true ]; then
    # The template's native build: every filter from sluice-native's module.
    keys=$work/keys/native/key-auth.json
    native_vars=(-s native=true -s "native_module=$NATIVE_MODULE")
  fi
  sed "s#$ROOT/target/wasm/#$wasm/#" "$keys" >"$work/$name/ecds/key-auth.json"
  if [ "$one_vm" = false ]; then
    # key-auth's ECDS resource in its own module and VM, like the rest.
    sed -i 's#"vm_id": "sluice"#"vm_id": "sluice.key_auth"#; s#/sluice_filters\.wasm#/sluice_key_auth.wasm#' \
      "$work/$name/ecds/key-auth.json"
  fi
  "$SLUICE" render envoy/envoy.yaml.j2 -o "$work/$name/envoy.yaml" \
    -s "listen_port=$port" -s "admin_port=$admin" -s "state_dir=$work/$name" \
    -s "pools=$pools" -s "filters=$filters" -s "model_router=$router" -s "wasm_dir=$wasm" -s "one_vm=$one_vm" -s "one_filter=$one_filter" \
    -s "model_router_config=$ROUTER_CONFIG" -s "response_cache=$CACHE_CONFIG" "${native_vars[@]}" "$@"
  "$PY" - "$work/$name/envoy.yaml" "$last" "$NOOP_WASM" "$PROBE_WASM" <<'PY'
import sys, yaml
path, last, noop, probe = sys.argv[1:]
config = yaml.safe_load(open(path))
for listener in config["static_resources"]["listeners"]:
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            hcm = f.get("typed_config", {})
            if "http_filters" not in hcm or last == "none":
                continue
            def wasm_filter(name, code, configuration=None):
                config = {"name": name, "root_id": name, "allow_on_headers_stop_iteration": True,
                          "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                                        "code": {"local": {"filename": code}}}}
                if configuration is not None:
                    config["configuration"] = {
                        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}
                return {"name": name, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}
            if last.startswith("noop:"):
                noops = [wasm_filter(f"noop.{i}", noop) for i in range(int(last.split(":")[1]))]
                for f in noops:  # one VM, as the chain's filters share one
                    f["typed_config"]["config"]["vm_config"]["vm_id"] = "noop"
                hcm["http_filters"] = noops + hcm["http_filters"]
                continue
            def native_filter(name, filter_name, configuration=""):
                # A plugin of sluice-native's probe module (the probe and no-op plugins):
                # no VM. The whole chain natively is the template's native=true.
                return {"name": name, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                    "dynamic_module_config": {"name": "native_probe", "do_not_close": True},
                    "filter_name": filter_name,
                    "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": configuration}}}
            if last.startswith("native_noop:"):
                noops = [native_filter(f"noop.{i}", "noop") for i in range(int(last.split(":")[1]))]
                hcm["http_filters"] = noops + hcm["http_filters"]
                continue
            if last.startswith("native_probe:"):
                _, call, count = last.split(":")
                probe_filter = native_filter("probe", "probe", f"{call} {count}")
                hcm["http_filters"] = hcm["http_filters"][:-1] + [probe_filter] + hcm["http_filters"][-1:]
                continue
            if last.startswith("probe:"):
                _, call, count = last.split(":")
                # After the buffer filter, where the body filters are: the body comes whole.
                probe_filter = wasm_filter("probe", probe, f"{call} {count}")
                hcm["http_filters"] = hcm["http_filters"][:-1] + [probe_filter] + hcm["http_filters"][-1:]
                continue
            kept, dropping = [], False
            for h in hcm["http_filters"]:
                if h["name"].startswith("sluice.") and dropping:
                    continue
                kept.append(h)
                if h["name"] == last:
                    dropping = True
            hcm["http_filters"] = kept
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$ROOT/target/release/examples \
    "$ENVOY" -c "$work/$name/envoy.yaml" --concurrency "$ENVOY_CONCURRENCY" --base-id "$admin" \
    --log-level warn >"$work/$name/envoy.log" 2>&1 &
  pids+=($!)
  printf -v "PID_$name" '%s' "$!"
  pool_healthy() { envoy_live "$admin" && curl -s "http://127.0.0.1:$admin/clusters" | grep -qE '^pool-a::.*health_flags::healthy$'; }
  wait_until "${ENVOY_START_SECONDS:-30}" pool_healthy || { cat "$work/$name/envoy.log" >&2; exit 1; }
  printf -v "PORT_$name" '%s' "$port"
}

