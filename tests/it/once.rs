//! Cron mode equals daemon mode (DESIGN §6 S6): `heartbeat-monitor --once` settles stops
//! whose stopper died, finishes transitions a crash left half-done (and requeues their
//! tasks), fires due restarts and expires leases, with the daemon's verdicts.

use crate::fleet::*;
use crate::support::procs::*;
use crate::support::{wait_until, Scene};
use serde_json::{json, Value};
use std::time::Duration;

/// A worker that ignores SIGTERM, a `stop-worker` with a long grace that is SIGKILLed
/// mid-grace, and (with `kill_worker`) the worker SIGKILLed too. The stop is backdated in
/// the spec, as if it had begun two minutes ago. Returns the worker's id and pgid.
fn interrupted_stop(s: &Scene, r: &Reaper, kill_worker: bool) -> (String, i32) {
    let (id, pid) = spawn_sh(s, r, &["--tokens", "1000"], "trap '' TERM; exec sleep 300");
    member_named(pid, "sleep");
    let mut stopper = s
        .cmd("stop-worker")
        .args([id.as_str(), "--grace", "60"])
        .spawn()
        .expect("stop-worker");
    r.track(stopper.id());
    assert!(wait_until(T, || s.spec("active", &id)["status"] == "shutting_down"));
    signal(stopper.id() as i32, libc::SIGKILL);
    stopper.wait().unwrap();
    if kill_worker {
        signal_group(pid, libc::SIGKILL);
        assert!(wait_until(T, || group_members(pid).is_empty()));
    }
    edit_spec(s, "active", &id, |v| {
        for h in v["history"].as_array_mut().unwrap() {
            if h["to"] == "shutting_down" {
                h["at"] = json!(from_now(-120));
            }
        }
    });
    (id, pid)
}

fn assert_stop_settled(s: &Scene, id: &str, pid: i32) {
    // The event follows the move and the budget release.
    wait_event(s, "worker_stopped", id);
    assert_eq!(s.dirs_of(id), ["completed"], "{}", s.tree());
    assert_eq!(s.spec("completed", id)["status"], "completed");
    assert!(group_members(pid).is_empty(), "nothing of it runs");
    assert_eq!(s.budget()["used"], 0, "its tokens were released");
    budget_exact(s);
}

#[test]
fn once_settles_a_stop_whose_stopper_and_worker_were_both_killed() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, pid) = interrupted_stop(&s, &r, true);
    s.ok("heartbeat-monitor", &["--once"]);
    assert_stop_settled(&s, &id, pid);
}

#[test]
fn once_finishes_a_stop_whose_stopper_died_mid_grace() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, pid) = interrupted_stop(&s, &r, false);
    assert!(
        !group_members(pid).is_empty(),
        "still running, ignoring SIGTERM"
    );
    s.ok("heartbeat-monitor", &["--once", "--grace-seconds", "0.5"]);
    assert_stop_settled(&s, &id, pid);
}

#[test]
fn the_daemon_finishes_the_same_interrupted_stop() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, pid) = interrupted_stop(&s, &r, false);
    let m = Monitor::start(&s, &["--grace-seconds", "0.5"]);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["completed"]),
        "{}",
        m.stderr()
    );
    assert_stop_settled(&s, &id, pid);
}

#[test]
fn once_finishes_a_failure_a_crash_left_in_active_and_requeues_its_task() {
    let s = Scene::new();
    let task = enqueue(&s, "c6");
    let id = spawn(&s, &["--tokens", "500"], &[]);
    s.ok("heartbeat", &[&id]);
    s.ok("task-queue", &["claim", "--worker", &id, "--class", "c6"]);
    assert_eq!(tasks_in(&s, "processing"), std::slice::from_ref(&task));
    // The worker's failure was written, but the crash came before the rename to zombie/.
    edit_spec(&s, "active", &id, |v| {
        let at = from_now(0);
        v["status"] = json!("failed");
        v["completed_at"] = json!(at);
        v["exit"] = json!({"code": 1, "signal": null, "reason": "crashed", "at": at});
        let h: &mut Vec<Value> = v["history"].as_array_mut().unwrap();
        h.push(json!({"at": at, "from": "running", "to": "failed", "reason": "crashed"}));
    });
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(s.dirs_of(&id), ["zombie"], "{}", s.tree());
    assert_eq!(s.spec("zombie", &id)["status"], "failed");
    assert_eq!(tasks_in(&s, "pending"), [task], "its task is requeued");
    wait_event(&s, "worker_failed", &id);
    budget_exact(&s);
}

#[test]
fn once_fires_due_restarts() {
    let s = Scene::new();
    s.set_policy("restart.base_seconds", json!(0.5));
    let r = Reaper::default();
    let (id, pid) = spawn_sh(&s, &r, &[], "exit 3");
    assert!(wait_until(T, || !alive(pid)));
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(s.dirs_of(&id), ["zombie"]);
    std::thread::sleep(Duration::from_millis(700));
    // Due now: fired by the next pass at the latest.
    if history(&s).iter().all(|l| l["result"] != "success") {
        s.ok("heartbeat-monitor", &["--once"]);
    }
    // The restart may fail again and be restarted within the same pass: each attempt once.
    let ok: Vec<Value> = history(&s)
        .into_iter()
        .filter(|l| l["result"] == "success")
        .collect();
    assert!(!ok.is_empty(), "{:#?}", history(&s));
    for (i, l) in ok.iter().enumerate() {
        assert_eq!(l["original_worker_id"], id.as_str());
        assert_eq!(l["attempt"], i as u64 + 1, "{ok:#?}");
        let new = l["new_worker_id"].as_str().unwrap();
        assert!(!s.dirs_of(new).is_empty());
    }
}

/// A task of class `lease` claimed by a claimant that is no worker, for `lease` seconds.
fn claimed_by_a_cron_job(s: &Scene, lease: &str) -> String {
    let task = enqueue(s, "lease");
    let args = [
        "claim",
        "--worker",
        "a-cron-job",
        "--class",
        "lease",
        "--lease",
        lease,
    ];
    s.ok("task-queue", &args);
    task
}

#[test]
fn once_expires_leases() {
    let s = Scene::new();
    let task = claimed_by_a_cron_job(&s, "1");
    assert_eq!(tasks_in(&s, "processing"), std::slice::from_ref(&task));
    std::thread::sleep(Duration::from_millis(1500));
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(tasks_in(&s, "pending"), [task]);
}

/// A lease the daemon's pass saw running is acted on when it lapses, not at the next paced
/// pass (here 60 s away; on a slow or large home pacing alone put it up to a minute late).
#[test]
fn the_daemon_requeues_a_lapsed_lease_when_it_lapses() {
    let s = Scene::new();
    s.set_policy("maintain_interval_seconds", json!(60));
    let task = claimed_by_a_cron_job(&s, "3");
    let started = std::time::Instant::now();
    let mut m = Monitor::start(&s, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || tasks_in(&s, "pending")
            == std::slice::from_ref(&task)),
        "not requeued after {:?}\n{}",
        started.elapsed(),
        m.stderr()
    );
    assert_eq!(m.terminate().code(), Some(0), "{}", m.stderr());
}

/// S5: `CORRAL_HEARTBEAT__ZOMBIE_SECONDS=0 heartbeat-monitor --once` SIGTERMed a beating
/// fleet, and `--poll-interval` 0.0001 (a spinning core), -5, NaN, inf or 0 were accepted.
/// Each is refused with exit 6 and one line naming the key, and nothing is touched.
#[test]
fn thresholds_and_intervals_out_of_range_are_refused_and_the_fleet_is_left_alone() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, pid) = spawn_sh(&s, &r, &[], "exec sleep 300");
    s.ok("heartbeat", &[&id]);
    let refused = |env: Option<(&str, &str)>, args: &[&str], key: &str| {
        let mut c = s.cmd("heartbeat-monitor");
        c.args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(60));
        let err = crate::support::stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{env:?} {args:?} was accepted\n{err}"
        );
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(key),
            "{env:?} {args:?}: {err}"
        );
    };
    for key in [
        "ZOMBIE_SECONDS",
        "WARNING_SECONDS",
        "CRITICAL_SECONDS",
        "PENDING_TIMEOUT_SECONDS",
        // 0 reported every task stuck at its claim.
        "STUCK_TASK_SECONDS",
    ] {
        for v in ["0", "1e-300"] {
            let var = format!("CORRAL_HEARTBEAT__{key}");
            refused(Some((&var, v)), &["--once"], &key.to_ascii_lowercase());
        }
    }
    for v in ["0.0001", "-5", "0", "1e13"] {
        refused(
            None,
            &["--once", &format!("--poll-interval={v}")],
            "poll_interval",
        );
    }
    for v in ["NaN", "inf"] {
        refused(
            None,
            &["--once", &format!("--poll-interval={v}")],
            "--poll-interval",
        );
    }
    refused(
        None,
        &["--print-config", "--poll-interval=0"],
        "poll_interval",
    );
    refused(None, &["--once", "--sample-interval=-5"], "sample_interval");
    refused(None, &["--once", "--zombie-seconds=0"], "zombie_seconds");
    // The healthy worker was never touched.
    assert_eq!(s.dirs_of(&id), ["active"]);
    assert!(alive(pid), "still running");
    assert!(s.events_of("worker_stopping").is_empty());
    // Short thresholds in range still work.
    s.ok(
        "heartbeat-monitor",
        &["--once", "--zombie-seconds", "60", "--poll-interval", "0.1"],
    );
}

/// `CORRAL_EVENTS_MAX_BYTES` / `CORRAL_EVENTS_KEEP` (S5): `--print-config` shows what the
/// writers use (it showed the policy's while the environment's applied), and a value that
/// is not a number or out of the policy's range is refused by name (it was ignored, and 1
/// byte rotated the log on nearly every write).
#[test]
fn event_rotation_overrides_are_shown_and_range_checked() {
    let s = crate::support::Scene::new();
    let mut c = s.cmd("heartbeat-monitor");
    c.env("CORRAL_EVENTS_MAX_BYTES", "20000")
        .env("CORRAL_EVENTS_KEEP", "2")
        .arg("--print-config");
    let out = crate::support::run_with_timeout(&mut c, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["events"],
        serde_json::json!({"max_bytes": 20000, "keep": 2})
    );
    for (k, bad) in [
        ("CORRAL_EVENTS_MAX_BYTES", "1"),
        ("CORRAL_EVENTS_MAX_BYTES", "banana"),
        ("CORRAL_EVENTS_KEEP", "-3"),
    ] {
        for args in [&["--print-config"][..], &["--once", "-q"][..]] {
            let mut c = s.cmd("heartbeat-monitor");
            c.env(k, bad).args(args);
            let out = crate::support::run_with_timeout(&mut c, std::time::Duration::from_secs(30));
            let err = crate::support::stderr(&out);
            assert_eq!(out.status.code(), Some(6), "{k}={bad} {args:?}: {err}");
            assert!(err.contains(k), "{err}");
        }
    }
}
