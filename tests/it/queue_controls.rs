//! The queue's controls (cancel, delay, retry backoff, dependencies, task timeouts, pause,
//! wait, purge, bulk enqueue) and the defects of issue 10 (file limits, id mismatches,
//! malformed and stranded files, durations that used to panic), each tried with the real
//! binaries against a temporary home.

use crate::support::procs::*;
use crate::support::queue::{enqueue, home_of, json_files_under, state_of, tasks};
use crate::support::{read_json, stderr, stdout, Scene};
use corral::policy::HeartbeatPolicy;
use corral::queue;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn claim(s: &Scene, args: &[&str]) -> Value {
    let mut a = vec!["claim", "--format", "jsonl"];
    a.extend_from_slice(args);
    serde_json::from_str(&s.ok("task-queue", &a)).expect("claim prints JSON")
}

/// The pending task files of the whole home, by walking the buckets.
fn pending_files(s: &Scene) -> Vec<PathBuf> {
    json_files_under(&tasks(s).join("pending"))
}

fn quarantined(s: &Scene) -> Vec<String> {
    std::fs::read_dir(s.coord().join("quarantine"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".reason") && n != ".keep")
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Durations that used to panic (issue 10): exit 6, nothing moves.

#[test]
fn huge_lease_wait_and_idle_exit_are_exit_6_and_nothing_moves() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "c"]);
    for args in [
        vec!["claim", "--worker", "w", "--lease", "1e300"],
        vec!["claim", "--worker", "w", "--wait", "1e300"],
        vec!["claim", "--worker", "w", "--lease", "999999999999999"],
        vec![
            "work",
            "--worker",
            "w",
            "--idle-exit",
            "1e300",
            "--",
            "true",
        ],
        vec![
            "work",
            "--worker",
            "w",
            "--task-timeout",
            "1e300",
            "--",
            "true",
        ],
    ] {
        let o = s.code("task-queue", &args, 6);
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        // The task never left pending (the old claim renamed it, then panicked).
        assert_eq!(state_of(&s, &id), "pending", "after {args:?}");
    }
    assert!(s.events_of("task_claimed").is_empty());
    assert_eq!(pending_files(&s).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Messages (issue 10): "faild", and requeue's contradiction.

#[test]
fn wrong_state_messages_say_what_is_accepted() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "c"]);
    let o = s.code("task-queue", &["fail", &id, "--force"], 5);
    let e = stderr(&o);
    assert!(e.contains("only a processing task can be failed"), "{e}");
    assert!(!e.contains("faild"), "{e}");
    let o = s.code("task-queue", &["complete", &id, "--force"], 5);
    assert!(stderr(&o).contains("can be completed"), "{}", stderr(&o));
    let o = s.code("task-queue", &["requeue", &id], 5);
    let e = stderr(&o);
    assert!(
        e.contains("only a processing, failed or cancelled task can be requeued"),
        "{e}"
    );
    // …and it does accept those.
    s.ok("task-queue", &["cancel", &id]);
    assert_eq!(s.ok("task-queue", &["requeue", &id]).trim(), "pending");
}

// ---------------------------------------------------------------------------------------
// Files stay readable (S9).

#[test]
fn enqueue_refuses_a_symlinked_class_directory() {
    let s = Scene::new();
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, tasks(&s).join("pending/evil")).unwrap();
    let o = s.code("task-queue", &["enqueue", "--class", "evil"], 6);
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    // (From a file: the refusal comes before stdin would be read.)
    let lines = s.dir.path().join("one.jsonl");
    std::fs::write(&lines, "1\n").unwrap();
    s.code(
        "task-queue",
        &[
            "enqueue",
            "--class",
            "evil",
            "--jsonl",
            lines.to_str().unwrap(),
        ],
        6,
    );
    assert_eq!(
        walkdir::WalkDir::new(&elsewhere).into_iter().count(),
        1,
        "nothing written through the link"
    );
}

#[test]
fn long_retry_errors_keep_the_task_readable_and_in_the_queue() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "c", "--max-attempts", "40"]);
    // One argument may not exceed 128 KiB; 15 of these made the old file 1.5 MB.
    let long = "E".repeat(100 * 1024);
    for _ in 0..15 {
        claim(&s, &["--worker", "w"]);
        let o = s.code(
            "task-queue",
            &["fail", &id, "--worker", "w", "--error", &long],
            0,
        );
        assert_eq!(stdout(&o), "pending");
    }
    // The old queue grew the file past 1 MiB (history kept every error) and then
    // quarantined it silently at the next claim.
    let t = claim(&s, &["--worker", "w"]);
    assert_eq!(t["task_id"], id.as_str());
    let f = pending_or_processing(&s, &id);
    let len = std::fs::metadata(&f).unwrap().len();
    assert!(len < 1024 * 1024, "{len} bytes");
    let v = read_json(&f);
    assert!(v["history"].as_array().unwrap().len() <= 50);
    assert!(v["error"].as_str().unwrap().contains("[truncated: "));
    assert_eq!(v["truncated"]["error"], 100 * 1024);
    assert!(quarantined(&s).is_empty(), "{:?}", quarantined(&s));
}

fn pending_or_processing(s: &Scene, id: &str) -> PathBuf {
    let p = tasks(s).join(format!("processing/{id}.json"));
    if p.exists() {
        return p;
    }
    pending_files(s)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&format!("-{id}.json")))
        .expect("task file")
}

#[test]
fn a_big_payload_and_a_big_result_stay_readable() {
    let s = Scene::new();
    let payload = s.dir.path().join("payload.json");
    std::fs::write(
        &payload,
        serde_json::to_vec(&"p".repeat(880 * 1024)).unwrap(),
    )
    .unwrap();
    let id = enqueue(
        &s,
        &["--class", "c", "--payload-file", payload.to_str().unwrap()],
    );
    claim(&s, &["--worker", "w"]);
    let result = s.dir.path().join("result.json");
    std::fs::write(
        &result,
        serde_json::to_vec(&json!({"r": "r".repeat(800 * 1024)})).unwrap(),
    )
    .unwrap();
    s.ok(
        "task-queue",
        &[
            "complete",
            &id,
            "--worker",
            "w",
            "--result-file",
            result.to_str().unwrap(),
        ],
    );
    // Everything that reads tasks reads it back (the old queue wrote 1.7 MB here).
    let shown: Value = serde_json::from_str(&s.ok("task-queue", &["show", &id])).unwrap();
    assert_eq!(shown["result"]["truncated"], true);
    assert!(shown["truncated"]["result"].as_u64().unwrap() > 800 * 1024);
    let listed = s.ok(
        "task-queue",
        &["list", "--state", "completed", "--format", "jsonl"],
    );
    assert_eq!(listed.lines().count(), 1);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json", "--exact"]))
            .unwrap();
    assert_eq!(st["counts"]["completed"]["c"], 1);
    // A payload that cannot fit is refused before anything is written.
    std::fs::write(
        &payload,
        serde_json::to_vec(&"p".repeat(1000 * 1024)).unwrap(),
    )
    .unwrap();
    s.code(
        "task-queue",
        &[
            "enqueue",
            "--class",
            "c",
            "--payload-file",
            payload.to_str().unwrap(),
        ],
        6,
    );
}

#[test]
fn a_name_content_id_mismatch_is_quarantined_at_claim_not_acted_on() {
    let s = Scene::new();
    let b = enqueue(&s, &["--class", "c", "--id", "task-b"]);
    claim(&s, &["--worker", "w"]);
    s.ok(
        "task-queue",
        &[
            "complete",
            &b,
            "--worker",
            "w",
            "--result",
            "\"b's result\"",
        ],
    );
    // taskA's file, with taskB's content.
    let a = enqueue(&s, &["--class", "c", "--id", "task-a"]);
    let a_file = pending_files(&s)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&a))
        .unwrap();
    let mut content = read_json(&s.coord().join("tasks/completed/task-b.json"));
    content["state"] = json!("pending");
    content["claimed_by"] = Value::Null;
    content["result"] = Value::Null;
    std::fs::write(&a_file, serde_json::to_vec_pretty(&content).unwrap()).unwrap();
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    // taskB's completed record is untouched (the old claim overwrote it later), and the
    // bad file is set aside with an event.
    let done = read_json(&s.coord().join("tasks/completed/task-b.json"));
    assert_eq!(
        (done["state"].as_str(), done["result"].as_str()),
        (Some("completed"), Some("b's result"))
    );
    assert!(
        quarantined(&s).iter().any(|n| n.contains("task-a")),
        "{:?}",
        quarantined(&s)
    );
    let q = s.events_of("spec_quarantined");
    assert!(
        q.iter().any(|e| e["data"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("content says task task-b")),
        "{q:?}"
    );
}

#[test]
fn malformed_pending_files_are_quarantined_and_reported() {
    let s = Scene::new();
    let h = home_of(&s);
    let good = enqueue(&s, &["--class", "c"]);
    let leaf = pending_files(&s)[0].parent().unwrap().to_path_buf();
    // A name that is no task name in a bucket, a flat file with a good name and bad JSON,
    // and a flat file with a bad name: the old queue skipped these forever.
    std::fs::write(leaf.join("garbage.json"), "{}").unwrap();
    let flat = tasks(&s).join("pending/c/0-00000000000000000001-broken.json");
    std::fs::write(&flat, "{not json").unwrap();
    std::fs::write(tasks(&s).join("pending/c/oops.json"), "{}").unwrap();
    let found = queue::check(&h, false).unwrap();
    let kinds: Vec<&str> = found.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "malformed_pending").count(),
        3,
        "{found:?}"
    );
    // Claims skip and quarantine them: the broken critical one first, then the bucket's stray.
    let t = claim(&s, &["--worker", "w"]);
    assert_eq!(t["task_id"], good.as_str());
    let q = quarantined(&s);
    assert!(q.iter().any(|n| n.contains("broken")), "{q:?}");
    assert!(q.iter().any(|n| n.contains("garbage")), "{q:?}");
    assert!(s.events_of("spec_quarantined").len() >= 2);
    // The doctor's fix sets the rest aside.
    let fixed = queue::check(&h, true).unwrap();
    assert!(
        fixed
            .iter()
            .any(|f| f.path.ends_with("oops.json") && f.fixed.is_some()),
        "{fixed:?}"
    );
    assert!(queue::check(&h, false)
        .unwrap()
        .iter()
        .all(|f| f.kind != "malformed_pending"));
}

#[test]
fn entries_that_are_no_files_ahead_of_a_task_are_quarantined_not_a_wedge() {
    // A directory, a FIFO and a symlink named like tasks, sorted ahead of the real one:
    // the old claim renamed the directory into `.claiming/`, failed to open it for writing
    // (EISDIR), put it back and exited 1, at every claim, so the class was wedged.
    let s = Scene::new();
    let good = enqueue(&s, &["--class", "c"]);
    let real = pending_files(&s).remove(0);
    let leaf = real.parent().unwrap().to_path_buf();
    let name = real.file_name().unwrap().to_str().unwrap().to_string();
    let ahead = |tag: &str| leaf.join(name.replace(&good, &format!("task-0{tag}")));
    std::fs::create_dir(ahead("dir")).unwrap();
    std::fs::write(ahead("dir").join("inside.txt"), "kept").unwrap();
    let fifo = std::ffi::CString::new(ahead("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/etc/hostname", ahead("link")).unwrap();
    let t = claim(&s, &["--worker", "w", "--class", "c"]);
    assert_eq!(t["task_id"], good.as_str());
    let q = quarantined(&s);
    for tag in ["dir", "fifo", "link"] {
        assert!(
            q.iter().any(|n| n.ends_with(&format!("task-0{tag}.json"))),
            "{tag}: {q:?}"
        );
    }
    // The directory went aside whole; nothing is left in the bucket or half-claimed.
    let qdir = s.coord().join("quarantine");
    let moved = q.iter().find(|n| n.ends_with("task-0dir.json")).unwrap();
    assert_eq!(
        std::fs::read_to_string(qdir.join(moved).join("inside.txt")).unwrap(),
        "kept"
    );
    assert!(!leaf.exists() || std::fs::read_dir(&leaf).unwrap().next().is_none());
    let claiming = tasks(&s).join(".claiming");
    assert!(!claiming.exists() || std::fs::read_dir(&claiming).unwrap().next().is_none());
    assert_eq!(s.events_of("spec_quarantined").len(), 3);
}

#[test]
fn a_task_name_cannot_drive_the_terminal_or_break_the_listing() {
    let s = Scene::new();
    let name = "evil\u{1b}[31mRED\u{1b}]0;title\u{7}\nsecond line";
    let id = enqueue(&s, &["--class", "c", "--name", name]);
    let table = s.ok("task-queue", &["list"]);
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "{table:?}"
    );
    assert_eq!(table.lines().count(), 2, "a header and one row: {table:?}");
    assert!(table.contains("evil\\x1b[31mRED"), "{table:?}");
    // The JSON forms keep the name as it was given.
    let line = s.ok("task-queue", &["list", "--format", "jsonl"]);
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        (v["task_id"].as_str(), v["name"].as_str()),
        (Some(id.as_str()), Some(name))
    );
}

// ---------------------------------------------------------------------------------------
// No stranded claims.

#[test]
fn a_claim_without_record_is_requeued_within_seconds() {
    let s = Scene::new();
    let h = home_of(&s);
    let id = enqueue(&s, &["--class", "c"]);
    // What a claimer SIGKILLed right after its rename leaves: the pending content in
    // processing/.
    let from = pending_files(&s).remove(0);
    std::fs::rename(&from, tasks(&s).join(format!("processing/{id}.json"))).unwrap();
    let p = HeartbeatPolicy::default();
    let now = corral::time::now();
    assert_eq!(
        queue::maintain(&h, &p, now).unwrap().requeued,
        0,
        "young: may still be recorded"
    );
    // Seconds later, not stuck_task_seconds (300) later.
    let m = queue::maintain(&h, &p, now + chrono::Duration::seconds(6)).unwrap();
    assert_eq!((m.requeued, m.unrecorded), (1, 1), "{m:?}");
    assert_eq!(state_of(&s, &id), "pending");
    let t = claim(&s, &["--worker", "w"]);
    assert_eq!(
        (t["task_id"].as_str(), t["attempts"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
}

#[test]
fn a_claim_whose_record_cannot_be_written_goes_back_to_pending() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "c"]);
    // processing/ is unusable: the task was won and its record written in .claiming/, but
    // it cannot be put in place (as on a full disk).
    let processing = tasks(&s).join("processing");
    std::fs::remove_dir_all(&processing).unwrap();
    std::fs::write(&processing, "not a directory").unwrap();
    let o = s.run("task-queue", &["claim", "--worker", "w"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    std::fs::remove_file(&processing).unwrap();
    std::fs::create_dir(&processing).unwrap();
    // Put back as it was: no claim recorded, nothing left in .claiming/.
    let back = read_json(&pending_files(&s)[0]);
    assert!(
        back["claimed_by"].is_null() && back["attempts"] == 0,
        "{back}"
    );
    assert_eq!(
        std::fs::read_dir(tasks(&s).join(".claiming"))
            .unwrap()
            .count(),
        0
    );
    // Not stranded in processing/ until stuck_task_seconds: it is pending again.
    assert_eq!(state_of(&s, &id), "pending", "{}", s.tree());
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], id.as_str());
}

// ---------------------------------------------------------------------------------------
// Controls.

#[test]
fn cancel_pending_deferred_and_finished_tasks() {
    let s = Scene::new();
    let a = enqueue(&s, &["--class", "c"]);
    let b = enqueue(&s, &["--class", "c", "--after", &a]);
    let c = enqueue(&s, &["--class", "c", "--after", &b]);
    assert_eq!(state_of(&s, &b), "deferred");
    assert_eq!(
        s.ok("task-queue", &["cancel", &a, "--reason", "superseded"])
            .trim(),
        format!("{a} cancelled")
    );
    assert!(tasks(&s).join(format!("cancelled/{a}.json")).exists());
    // Its dependents die with it, each with the reason.
    assert_eq!(state_of(&s, &b), "failed");
    assert_eq!(state_of(&s, &c), "failed");
    let dead = read_json(&tasks(&s).join(format!("failed/{b}.json")));
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains(&format!("dependency {a} was cancelled")),
        "{dead}"
    );
    let ev = s.events_of("task_cancelled");
    assert_eq!(
        (ev.len(), ev[0]["data"]["reason"].as_str()),
        (1, Some("superseded"))
    );
    assert_eq!(s.events_of("task_dead_lettered").len(), 2);
    // A deferred task can be cancelled too; finished ones cannot; unknown ones are 3.
    let x = enqueue(&s, &["--class", "c"]);
    let y = enqueue(&s, &["--class", "c", "--after", &x]);
    s.ok("task-queue", &["cancel", &y]);
    assert_eq!(state_of(&s, &y), "cancelled");
    // Each refusal is said once: alone, as the command's error; among several ids, as it
    // happens, then a count (the first refusal's code).
    let once = stderr(&s.code("task-queue", &["cancel", &a], 5));
    assert_eq!(once.matches("is cancelled already").count(), 1, "{once}");
    let once = stderr(&s.code("task-queue", &["cancel", "no-such-task"], 3));
    assert_eq!(once.matches("no-such-task").count(), 1, "{once}");
    let z = enqueue(&s, &["--class", "c"]);
    let several = s.code("task-queue", &["cancel", &a, &z, "no-such-task"], 5);
    assert_eq!(stdout(&several).trim(), format!("{z} cancelled"));
    let err = stderr(&several);
    assert_eq!(err.matches("is cancelled already").count(), 1, "{err}");
    assert_eq!(err.matches("no-such-task").count(), 1, "{err}");
    assert!(err.contains("2 of 3 task(s) not cancelled"), "{err}");
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(st["totals"]["cancelled"], 3, "{st}");
    assert_eq!(st["totals"]["deferred"], 0, "{st}");
}

#[test]
fn after_an_unknown_task_is_exit_3() {
    let s = Scene::new();
    s.code(
        "task-queue",
        &["enqueue", "--class", "c", "--after", "ghost"],
        3,
    );
    assert!(pending_files(&s).is_empty());
}

#[test]
fn dependencies_release_on_completion_and_dead_letter_on_failure() {
    let s = Scene::new();
    let a = enqueue(&s, &["--class", "c", "--max-attempts", "1"]);
    let b = enqueue(&s, &["--class", "c"]);
    let both = enqueue(&s, &["--class", "c", "--after", &format!("{a},{b}")]);
    let after_b = enqueue(&s, &["--class", "c", "--after", &b]);
    assert_eq!(state_of(&s, &both), "deferred");
    // Only the two independent tasks are claimable.
    let t1 = claim(&s, &["--worker", "w"]);
    let t2 = claim(&s, &["--worker", "w"]);
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    assert_eq!(
        [t1["task_id"].as_str(), t2["task_id"].as_str()],
        [Some(a.as_str()), Some(b.as_str())]
    );
    s.ok("task-queue", &["complete", &b, "--worker", "w"]);
    assert_eq!(state_of(&s, &after_b), "pending");
    assert_eq!(state_of(&s, &both), "deferred", "still waits for {a}");
    let rel = s.events_of("task_released");
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0]["task_id"], after_b.as_str());
    s.ok(
        "task-queue",
        &["fail", &a, "--worker", "w", "--error", "boom"],
    );
    assert_eq!(state_of(&s, &both), "failed");
    let v = read_json(&tasks(&s).join(format!("failed/{both}.json")));
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains(&format!("dependency {a} was dead-lettered")));
    // A dependency that is already done: straight to pending.
    let late = enqueue(&s, &["--class", "c", "--after", &b]);
    assert_eq!(state_of(&s, &late), "pending");
    // One that already failed: the new task is dead on arrival. Its id is printed (exit 0)
    // and stderr says why, alone or in a bulk load.
    let out = s.code("task-queue", &["enqueue", "--class", "c", "--after", &a], 0);
    let doa = stdout(&out).trim().to_string();
    assert_eq!(state_of(&s, &doa), "failed");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("warning: task {doa} was dead-lettered at once"))
            && err.contains(&format!("dependency {a}")),
        "{err}"
    );
    let line = format!("{{\"payload\": 1, \"after\": [\"{a}\"]}}\n2\n");
    let out = s.run_stdin(
        "task-queue",
        &["enqueue", "--class", "c", "--jsonl", "-"],
        line.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0));
    let ids = stdout(&out);
    let err = stderr(&out);
    assert_eq!(ids.lines().count(), 2, "{ids}");
    assert_eq!(err.matches("dead-lettered at once").count(), 1, "{err}");
}

#[test]
fn delayed_tasks_wait_for_their_time() {
    let s = Scene::new();
    let later = enqueue(&s, &["--class", "d", "--delay", "2s"]);
    let now_task = enqueue(&s, &["--class", "d", "--priority", "low"]);
    // The delayed one is not claimable yet, even ahead of a lower priority.
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], now_task.as_str());
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert!(st["next_due_by_class"]["d"].is_string(), "{st}");
    assert_eq!(st["totals"]["pending"], 1);
    // A waiting claimer wakes when it falls due (no event arrives: a timer).
    let t = claim(&s, &["--worker", "w", "--wait", "30"]);
    assert_eq!(t["task_id"], later.as_str());
    let nb = corral::time::parse(t["not_before"].as_str().unwrap()).unwrap();
    assert!(corral::time::now() >= nb);
    // --not-before takes a time.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let x = enqueue(&s, &["--class", "d", "--not-before", &at]);
    s.code("task-queue", &["claim", "--worker", "w", "--class", "d"], 7);
    assert_eq!(state_of(&s, &x), "pending");
    s.code(
        "task-queue",
        &["enqueue", "--class", "d", "--delay", "soon"],
        6,
    );
}

#[test]
fn failures_retry_after_a_backoff_from_the_policy() {
    let s = Scene::new();
    s.set_policy(
        "queue",
        json!({"retry": {"base_seconds": 1.5, "jitter": 0},
                                  "classes": {"fast": {"retry": {"base_seconds": 0}}}}),
    );
    let id = enqueue(&s, &["--class", "slow"]);
    let fast = enqueue(&s, &["--class", "fast"]);
    claim(&s, &["--worker", "w", "--class", "slow"]);
    s.ok(
        "task-queue",
        &["fail", &id, "--worker", "w", "--error", "flaky"],
    );
    let ev = &s.events_of("task_failed")[0];
    assert_eq!(ev["data"]["backoff_seconds"], 1.5);
    assert!(ev["data"]["retry_at"].is_string());
    s.code(
        "task-queue",
        &["claim", "--worker", "w", "--class", "slow"],
        7,
    );
    let t = claim(&s, &["--worker", "w", "--class", "slow", "--wait", "30"]);
    assert_eq!(
        (t["task_id"].as_str(), t["attempts"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    // The second failure waits twice as long.
    s.ok("task-queue", &["fail", &id, "--worker", "w"]);
    assert_eq!(
        s.events_of("task_failed")[1]["data"]["backoff_seconds"],
        3.0
    );
    // A class whose policy says no backoff retries at once.
    claim(&s, &["--worker", "w", "--class", "fast"]);
    s.ok("task-queue", &["fail", &fast, "--worker", "w"]);
    assert_eq!(
        claim(&s, &["--worker", "w", "--class", "fast"])["task_id"],
        fast.as_str()
    );
}

#[test]
fn pause_stops_claims_until_resume_wakes_the_waiters() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let id = enqueue(&s, &["--class", "p"]);
    assert_eq!(
        s.ok("task-queue", &["pause", "p", "--reason", "maintenance"])
            .trim(),
        "paused"
    );
    assert_eq!(s.ok("task-queue", &["pause", "p"]).trim(), "already paused");
    // The refusal names the pause, the first thing to suspect; a class that is not paused
    // is not named.
    for args in [
        vec!["claim", "--worker", "w"],
        vec!["claim", "--worker", "w", "--class", "p"],
    ] {
        let out = s.code("task-queue", &args, 7);
        let err = stderr(&out);
        assert!(err.contains("(paused: p;"), "{err}");
    }
    let out = s.code("task-queue", &["claim", "--worker", "w", "--class", "q"], 7);
    let err = stderr(&out);
    assert!(!err.contains("paused"), "{err}");
    enqueue(&s, &["--class", "p"]);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(st["paused"], json!(["p"]));
    let mut c = s.cmd("task-queue");
    c.args([
        "claim", "--worker", "waiter", "--class", "p", "--wait", "60", "--format", "jsonl",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let waiter = reaper.spawn(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.ok("task-queue", &["resume", "p"]).trim(), "resumed");
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["task_id"], id.as_str());
    assert_eq!(s.events_of("queue_paused").len(), 1);
    assert_eq!(s.events_of("queue_resumed").len(), 1);
    assert_eq!(s.ok("task-queue", &["resume", "p"]).trim(), "not paused");
}

#[test]
fn wait_exit_codes_say_how_tasks_ended() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let a = enqueue(&s, &["--class", "c"]);
    let b = enqueue(&s, &["--class", "c", "--max-attempts", "1"]);
    s.code("task-queue", &["wait", "ghost"], 3);
    let o = s.code("task-queue", &["wait", &a, "--timeout", "0.2"], 7);
    assert_eq!(stdout(&o), format!("{a} pending"));
    let mut c = s.cmd("task-queue");
    c.args(["wait", &a])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let waiter = reaper.spawn(&mut c);
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["complete", &a, "--worker", "w"]);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{a} completed")
    );
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["fail", &b, "--worker", "w"]);
    let o = s.code("task-queue", &["wait", &a, &b], 10);
    assert_eq!(stdout(&o), format!("{a} completed\n{b} failed"));
    s.code("task-queue", &["wait", &a, "--timeout", "1e300"], 6);
}

#[test]
fn purge_removes_old_finished_tasks_by_age_and_policy() {
    let s = Scene::new();
    let h = home_of(&s);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = enqueue(&s, &["--class", "c", "--max-attempts", "1"]);
        claim(&s, &["--worker", "w"]);
        ids.push(id);
    }
    s.ok("task-queue", &["complete", &ids[0], "--worker", "w"]);
    s.ok("task-queue", &["complete", &ids[1], "--worker", "w"]);
    s.ok("task-queue", &["fail", &ids[2], "--worker", "w"]);
    // ids[0] finished eight days ago.
    let old = std::time::SystemTime::now() - Duration::from_secs(8 * 86_400);
    let f = std::fs::File::options()
        .write(true)
        .open(tasks(&s).join(format!("completed/{}.json", ids[0])))
        .unwrap();
    f.set_modified(old).unwrap();
    s.code("task-queue", &["purge"], 2);
    let o = s.ok(
        "task-queue",
        &["purge", "--completed-older-than", "7d", "--dry-run"],
    );
    assert!(o.contains("would purge 1"), "{o}");
    assert!(tasks(&s)
        .join(format!("completed/{}.json", ids[0]))
        .exists());
    let o = s.ok(
        "task-queue",
        &[
            "purge",
            "--completed-older-than",
            "7d",
            "--failed-older-than",
            "30d",
        ],
    );
    assert!(o.starts_with("purged 1 tasks"), "{o}");
    assert!(!tasks(&s)
        .join(format!("completed/{}.json", ids[0]))
        .exists());
    assert_eq!(s.events_of("tasks_purged").len(), 1);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(
        (
            st["totals"]["completed"].as_u64(),
            st["totals"]["failed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Maintenance does the same when the policy sets an age.
    s.set_policy("queue", json!({"purge": {"failed_after_seconds": 1}}));
    let f = std::fs::File::options()
        .write(true)
        .open(tasks(&s).join(format!("failed/{}.json", ids[2])))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let m = queue::maintain(&h, &HeartbeatPolicy::default(), corral::time::now()).unwrap();
    assert_eq!(m.purged, 1, "{m:?}");
    assert!(!tasks(&s).join(format!("failed/{}.json", ids[2])).exists());
}

#[test]
fn bulk_enqueue_prints_ids_in_order_and_stops_at_a_bad_line() {
    let s = Scene::new();
    let input = "{\"n\": 1}\n\"two\"\n{\"payload\": 3, \"priority\": \"critical\", \"id\": \"third\", \"name\": \"three\", \"max_attempts\": 1}\n\n[4]\n{oops\n6\n";
    let o = s.run_stdin(
        "task-queue",
        &["enqueue", "--class", "b", "--jsonl", "-"],
        input.as_bytes(),
    );
    s.expect_code("task-queue", &["enqueue", "--jsonl"], &o, 6);
    assert!(stderr(&o).contains("line 6"), "{}", stderr(&o));
    let ids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[2], "third");
    let third = read_json(&pending_or_processing(&s, "third"));
    assert_eq!(
        (
            third["priority"].as_str(),
            third["name"].as_str(),
            third["max_attempts"].as_u64()
        ),
        (Some("critical"), Some("three"), Some(1))
    );
    // Claim order: the critical one, then the input order.
    let order: Vec<String> = (0..4)
        .map(|_| {
            claim(&s, &["--worker", "w"])["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ids[2].clone(),
            ids[0].clone(),
            ids[1].clone(),
            ids[3].clone()
        ]
    );
    // From a file, with defaults from the flags; one event per batch.
    let f = s.dir.path().join("jobs.jsonl");
    std::fs::write(&f, "1\n2\n3\n").unwrap();
    let o = s.ok(
        "task-queue",
        &[
            "enqueue",
            "--class",
            "b",
            "--priority",
            "high",
            "--jsonl",
            f.to_str().unwrap(),
        ],
    );
    assert_eq!(o.lines().count(), 3);
    let ev = s.events_of("task_enqueued");
    assert_eq!(ev.last().unwrap()["data"]["count"], 3);
    assert_eq!(claim(&s, &["--worker", "w"])["priority"], "high");
}

// ---------------------------------------------------------------------------------------
// The work loop: timeouts, cancellation, log markers.

// ---------------------------------------------------------------------------------------
// Counts stay right.

#[test]
fn counts_follow_every_move_and_drift_is_repaired() {
    let s = Scene::new();
    let h = home_of(&s);
    let ids: Vec<String> = (0..6).map(|_| enqueue(&s, &["--class", "c"])).collect();
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["complete", &ids[0], "--worker", "w"]);
    s.ok("task-queue", &["cancel", &ids[1]]);
    let stats = |exact: bool| -> Value {
        let mut a = vec!["stats", "--format", "json"];
        if exact {
            a.push("--exact");
        }
        serde_json::from_str(&s.ok("task-queue", &a)).unwrap()
    };
    let kept = stats(false);
    let exact = stats(true);
    assert_eq!(kept["totals"], exact["totals"]);
    assert_eq!(exact["totals"]["pending"], 4);
    // A process killed between a move and its count update: simulated by moving a task by
    // hand. The doctor check sees the drift and its fix repairs it.
    let f = pending_files(&s).remove(0);
    std::fs::remove_file(&f).unwrap();
    let found = queue::check(&h, false).unwrap();
    assert!(found.iter().any(|f| f.kind == "count_drift"), "{found:?}");
    queue::check(&h, true).unwrap();
    assert_eq!(stats(false)["totals"]["pending"], 3);
    // A class emptied behind the counts' back is noticed by the next look at its head.
    for f in pending_files(&s) {
        std::fs::remove_file(f).unwrap();
    }
    assert_eq!(stats(false)["totals"]["pending"], 0);
}

// ---------------------------------------------------------------------------------------
// Dependencies across purge, wait and requeue.

/// Backdates a finished task's file, so an age threshold of seconds has passed.
fn backdate(s: &Scene, state: &str, id: &str) {
    std::fs::File::options()
        .write(true)
        .open(tasks(s).join(format!("{state}/{id}.json")))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
}

#[test]
fn purge_keeps_a_completed_dependency_while_tasks_still_wait_for_it() {
    let mut s = Scene::new();
    enqueue(&s, &["--class", "c", "--id", "D1"]);
    enqueue(&s, &["--class", "c", "--id", "D2"]);
    enqueue(&s, &["--class", "c", "--id", "D3", "--after", "D1,D2"]);
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "D1");
    s.ok("task-queue", &["complete", "D1", "--worker", "w"]);
    backdate(&s, "completed", "D1");
    // The operator's purge keeps D1 (the only record that it completed) and says so.
    let o = s.ok("task-queue", &["purge", "--completed-older-than", "0s"]);
    assert!(o.contains("purged 0 tasks"), "{o}");
    assert!(
        o.contains("kept 1 that deferred tasks still wait for"),
        "{o}"
    );
    let j: Value = serde_json::from_str(&s.ok(
        "task-queue",
        &["purge", "--completed-older-than", "0s", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(
        (j["completed"].as_u64(), j["kept"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(tasks(&s).join("completed/D1.json").exists());
    s.ok("heartbeat-monitor", &["--once", "-q"]);
    assert_eq!(state_of(&s, "D3"), "deferred", "{}", s.tree());
    // So does the policy's retention, over passes that also settle dependencies.
    s.set_env(
        "CORRAL_HEARTBEAT__QUEUE__PURGE__COMPLETED_AFTER_SECONDS",
        "1",
    );
    s.ok("heartbeat-monitor", &["--once", "-q"]);
    s.ok("heartbeat-monitor", &["--once", "-q"]);
    assert_eq!(state_of(&s, "D3"), "deferred", "{}", s.tree());
    assert!(tasks(&s).join("completed/D1.json").exists());
    assert!(s.events_of("task_dead_lettered").is_empty());
    // D3 runs once D2 completed too; then nothing waits for D1 and both go.
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "D2");
    s.ok("task-queue", &["complete", "D2", "--worker", "w"]);
    assert_eq!(state_of(&s, "D3"), "pending");
    backdate(&s, "completed", "D2");
    let o = s.ok("task-queue", &["purge", "--completed-older-than", "0s"]);
    assert_eq!(
        o.trim(),
        "purged 2 tasks: 2 completed, 0 failed, 0 cancelled"
    );
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "D3");
}

#[test]
fn wait_returns_when_a_waited_task_is_purged_after_it_ended() {
    let s = Scene::new();
    let reaper = Reaper::default();
    enqueue(&s, &["--class", "c", "--id", "W6"]);
    enqueue(&s, &["--class", "c", "--id", "W7"]);
    // A bare wait: no timeout to fall back on.
    let mut c = s.cmd("task-queue");
    c.args(["wait", "W6", "W7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let waiter = reaper.spawn(&mut c);
    let pid = waiter.id();
    assert!(crate::support::wait_until(Duration::from_secs(10), || {
        inotify_watches(pid as i32) >= 3
    }));
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "W6");
    s.ok("task-queue", &["complete", "W6", "--worker", "w"]);
    s.ok("task-queue", &["purge", "--completed-older-than", "0s"]);
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "W7");
    s.ok("task-queue", &["complete", "W7", "--worker", "w"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waiter.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("wait returns once every task ended or is gone")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    // Gone is ended, with an outcome nobody can know: the code of a missing id.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "W6 gone\nW7 completed");
    assert!(stderr(&out).contains("W6"), "{}", stderr(&out));
    // With a timeout, the same: no timeout is reported that never happened.
    enqueue(&s, &["--class", "c", "--id", "W8"]);
    enqueue(&s, &["--class", "c", "--id", "W9"]);
    let mut c = s.cmd("task-queue");
    c.args(["wait", "W8", "W9", "--timeout", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let waiter = reaper.spawn(&mut c);
    let pid = waiter.id();
    assert!(crate::support::wait_until(Duration::from_secs(10), || {
        inotify_watches(pid as i32) >= 3
    }));
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["complete", "W8", "--worker", "w"]);
    // The waiter has seen W8 end; it goes while W9 is still pending.
    std::thread::sleep(Duration::from_millis(200));
    s.ok("task-queue", &["purge", "--completed-older-than", "0s"]);
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["fail", "W9", "--worker", "w", "--no-retry"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "W8 gone\nW9 failed");
}

#[test]
fn requeue_respects_after_dependencies() {
    let s = Scene::new();
    enqueue(&s, &["--class", "c", "--id", "A", "--max-attempts", "1"]);
    enqueue(&s, &["--class", "c", "--id", "B", "--after", "A"]);
    claim(&s, &["--worker", "w"]);
    s.ok("task-queue", &["fail", "A", "--worker", "w"]);
    assert_eq!(state_of(&s, "B"), "failed");
    // A dependency that is still dead: refused, naming it; nothing moves.
    let o = s.code("task-queue", &["requeue", "B"], 5);
    let err = stderr(&o);
    assert!(
        err.contains("dependency A was dead-lettered") && err.contains("requeue A first"),
        "{err}"
    );
    assert_eq!(state_of(&s, "B"), "failed");
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    // Requeued after its dependency, it waits for it in deferred/.
    assert_eq!(s.ok("task-queue", &["requeue", "A"]).trim(), "pending");
    assert_eq!(s.ok("task-queue", &["requeue", "B"]).trim(), "deferred");
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "A");
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    s.ok("task-queue", &["complete", "A", "--worker", "w"]);
    assert_eq!(state_of(&s, "B"), "pending");
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "B");
    let ev = s.events_of("task_requeued");
    assert_eq!(ev.last().unwrap()["data"]["to"], "deferred", "{ev:?}");

    // Cancelled: the same.
    enqueue(&s, &["--class", "c", "--id", "X"]);
    enqueue(&s, &["--class", "c", "--id", "Y", "--after", "X"]);
    s.ok("task-queue", &["cancel", "X"]);
    assert_eq!(state_of(&s, "Y"), "failed");
    let err = stderr(&s.code("task-queue", &["requeue", "Y"], 5));
    assert!(err.contains("dependency X was cancelled"), "{err}");
    s.ok("task-queue", &["requeue", "X"]);
    assert_eq!(s.ok("task-queue", &["requeue", "Y"]).trim(), "deferred");
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "X");
    s.code("task-queue", &["claim", "--worker", "w"], 7);
    // Requeued while its dependency is processing, it is released when that completes.
    s.ok("task-queue", &["complete", "X", "--worker", "w"]);
    assert_eq!(claim(&s, &["--worker", "w"])["task_id"], "Y");
    // …and to pending at once when its dependencies have all completed.
    s.ok("task-queue", &["fail", "Y", "--worker", "w", "--no-retry"]);
    assert_eq!(s.ok("task-queue", &["requeue", "Y"]).trim(), "pending");

    // A dependency purged: fine for a task that ran (its dependencies had completed), refused
    // for one that never did (nothing says that one completed).
    enqueue(&s, &["--class", "d", "--id", "P"]);
    enqueue(&s, &["--class", "d", "--id", "Q", "--after", "P"]);
    enqueue(&s, &["--class", "d", "--id", "R", "--after", "P"]);
    s.ok("task-queue", &["cancel", "R"]);
    claim(&s, &["--worker", "w", "--class", "d"]);
    s.ok("task-queue", &["complete", "P", "--worker", "w"]);
    assert_eq!(
        claim(&s, &["--worker", "w", "--class", "d"])["task_id"],
        "Q"
    );
    s.ok("task-queue", &["fail", "Q", "--worker", "w", "--no-retry"]);
    backdate(&s, "completed", "P");
    s.ok("task-queue", &["purge", "--completed-older-than", "0s"]);
    assert!(!tasks(&s).join("completed/P.json").exists());
    assert_eq!(s.ok("task-queue", &["requeue", "Q"]).trim(), "pending");
    let err = stderr(&s.code("task-queue", &["requeue", "R"], 5));
    assert!(err.contains("dependency P no longer exists"), "{err}");
    assert_eq!(state_of(&s, "R"), "cancelled");
}
