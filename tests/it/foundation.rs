//! Integration tests of the foundation: init/template, spawn-worker, heartbeat,
//! recalc-budget, doctor, the event log, and the DESIGN.md §4 protocol under concurrency and
//! SIGKILL. Every test runs the real binaries against a temporary home.

use crate::support::procs::*;
use crate::support::{read_json, stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != ".keep")
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if e.file_type().is_dir() {
                format!("{rel}/")
            } else {
                rel
            }
        })
        .collect()
}

fn assert_budget_exact(s: &Scene) {
    let b = s.budget();
    let total = b["total"].as_u64().unwrap();
    let used = b["used"].as_u64().unwrap();
    let consumed = b["consumed"].as_u64().unwrap();
    let available = b["available"].as_u64().unwrap();
    assert_eq!(used + consumed + available, total, "invariant broken: {b}");
    let mut live = 0;
    for dir in ["active", "zombie"] {
        for id in s.ids_in(dir) {
            live += s.spec(dir, &id)["token_budget"]["allocated"]
                .as_u64()
                .unwrap();
        }
    }
    assert_eq!(
        used, live,
        "used must equal the sum of live allocations: {b}"
    );
}

#[test]
fn init_creates_exactly_the_template() {
    let s = Scene::with_tokens(1234);
    let template = repo().join("coordination-template");
    let made = files_under(&s.home);
    let want = files_under(&template);
    // Lock files appear as soon as something locks; they hold no state.
    let made: BTreeSet<String> = made
        .into_iter()
        .filter(|p| !p.starts_with("coordination/.locks/") || p == "coordination/.locks/")
        .collect();
    assert_eq!(made, want, "corral init and coordination-template/ differ");
    for rel in [
        "coordination/config/heartbeat-policy.json",
        "coordination/config/worker-types.json",
    ] {
        assert_eq!(
            std::fs::read(s.home.join(rel)).unwrap(),
            std::fs::read(template.join(rel)).unwrap(),
            "{rel}"
        );
    }
    let b = s.budget();
    assert_eq!(b["total"], 1234);
    assert_eq!(b["available"], 1234);
    assert!(b["period_start"].is_string());
    // A second init refuses (exit 5); --force keeps specs.
    let id = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "10"],
        0,
    ));
    s.code("corral", &["init"], 5);
    s.ok("corral", &["init", "--force"]);
    assert_eq!(s.dirs_of(&id), vec!["active"]);
}

#[test]
fn missing_home_is_exit_8_and_never_created() {
    let s = Scene::new();
    let nowhere = s.dir.path().join("nowhere");
    for (bin, args) in [
        ("spawn-worker", vec!["--type", "test-worker"]),
        ("heartbeat", vec!["w1"]),
        ("recalc-budget", vec![]),
        ("corral", vec!["doctor"]),
    ] {
        let mut c = s.cmd(bin);
        c.env("CORRAL_HOME", &nowhere).args(&args);
        let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
        assert_eq!(
            out.status.code(),
            Some(8),
            "{bin}: {}",
            crate::support::stderr(&out)
        );
        assert!(
            crate::support::stderr(&out).contains("corral init"),
            "{bin} should say how to fix it"
        );
    }
    assert!(!nowhere.exists());
    let mut c = s.cmd("heartbeat");
    c.env_remove("CORRAL_HOME").arg("w1");
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(8));
    assert!(crate::support::stderr(&out)
        .contains("no coordination home: pass --home or set CORRAL_HOME"));
    // The legacy variable of the bash version still works.
    let mut c = s.cmd("recalc-budget");
    c.env_remove("CORRAL_HOME")
        .env("COMMIT_RELAY_HOME", &s.home)
        .arg("--check");
    assert_eq!(
        crate::support::run_with_timeout(&mut c, Duration::from_secs(30))
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn spawn_writes_a_complete_spec_reserves_and_logs() {
    let s = Scene::new();
    let out = s.ok(
        "spawn-worker",
        &[
            "--type",
            "implementation-worker",
            "--task-id",
            "task-001",
            "--master",
            "development-master",
            "--priority",
            "high",
            "--repo",
            "owner/repo",
            "--session",
            "build-1",
        ],
    );
    let id = out.trim();
    assert_eq!(out.lines().count(), 1, "stdout carries only the id");
    assert!(id.starts_with("worker-implementation-"), "{id}");
    let spec = s.spec("active", id);
    assert_eq!(spec["schema_version"], 1);
    assert_eq!(spec["status"], "pending");
    assert_eq!(spec["task_id"], "task-001");
    assert_eq!(spec["master"], "development-master");
    assert_eq!(spec["priority"], "high");
    assert_eq!(spec["repo"], "owner/repo");
    assert_eq!(spec["session_id"], "build-1");
    assert_eq!(
        spec["token_budget"]["allocated"], 100000,
        "default from worker-types.json"
    );
    assert_eq!(spec["resources"]["timeout_minutes"], 45);
    assert_eq!(spec["heartbeat"]["health_score"], 100);
    assert!(spec["heartbeat"]["last_seen"].is_null());
    assert!(spec["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.budget()["used"], 100000);
    assert_budget_exact(&s);
    let spawned = s.events_of("worker_spawned");
    assert_eq!(spawned.len(), 1);
    assert_eq!(spawned[0]["worker_id"], id);
    assert_eq!(spawned[0]["session_id"], "build-1");
    assert_eq!(s.events_of("budget_reserved")[0]["data"]["tokens"], 100000);
    // --tokens overrides, --dry-run writes nothing, --format json prints specs.
    let before = std::fs::read(s.coord().join("token-budget.json")).unwrap();
    let dry = s.ok(
        "spawn-worker",
        &[
            "--type",
            "test-worker",
            "--tokens",
            "7",
            "--dry-run",
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(v[0]["token_budget"]["allocated"], 7);
    assert_eq!(s.ids_in("active").len(), 1);
    assert_eq!(
        std::fs::read(s.coord().join("token-budget.json")).unwrap(),
        before
    );
}

#[test]
fn pool_spawns_all_or_nothing() {
    let s = Scene::with_tokens(100_000);
    let out = s.ok(
        "spawn-worker",
        &[
            "--type",
            "review-worker",
            "--tokens",
            "10000",
            "--count",
            "5",
            "--session",
            "pool-a",
        ],
    );
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(s.events_of("pool_starting").len(), 1);
    let started = s.events_of("pool_started");
    assert_eq!(started[0]["data"]["count"], 5);
    assert_eq!(started[0]["session_id"], "pool-a");
    // 6 × 10000 does not fit in the 50000 left: exit 4 and nothing written at all.
    let events_before = s.events().len();
    let budget_before = s.budget();
    let out = s.code(
        "spawn-worker",
        &[
            "--type",
            "review-worker",
            "--tokens",
            "10000",
            "--count",
            "6",
        ],
        4,
    );
    assert!(crate::support::stderr(&out).contains("insufficient token budget"));
    assert_eq!(s.ids_in("active").len(), 5);
    assert_eq!(s.events().len(), events_before);
    assert_eq!(s.budget()["used"], budget_before["used"]);
    assert_budget_exact(&s);
}

#[test]
fn launched_worker_is_detached_identified_and_holds_its_liveness_lock() {
    let s = Scene::new();
    let hb = crate::support::bin("heartbeat");
    let script = format!(
        "echo \"id=$CORRAL_WORKER_ID task=$CORRAL_TASK_ID home=$CORRAL_HOME\"; read x || echo stdin-closed; {} --status idle --message up; exec sleep 60",
        hb.display()
    );
    let id = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "test-worker",
            "--task-id",
            "t-9",
            "--",
            "sh",
            "-c",
            &script,
        ],
        0,
    ));
    let spec = s.spec("active", &id);
    let pid = spec["pid"].as_i64().expect("pid recorded") as i32;
    let _guard = KillOnDrop(pid);
    assert_eq!(spec["process"]["pid"], pid);
    assert_eq!(
        spec["process"]["pgid"], pid,
        "setsid: the worker leads its own group"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    assert_eq!(
        spec["process"]["start_time_ticks"].as_u64().unwrap(),
        fields[19].parse::<u64>().unwrap()
    );
    // The program is recorded resolved (S7), the spawn's directory with it; no parent is
    // recorded without --parent-pid.
    let prog = spec["process"]["command"][0].as_str().unwrap();
    assert!(prog.starts_with('/') && prog.ends_with("/sh"), "{prog}");
    assert_eq!(spec["launch"]["command"][0], prog);
    assert_eq!(
        spec["launch"]["cwd"].as_str().unwrap(),
        s.dir.path().to_str().unwrap()
    );
    assert!(spec["process"]["parent_pid"].is_null(), "{spec:#}");
    assert!(!spec["process"]["boot_id"].as_str().unwrap().is_empty());
    assert_eq!(s.events_of("worker_starting").len(), 1);
    // The worker beats by itself: pending -> idle with worker_ready.
    assert!(
        // The event follows the committed change: wait for both.
        wait_until(Duration::from_secs(20), || s.spec("active", &id)["status"]
            == "idle"
            && !s.events_of("worker_ready").is_empty()),
        "{}",
        s.tree()
    );
    assert_eq!(s.events_of("worker_ready").len(), 1);
    let log = s.home.join(format!("agents/logs/workers/{id}/worker.log"));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdin-closed")
    }));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("id={id} task=t-9 home=")), "{text}");
    // Liveness lock: held while the worker lives, free once it is gone.
    let lock = s.coord().join(format!(".locks/alive/{id}.lock"));
    let f = std::fs::File::open(&lock).unwrap();
    assert!(matches!(
        f.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || f.try_lock().is_ok()),
        "lock not released after the worker died"
    );
}

/// A command that exists but cannot be executed (its `#!` interpreter is missing) is only
/// found out by the launch, after the spec was written: the error names the worker it left
/// in `zombie/` and how to release its tokens, so a script can clean up what it made.
#[test]
fn a_command_that_fails_at_exec_names_the_worker_it_left_behind() {
    let s = Scene::new();
    let script = s.dir.path().join("bad.sh");
    crate::support::write_script(&script, "#!/nonexistent/interpreter\n");
    let out = s.code(
        "spawn-worker",
        &[
            "--type",
            "test-worker",
            "--id",
            "wl",
            "--",
            script.to_str().unwrap(),
        ],
        6,
    );
    let err = crate::support::stderr(&out);
    assert!(
        err.contains("worker wl") && err.contains("cleanup-zombies --worker wl"),
        "{err}"
    );
    assert_eq!(s.dirs_of("wl"), ["zombie"]);
    s.ok("cleanup-zombies", &["--worker", "wl"]);
    assert_eq!(s.budget()["used"], 0);
}

#[test]
fn missing_command_is_refused_before_anything_is_written() {
    let s = Scene::new();
    let out = s.code(
        "spawn-worker",
        &["--type", "test-worker", "--", "/nonexistent/worker-binary"],
        6,
    );
    assert!(crate::support::stderr(&out).contains("not found"));
    assert!(s.ids_in("active").is_empty());
    assert_eq!(s.budget()["used"], 0);
}

#[test]
fn heartbeat_lifecycle_complete_and_fail() {
    let s = Scene::with_tokens(200_000);
    let id = stdout(&s.code(
        "spawn-worker",
        &["--type", "implementation-worker", "--tokens", "1000"],
        0,
    ));
    s.ok(
        "heartbeat",
        &[
            &id,
            "--tokens-add",
            "300",
            "--progress",
            "20",
            "--message",
            "working",
        ],
    );
    let spec = s.spec("active", &id);
    assert_eq!(spec["status"], "running");
    assert_eq!(spec["heartbeat"]["sequence"], 1);
    assert_eq!(spec["heartbeat"]["progress"], 20.0);
    assert_eq!(spec["token_budget"]["used"], 300);
    assert!(spec["started_at"].is_string());
    assert_eq!(
        spec["history"].as_array().unwrap().last().unwrap()["to"],
        "running"
    );
    s.ok(
        "heartbeat",
        &[
            &id,
            "--status",
            "idle",
            "--tokens-used",
            "900",
            "--task-id",
            "task-7",
        ],
    );
    let spec = s.spec("active", &id);
    assert_eq!(
        (
            spec["status"].as_str(),
            spec["task_id"].as_str(),
            spec["heartbeat"]["sequence"].as_u64()
        ),
        (Some("idle"), Some("task-7"), Some(2))
    );
    assert!(s.events_of("budget_exceeded").is_empty());
    s.ok("heartbeat", &[&id, "--tokens-add", "200"]);
    let ex = s.events_of("budget_exceeded");
    assert_eq!(ex.len(), 1, "crossing the allocation is reported once");
    assert_eq!(ex[0]["data"]["used"], 1100);
    // The id also comes from $CORRAL_WORKER_ID.
    let mut c = s.cmd("heartbeat");
    c.env("CORRAL_WORKER_ID", &id).args(["--message", "env"]);
    assert_eq!(
        crate::support::run_with_timeout(&mut c, Duration::from_secs(30))
            .status
            .code(),
        Some(0)
    );
    s.ok("heartbeat", &[&id, "--complete", "--summary", "PR opened"]);
    assert_eq!(s.dirs_of(&id), vec!["completed"]);
    let done = s.spec("completed", &id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["exit"]["code"], 0);
    assert!(done["completed_at"].is_string());
    let b = s.budget();
    assert_eq!(
        (b["used"].as_u64(), b["consumed"].as_u64()),
        (Some(0), Some(1100))
    );
    assert_eq!(s.events_of("worker_completed").len(), 1);
    assert_eq!(s.events_of("budget_released")[0]["data"]["allocated"], 1000);
    // A finished worker is told to stop.
    let out = s.code("heartbeat", &[&id], 5);
    assert!(crate::support::stderr(&out).contains("no longer active"));
    // --fail moves to zombie/ and keeps the reservation until cleanup.
    let id2 = stdout(&s.code(
        "spawn-worker",
        &["--type", "implementation-worker", "--tokens", "500"],
        0,
    ));
    s.ok(
        "heartbeat",
        &[&id2, "--fail", "--error", "API quota exhausted"],
    );
    assert_eq!(s.dirs_of(&id2), vec!["zombie"]);
    let z = s.spec("zombie", &id2);
    assert_eq!(z["status"], "failed");
    assert_eq!(z["exit"]["reason"], "API quota exhausted");
    assert_eq!(s.budget()["used"], 500);
    assert_eq!(
        s.events_of("worker_failed")[0]["data"]["error"],
        "API quota exhausted"
    );
    assert_budget_exact(&s);
    s.code("heartbeat", &[&id2, "--status", "running"], 5);
    s.code("heartbeat", &[&id2, "--status", "zombie"], 2);
}

/// A worker whose end was recorded but whose move out of `active/` was cut short (a crash
/// mid-stop, a hand edit) is told to stop like one in `completed/` or `zombie/`: the beat
/// used to be taken, exit 0.
#[test]
fn a_heartbeat_for_an_ended_status_still_in_active_is_refused() {
    let s = Scene::new();
    for status in ["failed", "zombie", "completed"] {
        let w = stdout(&s.code(
            "spawn-worker",
            &["--type", "implementation-worker", "--tokens", "10"],
            0,
        ));
        let w = w.trim();
        let mut v = s.spec("active", w);
        v["status"] = status.into();
        std::fs::write(s.spec_path("active", w), v.to_string()).expect("write");
        let out = s.code("heartbeat", &[w, "--message", "alive"], 5);
        assert!(crate::support::stderr(&out).contains("no longer active"));
        assert_eq!(s.spec("active", w), v, "the spec was rewritten");
    }
}

#[test]
fn heartbeat_loop_beats_until_the_process_exits() {
    let s = Scene::new();
    let id = stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0));
    let mut child = Command::new("sleep").arg("1.2").spawn().unwrap();
    let pid = child.id().to_string();
    let out = s.run(
        "heartbeat",
        &[&id, "--loop", "--interval", "0.2", "--pid", &pid],
    );
    child.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::support::stderr(&out)
    );
    let seq = s.spec("active", &id)["heartbeat"]["sequence"]
        .as_u64()
        .unwrap();
    assert!((3..=10).contains(&seq), "expected about 6 beats, got {seq}");
    s.code(
        "heartbeat",
        &[&id, "--loop", "--interval", "0.2", "--pid", "999999999"],
        3,
    );
}

/// Token counts near `u64::MAX` (S5: any count from a flag or a spec): the budget file
/// saturates, so a recount must too. It used to wrap: two workers that each used 2^63
/// tokens summed to 0, and `recalc-budget` "fixed" a spent budget back to full.
#[test]
fn a_recount_of_huge_token_counts_saturates_instead_of_wrapping() {
    let s = Scene::new();
    let ws: Vec<String> = (0..2)
        .map(|_| stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0)))
        .collect();
    for w in &ws {
        s.ok("heartbeat", &[w, "--tokens-used", "9223372036854775808"]);
        s.ok("heartbeat", &[w, "--complete"]);
    }
    assert_eq!(s.budget()["consumed"], u64::MAX);
    assert_eq!(s.budget()["available"], 0);
    s.code("recalc-budget", &["--check"], 0);
    s.ok("recalc-budget", &[]);
    assert_eq!(s.budget()["consumed"], u64::MAX);
    assert_eq!(s.budget()["available"], 0);
    let out = s.ok(
        "recalc-budget",
        &["--set-total", "18446744073709551615", "--format", "json"],
    );
    let r: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["drift"], false, "{r:#}");
}

/// `--from-spec` gives a spec what `corral adopt` gives the same spec: an unknown type is
/// refused (exit 6) and a live spec without an allocation reserves its type's tokens (it
/// reserved 0 before, a way round the budget); a finished spec adds what it used to
/// `consumed`, so the books agree with a recount at once (they drifted by its `used`).
#[test]
fn a_spec_written_from_a_file_is_accounted_like_one_spawned_or_adopted() {
    let s = Scene::new();
    let spec = |id: &str, ty: &str, status: &str| json!({"schema_version": 1, "worker_id": id, "worker_type": ty, "status": status});
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        spec("t1", "no-such-type", "pending").to_string().as_bytes(),
    );
    s.expect_code("spawn-worker", &["--from-spec", "-"], &out, 6);
    assert!(
        crate::support::stderr(&out).contains("unknown worker type"),
        "{}",
        crate::support::stderr(&out)
    );
    assert!(s.dirs_of("t1").is_empty());
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        spec("t2", "test-worker", "pending").to_string().as_bytes(),
    );
    s.expect_code("spawn-worker", &["--from-spec", "-"], &out, 0);
    let t2 = s.spec("active", "t2");
    assert_eq!(t2["token_budget"]["allocated"], 30000, "{t2:#}");
    assert_eq!(s.budget()["used"], 30000);
    let mut done = spec("done1", "test-worker", "completed");
    done["token_budget"] = json!({"allocated": 1000, "used": 500});
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        done.to_string().as_bytes(),
    );
    s.expect_code("spawn-worker", &["--from-spec", "-"], &out, 0);
    assert_eq!(s.budget()["consumed"], 500);
    s.code("recalc-budget", &["--check"], 0);
}

#[test]
fn recalc_budget_reports_and_fixes_drift() {
    let s = Scene::with_tokens(500_000);
    let a = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "1000"],
        0,
    ));
    let b = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "2000"],
        0,
    ));
    s.ok("heartbeat", &[&b, "--tokens-used", "150"]);
    s.ok("heartbeat", &[&b, "--complete"]);
    s.code("recalc-budget", &["--check"], 0);
    // Break the file the bash way: lost update.
    let p = s.coord().join("token-budget.json");
    let mut v = read_json(&p);
    v["used"] = json!(99999);
    v["consumed"] = json!(0);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let before = std::fs::read(&p).unwrap();
    let out = s.code("recalc-budget", &["--check", "--format", "json"], 10);
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["drift"], true);
    assert_eq!(r["used_drift"], 1000 - 99999);
    assert_eq!(r["consumed_drift"], 150);
    assert_eq!(std::fs::read(&p).unwrap(), before, "--check writes nothing");
    assert!(s.events_of("budget_recalculated").is_empty());
    s.ok("recalc-budget", &[]);
    let fixed = s.budget();
    assert_eq!(
        (
            fixed["used"].as_u64(),
            fixed["consumed"].as_u64(),
            fixed["available"].as_u64()
        ),
        (Some(1000), Some(150), Some(500_000 - 1150))
    );
    assert_eq!(
        s.events_of("budget_recalculated")[0]["data"]["used_drift"],
        1000 - 99999
    );
    s.code("recalc-budget", &["--check"], 0);
    s.ok("recalc-budget", &["--set-total", "2000000"]);
    assert_eq!(s.budget()["available"], 2_000_000 - 1150);
    s.ok("recalc-budget", &["--reset-period"]);
    assert_eq!(
        (s.budget()["consumed"].as_u64(), s.budget()["used"].as_u64()),
        (Some(0), Some(1000))
    );
    let _ = a;
}

#[test]
fn doctor_finds_and_fixes_what_crashes_and_hand_edits_leave() {
    let s = Scene::new();
    s.code("corral", &["doctor"], 0);
    let a = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "10"],
        0,
    ));
    let b = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "20"],
        0,
    ));
    let c = stdout(&s.code(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "30"],
        0,
    ));
    // a: in two directories; b: status disagrees with its directory; bad files; tmp; drift.
    std::fs::copy(s.spec_path("active", &a), s.spec_path("zombie", &a)).unwrap();
    let mut vb = s.spec("active", &b);
    vb["status"] = json!("completed");
    std::fs::write(s.spec_path("active", &b), serde_json::to_vec(&vb).unwrap()).unwrap();
    std::fs::write(
        s.spec_path("active", "worker-torn"),
        "{\"worker_id\": \"worker-to",
    )
    .unwrap();
    std::fs::write(
        s.spec_path("zombie", "worker-schema"),
        r#"{"worker_id":"worker-schema","worker_type":"t","status":"exploded"}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/hostname", s.spec_path("archived", "worker-link")).unwrap();
    let tmp = s.coord().join(".tmp/123-0-abc.tmp");
    std::fs::write(&tmp, "half").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = s.code("corral", &["doctor", "--format", "json"], 10);
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kinds: BTreeSet<String> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "duplicate_spec",
        "status_mismatch",
        "invalid_spec",
        "leftover_tmp",
        "budget_drift",
    ] {
        assert!(kinds.contains(k), "doctor missed {k}: {r}");
    }
    let invalid = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "invalid_spec")
        .count();
    assert_eq!(
        invalid, 3,
        "torn, schema-violating and symlinked specs: {r}"
    );
    assert!(
        s.spec_path("active", "worker-torn").exists(),
        "doctor without --fix changes nothing"
    );
    s.ok("corral", &["doctor", "--fix"]);
    s.code("corral", &["doctor"], 0);
    // The copy in the furthest state is kept, then placed where its status (pending) says.
    assert_eq!(s.dirs_of(&a), vec!["active"]);
    assert_eq!(s.dirs_of(&b), vec!["completed"]);
    assert_eq!(s.dirs_of(&c), vec!["active"]);
    assert!(!tmp.exists());
    let q: Vec<String> = std::fs::read_dir(s.coord().join("quarantine"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        q.iter().filter(|n| n.ends_with(".reason")).count(),
        4,
        "{q:?}"
    );
    assert_eq!(s.events_of("spec_quarantined").len(), 4);
    assert_budget_exact(&s);
}

#[test]
fn hand_made_specs_and_old_fixtures_load_everywhere() {
    let s = Scene::new();
    let fixtures = repo().join("tests/fixtures/specs");
    // The runbook's heredoc, written straight into active/ as the runbook does.
    let hand = std::fs::read_to_string(fixtures.join("runbook-hand-made.json")).unwrap();
    let id = "worker-implementation-1763719200";
    std::fs::write(s.spec_path("active", id), &hand).unwrap();
    s.ok("heartbeat", &[id, "--message", "adopted"]);
    let spec = s.spec("active", id);
    assert_eq!(
        spec["schema_version"], 1,
        "first rewrite fills schema_version"
    );
    assert_eq!(spec["status"], "running");
    assert_eq!(spec["created_at"], "2026-11-21T09:00:00.000Z");
    assert_eq!(spec["priority"], "high");
    assert!(spec["updated_at"].is_string() && spec["heartbeat"]["health"] == "healthy");
    // Not reserved when hand-written: recalc finds and fixes exactly that.
    s.code("recalc-budget", &["--check"], 10);
    s.ok("recalc-budget", &[]);
    assert_eq!(s.budget()["used"], 100000);
    // Every checked-in fixture validates and registers with --from-spec.
    for name in ["v1-completed.json", "v1-running-foreign-fields.json"] {
        let path = fixtures.join(name);
        let v = read_json(&path);
        let wid = v["worker_id"].as_str().unwrap().to_string();
        s.ok(
            "spawn-worker",
            &["--from-spec", path.to_str().unwrap(), "--dry-run"],
        );
        assert_eq!(
            stdout(&s.code("spawn-worker", &["--from-spec", path.to_str().unwrap()], 0)),
            wid
        );
        let dir = if v["status"] == "completed" {
            "completed"
        } else {
            "active"
        };
        let written = s.spec(dir, &wid);
        assert_eq!(written["worker_type"], v["worker_type"]);
        if name.contains("foreign") {
            assert_eq!(
                written["annotations"]["ticket"], 1234,
                "unknown fields survive"
            );
            assert_eq!(written["heartbeat"]["latency_ms"], 12);
            assert_eq!(written["token_budget"]["model"], "some-llm");
            s.ok("heartbeat", &[&wid, "--tokens-add", "1"]);
            let again = s.spec("active", &wid);
            assert_eq!(
                again["dashboard_color"], "blue",
                "and survive a heartbeat rewrite"
            );
            assert_eq!(again["token_budget"]["used"], 1201);
            // Inside history entries too (they were rebuilt from known fields only).
            let mut v = again.clone();
            v["history"][0]["ticket"] = json!("OPS-1");
            std::fs::write(s.spec_path("active", &wid), v.to_string()).expect("write");
            s.ok("heartbeat", &[&wid, "--tokens-add", "1"]);
            assert_eq!(s.spec("active", &wid)["history"][0]["ticket"], "OPS-1");
        }
    }
    // From stdin too; an existing id is a conflict.
    let stdin_spec = json!({"worker_id": "worker-stdin-1", "worker_type": "test-worker", "status": "pending", "token_budget": {"allocated": 5}});
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        stdin_spec.to_string().as_bytes(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::support::stderr(&out)
    );
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        stdin_spec.to_string().as_bytes(),
    );
    assert_eq!(out.status.code(), Some(5));
    assert_budget_exact(&s);
}

#[test]
fn bad_input_gets_the_documented_exit_codes() {
    let s = Scene::new();
    for bad in ["a/b", "../x", "..", "", "a\nb", "a\u{1}b", "-rf"] {
        let out = s.run("spawn-worker", &["--type", "test-worker", "--id", bad]);
        assert!(
            matches!(out.status.code(), Some(6) | Some(2)),
            "spawn --id {bad:?}: {:?}",
            out.status.code()
        );
        if !bad.starts_with('-') {
            assert_eq!(out.status.code(), Some(6), "spawn --id {bad:?}");
            s.code("heartbeat", &[bad], 6);
        }
    }
    assert!(s.ids_in("active").is_empty());
    assert!(!s.home.join("x.json").exists() && !s.coord().join("worker-specs/x.json").exists());
    s.code("heartbeat", &["worker-nope"], 3);
    s.code("spawn-worker", &["--type", "no-such-worker"], 6);
    s.code(
        "spawn-worker",
        &["--type", "test-worker", "--priority", "urgent"],
        2,
    );
    s.code(
        "spawn-worker",
        &["--type", "test-worker", "--count", "2", "--id", "w1"],
        2,
    );
    s.code("spawn-worker", &[], 2);
    s.code("heartbeat", &["w", "--progress", "150"], 6);
    // Malformed and schema-violating --from-spec: exit 6 naming the field, nothing written.
    let f = s.dir.path().join("bad.json");
    std::fs::write(&f, "{ not json").unwrap();
    let out = s.code("spawn-worker", &["--from-spec", f.to_str().unwrap()], 6);
    assert!(crate::support::stderr(&out).contains("malformed JSON"));
    std::fs::write(&f, r#"{"worker_id":"w-1","worker_type":"test-worker","status":"pending","token_budget":{"allocated":-5}}"#).unwrap();
    let out = s.code("spawn-worker", &["--from-spec", f.to_str().unwrap()], 6);
    assert!(
        crate::support::stderr(&out).contains("/token_budget/allocated"),
        "{}",
        crate::support::stderr(&out)
    );
    std::fs::write(
        &f,
        r#"{"worker_id":"../../etc/x","worker_type":"test-worker","status":"pending"}"#,
    )
    .unwrap();
    let out = s.code("spawn-worker", &["--from-spec", f.to_str().unwrap()], 6);
    assert!(
        crate::support::stderr(&out).contains("/worker_id"),
        "{}",
        crate::support::stderr(&out)
    );
    let link = s.dir.path().join("link.json");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    s.code("spawn-worker", &["--from-spec", link.to_str().unwrap()], 6);
    let big = s.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 1024 * 1024 + 10]).unwrap();
    s.code("spawn-worker", &["--from-spec", big.to_str().unwrap()], 6);
    s.code("spawn-worker", &["--from-spec", "/nonexistent.json"], 3);
    assert!(s.ids_in("active").is_empty());
    assert_eq!(s.budget()["used"], 0);
    // Errors are one line plus an optional hint; stdout stays empty.
    let out = s.code("heartbeat", &["worker-nope"], 3);
    assert!(out.stdout.is_empty());
    assert!(crate::support::stderr(&out).starts_with("error: "));
}

/// DESIGN §4 under load: 4 processes × 250 concurrent spawns.
#[test]
fn concurrent_spawns_lose_nothing() {
    let s = Scene::with_tokens(10_000_000);
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..250u64 {
                        let tokens = (t * 1000 + i + 1).to_string();
                        ids.push(stdout(&s.code(
                            "spawn-worker",
                            &["--type", "test-worker", "--tokens", &tokens],
                            0,
                        )));
                    }
                    ids
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("spawner thread"))
            .collect()
    });
    assert_eq!(ids.len(), 1000);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1000,
        "ids must be distinct"
    );
    assert_eq!(s.ids_in("active").len(), 1000);
    let expected: u64 = (0..4u64)
        .flat_map(|t| (0..250u64).map(move |i| t * 1000 + i + 1))
        .sum();
    assert_eq!(s.budget()["used"].as_u64(), Some(expected));
    assert_budget_exact(&s);
    let events = s.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "worker_spawned")
            .count(),
        1000
    );
    assert_eq!(
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<HashSet<_>>()
            .len(),
        events.len(),
        "event ids unique"
    );
    s.code("recalc-budget", &["--check"], 0);
}

/// Heartbeats racing a completion never bring a spec back into active/.
#[test]
fn heartbeats_racing_a_state_move_never_resurrect() {
    let s = Scene::new();
    for round in 0..6 {
        let id = stdout(&s.code(
            "spawn-worker",
            &["--type", "test-worker", "--tokens", "100"],
            0,
        ));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let beaters: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        let mut after_end = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let code = s
                                .run("heartbeat", &[&id, "--tokens-add", "1"])
                                .status
                                .code();
                            assert!(
                                matches!(code, Some(0) | Some(5)),
                                "heartbeat exited {code:?}"
                            );
                            if code == Some(5) {
                                after_end += 1;
                            }
                        }
                        after_end
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(40));
            let args: Vec<&str> = if round % 2 == 0 {
                vec![&id, "--complete"]
            } else {
                vec![&id, "--fail", "--error", "boom"]
            };
            s.ok("heartbeat", &args);
            std::thread::sleep(Duration::from_millis(80));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for b in beaters {
                b.join().expect("beater");
            }
        });
        let dirs = s.dirs_of(&id);
        assert_eq!(dirs.len(), 1, "{id} in {dirs:?}");
        assert_ne!(dirs[0], "active", "a heartbeat resurrected {id}");
    }
    assert_budget_exact(&s);
    s.code("corral", &["doctor"], 0);
}

/// SIGKILL at random moments of spawn and heartbeat: no torn file, no spec in two places,
/// and one recalc-budget makes the budget exact.
#[test]
fn sigkill_mid_operation_leaves_a_recoverable_home() {
    let s = Scene::with_tokens(100_000_000);
    let seed_ids: Vec<String> = s
        .ok(
            "spawn-worker",
            &["--type", "test-worker", "--tokens", "10", "--count", "20"],
        )
        .lines()
        .map(String::from)
        .collect();
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..60 {
        let mut c = if i % 3 == 0 {
            let mut c = s.cmd("heartbeat");
            let id = &seed_ids[(next() % seed_ids.len() as u64) as usize];
            c.args([id.as_str(), "--tokens-add", "5"]);
            if i % 9 == 0 {
                c.args(["--complete"]);
            }
            c
        } else {
            let mut c = s.cmd("spawn-worker");
            c.args(["--type", "test-worker", "--tokens", "100", "--count", "25"]);
            c
        };
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(next() % 15_000));
        signal(child.id() as i32, libc::SIGKILL);
        let _ = child.wait();
    }
    // No torn file: every spec parses and validates; none in two places.
    let mut seen = HashSet::new();
    for dir in ["active", "completed", "zombie", "archived"] {
        for id in s.ids_in(dir) {
            let v = s.spec(dir, &id);
            assert_eq!(v["worker_id"], id.as_str());
            assert!(seen.insert(id.clone()), "{id} is in two directories");
        }
    }
    let b = s.budget();
    assert!(b["total"].as_u64().is_some(), "budget file intact: {b}");
    for line in std::fs::read_to_string(s.coord().join("dashboard-events.jsonl"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("torn event line ({e}): {line}"));
    }
    // A kill between reservation and spec writes over-reserves; one recalc makes it exact.
    s.ok("recalc-budget", &[]);
    s.code("recalc-budget", &["--check"], 0);
    assert_budget_exact(&s);
    s.ok("corral", &["doctor", "--fix"]);
    std::thread::sleep(Duration::from_millis(10));
    let out = s.run("corral", &["doctor"]);
    // Staging files younger than the grace period may remain reported; nothing else may.
    if out.status.code() != Some(0) {
        let text = stdout(&out);
        assert!(
            text.lines().all(|l| l.starts_with("leftover_tmp")),
            "{text}"
        );
    }
}

/// A torn last line in the event log (a writer cut short by a full disk, a hand edit): the
/// next event used to be appended onto it and became part of one unparseable line, so it
/// was lost with it. It now starts on a line of its own; only the torn line is bad. The
/// restart history, another JSONL log, does the same.
#[test]
fn an_event_after_a_torn_last_line_starts_a_line_of_its_own() {
    let s = Scene::new();
    let log = s.coord().join("dashboard-events.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    use std::io::Write;
    f.write_all(br#"{"id":"x","type":"worker_fa"#)
        .expect("write");
    drop(f);
    s.ok("spawn-worker", &["--type", "test-worker", "--id", "w1"]);
    let text = std::fs::read_to_string(&log).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let bad: Vec<&&str> = lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).is_err())
        .collect();
    assert_eq!(bad, [&r#"{"id":"x","type":"worker_fa"#], "{text}");
    assert!(lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| e["type"] == "worker_spawned" && e["worker_id"] == "w1"));
}

#[test]
fn event_log_rotates_and_every_line_is_one_object() {
    let mut s = Scene::with_tokens(100_000_000);
    s.set_env("CORRAL_EVENTS_MAX_BYTES", "4096");
    s.set_env("CORRAL_EVENTS_KEEP", "100");
    s.ok(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "1", "--count", "30"],
    );
    let mut total = 0;
    let mut rotated = 0;
    for n in 0..=100 {
        let p = if n == 0 {
            s.coord().join("dashboard-events.jsonl")
        } else {
            s.coord().join(format!("dashboard-events.jsonl.{n}"))
        };
        if let Ok(text) = std::fs::read_to_string(&p) {
            if n > 0 {
                rotated += 1;
            }
            assert!(
                text.len() <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                let v: Value = serde_json::from_str(l).unwrap();
                for k in [
                    "id",
                    "timestamp",
                    "type",
                    "source",
                    "host",
                    "message",
                    "data",
                ] {
                    assert!(v.get(k).is_some(), "{k} missing in {l}");
                }
                total += 1;
            }
        }
    }
    assert!(rotated >= 2, "expected rotation");
    assert_eq!(
        total,
        30 + 1 + 2,
        "30 spawned + budget_reserved + pool_starting/started"
    );
}

#[test]
fn help_and_version_exit_zero() {
    let s = Scene::new();
    for bin in ["corral", "spawn-worker", "heartbeat", "recalc-budget"] {
        let out = s.ok(bin, &["--help"]);
        assert!(out.contains("--home"), "{bin} --help lacks --home");
        assert!(s
            .ok(bin, &["--version"])
            .contains(env!("CARGO_PKG_VERSION")));
    }
    // --home is global: accepted after a subcommand too.
    let mut c = s.cmd("corral");
    c.env_remove("CORRAL_HOME")
        .args(["doctor", "--home", s.home.to_str().unwrap()]);
    assert_eq!(
        crate::support::run_with_timeout(&mut c, Duration::from_secs(30))
            .status
            .code(),
        Some(0)
    );
    let comp = s.ok("corral", &["completions", "bash"]);
    assert!(comp.contains("spawn-worker") && comp.contains("heartbeat"));
    let man = s.dir.path().join("man");
    s.ok("corral", &["man", "--out-dir", man.to_str().unwrap()]);
    assert!(man.join("spawn-worker.1").exists());
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
        signal(self.0, libc::SIGKILL);
    }
}

#[test]
fn reuse_assigns_an_idle_healthy_worker_to_one_caller_and_task() {
    let s = Scene::new();
    let busy = stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0));
    s.ok("heartbeat", &[&busy, "--status", "running"]);
    // No idle worker of the type: --reuse spawns a new one.
    let fresh = stdout(&s.code("spawn-worker", &["--type", "build-worker", "--reuse"], 0));
    assert_ne!(fresh, busy);
    s.ok("heartbeat", &[&fresh, "--status", "idle"]);
    let reused = stdout(&s.code(
        "spawn-worker",
        &["--type", "build-worker", "--reuse", "--task-id", "t-7"],
        0,
    ));
    assert_eq!(reused, fresh, "the idle worker is reused");
    assert_eq!(s.ids_in("active").len(), 2, "nothing new was written");
    // The task was handed over with the worker: running, on t-7, with an event saying so.
    let spec = s.spec("active", &fresh);
    assert_eq!(spec["status"], "running");
    assert_eq!(spec["task_id"], "t-7");
    assert_eq!(
        events_for(&s, "worker_registered", &fresh)[0]["data"]["reused"],
        true
    );
    // It is no longer idle: the next caller gets a new worker, not the same one.
    let next = stdout(&s.code("spawn-worker", &["--type", "build-worker", "--reuse"], 0));
    assert_ne!(next, fresh);
    // Another type is not a match; an unhealthy idle worker is not reused.
    s.ok("heartbeat", &[&next, "--status", "idle"]);
    let other = stdout(&s.code(
        "spawn-worker",
        &["--type", "converter-worker", "--reuse"],
        0,
    ));
    assert_ne!(other, next);
    let mut v = s.spec("active", &next);
    v["heartbeat"]["health_score"] = json!(40);
    std::fs::write(
        s.spec_path("active", &next),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let again = stdout(&s.code("spawn-worker", &["--type", "build-worker", "--reuse"], 0));
    assert_ne!(again, next);
    assert_budget_exact(&s);
}

/// Long batch work draws a progress bar on stderr only when stderr is a terminal.
#[test]
fn progress_bar_only_on_a_terminal() {
    let s = Scene::with_tokens(100_000_000);
    s.ok(
        "spawn-worker",
        &["--type", "test-worker", "--tokens", "1", "--count", "250"],
    );
    let piped = s.run("corral", &["doctor"]);
    assert_eq!(piped.status.code(), Some(0));
    assert!(
        !crate::support::stderr(&piped).contains('\r'),
        "no progress into a pipe"
    );
    if !crate::support::have_tool(
        Command::new("script").arg("--version").output().is_ok(),
        "script(1) from bsdutils",
    ) {
        return;
    }
    let doctor = format!(
        "{} doctor --home {}",
        crate::support::bin("corral").display(),
        s.home.display()
    );
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c", &doctor, "/dev/null"]);
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("corral doctor 250/250 [####################] 100%"),
        "{text:?}"
    );
    assert!(text.contains("ok: no problems found"));
}
