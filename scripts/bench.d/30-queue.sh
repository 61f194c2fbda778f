#!/usr/bin/env bash
# Task queue benchmark (issue 4). Called by scripts/bench with
#   BENCH_BIN=<dir of release binaries>  BENCH_TMP=<scratch dir>
# Prints one "name value unit" line per figure:
#   - the raw rename(2) rate on the same filesystem, measured in this run;
#   - CLI enqueue rate, CLI claim rate with 1, 4 and 8 claimer processes, each as a ratio
#     of the raw rename rate;
#   - seed 004's approach (glob + flock sidecar per task, seed004_queue.py) at the same task
#     count with 4 claimers, and corral's 4-claimer rates as a multiple of it;
#   - enqueue -> claim latency of `claim --wait` (median, from the two events' timestamps);
#   - the in-process figures of examples/bench_queue.rs (binary from BENCH_BIN/examples, or
#     built with cargo when it is not there).
# QUEUE_BENCH_TASKS (default 2000) sets the task count of the CLI and seed runs.
set -euo pipefail

BIN=${BENCH_BIN:?set BENCH_BIN to the directory of the release binaries}
TMP=${BENCH_TMP:?set BENCH_TMP to a scratch directory}
N=${QUEUE_BENCH_TASKS:-2000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK="$TMP/queue-bench"
rm -rf "$WORK"
mkdir -p "$WORK"

TQ="$BIN/task-queue"
now() { date +%s.%N; }
div() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.1f}' if b else 'nan')" "$1" "$2"; }
pct() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{100*a/b:.1f}' if b else 'nan')" "$1" "$2"; }

new_home() {
    export CORRAL_HOME="$WORK/$1"
    rm -rf "$CORRAL_HOME"
    "$BIN/corral" init >/dev/null
}

fill() { # untimed: N enqueues, 4 at a time
    seq "$N" | xargs -P 4 -I{} "$TQ" enqueue --class bench --payload '{"n": {}}' >/dev/null
}

processing_count() { find "$CORRAL_HOME/coordination/tasks/processing" -name '*.json' | wc -l; }

claim_loop() { while "$TQ" claim --worker "$1" >/dev/null 2>&1; do :; done; }

claim_rate() { # $1 = number of claimer processes; prints claims/s
    local k=$1 t0 t1 pids=()
    t0=$(now)
    for ((i = 0; i < k; i++)); do claim_loop "bench-$i" & pids+=($!); done
    wait "${pids[@]}"
    t1=$(now)
    local got
    got=$(processing_count)
    if [ "$got" -ne "$N" ]; then
        echo "error: $k claimers claimed $got of $N tasks" >&2
        exit 1
    fi
    div "$N" "$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1")"
}

# The floor: rename(2) of N files between two directories of this filesystem.
RAW=$(python3 - "$WORK/raw" "$N" <<'PY'
import os, sys, time
base, n = sys.argv[1], int(sys.argv[2])
a, b = os.path.join(base, "a"), os.path.join(base, "b")
os.makedirs(a); os.makedirs(b)
for i in range(n):
    with open(os.path.join(a, f"{i:08}.json"), "w") as f:
        f.write("{}")
t = time.monotonic()
for i in range(n):
    os.rename(os.path.join(a, f"{i:08}.json"), os.path.join(b, f"{i:08}.json"))
print(f"{n / (time.monotonic() - t):.1f}")
PY
)
echo "queue.raw_rename_per_s $RAW renames/s"

new_home enq
t0=$(now)
for ((i = 0; i < N; i++)); do "$TQ" enqueue --class bench --payload '{"n": 1}' >/dev/null; done
t1=$(now)
ENQ=$(div "$N" "$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1")")
echo "queue.cli.enqueue_per_s $ENQ tasks/s"
echo "queue.cli.enqueue_vs_raw_rename $(pct "$ENQ" "$RAW") %"

declare -A RATE
for k in 1 4 8; do
    new_home "claim$k"
    fill
    RATE[$k]=$(claim_rate "$k")
    echo "queue.cli.claim_per_s_${k}_claimers ${RATE[$k]} claims/s"
    echo "queue.cli.claim_vs_raw_rename_${k}_claimers $(pct "${RATE[$k]}" "$RAW") %"
done

SEED_LINE=$(python3 "$HERE/seed004_queue.py" --tasks "$N" --claimers 4 --dir "$WORK")
echo "$SEED_LINE"
SEED=$(echo "$SEED_LINE" | awk '/claim_per_s/ {print $2}')
echo "queue.cli.claim_4_claimers_vs_seed004 $(div "${RATE[4]}" "$SEED") x"

# enqueue -> claim with a claimer asleep on inotify (claim --wait), 30 rounds.
new_home latency
for ((i = 0; i < 30; i++)); do
    "$TQ" claim --worker waiter --class lat --wait 10 >/dev/null &
    waiter=$!
    sleep 0.2
    "$TQ" enqueue --class lat >/dev/null
    wait "$waiter"
done
LAT=$(python3 - "$CORRAL_HOME/coordination/dashboard-events.jsonl" <<'PY'
import json, sys
from datetime import datetime
enq, clm = {}, {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    if e["type"] == "task_enqueued":
        enq[e["task_id"]] = t
    elif e["type"] == "task_claimed":
        clm[e["task_id"]] = t
lat = sorted((clm[k] - enq[k]) * 1000 for k in enq if k in clm)
print(f"{lat[len(lat) // 2]:.1f}" if len(lat) == 30 else "nan")
PY
)
echo "queue.cli.enqueue_to_claim_wait_median_ms $LAT ms"

# In-process figures (10,000 tasks).
INPROC="$BIN/examples/bench_queue"
if [ -x "$INPROC" ]; then
    INPROC_OUT=$("$INPROC" --tasks 10000 --dir "$WORK")
elif command -v cargo >/dev/null; then
    INPROC_OUT=$(cd "$REPO" && cargo run -q --release --example bench_queue -- --tasks 10000 --dir "$WORK")
else
    INPROC_OUT=""
fi
echo "$INPROC_OUT"
IN8=$(echo "$INPROC_OUT" | awk '/claim_per_s_8_claimers/ {print $2}')
if [ -n "$IN8" ]; then
    echo "queue.inproc.claim_8_claimers_vs_seed004 $(div "$IN8" "$SEED") x"
fi
rm -rf "$WORK"
