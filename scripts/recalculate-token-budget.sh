#!/usr/bin/env bash
# Recompute token-budget.json from the specs and fix drift; --check only reports (exit 10 on drift).
# A thin runbook wrapper: all arguments go to `recalc-budget` unchanged, so `recalculate-token-budget.sh --help`
# shows every flag. The binary is taken from $CORRAL_BIN_DIR, else PATH, else the
# repository's target/release (then target/debug) next to this script.
#
# Example: ./scripts/recalculate-token-budget.sh --check
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/find-bin.sh"

BIN=$(find_bin recalc-budget) || exit 127
exec "$BIN" "$@"
