//! The queue's layout and the scale rule (DESIGN §8): the bucketed pending tree shows the
//! claim order to `find | sort`, homes in the flat layout keep working, and what a claim,
//! a stats call or a drain reads stays bounded however many tasks wait (counted in
//! directory entries read, so the test is exact and independent of the machine's speed).

use crate::support::queue::{enqueue, home_of};
use crate::support::{read_json, Scene};
use corral::home::Home;
use corral::policy::HeartbeatPolicy;
use corral::queue::{self, Claimer};
use serde_json::{json, Value};

fn bulk(h: &Home, class: &str, n: usize) -> Vec<String> {
    let opts = queue::BulkOptions {
        class: class.into(),
        priority: corral::spec::Priority::Medium,
        max_attempts: None,
        not_before: None,
        timeout_seconds: None,
    };
    let mut ids = Vec::new();
    queue::enqueue_bulk(h, "{}\n".repeat(n).as_bytes(), &opts, |t| {
        ids.push(t.task_id.clone());
        Ok(())
    })
    .unwrap();
    ids
}

/// `find tasks/pending -name '*.json' -printf '%f\n' | sort`, as the README gives it.
fn find_sort(s: &Scene) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("find tasks/pending -name '*.json' -printf '%f\\n' | LC_ALL=C sort")
        .current_dir(s.coord())
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|n| queue::parse_pending_name(n).map(|p| p.task_id.to_string()))
        .collect()
}

#[test]
fn find_sort_shows_the_claim_order_across_buckets_and_classes() {
    let s = Scene::new();
    let mut ids = Vec::new();
    for (class, prio) in [
        ("x", "low"),
        ("y", "high"),
        ("x", "critical"),
        ("y", "medium"),
        ("x", "high"),
    ] {
        ids.push(enqueue(&s, &["--class", class, "--priority", prio]));
        // Different 10 ms windows: different buckets.
        std::thread::sleep(std::time::Duration::from_millis(12));
    }
    let shown = find_sort(&s);
    let claimed: Vec<String> = (0..ids.len())
        .map(|_| {
            let v: Value =
                serde_json::from_str(&s.ok("task-queue", &["claim", "--worker", "w"])).unwrap();
            v["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(shown, claimed);
    assert_eq!(
        claimed,
        vec![
            ids[2].clone(),
            ids[1].clone(),
            ids[4].clone(),
            ids[3].clone(),
            ids[0].clone()
        ]
    );
}

#[test]
fn a_home_in_the_flat_layout_keeps_working() {
    let s = Scene::new();
    // Files as the flat layout wrote them: pending/<class>/<prio>-<ns:020>-<id>.json.
    let dir = s.coord().join("tasks/pending/old");
    std::fs::create_dir_all(&dir).unwrap();
    let now_ns = corral::time::now().timestamp_nanos_opt().unwrap() as u64;
    for (i, (prio, rank)) in [("high", 1), ("low", 3), ("high", 1)].iter().enumerate() {
        let id = format!("flat-{i}");
        let ns = now_ns - 10_000_000_000 + i as u64;
        let v = json!({"schema_version": 1, "task_id": id, "class": "old", "priority": prio,
            "payload": {"i": i}, "state": "pending", "attempts": 0, "max_attempts": 3,
            "enqueued_at": corral::time::format(&corral::time::now()), "enqueued_ns": ns,
            "history": []});
        std::fs::write(
            dir.join(format!("{rank}-{ns:020}-{id}.json")),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
    }
    // A new task goes into a bucket, and sorts among the flat ones by name.
    let new_high = enqueue(&s, &["--class", "old", "--priority", "high"]);
    let st: Value =
        serde_json::from_str(&s.ok("task-queue", &["stats", "--format", "json"])).unwrap();
    assert_eq!(st["counts"]["pending"]["old"], 4, "{st}");
    let listed = s.ok(
        "task-queue",
        &["list", "--state", "pending", "--format", "jsonl"],
    );
    let listed: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        listed,
        vec!["flat-0", "flat-2", new_high.as_str(), "flat-1"]
    );
    let claimed: Vec<String> = (0..4)
        .map(|_| {
            let v: Value = serde_json::from_str(
                &s.ok("task-queue", &["claim", "--worker", "w", "--class", "old"]),
            )
            .unwrap();
            v["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(claimed, listed);
    let done = read_json(&s.coord().join("tasks/processing/flat-1.json"));
    assert_eq!(done["payload"]["i"], 1);
}

#[test]
fn list_streams_in_claim_order_with_a_limit() {
    let s = Scene::new();
    let h = home_of(&s);
    let ids = bulk(&h, "l", 50);
    let out = s.ok(
        "task-queue",
        &[
            "list", "--state", "pending", "--limit", "3", "--format", "jsonl",
        ],
    );
    let got: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, ids[..3].to_vec());
    let arr: Value =
        serde_json::from_str(&s.ok("task-queue", &["list", "--limit", "2", "--format", "json"]))
            .unwrap();
    assert_eq!(arr.as_array().unwrap().len(), 2);
    let table = s.ok("task-queue", &["list", "--state", "pending"]);
    assert_eq!(table.lines().count(), 51, "a header and 50 rows");
    // A refused class is exit 6 with nothing on stdout: no header, no empty array.
    for format in ["table", "json"] {
        let out = s.code(
            "task-queue",
            &["list", "--class", "no/such", "--format", format],
            6,
        );
        assert!(out.stdout.is_empty(), "{format}: {:?}", out.stdout);
    }
}

/// What a claim reads does not grow with the queue: a one-shot claim reads four short
/// directories, and a watching claimer draining the queue reads each name about once (the
/// flat layout read every name for every claim: N² for a drain).
#[test]
fn claims_and_stats_read_a_bounded_number_of_names() {
    let s = Scene::new();
    let h = home_of(&s);
    const N: usize = 5_000;
    bulk(&h, "big", N);
    let one_shot = || {
        let before = queue::layout::names_read();
        let mut c = Claimer::new(&h, "probe", &["big".to_string()], 60.0).unwrap();
        assert!(c.try_claim().unwrap().is_some());
        queue::layout::names_read() - before
    };
    let read = one_shot();
    // Class directory, first-level bucket (≤ 1000 seconds), second (≤ 100 leaves), the leaf.
    assert!(
        read <= 2 * 1000 + 200,
        "a one-shot claim read {read} names of {N} tasks"
    );
    let before = queue::layout::names_read();
    let st = queue::stats(&h, &HeartbeatPolicy::default(), corral::time::now(), false).unwrap();
    let stats_read = queue::layout::names_read() - before;
    assert_eq!(st.totals["pending"], (N - 1) as u64);
    assert!(stats_read <= 4 * 2200, "stats read {stats_read} names");
    // A watching claimer drains the rest reading about one name per task.
    let before = queue::layout::names_read();
    let mut c = Claimer::new(&h, "drain", &["big".to_string()], 60.0).unwrap();
    c.watch().unwrap();
    let mut n = 0;
    while c.try_claim().unwrap().is_some() {
        n += 1;
    }
    let drained = queue::layout::names_read() - before;
    assert_eq!(n, N - 1);
    assert!(
        drained < 2 * N as u64,
        "draining {N} tasks read {drained} names"
    );
}
