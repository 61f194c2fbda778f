#!/usr/bin/env bash
# Clean up zombie and failed workers: identity-checked termination, budget released, specs archived (runbook: Bulk Cleanup; crontab: hourly).
# A thin runbook wrapper: all arguments go to `cleanup-zombies` unchanged, so `cleanup-zombie-workers.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/cleanup-zombie-workers.sh --dry-run
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/find-bin.sh"

BIN=$(find_bin cleanup-zombies) || exit 127
exec "$BIN" "$@"
