//! The loop against real commands in a temporary home.

use super::fence::{leftovers, same_process};
use super::*;
use crate::home::TaskState;
use crate::queue::{enqueue, find, EnqueueRequest};
use serde_json::json;

fn opts(cmd: &[&str]) -> WorkOptions {
    WorkOptions {
        worker: "w-test".into(),
        classes: vec!["t".into()],
        command: cmd.iter().map(|s| s.to_string()).collect(),
        max_tasks: None,
        idle_exit: Some(0.3),
        lease: 60.0,
        heartbeat_interval: 5.0,
        task_timeout: None,
        kill_grace: 0.5,
        poll_interval: None,
    }
}

#[test]
fn runs_completes_fails_and_times_out() {
    let (_d, h) = crate::home::test_home();
    let ok = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
    let mut slow = EnqueueRequest::new("t");
    slow.timeout_seconds = Some(0.3);
    slow.max_attempts = Some(1);
    slow.payload = json!("slow");
    let slow = enqueue(&h, &slow).unwrap();
    let script = r#"t=$(cat); case "$t" in *slow*) exec sleep 30;; esac; echo '{"ok": true}'"#;
    let w = Work::new(&h, opts(&["sh", "-c", script]), NoSpec).unwrap();
    let s = w.run().unwrap();
    assert_eq!(
        (s.tasks, s.completed, s.failed, s.timed_out),
        (2, 1, 1, 1),
        "{s:?}"
    );
    let done = find(&h, &ok.task_id).unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.task.result.unwrap()["ok"], true);
    let f = find(&h, &slow.task_id).unwrap();
    assert_eq!(f.state, TaskState::Failed);
    assert!(f.task.error.unwrap().contains("timed out"));
}

/// Runs `then` in a thread a moment after task `id` is in `processing/` (its command runs).
fn once_processing(h: &Home, id: &str, then: impl FnOnce(&Home, &str) + Send + 'static) {
    let (h, id) = (h.clone(), id.to_string());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if find(&h, &id).is_ok_and(|f| f.state == TaskState::Processing) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        then(&h, &id);
    });
}

#[test]
fn a_stop_requeues_the_running_task() {
    let (_d, h) = crate::home::test_home();
    let t = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
    let mut o = opts(&["sh", "-c", "cat >/dev/null; exec sleep 30"]);
    o.idle_exit = None;
    let w = Work::new(&h, o, NoSpec).unwrap();
    let stop = w.stopper();
    once_processing(&h, &t.task_id, move |_, _| stop.stop());
    let s = w.run().unwrap();
    assert!(s.stopped);
    assert_eq!(s.requeued, 1, "{s:?}");
    assert_eq!(find(&h, &t.task_id).unwrap().state, TaskState::Pending);
}
#[test]
fn a_task_taken_from_the_loop_stops_its_command_and_records_nothing() {
    let (_d, h) = crate::home::test_home();
    let t = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
    let mut o = opts(&["sh", "-c", "cat >/dev/null; exec sleep 30"]);
    o.idle_exit = Some(0.5);
    o.max_tasks = Some(1);
    let w = Work::new(&h, o, NoSpec).unwrap();
    once_processing(&h, &t.task_id, |h2, id| {
        // Completed by hand (the loop cannot claim it back, as it could a requeued one).
        let op = Caller {
            worker: Some("operator".into()),
            force: true,
        };
        transitions::complete(h2, id, &op, Some(json!("by hand"))).unwrap();
    });
    let t0 = Instant::now();
    let s = w.run().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20), "the command ran on");
    assert_eq!(
        (s.lost, s.tasks, s.completed, s.failed),
        (1, 0, 0, 0),
        "{s:?}"
    );
    let f = find(&h, &t.task_id).unwrap();
    assert_eq!(f.state, TaskState::Completed);
    assert_eq!(f.task.result, Some(json!("by hand")));
}

#[test]
fn leftovers_finds_the_processes_carrying_the_task_id() {
    let mut c = std::process::Command::new("sleep");
    c.arg("30").env("CORRAL_TASK_ID", "task-leftover-test-1");
    let mut child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let found = leftovers("task-leftover-test-1");
    assert_eq!(found.iter().map(|p| p.0).collect::<Vec<_>>(), vec![pid]);
    assert!(leftovers("task-leftover-test-2").is_empty());
    let _ = child.kill();
    let _ = child.wait();
    assert!(!same_process(pid, found[0].1));
}
