#!/usr/bin/env bash
# Liveness benchmarks of heartbeat-monitor (called by scripts/bench).
#   env BENCH_BIN  directory of the release binaries (heartbeat-monitor, spawn-worker, …)
#   env BENCH_TMP  scratch directory (homes are created under $BENCH_TMP/liveness)
#   optional: BENCH_KILLS (50) BENCH_STALE (50) BENCH_WORKERS (10000) BENCH_SOAK_SECONDS (60)
#             BENCH_SPAWNS (10000) BENCH_SPAWNERS (4) BENCH_SPAWN_LIFE (10)
#   arguments: which benchmarks (sigkill stale once soak spawners; default all)
# Prints one `liveness: …` line per figure. Targets: SIGKILL→zombie ≤ 50 ms p99; staleness
# ≤ 100 ms late; 10k workers beating every 30 s ≤ 2 % of a core and ≤ 64 MiB RSS; --once
# over 10k specs ≤ 1 s; 0 false failures in 10,000 spawns by 4 spawners with the daemon up.
set -euo pipefail
: "${BENCH_BIN:?set BENCH_BIN to the directory of the release binaries}"
: "${BENCH_TMP:?set BENCH_TMP to a scratch directory}"
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example bench_liveness
exe="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/bench_liveness"
exec "$exe" --bin "$BENCH_BIN" --tmp "$BENCH_TMP/liveness" "$@"
