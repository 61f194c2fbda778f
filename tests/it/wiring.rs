//! The operator's libraries wired into the daemon and the other binaries: the monitor keeps
//! pools at their size (one replacement per exit, never a restart on top, in the daemon and
//! in `--once`), retention runs from `cleanup-zombies` and from the monitor's policy, the
//! new policy keys are range-checked, and `corral adopt` drops a hand-written `process`.

use crate::support::procs::*;
use crate::support::{read_json, stderr, stdout, wait_until, Scene};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Ids of the pool's workers in `active/` that are not shutting down.
fn members(active: &Path, session: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(active).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        if v["session_id"] == session && v["status"] != "shutting_down" {
            out.push(v["worker_id"].as_str().unwrap_or_default().to_string());
        }
    }
    out.sort();
    out
}

/// Watches a pool for the whole test: the most members ever seen at once, and every worker
/// it ever had.
struct PoolWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, BTreeSet<String>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PoolWatch {
    fn start(active: PathBuf, session: &str) -> PoolWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, BTreeSet::new())));
        let (st, se, session) = (stop.clone(), seen.clone(), session.to_string());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let now = members(&active, &session);
                let mut g = se.lock().unwrap();
                g.0 = g.0.max(now.len());
                g.1.extend(now);
                drop(g);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PoolWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn most(&self) -> usize {
        self.seen.lock().unwrap().0
    }

    fn ever(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().1.clone()
    }
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pool of 3 whose workers run until a file `exit-<id>` appears in the scene dir (then
/// exit 0). Restarts are quick and unlimited, so a restart on top of the pool's own
/// replacement would show within the test.
fn pool_scene() -> Scene {
    let s = Scene::new();
    s.set_policy("restart.base_seconds", json!(0.2));
    s.set_policy("restart.max_seconds", json!(0.5));
    s.set_policy("restart.rate_global_per_minute", json!(1000));
    s.set_policy("restart.rate_per_type_per_minute", json!(1000));
    s.set_policy("restart.breaker_consecutive_failures", json!(1000));
    let dir = s.dir.path().display().to_string();
    s.ok(
        "corral",
        &[
            "type",
            "set",
            "pooled",
            "--tokens",
            "0",
            "--replicas",
            "3",
            "--no-apply",
            "--",
            "/bin/sh",
            "-c",
            "while [ ! -e \"$0/exit-$CORRAL_WORKER_ID\" ]; do sleep 0.05; done",
            &dir,
        ],
    );
    s
}

fn active_dir(s: &Scene) -> PathBuf {
    s.coord().join("worker-specs/active")
}

/// Regression: pools were only kept by `corral pool`; the monitor neither replaced a pool
/// worker that exited nor kept from restarting it as well.
#[test]
fn the_monitor_keeps_a_pool_at_size_replacing_each_exit_once() {
    let s = pool_scene();
    let r = Reaper::default();
    let watch = PoolWatch::start(active_dir(&s), "replicas-pooled");
    let m = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || members(&active_dir(&s), "replicas-pooled").len() == 3),
        "the monitor fills the pool\n{}\n{}",
        s.tree(),
        m.stderr()
    );
    let first = members(&active_dir(&s), "replicas-pooled");
    let pids: Vec<i32> = first.iter().map(|id| worker_pid(&s, id)).collect();
    for p in &pids {
        r.group(*p);
    }
    // One is killed, one leaves with exit 0.
    signal(pids[0], libc::SIGKILL);
    std::fs::write(s.dir.path().join(format!("exit-{}", first[1])), "").unwrap();
    let replaced = wait_until(T, || {
        let now = members(&active_dir(&s), "replicas-pooled");
        now.len() == 3 && !now.contains(&first[0]) && !now.contains(&first[1])
    });
    assert!(replaced, "{}\n{}", s.tree(), m.stderr());
    for id in members(&active_dir(&s), "replicas-pooled") {
        r.group(worker_pid(&s, &id));
    }
    // The monitor launched them, so it saw how they ended.
    let ended = |id: &str| -> Value {
        let mut v = Value::Null;
        wait_until(T, || {
            v = s
                .dirs_of(id)
                .first()
                .map(|d| s.spec(d, id)["exit"].clone())
                .unwrap_or(Value::Null);
            !v.is_null()
        });
        v
    };
    assert_eq!(ended(&first[0])["signal"], 9, "{}", s.tree());
    assert_eq!(ended(&first[1])["code"], 0, "{}", s.tree());
    // Time for a restart (0.2 s backoff) to come on top, if the monitor still made one.
    let settled = wait_until(Duration::from_secs(4), || watch.ever().len() > 5);
    assert!(!settled, "a worker was replaced twice: {:?}", watch.ever());
    assert_eq!(watch.ever().len(), 5, "3 + one replacement each");
    assert_eq!(watch.most(), 3, "never 4");
    assert!(s.events_of("worker_restart_scheduled").is_empty());
    assert!(history(&s).is_empty(), "{:?}", history(&s));
    drop(m);
}

/// `--once` (cron) reaches the same pool as the daemon (S6).
#[test]
fn once_keeps_a_pool_at_size_too() {
    let s = pool_scene();
    let r = Reaper::default();
    let watch = PoolWatch::start(active_dir(&s), "replicas-pooled");
    s.ok("heartbeat-monitor", &["--once"]);
    let first = members(&active_dir(&s), "replicas-pooled");
    assert_eq!(first.len(), 3, "{}", s.tree());
    let pids: Vec<i32> = first.iter().map(|id| worker_pid(&s, id)).collect();
    for p in &pids {
        r.group(*p);
    }
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(
        members(&active_dir(&s), "replicas-pooled"),
        first,
        "full: nothing to do"
    );
    signal(pids[0], libc::SIGKILL);
    std::fs::write(s.dir.path().join(format!("exit-{}", first[1])), "").unwrap();
    assert!(wait_until(T, || !alive(pids[0]) && !alive(pids[1])));
    let mut passes = 0;
    while members(&active_dir(&s), "replicas-pooled")
        .iter()
        .any(|id| first[..2].contains(id))
        || members(&active_dir(&s), "replicas-pooled").len() < 3
    {
        passes += 1;
        assert!(passes <= 5, "not replaced after 5 passes\n{}", s.tree());
        s.ok("heartbeat-monitor", &["--once"]);
        assert!(watch.most() <= 3 && watch.ever().len() <= 5);
    }
    for id in members(&active_dir(&s), "replicas-pooled") {
        r.group(worker_pid(&s, &id));
    }
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(watch.ever().len(), 5, "{:?}", watch.ever());
    assert_eq!(watch.most(), 3);
    assert!(history(&s).is_empty(), "{:?}", history(&s));
}

fn plant_archived(s: &Scene, id: &str, ended_secs_ago: i64) -> PathBuf {
    plant_spec(
        s,
        "archived",
        &json!({
            "worker_id": id,
            "worker_type": "build-worker",
            "status": "completed",
            "token_budget": {"allocated": 0, "used": 0},
            "heartbeat": {"last_seen": null, "health_score": 100},
            "created_at": ago(ended_secs_ago + 60),
            "completed_at": ago(ended_secs_ago),
        }),
    );
    let logs = s.home.join(format!("agents/logs/workers/{id}"));
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("worker.log"), "the worker's output\n").unwrap();
    logs
}

/// Regression: `cleanup-zombies` had no retention; archived specs and their logs stayed
/// forever.
#[test]
fn cleanup_zombies_purges_old_archived_workers_and_their_logs() {
    let s = Scene::new();
    let old_logs = plant_archived(&s, "worker-old-1", 40 * 86_400);
    let new_logs = plant_archived(&s, "worker-new-1", 3600);
    s.code(
        "cleanup-zombies",
        &["--purge-archived-older-than", "30 days"],
        6,
    );
    let dry = s.ok(
        "cleanup-zombies",
        &["--purge-archived-older-than", "30d", "--dry-run"],
    );
    assert!(dry.contains("would purge worker-old-1"), "{dry}");
    assert!(old_logs.exists() && s.spec_path("archived", "worker-old-1").exists());
    let out = s.run(
        "cleanup-zombies",
        &["--purge-archived-older-than", "30d", "--format", "json"],
    );
    s.expect_code("cleanup-zombies", &[], &out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(
        v["purge_archived"]["purged"][0]["worker_id"],
        "worker-old-1"
    );
    assert!(v["workers"].is_array(), "the cleanup report is kept: {v}");
    assert!(!old_logs.exists() && !s.spec_path("archived", "worker-old-1").exists());
    assert!(new_logs.exists() && s.spec_path("archived", "worker-new-1").exists());
}

/// Regression: the policy could not make the monitor purge (`purge_archived_after_seconds`
/// was read by nothing).
#[test]
fn the_monitor_purges_on_its_policy_key_in_both_modes() {
    let s = Scene::new();
    s.set_policy("purge_archived_after_seconds", json!(3600));
    let old_logs = plant_archived(&s, "worker-old-1", 7200);
    let new_logs = plant_archived(&s, "worker-new-1", 60);
    let m = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || !old_logs.exists()
            && !s.spec_path("archived", "worker-old-1").exists()),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    assert!(new_logs.exists() && s.spec_path("archived", "worker-new-1").exists());
    drop(m);
    let again = plant_archived(&s, "worker-old-2", 7200);
    s.ok("heartbeat-monitor", &["--once"]);
    assert!(!again.exists() && !s.spec_path("archived", "worker-old-2").exists());
    assert!(new_logs.exists());
}

#[test]
fn the_new_policy_keys_are_range_checked() {
    for (key, bad) in [
        ("purge_archived_after_seconds", json!(1e12)),
        ("purge_archived_after_seconds", json!(-1)),
        ("max_log_bytes", json!(100)),
        ("max_log_bytes", json!(2e12)),
        ("keep_log_files", json!(0)),
        ("keep_log_files", json!(100_000)),
    ] {
        let s = Scene::new();
        s.set_policy(key, bad.clone());
        let out = s.code("heartbeat-monitor", &["--print-config"], 6);
        assert!(stderr(&out).contains(key), "{key}={bad}: {}", stderr(&out));
    }
    let s = Scene::new();
    s.set_policy("max_log_bytes", json!(0));
    let cfg: Value = serde_json::from_str(&s.ok("heartbeat-monitor", &["--print-config"])).unwrap();
    assert_eq!(cfg["max_log_bytes"], 0);
    assert_eq!(cfg["keep_log_files"], 5);
}

/// Regression: `corral adopt` kept a `process` block written by hand, so a file anyone
/// wrote could point the monitor and `stop-worker` at any pid (S2).
#[test]
fn adopt_drops_a_hand_written_process_block() {
    let s = Scene::new();
    let r = Reaper::default();
    let bystander = sleeper(&r);
    let pid = bystander.id() as i32;
    r.keep(bystander);
    let id = "worker-implementation-1763719200";
    let mut v = spec_for(id, pid, json!({"status": "pending"}));
    v["pid"] = json!(pid);
    for k in ["started_at", "token_budget"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v["worker_type"] = json!("implementation-worker");
    let path = s.spec_path("active", id);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let out = s.code("corral", &["adopt", &format!("{id}.json")], 0);
    assert!(
        stderr(&out).contains("dropped process and pid"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), id);
    let spec = read_json(&path);
    assert!(spec.get("process").is_none_or(Value::is_null), "{spec}");
    assert!(spec.get("pid").is_none_or(Value::is_null), "{spec}");
    let ev = wait_event(&s, "worker_spawned", id);
    assert_eq!(ev["data"]["dropped"], json!(["process", "pid"]));
    // Adopting again changes nothing and warns about nothing.
    let again = s.code("corral", &["adopt", id], 0);
    assert!(!stderr(&again).contains("dropped"), "{}", stderr(&again));
    // Nothing can signal the bystander through this spec.
    s.ok("stop-worker", &[id, "--grace", "1"]);
    assert!(alive(pid), "the bystander was signalled");
}
