//! Restarts by `heartbeat-monitor` (DESIGN.md §6): a crash loop is restarted with growing
//! delays up to the type's `max_retries`, then abandoned, and the type's circuit breaker
//! trips; a pending restart survives a restart of the monitor.

mod common;
mod liveness_support;

use common::{stdout, wait_until, Scene};
use liveness_support::*;
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
    let state = common::read_json(&s.coord().join("metrics/restart-state.json"));
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
    let state = common::read_json(&s.coord().join("metrics/restart-state.json"));
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
