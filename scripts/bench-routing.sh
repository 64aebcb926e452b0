#!/usr/bin/env bash
# Balancing modes compared on one pool of four simulated engines (sluice-mock-llm's engine
# simulation) behind the whole Sluice chain in real Envoy: round robin, least_request, maglev
# on a prefix hash, and endpoint-picker, each under multi-turn chats from eight tenants
# arriving open-loop at 50%, 80% and 100% of the pool's capacity. Prints one table; the
# workload is the same for every mode (seeded). See docs/benchmarks.md.
#
# Environment: BENCH_ROUTING_SECONDS (arrivals per cell, 15), BENCH_ROUTING_LOADS
# ("0.5,0.8,1.0"), BENCH_ROUTING_MODES ("round_robin,least_request,maglev_prefix,picker"),
# BENCH_ROUTING_PICKER (endpoint-picker settings to try, JSON: {"weights": {"prefix": 2}}),
# BENCH_ROUTING_POOL (pool options to try, JSON: {"max_concurrency": 64}).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
scripts/build.sh >/dev/null
export ENVOY_BIN="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
cargo run --quiet --release -p sluice-e2e --example bench_routing
