#!/usr/bin/env bash
# Worker dashboard: list/filter workers, --watch, events, summary, progress, prometheus (runbook: Real-Time Dashboard).
# A thin runbook wrapper: all arguments go to `worker-monitor` unchanged, so `worker-monitor.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/dashboards/worker-monitor.sh --status running --type implementation-worker
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/../lib/find-bin.sh"

BIN=$(find_bin worker-monitor) || exit 127
exec "$BIN" "$@"
