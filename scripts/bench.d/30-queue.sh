#!/usr/bin/env bash
# Task queue benchmark (issues 4 and 10). Called by scripts/bench with
#   BENCH_BIN=<dir of release binaries>  BENCH_TMP=<scratch dir>
# Prints one "name value unit" line per figure, all measured side by side in this run:
#   - the raw rename(2) rate of this filesystem;
#   - per queue length (QUEUE_BENCH_SIZES, default 1000,100000,1000000; one class): bulk
#     enqueue tasks/s while filling, and the CLI's enqueue, claim, complete, fail and stats
#     (median ms, each a new process) with growth factors against the first length, next to
#     python-dirq doing the same one-shot claim (queue_scale.py; `pip install dirq` is done
#     here when it is missing: a benchmark dependency only); list's peak memory at the
#     largest length;
#   - the work loop: `task-queue work -- true` tasks/s with 1 and 4 workers, and its own
#     cost split per task (claim, spawn, run, record, fsyncs, events);
#   - CLI claim rate with 1, 4 and 8 claimer processes, seed 004's glob+flock queue at the
#     same count (seed004_queue.py) and corral's ratio to it;
#   - the in-process figures of examples/bench_queue.rs (claims/s as a share of raw
#     rename(2) and of the claim's own system calls run alone, lost races per claim, wakeups and lost races per arrival with 8 idle
#     claimers without and with turns, bulk enqueue next to the create+rename floor,
#     enqueue → claim latency), and a summary of the throughput targets side by side.
# QUEUE_BENCH_TASKS (default 2000) sets the task count of the claimer, work and seed runs.
set -euo pipefail

BIN=${BENCH_BIN:?set BENCH_BIN to the directory of the release binaries}
TMP=${BENCH_TMP:?set BENCH_TMP to a scratch directory}
N=${QUEUE_BENCH_TASKS:-2000}
SIZES=${QUEUE_BENCH_SIZES:-1000,100000,1000000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK="$TMP/queue-bench"
rm -rf "$WORK"
mkdir -p "$WORK"

TQ="$BIN/task-queue"
now() { date +%s.%N; }
div() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.1f}' if b else 'nan')" "$1" "$2"; }
pct() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{100*a/b:.1f}' if b else 'nan')" "$1" "$2"; }
elapsed() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }

new_home() {
    export CORRAL_HOME="$WORK/$1"
    rm -rf "$CORRAL_HOME"
    "$BIN/corral" init >/dev/null
}

fill() { # $1 class, $2 count: one bulk load
    seq "$2" | "$TQ" enqueue --class "$1" --jsonl - >/dev/null
}

processing_count() { find "$CORRAL_HOME/coordination/tasks/processing" -name '*.json' | wc -l; }

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

# python-dirq, the anchor of the scale comparison.
if ! python3 -c 'import dirq' 2>/dev/null; then
    python3 -m pip install --quiet --user dirq >/dev/null 2>&1 || python3 -m pip install --quiet dirq >/dev/null 2>&1 || true
fi
python3 "$HERE/queue_scale.py" --bin "$BIN" --dir "$WORK" --sizes "$SIZES"

# The work loop running `true`, 1 and 4 workers; the loop logs its own cost split.
work_run() { # $1 = workers; prints the aggregate tasks/s and the first worker's split
    local k=$1 per t0 t1 pids=()
    new_home "work$k"
    fill work "$N"
    per=$((N / k))
    t0=$(now)
    for ((i = 0; i < k; i++)); do
        RUST_LOG=info "$TQ" work --worker "bench-w$i" --class work --max-tasks "$per" -- true \
            2>"$WORK/work$k-$i.log" >/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    t1=$(now)
    echo "queue.work.tasks_per_s_${k}_workers $(div "$((per * k))" "$(elapsed "$t0" "$t1")") tasks/s"
    grep -h 'shutting down - completed' "$WORK/work$k-0.log" | sed 's/.*completed/queue.work.split_'"$k"'_workers: completed/' | head -1
}
work_run 1
work_run 4
W1=$(grep -h 'shutting down' "$WORK/work1-0.log" | sed -n 's/.*(\([0-9.]*\) tasks\/s.*/\1/p' | head -1)
echo "queue.work.tasks_per_s_per_worker_1 ${W1:-nan} tasks/s"

claim_loop() { while "$TQ" claim --worker "$1" --class bench >/dev/null 2>&1; do :; done; }

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
    div "$N" "$(elapsed "$t0" "$t1")"
}

declare -A RATE
for k in 1 4 8; do
    new_home "claim$k"
    fill bench "$N"
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

# In-process figures (10,000 tasks; one-shot costs at 1k and 100k).
INPROC="$BIN/examples/bench_queue"
ARGS=(--tasks 10000 --sizes 1000,100000 --dir "$WORK")
if [ -x "$INPROC" ]; then
    INPROC_OUT=$("$INPROC" "${ARGS[@]}")
elif command -v cargo >/dev/null; then
    INPROC_OUT=$(cd "$REPO" && cargo run -q --release --example bench_queue -- "${ARGS[@]}")
else
    INPROC_OUT=""
fi
echo "$INPROC_OUT"
IN8=$(echo "$INPROC_OUT" | awk '/claim_per_s_8_claimers/ {print $2}')
if [ -n "$IN8" ]; then
    echo "queue.inproc.claim_8_claimers_vs_seed004 $(div "$IN8" "$SEED") x"
fi

# The throughput targets side by side, from the in-process run above (one process, one
# filesystem, seconds apart): claims next to raw rename(2), lost races, wakeups per arrival
# with 8 idle claimers without and with turns, bulk enqueue next to the floor of one new
# file per task (create+write+rename in the same home, before and after the load).
pick() { echo "$INPROC_OUT" | awk -v k="$1" '$1 == k {print $2}'; }
echo "queue.summary.claims_per_s_1_claimer $(pick queue.inproc.claim_per_s_1_claimers) claims/s = $(pick queue.inproc.claim_vs_raw_rename_1_claimers) % of raw rename $(pick queue.inproc.raw_rename_per_s_mean)/s (target 30 %)"
echo "queue.summary.claims_per_s_8_claimers $(pick queue.inproc.claim_per_s_8_claimers) claims/s = $(pick queue.inproc.claim_vs_raw_rename_8_claimers) % of raw rename, $(pick queue.inproc.lost_races_per_claim_8_claimers) lost races/claim"
echo "queue.summary.claim_syscalls_alone $(pick queue.inproc.claim_syscalls_per_s)/s = $(pick queue.inproc.claim_syscalls_vs_raw_rename) % of raw rename: claims reach $(pick queue.inproc.claim_vs_claim_syscalls_1_claimers) % (1 claimer) and $(pick queue.inproc.claim_vs_claim_syscalls_8_claimers) % (8) of that ceiling"
echo "queue.summary.idle8_wakeups_per_arrival $(pick queue.inproc.idle8.turns.wakeups_per_arrival) with turns ($(pick queue.inproc.idle8.no_turns.wakeups_per_arrival) without), lost races/arrival $(pick queue.inproc.idle8.turns.lost_races_per_arrival) ($(pick queue.inproc.idle8.no_turns.lost_races_per_arrival) without)"
echo "queue.summary.bulk_enqueue_per_s $(pick queue.inproc.bulk_enqueue_per_s) tasks/s = $(pick queue.inproc.bulk_enqueue_vs_raw_create) % of the create+rename floor $(pick queue.inproc.raw_create_write_rename_per_s)/s (before $(pick queue.inproc.raw_create_write_rename_per_s_before), after $(pick queue.inproc.raw_create_write_rename_per_s_after)); syncs $(pick queue.inproc.bulk_enqueue_sync_share) % (target 20000/s)"
rm -rf "$WORK"
