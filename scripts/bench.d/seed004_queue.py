#!/usr/bin/env python3
"""Seed 004's claim loop, reproduced for comparison (python3 stdlib only).

Every claim globs the whole pending queue, sorts it, and for each candidate takes an
exclusive flock on a `<task>.json.lock` sidecar (FileLock in the seed), checks the task is
still there, moves it to processing/, and leaves the .lock file behind. corral replaces this
with one rename(2) per claim; scripts/bench.d/30-queue.sh compares the two.

usage: seed004_queue.py --tasks N --claimers K --dir DIR
prints: seed004.claim_per_s_<K>_claimers <rate> claims/s
        seed004.lock_files_left <n> files
"""
import argparse
import fcntl
import glob
import json
import multiprocessing
import os
import shutil
import time
import uuid


def claim_task(pending, processing, name):
    candidates = sorted(glob.glob(os.path.join(pending, "*.json")))
    if not candidates:
        return None
    for task_file in candidates:
        lock_path = task_file + ".lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.path.exists(task_file):
                continue  # lost race: claimed by another worker
            with open(task_file) as f:
                task = json.load(f)
            task["assigned_to"] = name
            task["started_at"] = time.time()
            out = os.path.join(processing, os.path.basename(task_file))
            with open(out, "w") as f:
                json.dump(task, f)
            os.unlink(task_file)
            return task
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return None


def worker(pending, processing, name, counter):
    n = 0
    while claim_task(pending, processing, name) is not None:
        n += 1
    with counter.get_lock():
        counter.value += n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--claimers", type=int, default=4)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    base = os.path.join(a.dir, "seed004")
    shutil.rmtree(base, ignore_errors=True)
    pending = os.path.join(base, "pending")
    processing = os.path.join(base, "processing")
    os.makedirs(pending)
    os.makedirs(processing)
    for i in range(a.tasks):
        tid = str(uuid.uuid4())
        with open(os.path.join(pending, f"{tid}.json"), "w") as f:
            json.dump({"task_id": tid, "class": "llm", "n": i}, f)
    counter = multiprocessing.Value("i", 0)
    procs = [
        multiprocessing.Process(target=worker, args=(pending, processing, f"w{k}", counter))
        for k in range(a.claimers)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    took = time.monotonic() - t0
    claimed = counter.value
    if claimed != a.tasks or len(os.listdir(processing)) != a.tasks:
        raise SystemExit(f"seed004: claimed {claimed} of {a.tasks}")
    print(f"seed004.claim_per_s_{a.claimers}_claimers {claimed / took:.1f} claims/s")
    left = len(glob.glob(os.path.join(pending, "*.lock")))
    print(f"seed004.lock_files_left {left} files")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
