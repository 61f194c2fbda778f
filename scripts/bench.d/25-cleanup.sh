#!/usr/bin/env bash
# cleanup-zombies throughput: 1,000 zombie specs (each holding a reservation) are archived,
# their budget released, and the result checked against recalc-budget --check. The zombies
# are made by moving pool specs into zombie/ with status "failed", the way a crashed worker
# ends up, without 1,000 heartbeat processes. Prints one line of figures.
set -euo pipefail
: "${BENCH_BIN:?}" "${BENCH_TMP:?}"
B=$BENCH_BIN
N=${BENCH_CLEANUP_N:-1000}
h=$BENCH_TMP/cleanup
rm -rf "$h"
"$B/corral" init --home "$h" --total-tokens 100000000000 >/dev/null
"$B/spawn-worker" --home "$h" --type test-worker --tokens 100 --count "$N" >/dev/null
python3 - "$h/coordination/worker-specs" <<'PY'
import json, os, sys
d = sys.argv[1]
for name in os.listdir(f"{d}/active"):
    src = f"{d}/active/{name}"
    with open(src) as f:
        spec = json.load(f)
    spec["status"] = "failed"
    with open(f"{d}/zombie/{name}", "w") as f:
        json.dump(spec, f, indent=2)
    os.remove(src)
PY
t0=$(date +%s.%N)
"$B/cleanup-zombies" --home "$h" -q --format json >"$BENCH_TMP/cleanup.json"
t1=$(date +%s.%N)
archived=$(find "$h/coordination/worker-specs/archived" -name 'worker-*.json' | wc -l)
used=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["used"])' "$h/coordination/token-budget.json")
if "$B/recalc-budget" --home "$h" --check >/dev/null; then check=ok; else check=DRIFT; fi
python3 -c 'import sys; n,a,b=map(float,sys.argv[1:4]); print(f"cleanup-zombies: {int(n)} zombies archived in {b-a:.2f} s = {n/(b-a):.0f} specs/s; budget used after {sys.argv[4]} (expected 0), recalc-budget --check {sys.argv[5]}")' \
  "$archived" "$t0" "$t1" "$used" "$check"

# Leaders that exited while their group lives on (`sh -c 'sleep 300 & exit 0'`): each
# cleanup finds the liveness lock held, stops the group after checking its members carry
# the worker's proof, and only then archives.
M=${BENCH_CLEANUP_GROUPS:-100}
g=$BENCH_TMP/cleanup-groups
rm -rf "$g"
"$B/corral" init --home "$g" --total-tokens 100000000000 >/dev/null
"$B/spawn-worker" --home "$g" --type test-worker --tokens 1 --count "$M" -- sh -c 'sleep 300 & exit 0' >/dev/null
sleep 1
for f in "$g"/coordination/worker-specs/active/*.json; do
  "$B/heartbeat" --home "$g" "$(basename "$f" .json)" --fail --error "leader exited" >/dev/null
done
t0=$(date +%s.%N)
"$B/cleanup-zombies" --home "$g" -q --grace 5 --format json >"$BENCH_TMP/cleanup-groups.json"
t1=$(date +%s.%N)
left=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(1 for w in r["workers"] if w["process"]!="group_terminated"))' "$BENCH_TMP/cleanup-groups.json")
held=0
for l in "$g"/coordination/.locks/alive/*.lock; do
  if ! flock -n -x "$l" true; then held=$((held + 1)); fi
done
python3 -c 'import sys; n,a,b=map(float,sys.argv[1:4]); print(f"cleanup-zombies, leader exited and group alive: {int(n)} groups stopped in {b-a:.2f} s = {n/(b-a):.0f} workers/s; not group_terminated {sys.argv[4]}, liveness locks still held {sys.argv[5]} (expected 0, 0)")' \
  "$M" "$t0" "$t1" "$left" "$held"
