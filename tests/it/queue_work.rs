//! The worker loop (`task-queue work`) with real processes: outcomes, idle exit, SIGTERM,
//! a launched loop completing its worker, task timeouts with their stderr markers, and a
//! cancellation stopping the running command.

use crate::support::procs::*;
use crate::support::queue::{enqueue, json_files_under, spawn_worker, state_of, tasks};
use crate::support::{read_json, stderr, wait_until, write_script, Scene};
use std::path::{Path, PathBuf};
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
    // Signalled once its handler is in place (a fixed sleep lost that race on a loaded
    // machine, and the default action killed the loop); with no task and no --idle-exit,
    // only the signal can end it.
    let pid = child.id() as i32;
    assert!(wait_until(Duration::from_secs(30), || handles_signal(
        pid,
        libc::SIGTERM
    )));
    signal(pid, libc::SIGTERM);
    let out = crate::support::child_output_within(child, Duration::from_secs(30), "idle loop");
    assert_eq!(out.status.code(), Some(0));
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

/// A job for the overlap tests: it logs `start`/`end` lines, records its pid and its
/// child's (`sleep`) in `pids`, and first logs `overlap <pid>` for every process of an
/// earlier run still alive. The first run sleeps 10 s, a later one 0.2 s.
fn overlap_job(s: &Scene) -> (String, PathBuf, PathBuf) {
    let log = s.dir.path().join("job.log");
    let pids = s.dir.path().join("job.pids");
    let job = s.dir.path().join("job.sh");
    write_script(
        &job,
        &format!(
            r#"#!/bin/sh
cat >/dev/null
log={log}; pids={pids}
for p in $(cat "$pids" 2>/dev/null); do
  st=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1)
  case "$st" in ''|Z|X) ;; *) echo "overlap $p $st" >> "$log";; esac
done
if [ -s "$pids" ]; then d=0.2; else d=10; fi
sleep "$d" &
echo "$$ $!" >> "$pids"
echo "start $$ $CORRAL_WORKER_ID" >> "$log"
wait
echo "end $$ $CORRAL_WORKER_ID" >> "$log"
"#,
            log = log.display(),
            pids = pids.display()
        ),
    );
    (job.to_str().expect("utf-8 path").to_string(), log, pids)
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The pids of the first run (the shell, then its `sleep`).
fn first_run(pids: &Path) -> Vec<i32> {
    lines_of(pids)
        .first()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Two runs of one task must never overlap: the first run's processes are all gone when
/// the second starts, and only the second is recorded.
fn assert_no_overlap(log: &Path, first: &[i32], second_worker: &str) {
    let lines = lines_of(log);
    assert!(
        !lines.iter().any(|l| l.starts_with("overlap ")),
        "two runs overlapped: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("start ")).count(),
        2,
        "{lines:?}"
    );
    let ends: Vec<&String> = lines.iter().filter(|l| l.starts_with("end ")).collect();
    assert_eq!(ends.len(), 1, "{lines:?}");
    assert!(ends[0].ends_with(second_worker), "{lines:?}");
    for &p in first {
        assert!(!alive(p), "process {p} of the first run still runs");
    }
}

/// A work loop that is SIGKILLed cannot stop its command itself: the command dies with it
/// (parent-death signal), and the loop that runs the requeued task again first stops
/// what is left of the first run (the command's `sleep`, in its group), so the runs never
/// overlap. The old loop left the whole command running for another 8 s, the second run
/// beside it.
#[test]
fn a_killed_work_loop_takes_its_command_along_and_a_rerun_never_overlaps() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let (job, log, pids) = overlap_job(&s);
    let id = enqueue(&s, &["--class", "k"]);
    let mut c = s.cmd("task-queue");
    c.args([
        "work",
        "--worker",
        "wa",
        "--class",
        "k",
        "--lease",
        "3",
        "--idle-exit",
        "30",
        "--",
        &job,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut wa = reaper.spawn(&mut c);
    assert!(wait_until(Duration::from_secs(20), || lines_of(&log)
        .iter()
        .any(|l| l.starts_with("start "))));
    let first = first_run(&pids);
    assert_eq!(first.len(), 2, "{first:?}");
    for &p in &first {
        reaper.add(p);
    }
    signal(wa.id() as i32, libc::SIGKILL);
    let _ = wa.wait();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(first[0])),
        "the command outlived its loop"
    );
    // The lease lapses; maintenance gives the task back.
    assert!(
        wait_until(Duration::from_secs(30), || {
            s.run("heartbeat-monitor", &["--once", "-q"]);
            state_of(&s, &id) == "pending" || {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        }),
        "not requeued\n{}",
        s.tree()
    );
    let o = s.run(
        "task-queue",
        &[
            "work",
            "--worker",
            "wb",
            "--class",
            "k",
            "--lease",
            "3",
            "--kill-grace",
            "1",
            "--idle-exit",
            "0.5",
            "--",
            &job,
        ],
    );
    s.expect_code("task-queue", &["work"], &o, 0);
    assert_eq!(state_of(&s, &id), "completed", "{}", s.tree());
    assert_no_overlap(&log, &first, "wb");
    assert!(
        stderr(&o).contains("processes of an earlier run"),
        "{}",
        stderr(&o)
    );
}

/// A loop whose task is taken from it while the command runs (`requeue` by hand here; a
/// lapsed lease requeued by maintenance is the same move) stops the command (SIGTERM,
/// grace, SIGKILL) and records nothing; the loop that claims the task next runs it alone.
/// The old loop warned and let its command run to the end beside the new run.
#[test]
fn a_work_loop_that_loses_its_task_stops_the_command_and_records_nothing() {
    let s = Scene::new();
    let reaper = Reaper::default();
    let (job, log, pids) = overlap_job(&s);
    let id = enqueue(&s, &["--class", "k"]);
    let mut c = s.cmd("task-queue");
    c.args([
        "work",
        "--worker",
        "wq1",
        "--class",
        "k",
        "--lease",
        "30",
        "--kill-grace",
        "1",
        "--idle-exit",
        "30",
        "--",
        &job,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let wq1 = reaper.spawn(&mut c);
    assert!(wait_until(Duration::from_secs(20), || lines_of(&log)
        .iter()
        .any(|l| l.starts_with("start "))));
    let first = first_run(&pids);
    assert_eq!(first.len(), 2, "{first:?}");
    for &p in &first {
        reaper.add(p);
    }
    let mut c = s.cmd("task-queue");
    c.args([
        "work",
        "--worker",
        "wq2",
        "--class",
        "k",
        "--kill-grace",
        "1",
        "--idle-exit",
        "2",
        "--",
        &job,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let wq2 = reaper.spawn(&mut c);
    // wq2 is idle, sleeping on the queue (whichever loop claims the requeued task first
    // runs it: wq2 as a rule, wq1 once its command is gone).
    std::thread::sleep(Duration::from_secs(1));
    s.ok("task-queue", &["requeue", &id, "--reason", "operator"]);
    let out2 = wq2.wait_with_output().unwrap();
    assert_eq!(out2.status.code(), Some(0), "{}", stderr(&out2));
    assert_eq!(state_of(&s, &id), "completed", "{}", s.tree());
    let done = read_json(&tasks(&s).join(format!("completed/{id}.json")));
    let by = done["claimed_by"].as_str().unwrap_or_default().to_string();
    assert!(by == "wq1" || by == "wq2", "{done}");
    assert_no_overlap(&log, &first, &by);
    signal(wq1.id() as i32, libc::SIGTERM);
    let out1 = wq1.wait_with_output().unwrap();
    let err1 = stderr(&out1);
    assert_eq!(out1.status.code(), Some(0), "{err1}");
    assert!(err1.contains("is no longer ours"), "{err1}");
    assert!(
        err1.lines()
            .any(|l| l.starts_with(&format!("--- corral task {id} end "))
                && l.ends_with("outcome=lost")),
        "{err1}"
    );
    // Nothing was recorded by the loop that lost it.
    assert!(s.events_of("task_failed").is_empty());
    assert_eq!(s.events_of("task_completed").len(), 1);
}

/// A result cut for being too long records the size of everything the command printed,
/// not of the part kept.
#[test]
fn a_truncated_result_records_every_byte_the_command_printed() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "big"]);
    let o = s.run(
        "task-queue",
        &[
            "work",
            "--worker",
            "big",
            "--class",
            "big",
            "--idle-exit",
            "0.5",
            "--",
            "sh",
            "-c",
            r#"cat >/dev/null; head -c 3000000 /dev/zero | tr '\0' x"#,
        ],
    );
    s.expect_code("task-queue", &["work"], &o, 0);
    let t = read_json(&tasks(&s).join(format!("completed/{id}.json")));
    let r = &t["result"];
    assert_eq!(r["truncated"], true, "{t}");
    assert_eq!(r["bytes"], 3_000_000, "{r}");
    // The task's own record of what was cut says so too (S9's marker, as for any result).
    assert_eq!(t["truncated"]["result"], 3_000_000, "{t}");
    let head = r["head"].as_str().unwrap();
    assert!(
        !head.is_empty() && head.len() <= 16 * 1024 && head.bytes().all(|b| b == b'x'),
        "{head}"
    );
}

/// `show` takes `--format` like every command that prints data: json (the default, the
/// task file), jsonl (one line) and table (`field: value` lines).
#[test]
fn show_takes_format_json_jsonl_and_table() {
    let s = Scene::new();
    let id = enqueue(&s, &["--class", "f", "--name", "two\nlines"]);
    let plain: serde_json::Value =
        serde_json::from_str(&s.ok("task-queue", &["show", &id])).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&s.ok("task-queue", &["show", &id, "--format", "json"])).unwrap();
    assert_eq!(plain, json);
    assert_eq!(json["task_id"], id.as_str());
    let jsonl = s.ok("task-queue", &["show", &id, "--format", "jsonl"]);
    assert_eq!(jsonl.trim_end().lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&jsonl).unwrap(),
        json
    );
    let table = s.ok("task-queue", &["show", &id, "--format", "table"]);
    let field = |k: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("{k}:")))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
    };
    assert_eq!(field("task_id").as_deref(), Some(id.as_str()), "{table}");
    assert_eq!(field("class").as_deref(), Some("f"), "{table}");
    assert_eq!(field("state").as_deref(), Some("pending"), "{table}");
    // One line per field: the name's newline is shown escaped.
    assert_eq!(
        table.lines().count(),
        json.as_object().unwrap().len(),
        "{table}"
    );
    s.code("task-queue", &["show", &id, "--format", "yaml"], 2);
}
