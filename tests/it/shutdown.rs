//! Integration tests of `stop-worker` and `cleanup-zombies`: real launched workers, real
//! signals, the identity check against pid reuse, budget accounting checked against
//! `recalc-budget --check`, dry runs, overlapping runs and bad files. Every process a test
//! starts is killed by a drop guard, even when the test panics.

use crate::support::procs::*;
use crate::support::{stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A shell worker that ignores SIGTERM (ignored dispositions survive exec, so its `sleep`
/// child ignores it too): only SIGKILL ends it.
const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; sleep 300"];
/// A worker whose process group has two members, the shell and its child.
const GROUP: &[&str] = &["sh", "-c", "sleep 300 & wait"];

/// Spawns workers (with `cmd` launched, when given), registers their groups with the reaper
/// and returns their ids.
fn spawn(s: &Scene, reaper: &Reaper, args: &[&str], cmd: &[&str]) -> Vec<String> {
    let mut all: Vec<&str> = args.to_vec();
    if !cmd.is_empty() {
        all.push("--");
        all.extend_from_slice(cmd);
    }
    let ids: Vec<String> = s
        .ok("spawn-worker", &all)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!ids.is_empty());
    for id in &ids {
        if let Some(pid) = s.spec("active", id)["process"]["pid"].as_i64() {
            reaper.group(pid as i32);
        }
    }
    ids
}

fn pid_of(s: &Scene, dir: &str, id: &str) -> i32 {
    s.spec(dir, id)["process"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{id} has no process"))
        .try_into()
        .expect("pid fits i32")
}

/// Waits until a launched shell worker has forked its child, so its trap is in place.
fn wait_for_group(pgid: i32, members: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || group_members(pgid).len()
            >= members),
        "group {pgid} never reached {members} members: {:?}",
        group_members(pgid)
    );
}

fn assert_budget_matches_specs(s: &Scene) {
    s.ok("recalc-budget", &["--check"]);
}

fn used(s: &Scene) -> u64 {
    s.budget()["used"].as_u64().expect("budget.used")
}

fn events_for<'a>(evs: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["type"] == kind && e["worker_id"] == id)
        .collect()
}

/// Every file under the home with its bytes, to prove a run wrote nothing.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap_or(e.path())
                .display()
                .to_string();
            let bytes = if e.file_type().is_file() {
                std::fs::read(e.path()).unwrap_or_default()
            } else {
                b"<dir>".to_vec()
            };
            (rel, bytes)
        })
        .collect()
}

/// Makes a worker without a process and moves it to zombie/ the way a worker reports
/// failure, after it reported `tokens` used.
fn zombie_without_process(s: &Scene, tokens: u64) -> String {
    let id = s
        .ok("spawn-worker", &["--type", "test-worker"])
        .trim()
        .to_string();
    s.ok("heartbeat", &[&id, "--tokens-used", &tokens.to_string()]);
    s.ok("heartbeat", &[&id, "--fail", "--error", "test failure"]);
    assert_eq!(s.dirs_of(&id), ["zombie"]);
    id
}

#[test]
fn stop_by_id_ends_the_group_records_the_stop_and_releases_the_budget() {
    let s = Scene::new();
    let r = Reaper::default();
    let ids = spawn(&s, &r, &["--type", "test-worker"], GROUP);
    let id = &ids[0];
    let pid = pid_of(&s, "active", id);
    wait_for_group(pid, 2);
    let members = group_members(pid);
    assert_eq!(used(&s), 30_000);

    let out = s.ok(
        "stop-worker",
        &[
            id,
            "--grace",
            "5",
            "--reason",
            "maintenance window",
            "--format",
            "json",
        ],
    );
    let report: Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report[0]["worker_id"], *id);
    assert_eq!(report[0]["result"], "stopped");
    assert_eq!(report[0]["process"], "terminated");

    for m in &members {
        assert!(!alive(*m), "group member {m} survived the stop");
    }
    assert_eq!(s.dirs_of(id), ["completed"]);
    let spec = s.spec("completed", id);
    assert_eq!(spec["status"], "completed");
    // The stopper sent SIGTERM; how the worker then exited only its parent could see.
    assert_eq!(spec["exit"]["terminated_by"], libc::SIGTERM);
    assert_eq!(spec["exit"]["known"], false, "{spec:#}");
    assert!(spec["exit"]["signal"].is_null() && spec["exit"]["code"].is_null());
    let history = spec["history"].as_array().expect("history");
    assert!(history
        .iter()
        .any(|h| h["to"] == "shutting_down" && h["reason"] == "maintenance window"));
    assert!(history
        .iter()
        .any(|h| h["to"] == "completed" && h["reason"] == "maintenance window"));
    assert_eq!(used(&s), 0);
    assert_budget_matches_specs(&s);

    let evs = s.events();
    assert_eq!(events_for(&evs, "worker_stopping", id).len(), 1);
    let stopped = events_for(&evs, "worker_stopped", id);
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["data"]["reason"], "maintenance window");
    assert!(stopped[0]["data"]["uptime_seconds"].as_f64().is_some());
    assert_eq!(stopped[0]["data"]["jobs_processed"], 0);
    assert_eq!(events_for(&evs, "budget_released", id).len(), 1);
    // Stopping it again says another stopper did it, and releases nothing: summing the
    // JSON's tokens_released counted its 30,000 tokens twice.
    let out = s.ok("stop-worker", &[id, "--format", "json"]);
    let again: Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(again[0]["process"], "already_stopped", "{again:#}");
    assert_eq!(again[0]["tokens_released"], 0, "{again:#}");
    assert_eq!(events_for(&s.events(), "budget_released", id).len(), 1);
    // The worker log is kept.
    assert!(s
        .home
        .join(format!("agents/logs/workers/{id}/worker.log"))
        .exists());
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = spawn(&s, &r, &["--type", "test-worker"], STUBBORN).remove(0);
    let pid = pid_of(&s, "active", &id);
    wait_for_group(pid, 2);

    let t = Instant::now();
    let out = s.ok("stop-worker", &[&id, "--grace", "1", "--format", "json"]);
    let took = t.elapsed();
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report[0]["process"], "killed", "{report}");
    assert_eq!(report[0]["signal"], libc::SIGKILL);
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL came before the grace: {took:?}"
    );
    assert!(
        group_members(pid).is_empty(),
        "group {pid} survived SIGKILL"
    );
    assert_eq!(s.spec("completed", &id)["exit"]["signal"], libc::SIGKILL);
}

#[test]
fn workers_stop_in_parallel_not_one_grace_after_another() {
    let s = Scene::new();
    let r = Reaper::default();
    let ids = spawn(
        &s,
        &r,
        &["--type", "build-worker", "--count", "6"],
        STUBBORN,
    );
    for id in &ids {
        wait_for_group(pid_of(&s, "active", id), 2);
    }
    let t = Instant::now();
    s.ok("stop-worker", &["--all", "--grace", "1"]);
    let took = t.elapsed();
    // Sequential stops would take at least 6 s.
    assert!(took < Duration::from_secs(4), "6 stops took {took:?}");
    for id in &ids {
        assert_eq!(s.dirs_of(id), ["completed"]);
        assert_eq!(s.spec("completed", id)["exit"]["signal"], libc::SIGKILL);
    }
}

#[test]
fn session_stop_touches_only_that_pool_and_brackets_it_with_pool_events() {
    let s = Scene::new();
    let r = Reaper::default();
    let pool = spawn(
        &s,
        &r,
        &[
            "--type",
            "test-worker",
            "--count",
            "3",
            "--session",
            "build-a",
        ],
        &["sleep", "300"],
    );
    let other = spawn(
        &s,
        &r,
        &["--type", "test-worker", "--session", "build-b"],
        &["sleep", "300"],
    )
    .remove(0);
    let other_pid = pid_of(&s, "active", &other);

    s.ok("stop-worker", &["--session", "build-a", "--grace", "2"]);
    for id in &pool {
        assert_eq!(s.dirs_of(id), ["completed"], "{id}");
    }
    assert_eq!(s.dirs_of(&other), ["active"]);
    assert!(
        alive(other_pid),
        "a worker of another session was signalled"
    );
    assert_eq!(used(&s), 30_000);
    assert_budget_matches_specs(&s);

    let evs = s.events();
    let kinds: Vec<&str> = evs
        .iter()
        .filter(|e| e["session_id"] == "build-a")
        .filter_map(|e| e["type"].as_str())
        .filter(|k| k.starts_with("pool_stop") || *k == "worker_stopped")
        .collect();
    assert_eq!(kinds.first(), Some(&"pool_stopping"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"pool_stopped"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "worker_stopped").count(), 3);
    let done = evs
        .iter()
        .find(|e| e["type"] == "pool_stopped")
        .expect("pool_stopped");
    assert_eq!(done["data"]["stopped"], 3);
    assert!(evs
        .iter()
        .all(|e| !(e["type"] == "worker_stopping" && e["worker_id"] == other.as_str())));
}

#[test]
fn exit_codes_unknown_id_3_inactive_5_and_the_run_keeps_going() {
    let s = Scene::new();
    let r = Reaper::default();
    let done = spawn(&s, &r, &["--type", "test-worker"], &[]).remove(0);
    s.ok("heartbeat", &[&done, "--complete"]);
    let live = spawn(&s, &r, &["--type", "test-worker"], &["sleep", "300"]).remove(0);

    let out = s.code("stop-worker", &["worker-no-such-one"], 3);
    assert!(crate::support::stderr(&out).contains("no such worker"));
    s.code("stop-worker", &[&done], 5);
    // Several ids: the bad ones are reported, the good one is still stopped, worst code wins.
    let out = s.code(
        "stop-worker",
        &[
            "worker-no-such-one",
            &live,
            &done,
            "--grace",
            "2",
            "--format",
            "json",
        ],
        5,
    );
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let results: Vec<&str> = report
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["error", "stopped", "error"]);
    assert_eq!(report[0]["exit_code"], 3);
    assert_eq!(report[2]["exit_code"], 5);
    assert_eq!(s.dirs_of(&live), ["completed"]);
    assert_budget_matches_specs(&s);
    // No selector at all is a usage error.
    s.code("stop-worker", &[], 2);
}

#[test]
fn cleanup_kills_a_zombies_live_group_archives_it_and_releases_exactly_its_budget() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = spawn(&s, &r, &["--type", "test-worker"], STUBBORN).remove(0);
    let keep = spawn(&s, &r, &["--type", "review-worker"], &["sleep", "300"]).remove(0);
    let pid = pid_of(&s, "active", &id);
    wait_for_group(pid, 2);
    s.ok("heartbeat", &[&id, "--tokens-used", "1234"]);
    s.ok("heartbeat", &[&id, "--fail", "--error", "wedged"]);
    assert!(
        alive(pid),
        "failing the spec must not end the process by itself"
    );
    let before = s.budget();

    s.ok("cleanup-zombies", &["--grace", "1"]);
    assert!(
        group_members(pid).is_empty(),
        "zombie group survived cleanup"
    );
    assert_eq!(s.dirs_of(&id), ["archived"]);
    assert_eq!(
        s.dirs_of(&keep),
        ["active"],
        "cleanup touched a live worker"
    );
    assert!(alive(pid_of(&s, "active", &keep)));
    let after = s.budget();
    assert_eq!(
        before["used"].as_u64().unwrap() - after["used"].as_u64().unwrap(),
        30_000
    );
    assert_eq!(
        after["consumed"].as_u64().unwrap() - before["consumed"].as_u64().unwrap(),
        1234
    );
    assert_budget_matches_specs(&s);
    assert!(s
        .home
        .join(format!("agents/logs/workers/{id}/worker.log"))
        .exists());

    let evs = s.events();
    let killed = events_for(&evs, "zombie_process_terminated", &id);
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0]["data"]["killed"], true);
    assert_eq!(events_for(&evs, "zombie_cleanup_completed", &id).len(), 1);
    assert_eq!(events_for(&evs, "worker_archived", &id).len(), 1);
    assert_eq!(events_for(&evs, "budget_released", &id).len(), 1);

    // Idempotent: a second run finds nothing and changes nothing.
    let snap = s.budget();
    s.ok("cleanup-zombies", &[]);
    assert_eq!(s.budget()["used"], snap["used"]);
    assert_eq!(events_for(&s.events(), "worker_archived", &id).len(), 1);
}

#[test]
fn a_reused_pid_is_never_signalled() {
    let mut s = Scene::new();
    s.set_env("CORRAL_HOST", "corral-test-host");
    let r = Reaper::default();
    // An unrelated process in its own group, standing in for whoever got the pid next.
    let mut c = Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let child = c.arg("300").stdin(Stdio::null()).spawn().expect("sleep");
    let pid = child.id() as i32;
    r.keep(child);
    let (_, _, start) = stat(pid).expect("stat of the unrelated process");

    let id = zombie_without_process(&s, 0);
    let path = s.spec_path("zombie", &id);
    let mut spec = s.spec("zombie", &id);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    spec["process"] = json!({
        "host": "corral-test-host", "boot_id": boot.trim(), "pid": pid, "pgid": pid,
        "start_time_ticks": start + 1, "execution_mode": "direct", "command": ["sleep", "300"]
    });
    spec["pid"] = json!(pid);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");

    s.ok("cleanup-zombies", &["--grace", "1"]);
    assert_eq!(s.dirs_of(&id), ["archived"]);
    // Give a wrongly sent signal time to land before judging.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(pid),
        "cleanup signalled a process whose start time did not match"
    );
    assert!(events_for(&s.events(), "zombie_process_terminated", &id).is_empty());
    assert_budget_matches_specs(&s);
}

#[test]
fn dry_run_writes_and_signals_nothing() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = spawn(&s, &r, &["--type", "test-worker"], &["sleep", "300"]).remove(0);
    let pid = pid_of(&s, "active", &id);
    s.ok("heartbeat", &[&id, "--fail", "--error", "x"]);
    let done = spawn(&s, &r, &["--type", "test-worker"], &[]).remove(0);
    s.ok("heartbeat", &[&done, "--complete"]);
    std::fs::write(s.spec_path("zombie", "worker-garbage"), b"{ not json").expect("write");
    let before = snapshot(&s.home);

    let out = s.ok(
        "cleanup-zombies",
        &[
            "--dry-run",
            "--archive-completed-older-than",
            "0s",
            "--format",
            "json",
        ],
    );
    assert_eq!(snapshot(&s.home), before, "--dry-run changed the home");
    assert!(alive(pid), "--dry-run signalled a process");
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["workers"][0]["worker_id"], id.as_str());
    assert_eq!(report["workers"][0]["action"], "would_archive");
    assert_eq!(report["workers"][0]["process"], "terminated");
    assert_eq!(report["archived_completed"][0]["worker_id"], done.as_str());
    assert_eq!(report["quarantined"][0]["quarantined_as"], Value::Null);

    let table = s.ok("cleanup-zombies", &["--dry-run"]);
    assert!(
        table.contains("would_archive") && table.contains("would be released"),
        "{table}"
    );
}

#[test]
fn overlapping_cleanup_runs_never_release_twice() {
    let s = Scene::new();
    let ids: Vec<String> = (0..12).map(|_| zombie_without_process(&s, 100)).collect();
    let consumed_before = s.budget()["consumed"].as_u64().unwrap();

    let runs: Vec<Child> = (0..3)
        .map(|_| {
            s.cmd("cleanup-zombies")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run cleanup")
        })
        .collect();
    for c in runs {
        let out = c.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            crate::support::stderr(&out)
        );
    }
    for id in &ids {
        assert_eq!(s.dirs_of(id), ["archived"]);
    }
    let b = s.budget();
    assert_eq!(b["used"], 0);
    assert_eq!(b["consumed"].as_u64().unwrap() - consumed_before, 12 * 100);
    assert_budget_matches_specs(&s);
    let released: usize = ids
        .iter()
        .map(|id| events_for(&s.events(), "budget_released", id).len())
        .sum();
    assert_eq!(released, 12);
}

#[test]
fn a_run_that_finds_the_cleanup_lock_held_exits_0_and_does_nothing() {
    let s = Scene::new();
    let id = zombie_without_process(&s, 0);
    let lock_path = s.coord().join(".locks/cleanup-zombies.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open lock");
    lock.lock().expect("take lock");
    let out = s.code("cleanup-zombies", &[], 0);
    assert!(
        crate::support::stderr(&out).contains("in progress"),
        "{}",
        crate::support::stderr(&out)
    );
    assert_eq!(s.dirs_of(&id), ["zombie"]);
    drop(lock);
    s.ok("cleanup-zombies", &[]);
    assert_eq!(s.dirs_of(&id), ["archived"]);
}

#[test]
fn archive_completed_older_than_moves_only_old_completed_specs() {
    let s = Scene::new();
    let r = Reaper::default();
    let old = spawn(&s, &r, &["--type", "test-worker"], &[]).remove(0);
    let new = spawn(&s, &r, &["--type", "test-worker"], &[]).remove(0);
    s.ok("heartbeat", &[&old, "--complete"]);
    s.ok("heartbeat", &[&new, "--complete"]);
    let path = s.spec_path("completed", &old);
    let mut spec = s.spec("completed", &old);
    spec["completed_at"] = json!("2020-01-01T00:00:00.000Z");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write");
    let budget = s.budget();

    s.ok("cleanup-zombies", &["--archive-completed-older-than", "7d"]);
    assert_eq!(s.dirs_of(&old), ["archived"]);
    assert_eq!(s.dirs_of(&new), ["completed"]);
    assert_eq!(s.budget()["used"], budget["used"]);
    assert_eq!(s.budget()["consumed"], budget["consumed"]);
    assert_eq!(events_for(&s.events(), "worker_archived", &old).len(), 1);
    let history = s.spec("archived", &old)["history"].clone();
    let last = history.as_array().and_then(|h| h.last()).expect("history");
    assert_eq!(last["reason"], "completed more than 1w ago");
    for bad in ["soon", "1e300", "99999999999999d"] {
        s.code(
            "cleanup-zombies",
            &["--archive-completed-older-than", bad],
            6,
        );
    }
}

#[test]
fn a_malformed_file_in_zombie_is_quarantined_and_the_rest_is_cleaned() {
    let s = Scene::new();
    let a = zombie_without_process(&s, 0);
    let b = zombie_without_process(&s, 0);
    let bad = s.spec_path("zombie", "worker-broken");
    std::fs::write(&bad, b"{ this is not json").expect("write");

    s.ok("cleanup-zombies", &[]);
    assert!(!bad.exists());
    assert_eq!(s.dirs_of(&a), ["archived"]);
    assert_eq!(s.dirs_of(&b), ["archived"]);
    let q: Vec<String> = std::fs::read_dir(s.coord().join("quarantine"))
        .expect("quarantine dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(q.iter().any(|n| n.ends_with("worker-broken.json")), "{q:?}");
    assert!(
        q.iter().any(|n| n.ends_with("worker-broken.json.reason")),
        "{q:?}"
    );
    assert_eq!(s.events_of("spec_quarantined").len(), 1);
    assert_budget_matches_specs(&s);
}

#[test]
fn all_force_also_stops_live_workers_and_named_ids_are_checked() {
    let s = Scene::new();
    let r = Reaper::default();
    let live = spawn(&s, &r, &["--type", "test-worker"], &["sleep", "300"]).remove(0);
    let pid = pid_of(&s, "active", &live);
    let z = zombie_without_process(&s, 0);

    s.code("cleanup-zombies", &["--force"], 2);
    s.code("cleanup-zombies", &["--worker", &live], 5);
    s.code("cleanup-zombies", &["--worker", "worker-unknown"], 3);
    assert_eq!(s.dirs_of(&live), ["active"]);
    assert!(alive(pid));

    let out = s.ok(
        "cleanup-zombies",
        &["--all", "--force", "--grace", "2", "--format", "json"],
    );
    let report: Value = serde_json::from_str(&out).expect("json");
    let actions: BTreeMap<String, String> = report["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|i| {
            (
                i["worker_id"].as_str().unwrap_or("").to_string(),
                i["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(actions.get(&live).map(String::as_str), Some("stopped"));
    assert_eq!(actions.get(&z).map(String::as_str), Some("archived"));
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert_eq!(s.dirs_of(&live), ["completed"]);
    assert_eq!(s.dirs_of(&z), ["archived"]);
    assert_eq!(used(&s), 0);
    assert_budget_matches_specs(&s);
}
