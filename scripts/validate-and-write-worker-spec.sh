#!/usr/bin/env bash
# Validate a hand-made worker spec and register it (runbook: Validate Before Spawn). Two cases:
#   - the spec is a file outside the home: `spawn-worker --from-spec FILE` validates it, reserves
#     its budget and writes it into active/ (exit 6 invalid, 4 no budget, 5 the id exists);
#   - the runbook's heredoc already wrote it into active/ (so `$WORKER_ID.json` is not a file
#     here, or it is the file in active/): `corral adopt ID` validates it in place, fills the
#     defaults of its type and reserves its budget exactly once. Running it again does nothing
#     and exits 0.
# The binaries are taken from $CORRAL_BIN_DIR, else PATH, else the directory of the corral that
# installed these scripts, else the repository's target/release (then target/debug).
#
# Example: ./scripts/validate-and-write-worker-spec.sh "$WORKER_ID.json"   (or - for stdin; extra flags such as --dry-run pass through)
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/find-bin.sh"

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $(basename "$0") SPEC.json|ID.json|- [flags, e.g. --dry-run --format json]" >&2
    [[ $# -lt 1 ]] && exit 2
    exit 0
fi
spec=$1
shift
home=${CORRAL_HOME:-${COMMIT_RELAY_HOME:-}}
active=${home:+$home/coordination/worker-specs/active}
if [[ $spec != - ]]; then
    in_active=false
    if [[ -n $active && -e $spec ]]; then
        here=$(cd "$(dirname "$spec")" && pwd -P)
        there=$(cd "$active" 2>/dev/null && pwd -P || true)
        [[ $here == "$there" ]] && in_active=true
    fi
    if [[ ! -e $spec || $in_active == true ]]; then
        CORRAL=$(find_bin corral) || exit 127
        exec "$CORRAL" adopt "$(basename "$spec" .json)" "$@"
    fi
fi
BIN=$(find_bin spawn-worker) || exit 127
exec "$BIN" --from-spec "$spec" "$@"
