#!/usr/bin/env bash
# Prepare the docker-compose stack (docker-compose.yml): render deploy/compose/ — the Envoy
# config from envoy/envoy.yaml.j2 (the one Envoy config source of the native stack, the
# tests and compose; rendered, never copied) and the key file Envoy watches, with a demo key
# on first use. Then: docker compose up --build.
#   --render-only   render, do not build (scripts/test.sh uses it to validate statically)
# SLUICE_BUILD: native (default; the filters as an Envoy dynamic module, built into the
# envoy service's image by filters/native/Dockerfile) or wasm (the filters in Envoy's V8:
# built here to target/wasm, which the envoy service mounts); docs/architecture.md, "Two
# builds".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
BUILD=${SLUICE_BUILD:-native}
case "$BUILD" in
  native) build_vars=(-s native=true -s native_module=/etc/sluice/native/libnative_filters.so) ;;
  wasm) build_vars=() ;;
  *) printf 'compose: SLUICE_BUILD must be native or wasm, not %s\n' "$BUILD" >&2; exit 1 ;;
esac
if [ "${1:-}" != --render-only ]; then
  scripts/setup.sh
  # The wasm build is mounted from here; the native one is built into the image. Either way
  # the CLI that renders and edits the key file is this checkout's.
  if [ "$BUILD" = wasm ]; then scripts/build.sh; else cargo build --quiet --release -p sluice-cli; fi
fi
SLUICE=target/release/sluice
[ -x "$SLUICE" ] || cargo build --quiet --release -p sluice-cli
out=deploy/compose
state=$out/state
# The envoy service mounts target/wasm whichever build runs (empty for the native one).
mkdir -p "$state/ecds" target/wasm

# Container paths: /etc/sluice/native (the dynamic module, in the image), /etc/sluice/wasm
# (the wasm build, mounted read-only), /var/lib/sluice (deploy/compose/state: the key file,
# the access log).
host() { echo "{\"host\":\"$1\",\"port\":8000}"; }
pools="[{\"name\":\"pool-small\",\"failover\":[\"pool-large\"],\"hosts\":[$(host pool-small-0),$(host pool-small-1)]},\
{\"name\":\"pool-large\",\"lb\":\"maglev\",\"hosts\":[$(host pool-large-0),$(host pool-large-1)]}]"
"$SLUICE" render envoy/envoy.yaml.j2 -o "$out/envoy.yaml" \
  -s listen_address=0.0.0.0 -s admin_address=0.0.0.0 -s listen_port=8080 -s admin_port=9901 \
  -s state_dir=/var/lib/sluice -s wasm_dir=/etc/sluice/wasm "${build_vars[@]}" -s "pools=$pools" -s filters=true \
  -s ratelimit_host=ratelimit -s ratelimit_port=8081 -s batch_host=batch -s batch_port=8090 \
  -s cache_host=cache -s cache_port=8082 \
  -s 'response_cache={"shared":{"cluster":"sluice_cache"},"rules":[{"models":["*"],"apis":["embeddings"]},{"models":["*"],"apis":["chat","completions","responses","messages"]}]}'
export SLUICE_KEY_FILE=$state/ecds/key-auth.json
key_file_render "$SLUICE" "$SLUICE_KEY_FILE" "$BUILD" -s wasm_dir=/etc/sluice/wasm "${build_vars[@]}"
if ! "$SLUICE" keys list | grep -q '^key_demo '; then
  ( umask 077; "$SLUICE" keys create --tenant demo --id key_demo 2>/dev/null > "$state/demo-key" )
fi
# The secret sluice-batch (the batch container) signs its owner assertions with.
if [ ! -s "$state/batch-secret" ]; then
  ( umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/batch-secret" )
fi
"$SLUICE" keys batch-secret --secret-file "$state/batch-secret" >/dev/null 2>&1
echo "compose: rendered $out/envoy.yaml and $SLUICE_KEY_FILE ($BUILD build)"
echo "compose: docker compose up --build, then"
echo "  export OPENAI_BASE_URL=http://localhost:8080/v1"
echo "  export OPENAI_API_KEY=$(cat "$state/demo-key")"
