#!/usr/bin/env python3
"""The queue's scale figures, side by side with python-dirq (CERN's Directory::Queue in
Python), for scripts/bench.d/30-queue.sh.

For each queue length L (one class), corral's CLI is timed doing one enqueue, claim,
complete, fail and stats (median of K runs, each a new process), and python-dirq
(QueueSimple: time-named intermediate directories) is timed doing the same one-shot claim:
a new process that takes the first element (lock, get, remove). Growth factors are against
the first length. The fill itself is timed as corral's bulk enqueue.

usage: queue_scale.py --bin DIR --dir DIR --sizes 1000,100000,1000000 [--k 15]
prints "name value unit" lines.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

DIRQ_CLAIM = r"""
import sys, time
t0 = time.monotonic()
from dirq.QueueSimple import QueueSimple
q = QueueSimple(sys.argv[1])
got = None
for name in q:
    if q.lock(name):
        got = q.get(name)
        q.remove(name)
        break
t1 = time.monotonic()
print(f"{(t1 - t0) * 1000:.3f}" if got is not None else "none")
"""


def line(name, value, unit):
    print(f"{name} {value:.3f} {unit}" if isinstance(value, float) else f"{name} {value} {unit}", flush=True)


def run(cmd, env, stdin=None):
    return subprocess.run(cmd, env=env, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)


def timed(cmd, env):
    t = time.monotonic()
    p = run(cmd, env)
    return (time.monotonic() - t) * 1000.0, p


def median_ms(cmds, env):
    times, outs = [], []
    for c in cmds:
        ms, p = timed(c, env)
        if p.returncode != 0:
            sys.exit(f"error: {' '.join(c)} exited {p.returncode}: {p.stderr.decode()[:300]}")
        times.append(ms)
        outs.append(p.stdout)
    return statistics.median(times), outs


def fill_corral(tq, env, n):
    data = "".join(f'{{"n": {i}}}\n' for i in range(n)).encode()
    t = time.monotonic()
    p = run([tq, "enqueue", "--class", "bench", "--jsonl", "-"], env, stdin=data)
    took = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"error: bulk enqueue: {p.stderr.decode()[:300]}")
    return n / took


def fill_dirq(path, n):
    from dirq.QueueSimple import QueueSimple

    q = QueueSimple(path)
    t = time.monotonic()
    for i in range(n):
        q.add(json.dumps({"n": i}))
    return n / (time.monotonic() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--k", type=int, default=15)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s]
    tq = os.path.join(a.bin, "task-queue")
    corral = os.path.join(a.bin, "corral")
    try:
        import dirq  # noqa: F401
        have_dirq = True
    except ImportError:
        have_dirq = False
        print("queue.dirq.missing 1 flag", flush=True)
    # Fill every length first, then time the operations round-robin across lengths, so
    # the machine's load changes during the run weigh on every length alike.
    envs, dqs = {}, {}
    for n in sizes:
        home = os.path.join(a.dir, f"scale-{n}")
        shutil.rmtree(home, ignore_errors=True)
        env = dict(os.environ, CORRAL_HOME=home)
        env.pop("RUST_LOG", None)
        subprocess.run([corral, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        line(f"queue.cli.size{n}.bulk_enqueue_per_s", fill_corral(tq, env, n), "tasks/s")
        envs[n] = env
        if have_dirq:
            dq = os.path.join(a.dir, f"dirq-{n}")
            shutil.rmtree(dq, ignore_errors=True)
            line(f"queue.dirq.size{n}.fill_per_s", fill_dirq(dq, n), "elements/s")
            dqs[n] = dq
    times = {n: {} for n in sizes}

    def note(n, op, ms):
        times[n].setdefault(op, []).append(ms)

    def once(n, cmd):
        ms, p = timed(cmd, envs[n])
        if p.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} exited {p.returncode}: {p.stderr.decode()[:300]}")
        return ms, p.stdout

    for _ in range(a.k):
        for n in sizes:
            ms, _ = once(n, [tq, "enqueue", "--class", "bench", "--payload", '{"n": 1}'])
            note(n, "enqueue", ms)
            ids = []
            for _ in range(2):
                ms, out = once(n, [tq, "claim", "--worker", "bench-w", "--class", "bench", "--format", "jsonl"])
                note(n, "claim", ms)
                ids.append(json.loads(out)["task_id"])
            ms, _ = once(n, [tq, "complete", ids[0], "--worker", "bench-w"])
            note(n, "complete", ms)
            ms, _ = once(n, [tq, "fail", ids[1], "--worker", "bench-w", "--error", "bench"])
            note(n, "fail", ms)
            ms, _ = once(n, [tq, "stats", "--format", "json"])
            note(n, "stats", ms)
            if have_dirq:
                ms, p = timed([sys.executable, "-c", DIRQ_CLAIM, dqs[n]], os.environ)
                out = p.stdout.decode().strip()
                if p.returncode != 0 or out == "none":
                    sys.exit(f"error: dirq claim: {p.stderr.decode()[:300]}")
                note(n, "dirq_claim", ms)
                note(n, "dirq_claim_inside", float(out))
    base = {}
    for n in sizes:
        for op, v in times[n].items():
            ms = statistics.median(v)
            name = f"queue.cli.size{n}.{op}" if not op.startswith("dirq") else f"queue.dirq.size{n}.{op[5:]}"
            line(f"{name}_ms", ms, "ms")
            if op in base:
                line(f"{name}_growth", ms / base[op], "x")
            base.setdefault(op, ms)
    n = max(sizes)
    # Peak memory of listing every pending task of the largest queue (streamed), measured
    # by a wrapper whose only child is the list.
    wrapper = ("import resource, subprocess, sys, time; t = time.monotonic(); "
               "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
               "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", wrapper, tq, "list", "--state", "pending", "--format", "jsonl"],
                       env=envs[n], stdout=subprocess.PIPE, check=True)
    took, peak = p.stdout.decode().split()
    line(f"queue.cli.size{n}.list_seconds", float(took), "s")
    line(f"queue.cli.size{n}.list_peak_rss_mib", int(peak) / 1024.0, "MiB")
    for n in sizes:
        shutil.rmtree(os.path.join(a.dir, f"scale-{n}"), ignore_errors=True)
        if n in dqs:
            shutil.rmtree(dqs[n], ignore_errors=True)


if __name__ == "__main__":
    main()
