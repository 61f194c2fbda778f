//! corral on a real NFSv4.1 server (issue 11): each guarantee of a local home, tested with
//! one home seen through two mounts that stand for two hosts (`CORRAL_HOST`, and a pid
//! namespace of its own where the test is about hosts). Run by `scripts/nfs test` inside the
//! User-Mode Linux guest that serves the export; elsewhere each test returns at once (see
//! `support::nfs`). Processes cost 50-300 ms each in the guest, so loops stay small.
//!
//! Tests whose fix lives in code this suite does not own are `#[ignore]`d with the file and
//! function that must change; `scripts/nfs test '' --include-ignored` shows their failures.

use crate::support::nfs::{Host, HostMonitor, NfsScene};
use crate::support::procs::{alive, signal, signal_group, Reaper};
use crate::support::{run_with_timeout, stderr, stdout, wait_until};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};
use Host::{A, B};

/// Generous: the guest has one slow CPU.
const T: Duration = Duration::from_secs(60);

/// Spawns a worker on host `h` launched with `cmd`; returns its id and pid.
fn launch(s: &NfsScene, h: Host, cmd: &[&str]) -> (String, i32) {
    let mut args = vec!["--type", "build-worker", "--"];
    args.extend_from_slice(cmd);
    let id = s.ok(h, "spawn-worker", &args);
    let mut pid = 0;
    wait_until(T, || {
        pid = s
            .dirs_of(&id)
            .first()
            .map(|d| s.spec(d, &id)["process"]["pid"].as_i64().unwrap_or(0) as i32)
            .unwrap_or(0);
        pid > 0
    });
    assert!(pid > 0, "{id} has no pid\n{}", s.tree());
    (id, pid)
}

/// Starts a long-running corral command on host `h` in its own process group (killed by
/// the reaper at the end).
fn start(s: &NfsScene, r: &Reaper, h: Host, name: &str, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let child = s
        .cmd(h, name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    r.group(child.id() as i32);
    child
}

/// Like [`start`], with stdout and stderr in `log` (for failure reports).
fn start_logged(
    s: &NfsScene,
    r: &Reaper,
    h: Host,
    name: &str,
    args: &[&str],
    log: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::create(log).expect("log file");
    let child = s
        .cmd(h, name)
        .args(args)
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    r.group(child.id() as i32);
    child
}

fn wait_child(mut c: std::process::Child, timeout: Duration) -> Option<std::process::Output> {
    let ok = wait_until(timeout, || c.try_wait().ok().flatten().is_some());
    ok.then(|| c.wait_with_output().expect("output"))
}

/// A lock held through mount A is seen through mount B: the liveness lock (DESIGN §6 S1)
/// works on NFS, where flock is emulated with byte-range locks and an exclusive one needs a
/// descriptor open for writing.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn liveness_lock_is_seen_across_mounts() {
    let s = NfsScene::new(1_000_000);
    let rel = ".locks/alive/w-lock.lock";
    let path_a = s.coord(A).join(rel);
    std::fs::create_dir_all(path_a.parent().unwrap()).unwrap();
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path_a)
        .unwrap();
    holder.lock().expect("an exclusive lock through mount A");
    let path_b = s.coord(B).join(rel);
    assert!(
        !corral::process::alive_lock_free(&path_b).expect("probe the liveness lock on NFS"),
        "the lock held through mount A must be seen through mount B"
    );
    drop(holder);
    assert!(wait_until(T, || corral::process::alive_lock_free(&path_b)
        .unwrap_or(false)));
}

/// A worker whose only liveness signal is its lock (held by `heartbeat --loop --hold-lock`)
/// is declared gone when the lock holder is SIGKILLed.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn a_sigkilled_lock_only_worker_is_detected() {
    let s = NfsScene::new(1_000_000);
    let r = Reaper::default();
    let id = s.ok(A, "spawn-worker", &["--type", "build-worker"]);
    let mut target = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep");
    r.add(target.id() as i32);
    let loop_ = start(
        &s,
        &r,
        A,
        "heartbeat",
        &[
            &id,
            "--loop",
            "--pid",
            &target.id().to_string(),
            "--interval",
            "1",
            "--hold-lock",
        ],
    );
    let lock_b = s.coord(B).join(format!(".locks/alive/{id}.lock"));
    assert!(
        wait_until(T, || matches!(
            corral::process::alive_lock_free(&lock_b),
            Ok(false)
        )),
        "the heartbeat loop never held the liveness lock: {:?}",
        corral::process::alive_lock_free(&lock_b)
    );
    let m = HostMonitor::start(&s, A, false, &["--poll-interval", "0.5"]);
    assert_eq!(s.dirs_of(&id), ["active"], "a held lock means alive");
    let loop_pid = loop_.id() as i32;
    r.keep(loop_);
    signal_group(loop_pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}\n{}",
        m.stderr(),
        s.tree()
    );
    let _ = target.kill();
    let _ = target.wait();
}

/// A launched worker SIGKILLed on this host is detected within the poll interval (its pidfd
/// fires; NFS changes nothing about local processes).
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn a_sigkilled_local_worker_is_detected() {
    let s = NfsScene::new(1_000_000);
    let r = Reaper::default();
    let m = HostMonitor::start(&s, A, false, &["--poll-interval", "0.5"]);
    let (id, pid) = launch(&s, A, &["sleep", "300"]);
    r.add(pid);
    let t0 = Instant::now();
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}\n{}",
        m.stderr(),
        s.tree()
    );
    eprintln!("local SIGKILL detected in {:?}", t0.elapsed());
    let spec = s.spec("zombie", &id);
    assert_eq!(spec["status"], "failed", "{spec:#}");
}

/// Host B's monitor (its own pid namespace: host A's pids mean nothing there) judges host
/// A's worker by heartbeat age alone: alive while A beats, a zombie once A falls silent past
/// `zombie_seconds`, and never signalled: the worker process is still running afterwards.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn another_hosts_worker_is_judged_by_heartbeat_age_and_never_signalled() {
    let s = NfsScene::new(1_000_000);
    let r = Reaper::default();
    let (id, pid) = launch(&s, A, &["sleep", "300"]);
    r.add(pid);
    let beats_log = s.dir_a.join("beats.log");
    let beats = start_logged(
        &s,
        &r,
        A,
        "heartbeat",
        &[
            &id,
            "--loop",
            "--pid",
            &pid.to_string(),
            "--interval",
            "0.5",
        ],
        &beats_log,
    );
    let beating = || std::fs::read_to_string(&beats_log).unwrap_or_default();
    // Host B's monitor starts once host A's beats are on the server.
    assert!(
        wait_until(T, || s
            .dirs_of(&id)
            .first()
            .is_some_and(|d| s.spec(d, &id)["status"] == "running")),
        "no beat from host A\n{}\n{}",
        beating(),
        s.tree()
    );
    let m = HostMonitor::start(
        &s,
        B,
        true,
        &[
            "--poll-interval",
            "0.5",
            "--warning-seconds",
            "3",
            "--critical-seconds",
            "5",
            "--zombie-seconds",
            "8",
        ],
    );
    // Twice zombie_seconds of beats from A: B must keep the worker (the beats keep it fresh).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(16) {
        assert_eq!(
            s.dirs_of(&id),
            ["active"],
            "B judged a beating worker of A\n{}\n--- beats\n{}",
            m.stderr(),
            beating()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let beats_pid = beats.id() as i32;
    r.keep(beats);
    signal_group(beats_pid, libc::SIGKILL);
    let silent = Instant::now();
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}\n{}",
        m.stderr(),
        s.tree()
    );
    eprintln!(
        "another host's silence detected after {:?} (zombie_seconds 8)",
        silent.elapsed()
    );
    assert!(alive(pid), "host B signalled host A's worker");
    let spec = s.spec("zombie", &id);
    assert_eq!(spec["process"]["host"], "host-a", "{spec:#}");
}

/// `claim --wait` on host B sees an enqueue made on host A within the poll interval
/// (inotify sees only local changes on NFS).
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn claim_wait_sees_another_hosts_enqueue() {
    let mut s = NfsScene::new(1_000_000);
    s.set_env("CORRAL_POLL_INTERVAL", "0.5");
    let r = Reaper::default();
    let claim = start(
        &s,
        &r,
        B,
        "task-queue",
        &["claim", "--worker", "wb", "--class", "c", "--wait", "30"],
    );
    // Let the claim start waiting (the guest is slow), then enqueue from the other host.
    std::thread::sleep(Duration::from_secs(3));
    let task = s.ok(A, "task-queue", &["enqueue", "--class", "c"]);
    let t0 = Instant::now();
    let out = wait_child(claim, Duration::from_secs(60)).expect("claim --wait ended");
    eprintln!("claim --wait on B saw A's enqueue after {:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got: Value = serde_json::from_str(&stdout(&out)).expect("task JSON");
    assert_eq!(got["task_id"], task.as_str());
}

/// `task-queue work` on host B picks up a task host A enqueued while it was idle.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn work_sees_another_hosts_enqueue() {
    let mut s = NfsScene::new(1_000_000);
    s.set_env("CORRAL_POLL_INTERVAL", "0.5");
    let r = Reaper::default();
    let work = start(
        &s,
        &r,
        B,
        "task-queue",
        &[
            "work",
            "--worker",
            "wb",
            "--class",
            "c",
            "--max-tasks",
            "1",
            "--idle-exit",
            "30",
            "--lease",
            "60",
            "--",
            "true",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let task = s.ok(A, "task-queue", &["enqueue", "--class", "c"]);
    let out = wait_child(work, Duration::from_secs(60)).expect("work ended");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.names_in("tasks/completed"), [task]);
}

/// Runs `n` copies of a command on host `h`, one after the other; returns the failures.
fn repeat(s: &NfsScene, h: Host, n: usize, name: &str, args: &[&str]) -> Vec<String> {
    (0..n)
        .filter_map(|_| {
            let out = run_with_timeout(s.cmd(h, name).args(args), Duration::from_secs(120));
            (!out.status.success()).then(|| {
                format!(
                    "{} exit {:?}: {}",
                    h.name(),
                    out.status.code(),
                    stderr(&out).trim()
                )
            })
        })
        .collect()
}

/// Acknowledged updates are never lost: `heartbeat --tokens-add 1` from two processes on each
/// mount at once all succeed and sum exactly. (A read of a name the other mount has replaced
/// can fail with ESTALE or find the old file: see
/// `guarded_reads_see_the_latest_file_the_other_mount_put_in_place`. The spec path is looked
/// up under the worker lock before it is opened, and a path lookup that meets a stale handle
/// is retried by the kernel; this test keeps that so.)
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn heartbeats_from_both_mounts_sum_exactly() {
    let s = NfsScene::new(1_000_000);
    let id = s.ok(A, "spawn-worker", &["--type", "build-worker"]);
    let n = 12;
    let failures: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = [A, B, A, B]
            .into_iter()
            .map(|h| {
                let (s, id) = (&s, &id);
                sc.spawn(move || repeat(s, h, n, "heartbeat", &[id, "--tokens-add", "1"]))
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "failed beats: {failures:#?}");
    let spec = s.spec("active", &id);
    assert_eq!(spec["token_budget"]["used"], json!(4 * n), "{spec:#}");
}

/// The budget is exact under concurrent spawns from both mounts (two spawners on each):
/// every spawn succeeds and `used` is the sum of the allocations; `recalc-budget --check`
/// finds no drift from either host.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn spawns_from_both_mounts_keep_the_budget_exact() {
    let s = NfsScene::new(1_000_000);
    let n = 8;
    let failures: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = [A, B, A, B]
            .into_iter()
            .map(|h| {
                let s = &s;
                sc.spawn(move || {
                    repeat(
                        s,
                        h,
                        n,
                        "spawn-worker",
                        &["--type", "build-worker", "--tokens", "100"],
                    )
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "failed spawns: {failures:#?}");
    assert_eq!(s.names_in("worker-specs/active").len(), 4 * n);
    assert_eq!(s.budget()["used"], json!(4 * n * 100), "{}", s.budget());
    s.code(A, "recalc-budget", &["--check"], 0);
    s.code(B, "recalc-budget", &["--check"], 0);
}

/// The queue is exactly once with claimers on both mounts and a claimer SIGKILLed in the
/// middle of a task: its claim is requeued when its lease expires, every task is completed
/// once, none is lost or completed twice.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn queue_is_exactly_once_with_claimers_on_both_mounts_and_a_sigkill() {
    let s = NfsScene::new(1_000_000);
    let r = Reaper::default();
    let n = 12;
    let tasks: BTreeSet<String> = (0..n)
        .map(|i| {
            let h = if i % 2 == 0 { A } else { B };
            s.ok(h, "task-queue", &["enqueue", "--class", "q"])
        })
        .collect();
    assert_eq!(tasks.len(), n);
    let work = |h: Host, w: &str, idle: &str, handler: &str| {
        start(
            &s,
            &r,
            h,
            "task-queue",
            &[
                "work",
                "--worker",
                w,
                "--class",
                "q",
                "--lease",
                "3",
                "--idle-exit",
                idle,
                "--heartbeat-interval",
                "1",
                "--",
                "sh",
                "-c",
                handler,
            ],
        )
    };
    // The victim claims one task and hangs in it; it is SIGKILLed with its handler.
    let victim = work(B, "victim", "60", "cat >/dev/null; sleep 300");
    // Killed once its claim is recorded (a claimer killed between the rename and the record
    // is requeued only after stuck_task_seconds, by design).
    let recorded = || {
        s.names_in("tasks/processing").iter().any(|t| {
            let p = s
                .coord(A)
                .join("tasks/processing")
                .join(format!("{t}.json"));
            corral::netfs::retry_estale(&p, || std::fs::read(&p))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["claimed_by"] == "victim")
        })
    };
    assert!(
        wait_until(T, recorded),
        "the victim never recorded a claim\n{}",
        s.tree()
    );
    let victim_pid = victim.id() as i32;
    r.keep(victim);
    signal_group(victim_pid, libc::SIGKILL);
    let m = HostMonitor::start(&s, A, false, &["--poll-interval", "0.5"]);
    // The work loops stay idle long enough for the victim's task to come back: the
    // monitor's first pass sees its lease and runs the next one when the lease lapses (no
    // sooner than 1 % of a core allows: a pass costs ~150 ms in the guest, so ~15 s). They
    // then exit when idle (exit 0).
    let a = work(A, "wa", "60", "cat >/dev/null");
    let b = work(B, "wb", "60", "cat >/dev/null");
    let done = wait_until(Duration::from_secs(150), || {
        s.names_in("tasks/completed").len() == n
    });
    let outs: Vec<_> = [a, b]
        .into_iter()
        .map(|c| wait_child(c, Duration::from_secs(200)).expect("work loop exits when idle"))
        .collect();
    let report = || {
        let processing: Vec<Value> = s
            .names_in("tasks/processing")
            .iter()
            .map(|t| {
                crate::support::read_json(
                    &s.coord(A)
                        .join("tasks/processing")
                        .join(format!("{t}.json")),
                )
            })
            .collect();
        format!(
            "processing: {processing:#?}\nwa: {}\nwb: {}\nmonitor: {}\n{}",
            stderr(&outs[0]),
            stderr(&outs[1]),
            m.stderr(),
            s.tree()
        )
    };
    assert!(done, "not all tasks completed\n{}", report());
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", report());
    }
    let completed: BTreeSet<String> = s.names_in("tasks/completed").into_iter().collect();
    assert_eq!(completed, tasks);
    for d in ["tasks/processing", "tasks/failed"] {
        assert!(s.names_in(d).is_empty(), "{d}\n{}", s.tree());
    }
    let events = s.events_of("task_completed");
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["task_id"].as_str())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a task completed twice: {ids:?}");
    assert_eq!(unique.len(), n);
    assert!(
        !s.events_of("task_requeued").is_empty(),
        "the victim's claim was requeued"
    );
}

/// A pending bucket another host emptied and removed reads as empty on this host, never as
/// a stale file handle: the listing, a claim, `list` and a `work` loop on B carry on.
/// Regression: a `work` loop on B died with "cannot list …/pending/q/2-…/099: Stale file
/// handle (os error 116)" when A's claimer retired the bucket B had listed.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn a_bucket_another_host_removed_reads_as_empty_not_as_a_stale_handle() {
    let s = NfsScene::new(1_000_000);
    let task = s.ok(A, "task-queue", &["enqueue", "--class", "q"]);
    let file_a = walkdir::WalkDir::new(s.coord(A).join("tasks/pending/q"))
        .into_iter()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains(task.as_str()))
        .expect("the task's pending file")
        .into_path();
    let bucket_a = file_a.parent().expect("bucket").to_path_buf();
    let rel = bucket_a.strip_prefix(s.coord(A)).expect("under the home");
    let bucket_b = s.coord(B).join(rel);
    // B reads the bucket: its client now holds the bucket's handle.
    let seen = corral::queue::layout::list_names(&bucket_b).expect("B lists the bucket");
    assert_eq!(seen.len(), 1, "{seen:?}");
    // A takes the task and removes the emptied bucket, as its claimer does once the
    // bucket is past its grace (the rmdir is done here so the test does not wait for it).
    s.ok(
        A,
        "task-queue",
        &["claim", "--worker", "wa", "--class", "q"],
    );
    std::fs::remove_dir(&bucket_a).expect("A removes the emptied bucket");
    assert_eq!(
        corral::queue::layout::list_names(&bucket_b).expect("B lists the removed bucket"),
        Vec::<String>::new()
    );
    // The race itself: B lists the bucket over and over, from several threads, while A
    // recreates and removes it. A removal between B's open of the directory and its read
    // is a stale handle there (about 1 listing in 20,000 in the guest, so many listings).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, bucket_b) = (stop.clone(), bucket_b.clone());
            std::thread::spawn(move || {
                let (mut runs, mut failures) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    runs += 1;
                    if let Err(e) = corral::queue::layout::list_names(&bucket_b) {
                        failures.push(e.to_string());
                    }
                }
                (runs, failures)
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut cycles = 0;
    while t0.elapsed() < Duration::from_secs(8) {
        std::fs::create_dir(&bucket_a).expect("A recreates the bucket");
        std::fs::remove_dir(&bucket_a).expect("A removes it");
        cycles += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut runs, mut failures) = (0, Vec::new());
    for l in listers {
        let (r, f) = l.join().expect("lister");
        runs += r;
        failures.extend(f);
    }
    eprintln!("B listed {runs} times while A removed the bucket {cycles} times");
    assert!(
        failures.is_empty(),
        "{} of {runs} listings failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // The same through the binaries on B, straight after.
    let again = s.ok(A, "task-queue", &["enqueue", "--class", "q"]);
    s.ok(B, "task-queue", &["list", "--class", "q"]);
    let out = s.code(
        B,
        "task-queue",
        &["claim", "--worker", "wb", "--class", "q"],
        0,
    );
    let got: Value = serde_json::from_str(&stdout(&out)).expect("task JSON");
    assert_eq!(got["task_id"], again.as_str());
    s.code(
        B,
        "task-queue",
        &["claim", "--worker", "wb", "--class", "q"],
        7,
    );
}

/// `corral doctor` and `recalc-budget` agree, from either host, after workers were spawned,
/// completed and failed through both mounts.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn doctor_and_recalc_budget_agree_across_hosts() {
    let s = NfsScene::new(1_000_000);
    let ids: Vec<String> = [A, A, B, B]
        .iter()
        .map(|&h| {
            s.ok(
                h,
                "spawn-worker",
                &["--type", "build-worker", "--tokens", "1000"],
            )
        })
        .collect();
    s.ok(B, "heartbeat", &[&ids[0], "--tokens-add", "10"]);
    s.ok(B, "heartbeat", &[&ids[0], "--complete"]);
    s.ok(A, "heartbeat", &[&ids[2], "--fail", "--error", "boom"]);
    for h in [A, B] {
        s.code(h, "recalc-budget", &["--check"], 0);
        s.code(h, "corral", &["doctor"], 0);
    }
    let b = s.budget();
    assert_eq!(b["used"], json!(3000), "{b}");
    assert_eq!(b["consumed"], json!(10), "{b}");
}

/// A heartbeat from host B right after host A moved the worker to `zombie/` is a conflict
/// (exit 5), not "does not exist" (3): B's cached "no such file" for `zombie/<id>` must not
/// hide the move.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn a_heartbeat_after_another_host_moved_the_worker_is_a_conflict() {
    let s = NfsScene::new(1_000_000);
    let id = s.ok(A, "spawn-worker", &["--type", "build-worker"]);
    // B looks the worker up (and so caches what it saw), then A moves it.
    s.ok(B, "heartbeat", &[&id]);
    let _ = std::fs::metadata(s.spec_path(B, "zombie", &id));
    s.ok(
        A,
        "heartbeat",
        &[&id, "--fail", "--error", "moved by host A"],
    );
    let out = s.run(B, "heartbeat", &[&id]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

/// A lock wait that exceeds `CORRAL_LOCK_TIMEOUT` on NFS exits 5, names the lock and says
/// another host may hold it (DESIGN §6 S4).
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn a_lock_wait_past_the_timeout_names_the_other_host() {
    let mut s = NfsScene::new(1_000_000);
    s.set_env("CORRAL_LOCK_TIMEOUT", "2");
    let lock_a = s.coord(A).join(".locks/budget.lock");
    std::fs::create_dir_all(lock_a.parent().unwrap()).unwrap();
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_a)
        .unwrap();
    holder.lock().expect("hold budget.lock through mount A");
    let out = run_with_timeout(
        s.cmd(B, "spawn-worker").args(["--type", "build-worker"]),
        Duration::from_secs(60),
    );
    drop(holder);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("budget.lock"), "{err}");
    assert!(err.contains("another host may hold it"), "{err}");
    assert!(
        s.names_in("worker-specs/active").is_empty(),
        "nothing written"
    );
}

/// The home is seen as a network filesystem from both mounts, so the monitor polls there
/// (`--print-config` says so) and waits know to poll.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn both_mounts_are_detected_as_network_filesystems() {
    let s = NfsScene::new(1_000_000);
    for h in [A, B] {
        assert_eq!(corral::netfs::network_fs(&s.coord(h)), Some("nfs"));
        assert!(corral::netfs::poll_interval(&s.coord(h)).is_some());
        let cfg: Value =
            serde_json::from_str(&s.ok(h, "heartbeat-monitor", &["--print-config"])).unwrap();
        let fs = cfg["filesystem"].as_str().unwrap_or_default();
        assert!(fs.starts_with("nfs"), "{cfg:#}");
        assert!(cfg["poll_interval_seconds"].as_f64().is_some(), "{cfg:#}");
    }
}

/// Reads of a file another mount keeps replacing by rename never fail and never return an
/// old version when they go through the library's guarded read: a stale name either fails
/// with ESTALE or leads to the old file (the server may still hold it open), whose link
/// count is 0; both are retried after revalidating the directory.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn guarded_reads_see_the_latest_file_the_other_mount_put_in_place() {
    let s = NfsScene::new(1_000_000);
    let dir_a = s.coord(A).join("estale");
    std::fs::create_dir_all(&dir_a).unwrap();
    let target_a = dir_a.join("counter");
    let target_b = s.coord(B).join("estale/counter");
    let write = |i: u32| {
        let tmp = dir_a.join("counter.tmp");
        std::fs::write(&tmp, i.to_string()).unwrap();
        std::fs::rename(&tmp, &target_a).unwrap();
    };
    write(0);
    let plain = |path: &std::path::Path| -> std::io::Result<u32> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        f.metadata()?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        Ok(text.trim().parse().unwrap_or(0))
    };
    let guarded = |path: &std::path::Path| -> u32 {
        let bytes = corral::store::read_guarded(path)
            .unwrap_or_else(|e| panic!("a guarded read failed: {:?}", e));
        String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(0)
    };
    let (mut plain_failures, mut plain_old) = (0, 0);
    for i in 1..=150 {
        // B reads (caching the name), A replaces it, B reads again.
        let _ = plain(&target_b);
        write(i);
        match plain(&target_b) {
            Err(_) => plain_failures += 1,
            Ok(v) if v != i => plain_old += 1,
            Ok(_) => {}
        }
        write(i + 1000);
        assert_eq!(
            guarded(&target_b),
            i + 1000,
            "a guarded read saw an old file"
        );
    }
    eprintln!(
        "plain reads of 150: {plain_failures} failed with ESTALE, {plain_old} returned an old \
         version; guarded reads: 0 of 150 failed or old"
    );
}

/// One monitor per home across hosts: the singleton lock is a flock on the shared home, so a
/// second `heartbeat-monitor` on host B is refused (exit 5) while host A's runs.
#[test]
#[ignore = "runs on NFS, in the guest: scripts/nfs test"]
fn one_monitor_per_home_across_hosts() {
    let s = NfsScene::new(1_000_000);
    let _m = HostMonitor::start(&s, A, false, &["--poll-interval", "0.5"]);
    let out = s.code(B, "heartbeat-monitor", &["--once"], 5);
    assert!(
        stderr(&out).contains("another heartbeat-monitor"),
        "{}",
        stderr(&out)
    );
}
