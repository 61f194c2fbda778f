# shellcheck shell=bash
# Sourced by the runbook wrappers: find_bin NAME prints the path of a corral binary, taken
# from $CORRAL_BIN_DIR, else PATH, else the directory of the corral that installed these
# scripts into a home (`corral init --with-scripts`), else this repository's target/release
# (then target/debug). One copy of the lookup, so every wrapper resolves binaries the same way.
# @corral-install@

find_bin() {
    local name=$1 root dir
    if [[ -n "${CORRAL_BIN_DIR:-}" && -x "$CORRAL_BIN_DIR/$name" ]]; then
        printf '%s\n' "$CORRAL_BIN_DIR/$name"
        return 0
    fi
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    if [[ -n "${CORRAL_INSTALLED_BIN_DIR:-}" && -x "$CORRAL_INSTALLED_BIN_DIR/$name" ]]; then
        printf '%s\n' "$CORRAL_INSTALLED_BIN_DIR/$name"
        return 0
    fi
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    for dir in "$root/target/release" "$root/target/debug"; do
        if [[ -x "$dir/$name" ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    echo "error: $name not found: put corral's binaries on PATH, set CORRAL_BIN_DIR, or run cargo build --release" >&2
    return 127
}
