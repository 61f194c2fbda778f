#!/usr/bin/env bash
# corral on NFSv4.1 against a local ext4, side by side in one run (called by scripts/bench).
# Everything runs inside the User-Mode Linux guest of scripts/nfs (booted here when it is not
# up, and powered off again): "ext4" is the export's own disk used directly in that guest, so
# both columns pay the same guest costs and differ only by NFS. Figures: raw atomic write,
# rename and flock; spawn, heartbeat, claim and `work` throughput; detection of a local
# SIGKILL; detection of another host's silence (a monitor on mount B judging a worker of
# mount A by heartbeat age).
#   env BENCH_BIN, BENCH_TMP (from scripts/bench); optional BENCH_NFS_N (20 processes a figure)
set -euo pipefail
: "${BENCH_BIN:?}" "${BENCH_TMP:?}"
cd "$(dirname "$0")/../.."
D=${CORRAL_NFS_DIR:-/tmp/corral-nfs}
if ! scripts/nfs status >/dev/null 2>&1; then
  scripts/nfs up
  trap 'scripts/nfs down' EXIT
fi
drv=$BENCH_TMP/nfs-bench.py
cat >"$drv" <<'PY'
import fcntl, json, os, signal, statistics, subprocess, sys, time
B, N, LOCAL, A, BB = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def env(host):
    e = {"PATH": os.environ["PATH"], "LC_ALL": "C", "CORRAL_HOST": host}
    return e

def run(home, host, *args, check=True):
    r = subprocess.run([os.path.join(B, args[0]), "--home", home, *args[1:]], env=env(host),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{args} exited {r.returncode}: {r.stderr}")
    return r.stdout.strip()

def init(root, name):
    h = os.path.join(root, name)
    subprocess.run(["rm", "-rf", h], check=True)
    os.makedirs(root, exist_ok=True)
    run(h, "host-a", "corral", "init", "--total-tokens", "1000000000")
    return h

def timed(f, n):
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter(); f(i); lat.append((time.perf_counter() - t) * 1000)
    total = time.perf_counter() - t0
    return statistics.median(lat), n / total

def raw(root):
    d = os.path.join(root, "raw"); os.makedirs(d, exist_ok=True)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    t = time.perf_counter()
    for i in range(100):
        tmp = os.path.join(d, ".t")
        with open(tmp, "w") as f:
            f.write("x" * 600); f.flush(); os.fsync(f.fileno())
        os.rename(tmp, os.path.join(d, "f")); os.fsync(dfd)
    aw = (time.perf_counter() - t) * 10
    open(os.path.join(d, "r0"), "w").close()
    t = time.perf_counter()
    for i in range(100):
        os.rename(os.path.join(d, f"r{i}"), os.path.join(d, f"r{i+1}"))
    rn = (time.perf_counter() - t) * 10
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT)
    t = time.perf_counter()
    for i in range(100):
        fcntl.flock(fd, fcntl.LOCK_EX); fcntl.flock(fd, fcntl.LOCK_UN)
    fl = (time.perf_counter() - t) * 10
    return aw, rn, fl

def spec_dir(home, d, wid):
    return os.path.join(home, "coordination/worker-specs", d, wid + ".json")

def wait_file(p, timeout=120):
    dirname = os.path.dirname(p)
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.close(os.open(dirname, os.O_RDONLY | os.O_DIRECTORY))  # revalidate (observer)
        except OSError:
            pass
        if os.path.exists(p):
            return time.time()
        time.sleep(0.005)
    raise SystemExit(f"timeout waiting for {p}")

def monitor(home, host, *args):
    log = open(home + f"-monitor-{host}.log", "w")
    p = subprocess.Popen([os.path.join(B, "heartbeat-monitor"), "--home", home, *args],
                         env=env(host), stdout=subprocess.DEVNULL, stderr=log)
    end = time.time() + 120
    while "ready:" not in open(home + f"-monitor-{host}.log").read():
        if time.time() > end or p.poll() is not None:
            raise SystemExit("monitor did not start")
        time.sleep(0.05)
    return p

def fs(label, ra, rb):
    out = {}
    out["atomic write ms"], out["rename ms"], out["flock ms"] = raw(ra)
    h = init(ra, "spawn"); hb = h.replace(ra, rb, 1)
    out["spawn ms"], out["spawn /s"] = timed(lambda i: run(h if i % 2 == 0 else hb, "host-a", "spawn-worker", "--type", "build-worker"), N)
    wid = run(h, "host-a", "spawn-worker", "--type", "build-worker")
    out["heartbeat ms"], out["heartbeat /s"] = timed(lambda i: run(h if i % 2 == 0 else hb, "host-a", "heartbeat", wid, "--tokens-add", "1"), N)
    for i in range(N):
        run(h, "host-a", "task-queue", "enqueue", "--class", "q")
    out["claim ms"], out["claim /s"] = timed(lambda i: run(h if i % 2 == 0 else hb, "host-a", "task-queue", "claim", "--worker", "w", "--class", "q"), N)
    for i in range(N):
        run(h, "host-a", "task-queue", "enqueue", "--class", "r")
    t = time.perf_counter()
    run(h, "host-a", "task-queue", "work", "--worker", "w", "--class", "r", "--max-tasks", str(N), "--", "true")
    out["work tasks/s"] = N / (time.perf_counter() - t)
    # A local SIGKILL: the monitor's pidfd fires.
    hk = init(ra, "kill")
    m = monitor(hk, "host-a")
    det = []
    for _ in range(3):
        wid = run(hk, "host-a", "spawn-worker", "--type", "build-worker", "--", "sleep", "300")
        pid = 0
        while not pid:
            try: pid = json.load(open(spec_dir(hk, "active", wid))).get("pid") or 0
            except (OSError, ValueError): time.sleep(0.01)
        time.sleep(1.0)  # let the monitor open its pidfd
        t = time.time(); os.kill(pid, signal.SIGKILL)
        det.append((wait_file(spec_dir(hk, "zombie", wid)) - t) * 1000)
    m.kill(); m.wait()
    out["local SIGKILL -> zombie ms"] = statistics.median(det)
    # Another host's silence: a monitor on mount B (host-b) judges host-a's worker by age.
    hs = init(ra, "silence"); hsb = hs.replace(ra, rb, 1)
    z = 3.0
    m = monitor(hsb, "host-b", "--warning-seconds", "1", "--critical-seconds", "2", "--zombie-seconds", str(z))
    late = []
    for _ in range(2):
        wid = run(hs, "host-a", "spawn-worker", "--type", "build-worker")
        run(hs, "host-a", "heartbeat", wid)
        beat = json.load(open(spec_dir(hs, "active", wid)))["heartbeat"]["last_seen"]
        from datetime import datetime
        t_beat = datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()
        late.append((wait_file(spec_dir(hs, "zombie", wid)) - t_beat - z) * 1000)
    m.kill(); m.wait()
    out["other host silent -> zombie, ms after zombie_seconds"] = statistics.median(late)
    return out

loc = fs("ext4", LOCAL, LOCAL)
nfs = fs("nfs", A, BB)
print(f"{'figure (median)':<52} {'ext4':>10} {'nfs4.1':>10} {'nfs/ext4':>9}")
for k in loc:
    r = nfs[k] / loc[k] if loc[k] else float("nan")
    print(f"{k:<52} {loc[k]:>10.2f} {nfs[k]:>10.2f} {r:>8.2f}x")
PY
scripts/nfs run 3600 <<EOF
python3 "$drv" "$BENCH_BIN" "${BENCH_NFS_N:-20}" "$D/export/bench-local" "$D/a/bench-nfs" "$D/b/bench-nfs" | sed 's/^/nfs: /'
rm -rf "$D/a/bench-nfs" "$D/export/bench-local"
EOF
