#!/usr/bin/env bash
# spawn-worker throughput and latency, measured side by side with the raw atomic-write rate
# of the same filesystem and with the runbook's heredoc + jq way (including how many budget
# updates the unlocked jq way loses under concurrency).
set -euo pipefail
: "${BENCH_BIN:?}" "${BENCH_TMP:?}" "${BENCH_EXAMPLES:?}"
B=$BENCH_BIN
work=$BENCH_TMP/spawn
mkdir -p "$work"

newhome() { rm -rf "$1"; "$B/corral" init --home "$1" --total-tokens 100000000000 >/dev/null; }
now() { date +%s.%N; }
# rate COUNT START END -> per second
rate() { python3 -c 'import sys; n,a,b=map(float,sys.argv[1:]); print(f"{n/(b-a):.0f}")' "$@"; }
ratio() { python3 -c 'import sys; a,b=map(float,sys.argv[1:]); print(f"{a/b:.2f}")' "$@"; }

raw=$("$BENCH_EXAMPLES/bench_atomic_write" "$work/raw" 1000)
echo "raw write+fsync+rename+fsync(dir), same filesystem: $raw files/s"

# One spec per process: start to exit.
newhome "$work/h1"
python3 - "$B/spawn-worker" "$work/h1" <<'PY'
import subprocess, sys, time, statistics
exe, home = sys.argv[1], sys.argv[2]
lat = []
for _ in range(200):
    t = time.perf_counter()
    subprocess.run([exe, "--home", home, "--type", "test-worker", "--tokens", "1"], check=True, stdout=subprocess.DEVNULL)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"spawn-worker one spec, process start to exit: median {statistics.median(lat):.2f} ms, p90 {lat[int(len(lat)*0.9)]:.2f} ms (n=200; target <= 5 ms)")
PY

# 1 and 4 concurrent spawners, a process per spec, 1000 specs in all.
declare -A crate
for conc in 1 4; do
  h=$work/c$conc
  newhome "$h"
  per=$((1000 / conc))
  t0=$(now)
  for _ in $(seq "$conc"); do
    ( for _ in $(seq "$per"); do "$B/spawn-worker" --home "$h" --type test-worker --tokens 100 >/dev/null; done ) &
  done
  wait
  t1=$(now)
  n=$(find "$h/coordination/worker-specs/active" -name 'worker-*.json' | wc -l)
  used=$(jq .used "$h/coordination/token-budget.json")
  crate[$conc]=$(rate "$n" "$t0" "$t1")
  echo "spawn-worker, $conc concurrent spawner(s), process per spec: $(rate "$n" "$t0" "$t1") specs/s; specs $n, budget used $used (expected $((n * 100)), lost updates $(( (n * 100 - used) / 100 )))"
done

# In-process pool.
newhome "$work/pool"
t0=$(now)
"$B/spawn-worker" --home "$work/pool" --type test-worker --tokens 100 --count 1000 >/dev/null
t1=$(now)
pool=$(rate 1000 "$t0" "$t1")
echo "spawn-worker --count 1000 (in-process pool): $pool specs/s = $(ratio "$pool" "$raw") x the raw atomic-write rate (target >= 0.25)"

# Launched workers: the liveness lock is taken before the spec is visible, the program
# resolved, the process started with a clean signal state and recorded.
lh=$work/launch
newhome "$lh"
python3 - "$B/spawn-worker" "$lh" <<'PY'
import subprocess, sys, time, statistics
exe, home = sys.argv[1], sys.argv[2]
lat = []
for _ in range(100):
    t = time.perf_counter()
    subprocess.run([exe, "--home", home, "--type", "test-worker", "--tokens", "1", "--", "sleep", "300"], check=True, stdout=subprocess.DEVNULL)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"spawn-worker -- sleep 300 (launched), process start to exit: median {statistics.median(lat):.2f} ms, p90 {lat[int(len(lat)*0.9)]:.2f} ms (n=100)")
PY
t0=$(now)
"$B/spawn-worker" --home "$lh" --type test-worker --tokens 1 --count 200 -- sleep 300 >/dev/null
t1=$(now)
echo "spawn-worker --count 200 -- sleep 300 (launched pool): $(rate 200 "$t0" "$t1") workers/s"
# End the workers this benchmark started, by their recorded process groups.
for p in $(jq -r '.process.pid // empty' "$lh"/coordination/worker-specs/active/*.json); do
  kill -KILL -- "-$p" 2>/dev/null || true
done

# The runbook's way: heredoc spec + unlocked jq read-modify-write of the budget.
cat > "$work/bash-spawn.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
H=$1; N=$2
for _ in $(seq "$N"); do
  WORKER_ID="worker-implementation-$(date +%s%N)-$$-$RANDOM"
  cat > "$H/coordination/worker-specs/active/$WORKER_ID.json" <<SPEC
{
  "worker_id": "$WORKER_ID",
  "worker_type": "implementation-worker",
  "status": "pending",
  "task_id": "task-001",
  "priority": "high",
  "token_budget": { "allocated": 100, "used": 0 },
  "heartbeat": { "last_seen": null, "health_score": 100 },
  "created_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
SPEC
  USED=$(jq -r '.used' "$H/coordination/token-budget.json")
  AVAILABLE=$(jq -r '.available' "$H/coordination/token-budget.json")
  jq ".used = $((USED + 100)) | .available = $((AVAILABLE - 100))" "$H/coordination/token-budget.json" > "$H/budget.$$.json" &&
    mv "$H/budget.$$.json" "$H/coordination/token-budget.json"
done
SH
bh=$work/bash
newhome "$bh"
t0=$(now); bash "$work/bash-spawn.sh" "$bh" 250; t1=$(now)
bash1=$(rate 250 "$t0" "$t1")
newhome "$bh"
t0=$(now)
for _ in 1 2 3 4; do bash "$work/bash-spawn.sh" "$bh" 100 & done
wait
t1=$(now)
bash4=$(rate 400 "$t0" "$t1")
used=$(jq .used "$bh/coordination/token-budget.json")
echo "bash+jq (heredoc + jq budget update): 1 spawner $bash1 specs/s, 4 spawners $bash4 specs/s; lost budget updates with 4 spawners: $(( (40000 - used) / 100 )) of 400"
echo "ratio corral / bash+jq: process per spec, 1 spawner $(ratio "${crate[1]}" "$bash1") x; 4 spawners $(ratio "${crate[4]}" "$bash4") x; in-process pool vs 1 bash spawner $(ratio "$pool" "$bash1") x"
