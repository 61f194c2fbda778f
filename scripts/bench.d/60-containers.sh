#!/usr/bin/env bash
# Container workers against direct ones, side by side (called by scripts/bench): spawn to
# first heartbeat and stop latency, plus the engine's own costs (a trivial `run`, one
# `inspect`), and the docker engine's column (the Docker CLI on Podman's API service).
# Sets up Podman with scripts/containers first (installs it when missing).
#   env BENCH_BIN, BENCH_TMP, BENCH_EXAMPLES (from scripts/bench); optional BENCH_N (10)
set -euo pipefail
: "${BENCH_BIN:?}" "${BENCH_TMP:?}" "${BENCH_EXAMPLES:?}"
cd "$(dirname "$0")/../.."
scripts/containers setup
eval "$(scripts/containers env)"
scripts/containers service start
eval "$(scripts/containers docker-env)"
"$BENCH_EXAMPLES/bench_containers" --bin "$BENCH_BIN" --tmp "$BENCH_TMP/containers" --n "${BENCH_N:-10}" |
  awk '{ printf "containers: %-40s %8s %s\n", $1, $2, $3 }'
