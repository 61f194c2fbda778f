#!/usr/bin/env bash
# Validate a hand-made worker spec against the schema and the budget, and write it into active/ (runbook: Validate Before Spawn). Nothing is written when it is invalid (exit 6) or does not fit the budget (exit 4).
# A thin runbook wrapper: all arguments go to `spawn-worker` unchanged, so `validate-and-write-worker-spec.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/validate-and-write-worker-spec.sh "$WORKER_ID.json"   (or - for stdin; extra flags such as --dry-run pass through)
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/find-bin.sh"

BIN=$(find_bin spawn-worker) || exit 127
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $(basename "$0") SPEC.json|- [spawn-worker flags, e.g. --dry-run --format json]" >&2
    [[ $# -lt 1 ]] && exit 2
    exit 0
fi
spec=$1
shift
exec "$BIN" --from-spec "$spec" "$@"
