//! The worker-lifecycle runbook keeps working against a home made by corral: its own `jq`
//! commands (kept in tests/fixtures/runbook/) run under bash against workers created with
//! spawn-worker, heartbeat, heartbeat --complete and --fail, and their output is checked;
//! the wrapper scripts in scripts/ are called the way the runbook calls them.

use crate::support::{read_json, stderr, stdout, Scene};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have_jq() -> bool {
    Command::new("jq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a runbook fixture under `bash -euo pipefail` with the runbook's variables.
fn snippet(s: &Scene, name: &str, worker: Option<&str>) -> Output {
    let path = repo().join("tests/fixtures/runbook").join(name);
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let bins = crate::support::bin("corral")
        .parent()
        .unwrap()
        .to_path_buf();
    let mut c = Command::new("bash");
    c.args(["-euo", "pipefail", "-c", &script])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("COMMIT_RELAY_HOME", &s.home)
        .env("CORRAL_BIN_DIR", &bins)
        .env("SCRIPTS", repo().join("scripts"))
        .current_dir(s.dir.path());
    if let Some(w) = worker {
        c.env("WORKER_ID", w);
    }
    crate::support::run_with_timeout(&mut c, Duration::from_secs(60))
}

fn ok(s: &Scene, name: &str, worker: Option<&str>) -> String {
    let out = snippet(s, name, worker);
    assert!(
        out.status.success(),
        "{name} exited {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- home\n{}",
        out.status.code(),
        stdout(&out),
        stderr(&out),
        s.tree()
    );
    stdout(&out)
}

/// Four workers: one beating with tokens, one launched process, one completed, one failed.
struct Fleet {
    s: Scene,
    beating: String,
    launched: String,
    completed: String,
    failed: String,
}

fn fleet() -> Fleet {
    let s = Scene::new();
    let ids: Vec<String> = s
        .ok(
            "spawn-worker",
            &[
                "--type",
                "implementation-worker",
                "--count",
                "3",
                "--task-id",
                "task-001",
            ],
        )
        .lines()
        .map(str::to_string)
        .collect();
    let launched = s
        .ok(
            "spawn-worker",
            &[
                "--type",
                "implementation-worker",
                "--",
                "sh",
                "-c",
                "echo started-for-runbook; exec sleep 300",
            ],
        )
        .trim()
        .to_string();
    s.ok(
        "heartbeat",
        &[&ids[0], "--tokens-used", "25000", "--message", "halfway"],
    );
    s.ok("heartbeat", &[&ids[1], "--tokens-used", "1000"]);
    s.ok("heartbeat", &[&ids[1], "--complete", "--summary", "done"]);
    s.ok(
        "heartbeat",
        &[&ids[2], "--fail", "--error", "API quota exhausted"],
    );
    Fleet {
        beating: ids[0].clone(),
        launched,
        completed: ids[1].clone(),
        failed: ids[2].clone(),
        s,
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let p = self.s.spec_path("active", &self.launched);
        if let Some(pid) = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["pid"].as_i64())
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn runbook_jq_commands_read_corral_specs() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let f = fleet();
    let s = &f.s;

    let viewed: Value = serde_json::from_str(&ok(s, "view-spec.sh", Some(&f.beating))).unwrap();
    assert_eq!(
        viewed,
        s.spec("active", &f.beating),
        "jq . prints the spec as stored"
    );
    assert_eq!(viewed["heartbeat"]["message"], "halfway");

    let none = ok(s, "check-process.sh", Some(&f.beating));
    assert_eq!(
        none, "no pid recorded",
        "`.pid // empty` is empty before a launch"
    );
    let running = ok(s, "check-process.sh", Some(&f.launched));
    assert!(running.ends_with("Worker running"), "{running}");
    let pid = s.spec("active", &f.launched)["pid"]
        .as_i64()
        .expect("launched pid");
    assert!(
        running.contains(&pid.to_string()),
        "ps -p shows the pid: {running}"
    );

    let beat: Value = serde_json::from_str(&ok(s, "check-heartbeat.sh", Some(&f.beating))).unwrap();
    assert!(
        beat["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{beat}"
    );
    assert!(beat["health_score"].is_u64(), "{beat}");

    let logs = ok(s, "view-logs.sh", Some(&f.launched));
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            ok(s, "view-logs.sh", Some(&f.launched)).contains("started-for-runbook")
        }),
        "worker.log not found the runbook's way: {logs:?}\n{}",
        s.tree()
    );

    let health = ok(s, "health-scores.sh", None);
    let active = s.ids_in("active");
    let mut seen: Vec<String> = Vec::new();
    for line in health.lines() {
        let parts: Vec<&str> = line.split(" | ").collect();
        assert_eq!(parts.len(), 3, "{line}");
        let pct = parts[0].strip_suffix('%').expect("percent");
        assert!(
            pct.parse::<u32>().is_ok(),
            "health score is an integer: {line}"
        );
        seen.push(parts[1].to_string());
        assert!(parts[2] == "never" || parts[2].ends_with('Z'), "{line}");
    }
    seen.sort();
    assert_eq!(seen, active, "one line per active worker");

    let tokens = ok(s, "token-usage.sh", None);
    let first = tokens.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("{}% | {} | 25000/100000", 25000 * 100 / 100_001, f.beating)
    );
    assert_eq!(tokens.lines().count(), active.len());

    let text = std::fs::read_to_string(s.coord().join("dashboard-events.jsonl")).unwrap();
    assert!(text
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object())));
}

#[test]
fn runbook_budget_recovery_and_archiving_keep_corral_consistent() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let f = fleet();
    let s = &f.s;
    let before = s.budget();
    let allocated = s.spec("zombie", &f.failed)["token_budget"]["allocated"]
        .as_u64()
        .unwrap();
    let out = ok(s, "cleanup-single-zombie.sh", Some(&f.failed));
    assert_eq!(
        out,
        format!("Cleaned up {}, recovered {allocated} tokens", f.failed)
    );
    let after = s.budget();
    assert_eq!(
        after["used"].as_u64().unwrap(),
        before["used"].as_u64().unwrap() - allocated
    );
    assert_eq!(
        after["available"].as_u64().unwrap(),
        before["available"].as_u64().unwrap() + allocated
    );
    assert_eq!(s.dirs_of(&f.failed), ["archived"]);
    // The runbook's hand edit leaves books corral agrees with.
    s.ok("recalc-budget", &["--check"]);

    // Archive old completed: one finished long ago, one just now.
    let old = s
        .ok("spawn-worker", &["--type", "implementation-worker"])
        .trim()
        .to_string();
    s.ok("heartbeat", &[&old, "--complete"]);
    let p = s.spec_path("completed", &old);
    let mut v = read_json(&p);
    v["completed_at"] = json!("2020-01-01T00:00:00.000Z");
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    ok(s, "archive-old-completed.sh", None);
    assert_eq!(s.dirs_of(&old), ["archived"]);
    assert_eq!(
        s.dirs_of(&f.completed),
        ["completed"],
        "recent completions stay"
    );
    let listed = s.ok(
        "worker-monitor",
        &["--state-dir", "archived", "--format", "json"],
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

#[test]
fn runbook_grep_on_the_event_log_is_line_oriented() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let f = fleet();
    let s = &f.s;
    let home = corral::Home::at(&s.home);
    corral::lifecycle::zombify_worker(
        &home,
        &f.beating,
        "no heartbeat for 301s",
        json!({"age_seconds": 301}),
    )
    .expect("zombify");
    let out = ok(s, "zombie-events.sh", None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one zombie_detected line: {out}");
    let ev: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(ev["type"], "zombie_detected");
    assert_eq!(ev["worker_id"], f.beating.as_str());
    let shown = s.ok(
        "worker-monitor",
        &["events", "--type", "zombie_detected", "--format", "jsonl"],
    );
    assert_eq!(
        shown.trim(),
        std::fs::read_to_string(s.coord().join("dashboard-events.jsonl"))
            .unwrap()
            .lines()
            .find(|l| l.contains("zombie_detected"))
            .unwrap()
    );
}

#[test]
fn runbook_wrapper_scripts_pass_arguments_through() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let f = fleet();
    let s = &f.s;
    let out = ok(s, "manual-spec-then-validate.sh", None);
    let id = out
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("Created worker: "))
        .expect("created line")
        .to_string();
    let spec = s.spec("active", &id);
    assert_eq!(
        spec["schema_version"], 1,
        "corral filled in the hand-made spec"
    );
    assert_eq!(spec["priority"], "high");

    let bad = s.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"worker_id": "worker-bad", "status": "sleeping"}"#).unwrap();
    let mut c = Command::new(repo().join("scripts/validate-and-write-worker-spec.sh"));
    c.arg(&bad).env("CORRAL_HOME", &s.home).env(
        "CORRAL_BIN_DIR",
        crate::support::bin("corral").parent().unwrap(),
    );
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(6),
        "invalid spec refused: {}",
        stderr(&out)
    );
    assert!(s.dirs_of("worker-bad").is_empty());

    let out = ok(s, "wrappers.sh", None);
    let lines: Vec<&str> = out.lines().collect();
    let spawned = lines[0];
    let spec = s.spec("active", spawned);
    assert_eq!(
        (
            spec["master"].as_str(),
            spec["priority"].as_str(),
            spec["repo"].as_str()
        ),
        (Some("development-master"), Some("high"), Some("owner/repo"))
    );
    assert!(
        lines[1].starts_with("ID"),
        "worker-monitor.sh prints the table: {out}"
    );
    assert!(
        out.contains(&corral::lookup::short_id(&f.beating, 8)),
        "--status running lists the beating worker (by its short id): {out}"
    );
    assert!(
        s.dirs_of(&f.failed) == ["archived"],
        "cleanup-zombie-workers.sh archived the failed worker"
    );

    // Without a binary anywhere, the wrapper says so and exits 127.
    let lone = s.dir.path().join("lone");
    std::fs::create_dir_all(lone.join("dashboards")).unwrap();
    std::fs::create_dir_all(lone.join("lib")).unwrap();
    std::fs::copy(
        repo().join("scripts/dashboards/worker-monitor.sh"),
        lone.join("dashboards/wm.sh"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("scripts/lib/find-bin.sh"),
        lone.join("lib/find-bin.sh"),
    )
    .unwrap();
    let mut c = Command::new("bash");
    c.arg(lone.join("dashboards/wm.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("worker-monitor not found"),
        "{}",
        stderr(&out)
    );
}

/// Regression: after the runbook's heredoc wrote a spec straight into active/,
/// `validate-and-write-worker-spec.sh $WORKER_ID.json` exited 3 (no such file here) or 5
/// (the id exists). It adopts the spec in place, reserves its budget once, and a second run
/// changes nothing.
#[test]
fn runbook_heredoc_into_active_is_adopted_once() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let s = Scene::new();
    let before = s.budget()["used"].as_u64().unwrap();
    let out = ok(&s, "manual-spec-in-active.sh", None);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("Created worker: "))
        .expect("created line")
        .to_string();
    assert!(
        out.lines().any(|l| l == id),
        "the wrapper prints the id: {out}"
    );
    let spec = s.spec("active", &id);
    assert_eq!(spec["schema_version"], 1, "filled in place");
    assert!(spec["adopted_at"].is_string());
    assert_eq!(spec["priority"], "high");
    assert_eq!(s.budget()["used"].as_u64().unwrap(), before + 100_000);
    s.ok("recalc-budget", &["--check"]);
    // Again (a re-run of the runbook step): exit 0, nothing reserved twice.
    let mut c = Command::new(repo().join("scripts/validate-and-write-worker-spec.sh"));
    c.arg(format!("{id}.json"))
        .current_dir(s.dir.path())
        .env("COMMIT_RELAY_HOME", &s.home)
        .env(
            "CORRAL_BIN_DIR",
            crate::support::bin("corral").parent().unwrap(),
        );
    let again = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(s.budget()["used"].as_u64().unwrap(), before + 100_000);
    s.ok("recalc-budget", &["--check"]);
    s.code("corral", &["doctor"], 0);
    assert_eq!(
        s.events_of("budget_reserved")
            .iter()
            .filter(|e| e["worker_id"] == id.as_str())
            .count(),
        1
    );
}

/// The runbook's manual shutdown (status edited, process killed, file moved to completed/ by
/// hand) is accepted: doctor records it as completed where it is instead of moving it back,
/// and the budget agrees.
#[test]
fn runbook_manual_shutdown_is_accepted() {
    if !crate::support::have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let f = fleet();
    let s = &f.s;
    ok(s, "shutdown-single-worker.sh", Some(&f.launched));
    assert_eq!(s.dirs_of(&f.launched), ["completed"]);
    let out = s.code("corral", &["doctor", "--format", "json"], 10);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"moved_by_hand"), "{v:#}");
    assert!(!kinds.contains(&"status_mismatch"), "{v:#}");
    s.ok("corral", &["doctor", "--fix"]);
    assert_eq!(s.dirs_of(&f.launched), ["completed"], "not moved back");
    let spec = s.spec("completed", &f.launched);
    assert_eq!(spec["status"], "completed");
    assert!(spec["completed_at"].is_string());
    s.code("corral", &["doctor"], 0);
    s.code("recalc-budget", &["--check"], 0);
}

fn wizard(s: &Scene, args: &[&str], input: &str) -> Output {
    let mut c = Command::new(repo().join("scripts/wizards/create-worker.sh"));
    c.args(args)
        .current_dir(s.dir.path())
        .env("COMMIT_RELAY_HOME", &s.home)
        .env(
            "CORRAL_BIN_DIR",
            crate::support::bin("corral").parent().unwrap(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("wizard");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn runbook_wizard_asks_with_defaults_then_spawns() {
    let s = Scene::new();
    let out = wizard(&s, &[], "review-worker\ntask-7\nhigh\nowner/repo\ny\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Worker type"),
        "it asked: {}",
        stderr(&out)
    );
    let id = stdout(&out);
    let spec = s.spec("active", &id);
    assert_eq!(
        (
            spec["worker_type"].as_str(),
            spec["task_id"].as_str(),
            spec["priority"].as_str(),
            spec["repo"].as_str()
        ),
        (
            Some("review-worker"),
            Some("task-7"),
            Some("high"),
            Some("owner/repo")
        )
    );
    // Enter takes every default; a wrong answer is asked again.
    let out = wizard(&s, &[], "no-such-type\n\n\n\n\n\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not one of"), "{}", stderr(&out));
    let spec = s.spec("active", &stdout(&out));
    assert_eq!(spec["worker_type"], "implementation-worker");
    assert_eq!(spec["priority"], "medium");
    assert!(spec["repo"].is_null());
    // No prompts with --yes and flags.
    let out = wizard(
        &s,
        &[
            "--yes",
            "--type",
            "test-worker",
            "--task-id",
            "t-9",
            "--master",
            "m1",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Worker type"), "{}", stderr(&out));
    let spec = s.spec("active", &stdout(&out));
    assert_eq!(
        (spec["task_id"].as_str(), spec["master"].as_str()),
        (Some("t-9"), Some("m1"))
    );
    let out = wizard(&s, &["--yes", "--type", "nope"], "");
    assert_eq!(out.status.code(), Some(2));
    // Declining spawns nothing.
    let n = s.ids_in("active").len();
    let out = wizard(&s, &[], "\n\n\n\nn\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(s.ids_in("active").len(), n);
}

/// The runbook's crontab line works as written once the scripts are installed into the home:
/// `$COMMIT_RELAY_HOME/scripts/cleanup-zombie-workers.sh`, from cron's minimal PATH.
#[test]
fn runbook_crontab_line_works_with_installed_scripts() {
    let s = Scene::new();
    let installed = s.ok("corral", &["scripts", "install"]);
    assert!(installed
        .lines()
        .any(|l| l.ends_with("scripts/cleanup-zombie-workers.sh")));
    let id = stdout(&s.code("spawn-worker", &["--type", "test-worker"], 0));
    s.ok("heartbeat", &[&id, "--fail", "--error", "boom"]);
    let log = s.dir.path().join("cleanup.log");
    let mut c = Command::new("bash");
    c.args([
        "-c",
        &format!(
            "0<&- $COMMIT_RELAY_HOME/scripts/cleanup-zombie-workers.sh >> {} 2>&1",
            log.display()
        ),
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("COMMIT_RELAY_HOME", &s.home)
    .current_dir("/");
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(s.dirs_of(&id), ["archived"]);
    // `corral init --with-scripts` does the same at creation; the home is the default.
    let other = s.dir.path().join("other");
    s.ok(
        "corral",
        &["init", "--home", other.to_str().unwrap(), "--with-scripts"],
    );
    let mut c = Command::new(other.join("scripts/dashboards/worker-monitor.sh"));
    c.args(["--format", "json"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "[]");
}
