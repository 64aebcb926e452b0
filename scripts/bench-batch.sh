#!/usr/bin/env bash
# Interactive latency with and without a 10,000-line batch running, and the batch's share of
# the idle capacity: one pool of simulated engines behind the whole Sluice chain in real
# Envoy (endpoint-picker with flow control), sluice-batch sending the lines through the
# gateway. Prints one table per `flow.batch_headroom` value. See docs/benchmarks.md.
#
# Environment: BENCH_BATCH_SECONDS (each phase, 30), BENCH_BATCH_LOAD (interactive load as
# a share of the pool's capacity, 0.4), BENCH_BATCH_HEADROOM ("1,2,4,off";
# off: flow control off).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
scripts/build.sh >/dev/null
export ENVOY_BIN="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
cargo run --quiet --release -p sluice-e2e --example bench_batch
