//! The operator's controls against real binaries and processes: `corral status`, the
//! doctor's configuration, monitor and permission checks, safe `init --force` and
//! `--group`, worker types and pools from the CLI, retention, logs, short ids, colour and
//! closed pipes.

use crate::support::procs::*;
use crate::support::{read_json, stderr, stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn launch(s: &Scene, cmd: &[&str]) -> String {
    let mut args = vec!["--type", "build-worker", "--"];
    args.extend_from_slice(cmd);
    stdout(&s.code("spawn-worker", &args, 0))
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// Regression: with no monitor, a killed worker stayed `running healthy 100` and nothing
/// said the data was stale; dead workers showed `healthy 100`.
#[test]
fn status_and_the_views_say_when_no_monitor_watches() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.group(pid);

    let out = s.code("corral", &["status"], 10);
    let text = stdout(&out);
    assert!(text.contains("monitor     NOT RUNNING"), "{text}");
    assert!(text.contains("no heartbeat-monitor is running"), "{text}");
    let v = json_of(&s.code("corral", &["status", "--format", "json"], 10));
    assert_eq!(v["monitor"]["running"], false);
    assert_eq!(v["workers"]["live"], 1);
    let list = s.run("worker-monitor", &[]);
    assert!(
        stderr(&list).contains("no heartbeat-monitor is running"),
        "banner on stderr: {}",
        stderr(&list)
    );
    let json = s.run("worker-monitor", &["--format", "json"]);
    assert!(
        serde_json::from_slice::<Value>(&json.stdout).is_ok(),
        "the banner never enters JSON data"
    );
    let quiet = s.run("worker-monitor", &["-q"]);
    assert!(stderr(&quiet).is_empty(), "-q silences the banner");

    let mut m = Monitor::start(&s, &[]);
    assert!(wait_until(T, || m.watches(pid)), "{}", m.stderr());
    let v = json_of(&s.code("corral", &["status", "--format", "json"], 0));
    assert_eq!(v["monitor"]["running"], true, "{v:#}");
    assert_eq!(v["monitor"]["lock_pid"], m.pid(), "{v:#}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v:#}");
    let list = s.run("worker-monitor", &[]);
    assert!(!stderr(&list).contains("warning"), "{}", stderr(&list));

    signal_group(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        s.tree()
    );
    let table = s.ok("worker-monitor", &["--state-dir", "zombie"]);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    assert!(row.contains("failed"), "{table}");
    assert!(
        !row.contains("healthy"),
        "a dead worker has a verdict, not health: {table}"
    );
    let rows = json_of(&s.run(
        "worker-monitor",
        &["--state-dir", "zombie", "--format", "json"],
    ));
    assert_eq!(rows[0]["health_score"], Value::Null);
    assert!(rows[0]["verdict"].as_str().unwrap().starts_with("failed"));

    // A monitor that is gone leaves its lock free: a stale status file does not fool status.
    m.terminate();
    std::fs::write(
        s.coord().join("metrics/monitor.json"),
        json!({"pid": 1, "mode": "daemon", "last_pass_at": ago(0)}).to_string(),
    )
    .unwrap();
    let v = json_of(&s.run("corral", &["status", "--format", "json"]));
    assert_eq!(v["monitor"]["running"], false, "{v:#}");
    assert_eq!(v["monitor"]["evidence"], "lock free");
}

#[test]
fn status_counts_queue_stuck_tasks_quarantine_and_breakers() {
    let s = Scene::new();
    s.set_policy("stuck_task_seconds", json!(1));
    for (class, n) in [("llm", 3), ("cpu", 2)] {
        for _ in 0..n {
            s.ok("task-queue", &["enqueue", "--class", class]);
        }
    }
    let task: Value = serde_json::from_str(&s.ok(
        "task-queue",
        &[
            "claim", "--worker", "someone", "--class", "llm", "--lease", "600",
        ],
    ))
    .unwrap();
    let id = task["task_id"].as_str().unwrap().to_string();
    let p = s.coord().join(format!("tasks/processing/{id}.json"));
    let mut t = read_json(&p);
    t["claimed_at"] = json!(ago(120));
    std::fs::write(&p, t.to_string()).unwrap();
    std::fs::write(s.coord().join("quarantine/20260101T000000Z-bad.json"), "{").unwrap();
    std::fs::write(
        s.coord()
            .join("quarantine/20260101T000000Z-bad.json.reason"),
        "x",
    )
    .unwrap();
    std::fs::write(
        s.coord().join("metrics/restart-state.json"),
        json!({"breakers": {"build-worker": {"consecutive_failures": 3, "open_since": ago(5)},
                            "review-worker": {"consecutive_failures": 1, "open_since": null}},
               "pending": {}})
        .to_string(),
    )
    .unwrap();
    let v = json_of(&s.code("corral", &["status", "--format", "json"], 10));
    assert_eq!(v["queue"]["llm"]["pending"], 2);
    assert_eq!(v["queue"]["llm"]["processing"], 1);
    assert_eq!(v["queue"]["cpu"]["pending"], 2);
    assert_eq!(v["queue_totals"]["pending"], 4);
    assert_eq!(v["stuck_tasks"][0]["task_id"], id.as_str());
    assert_eq!(v["quarantined_files"], 1);
    let open: Vec<&Value> = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["open"] == true)
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(v["budget"]["total"], 1_000_000);
    let problems = v["problems"].to_string();
    for p in ["processing longer", "quarantine", "circuit breaker open"] {
        assert!(problems.contains(p), "{p}: {problems}");
    }
    let text = stdout(&s.code("corral", &["status"], 10));
    assert!(
        text.contains(&corral::lookup::short_id(&id, 8)),
        "stuck task by short id: {text}"
    );
    assert!(text.contains("llm") && text.contains("PENDING"), "{text}");
}

/// Regression: doctor said ok for a policy the monitor refuses and a broken worker-types.
/// The layout every command relies on: with `worker-specs/archived` gone every cleanup
/// failed, with `worker-types.json` gone every spawn, and with the event log replaced by a
/// symlink or a directory every event was dropped (commands exit 0) — and doctor said ok.
#[test]
fn doctor_reports_and_repairs_a_broken_layout() {
    let s = Scene::new();
    let c = s.coord();
    let log = c.join("dashboard-events.jsonl");
    std::fs::remove_dir(c.join("worker-specs/archived")).expect("rmdir");
    std::fs::remove_file(c.join("config/worker-types.json")).expect("rm");
    std::fs::remove_file(&log).expect("rm");
    let elsewhere = s.dir.path().join("elsewhere.jsonl");
    std::fs::write(&elsewhere, "").expect("write");
    std::os::unix::fs::symlink(&elsewhere, &log).expect("symlink");
    let out = s.code("corral", &["doctor"], 10);
    let text = stdout(&out);
    for want in ["missing_dir:", "missing_config:", "not_a_file:"] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "{want} in\n{text}"
        );
    }
    s.code("corral", &["doctor", "--fix"], 0);
    s.ok("corral", &["doctor"]);
    assert!(std::fs::symlink_metadata(&log)
        .expect("log")
        .file_type()
        .is_file());
    // Everything works again: a spawn (types), its events (log), a cleanup (archived/).
    let id = stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0));
    s.ok("heartbeat", &[&id, "--fail", "--error", "x"]);
    s.ok("cleanup-zombies", &[]);
    assert_eq!(s.dirs_of(&id), ["archived"]);
    assert!(std::fs::read_to_string(&log).expect("log").contains(&id));
    assert_eq!(std::fs::read_to_string(&elsewhere).expect("read"), "");
    // A directory where the log must be is set aside the same way.
    std::fs::remove_file(&log).expect("rm");
    std::fs::create_dir(&log).expect("mkdir");
    let out = s.code("corral", &["doctor"], 10);
    assert!(stdout(&out).contains("is a directory"), "{}", stdout(&out));
    s.code("corral", &["doctor", "--fix"], 0);
    s.ok("corral", &["doctor"]);
}

#[test]
fn doctor_checks_config_with_the_monitors_loader() {
    let s = Scene::new();
    s.code("corral", &["doctor"], 0);
    s.set_policy("zombie_seconds", json!("soon"));
    let monitor = s.run("heartbeat-monitor", &["--once"]);
    assert_eq!(monitor.status.code(), Some(6), "{}", stderr(&monitor));
    let v = json_of(&s.code("corral", &["doctor", "--format", "json"], 10));
    assert_eq!(v["findings"][0]["kind"], "invalid_policy", "{v:#}");
    let out = s.code("corral", &["doctor", "--fix"], 10);
    assert!(stderr(&out).contains("need a human"), "{}", stderr(&out));
    s.set_policy("zombie_seconds", json!(300));
    // The environment the monitor would see counts too.
    let mut c = s.cmd("corral");
    c.args(["doctor"])
        .env("CORRAL_HEARTBEAT__WARNING_SECONDS", "-5");
    let out = crate::support::run_with_timeout(&mut c, T);
    assert_eq!(out.status.code(), Some(10), "{}", stdout(&out));
    std::fs::write(
        s.coord().join("config/worker-types.json"),
        r#"{"types": 5}"#,
    )
    .unwrap();
    let v = json_of(&s.code("corral", &["doctor", "--format", "json"], 10));
    assert_eq!(v["findings"][0]["kind"], "invalid_worker_types", "{v:#}");
    std::fs::write(
        s.coord().join("config/worker-types.json"),
        r#"{"types": {"x": {"command": ["no-such-program-corral"]}}}"#,
    )
    .unwrap();
    let text = stdout(&s.code("corral", &["doctor"], 10));
    assert!(text.contains("no-such-program-corral"), "{text}");
}

#[test]
fn doctor_reports_a_missing_monitor_exposure_and_bad_pending_tasks() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &["sleep", "300"]);
    r.group(worker_pid(&s, &id));
    let v = json_of(&s.code("corral", &["doctor", "--format", "json"], 10));
    assert_eq!(v["findings"][0]["kind"], "monitor_not_running", "{v:#}");
    {
        let _m = Monitor::start(&s, &[]);
        s.code("corral", &["doctor"], 0);
    }
    s.ok("stop-worker", &[&id, "--grace", "1"]);

    std::fs::set_permissions(&s.home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        s.coord(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cls = s.coord().join("tasks/pending/llm");
    std::fs::create_dir_all(&cls).unwrap();
    std::fs::write(
        cls.join("1-00000000000000000001-task-bad.json"),
        "{not json",
    )
    .unwrap();
    let v = json_of(&s.code("corral", &["doctor", "--format", "json"], 10));
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"exposed") && kinds.contains(&"malformed_pending"),
        "{v:#}"
    );
    assert!(v["findings"].to_string().contains("coordination"), "{v:#}");
    s.ok("corral", &["doctor", "--fix"]);
    s.code("corral", &["doctor"], 0);
    assert_eq!(mode(&s.coord()) & 0o007, 0, "others' permissions removed");
    assert!(
        !cls.join("1-00000000000000000001-task-bad.json").exists(),
        "quarantined"
    );
}

/// Regression: `init --force` dropped custom types, policy edits and the total, and reset
/// `used` to 0 on a live home (1,000,000 tokens then reserved against 600,000).
#[test]
fn init_force_loses_nothing_and_recounts_the_budget() {
    let s = Scene::with_tokens(600_000);
    s.ok("corral", &["type", "set", "mine", "--tokens", "300000"]);
    s.set_policy("zombie_seconds", json!(77));
    s.ok("spawn-worker", &["--type", "mine", "--count", "2"]);
    assert_eq!(s.budget()["available"], 0);
    s.code("corral", &["init"], 5);
    s.ok("corral", &["init", "--force"]);
    let b = s.budget();
    assert_eq!(
        (b["total"].as_u64(), b["used"].as_u64()),
        (Some(600_000), Some(600_000)),
        "{b}"
    );
    s.code("spawn-worker", &["--type", "mine"], 4);
    assert!(s.ok("corral", &["type", "show", "mine"]).contains("300000"));
    assert_eq!(
        read_json(&s.coord().join("config/heartbeat-policy.json"))["zombie_seconds"],
        77
    );
    s.code("recalc-budget", &["--check"], 0);

    let out = s.run(
        "corral",
        &[
            "init",
            "--force",
            "--reset-config",
            "--total-tokens",
            "900000",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("backup:"), "{}", stderr(&out));
    let baks: Vec<String> = std::fs::read_dir(s.coord().join("config"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".bak-"))
        .collect();
    assert_eq!(baks.len(), 2, "{baks:?}");
    let types_bak = baks.iter().find(|n| n.starts_with("worker-types")).unwrap();
    assert!(
        std::fs::read_to_string(s.coord().join("config").join(types_bak))
            .unwrap()
            .contains("\"mine\"")
    );
    s.code("corral", &["type", "show", "mine"], 3);
    let b = s.budget();
    assert_eq!(
        (b["total"].as_u64(), b["used"].as_u64()),
        (Some(900_000), Some(600_000)),
        "{b}"
    );
}

#[test]
fn init_modes_are_private_or_shared_with_a_group() {
    let s = Scene::new();
    assert_eq!(mode(&s.home), 0o700);
    assert_eq!(mode(&s.coord().join(".locks")), 0o700);
    assert_eq!(mode(&s.coord().join("config/worker-types.json")), 0o600);
    s.ok("spawn-worker", &["--type", "test-worker"]);
    s.code("corral", &["doctor"], 0);
    assert!(corral::perms::exposed(&corral::Home::at(&s.home))
        .unwrap()
        .is_empty());

    // A group the test can give files to: its own, or (as root) another one.
    let root = rustix::process::geteuid().is_root();
    let (group, gid) = if root {
        ("daemon".to_string(), 1u32)
    } else {
        let g = rustix::process::getegid().as_raw();
        (g.to_string(), g)
    };
    let shared = s.dir.path().join("shared");
    let out = s.run(
        "corral",
        &[
            "init",
            "--home",
            shared.to_str().unwrap(),
            "--group",
            &group,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for d in [
        "",
        "coordination",
        "coordination/.locks",
        "coordination/worker-specs/active",
    ] {
        let p = shared.join(d);
        assert_eq!(mode(&p), 0o2770, "{}", p.display());
        assert_eq!(std::fs::metadata(&p).unwrap().gid(), gid);
    }
    let f = shared.join("coordination/config/heartbeat-policy.json");
    assert_eq!(mode(&f), 0o660);
    assert_eq!(std::fs::metadata(&f).unwrap().gid(), gid);
    assert!(corral::perms::group_shared(&corral::Home::at(&shared)));
    // An existing private home is converted, specs and lock files included.
    let out = s.run("corral", &["init", "--force", "--group", &group]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for p in walkdir::WalkDir::new(&s.home)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let m = p.metadata().unwrap();
        assert_eq!(m.gid(), gid, "{}", p.path().display());
        let want = if m.is_dir() { 0o2770 } else { 0o660 };
        assert_eq!(m.mode() & 0o7777, want, "{}", p.path().display());
    }
    s.code(
        "corral",
        &[
            "init",
            "--home",
            "/nonexistent-x",
            "--group",
            "no-such-group-corral",
        ],
        6,
    );
}

#[test]
fn worker_types_from_the_cli() {
    let s = Scene::new();
    let names = s.ok("corral", &["type", "list", "--names"]);
    assert!(names.lines().any(|l| l == "queue-worker"), "{names}");
    let q: Value = serde_json::from_str(&s.ok(
        "corral",
        &["type", "show", "queue-worker", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(q["type"]["command"][0], "task-queue");
    assert_eq!(q["type"]["command"][1], "work");

    s.ok(
        "corral",
        &[
            "type",
            "set",
            "conv",
            "--tokens",
            "10",
            "--timeout-minutes",
            "5",
            "--max-retries",
            "1",
            "--env",
            "LANG=C",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo \"$LANG\"; sleep 300",
        ],
    );
    let t = read_json(&s.coord().join("config/worker-types.json"));
    assert_eq!(
        t["types"]["conv"]["command"],
        json!(["sh", "-c", "echo \"$LANG\"; sleep 300"])
    );
    assert_eq!(t["types"]["conv"]["env"]["LANG"], "C");
    s.ok(
        "corral",
        &[
            "type",
            "set",
            "conv",
            "--command",
            "true",
            "--command",
            "-x",
        ],
    );
    let t = read_json(&s.coord().join("config/worker-types.json"));
    assert_eq!(t["types"]["conv"]["command"], json!(["true", "-x"]));
    assert_eq!(t["types"]["conv"]["tokens"], 10, "only given fields change");
    let before = std::fs::read(s.coord().join("config/worker-types.json")).unwrap();
    s.code("corral", &["type", "set", "conv", "--env", "NOPE"], 6);
    s.code("corral", &["type", "set", "conv"], 2);
    s.code(
        "corral",
        &["type", "set", "conv", "--command", "a", "--", "b"],
        2,
    );
    assert_eq!(
        std::fs::read(s.coord().join("config/worker-types.json")).unwrap(),
        before
    );
    let table = s.ok("corral", &["type", "list"]);
    assert!(
        table.contains("conv") && table.contains("true -x"),
        "{table}"
    );
    let id = stdout(&s.code("spawn-worker", &["--type", "conv"], 0));
    s.code("corral", &["type", "remove", "conv"], 5);
    s.ok("stop-worker", &[&id, "--grace", "1"]);
    s.ok("corral", &["type", "remove", "conv"]);
    s.code("corral", &["type", "show", "conv"], 3);
}

#[test]
fn pools_keep_their_size_and_replace_workers_that_exited() {
    let s = Scene::new();
    let r = Reaper::default();
    s.ok(
        "corral",
        &[
            "type",
            "set",
            "pooled",
            "--tokens",
            "0",
            "--replicas",
            "2",
            "--",
            "sleep",
            "300",
        ],
    );
    let pool = |s: &Scene| -> Vec<String> {
        let rows = json_of(&s.run("worker-monitor", &["--type", "pooled", "--format", "json"]));
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["worker_id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = pool(&s);
    assert_eq!(first.len(), 2, "type set --replicas starts the pool");
    for id in &first {
        r.group(worker_pid(&s, id));
        assert_eq!(s.spec("active", id)["session_id"], "replicas-pooled");
    }
    let again = json_of(&s.code("corral", &["pool", "--format", "json"], 0));
    assert_eq!(again[0]["spawned"], json!([]), "idempotent: {again}");
    // A worker that ends with exit 0 (completed) is replaced too.
    s.ok("heartbeat", &[&first[0], "--complete"]);
    let out = s.ok("corral", &["pool"]);
    assert!(
        out.contains("pool pooled: 1 of 2 running, started 1"),
        "{out}"
    );
    let now = pool(&s);
    assert_eq!(now.len(), 2);
    for id in &now {
        r.group(worker_pid(&s, id));
    }
    // Scaling down stops the newest extra worker.
    s.ok("corral", &["type", "set", "pooled", "--replicas", "1"]);
    assert_eq!(pool(&s).len(), 1, "{}", s.tree());
    s.ok("corral", &["type", "set", "pooled", "--replicas", "0"]);
    assert!(pool(&s).is_empty());
}

#[test]
fn pool_reconcile_is_rate_limited_against_crash_loops() {
    let s = Scene::new();
    let r = Reaper::default();
    s.ok(
        "corral",
        &[
            "type",
            "set",
            "flaky",
            "--replicas",
            "1",
            "--no-apply",
            "--",
            "sleep",
            "300",
        ],
    );
    let home = corral::Home::at(&s.home);
    let mut spawned = 0;
    let mut note = None;
    for _ in 0..5 {
        let reports = corral::pool::reconcile(&home, corral::time::now()).unwrap();
        let rep = &reports[0];
        for id in &rep.spawned {
            r.group(worker_pid(&s, id));
            // Dies at once (as a crash loop would): recorded failed, out of active/.
            corral::lifecycle::fail_worker(&home, id, "crashed", None, None).unwrap();
        }
        spawned += rep.spawned.len();
        note = rep.note.clone();
    }
    assert_eq!(spawned, corral::pool::spawn_limit(1), "{note:?}");
    assert!(note.unwrap_or_default().contains("crash loop"));
}

#[test]
fn purge_removes_old_archived_workers_and_their_logs() {
    let s = Scene::new();
    let id = launch(&s, &["sh", "-c", "echo bye"]);
    assert!(wait_until(T, || s
        .coord()
        .parent()
        .unwrap()
        .join(format!("agents/logs/workers/{id}/worker.log"))
        .exists()));
    s.ok("stop-worker", &[&id, "--grace", "1"]);
    s.ok("cleanup-zombies", &["--archive-completed-older-than", "0s"]);
    assert_eq!(s.dirs_of(&id), ["archived"]);
    let logs = s.home.join(format!("agents/logs/workers/{id}"));
    let kept = stdout(&s.code("corral", &["purge", "--archived-older-than", "30d"], 0));
    assert!(kept.starts_with("0 worker(s)"), "{kept}");
    let dry = json_of(&s.code(
        "corral",
        &[
            "purge",
            "--archived-older-than",
            "0",
            "--dry-run",
            "--format",
            "json",
        ],
        0,
    ));
    assert_eq!(dry["purged"][0]["worker_id"], id.as_str());
    assert!(logs.exists());
    s.ok("corral", &["purge", "--archived-older-than", "0"]);
    assert!(s.dirs_of(&id).is_empty());
    assert!(!logs.exists());
    s.code("corral", &["purge", "--archived-older-than", "forever"], 2);
}

#[test]
fn logs_show_cut_and_follow_a_workers_output() {
    let s = Scene::new();
    let hb = crate::support::bin("heartbeat");
    let script = format!(
        "echo one; echo '--- corral task t-1 start 2026-11-22T10:00:00Z'; printf '\\033[2Jtask-out\\n'; \
         echo '--- corral task t-1 end 2026-11-22T10:00:01Z exit=0'; \
         for i in 1 2 3; do echo line-$i; sleep 0.2; done; {} --complete",
        hb.display()
    );
    let id = launch(&s, &["sh", "-c", &script]);
    let short = corral::lookup::short_id(&id, 8);
    // Follow from the start: ends by itself when the worker completes.
    let out = s.code("worker-monitor", &["logs", &short, "--follow"], 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("one\n") && text.ends_with("line-3"),
        "{text:?}"
    );
    assert!(
        text.contains("\x1b[2Jtask-out"),
        "bytes pass unchanged into a pipe"
    );
    let task = stdout(&s.code("worker-monitor", &["logs", &id, "--task", "t-1"], 0));
    assert_eq!(
        task,
        "--- corral task t-1 start 2026-11-22T10:00:00Z\n\x1b[2Jtask-out\n--- corral task t-1 end 2026-11-22T10:00:01Z exit=0"
    );
    assert_eq!(
        stdout(&s.code("worker-monitor", &["logs", &short, "-n", "1"], 0)),
        "line-3"
    );
    s.code("worker-monitor", &["logs", &short, "--task", "t-9"], 3);
    s.code("worker-monitor", &["logs", "nobody"], 3);
    let other = launch(&s, &["true"]);
    let e = s.code("worker-monitor", &["logs", "build"], 5);
    assert!(
        stderr(&e).contains(&id) && stderr(&e).contains(&other),
        "{}",
        stderr(&e)
    );
    let never = stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0));
    s.code("worker-monitor", &["logs", &never], 3);

    if crate::support::have_tool(
        Command::new("script").arg("--version").output().is_ok(),
        "script(1) from bsdutils",
    ) {
        let cmd = format!(
            "{} --home {} logs {short} --task t-1",
            crate::support::bin("worker-monitor").display(),
            s.home.display()
        );
        let mut c = Command::new("script");
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"]);
        let out = crate::support::run_with_timeout(&mut c, T);
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(
            tty.contains("\\x1b[2Jtask-out"),
            "escaped on a terminal: {tty:?}"
        );
        assert!(!tty.contains("\x1b[2J"), "{tty:?}");
    }
}

#[test]
fn colour_only_on_a_terminal_unless_forced() {
    let s = Scene::new();
    let id = stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0));
    s.ok("heartbeat", &[&id]);
    let plain = s.ok("worker-monitor", &[]);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    let mut c = s.cmd("worker-monitor");
    c.env("CLICOLOR_FORCE", "1");
    let forced = stdout(&crate::support::run_with_timeout(&mut c, T));
    assert!(forced.contains("\x1b[32m"), "{forced:?}");
    let mut c = s.cmd("worker-monitor");
    c.env("CLICOLOR_FORCE", "1").env("NO_COLOR", "1");
    let none = stdout(&crate::support::run_with_timeout(&mut c, T));
    assert!(!none.contains('\x1b'), "NO_COLOR wins: {none:?}");
}

/// Regression: `corral completions bash | head -1` panicked (exit 101).
#[test]
fn every_output_survives_a_closed_pipe() {
    let s = Scene::new();
    for i in 0..3 {
        s.ok(
            "spawn-worker",
            &["--type", "test-worker", "--task-id", &format!("t-{i}")],
        );
    }
    let cases: &[(&str, &[&str])] = &[
        ("corral", &["completions", "bash"]),
        ("corral", &["completions", "zsh"]),
        ("corral", &["man"]),
        ("corral", &["status"]),
        ("corral", &["type", "list"]),
        ("corral", &["doctor"]),
        ("corral", &["--help"]),
        ("worker-monitor", &[]),
        ("worker-monitor", &["--format", "json"]),
        ("worker-monitor", &["events"]),
        ("worker-monitor", &["summary"]),
        ("worker-monitor", &["prometheus"]),
    ];
    for (bin, args) in cases {
        let mut child = s
            .cmd(bin)
            .args(*args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{bin} {args:?} into a closed pipe: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // And the way the issue found it.
    let mut c = Command::new("bash");
    c.args([
        "-o",
        "pipefail",
        "-c",
        &format!(
            "{} completions bash | head -1",
            crate::support::bin("corral").display()
        ),
    ]);
    let out = crate::support::run_with_timeout(&mut c, T);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Regression: the man pages referred to `task-queue-work(1)` and others never generated.
#[test]
fn man_pages_exist_for_every_page_they_refer_to() {
    let s = Scene::new();
    let dir = s.dir.path().join("man");
    let listed = s.ok("corral", &["man", "--out-dir", dir.to_str().unwrap()]);
    assert!(listed.lines().count() > 30, "{listed}");
    let mut refs = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("\\-", "-");
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-()".contains(c))) {
            if let Some(stem) = word.strip_suffix("(1)") {
                refs += 1;
                assert!(
                    dir.join(format!("{stem}.1")).exists(),
                    "{:?} refers to {word}",
                    e.path()
                );
            }
        }
    }
    assert!(refs > 20);
    assert!(dir.join("task-queue-work.1").exists() && dir.join("worker-monitor-logs.1").exists());
}

#[test]
fn help_texts_refer_to_nothing_outside_the_repo() {
    let s = Scene::new();
    for bin in ["corral", "worker-monitor"] {
        let top = s.ok(bin, &["--help"]);
        let subs: Vec<String> = top
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|n| n != "help")
            .collect();
        assert!(!subs.is_empty(), "{top}");
        let mut texts = vec![top];
        for sub in &subs {
            texts.push(s.ok(bin, &[sub, "--help"]));
        }
        for t in texts {
            for bad in ["seed", "DESIGN", "runbook's", "the runbook"] {
                assert!(!t.contains(bad), "{bin} help mentions {bad:?}:\n{t}");
            }
        }
    }
}

/// Text that sat in the home, or in the environment, reaches the operator as one escaped
/// line wherever a command prints it: `cleanup-zombies`' report and its log line for a file
/// whose name holds an escape sequence and a newline, and the one `error:` line of a failed
/// command. Regression: the report wrote the raw escape (a cleared screen), and the newline
/// started a forged line in the report, the log and the error.
#[test]
fn names_from_the_home_can_neither_forge_lines_nor_drive_the_terminal() {
    let mut s = Scene::new();
    let evil = "x\u{1b}[2J\nFORGED.json";
    std::fs::write(
        s.coord().join("worker-specs/zombie").join(evil),
        b"{\"junk\":1}",
    )
    .expect("write the hostile file");
    let out = s.code("cleanup-zombies", &[], 0);
    let shown = "x\\x1b[2J\\nFORGED.json";
    for (what, text) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert!(
            !text.contains('\u{1b}'),
            "{what} drives the terminal: {text:?}"
        );
        assert!(
            text.lines().all(|l| !l.starts_with("FORGED")),
            "{what} has a forged line: {text:?}"
        );
        assert!(
            text.contains(shown),
            "{what} does not name the file: {text:?}"
        );
    }
    assert!(
        std::fs::read_dir(s.coord().join("quarantine"))
            .expect("quarantine")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("FORGED.json")),
        "the hostile file was set aside"
    );
    s.set_env("CORRAL_HOME", "/nonexistent/home\nFORGED line");
    let out = s.run("corral", &["status"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.lines().next().is_some_and(
            |l| l.starts_with("error: ") && l.contains("/nonexistent/home\\nFORGED line")
        ),
        "{err:?}"
    );
    assert!(err.lines().all(|l| !l.starts_with("FORGED")), "{err:?}");
}

/// A copy of a live worker's spec under another name, and a stray JSON file, in `active/`
/// are no workers (S9): `corral status` counts them as invalid spec files, a problem, as
/// `corral doctor` does, not as more healthy workers. Regression: status showed `active 3
/// (unknown 1)`, `health healthy 3` and "ok: no problems" while doctor reported both files.
#[test]
fn status_counts_a_cloned_or_stray_spec_as_a_problem_not_as_a_worker() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = launch(&s, &["sleep", "300"]);
    r.group(worker_pid(&s, &id));
    let active = s.coord().join("worker-specs/active");
    std::fs::copy(active.join(format!("{id}.json")), active.join("clone.json"))
        .expect("copy the spec");
    std::fs::write(active.join("stray.json"), b"{\"junk\":1}").expect("write a stray file");
    let v = json_of(&s.code("corral", &["status", "--format", "json"], 10));
    assert_eq!(v["workers"]["by_state_dir"]["active"], 1, "{v:#}");
    assert_eq!(v["workers"]["unreadable_specs"], 2, "{v:#}");
    let health: u64 = v["workers"]["active_by_health"]
        .as_object()
        .expect("health counts")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(health, 1, "only the worker has a health: {v:#}");
    assert!(
        v["problems"].as_array().expect("problems").iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.starts_with("2 unreadable or invalid spec"))),
        "{v:#}"
    );
    let doctor = stdout(&s.code("corral", &["doctor"], 10));
    assert_eq!(
        doctor
            .lines()
            .filter(|l| l.contains("clone.json") || l.contains("stray.json"))
            .count(),
        2,
        "{doctor}"
    );
}
