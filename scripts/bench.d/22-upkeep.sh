#!/usr/bin/env bash
# Cost of the monitor's upkeep passes beside liveness (called by scripts/bench): a pool pass
# over a full pool, a worker.log rotation scan, a retention scan, at 1,000 and 10,000
# workers, with the cadence the monitor's pacing gives each.
#   env BENCH_TMP  scratch directory; optional BENCH_UPKEEP_SIZES (1000,10000)
# Prints one `upkeep: …` line per size and the growth factors (linear is ×10).
set -euo pipefail
: "${BENCH_TMP:?set BENCH_TMP to a scratch directory}"
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example bench_upkeep
exe="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/bench_upkeep"
exec "$exe" --tmp "$BENCH_TMP/upkeep"
