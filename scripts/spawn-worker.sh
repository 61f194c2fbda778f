#!/usr/bin/env bash
# Spawn worker(s): validated spec, budget reserved, optionally launched (runbook: Spawning Workers).
# A thin runbook wrapper: all arguments go to `spawn-worker` unchanged, so `spawn-worker.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/spawn-worker.sh --type implementation-worker --task-id task-001 --master development-master --priority high --repo owner/repo
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/find-bin.sh"

BIN=$(find_bin spawn-worker) || exit 127
exec "$BIN" "$@"
