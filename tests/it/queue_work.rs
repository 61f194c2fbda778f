//! The worker loop (`task-queue work`) with real processes: outcomes, idle exit, SIGTERM,
//! a launched loop completing its worker, task timeouts with their stderr markers, and a
//! cancellation stopping the running command.

use crate::support::procs::*;
use crate::support::queue::{enqueue, json_files_under, spawn_worker, state_of, tasks};
use crate::support::{read_json, stderr, wait_until, write_script, Scene};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Pending tasks of a class (by walking its buckets).
fn pending_in(s: &Scene, class: &str) -> usize {
    json_files_under(&tasks(s).join("pending").join(class)).len()
}

#[test]
fn work_loop_runs_completes_fails_and_exits_when_idle() {
    let s = Scene::new();
    let w = spawn_worker(&s);
    let ok1 = enqueue(&s, &["--class", "j", "--payload", r#"{"n": 1}"#]);
    let bad = enqueue(
        &s,
        &[
            "--class",
            "j",
            "--payload",
            r#"{"boom": true}"#,
            "--max-attempts",
            "1",
        ],
    );
    let ok2 = enqueue(&s, &["--class", "j", "--payload", r#"{"n": 2}"#]);
    let script = r#"t=$(cat); case "$t" in *boom*) echo oops >&2; exit 3;; esac; printf '{"id":"%s","worker":"%s"}\n' "$CORRAL_TASK_ID" "$CORRAL_WORKER_ID""#;
    let t0 = Instant::now();
    let o = s.run(
        "task-queue",
        &[
            "work",
            "--worker",
            &w,
            "--class",
            "j",
            "--idle-exit",
            "0.5",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    s.expect_code("task-queue", &["work"], &o, 0);
    assert!(t0.elapsed() < Duration::from_secs(30));
    for id in [&ok1, &ok2] {
        let t = read_json(&tasks(&s).join(format!("completed/{id}.json")));
        assert_eq!(t["result"]["id"], id.as_str());
        assert_eq!(t["result"]["worker"], w.as_str());
    }
    let f = read_json(&tasks(&s).join(format!("failed/{bad}.json")));
    assert!(
        f["error"].as_str().unwrap().contains("exited with code 3"),
        "{f}"
    );
    assert_eq!(s.spec("active", &w)["status"], "idle");

    // A non-JSON stdout is kept as a string; --max-tasks stops the loop.
    let id = enqueue(&s, &["--class", "j"]);
    enqueue(&s, &["--class", "j"]);
    s.ok(
        "task-queue",
        &[
            "work",
            "--worker",
            "plain",
            "--max-tasks",
            "1",
            "--",
            "echo",
            "hello",
        ],
    );
    assert_eq!(
        read_json(&tasks(&s).join(format!("completed/{id}.json")))["result"],
        "hello"
    );
    assert_eq!(pending_in(&s, "j"), 1);
}

#[test]
fn sigterm_returns_the_running_task_and_exits_0() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let id = enqueue(&s, &["--class", "slow"]);
    let mut c = s.cmd("task-queue");
    c.args([
        "work",
        "--worker",
        "lease-holder",
        "--",
        "sh",
        "-c",
        "cat >/dev/null; exec sleep 60",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = reaper.spawn(&mut c);
    assert!(wait_until(Duration::from_secs(20), || tasks(&s)
        .join(format!("processing/{id}.json"))
        .exists()));
    // Let the command start (it is the one that must get SIGTERM).
    std::thread::sleep(Duration::from_millis(200));
    signal(child.id() as i32, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(state_of(&s, &id), "pending", "{}", s.tree());
    assert_eq!(pending_in(&s, "slow"), 1);
    let ev = s.events_of("task_requeued");
    assert_eq!(ev.len(), 1);
    assert!(ev[0]["message"]
        .as_str()
        .unwrap()
        .contains("stopped before finishing"));
    // An idle loop also stops on SIGTERM, at once.
    s.ok("task-queue", &["claim", "--worker", "x"]);
    let mut c = s.cmd("task-queue");
    c.args(["work", "--worker", "idle", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = reaper.spawn(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    signal(child.id() as i32, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// A launched worker whose process is the work loop completes when the loop ends by itself
/// (so the monitor never takes the exit for a crash), counting its jobs; one stopped with
/// SIGTERM is recorded as stopped by the stopper instead.
#[test]
fn launched_work_loop_completes_its_worker_on_idle_exit_and_is_stopped_on_sigterm() {
    let s = Scene::new();
    let reaper = Reaper::default();
    enqueue(&s, &["--class", "conv", "--payload", "{\"n\":1}"]);
    enqueue(&s, &["--class", "conv", "--payload", "{\"n\":2}"]);
    let tq = crate::support::bin("task-queue");
    let tq = tq.to_str().expect("utf-8 path");
    s.ok(
        "spawn-worker",
        &[
            "--type",
            "converter-worker",
            "--id",
            "w-loop",
            "--",
            tq,
            "work",
            "--worker",
            "w-loop",
            "--class",
            "conv",
            "--idle-exit",
            "1",
            "--",
            "cat",
        ],
    );
    if let Some(pid) = s.spec("active", "w-loop")["pid"].as_u64() {
        reaper.track(pid as u32);
    }
    assert!(
        // The event follows the move: wait for both.
        wait_until(Duration::from_secs(30), || s.dirs_of("w-loop")
            == vec!["completed"]
            && s.events_of("worker_completed").len() == 1),
        "the work loop did not complete its worker:\n{}",
        s.tree()
    );
    let spec = s.spec("completed", "w-loop");
    assert_eq!(spec["jobs_processed"], 2, "{spec}");
    assert_eq!(spec["exit"]["code"], 0);
    assert_eq!(s.events_of("task_completed").len(), 2);
    assert_eq!(s.events_of("worker_completed").len(), 1);
    assert!(s.events_of("worker_failed").is_empty());

    s.ok(
        "spawn-worker",
        &[
            "--type",
            "converter-worker",
            "--id",
            "w-term",
            "--",
            tq,
            "work",
            "--worker",
            "w-term",
            "--class",
            "conv",
            "--idle-exit",
            "60",
            "--",
            "cat",
        ],
    );
    if let Some(pid) = s.spec("active", "w-term")["pid"].as_u64() {
        reaper.track(pid as u32);
    }
    assert!(wait_until(Duration::from_secs(20), || s
        .spec("active", "w-term")["status"]
        == "idle"));
    s.ok(
        "stop-worker",
        &["w-term", "--grace", "5", "--reason", "scale down"],
    );
    assert_eq!(s.dirs_of("w-term"), vec!["completed"]);
    let stopped = s.events_of("worker_stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["worker_id"], "w-term");
    assert_eq!(
        s.events_of("worker_completed").len(),
        1,
        "a SIGTERM'd loop does not complete itself"
    );
    s.code("recalc-budget", &["--check"], 0);
}

#[test]
fn work_stops_a_task_past_its_timeout_and_frames_its_stderr() {
    let s = Scene::new();
    let slow = enqueue(
        &s,
        &[
            "--class",
            "t",
            "--timeout",
            "0.5",
            "--max-attempts",
            "1",
            "--payload",
            "\"slow\"",
        ],
    );
    let quick = enqueue(&s, &["--class", "t", "--payload", "\"quick\""]);
    let flag = s.dir.path().join("slow-children.pid");
    let script = format!(
        r#"t=$(cat); echo "stderr of $CORRAL_TASK_ID" >&2; case "$t" in *slow*) sleep 60 & echo $! > {}; wait;; esac; echo ok"#,
        flag.display()
    );
    let o = s.run(
        "task-queue",
        &[
            "work",
            "--worker",
            "tw",
            "--idle-exit",
            "0.5",
            "--kill-grace",
            "0.5",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    s.expect_code("task-queue", &["work"], &o, 0);
    assert_eq!(state_of(&s, &slow), "failed");
    assert_eq!(state_of(&s, &quick), "completed");
    let f = read_json(&tasks(&s).join(format!("failed/{slow}.json")));
    assert!(
        f["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 0.5s"),
        "{f}"
    );
    let ev = s.events_of("task_timed_out");
    assert_eq!(
        (ev.len(), ev[0]["task_id"].as_str()),
        (1, Some(slow.as_str()))
    );
    // The whole process group went, not just the shell.
    let child: i32 = std::fs::read_to_string(&flag)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(child)),
        "the command's child survived"
    );
    // Each task's stderr sits between its markers.
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN "))
        .collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("--- corral task {quick} start ")))
        .expect("start marker");
    assert_eq!(lines[start + 1], format!("stderr of {quick}"));
    assert!(
        lines[start + 2].starts_with(&format!("--- corral task {quick} end ")),
        "{err}"
    );
    assert!(
        lines[start + 2].ends_with("exit=0 outcome=completed"),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("--- corral task {slow} end "))
                && l.ends_with("outcome=timed_out")),
        "{err}"
    );
}

#[test]
fn cancelling_a_running_task_stops_its_command_through_the_work_loop() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let id = enqueue(&s, &["--class", "k"]);
    let pidfile = s.dir.path().join("cmd.pid");
    let script = format!(
        "echo $$ > {}; cat >/dev/null; exec sleep 60",
        pidfile.display()
    );
    let mut c = s.cmd("task-queue");
    c.args([
        "work",
        "--worker",
        "kw",
        "--kill-grace",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let loop_ = reaper.spawn(&mut c);
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| !t.trim().is_empty())
    }));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    reaper.add(pid);
    assert_eq!(
        s.ok("task-queue", &["cancel", &id]).trim(),
        format!("{id} cancelling")
    );
    assert!(
        wait_until(Duration::from_secs(20), || tasks(&s)
            .join(format!("cancelled/{id}.json"))
            .exists()),
        "not cancelled\n{}",
        s.tree()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "the command still runs"
    );
    // The event follows the move: wait for both.
    assert!(wait_until(Duration::from_secs(10), || s
        .events_of("task_cancelled")
        .len()
        == 1));
    let ev = s.events_of("task_cancelled");
    assert_eq!(ev[0]["data"]["from"], "processing");
    // The loop goes on with the next task.
    let next = enqueue(&s, &["--class", "k"]);
    assert!(wait_until(Duration::from_secs(20), || tasks(&s)
        .join(format!("processing/{next}.json"))
        .exists()));
    signal(loop_.id() as i32, libc::SIGTERM);
    let out = loop_.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `work` loop whose command cannot start must not empty the queue into `failed/`: the
/// old loop failed every task, each attempt in a millisecond (three tasks dead-lettered in
/// 15 ms). A command missing at the start is refused before any claim; one that disappears
/// later (a deploy replacing it) gives the task back and ends the loop.
#[test]
fn a_command_that_cannot_start_never_burns_the_queue() {
    let s = Scene::new();
    let ids: Vec<String> = (0..3)
        .map(|_| enqueue(&s, &["--class", "r", "--max-attempts", "1"]))
        .collect();
    let work = |tail: &[&str], code: i32| {
        let mut args = vec!["work", "--worker", "w", "--class", "r"];
        args.extend_from_slice(tail);
        stderr(&s.code("task-queue", &args, code))
    };
    let err = work(&["--", "/no/such/command"], 6);
    assert!(err.contains("not found or not executable"), "{err}");
    assert_eq!(pending_in(&s, "r"), 3, "nothing was claimed");
    for id in &ids {
        assert_eq!(state_of(&s, id), "pending");
    }
    // A script that removes itself: the first task completes, the next cannot start.
    let script = s.home.join("vanishing.sh");
    write_script(&script, "#!/bin/sh\ncat >/dev/null\nrm -f -- \"$0\"\n");
    let err = work(&["--idle-exit", "5", "--", script.to_str().unwrap()], 6);
    assert!(
        err.contains("cannot run") && err.contains("requeued"),
        "{err}"
    );
    assert_eq!(state_of(&s, &ids[0]), "completed");
    // The second was given back (its one attempt spent, not failed); the third never taken.
    assert_eq!(state_of(&s, &ids[1]), "pending");
    assert_eq!(state_of(&s, &ids[2]), "pending");
    assert!(err.contains("outcome=requeued"), "{err}");
    assert_eq!(s.events_of("task_failed").len(), 0);
    assert_eq!(s.events_of("task_dead_lettered").len(), 0);
}
