//! Integration tests of `worker-monitor`: the list (filters, sorts, JSON shapes), `events`
//! over rotated logs and `--follow` across rotation, `summary`, `progress`, `prometheus`
//! (checked with the Python `prometheus_client` parser) and the `--watch` dashboard driven
//! through tmux. Every test runs the real binaries against a temporary home.

use crate::support::{read_json, stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn spawn(s: &Scene, args: &[&str]) -> Vec<String> {
    let mut a = vec!["--type", "implementation-worker"];
    a.extend_from_slice(args);
    s.ok("spawn-worker", &a)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Rewrites fields of a spec in place, as the monitor would (health) or a hand edit.
fn patch_spec(s: &Scene, dir: &str, id: &str, f: impl FnOnce(&mut Value)) {
    let p = s.spec_path(dir, id);
    let mut v = read_json(&p);
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("json")).expect("write spec");
}

fn json_out(s: &Scene, args: &[&str]) -> Value {
    let out = s.ok("worker-monitor", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| r["worker_id"].as_str().expect("id").to_string())
        .collect()
}

/// A home with three implementation workers and one converter in another session, health
/// scores 90/40/70, token use 10k/50k/0.
fn fleet() -> (Scene, Vec<String>, String) {
    let s = Scene::new();
    let w = spawn(
        &s,
        &["--count", "3", "--session", "s1", "--tokens", "100000"],
    );
    let conv = s
        .ok(
            "spawn-worker",
            &[
                "--type",
                "implementation-worker",
                "--session",
                "s2",
                "--id",
                "worker-conv-1",
            ],
        )
        .trim()
        .to_string();
    s.ok(
        "heartbeat",
        &[&w[0], "--tokens-used", "10000", "--message", "hello"],
    );
    s.ok("heartbeat", &[&w[1], "--tokens-used", "50000"]);
    for (id, score) in [(&w[0], 90), (&w[1], 40), (&w[2], 70)] {
        patch_spec(&s, "active", id, |v| {
            v["heartbeat"]["health_score"] = json!(score)
        });
    }
    (s, w, conv)
}

#[test]
fn list_filters_sorts_and_prints_the_documented_json() {
    let (s, w, conv) = fleet();
    let all = json_out(&s, &["--format", "json"]);
    let mut expect = w.clone();
    expect.push(conv.clone());
    expect.sort();
    assert_eq!(ids(&all), expect, "default: active workers by id");
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["worker_id"] == w[0].as_str())
        .unwrap();
    for key in [
        "worker_type",
        "status",
        "state_dir",
        "health",
        "health_score",
        "last_seen",
        "heartbeat_age_seconds",
        "tokens_used",
        "tokens_allocated",
        "tokens_percent",
        "task_id",
        "pid",
        "session_id",
        "uptime_seconds",
        "message",
        "created_at",
    ] {
        assert!(row.get(key).is_some(), "missing {key} in {row}");
    }
    assert_eq!(row["status"], "running");
    assert_eq!(row["health_score"], 90);
    assert_eq!(row["tokens_used"], 10000);
    assert_eq!(row["tokens_percent"], 10.0);
    assert_eq!(row["message"], "hello");

    let by_health = json_out(
        &s,
        &["--sort", "health", "--format", "json", "--session", "s1"],
    );
    assert_eq!(ids(&by_health), [w[1].clone(), w[2].clone(), w[0].clone()]);
    let top = json_out(&s, &["--top-tokens", "1", "--format", "json"]);
    assert_eq!(ids(&top), [w[1].clone()]);
    let running = json_out(&s, &["--status", "running", "--format", "json"]);
    let mut r = vec![w[0].clone(), w[1].clone()];
    r.sort();
    assert_eq!(ids(&running), r);
    let s2 = json_out(&s, &["--session", "s2", "--format", "json"]);
    assert_eq!(ids(&s2), [conv]);
    let none = json_out(&s, &["--type", "no-such-type", "--format", "json"]);
    assert_eq!(none, json!([]));

    // Completed workers are found by status without naming the directory.
    s.ok("heartbeat", &[&w[2], "--complete"]);
    let done = json_out(&s, &["--status", "completed", "--format", "json"]);
    assert_eq!(ids(&done), [w[2].clone()]);
    assert_eq!(done[0]["state_dir"], "completed");
    let every = json_out(&s, &["--state-dir", "all", "--format", "json"]);
    assert_eq!(every.as_array().unwrap().len(), 4);

    let jsonl = s.ok("worker-monitor", &["--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 3);
    for l in jsonl.lines() {
        serde_json::from_str::<Value>(l).expect("jsonl line");
    }

    let table = s.ok("worker-monitor", &["--sort", "tokens"]);
    let lines: Vec<&str> = table.lines().collect();
    for col in [
        "ID", "TYPE", "STATUS", "HEALTH", "BEAT", "TOKENS", "TASK", "PID", "UPTIME",
    ] {
        assert!(lines[0].contains(col), "header lacks {col}: {}", lines[0]);
    }
    assert!(
        lines[1].starts_with(&corral::lookup::short_id(&w[1], 8)),
        "tokens sort, short ids: {table}"
    );
    assert!(!table.contains(&w[1]), "full ids only in JSON: {table}");
    assert!(lines[1].contains("50.0k/100.0k"), "{table}");
    assert!(
        lines[1].contains("unhealthy 40"),
        "health band follows the score: {table}"
    );
    assert!(
        !table.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

#[test]
fn list_survives_bad_files_and_rejects_bad_flags() {
    let (s, w, _) = fleet();
    let active = s.coord().join("worker-specs/active");
    std::fs::write(active.join("worker-torn.json"), "{\"worker_id\":").unwrap();
    std::os::unix::fs::symlink(
        s.spec_path("active", &w[0]),
        active.join("worker-link.json"),
    )
    .unwrap();
    let out = s.run("worker-monitor", &["--format", "json"]);
    s.expect_code("worker-monitor", &[], &out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        4,
        "bad files are skipped, not fatal"
    );
    assert!(
        crate::support::stderr(&out).contains("worker-torn.json"),
        "warned about the torn file"
    );
    // --home is global: before or after the subcommand.
    let home = s.home.to_str().unwrap();
    for args in [
        vec!["--home", home, "summary", "--format", "json"],
        vec!["summary", "--home", home, "--format", "json"],
        vec!["--home", home, "events", "--format", "json"],
        vec!["--home", home, "list", "--format", "json"],
        vec!["--home", home, "--format", "json"],
    ] {
        let mut c = s.cmd("worker-monitor");
        c.env_remove("CORRAL_HOME").args(&args);
        let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
        s.expect_code("worker-monitor", &args, &out, 0);
        serde_json::from_slice::<Value>(&out.stdout).expect("json");
    }
    s.code("worker-monitor", &["--format", "json", "events"], 2);
    s.code("worker-monitor", &["--status", "sleeping"], 2);
    s.code("worker-monitor", &["--sort", "colour"], 2);
    s.code("worker-monitor", &["events", "--since", "yesterday-ish"], 6);
    let mut c = s.cmd("worker-monitor");
    c.env_remove("CORRAL_HOME");
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(8));
}

/// Every line of the log, in order: rotated files oldest first, then the current file.
fn all_log_lines(s: &Scene) -> Vec<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut n = 1;
    while s
        .coord()
        .join(format!("dashboard-events.jsonl.{n}"))
        .exists()
    {
        files.push(s.coord().join(format!("dashboard-events.jsonl.{n}")));
        n += 1;
    }
    files.reverse();
    files.push(s.coord().join("dashboard-events.jsonl"));
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn small_log_scene() -> Scene {
    let mut s = Scene::new();
    s.set_env("CORRAL_EVENTS_MAX_BYTES", "1500");
    s.set_env("CORRAL_EVENTS_KEEP", "1000");
    s
}

#[test]
fn events_reads_rotated_files_in_order_and_filters() {
    let s = small_log_scene();
    let w = spawn(&s, &["--count", "4", "--session", "s1"]);
    s.ok("heartbeat", &[&w[0]]);
    s.ok("heartbeat", &[&w[1], "--fail", "--error", "boom"]);
    assert!(
        s.coord().join("dashboard-events.jsonl.2").exists(),
        "the scene must rotate:\n{}",
        s.tree()
    );
    let expected = all_log_lines(&s);
    let got: Vec<String> = s
        .ok("worker-monitor", &["events", "--format", "jsonl"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, expected, "jsonl is the log's own lines, oldest first");

    let arr = json_out(&s, &["events", "--format", "json"]);
    assert_eq!(arr.as_array().unwrap().len(), expected.len());

    let failed = json_out(
        &s,
        &["events", "--format", "json", "--type", "worker_failed"],
    );
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["worker_id"], w[1].as_str());
    let mine = json_out(&s, &["events", "--format", "json", "--worker", &w[0]]);
    let kinds: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["worker_spawned", "worker_ready"]);
    let future = json_out(
        &s,
        &[
            "events",
            "--format",
            "json",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(future, json!([]));
    let recent = json_out(
        &s,
        &[
            "events",
            "--format",
            "json",
            "--since",
            "1h",
            "--session",
            "s1",
        ],
    );
    assert!(recent.as_array().unwrap().len() >= 6);
    let table = s.ok("worker-monitor", &["events", "--type", "worker_failed"]);
    assert!(
        table.contains("worker_failed") && table.contains(&w[1]),
        "{table}"
    );
}

#[test]
fn events_follow_survives_rotation() {
    let s = small_log_scene();
    spawn(&s, &["--count", "2"]);
    let mut child = s
        .cmd("worker-monitor")
        .args(["events", "--follow", "--format", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start follower");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got: Vec<String> = Vec::new();
    let initial = all_log_lines(&s).len();
    assert!(wait_until(Duration::from_secs(10), || {
        got.extend(rx.try_iter());
        got.len() >= initial
    }));
    // Enough new events to rotate several times while following.
    let before = std::fs::read_dir(s.coord()).unwrap().count();
    for i in 0..6 {
        s.ok(
            "spawn-worker",
            &[
                "--type",
                "implementation-worker",
                "--task-id",
                &format!("t{i}"),
            ],
        );
    }
    assert!(
        std::fs::read_dir(s.coord()).unwrap().count() > before,
        "no rotation happened"
    );
    let expected = all_log_lines(&s);
    let ok = wait_until(Duration::from_secs(15), || {
        got.extend(rx.try_iter());
        got.len() >= expected.len()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "follower saw {} of {} lines", got.len(), expected.len());
    assert_eq!(got, expected, "every line once, in order, across rotations");
}

fn write_task(s: &Scene, state: &str, id: &str, v: Value) {
    let dir = s.coord().join("tasks").join(state);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{id}.json")), v.to_string()).unwrap();
}

fn append_line(p: &Path, v: &Value) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .unwrap();
    writeln!(f, "{v}").unwrap();
}

/// A home with a finished, a failed, a live worker, queue files, restarts and a breaker.
fn busy_home() -> (Scene, Vec<String>) {
    let s = Scene::new();
    let w = spawn(&s, &["--count", "3", "--session", "build-1"]);
    s.ok("heartbeat", &[&w[0], "--task-id", "task-a"]);
    s.ok("heartbeat", &[&w[1]]);
    s.ok("heartbeat", &[&w[1], "--complete", "--summary", "done"]);
    s.ok(
        "heartbeat",
        &[&w[2], "--fail", "--error", "API quota exhausted"],
    );
    write_task(
        &s,
        "completed",
        "task-1",
        json!({"task_id": "task-1", "class": "llm",
        "claimed_by": w[0], "claimed_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:02Z"}),
    );
    write_task(
        &s,
        "completed",
        "task-2",
        json!({"task_id": "task-2", "class": "llm",
        "claimed_by": w[0], "claimed_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:04Z"}),
    );
    write_task(
        &s,
        "failed",
        "task-3",
        json!({"task_id": "task-3", "class": "llm", "claimed_by": w[0]}),
    );
    write_task(
        &s,
        "processing",
        "task-a",
        json!({"task_id": "task-a", "class": "build",
        "claimed_by": w[0], "claimed_at": "2026-01-01T00:00:00Z"}),
    );
    let pending = s.coord().join("tasks/pending/llm");
    std::fs::create_dir_all(&pending).unwrap();
    std::fs::write(pending.join("2-1700000000000000000-task-4.json"), "{}").unwrap();
    let hist = s.coord().join("metrics/worker-restart-history.jsonl");
    append_line(
        &hist,
        &json!({"timestamp": "2026-01-01T00:00:00.000Z", "original_worker_id": w[2],
        "new_worker_id": "worker-x", "attempt": 1, "result": "success", "reason": "crashed"}),
    );
    append_line(
        &hist,
        &json!({"timestamp": "2026-01-01T00:01:00.000Z", "original_worker_id": w[2],
        "new_worker_id": null, "attempt": 2, "result": "blocked", "reason": "breaker open"}),
    );
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    append_line(
        &s.coord().join("dashboard-events.jsonl"),
        &json!({"id": "ev-breaker",
        "timestamp": now, "type": "circuit_breaker_tripped", "source": "test", "host": "h",
        "worker_id": null, "worker_type": "implementation-worker", "task_id": null, "session_id": null,
        "message": "3 consecutive failures", "data": {"worker_type": "implementation-worker"}}),
    );
    (s, w)
}

#[test]
fn summary_reports_the_seed_dashboards() {
    let (s, w) = busy_home();
    let v = json_out(&s, &["summary", "--format", "json"]);
    let recent: Vec<&str> = v["recent_events"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        recent.first(),
        Some(&"worker_failed"),
        "newest first: {recent:?}"
    );
    assert!(recent.contains(&"worker_spawned") && recent.contains(&"worker_completed"));
    assert!(
        !recent.contains(&"budget_reserved"),
        "only lifecycle events"
    );
    assert_eq!(v["failures"]["count"], 1);
    assert_eq!(v["failures"]["events"][0]["worker_id"], w[2].as_str());
    assert_eq!(
        v["failures"]["events"][0]["data"]["error"],
        "API quota exhausted"
    );
    let session = &v["sessions"][0];
    assert_eq!(session["session_id"], "build-1");
    assert!(session["event_count"].as_u64().unwrap() >= 8);
    assert!(session["started_at"].as_str() <= session["ended_at"].as_str());
    let active = v["active_workers"].as_array().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["worker_id"], w[0].as_str());
    assert_eq!(active[0]["jobs_failed"], 1);
    assert!(active[0]["uptime_seconds"].as_f64().is_some());
    assert_eq!(v["lifecycle"]["finished"], 2);
    assert_eq!(v["lifecycle"]["by_end"]["worker_completed"], 1);
    assert_eq!(v["lifecycle"]["by_end"]["worker_failed"], 1);
    assert!(
        v["lifecycle"]["recent"][0]["lifetime_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    let jobs = &v["jobs_per_worker"][0];
    assert_eq!(jobs["worker_id"], w[0].as_str());
    assert_eq!(
        (jobs["total"].as_u64(), jobs["completed"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(
        (jobs["failed"].as_u64(), jobs["processing"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(jobs["mean_duration_seconds"], 3.0);
    assert_eq!(
        v["queue"],
        json!({"total": 5, "pending": 1, "processing": 1, "completed": 2, "failed": 1,
               "percent_complete": 40.0})
    );
    assert_eq!(v["budget"]["total"], 1_000_000);
    assert_eq!(v["restarts"]["total"], 2);
    assert_eq!(v["restarts"]["by_result"]["blocked"], 1);
    assert_eq!(v["restarts"]["recent"][0]["attempt"], 2, "newest first");
    assert_eq!(
        v["circuit_breakers"][0]["worker_type"],
        "implementation-worker"
    );
    assert_eq!(v["circuit_breakers"][0]["state"], "open");
    assert_eq!(v["log"]["unparsable"], 0);

    let text = s.ok("worker-monitor", &["summary"]);
    for title in [
        "Recent lifecycle events",
        "Worker failures",
        "Sessions",
        "Active workers",
        "Lifecycle",
        "Jobs per worker",
        "Progress: 2/5 jobs completed | 1 active | 1 failed (40%)",
        "Budget",
        "Restarts: 2",
        "Circuit breakers",
    ] {
        assert!(
            text.contains(title),
            "summary text lacks {title:?}:\n{text}"
        );
    }
    let progress = s.ok("worker-monitor", &["progress"]);
    assert!(
        progress.starts_with("Progress: 2/5 jobs completed | 1 active | 1 failed (40%)"),
        "{progress}"
    );
    assert!(
        progress.contains(&format!(
            "Worker {}: Processing build task task-a",
            corral::lookup::short_id(&w[0], 8)
        )),
        "{progress}"
    );
}

fn python_has_prometheus_client() -> bool {
    Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value, "type": fam.type})
print(json.dumps(out))
"#;

#[test]
fn prometheus_text_parses_with_the_reference_parser() {
    let (s, w) = busy_home();
    patch_spec(&s, "active", &w[0], |v| {
        v["worker_type"] = json!("odd\"type\\name")
    });
    let text = s.ok("worker-monitor", &["prometheus"]);
    let out = s.coord().join("metrics/corral.prom");
    s.ok(
        "worker-monitor",
        &["prometheus", "--output", out.to_str().unwrap()],
    );
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("# TYPE corral_workers gauge"));
    let strip = |t: &str| -> String {
        t.lines()
            .filter(|l| {
                !l.starts_with("corral_textfile_generated")
                    && !l.contains("age_seconds")
                    && !l.contains("oldest_pending")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&text),
        strip(&written),
        "--output writes the same exposition"
    );
    let leftovers = std::fs::read_dir(s.coord().join(".tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "atomic write leaves no temp file");
    if !crate::support::have_tool(
        python_has_prometheus_client(),
        "python3 prometheus_client (pip install prometheus_client)",
    ) {
        return;
    }
    let parsed = s.run_stdin_cmd("python3", &["-c", PARSE], text.as_bytes());
    let m: Value =
        serde_json::from_str(&parsed).unwrap_or_else(|e| panic!("{e}: {parsed}\n{text}"));
    let find = |name: &str, labels: Value| -> f64 {
        m[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .iter()
            .find(|s| {
                labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| s["labels"][k] == *v)
            })
            .unwrap_or_else(|| panic!("no {name}{labels} in\n{text}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        find(
            "corral_workers",
            json!({"state_dir": "active", "worker_type": "odd\"type\\name"})
        ),
        1.0
    );
    assert_eq!(
        find(
            "corral_workers",
            json!({"state_dir": "zombie", "status": "failed"})
        ),
        1.0
    );
    assert_eq!(
        find(
            "corral_workers",
            json!({"state_dir": "completed", "status": "completed"})
        ),
        1.0
    );
    assert_eq!(
        find("corral_worker_health_score", json!({"worker_id": w[0]})),
        100.0
    );
    assert_eq!(
        find("corral_budget_tokens", json!({"kind": "total"})),
        1_000_000.0
    );
    assert_eq!(
        find(
            "corral_queue_tasks",
            json!({"state": "pending", "class": "llm"})
        ),
        1.0
    );
    assert_eq!(
        find(
            "corral_queue_tasks",
            json!({"state": "processing", "class": "build"})
        ),
        1.0
    );
    assert_eq!(
        find(
            "corral_queue_tasks",
            json!({"state": "completed", "class": "llm"})
        ),
        2.0
    );
    assert_eq!(
        find("corral_restarts_total", json!({"result": "success"})),
        1.0
    );
    assert_eq!(
        find(
            "corral_detections",
            json!({"type": "circuit_breaker_tripped"})
        ),
        1.0
    );
    assert_eq!(
        find("corral_detections", json!({"type": "zombie_detected"})),
        0.0
    );
    assert!(
        find(
            "corral_queue_oldest_pending_seconds",
            json!({"class": "llm"})
        ) > 0.0
    );
}

trait RunPlain {
    fn run_stdin_cmd(&self, prog: &str, args: &[&str], input: &[u8]) -> String;
}

impl RunPlain for Scene {
    /// Runs a non-corral program with `input` on stdin; panics unless it exits 0.
    fn run_stdin_cmd(&self, prog: &str, args: &[&str], input: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{prog} failed: {}",
            crate::support::stderr(&out)
        );
        stdout(&out)
    }
}

/// A private tmux server for one test, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn new(tag: &str) -> Tmux {
        Tmux {
            socket: format!("corral-test-{}-{tag}", std::process::id()),
        }
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pane(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "w"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// Starts `--watch` in a tmux pane; its debug log (one line per redraw) goes to the
/// returned file.
fn watch_in_tmux(s: &Scene, tmux: &Tmux) -> PathBuf {
    let log = s.dir.path().join("watch.log");
    let line = format!(
        "env -i PATH=/usr/bin:/bin TERM=xterm NO_COLOR=1 CORRAL_HOME={} {} --watch --interval 60 -v 2>{}; echo WATCH-EXITED-$?; sleep 60",
        s.home.display(),
        crate::support::bin("worker-monitor").display(),
        log.display()
    );
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "160",
        "-y",
        "40",
        &line,
    ]);
    log
}

#[test]
fn watch_redraws_on_inotify_and_quits_cleanly() {
    if !crate::support::have_tool(Tmux::available(), "tmux") {
        return;
    }
    let (s, w, _) = fleet();
    s.ok("task-queue", &["enqueue", "--class", "llm"])
        .trim()
        .to_string();
    let tmux = Tmux::new("q");
    let log = watch_in_tmux(&s, &tmux);
    assert!(
        wait_until(Duration::from_secs(20), || tmux.pane().contains(&w[1])),
        "dashboard never showed the workers:\n{}",
        tmux.pane()
    );
    let pane = tmux.pane();
    for part in [
        "Workers",
        "running 2",
        "Budget",
        "Progress: 0/1 jobs completed",
        "Last events",
        "worker_spawned",
    ] {
        assert!(pane.contains(part), "dashboard lacks {part:?}:\n{pane}");
    }
    // The interval is 60 s: only inotify can bring the change within the wait.
    s.ok("heartbeat", &[&w[2], "--message", "MARKER-42"]);
    assert!(
        wait_until(Duration::from_secs(5), || tmux.pane().contains("MARKER-42")),
        "no redraw after a spec change:\n{}",
        tmux.pane()
    );
    let spawned = spawn(&s, &["--task-id", "late"]);
    assert!(
        wait_until(Duration::from_secs(5), || tmux.pane().contains(&spawned[0])),
        "new worker not shown:\n{}",
        tmux.pane()
    );
    // Idle means idle: the dashboard's own reads must not wake it (IN_OPEN feedback).
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("redraw")
        .count();
    std::thread::sleep(Duration::from_millis(300));
    let after = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("redraw")
        .count();
    assert!(
        after - before <= 1,
        "redraw loop while idle: {before} -> {after} redraws"
    );
    tmux.cmd(&["send-keys", "-t", "w", "q"]);
    assert!(
        wait_until(Duration::from_secs(5), || tmux
            .pane()
            .contains("WATCH-EXITED-0")),
        "q did not quit cleanly:\n{}",
        tmux.pane()
    );
    let after = tmux.pane();
    assert!(
        !after.contains("Last events"),
        "alternate screen not left:\n{after}"
    );
}

#[test]
fn watch_quits_on_ctrl_c_and_restores_the_terminal() {
    if !crate::support::have_tool(Tmux::available(), "tmux") {
        return;
    }
    let (s, w, _) = fleet();
    let tmux = Tmux::new("c");
    watch_in_tmux(&s, &tmux);
    assert!(
        wait_until(Duration::from_secs(20), || tmux.pane().contains(&w[0])),
        "{}",
        tmux.pane()
    );
    tmux.cmd(&["send-keys", "-t", "w", "C-c"]);
    assert!(
        wait_until(Duration::from_secs(5), || tmux
            .pane()
            .contains("WATCH-EXITED-0")),
        "Ctrl-C did not quit cleanly:\n{}",
        tmux.pane()
    );
    // The shell's terminal is back in cooked mode: typed text is echoed.
    tmux.cmd(&["send-keys", "-t", "w", "echo-check"]);
    assert!(
        wait_until(Duration::from_secs(5), || tmux
            .pane()
            .contains("echo-check")),
        "terminal left in raw mode:\n{}",
        tmux.pane()
    );
}

/// What a worker may put in its text to forge a dashboard row or drive the terminal: a
/// colour, a title change ended by BEL, and CR LF followed by a whole fake row.
const FORGERY: &str = "quota\x1b[31m\x1b]0;pwned\x07\r\n2026-12-02T00:00:00.000Z  worker_completed  implementation-worker  FORGED completed OK";

/// Panics when `out` (a view printed into a pipe) holds a control character other than the
/// line ends of its own layout, or shows the forged text on a line of its own.
fn assert_escaped(view: &str, out: &str) {
    for c in ['\x1b', '\x07', '\r'] {
        assert!(
            !out.contains(c),
            "{view}: raw {c:?} reached the terminal:\n{out}"
        );
    }
    for line in out.lines().filter(|l| l.contains("FORGED")) {
        assert!(
            line.contains("quota") || line.contains("TYPE-OF"),
            "{view}: worker text started a row of its own: {line:?}\n{out}"
        );
    }
}

#[test]
fn every_view_escapes_worker_text_in_its_cells() {
    let s = Scene::new();
    s.ok(
        "spawn-worker",
        &["--type", "implementation-worker", "--id", "w1"],
    );
    s.ok("heartbeat", &["w1", "--fail", "--error", FORGERY]);
    // A live worker whose spec (read for display, not validated) carries the same text in a
    // field the list, the summary's active workers and `progress` all show.
    s.ok(
        "spawn-worker",
        &["--type", "implementation-worker", "--id", "w2"],
    );
    patch_spec(&s, "active", "w2", |v| {
        v["worker_type"] = json!(format!("TYPE-OF\x1b[2J\x07\r\nFORGED-TYPE"))
    });

    let summary = s.ok("worker-monitor", &["summary", "-q"]);
    assert_escaped("summary", &summary);
    assert!(
        summary.contains("quota\\x1b[31m\\x1b]0;pwned\\x07\\r\\n2026-12-02T00:00:00.000Z"),
        "the message is shown, escaped:\n{summary}"
    );
    // Each event section has its header and exactly the real rows.
    let section = |title: &str| -> Vec<String> {
        summary
            .split("\n\n")
            .find(|b| b.starts_with(&format!("== {title}")))
            .unwrap_or_else(|| panic!("no section {title}:\n{summary}"))
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    let failures = section("Worker failures");
    assert_eq!(failures.len(), 2, "header + one failure: {failures:#?}");
    let recent = section("Recent lifecycle events");
    let completed: Vec<&String> = recent
        .iter()
        .filter(|l| l.contains("worker_completed"))
        .filter(|l| !l.contains("quota"))
        .collect();
    assert!(completed.is_empty(), "forged rows: {completed:#?}");
    assert!(
        section("Active workers")
            .iter()
            .any(|l| l.contains("TYPE-OF\\x1b[2J\\x07\\r\\nFORGED-TYPE")),
        "{summary}"
    );

    let events = s.ok("worker-monitor", &["events"]);
    assert_escaped("events", &events);
    assert!(events.contains("quota\\x1b[31m"), "{events}");

    let list = s.ok("worker-monitor", &["-q"]);
    assert_escaped("list", &list);
    assert_eq!(list.lines().count(), 2, "header + w2:\n{list}");

    let progress = s.ok("worker-monitor", &["progress"]);
    assert_escaped("progress", &progress);
    assert!(progress.contains("TYPE-OF\\x1b[2J"), "{progress}");
}

#[test]
fn events_follow_starts_over_after_a_truncation_in_place() {
    let s = Scene::new();
    // A log longer than what will be written after the truncation, so the follower's read
    // offset stays past the new end however late it looks.
    spawn(&s, &["--count", "6"]);
    let mut child = s
        .cmd("worker-monitor")
        .args(["events", "--follow", "--format", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start follower");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got: Vec<String> = Vec::new();
    let initial = all_log_lines(&s);
    let seen_all = wait_until(Duration::from_secs(10), || {
        got.extend(rx.try_iter());
        got.len() >= initial.len()
    });
    if !seen_all {
        let _ = child.kill();
        let _ = child.wait();
        panic!("follower saw {} of {} lines", got.len(), initial.len());
    }
    // logrotate's copytruncate: same file, same inode, emptied in place.
    let log = s.coord().join("dashboard-events.jsonl");
    let big = std::fs::metadata(&log).expect("log").len();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .expect("truncate");
    s.ok(
        "spawn-worker",
        &[
            "--type",
            "implementation-worker",
            "--id",
            "after-truncation",
        ],
    );
    let after = std::fs::read_to_string(&log).expect("log");
    assert!(
        (after.len() as u64) < big,
        "the new content must be shorter than the old for this test"
    );
    let expected: Vec<String> = after.lines().map(str::to_string).collect();
    assert!(expected.iter().any(|l| l.contains("after-truncation")));
    let ok = wait_until(Duration::from_secs(10), || {
        got.extend(rx.try_iter());
        got.len() >= initial.len() + expected.len()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "events written after the truncation never showed: got {} lines, want {} + {}",
        got.len(),
        initial.len(),
        expected.len()
    );
    assert_eq!(got[..initial.len()], initial[..], "the lines before, once");
    assert_eq!(
        got[initial.len()..],
        expected[..],
        "the lines after, once, in order"
    );
}

fn have_script() -> bool {
    Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `--watch` on a pty made by `script`, its stdin a pipe the test writes keys into (script
/// passes them to the pty) and its debug log, one line per redraw, in a file.
struct PtyWatch {
    script: std::process::Child,
    log: PathBuf,
}

impl PtyWatch {
    fn start(s: &Scene, tag: &str, stdin: Stdio) -> PtyWatch {
        let log = s.dir.path().join(format!("watch-{tag}.log"));
        // exec: the pty's process is worker-monitor itself, a child of script.
        let line = format!(
            "exec {} --watch --interval 0.2 -v 2>{}",
            crate::support::bin("worker-monitor").display(),
            log.display()
        );
        let script = Command::new("script")
            .args(["-qfc", &line, "/dev/null"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TERM", "xterm")
            .env("NO_COLOR", "1")
            .env("CORRAL_HOME", &s.home)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        PtyWatch { script, log }
    }

    fn redraws(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("redraw")
            .count()
    }

    /// True when at least `n` more redraws than now happen within `within`.
    fn keeps_redrawing(&self, n: usize, within: Duration) -> bool {
        let from = self.redraws();
        wait_until(within, || self.redraws() >= from + n)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.script.try_wait().expect("try_wait")
    }

    /// Ends worker-monitor (SIGTERM, a clean way out) and script with it.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.script.id()))
                .unwrap_or_default();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        if !wait_until(Duration::from_secs(10), || self.exited().is_some()) {
            let _ = self.script.kill();
        }
        let _ = self.script.wait();
    }
}

impl Drop for PtyWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn watch_keeps_redrawing_after_ctrl_d_and_the_end_of_its_input() {
    use std::io::Write;
    if !crate::support::have_tool(have_script(), "script (util-linux)") {
        return;
    }
    let (s, _, _) = fleet();
    let mut w = PtyWatch::start(&s, "ctrl-d", Stdio::piped());
    let mut keys = w.script.stdin.take().expect("stdin");
    assert!(
        w.keeps_redrawing(2, Duration::from_secs(20)),
        "the dashboard never redrew: {:?}",
        std::fs::read_to_string(&w.log)
    );
    // Ctrl-D on the terminal: the end of input, not a way out; the interval redraws go on.
    keys.write_all(b"\x04").expect("key");
    keys.flush().expect("flush");
    assert!(
        w.keeps_redrawing(5, Duration::from_secs(20)) && w.exited().is_none(),
        "redraws stopped after Ctrl-D ({} in all, exited {:?})",
        w.redraws(),
        w.exited()
    );
    // Keys are still read: q quits, cleanly.
    keys.write_all(b"q").expect("key");
    keys.flush().expect("flush");
    assert!(
        wait_until(Duration::from_secs(10), || w.exited().is_some()),
        "q after Ctrl-D did not quit"
    );
    drop(keys);

    // No input at all: script's stdin is closed from the start, so the pty sees its end
    // of input at once. The dashboard keeps its promise of a reload every interval.
    let mut w = PtyWatch::start(&s, "eof", Stdio::null());
    assert!(
        w.keeps_redrawing(2, Duration::from_secs(20)),
        "the dashboard never redrew: {:?}",
        std::fs::read_to_string(&w.log)
    );
    assert!(
        w.keeps_redrawing(5, Duration::from_secs(20)) && w.exited().is_none(),
        "redraws stopped at the end of input ({} in all, exited {:?})",
        w.redraws(),
        w.exited()
    );
    w.stop();
}
