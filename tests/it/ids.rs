//! Ids as operators type them, in every binary that takes one: a unique prefix is taken,
//! an ambiguous one exits 5 listing the candidates and acts on nothing, an unknown one exits
//! 3; tables show short ids and `--format json` whole ones. Regression: only `corral` and
//! `worker-monitor` accepted prefixes; `heartbeat`, `stop-worker`, `cleanup-zombies` and
//! `task-queue` wanted the whole 47-character id.

use crate::support::procs::*;
use crate::support::{run_with_timeout, stderr, stdout, Scene};
use serde_json::{json, Value};
use std::time::Duration;

/// The random hex part of a generated id.
fn hex(id: &str) -> &str {
    id.rsplit('-').next().unwrap()
}

/// Two workers of one type (no process): ids `worker-build-<time>-<hex>`.
fn two_workers(s: &Scene) -> (String, String) {
    let out = s.ok("spawn-worker", &["--type", "build-worker", "--count", "2"]);
    let ids: Vec<String> = out.lines().map(String::from).collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert_ne!(hex(&ids[0])[..4], hex(&ids[1])[..4], "a coincidence: rerun");
    (ids[0].clone(), ids[1].clone())
}

fn ambiguous(out: &std::process::Output, a: &str, b: &str) {
    assert_eq!(out.status.code(), Some(5), "{}", stderr(out));
    let e = stderr(out);
    assert!(
        e.contains("ambiguous") && e.contains(a) && e.contains(b),
        "{e}"
    );
}

#[test]
fn heartbeat_takes_a_unique_prefix_but_a_workers_own_id_exactly() {
    let s = Scene::new();
    let (a, b) = two_workers(&s);
    ambiguous(
        &s.run("heartbeat", &["worker-build", "--message", "x"]),
        &a,
        &b,
    );
    ambiguous(&s.run("heartbeat", &["build", "--message", "x"]), &a, &b);
    s.ok("heartbeat", &[&hex(&a)[..8], "--message", "by prefix"]);
    assert_eq!(s.spec("active", &a)["heartbeat"]["message"], "by prefix");
    assert!(s.spec("active", &b)["heartbeat"]["message"] != "by prefix");
    s.code("heartbeat", &["nothing-like-it", "--message", "x"], 3);
    // A launched worker beats with its own id from the environment: never a prefix, so a
    // worker whose spec is gone cannot beat another whose id begins with its own.
    write_spec(&s, &spec_for("worker-a-10", 1, json!({})));
    s.ok("heartbeat", &["worker-a-1", "--message", "typed"]);
    assert_eq!(
        s.spec("active", "worker-a-10")["heartbeat"]["message"],
        "typed"
    );
    let own = run_with_timeout(
        s.cmd("heartbeat")
            .env("CORRAL_WORKER_ID", "worker-a-1")
            .args(["--message", "from the worker"]),
        Duration::from_secs(60),
    );
    assert_eq!(own.status.code(), Some(3), "{}", stderr(&own));
    assert_eq!(
        s.spec("active", "worker-a-10")["heartbeat"]["message"],
        "typed"
    );
}

#[test]
fn stop_worker_takes_a_unique_prefix_and_an_ambiguous_one_stops_nothing() {
    let s = Scene::new();
    let (a, b) = two_workers(&s);
    ambiguous(&s.run("stop-worker", &["build", "--grace", "1"]), &a, &b);
    assert_eq!(s.dirs_of(&a), ["active"]);
    assert_eq!(s.dirs_of(&b), ["active"]);
    let table = s.ok(
        "stop-worker",
        &[&format!("build-{}", &hex(&b)[..6]), "--grace", "1"],
    );
    assert_eq!(s.dirs_of(&b), ["completed"]);
    assert_eq!(s.dirs_of(&a), ["active"]);
    assert!(
        table.contains(&format!("build-{}", &hex(&b)[..8])) && !table.contains(&b),
        "the table shows the short id: {table}"
    );
    let json: Value = serde_json::from_str(&s.ok(
        "stop-worker",
        &[&hex(&a)[..8], "--grace", "1", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(json[0]["worker_id"], a.as_str(), "json has the whole id");
    s.code("stop-worker", &["nothing-like-it", "--grace", "1"], 3);
}

#[test]
fn cleanup_zombies_takes_a_unique_prefix_and_an_ambiguous_one_cleans_nothing() {
    let s = Scene::new();
    let (a, b) = two_workers(&s);
    for id in [&a, &b] {
        s.ok("heartbeat", &[id, "--fail", "--error", "broken"]);
        assert_eq!(s.dirs_of(id), ["zombie"]);
    }
    ambiguous(
        &s.run("cleanup-zombies", &["--worker", "worker-build"]),
        &a,
        &b,
    );
    assert_eq!(s.dirs_of(&a), ["zombie"]);
    assert_eq!(s.dirs_of(&b), ["zombie"]);
    let table = s.ok("cleanup-zombies", &["--worker", &hex(&a)[..8]]);
    assert_eq!(s.dirs_of(&a), ["archived"]);
    assert_eq!(s.dirs_of(&b), ["zombie"]);
    assert!(
        table.contains(&format!("build-{}", &hex(&a)[..8])) && !table.contains(&a),
        "{table}"
    );
    s.code("cleanup-zombies", &["--worker", "nothing-like-it"], 3);
}

#[test]
fn task_queue_takes_unique_prefixes_everywhere_it_takes_a_task() {
    let s = Scene::new();
    let enq = || {
        s.ok("task-queue", &["enqueue", "--class", "c"])
            .trim()
            .to_string()
    };
    let (t1, t2, t3) = (enq(), enq(), enq());
    let p = |t: &str| hex(t)[..8].to_string();
    ambiguous(&s.run("task-queue", &["show", "task"]), &t1, &t2);
    let shown: Value = serde_json::from_str(&s.ok("task-queue", &["show", &p(&t1)])).unwrap();
    assert_eq!(shown["task_id"], t1.as_str());
    // complete
    let claimed: Value =
        serde_json::from_str(&s.ok("task-queue", &["claim", "--worker", "w"])).unwrap();
    assert_eq!(claimed["task_id"], t1.as_str());
    s.ok(
        "task-queue",
        &["complete", &format!("task-{}", p(&t1)), "--worker", "w"],
    );
    // fail, then requeue
    s.ok("task-queue", &["claim", "--worker", "w"]);
    assert_eq!(
        stdout(&s.code(
            "task-queue",
            &["fail", &p(&t2), "--worker", "w", "--no-retry"],
            0
        )),
        "failed"
    );
    assert_eq!(
        stdout(&s.code("task-queue", &["requeue", &p(&t2)], 0)),
        "pending"
    );
    // --after
    let dep = s.ok(
        "task-queue",
        &["enqueue", "--class", "d", "--after", &p(&t2)],
    );
    let dep: Value = serde_json::from_str(&s.ok("task-queue", &["show", dep.trim()])).unwrap();
    assert_eq!(dep["after"], json!([t2]));
    // cancel: an ambiguous prefix cancels nothing
    ambiguous(&s.run("task-queue", &["cancel", "task"]), &t2, &t3);
    let t3_state: Value = serde_json::from_str(&s.ok("task-queue", &["show", &t3])).unwrap();
    assert_eq!(t3_state["state"], "pending");
    s.ok("task-queue", &["cancel", &p(&t3)]);
    // a cancelled task still resolves by prefix
    let gone: Value = serde_json::from_str(&s.ok("task-queue", &["show", &p(&t3)])).unwrap();
    assert_eq!(gone["state"], "cancelled");
    // wait prints whole ids (a script reads them)
    let waited = s.ok("task-queue", &["wait", &p(&t1), "--timeout", "5"]);
    assert_eq!(waited.trim(), format!("{t1} completed"));
    s.code("task-queue", &["show", "nothing-like-it"], 3);
    // list: short ids in the table, whole ones in JSON
    let table = s.ok("task-queue", &["list"]);
    assert!(
        table.contains(&format!("task-{}", p(&t1))) && !table.contains(&t1),
        "{table}"
    );
    let json = s.ok("task-queue", &["list", "--format", "json"]);
    assert!(json.contains(&t1));
}
