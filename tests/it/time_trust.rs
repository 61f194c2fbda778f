//! Time is not trusted blindly, and no value crashes the monitor (DESIGN §6 S8, S5): a
//! `last_seen` in the future is treated as now (said once); a monitor paused together with
//! its fleet re-arms deadlines on resume instead of declaring everyone dead; absurd
//! durations in a spec or the policy saturate instead of panicking.

use crate::fleet::*;
use crate::support::procs::*;
use crate::support::{wait_until, Scene};
use serde_json::json;
use std::time::Duration;

#[test]
fn a_last_seen_in_the_future_is_treated_as_now_and_said_once() {
    let s = Scene::new();
    s.set_policy("zombie_seconds", json!(2));
    s.set_policy("warning_seconds", json!(100));
    s.set_policy("critical_seconds", json!(200));
    s.set_policy("restart.enabled", json!(false));
    write_spec(
        &s,
        &json!({"worker_id": "w-future", "worker_type": "build-worker", "status": "running",
                "heartbeat": {"last_seen": from_now(3600)}, "created_at": ago(10)}),
    );
    let m = Monitor::start(&s, &[]);
    // Treated as now: it is not immortal, it goes stale like any silent worker.
    assert!(
        wait_until(T, || s.dirs_of("w-future") == ["zombie"]),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    let said: Vec<_> = events_for(&s, "heartbeat_warning", "w-future")
        .into_iter()
        .filter(|e| e["data"]["kind"] == "clock_ahead")
        .collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0]["data"]["ahead_seconds"].as_f64().unwrap() > 3000.0);
}

#[test]
fn a_monitor_paused_with_its_fleet_does_not_declare_it_dead_on_resume() {
    let s = Scene::new();
    // Thresholds with room for a loaded machine: a beat every 0.5 s, dead after 6 s.
    s.set_policy("heartbeat_interval_seconds", json!(0.5));
    s.set_policy("warning_seconds", json!(2));
    s.set_policy("critical_seconds", json!(4));
    s.set_policy("zombie_seconds", json!(6));
    s.set_policy("restart.enabled", json!(false));
    let r = Reaper::default();
    let workers: Vec<(String, i32)> = (0..10)
        .map(|_| spawn_sh(&s, &r, &[], &beating(0.5)))
        .collect();
    let mut m = Monitor::start(&s, &[]);
    assert!(wait_until(T, || workers
        .iter()
        .all(
            |(id, pid)| s.spec("active", id)["status"] == "running" && m.watches(*pid)
        )));
    // A VM pause: the monitor and every worker stop together, past zombie_seconds.
    signal(m.pid(), libc::SIGSTOP);
    for (_, pid) in &workers {
        signal_group(*pid, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_millis(8000));
    // The monitor wakes first: the worst case.
    signal(m.pid(), libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    for (_, pid) in &workers {
        signal_group(*pid, libc::SIGCONT);
    }
    // A whole zombie period after the resume.
    std::thread::sleep(Duration::from_millis(7000));
    m.assert_running();
    let dead = s.ids_in("zombie");
    assert!(
        dead.is_empty(),
        "{} of 10 live workers declared dead on resume: {dead:?}\n{}",
        dead.len(),
        m.stderr()
    );
    assert!(m.stderr().contains("paused"), "{}", m.stderr());
    // Re-armed, not blinded: a worker that really stops beating is still caught.
    let (id, pid) = &workers[0];
    signal_group(*pid, libc::SIGSTOP);
    assert!(
        wait_until(T, || s.dirs_of(id) == ["zombie"]),
        "{}",
        m.stderr()
    );
}

#[test]
fn absurd_durations_in_a_spec_or_the_policy_do_not_crash_the_monitor() {
    let s = Scene::new();
    s.set_policy("restart.enabled", json!(false));
    let mut m = Monitor::start(&s, &[]);
    // Written straight into active/: whatever spawn-worker would accept, a file can say.
    let v = json!({"worker_id": "w-huge", "worker_type": "build-worker", "status": "running",
                   "heartbeat": {"last_seen": ago(0)}, "created_at": ago(10),
                   "started_at": ago(10),
                   "resources": {"timeout_minutes": 1_000_000_000_000u64}});
    let tmp = s.coord().join(".tmp/w-huge.json");
    std::fs::write(&tmp, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::rename(&tmp, s.spec_path("active", "w-huge")).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    m.assert_running();
    // The policy, edited while the daemon runs (accepted, or refused with the old one kept).
    for (k, v) in [
        ("zombie_seconds", json!(1e13)),
        ("critical_seconds", json!(1e13)),
        ("restart.base_seconds", json!(1e13)),
    ] {
        s.set_policy(k, v);
    }
    std::thread::sleep(Duration::from_millis(1000));
    m.assert_running();
    // Still watching: a death is still detected.
    let r = Reaper::default();
    let (id, pid) = spawn_sh(&s, &r, &[], "exec sleep 300");
    assert!(wait_until(T, || m.watches(pid)), "{}", m.stderr());
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        m.stderr()
    );
    m.assert_running();
    drop(m);
    // Cron mode: refused (exit 6) or fine (exit 0), never a panic.
    let out = s.run("heartbeat-monitor", &["--once"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(6)),
        "{:?}\n{}",
        out.status,
        crate::support::stderr(&out)
    );
}
