//! Helpers for the liveness-daemon tests (groups, once, time, restart, chaos): launching
//! workers with shell commands, finding their process groups, editing a spec the way a
//! crash would have left it, and reading the queue's directories.

use crate::support::procs::*;
use crate::support::{bin, stdout, wait_until, Scene};
use serde_json::Value;
use std::time::Duration;

/// Generous wait for conditions in these tests.
pub const T: Duration = Duration::from_secs(30);

/// `spawn-worker --type build-worker EXTRA -- CMD…`; the new worker's id.
pub fn spawn(s: &Scene, extra: &[&str], cmd: &[&str]) -> String {
    spawn_typed(s, "build-worker", extra, cmd)
}

/// `spawn-worker --type TYPE EXTRA -- CMD…`; the new worker's id.
pub fn spawn_typed(s: &Scene, worker_type: &str, extra: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["--type", worker_type];
    args.extend_from_slice(extra);
    if !cmd.is_empty() {
        args.push("--");
        args.extend_from_slice(cmd);
    }
    stdout(&s.code("spawn-worker", &args, 0))
}

/// Launches `sh -c SCRIPT` as a worker; its id and leader pid (tracked for killing).
pub fn spawn_sh(s: &Scene, r: &Reaper, extra: &[&str], script: &str) -> (String, i32) {
    let id = spawn(s, extra, &["sh", "-c", script]);
    let pid = worker_pid(s, &id);
    r.group(pid);
    (id, pid)
}

/// Absolute path of a corral binary, for worker scripts.
pub fn exe(name: &str) -> String {
    bin(name).display().to_string()
}

/// A script that beats every `every` seconds until told to stop (exit 5).
pub fn beating(every: f64) -> String {
    format!(
        "while {hb} >/dev/null 2>&1; do sleep {every}; done",
        hb = exe("heartbeat")
    )
}

/// Waits for a live member of `pgid` running `comm`; its pid.
pub fn member_named(pgid: i32, comm: &str) -> i32 {
    let mut found = 0;
    assert!(
        wait_until(T, || {
            found = group_members(pgid)
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .unwrap_or(0);
            found > 0
        }),
        "no {comm} in group {pgid}"
    );
    found
}

/// Rewrites a spec file in place, as a crash or a hand edit would leave it (no lock, no
/// validation, same directory).
pub fn edit_spec(s: &Scene, dir: &str, id: &str, f: impl FnOnce(&mut Value)) {
    let p = s.spec_path(dir, id);
    let mut v = crate::support::read_json(&p);
    f(&mut v);
    let tmp = p.with_extension("edit");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    std::fs::rename(&tmp, &p).expect("rename");
}

/// Task ids in a queue state directory (`pending` is searched recursively).
pub fn tasks_in(s: &Scene, state: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(s.coord().join("tasks").join(state))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        if let Ok(v) =
            serde_json::from_str::<Value>(&std::fs::read_to_string(e.path()).unwrap_or_default())
        {
            if let Some(id) = v["task_id"].as_str() {
                out.push(id.to_string());
            }
        }
    }
    out.sort();
    out
}

/// Enqueues a task of class `c`; its id.
pub fn enqueue(s: &Scene, class: &str) -> String {
    stdout(&s.code("task-queue", &["enqueue", "--class", class], 0))
}

/// RFC 3339 time `secs` from now (negative: in the past).
pub fn from_now(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Defunct (unreaped) children of `pid`.
pub fn defunct_children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .ok()
                        .and_then(|t| {
                            let rest: Vec<String> = t
                                .get(t.rfind(')')? + 2..)?
                                .split_whitespace()
                                .map(String::from)
                                .collect();
                            Some(rest.first()? == "Z" && rest.get(1)? == &pid.to_string())
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `recalc-budget --check` says the budget is exact.
pub fn budget_exact(s: &Scene) {
    let out = s.run("recalc-budget", &["--check"]);
    s.expect_code("recalc-budget", &["--check"], &out, 0);
}

/// SIGKILLs a monitor and waits until its singleton lock is free again. A child it was
/// forking at that moment holds a copy of every descriptor until its `exec`, so the lock
/// can outlive the monitor by a moment.
pub fn kill_monitor(s: &Scene, mut m: Monitor) {
    let _ = m.child.kill();
    let _ = m.child.wait();
    let lock = s.coord().join(".locks/heartbeat-monitor.lock");
    let free = || {
        std::fs::File::open(&lock).is_ok_and(|f| {
            let got = f.try_lock().is_ok();
            drop(f);
            got
        })
    };
    assert!(wait_until(T, free), "the monitor's lock stayed held");
}
