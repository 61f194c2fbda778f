#!/usr/bin/env bash
# Worker dashboard: list/filter workers, --watch, events, summary, progress, prometheus (runbook: Real-Time Dashboard).
# A thin runbook wrapper: all arguments go to `worker-monitor` unchanged, so `worker-monitor.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/dashboards/worker-monitor.sh --status running --type implementation-worker
set -euo pipefail

find_bin() {
    local name=$1 here dir
    if [[ -n "${CORRAL_BIN_DIR:-}" && -x "$CORRAL_BIN_DIR/$name" ]]; then
        printf '%s\n' "$CORRAL_BIN_DIR/$name"
        return 0
    fi
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    for dir in "$here/../../target/release" "$here/../../target/debug"; do
        if [[ -x "$dir/$name" ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    echo "error: $name not found: put corral's binaries on PATH, set CORRAL_BIN_DIR, or run cargo build --release" >&2
    return 127
}

BIN=$(find_bin worker-monitor) || exit 127
exec "$BIN" "$@"
