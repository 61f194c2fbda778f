//! The task queue, tried with real `task-queue` processes: races between many claimers,
//! SIGKILL at random moments, a dead worker's task recovered by `queue::maintain`, priority
//! and class order, `--wait` wake-ups, bad input, and the ownership rules.

use crate::support::procs::*;
use crate::support::queue::{enqueue, home_of, json_files_under, spawn_worker, tasks};
use crate::support::{read_json, stderr, stdout, wait_until, Scene};
use corral::home::Home;
use corral::policy::HeartbeatPolicy;
use corral::queue::{self, Claimer};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every task id in the home, with the places it was found: pending names and the files
/// of processing/, completed/, failed/.
fn census(s: &Scene) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let pend = tasks(s).join("pending");
    for f in walkdir::WalkDir::new(&pend).into_iter().flatten() {
        if !f.file_type().is_file() {
            continue;
        }
        let n = f.file_name().to_string_lossy().into_owned();
        if let Some(p) = queue::parse_pending_name(&n) {
            let class = f
                .path()
                .strip_prefix(&pend)
                .unwrap()
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            out.entry(p.task_id.to_string())
                .or_default()
                .push(format!("pending/{class}"));
        }
    }
    for st in ["processing", "completed", "failed", "cancelled", "deferred"] {
        for f in std::fs::read_dir(tasks(s).join(st)).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            if let Some(id) = n.strip_suffix(".json") {
                out.entry(id.to_string()).or_default().push(st.to_string());
            }
        }
    }
    out
}

fn assert_each_once(s: &Scene, c: &BTreeMap<String, Vec<String>>) {
    let dup: Vec<_> = c.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(dup.is_empty(), "tasks in two places: {dup:?}\n{}", s.tree());
}

fn files_in(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count()
}

/// The pending task files of a class, in claim order (`find … | sort`).
fn pending_files(s: &Scene, class: &str) -> Vec<PathBuf> {
    json_files_under(&tasks(s).join("pending").join(class))
}

/// Enqueues in bulk (one payload or task object per line): fast test set-up.
fn bulk(h: &Home, class: &str, lines: &str) -> Vec<String> {
    let opts = queue::BulkOptions {
        class: class.into(),
        priority: corral::spec::Priority::Medium,
        max_attempts: None,
        not_before: None,
        timeout_seconds: None,
    };
    let mut ids = Vec::new();
    queue::enqueue_bulk(h, lines.as_bytes(), &opts, |t| {
        ids.push(t.task_id.clone());
        Ok(())
    })
    .unwrap();
    ids
}

fn claim_json(s: &Scene, args: &[&str]) -> Value {
    let mut a = vec!["claim"];
    a.extend_from_slice(args);
    serde_json::from_str(&s.ok("task-queue", &a)).expect("claim prints JSON")
}

#[test]
fn enqueue_claim_complete_round_trip_with_events() {
    let s = Scene::new();
    let id = enqueue(
        &s,
        &[
            "--class",
            "llm",
            "--priority",
            "high",
            "--name",
            "topics",
            "--payload",
            r#"{"doc": 7}"#,
        ],
    );
    let pend: Vec<String> = pending_files(&s, "llm")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pend.len(), 1);
    let p = queue::parse_pending_name(&pend[0]).expect("pending name format");
    assert_eq!((p.prio, p.task_id), (1, id.as_str()));
    assert!(pend[0].starts_with("1-") && pend[0].len() == format!("1-{:020}-{id}.json", 0).len());

    let t = claim_json(&s, &["--worker", "script-a"]);
    assert_eq!(t["task_id"], id.as_str());
    assert_eq!(t["payload"]["doc"], 7);
    assert_eq!(t["claimed_by"], "script-a");
    assert_eq!(t["attempts"], 1);
    assert_eq!(t["state"], "processing");
    assert!(t["claimed_at"].is_string() && t["lease_expires_at"].is_string());
    assert_eq!(files_in(&tasks(&s).join("pending/llm")), 0);
    let on_disk = read_json(&tasks(&s).join(format!("processing/{id}.json")));
    assert_eq!(on_disk["claimed_by"], "script-a");

    // Only the claimant may complete.
    let o = s.code("task-queue", &["complete", &id, "--worker", "intruder"], 5);
    assert!(stderr(&o).contains("claimed by script-a"), "{}", stderr(&o));
    s.code("task-queue", &["complete", &id], 5);
    assert_eq!(
        s.ok(
            "task-queue",
            &[
                "complete",
                &id,
                "--worker",
                "script-a",
                "--result",
                r#"{"pages": 3}"#
            ]
        )
        .trim(),
        "completed"
    );
    let done = read_json(&tasks(&s).join(format!("completed/{id}.json")));
    assert_eq!(done["result"]["pages"], 3);
    assert_eq!(done["state"], "completed");
    assert_eq!(census(&s)[&id], vec!["completed"]);
    // Completing twice is a conflict, an unknown task is not found.
    s.code("task-queue", &["complete", &id, "--worker", "script-a"], 5);
    s.code("task-queue", &["complete", "no-such-task", "--force"], 3);
    s.code("task-queue", &["show", "no-such-task"], 3);
    s.code("task-queue", &["fail", "no-such-task", "--force"], 3);
    let shown: Value = serde_json::from_str(&s.ok("task-queue", &["show", &id])).unwrap();
    assert_eq!(shown["state"], "completed");

    for kind in ["task_enqueued", "task_claimed", "task_completed"] {
        let evs = s.events_of(kind);
        assert_eq!(evs.len(), 1, "{kind}");
        assert_eq!(evs[0]["task_id"], id.as_str());
    }
    assert_eq!(s.events_of("task_claimed")[0]["worker_id"], "script-a");
    // No lock file per task: only the fixed stripes.
    let locks: Vec<String> = std::fs::read_dir(s.coord().join(".locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&id))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
}

#[test]
fn bad_payload_is_exit_6_and_writes_nothing_duplicate_id_is_5() {
    let s = Scene::new();
    let o = s.code(
        "task-queue",
        &["enqueue", "--class", "c", "--payload", "{not json"],
        6,
    );
    assert!(stderr(&o).contains("not valid JSON"), "{}", stderr(&o));
    let o = s.run_stdin(
        "task-queue",
        &["enqueue", "--class", "c", "--payload-file", "-"],
        b"[1, 2",
    );
    s.expect_code("task-queue", &[], &o, 6);
    s.code(
        "task-queue",
        &["enqueue", "--class", "../etc", "--payload", "1"],
        6,
    );
    s.code("task-queue", &["enqueue", "--class", "c", "--id", "a/b"], 6);
    s.code(
        "task-queue",
        &["enqueue", "--class", "c", "--max-attempts", "0"],
        6,
    );
    assert!(census(&s).is_empty(), "{}", s.tree());
    assert_eq!(files_in(&s.coord().join(".tmp")), 0);
    assert!(s.events_of("task_enqueued").is_empty());

    let o = s.run_stdin(
        "task-queue",
        &[
            "enqueue",
            "--class",
            "c",
            "--id",
            "job-1",
            "--payload-file",
            "-",
        ],
        b"{\"x\": 1}",
    );
    s.expect_code("task-queue", &[], &o, 0);
    assert_eq!(stdout(&o), "job-1");
    // The same id, in any state and any class, is a conflict.
    s.code(
        "task-queue",
        &["enqueue", "--class", "other", "--id", "job-1"],
        5,
    );
    claim_json(&s, &["--worker", "w"]);
    s.code(
        "task-queue",
        &["enqueue", "--class", "c", "--id", "job-1"],
        5,
    );
    assert_eq!(census(&s).len(), 1);
}

#[test]
fn empty_queue_is_exit_7_and_wait_times_out_with_7() {
    let s = Scene::new();
    let o = s.code("task-queue", &["claim", "--worker", "w"], 7);
    assert!(stdout(&o).is_empty());
    let t0 = Instant::now();
    s.code(
        "task-queue",
        &["claim", "--worker", "w", "--class", "x", "--wait", "0.3"],
        7,
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A task of another class is not claimed by a class-restricted claimer.
    enqueue(&s, &["--class", "y"]);
    s.code("task-queue", &["claim", "--worker", "w", "--class", "x"], 7);
}

#[test]
fn priorities_then_fifo_and_class_preference_hold() {
    let s = Scene::new();
    let low = enqueue(&s, &["--class", "cpu", "--priority", "low"]);
    let med1 = enqueue(&s, &["--class", "cpu"]);
    let med2 = enqueue(&s, &["--class", "cpu", "--priority", "2"]);
    let crit = enqueue(&s, &["--class", "cpu", "--priority", "critical"]);
    let llm = enqueue(&s, &["--class", "llm", "--priority", "critical"]);
    let res = enqueue(&s, &["--class", "resource", "--priority", "low"]);
    // Preference order beats priority across classes.
    let order: Vec<String> = (0..6)
        .map(|_| {
            claim_json(
                &s,
                &["--worker", "w", "--class", "resource", "--class", "cpu,llm"],
            )["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, vec![res, crit, med1, med2, low, llm]);

    // Without --class: priority across all classes, then age.
    let a = enqueue(&s, &["--class", "a", "--priority", "low"]);
    let b = enqueue(&s, &["--class", "b", "--priority", "high"]);
    let c = enqueue(&s, &["--class", "c", "--priority", "high"]);
    let got: Vec<String> = (0..3)
        .map(|_| {
            claim_json(&s, &["--worker", "w"])["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, vec![b, c, a]);
}

#[test]
fn wait_wakes_within_milliseconds_of_an_enqueue() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let mut c = s.cmd("task-queue");
    // No polling: only inotify can wake the waiter before its 60 s are up.
    c.args([
        "claim",
        "--worker",
        "waiter",
        "--class",
        "late",
        "--wait",
        "60",
        "--poll-interval",
        "0",
        "--format",
        "jsonl",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = reaper.spawn(&mut c);
    // The waiter is asleep on inotify (the class dir does not even exist yet) before the
    // enqueue, so the wake is what is tested, not the first look.
    let pid = child.id() as i32;
    assert!(wait_until(Duration::from_secs(30), || inotify_watches(pid) > 0));
    let id = enqueue(&s, &["--class", "late"]);
    let out = crate::support::child_output_within(child, Duration::from_secs(90), "waiter");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["task_id"], id.as_str());
    // How fast the wake is, is measured by scripts/bench, not asserted here: a loaded CI
    // machine would make any bound flaky. Well under the wait proves it was not a timeout.
    let enq = &s.events_of("task_enqueued")[0]["timestamp"];
    let clm = &s.events_of("task_claimed")[0]["timestamp"];
    let ms = |v: &Value| {
        corral::time::parse(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    assert!(ms(clm) - ms(enq) < 30_000, "enqueue {enq} → claim {clm}");
}

#[test]
fn fail_retries_then_dead_letters_and_requeue_revives() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "c", "--max-attempts", "2"]);
    claim_json(&s, &["--worker", "w"]);
    let o = s.ok(
        "task-queue",
        &["fail", &id, "--worker", "w", "--error", "boom"],
    );
    assert_eq!(o.trim(), "pending");
    let again = claim_json(&s, &["--worker", "w2"]);
    assert_eq!(
        (again["task_id"].as_str(), again["attempts"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(again["error"], "boom");
    s.code("task-queue", &["fail", &id, "--worker", "w"], 5);
    assert_eq!(
        s.ok(
            "task-queue",
            &["fail", &id, "--worker", "w2", "--error", "boom2"]
        )
        .trim(),
        "failed"
    );
    let dead = read_json(&tasks(&s).join(format!("failed/{id}.json")));
    assert_eq!(
        (dead["state"].as_str(), dead["error"].as_str()),
        (Some("failed"), Some("boom2"))
    );
    assert_eq!(s.events_of("task_failed").len(), 2);
    assert_eq!(s.events_of("task_dead_lettered").len(), 1);
    s.code("task-queue", &["claim", "--worker", "w"], 7);

    assert_eq!(s.ok("task-queue", &["requeue", &id]).trim(), "pending");
    let t = claim_json(&s, &["--worker", "w3"]);
    assert_eq!(t["attempts"], 1);
    // --no-retry dead-letters at once; --force lets an operator act for the claimant.
    s.ok("task-queue", &["fail", &id, "--force", "--no-retry"]);
    assert_eq!(census(&s)[&id], vec!["failed"]);
    assert_eq!(s.events_of("task_requeued").len(), 1);
}

#[test]
fn list_and_stats_report_the_queue() {
    let s = Scene::new();
    for _ in 0..3 {
        enqueue(&s, &["--class", "llm"]);
    }
    enqueue(&s, &["--class", "cpu", "--name", "resize"]);
    let t = claim_json(&s, &["--worker", "w1", "--class", "cpu"]);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(st["counts"]["pending"]["llm"], 3);
    assert_eq!(st["counts"]["processing"]["cpu"], 1);
    assert_eq!(st["totals"]["pending"], 3);
    assert_eq!(st["processing_by_worker"]["w1"], 1);
    assert_eq!(st["stuck"], 0);
    assert!(st["oldest_pending_seconds"].as_f64().unwrap() >= 0.0);
    let table = s.ok("task-queue", &["stats"]);
    assert!(table.contains("processing per worker: w1:1"), "{table}");
    let l: Value = serde_json::from_str(&s.ok(
        "task-queue",
        &["list", "--state", "processing", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["task_id"], t["task_id"]);
    let all = s.ok("task-queue", &["list"]);
    assert_eq!(all.lines().count(), 5, "{all}");
    assert!(all.contains("resize"));
    s.code("task-queue", &["list", "--state", "weird"], 2);
}

/// 10,000 tasks, 8 claimer threads in one process (the library's `Claimer`, with the
/// inotify-fed listing cache): each task claimed exactly once, none lost.
#[test]
fn ten_thousand_tasks_eight_threads_each_claimed_once() {
    let s = Scene::new();
    let h = home_of(&s);
    const N: usize = 10_000;
    let mut ids = HashSet::new();
    for (class, first) in [("a", 0), ("b", 1)] {
        let lines: String = (first..N)
            .step_by(2)
            .map(|i| {
                let p = ["critical", "high", "medium", "low"][i % 4];
                format!("{{\"payload\": {i}, \"priority\": \"{p}\"}}\n")
            })
            .collect();
        ids.extend(bulk(&h, class, &lines));
    }
    assert_eq!(ids.len(), N);
    let claimed = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|sc| {
        for w in 0..8 {
            let h = h.clone();
            let claimed = claimed.clone();
            sc.spawn(move || {
                let classes: Vec<String> = if w % 2 == 0 {
                    vec![]
                } else {
                    vec!["b".into(), "a".into()]
                };
                let mut c = Claimer::new(&h, &format!("t{w}"), &classes, 600.0).unwrap();
                c.watch().unwrap();
                let mut mine = Vec::new();
                while let Some(t) = c.try_claim().unwrap() {
                    assert_eq!(t.claimed_by.as_deref(), Some(format!("t{w}").as_str()));
                    mine.push(t.task_id);
                }
                claimed.lock().unwrap().extend(mine);
            });
        }
    });
    let claimed = claimed.lock().unwrap();
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), N, "some task was claimed twice or lost");
    assert_eq!(unique.len(), N);
    assert!(claimed.iter().all(|i| ids.contains(i)));
    assert_eq!(files_in(&tasks(&s).join("processing")), N);
    let c = census(&s);
    assert_eq!(c.len(), N);
    assert_each_once(&s, &c);
}

/// 8 real `task-queue claim` processes racing over 1,200 tasks.
#[test]
fn eight_claimer_processes_claim_each_task_exactly_once() {
    let s = Scene::new();
    let h = home_of(&s);
    const N: usize = 1_200;
    bulk(&h, "k", &"{}\n".repeat(N));
    let got = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|sc| {
        for w in 0..8 {
            let got = got.clone();
            let s = &s;
            sc.spawn(move || loop {
                let worker = format!("p{w}");
                let o = s.run(
                    "task-queue",
                    &["claim", "--worker", &worker, "--format", "jsonl"],
                );
                match o.status.code() {
                    Some(0) => {
                        let t: Value = serde_json::from_slice(&o.stdout).unwrap();
                        assert_eq!(t["claimed_by"], worker.as_str());
                        got.lock()
                            .unwrap()
                            .push(t["task_id"].as_str().unwrap().to_string());
                    }
                    Some(7) => break,
                    other => panic!("claim exited {other:?}: {}", stderr(&o)),
                }
            });
        }
    });
    let got = got.lock().unwrap();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!((got.len(), unique.len()), (N, N));
    assert_eq!(s.events_of("task_claimed").len(), N);
    assert_each_once(&s, &census(&s));
}

/// Enqueuers and claimers SIGKILLed at random moments: afterwards every task is in exactly
/// one place, no file is torn, every acknowledged enqueue is present, and after the
/// monitor's pass (leases expired) everything can be drained exactly once.
#[test]
fn sigkill_of_claimers_and_enqueuers_loses_nothing() {
    let s = Scene::new();
    let h = home_of(&s);
    bulk(&h, "k", &"{}\n".repeat(300));
    let reaper = Reaper::default();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    for round in 0..60 {
        let mut kids: Vec<(Child, Option<String>)> = Vec::new();
        for j in 0..2 {
            let id = format!("e{round}-{j}");
            let mut c = s.cmd("task-queue");
            c.args([
                "enqueue",
                "--class",
                "k",
                "--id",
                &id,
                "--payload",
                r#"{"n": 1}"#,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            kids.push((reaper.spawn(&mut c), Some(id)));
        }
        for j in 0..3 {
            let mut c = s.cmd("task-queue");
            c.args(["claim", "--worker", &format!("c{j}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            kids.push((reaper.spawn(&mut c), None));
        }
        std::thread::sleep(Duration::from_micros(rnd() % 6000));
        for (child, _) in kids.iter_mut() {
            if rnd() % 2 == 0 {
                signal(child.id() as i32, libc::SIGKILL);
                kills += 1;
            }
        }
        for (mut child, id) in kids {
            let st = child.wait().unwrap();
            if let (Some(0), Some(id)) = (st.code(), id) {
                acked.lock().unwrap().insert(id);
            }
        }
    }
    assert!(
        kills > 20,
        "the test must actually kill processes ({kills})"
    );
    let c = census(&s);
    assert_each_once(&s, &c);
    for id in acked.lock().unwrap().iter() {
        assert!(
            c.contains_key(id),
            "acknowledged enqueue {id} lost\n{}",
            s.tree()
        );
    }
    // Every file that is there is whole.
    for f in walkdir::WalkDir::new(tasks(&s)).into_iter().flatten() {
        if f.file_type().is_file() && f.path().extension().is_some_and(|e| e == "json") {
            read_json(f.path());
        }
    }
    // The monitor's pass an hour later: every lease ran out, every claim goes back.
    let later = corral::time::now() + chrono::Duration::hours(1);
    let m = queue::maintain(&h, &HeartbeatPolicy::default(), later).unwrap();
    assert_eq!(
        files_in(&tasks(&s).join("processing")),
        0,
        "{m:?}\n{}",
        s.tree()
    );
    let before = census(&s);
    assert_each_once(&s, &before);
    let mut c = Claimer::new(&h, "drain", &[], 60.0).unwrap();
    let mut seen = HashSet::new();
    while let Some(t) = c.try_claim().unwrap() {
        assert!(
            seen.insert(t.task_id.clone()),
            "{} claimed twice",
            t.task_id
        );
    }
    assert_eq!(seen.len(), before.len());
}

/// A worker killed mid-task: once its spec leaves active/ (as the monitor does on a dead
/// process), `queue::maintain` requeues the task and another worker claims it.
#[test]
fn killed_workers_task_is_requeued_and_claimed_by_another_worker() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let a = spawn_worker(&s);
    let b = spawn_worker(&s);
    let id = enqueue(&s, &["--class", "llm"]);
    let pidfile = s.dir.path().join("child.pid");
    let script = format!(
        "echo $$ > {}; cat >/dev/null; exec sleep 60",
        pidfile.display()
    );
    let mut c = s.cmd("task-queue");
    c.args([
        "work", "--worker", &a, "--class", "llm", "--", "sh", "-c", &script,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut wa = reaper.spawn(&mut c);
    assert!(wait_until(Duration::from_secs(20), || pidfile.exists()
        && !std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .trim()
            .is_empty()));
    let child_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    reaper.track(child_pid);
    assert_eq!(census(&s)[&id], vec!["processing"]);
    let spec = s.spec("active", &a);
    assert_eq!(
        (spec["status"].as_str(), spec["task_id"].as_str()),
        (Some("running"), Some(id.as_str()))
    );

    wa.kill().unwrap();
    wa.wait().unwrap();
    let h = home_of(&s);
    let p = HeartbeatPolicy::default();
    // Still active: nothing happens (the spec is the monitor's word on liveness).
    assert_eq!(
        queue::maintain(&h, &p, corral::time::now())
            .unwrap()
            .requeued,
        0
    );
    corral::lifecycle::fail_worker(&h, &a, "process died", None, Some(9)).unwrap();
    let m = queue::maintain(&h, &p, corral::time::now()).unwrap();
    assert_eq!(m.requeued, 1, "{m:?}");
    let ev = &s.events_of("task_requeued")[0];
    assert_eq!(
        (ev["task_id"].as_str(), ev["worker_id"].as_str()),
        (Some(id.as_str()), Some(a.as_str()))
    );
    let t = claim_json(&s, &["--worker", &b]);
    assert_eq!(
        (t["task_id"].as_str(), t["attempts"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    let spec = s.spec("active", &b);
    assert_eq!(
        (spec["status"].as_str(), spec["task_id"].as_str()),
        (Some("running"), Some(id.as_str()))
    );
    s.ok("task-queue", &["complete", &id, "--worker", &b]);
    assert_eq!(s.spec("active", &b)["status"], "idle");
    // A dead worker may not claim again.
    s.code("task-queue", &["claim", "--worker", &a], 5);
    signal(child_pid as i32, libc::SIGKILL);
}

#[test]
fn maintain_in_the_home_reports_stuck_and_starved_once() {
    let s = Scene::new();
    let h = home_of(&s);
    let w = spawn_worker(&s);
    s.ok("heartbeat", &[&w, "--status", "idle"]);
    for _ in 0..5 {
        enqueue(&s, &["--class", "llm"]);
    }
    let id = enqueue(&s, &["--class", "cpu"]);
    claim_json(&s, &["--worker", &w, "--class", "cpu"]);
    let p = HeartbeatPolicy::default();
    let later = corral::time::now() + chrono::Duration::seconds(400);
    let m = queue::maintain(&h, &p, later).unwrap();
    assert_eq!((m.stuck, m.starved, m.requeued), (1, 0, 0), "{m:?}");
    // The worker is running the cpu task, not idle: no starvation yet.
    s.ok("task-queue", &["complete", &id, "--worker", &w]);
    let m = queue::maintain(&h, &p, later).unwrap();
    assert_eq!(m.starved, 1, "{m:?}");
    assert_eq!(
        m.summary,
        "workers 1/1, queue 5 (llm:5), processing 0, stuck 0"
    );
    assert_eq!(queue::maintain(&h, &p, later).unwrap().starved, 0);
    let st = s.events_of("task_starved");
    assert_eq!(st.len(), 1);
    assert_eq!(st[0]["data"]["class"], "llm");
    assert_eq!(st[0]["data"]["idle_workers"][0], w.as_str());
    let stuck = s.events_of("task_stuck");
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0]["worker_id"], w.as_str());
    assert!(stuck[0]["data"]["elapsed_seconds"].as_f64().unwrap() >= 399.0);
}

/// A `task-queue` command of the scene run with umask 022 (a common login default), which
/// must not decide the modes of what the queue writes.
fn umask_022(s: &Scene, args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = s.cmd("task-queue");
    c.args(args);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    c
}

fn ok_022(s: &Scene, args: &[&str]) -> String {
    let out = crate::support::run_with_timeout(&mut umask_022(s, args), Duration::from_secs(120));
    s.expect_code("task-queue", args, &out, 0);
    stdout(&out)
}

/// Every queue write path (bucket directories, staged and task files, counts, the id index,
/// `.claiming/`, the moves to processing, completed, failed, cancelled and back to pending)
/// creates with the home's modes whatever the umask: 0700/0600 in a private home,
/// 2770/0660 (and the home's group) in a `--group` home; and `corral doctor` reports a queue
/// file whose mode is not the home's.
#[test]
fn queue_files_take_the_homes_modes_whatever_the_umask() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = unsafe { libc::getgid() };
    for shared in [false, true] {
        let mut s = Scene::new();
        if shared {
            s.home = s.dir.path().join("group-home");
            s.ok("corral", &["init", "--group", &gid.to_string()]);
        }
        let (dir_mode, file_mode) = if shared {
            (0o2770, 0o660)
        } else {
            (0o700, 0o600)
        };
        ok_022(
            &s,
            &["enqueue", "--class", "g", "--id", "G1", "--payload", "1"],
        );
        ok_022(
            &s,
            &["enqueue", "--class", "g", "--id", "G2", "--payload", "2"],
        );
        ok_022(&s, &["enqueue", "--class", "h", "--max-attempts", "1"]);
        // A dependent's markers (tasks/.deps/) and a paused class's marker too.
        ok_022(&s, &["enqueue", "--class", "d", "--after", "G2"]);
        ok_022(&s, &["pause", "p"]);
        let lines = "1\n2\n{\"payload\": 3, \"id\": \"B3\"}\n";
        let jsonl = s.dir.path().join("in.jsonl");
        std::fs::write(&jsonl, lines).unwrap();
        let jsonl = jsonl.to_str().unwrap();
        assert_eq!(
            ok_022(&s, &["enqueue", "--class", "b", "--jsonl", jsonl])
                .lines()
                .count(),
            3
        );
        let w = ["--worker", "w1", "--lease", "600"];
        let claim = |class: &str| -> String {
            let mut a = vec!["claim", "--class", class];
            a.extend_from_slice(&w);
            let v: Value = serde_json::from_str(&ok_022(&s, &a)).unwrap();
            v["task_id"].as_str().unwrap().to_string()
        };
        let t = claim("g");
        ok_022(&s, &["complete", &t, "--worker", "w1"]);
        let t = claim("g");
        ok_022(&s, &["fail", &t, "--worker", "w1", "--error", "again"]);
        let t = claim("h");
        ok_022(&s, &["fail", &t, "--worker", "w1", "--error", "dead"]);
        ok_022(&s, &["cancel", "B3"]);
        let t = claim("b");
        ok_022(&s, &["requeue", &t]);
        let root = tasks(&s);
        for st in ["pending", "completed", "failed", "cancelled"] {
            assert!(
                !json_files_under(&root.join(st)).is_empty(),
                "a task in {st}/\n{}",
                s.tree()
            );
        }
        for d in [".counts", ".ids", ".claiming", ".deps"] {
            assert!(root.join(d).is_dir(), "{d} exists");
        }
        let want_gid = std::fs::metadata(s.coord()).unwrap().gid();
        let mut wrong = Vec::new();
        for e in walkdir::WalkDir::new(&root).min_depth(1) {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let want = if m.is_dir() { dir_mode } else { file_mode };
            if m.mode() & 0o7777 != want || m.gid() != want_gid {
                wrong.push(format!(
                    "{:04o} gid {} {}",
                    m.mode() & 0o7777,
                    m.gid(),
                    e.path().strip_prefix(&root).unwrap().display()
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "shared={shared}: want {dir_mode:04o}/{file_mode:04o} gid {want_gid}, found:\n{}",
            wrong.join("\n")
        );
        s.ok("corral", &["doctor"]);
        // A file narrower than the home's is a doctor finding, which --fix repairs; one
        // wider than it (a task written by hand under umask 022) is not: the directories
        // keep others out.
        let count = root.join(".counts").join("g");
        let wider = if shared { 0o664 } else { 0o644 };
        std::fs::set_permissions(&count, std::fs::Permissions::from_mode(wider)).unwrap();
        s.ok("corral", &["doctor"]);
        std::fs::set_permissions(&count, std::fs::Permissions::from_mode(0o400)).unwrap();
        let out = s.code("corral", &["doctor"], 10);
        let text = stdout(&out);
        assert!(
            text.lines()
                .any(|l| l.starts_with("queue_mode:") && l.contains(".counts/g")),
            "{text}"
        );
        s.ok("corral", &["doctor", "--fix"]);
        assert_eq!(
            std::fs::metadata(&count).unwrap().mode() & 0o7777,
            file_mode
        );
        s.ok("corral", &["doctor"]);
    }
}

/// `seq 5000 | task-queue enqueue --jsonl - | head -1`: a closed stdout does not cut the
/// load short (only a bad line stops one), and the ids it could not print are not silent.
#[test]
fn a_bulk_load_whose_output_closes_loads_everything_and_says_so() {
    use std::io::BufRead;
    let s = Scene::new();
    let n = 5000;
    let input = s.dir.path().join("lines");
    std::fs::write(
        &input,
        (1..=n).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let mut c = s.cmd("task-queue");
    c.args(["enqueue", "--class", "b", "--jsonl", "-"])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("task-"), "{first}");
    // The reader is dropped here, as `head -1` exits.
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let stats: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(
        stats["counts"]["pending"]["b"], n,
        "every line is enqueued: {err}"
    );
    let said: Vec<&str> = err.lines().collect();
    assert_eq!(said.len(), 1, "one line on stderr: {err}");
    assert!(
        said[0].contains("not printed") && said[0].contains(&format!("of {n}")),
        "{err}"
    );
}

/// A `--jsonl` line longer than the task size limit is not read into memory whole: under a
/// 400 MB address-space limit a 512 MB line ends the load with exit 6 naming the line (one
/// line on stderr), and the lines before it are enqueued.
#[test]
fn a_bulk_line_over_the_size_limit_is_refused_without_reading_it_whole() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let s = Scene::new();
    let mut c = s.cmd("task-queue");
    c.args(["enqueue", "--class", "b", "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 400 << 20,
                rlim_max: 400 << 20,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // The child stops reading at the limit: a write that finds it gone ends the feed.
        stdin.write_all(b"1\n2\n3\n\"")?;
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..512 {
            stdin.write_all(&chunk)?;
        }
        stdin.write_all(b"\"\n5\n")
    });
    let out = crate::support::child_output_within(child, Duration::from_secs(120), "task-queue");
    let _ = feeder.join();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    let said: Vec<&str> = err.lines().collect();
    assert_eq!(said.len(), 1, "one line: {err}");
    assert!(said[0].starts_with("error: line 4: "), "{err}");
    assert_eq!(
        stdout(&out).lines().count(),
        3,
        "the first three are printed"
    );
    let stats: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(stats["counts"]["pending"]["b"], 3, "{stats}");
}
