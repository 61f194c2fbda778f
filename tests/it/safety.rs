//! The safety invariants of DESIGN §6 on the launch / CLI side, each tried against real
//! processes, real flock and real signals: S1 (a worker is never gone too early: the
//! liveness lock is held before the spec is visible, and a leader that exited leaves its
//! group to be stopped, never "already gone"), S2 (only our own processes get signals), S4
//! (no lock hangs a CLI; lock files are private), S5 (no input crashes a tool), S9 (specs
//! never outgrow their readers). Each test names the case of issue 8 it guards.

use crate::support::procs::*;
use crate::support::{have_tool, run_with_timeout, stderr, stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Spawns one launched worker and returns its id; its group is killed when the test ends.
fn launch(s: &Scene, r: &Reaper, args: &[&str], cmd: &[&str]) -> String {
    let mut all = vec!["--type", "build-worker"];
    all.extend_from_slice(args);
    all.push("--");
    all.extend_from_slice(cmd);
    let id = stdout(&s.code("spawn-worker", &all, 0));
    r.group(worker_pid(s, &id));
    id
}

fn lock_path(s: &Scene, id: &str) -> std::path::PathBuf {
    s.coord().join(format!(".locks/alive/{id}.lock"))
}

fn lock_free(s: &Scene, id: &str) -> bool {
    corral::process::alive_lock_free(&lock_path(s, id)).expect("try the lock")
}

// ---------------------------------------------------------------------------------------
// S1 at launch (issue 8 case 1).

/// Case 1, deterministic part: from the moment a launched worker's spec is visible in
/// `active/`, its liveness lock must exist and be held. A watcher looks at every spec the
/// instant it appears (while a pool of 20 and three single spawns run): on the old code the
/// lock file did not even exist until the launch, long after the spec was written.
#[test]
fn the_liveness_lock_is_held_before_a_spec_is_visible() {
    let s = Scene::new();
    let r = Reaper::default();
    let active = s.coord().join("worker-specs/active");
    let stop = AtomicBool::new(false);
    let violations = Mutex::new(Vec::<String>::new());
    let seen = Mutex::new(std::collections::HashSet::<String>::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let Ok(rd) = std::fs::read_dir(&active) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(id) = name.strip_suffix(".json") else {
                        continue;
                    };
                    if !seen.lock().unwrap().insert(id.to_string()) {
                        continue;
                    }
                    if lock_free(&s, id) {
                        violations.lock().unwrap().push(id.to_string());
                    }
                }
            }
        });
        let spawners: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    s.ok(
                        "spawn-worker",
                        &["--type", "build-worker", "--", "sleep", "120"],
                    )
                })
            })
            .collect();
        let pool = s.ok(
            "spawn-worker",
            &[
                "--type",
                "build-worker",
                "--count",
                "20",
                "--",
                "sleep",
                "120",
            ],
        );
        for h in spawners {
            h.join().expect("spawner");
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(pool.lines().count(), 20);
    });
    let ids = s.ids_in("active");
    for id in &ids {
        r.group(worker_pid(&s, id));
    }
    assert_eq!(ids.len(), 23, "{}", s.tree());
    assert!(
        !seen.lock().unwrap().is_empty(),
        "the watcher saw the specs appear"
    );
    assert_eq!(
        *violations.lock().unwrap(),
        Vec::<String>::new(),
        "specs visible with a free liveness lock"
    );
    for id in &ids {
        assert!(
            !lock_free(&s, id),
            "{id}: the running worker holds its lock"
        );
    }
}

/// Case 1 against the real daemon: a monitor running while spawners launch workers in
/// parallel; not one healthy worker may be declared gone.
#[test]
fn concurrent_spawns_under_a_running_monitor_have_no_false_failures() {
    let s = Scene::new();
    let r = Reaper::default();
    let mut m = Monitor::start(&s, &[]);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                for _ in 0..15 {
                    s.ok(
                        "spawn-worker",
                        &["--type", "build-worker", "--", "sleep", "120"],
                    );
                }
            });
        }
    });
    let ids = s.ids_in("active");
    for id in &ids {
        r.group(worker_pid(&s, id));
    }
    // Give the daemon time to judge every spawn it saw.
    assert!(wait_until(T, || ids
        .iter()
        .all(|id| m.watches(worker_pid(&s, id)))));
    m.assert_running();
    assert_eq!(s.ids_in("zombie"), Vec::<String>::new(), "{}", m.stderr());
    assert_eq!(ids.len(), 45);
}

// ---------------------------------------------------------------------------------------
// S1 after the leader (issue 8 case 2, CLI side).

/// Case 2: `sh -c 'sleep 120 & exit 3'`: the leader is gone, its child works on and holds
/// the liveness lock. `cleanup-zombies` must stop the group, not report "already gone".
#[test]
fn cleanup_stops_the_group_of_a_leader_that_exited() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &r, &[], &["sh", "-c", "sleep 120 & exit 3"]);
    let pid = worker_pid(&s, &id);
    assert!(wait_until(T, || !alive(pid)), "the leader exits");
    let members = group_members(pid);
    assert_eq!(members.len(), 1, "its child lives on: {members:?}");
    assert!(!lock_free(&s, &id), "and holds the liveness lock");
    s.ok("heartbeat", &[&id, "--fail", "--error", "leader exited 3"]);
    let out = s.ok("cleanup-zombies", &["--grace", "5", "--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        report["workers"][0]["process"], "group_terminated",
        "{report:#}"
    );
    assert!(!alive(members[0]), "the child was stopped");
    assert!(lock_free(&s, &id));
    assert_eq!(s.dirs_of(&id), ["archived"]);
    let ev = wait_event(&s, "zombie_process_terminated", &id);
    assert_eq!(ev["data"]["leader_exited"], true);
}

/// Case 2 through `stop-worker`, with a child that left the group (its own session) but
/// kept the liveness lock: holding the lock is the proof, so it is stopped as well.
#[test]
fn stop_worker_stops_what_outlived_the_leader_even_outside_its_group() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &r, &[], &["sh", "-c", "setsid sleep 120 & exit 0"]);
    let pid = worker_pid(&s, &id);
    assert!(wait_until(T, || !alive(pid)));
    let holders = corral::process::lock_holders(&lock_path(&s, &id));
    assert_eq!(holders.len(), 1, "the setsid child holds the lock");
    r.add(holders[0]);
    // The holder is seen from its fork on; setsid(2) runs a moment later in it.
    assert!(
        wait_until(
            T,
            || matches!(stat(holders[0]), Some((_, g, _)) if g != pid)
        ),
        "in a group of its own: {:?}",
        stat(holders[0])
    );
    let out = s.ok("stop-worker", &[&id, "--grace", "5", "--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report[0]["process"], "group_terminated", "{report:#}");
    assert!(wait_until(T, || !alive(holders[0])));
    assert!(lock_free(&s, &id));
    assert_eq!(s.dirs_of(&id), ["completed"]);
}

// ---------------------------------------------------------------------------------------
// S2 (issue 8 case 4).

/// Case 4: `jq '.worker_id="clone"' active/A.json | spawn-worker --from-spec -`, then
/// `stop-worker clone`: A's process must not be touched. The clone's process block is
/// dropped with a warning; even a copied block would carry no proof of being "clone".
#[test]
fn stopping_a_clone_of_a_spec_never_touches_the_originals_process() {
    let s = Scene::new();
    let r = Reaper::default();
    let a = launch(&s, &r, &[], &["sleep", "120"]);
    let pid = worker_pid(&s, &a);
    let mut clone = s.spec("active", &a);
    clone["worker_id"] = json!("clone");
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        clone.to_string().as_bytes(),
    );
    s.expect_code("spawn-worker", &["--from-spec", "-"], &out, 0);
    assert!(
        stderr(&out).contains("dropped process"),
        "a warning says so: {}",
        stderr(&out)
    );
    let c = s.spec("active", "clone");
    assert!(c["process"].is_null() && c["pid"].is_null(), "{c:#}");
    let out = s.ok(
        "stop-worker",
        &["clone", "--grace", "1", "--format", "json"],
    );
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report[0]["process"], "no_process");
    assert!(alive(pid), "A's process was signalled");
    assert_eq!(s.dirs_of(&a), ["active"]);
    assert_eq!(s.dirs_of("clone"), ["completed"]);
    // Written straight into active/ with its process block: the stop proves nothing of
    // "clone2" in A's group, so it signals nothing, and must not claim it did (it warned
    // that A's processes "got its signals").
    let mut clone2 = s.spec("active", &a);
    clone2["worker_id"] = json!("clone2");
    std::fs::write(s.spec_path("active", "clone2"), clone2.to_string()).expect("write");
    let out = s.run(
        "stop-worker",
        &["clone2", "--grace", "1", "--format", "json"],
    );
    s.expect_code("stop-worker", &["clone2"], &out, 0);
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(report[0]["process"], "unproven", "{report:#}");
    assert!(
        !stderr(&out).contains("got its signals"),
        "{}",
        stderr(&out)
    );
    assert!(alive(pid), "A's process was signalled");
}

/// A spec copied by hand (`cp active/A.json active/clone.json`, content unchanged): the
/// copy names A inside, so a heartbeat or a stop through it acted on A's spec (it moved A
/// to `completed/` and released A's tokens while A ran on). S9: a file whose name and content
/// disagree is never acted on: both commands refuse with exit 6, A is untouched, and
/// `corral doctor --fix` quarantines the copy.
#[test]
fn a_spec_copied_under_another_name_is_never_acted_on() {
    let s = Scene::new();
    let r = Reaper::default();
    let a = launch(&s, &r, &[], &["sleep", "120"]);
    let pid = worker_pid(&s, &a);
    std::fs::copy(s.spec_path("active", &a), s.spec_path("active", "clone")).expect("copy");
    let before = s.spec("active", &a);
    let budget_before = s.budget();
    let out = s.code("heartbeat", &["clone", "--message", "from the copy"], 6);
    assert!(
        stderr(&out).contains(&format!("spec says {a}")),
        "{}",
        stderr(&out)
    );
    let out = s.code("stop-worker", &["clone", "--grace", "1"], 6);
    assert!(stderr(&out).contains("not acted on"), "{}", stderr(&out));
    assert_eq!(s.spec("active", &a), before, "A's spec was rewritten");
    assert_eq!(s.budget(), budget_before, "A's tokens were released");
    assert_eq!(s.dirs_of(&a), ["active"]);
    assert!(alive(pid));
    s.ok("heartbeat", &[&a]);
    s.run("corral", &["doctor", "--fix"]);
    assert!(s.dirs_of("clone").is_empty(), "{}", s.tree());
    assert_eq!(s.dirs_of(&a), ["active"]);
}

/// The state a SIGKILL of `spawn-worker` between the launch and the record leaves: the
/// worker runs, holding its liveness lock with `CORRAL_WORKER_ID` set, and its spec has no
/// process. The old stop found "no process", moved the spec to `completed/` and released
/// its tokens while the process ran on, and the monitor tried to stop the group every pass
/// and never could. Both now find the process by its two proofs, record it and stop it.
fn unrecorded_worker(s: &Scene, r: &Reaper) -> (String, i32) {
    let id = launch(s, r, &[], &["sleep", "120"]);
    let pid = worker_pid(s, &id);
    let mut v = s.spec("active", &id);
    v["process"] = Value::Null;
    v["pid"] = Value::Null;
    std::fs::write(s.spec_path("active", &id), v.to_string()).expect("write");
    (id, pid)
}

#[test]
fn a_launch_whose_spawner_died_before_recording_it_can_still_be_stopped() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, pid) = unrecorded_worker(&s, &r);
    let out = s.ok("stop-worker", &[&id, "--grace", "2", "--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report[0]["process"], "terminated", "{report:#}");
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    assert!(lock_free(&s, &id));
    let done = s.spec("completed", &id);
    assert_eq!(
        done["process"]["pid"], pid,
        "the process is on record: {done:#}"
    );
    assert_eq!(done["process"]["command"][1], "120");
    assert!(s
        .events()
        .iter()
        .any(|e| e["worker_id"] == id.as_str() && e["data"]["recovered"] == true));

    // The monitor, for a worker that never confirmed itself alive.
    let (id, pid) = unrecorded_worker(&s, &r);
    let mut c = s.cmd("heartbeat-monitor");
    c.env("CORRAL_HEARTBEAT__PENDING_TIMEOUT_SECONDS", "1")
        .env("CORRAL_HEARTBEAT__GRACE_SECONDS", "1")
        .env("CORRAL_HEARTBEAT__RESTART__ENABLED", "false")
        .args(["--once", "-q"]);
    std::thread::sleep(Duration::from_millis(1200));
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    assert!(lock_free(&s, &id));
    let c2 = s.run("heartbeat-monitor", &["--once", "-q"]);
    assert_eq!(c2.status.code(), Some(0), "{}", stderr(&c2));
    assert_eq!(s.dirs_of(&id), ["zombie"], "{}", s.tree());

    // Doctor reports such a worker (it said ok), and --fix records its process.
    let (id, pid) = unrecorded_worker(&s, &r);
    let out = s.code("corral", &["doctor"], 10);
    assert!(
        stdout(&out).contains("unrecorded_process") && stdout(&out).contains(&id),
        "{}",
        stdout(&out)
    );
    s.run("corral", &["doctor", "--fix"]);
    assert_eq!(s.spec("active", &id)["process"]["pid"], pid);
    s.ok("stop-worker", &[&id, "--grace", "2"]);
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
}

/// Case 4, forged: a spec planted in `zombie/` carrying the pid, start time and boot id of
/// a live process (one that is no worker at all, and one that is another worker's) must
/// not get either killed by `cleanup-zombies`.
#[test]
fn a_forged_spec_cannot_get_a_live_process_killed_by_cleanup() {
    let s = Scene::new();
    let r = Reaper::default();
    let bystander = sleeper(&r);
    let bystander_pid = bystander.id() as i32;
    r.keep(bystander);
    let other = launch(&s, &r, &[], &["sleep", "120"]);
    let other_pid = worker_pid(&s, &other);
    for (id, pid) in [("forged-1", bystander_pid), ("forged-2", other_pid)] {
        let mut v = spec_for(id, pid, json!({}));
        v["status"] = json!("failed");
        plant_spec(&s, "zombie", &v);
    }
    let out = s.ok("cleanup-zombies", &["--grace", "1", "--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("json");
    for w in report["workers"].as_array().expect("workers") {
        assert_eq!(w["process"], "unproven", "{report:#}");
        assert_eq!(w["action"], "archived");
    }
    assert!(alive(bystander_pid), "a bystander was killed");
    assert!(alive(other_pid), "another worker's process was killed");
    assert_eq!(s.dirs_of(&other), ["active"]);
    assert!(s.events_of("zombie_process_terminated").is_empty());
}

// ---------------------------------------------------------------------------------------
// S4 (issue 8 case 5, CLI side).

/// Case 5: `flock -x .locks/budget.lock sleep 20` hung every spawn-worker until released.
/// Now the wait is bounded: exit 5 naming the lock after CORRAL_LOCK_TIMEOUT, nothing
/// written.
#[test]
fn a_held_budget_lock_no_longer_hangs_spawn_worker() {
    if !have_tool(
        Command::new("flock").arg("--version").output().is_ok(),
        "flock (util-linux)",
    ) {
        return;
    }
    let mut s = Scene::new();
    let r = Reaper::default();
    let lock = s.coord().join(".locks/budget.lock");
    let holder = r.spawn(
        Command::new("flock")
            .args(["-x", lock.to_str().unwrap(), "sleep", "20"])
            .stdin(std::process::Stdio::null()),
    );
    let holder_pid = holder.id() as i32;
    r.keep(holder);
    assert!(wait_until(T, || corral::process::lock_holders(&lock)
        .contains(&holder_pid)));
    s.set_env("CORRAL_LOCK_TIMEOUT", "1");
    let out = run_with_timeout(
        s.cmd("spawn-worker").args(["--type", "build-worker"]),
        Duration::from_secs(15),
    );
    s.expect_code("spawn-worker", &[], &out, 5);
    let err = stderr(&out);
    assert!(
        err.contains("budget.lock") && err.contains("timed out"),
        "{err}"
    );
    assert!(s.ids_in("active").is_empty());
    // A bad timeout is invalid input, not a hang.
    s.set_env("CORRAL_LOCK_TIMEOUT", "forever");
    s.code("spawn-worker", &["--type", "build-worker"], 6);
}

/// Case 5: lock files were 0644, so anyone could take (and hold) them. Everything corral
/// creates in a default home is private: directories 0700, files 0600.
#[test]
fn lock_files_specs_and_logs_are_private_in_a_default_home() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &r, &[], &["sleep", "120"]);
    s.ok("heartbeat", &[&id]);
    let mode = |rel: &str| std::fs::metadata(s.home.join(rel)).expect(rel).mode() & 0o7777;
    for f in [
        "coordination/.locks/budget.lock".to_string(),
        "coordination/.locks/events.lock".to_string(),
        format!("coordination/.locks/workers/{id}.lock"),
        format!("coordination/.locks/alive/{id}.lock"),
        format!("coordination/worker-specs/active/{id}.json"),
        "coordination/token-budget.json".to_string(),
        "coordination/dashboard-events.jsonl".to_string(),
        format!("agents/logs/workers/{id}/worker.log"),
    ] {
        assert_eq!(mode(&f), 0o600, "{f}");
    }
    for d in [
        "coordination",
        "coordination/.locks",
        "coordination/.locks/alive",
        "coordination/worker-specs/active",
        "agents/logs/workers",
    ] {
        assert_eq!(mode(d), 0o700, "{d}");
    }
}

// ---------------------------------------------------------------------------------------
// S5 (issue 8 case 6, CLI side).

/// Case 6: huge durations and counts from flags, env and files are refused with exit 6 and
/// a message, never accepted to crash a reader later, and nothing is written.
#[test]
fn out_of_range_durations_and_counts_are_refused_with_exit_6() {
    let s = Scene::new();
    let r = Reaper::default();
    let out = s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--timeout-minutes",
            "1000000000000",
        ],
        6,
    );
    assert!(stderr(&out).contains("timeout-minutes"), "{}", stderr(&out));
    s.code(
        "spawn-worker",
        &["--type", "build-worker", "--count", "20000"],
        6,
    );
    assert!(s.ids_in("active").is_empty());
    let mut v = json!({"worker_id": "w-huge", "worker_type": "build-worker", "status": "running",
                       "resources": {"timeout_minutes": 1_000_000_000_000u64}});
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        v.to_string().as_bytes(),
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    v["resources"]["timeout_minutes"] = json!(45);
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        v.to_string().as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sleeper = sleeper(&r);
    let pid = sleeper.id().to_string();
    r.keep(sleeper);
    for bad in ["inf", "1e300", "NaN", "-1", "0"] {
        let interval = format!("--interval={bad}");
        let out = s.code(
            "heartbeat",
            &["w-huge", "--loop", "--pid", &pid, &interval],
            6,
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    for bad in ["1e300", "inf", "soon"] {
        s.code("stop-worker", &["--all", "--grace", bad], 6);
        s.code("cleanup-zombies", &["--grace", bad], 6);
    }
    assert_eq!(s.dirs_of("w-huge"), ["active"], "nothing was stopped");
}

/// Case 6: a policy value like 1e13 seconds is refused with a message naming the key, by
/// every tool that reads the policy.
#[test]
fn a_policy_with_1e13_seconds_is_refused_naming_the_key() {
    let s = Scene::new();
    s.set_policy("zombie_seconds", json!(1e13));
    let out = s.code("stop-worker", &["--all"], 6);
    let err = stderr(&out);
    assert!(
        err.contains("zombie_seconds") && err.contains("maximum"),
        "{err}"
    );
    let out = s.code("heartbeat-monitor", &["--print-config"], 6);
    assert!(stderr(&out).contains("zombie_seconds"), "{}", stderr(&out));
    s.set_policy("zombie_seconds", json!(300));
    let mut s2 = s;
    s2.set_env("CORRAL_HEARTBEAT__GRACE_SECONDS", "1e300");
    let out = s2.code("stop-worker", &["--all"], 6);
    assert!(stderr(&out).contains("grace_seconds"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// S9 (issue 8 case 10).

/// Case 10: a spec's history grew by an entry per status change until readers refused it.
/// Hundreds of beats with status changes keep it at the cap (the newest entries) and small.
#[test]
fn history_stays_capped_through_hundreds_of_status_changes() {
    let s = Scene::new();
    let id = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    for i in 0..130 {
        let st = if i % 2 == 0 { "running" } else { "idle" };
        s.ok(
            "heartbeat",
            &[&id, "--status", st, "--message", &format!("beat {i}")],
        );
    }
    let spec = s.spec("active", &id);
    let history = spec["history"].as_array().expect("history");
    assert_eq!(history.len(), 50, "capped at the newest 50");
    assert_eq!(history.last().unwrap()["to"], "idle");
    assert_eq!(spec["heartbeat"]["message"], "beat 129");
    let size = std::fs::metadata(s.spec_path("active", &id)).unwrap().len();
    assert!(size < 16 * 1024, "{size} bytes");
}

/// Case 10: a write that would exceed what readers accept is refused before anything
/// moves (exit 6), and the spec stays readable. A huge message is cut with a marker.
#[test]
fn a_write_past_what_readers_accept_is_refused_and_the_spec_stays_readable() {
    let s = Scene::new();
    let id = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    // Grow the spec by hand to just under the 1 MiB every reader accepts.
    let mut v = s.spec("active", &id);
    let pad = 1024 * 1024 - 3000 - serde_json::to_vec_pretty(&v).unwrap().len();
    v["notes"] = json!("x".repeat(pad));
    plant_spec(&s, "active", &v);
    let before = std::fs::read(s.spec_path("active", &id)).unwrap();
    let out = s.code("heartbeat", &[&id, "--message", &"m".repeat(4000)], 6);
    assert!(
        stderr(&out).contains("refusing to write"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(s.spec_path("active", &id)).unwrap(),
        before,
        "nothing was written"
    );
    assert_eq!(s.dirs_of(&id), ["active"]);
    s.ok("heartbeat", &[&id, "--message", "small"]);
    // On a normal spec, a huge message is truncated with a marker instead.
    let other = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    s.ok("heartbeat", &[&other, "--message", &"y".repeat(100_000)]);
    let msg = s.spec("active", &other)["heartbeat"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.len() < 5000 && msg.contains("[truncated"),
        "{}",
        msg.len()
    );
}
