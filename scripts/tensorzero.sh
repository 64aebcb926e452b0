#!/usr/bin/env bash
# TensorZero, the Rust LLM gateway issue 18 compares the chain with: PyPI's `tensorzero`
# package (its wheel carries the gateway's Rust code, tensorzero-core, and starts its HTTP
# server; scripts/lib/tensorzero-gateway.py), installed once in a virtualenv of its own:
#   ${SLUICE_CACHE:-$HOME/.cache/sluice}/tensorzero-<version>/
# Prints the virtualenv's python on its last line. Safe to run again.
set -euo pipefail
VERSION=2026.6.0
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}/tensorzero-$VERSION
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ ! -x "$CACHE/venv/bin/python" ] || ! "$CACHE/venv/bin/python" -c 'import tensorzero' 2>/dev/null; then
  printf 'tensorzero: installing tensorzero==%s from PyPI (cached after the first run)\n' "$VERSION" >&2
  rm -rf "$CACHE/venv"
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q "tensorzero==$VERSION" >&2
fi
echo "$CACHE/venv/bin/python"
