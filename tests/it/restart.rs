//! Restarts by `heartbeat-monitor` (DESIGN.md §6): a crash loop is restarted with growing
//! delays up to the type's `max_retries`, then abandoned, and the type's circuit breaker
//! trips; a pending restart survives a restart of the monitor; a failure is restarted
//! once however often the monitor is killed (S3); archived workers never come back; the
//! breaker counts only restartable failures; restarted workers are reaped.

use crate::support::procs::*;
use crate::support::{stdout, wait_until, Scene};

use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn crash_scene() -> Scene {
    let s = Scene::new();
    s.set_policy("restart.base_seconds", json!(0.3));
    s.set_policy("restart.max_seconds", json!(5));
    s.set_policy("restart.breaker_consecutive_failures", json!(4));
    s.set_policy("restart.rate_global_per_minute", json!(100));
    s.set_policy("restart.rate_per_type_per_minute", json!(100));
    s
}

fn spawn_crasher(s: &Scene) -> String {
    stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--task-id",
            "task-7",
            "--priority",
            "high",
            "--master",
            "m1",
            "--repo",
            "o/r",
            "--",
            "/bin/sh",
            "-c",
            "sleep 0.1; exit 3",
        ],
        0,
    ))
}

#[test]
fn a_crash_loop_is_restarted_with_backoff_then_abandoned_and_the_breaker_trips() {
    let s = crash_scene();
    let m = Monitor::start(&s, &[]);
    let first = spawn_crasher(&s);
    assert!(
        wait_until(T, || !s.events_of("worker_restart_abandoned").is_empty()),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    // build-worker's max_retries (worker-types.json) is 3.
    let h = history(&s);
    let ok: Vec<&serde_json::Value> = h.iter().filter(|l| l["result"] == "success").collect();
    assert_eq!(ok.len(), 3, "{h:#?}");
    for (i, l) in ok.iter().enumerate() {
        assert_eq!(l["attempt"], i as u64 + 1);
        assert_eq!(l["original_worker_id"], first.as_str());
        assert!(l["new_worker_id"].is_string() && l["timestamp"].is_string());
    }
    let ab: Vec<&serde_json::Value> = h.iter().filter(|l| l["result"] == "abandoned").collect();
    assert_eq!(ab.len(), 1);
    assert_eq!(ab[0]["attempt"], 4);
    // Growing delays, as scheduled and as done.
    let delays: Vec<f64> = s
        .events_of("worker_restart_scheduled")
        .iter()
        .map(|e| e["data"]["delay_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(delays.len(), 3, "{delays:?}");
    assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
    assert!(
        (delays[0] - 0.3).abs() < 0.05 && (delays[2] - 1.2).abs() < 0.05,
        "{delays:?}"
    );
    // Each restarted worker keeps the lineage, the task and the command.
    for l in &ok {
        let id = l["new_worker_id"].as_str().unwrap();
        let dir = s.dirs_of(id);
        let spec = s.spec(&dir[0], id);
        assert_eq!(spec["restart"]["attempt"], l["attempt"]);
        assert_eq!(spec["restart"]["original_worker_id"], first.as_str());
        assert_eq!(spec["task_id"], "task-7");
        assert_eq!(spec["priority"], "high");
        assert_eq!(spec["master"], "m1");
        assert_eq!(spec["repo"], "o/r");
        assert_eq!(spec["process"]["command"][0], "/bin/sh");
    }
    // The restarted workers are the monitor's children: their exit code is known.
    let last = ok[2]["new_worker_id"].as_str().unwrap();
    assert!(wait_until(T, || s.dirs_of(last) == ["zombie"]));
    assert_eq!(
        s.spec("zombie", last)["exit"]["code"],
        3,
        "{:#}",
        s.spec("zombie", last)
    );
    let tripped = s.events_of("circuit_breaker_tripped");
    assert_eq!(tripped.len(), 1);
    assert_eq!(tripped[0]["data"]["worker_type"], "build-worker");
    let state = crate::support::read_json(&s.coord().join("metrics/restart-state.json"));
    assert!(
        state["breakers"]["build-worker"]["open_since"].is_string(),
        "{state:#}"
    );
    assert!(state["pending"].as_object().unwrap().is_empty());
}

#[test]
fn a_pending_restart_survives_a_monitor_restart_and_runs_once() {
    let s = crash_scene();
    s.set_policy("restart.base_seconds", json!(2));
    let mut m = Monitor::start(&s, &[]);
    let first = spawn_crasher(&s);
    assert!(wait_until(T, || !s
        .events_of("worker_restart_scheduled")
        .is_empty()));
    assert_eq!(m.terminate().code(), Some(0));
    let state = crate::support::read_json(&s.coord().join("metrics/restart-state.json"));
    let pending = &state["pending"][&first];
    assert_eq!(pending["attempt"], 1, "{state:#}");
    assert!(history(&s).is_empty(), "not restarted yet");
    let m2 = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || !s.events_of("worker_restarted").is_empty()),
        "{}",
        m2.stderr()
    );
    let ok: Vec<serde_json::Value> = history(&s)
        .into_iter()
        .filter(|l| l["result"] == "success" && l["attempt"] == 1)
        .collect();
    assert_eq!(ok.len(), 1, "exactly one first restart");
    let due = chrono::DateTime::parse_from_rfc3339(pending["due"].as_str().unwrap()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(ok[0]["timestamp"].as_str().unwrap()).unwrap();
    assert!(at >= due, "restarted at {at}, due {due}");
}

/// A tiny deterministic-per-run random source (no crate needed for test jitter).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        eprintln!("jitter seed {seed}");
        Jitter(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every (original_worker_id, attempt) of restarted workers, with how many workers carry it.
fn lineage_counts(s: &Scene) -> std::collections::BTreeMap<(String, u64), Vec<String>> {
    let mut m: std::collections::BTreeMap<(String, u64), Vec<String>> = Default::default();
    for dir in ["active", "completed", "zombie", "archived"] {
        for id in s.ids_in(dir) {
            let v = s.spec(dir, &id);
            if let Some(orig) = v["restart"]["original_worker_id"].as_str() {
                let attempt = v["restart"]["attempt"].as_u64().unwrap_or(0);
                m.entry((orig.to_string(), attempt)).or_default().push(id);
            }
        }
    }
    m
}

#[test]
fn killing_the_monitor_around_restarts_never_restarts_a_failure_twice() {
    let s = crash_scene();
    // A type that keeps failing for a long time, restarted as fast as the policy allows.
    let types = s.coord().join("config/worker-types.json");
    let mut t = crate::support::read_json(&types);
    t["types"]["crash-worker"] = json!({"tokens": 0, "max_retries": 100000});
    std::fs::write(&types, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    s.set_policy("restart.base_seconds", json!(0.02));
    s.set_policy("restart.max_seconds", json!(0.05));
    s.set_policy("restart.breaker_consecutive_failures", json!(1_000_000));
    s.set_policy("restart.rate_global_per_minute", json!(1_000_000));
    s.set_policy("restart.rate_per_type_per_minute", json!(1_000_000));
    for _ in 0..8 {
        s.ok(
            "spawn-worker",
            &["--type", "crash-worker", "--", "/bin/sh", "-c", "exit 3"],
        );
    }
    let seconds: u64 = std::env::var("CORRAL_RESTART_KILL_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut rng = Jitter::new();
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut kills = 0;
    while std::time::Instant::now() < end {
        let m = Monitor::start(&s, &[]);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        crate::fleet::kill_monitor(&s, m);
        kills += 1;
    }
    // Let a last monitor settle what the killed ones left, then stop it cleanly.
    let mut m = Monitor::start(&s, &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.terminate().code(), Some(0), "{}", m.stderr());
    let restarts = history(&s)
        .iter()
        .filter(|l| l["result"] == "success")
        .count();
    eprintln!("{kills} monitor kills, {restarts} restarts");
    assert!(
        kills >= 10 && restarts >= 10,
        "{kills} kills, {restarts} restarts"
    );
    let forks: Vec<_> = lineage_counts(&s)
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(
        forks.is_empty(),
        "{} failures restarted twice: {forks:#?}",
        forks.len()
    );
}

#[test]
fn a_pending_restart_of_an_archived_worker_is_cancelled() {
    let s = crash_scene();
    s.set_policy("restart.base_seconds", json!(3));
    let m = Monitor::start(&s, &[]);
    let first = spawn_crasher(&s);
    assert!(wait_until(T, || !events_for(
        &s,
        "worker_restart_scheduled",
        &first
    )
    .is_empty()));
    s.ok("cleanup-zombies", &["--worker", &first]);
    assert_eq!(s.dirs_of(&first), ["archived"]);
    assert!(
        wait_until(T, || history(&s).iter().any(|l| l["result"] == "abandoned"
            && l["reason"].as_str().unwrap_or("").contains("cancelled"))),
        "{:#?}\n{}",
        history(&s),
        m.stderr()
    );
    // Past its due time, it still does not come back.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(s.events_of("worker_restarted").is_empty(), "{}", m.stderr());
    assert!(history(&s).iter().all(|l| l["result"] != "success"));
    let state = crate::support::read_json(&s.coord().join("metrics/restart-state.json"));
    assert!(
        state["pending"].as_object().unwrap().is_empty(),
        "{state:#}"
    );
}

#[test]
fn the_breaker_counts_only_failures_that_could_have_been_restarted() {
    let s = crash_scene();
    s.set_policy("restart.breaker_consecutive_failures", json!(3));
    s.set_policy("pending_timeout_seconds", json!(1));
    // Workers without a command can never be restarted.
    let ids: Vec<String> = (0..4)
        .map(|_| stdout(&s.code("spawn-worker", &["--type", "build-worker"], 0)))
        .collect();
    let m = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || ids.iter().all(|id| s.dirs_of(id) == ["zombie"])),
        "{}",
        m.stderr()
    );
    for id in &ids {
        wait_event(&s, "worker_failed", id);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.events_of("circuit_breaker_tripped").is_empty(),
        "{:#?}",
        s.events_of("circuit_breaker_tripped")
    );
}

#[test]
fn restarted_workers_are_reaped_and_start_with_a_clean_signal_mask() {
    let s = crash_scene();
    let r = Reaper::default();
    let m = Monitor::start(&s, &[]);
    let mark = s.dir.path().join("ran-once");
    let mask = s.dir.path().join("mask");
    // First run fails; the restart records its signal mask and completes itself.
    let script = format!(
        "if [ -e {mark} ]; then grep -E '^Sig(Blk|Ign)' /proc/self/status > {mask}; {hb} --complete; exit 0; else touch {mark}; exit 3; fi",
        mark = mark.display(),
        mask = mask.display(),
        hb = crate::support::bin("heartbeat").display()
    );
    let first = stdout(&s.code(
        "spawn-worker",
        &["--type", "build-worker", "--", "/bin/sh", "-c", &script],
        0,
    ));
    r.group(worker_pid(&s, &first));
    assert!(
        wait_until(T, || !s.events_of("worker_restarted").is_empty()),
        "no restart of {first} ({:?}): {}\nevents: {:#?}",
        s.dirs_of(&first),
        m.stderr(),
        s.events()
    );
    let new = s.events_of("worker_restarted")[0]["data"]["new_worker_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        wait_until(T, || s.dirs_of(&new) == ["completed"]),
        "{}",
        m.stderr()
    );
    let pid = s.spec("completed", &new)["process"]["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(
        wait_until(T, || !crate::fleet::defunct_children(m.pid())
            .contains(&pid)),
        "the restarted worker {pid} was never reaped: {:?}",
        crate::fleet::defunct_children(m.pid())
    );
    let text = std::fs::read_to_string(&mask).unwrap();
    assert!(text.contains("SigBlk:\t0000000000000000"), "{text}");
}
