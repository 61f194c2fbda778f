//! The launch path and the smaller CLI items of issue 8, with real processes: a restart
//! reproduces the launch (S7: absolute program, working directory, environment, a clean
//! signal state), a worker that spawns a worker passes nothing of itself on, orphaning is
//! explicit (`--parent-pid`), `--reuse` hands a worker to exactly one caller, concurrent
//! stops both succeed, logs never follow planted symlinks, no colour codes reach a pipe,
//! and an exit record says when its status is not known.

use crate::support::procs::*;
use crate::support::{stderr, stdout, wait_until, write_script, Scene};
use corral::home::Home;
use corral::lifecycle::{self, SpawnRequest};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// `/proc/<pid>/status` mask fields as numbers: (SigBlk, SigIgn).
fn sig_masks(pid: i32) -> (u64, u64) {
    let field = |name: &str| sig_mask(pid, name).unwrap_or_else(|| panic!("no {name} for {pid}"));
    (field("SigBlk:"), field("SigIgn:"))
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn set_type(s: &Scene, name: &str, v: Value) {
    let p = s.coord().join("config/worker-types.json");
    let mut doc = crate::support::read_json(&p);
    doc["types"][name] = v;
    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// Case 8 (S7): `-- ./convert.sh` from a working directory, with the type's env and
/// env_file and `--env`, restarted from somewhere else through `SpawnRequest::restart` (the
/// monitor's path): the restart runs the same program in the same directory with the same
/// environment, reads the env file again, and the secret never lands in a spec.
#[test]
fn a_relative_command_restarts_with_the_same_program_cwd_and_env() {
    let s = Scene::new();
    let r = Reaper::default();
    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let script = work.join("convert.sh");
    write_script(
        &script,
        "#!/bin/sh\necho \"$PWD|$MODE|$TYPE_VAR|$SECRET|$CORRAL_WORKER_ID|$1\" >> \"$OUT\"\nexec sleep 120\n",
    );
    let env_file = s.coord().join("config/converter.env");
    std::fs::write(&env_file, "# secrets\nSECRET=s3cret\n").unwrap();
    set_type(
        &s,
        "converter-worker",
        json!({"tokens": 0, "env": {"TYPE_VAR": "from-type", "MODE": "type-default"},
               "env_file": "converter.env"}),
    );
    let out_file = s.dir.path().join("out.txt");
    let out = s
        .cmd("spawn-worker")
        .current_dir(&work)
        .args([
            "--type",
            "converter-worker",
            "--env",
            "MODE=fast",
            "--env",
            &format!("OUT={}", out_file.display()),
            "--",
            "./convert.sh",
            "arg1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out);
    r.group(worker_pid(&s, &id));
    let lines = |n: usize| {
        assert!(
            wait_until(T, || std::fs::read_to_string(&out_file)
                .map(|t| t.lines().count() >= n)
                .unwrap_or(false)),
            "{}",
            s.tree()
        );
        std::fs::read_to_string(&out_file).unwrap()
    };
    let work_abs = work.canonicalize().unwrap();
    let first = lines(1);
    assert_eq!(
        first.lines().next().unwrap(),
        format!("{}|fast|from-type|s3cret|{id}|arg1", work_abs.display())
    );
    let spec = s.spec("active", &id);
    assert_eq!(spec["launch"]["command"][0], script.to_str().unwrap());
    assert_eq!(spec["launch"]["cwd"], work.to_str().unwrap());
    assert_eq!(spec["launch"]["env"]["MODE"], "fast");
    let text = std::fs::read_to_string(s.spec_path("active", &id)).unwrap();
    assert!(
        !text.contains("s3cret"),
        "the env file is never copied into a spec"
    );

    // The worker dies; the monitor would restart it from its own directory.
    signal_group(worker_pid(&s, &id), libc::SIGKILL);
    s.ok("heartbeat", &[&id, "--fail", "--error", "killed"]);
    std::fs::write(&env_file, "SECRET=rotated\n").unwrap();
    let failed = corral::spec::read(&s.spec_path("zombie", &id)).unwrap();
    assert_ne!(std::env::current_dir().unwrap(), work_abs);
    let req = SpawnRequest::restart(&failed, "w-restarted", &id, 1);
    let specs = lifecycle::spawn(&Home::at(&s.home), &req).expect("restart");
    r.group(specs[0].process.as_ref().unwrap().pid);
    let second = lines(2);
    assert_eq!(
        second.lines().nth(1).unwrap(),
        format!(
            "{}|fast|from-type|rotated|w-restarted|arg1",
            work_abs.display()
        )
    );
    assert_eq!(s.spec("active", "w-restarted")["restart"]["attempt"], 1);
}

/// Case 8 (S7): restarted workers ran with SIGTERM, SIGINT and SIGHUP blocked (inherited
/// from the monitor's mask), and a launcher that ignores signals passed that on too. A
/// launched worker starts with an empty mask and default dispositions either way.
#[test]
fn launched_workers_start_with_a_clean_signal_mask_and_default_dispositions() {
    let s = Scene::new();
    let r = Reaper::default();
    // From a launcher that ignores HUP and TERM (nohup-style): the shell execs spawn-worker
    // with both ignored, which survives exec.
    let script = format!(
        "trap '' HUP TERM; exec {} --type build-worker -- sleep 120",
        crate::support::bin("spawn-worker").display()
    );
    let sh = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CORRAL_HOME", &s.home)
        .output()
        .unwrap();
    assert!(sh.status.success(), "{}", stderr(&sh));
    let id = stdout(&sh);
    let pid = worker_pid(&s, &id);
    r.group(pid);
    let (blk, ign) = sig_masks(pid);
    assert_eq!(blk, 0, "SigBlk of {id}");
    assert_eq!(ign & 0x7fff_ffff, 0, "SigIgn of {id}: {ign:x}");

    // From a thread that blocks the daemon's signals, as the monitor's restarts do.
    let home = Home::at(&s.home);
    let spec = std::thread::spawn(move || {
        corral::process::signals::block(&corral::process::signals::STOP_AND_RELOAD).unwrap();
        let req = SpawnRequest {
            worker_type: "build-worker".into(),
            count: 1,
            command: Some(vec!["sleep".into(), "120".into()]),
            ..Default::default()
        };
        lifecycle::spawn(&home, &req).expect("spawn")
    })
    .join()
    .unwrap();
    let pid = spec[0].process.as_ref().unwrap().pid;
    r.group(pid);
    let (blk, ign) = sig_masks(pid);
    assert_eq!(blk, 0, "SigBlk inherited from a blocking launcher");
    assert_eq!(ign & 0x7fff_ffff, 0);
}

/// A worker that spawns another worker (a master): the new worker must not inherit the
/// first one's liveness lock (it would keep it "alive", S1, and carry false proof, S2) nor
/// its task id.
#[test]
fn a_worker_that_spawns_a_worker_passes_on_neither_its_lock_nor_its_task() {
    let s = Scene::new();
    let r = Reaper::default();
    let ids_file = s.dir.path().join("child-id");
    let script = format!(
        "{} --type build-worker -- sleep 120 > {}; exec sleep 120",
        crate::support::bin("spawn-worker").display(),
        ids_file.display()
    );
    let a = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--task-id",
            "t-a",
            "--",
            "sh",
            "-c",
            &script,
        ],
        0,
    ));
    let a_pid = worker_pid(&s, &a);
    r.group(a_pid);
    assert!(wait_until(T, || std::fs::read_to_string(&ids_file)
        .map(|t| !t.trim().is_empty())
        .unwrap_or(false)));
    let b = std::fs::read_to_string(&ids_file)
        .unwrap()
        .trim()
        .to_string();
    let b_pid = worker_pid(&s, &b);
    r.group(b_pid);
    let a_lock = s.coord().join(format!(".locks/alive/{a}.lock"));
    let holders = corral::process::lock_holders(&a_lock);
    assert!(!holders.contains(&b_pid), "B holds A's lock: {holders:?}");
    let env = environ(b_pid);
    assert!(env.contains(&format!("CORRAL_WORKER_ID={b}")));
    assert!(
        !env.iter().any(|e| e.starts_with("CORRAL_TASK_ID")),
        "{env:?}"
    );
    signal_group(a_pid, libc::SIGKILL);
    assert!(wait_until(T, || corral::process::alive_lock_free(&a_lock).unwrap()));
    assert!(alive(b_pid));
}

/// Case 11 (orphans): every CLI-launched worker looked orphaned, its "parent" being
/// spawn-worker. A parent is recorded only when named, with its start time.
#[test]
fn a_parent_is_recorded_only_when_named_with_its_start_time() {
    let s = Scene::new();
    let r = Reaper::default();
    let parent = sleeper(&r);
    let ppid = parent.id() as i32;
    r.keep(parent);
    let id = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--parent-pid",
            &ppid.to_string(),
            "--",
            "sleep",
            "120",
        ],
        0,
    ));
    r.group(worker_pid(&s, &id));
    let p = &s.spec("active", &id)["process"];
    assert_eq!(p["parent_pid"], ppid);
    assert_eq!(p["parent_start_time_ticks"], start_ticks(ppid));
    let plain = stdout(&s.code(
        "spawn-worker",
        &["--type", "build-worker", "--", "sleep", "120"],
        0,
    ));
    r.group(worker_pid(&s, &plain));
    assert!(s.spec("active", &plain)["process"]["parent_pid"].is_null());
    s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--parent-pid",
            "999999999",
            "--",
            "sleep",
            "1",
        ],
        6,
    );
    s.code(
        "spawn-worker",
        &["--type", "build-worker", "--parent-pid", "1"],
        2,
    );
}

/// Case 11 (`--reuse`): it handed the same idle worker to every caller and dropped the
/// task. Six parallel callers for three idle workers: each idle worker goes to exactly one
/// caller, with that caller's task; the others get new workers; `--count` spawns the rest.
#[test]
fn parallel_reuse_hands_each_idle_worker_to_exactly_one_caller() {
    let s = Scene::new();
    let idle: Vec<String> = (0..3)
        .map(|_| {
            let id = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
            s.ok("heartbeat", &[&id, "--status", "idle"]);
            id
        })
        .collect();
    let got: Vec<(String, String)> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let task = format!("t-{i}");
                    let out = s.ok(
                        "spawn-worker",
                        &["--type", "build-worker", "--reuse", "--task-id", &task],
                    );
                    (task, out.trim().to_string())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::HashSet<&String> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 6, "a worker handed to two callers: {got:?}");
    for w in &idle {
        let (task, _) = got
            .iter()
            .find(|(_, id)| id == w)
            .unwrap_or_else(|| panic!("idle {w} was not reused: {got:?}"));
        let spec = s.spec("active", w);
        assert_eq!(spec["task_id"], *task);
        assert_eq!(spec["status"], "running");
    }
    for (task, id) in &got {
        assert_eq!(s.spec("active", id)["task_id"], *task);
    }
    // One idle worker left, three wanted: one reused, two spawned.
    s.ok("heartbeat", &[&idle[0], "--status", "idle"]);
    let out = s.ok(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--reuse",
            "--count",
            "3",
            "--task-id",
            "t-x",
        ],
    );
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], idle[0]);
    assert_eq!(s.ids_in("active").len(), 8);
    s.ok("recalc-budget", &["--check"]);
}

/// Case 11 (concurrent stops): two `stop-worker --all` at once both exited 5 although every
/// worker stopped. A worker the other stopper finished first is a success.
#[test]
fn two_concurrent_stop_all_both_succeed() {
    let s = Scene::with_tokens(1_000_000);
    let r = Reaper::default();
    for _ in 0..6 {
        let id = stdout(&s.code(
            "spawn-worker",
            &[
                "--type",
                "test-worker",
                "--",
                "sh",
                "-c",
                "trap '' TERM; sleep 300",
            ],
            0,
        ));
        r.group(worker_pid(&s, &id));
    }
    let outs: Vec<std::process::Output> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| s.run("stop-worker", &["--all", "--grace", "1"])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        s.expect_code("stop-worker", &["--all"], o, 0);
    }
    assert!(s.ids_in("active").is_empty());
    assert_eq!(s.ids_in("completed").len(), 6);
    for id in s.ids_in("completed") {
        assert_eq!(events_for(&s, "worker_stopped", &id).len(), 1, "{id}");
    }
    s.ok("recalc-budget", &["--check"]);
}

/// Case 11 (logs): `worker.log` and the daemon log followed planted symlinks and appended
/// outside the home. Both are refused (exit 6), the target untouched, nothing started; the
/// daemon's log is the documented `agents/logs/<binary>.log` itself.
#[test]
fn logs_never_follow_planted_symlinks_and_the_daemon_log_has_its_documented_name() {
    let s = Scene::new();
    let outside = s.dir.path().join("outside.txt");
    std::fs::write(&outside, "").unwrap();
    let dir = s.home.join("agents/logs/workers/w-log");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("worker.log")).unwrap();
    let out = s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--id",
            "w-log",
            "--",
            "sleep",
            "120",
        ],
        6,
    );
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert!(
        s.spec("zombie", "w-log")["process"].is_null(),
        "nothing started"
    );

    // The daemon writes its documented log name, private.
    s.ok("heartbeat-monitor", &["--once", "-v"]);
    let log = s.home.join("agents/logs/heartbeat-monitor.log");
    let meta = std::fs::symlink_metadata(&log).expect("agents/logs/heartbeat-monitor.log");
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    let out = s.code("heartbeat-monitor", &["--once"], 6);
    assert!(
        stderr(&out).contains("heartbeat-monitor.log"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"",
        "nothing appended outside"
    );
}

/// Case 11 (colour): escape codes went into pipes and log collectors. Not any more.
#[test]
fn no_colour_codes_reach_a_pipe() {
    let s = Scene::new();
    let out = s.run("heartbeat-monitor", &["--once", "-vv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("DEBUG") || err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// Issue 12's honest record: an exit that nobody in corral could observe says so, instead
/// of `code: null, signal: null` that look like data; one that was observed says who saw it.
#[test]
fn exit_records_say_whether_the_status_is_known() {
    let s = Scene::new();
    let r = Reaper::default();
    let failed = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    s.ok("heartbeat", &[&failed, "--fail", "--error", "quota"]);
    let e = &s.spec("zombie", &failed)["exit"];
    assert_eq!(e["known"], false, "{e:#}");
    assert!(e["unknown_because"].as_str().unwrap().contains("parent"));
    assert!(e["code"].is_null() && e["signal"].is_null());
    let done = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    s.ok("heartbeat", &[&done, "--complete"]);
    let e = &s.spec("completed", &done)["exit"];
    assert_eq!(
        (e["code"].as_i64(), e["known"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(e["source"], "worker_report");
    let stubborn = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 300",
        ],
        0,
    ));
    r.group(worker_pid(&s, &stubborn));
    assert!(wait_until(T, || group_members(worker_pid(&s, &stubborn))
        .len()
        == 2));
    s.ok("stop-worker", &[&stubborn, "--grace", "0.5"]);
    let e = &s.spec("completed", &stubborn)["exit"];
    assert_eq!(e["signal"], libc::SIGKILL, "{e:#}");
    assert_eq!(
        (e["known"].as_bool(), e["source"].as_str()),
        (Some(true), Some("stopper"))
    );
}
