#!/usr/bin/env bash
# The llama.cpp tree vendored in PyPI's llama-cpp-python source distribution: the C++
# engine scripts/engine.sh builds, gguf-py, and the vocabularies (models/ggml-vocab-*.gguf)
# and chat templates (models/templates/) of real model families, which sluice-tokenizer
# builds into its tables. Downloaded once (sha256 pinned) and unpacked into
#   ${SLUICE_CACHE:-$HOME/.cache/sluice}/llama.cpp-<version>/src
# Prints that directory on its last line. Safe to run again.
set -euo pipefail

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}/llama.cpp-$VERSION
SDIST=llama_cpp_python-$VERSION.tar.gz
say() { printf 'llama-src: %s\n' "$*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.src.lock"
flock 9 # two runs on one machine download once

if [ ! -f "$CACHE/src/.unpacked" ]; then
  if [ ! -f "$CACHE/$SDIST" ]; then
    # The PEP 503 index gives the file's URL; `pip download --no-binary` would instead build
    # the package's build dependencies (cmake among them) from source just to read metadata.
    url=$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ | grep -o "https://[^\"#]*/$SDIST" | head -1)
    [ -n "$url" ] || { say "no $SDIST on the PyPI index"; exit 1; }
    say "downloading $SDIST (77 MB, once)"
    curl -fsSL -o "$CACHE/$SDIST.part" "$url"
    echo "$SHA256  $CACHE/$SDIST.part" | sha256sum -c --quiet -
    mv "$CACHE/$SDIST.part" "$CACHE/$SDIST"
  fi
  rm -rf "$CACHE/src"
  mkdir -p "$CACHE/src"
  tar xzf "$CACHE/$SDIST" -C "$CACHE/src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
  touch "$CACHE/src/.unpacked"
fi
echo "$CACHE/src"
