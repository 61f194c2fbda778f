//! A worker is all of its processes (DESIGN §6 S1, S4): a leader that exits while its
//! children work on is not a dead worker; the monitor stops the group before it records
//! the failure, requeues the task or restarts it. A held worker lock delays that one worker,
//! never the fleet. CPU is sampled over the whole group.

use crate::fleet::*;
use crate::support::procs::*;
use crate::support::{have_tool, wait_until, Scene};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn a_leader_that_exits_while_its_child_runs_is_failed_only_after_the_group_is_stopped() {
    let s = Scene::new();
    s.set_policy("restart.base_seconds", json!(0.2));
    let m = Monitor::start(&s, &["--grace-seconds", "2"]);
    let r = Reaper::default();
    let mark = s.dir.path().join("second-run");
    // The first run leaves a working child behind and exits 3; its restart just works.
    let script = format!(
        "if [ -e {m} ]; then exec sleep 120; else touch {m}; sleep 120 & exit 3; fi",
        m = mark.display()
    );
    let (id, pid) = spawn_sh(&s, &r, &["--task-id", "task-s1"], &script);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    // Whenever the failure is recorded, nothing of the group may still run.
    let left = group_members(pid);
    assert!(left.is_empty(), "failed while {left:?} still ran");
    let spec = s.spec("zombie", &id);
    assert_eq!(spec["status"], "failed");
    let reason = spec["exit"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("leader"), "{spec:#}");
    let stopping = wait_event(&s, "worker_stopping", &id);
    assert_eq!(stopping["data"]["verdict"], "leader_exited", "{stopping}");
    let failed = wait_event(&s, "worker_failed", &id);
    assert!(
        stopping["timestamp"].as_str() <= failed["timestamp"].as_str(),
        "the group is stopped first"
    );
    // And only then is it restarted.
    assert!(
        wait_until(T, || !s.events_of("worker_restarted").is_empty()),
        "{}",
        m.stderr()
    );
    let new = s.events_of("worker_restarted")[0]["data"]["new_worker_id"]
        .as_str()
        .unwrap()
        .to_string();
    r.group(worker_pid(&s, &new));
    assert_eq!(s.spec(&s.dirs_of(&new)[0], &new)["task_id"], "task-s1");
}

#[test]
fn sigkill_of_only_the_leader_requeues_the_task_only_after_its_working_child_is_stopped() {
    let s = Scene::new();
    s.set_policy("restart.enabled", json!(false));
    let m = Monitor::start(&s, &["--grace-seconds", "2"]);
    let r = Reaper::default();
    let task = enqueue(&s, "s1");
    let script = format!(
        "{tq} claim --worker \"$CORRAL_WORKER_ID\" --class s1 >/dev/null && sleep 120 & wait",
        tq = exe("task-queue")
    );
    let (id, pid) = spawn_sh(&s, &r, &[], &script);
    assert!(wait_until(T, || tasks_in(&s, "processing") == [task.clone()]));
    let sleeper = member_named(pid, "sleep");
    assert!(wait_until(T, || m.watches(pid)), "{}", m.stderr());
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || tasks_in(&s, "pending") == [task.clone()]),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    let left = group_members(pid);
    assert!(
        left.is_empty() && !alive(sleeper),
        "task requeued while {left:?} still worked on it"
    );
    assert_eq!(s.dirs_of(&id), ["zombie"]);
    let ev = wait_event(&s, "worker_stopping", &id);
    assert_eq!(ev["data"]["verdict"], "leader_exited");
}

#[test]
fn no_false_failure_when_four_spawners_race_the_daemon() {
    let s = Scene::new();
    s.set_policy("pending_timeout_seconds", json!(3600));
    s.set_policy("zombie_seconds", json!(3600));
    s.set_policy("restart.enabled", json!(false));
    let m = Monitor::start(&s, &[]);
    let r = Reaper::default();
    let ids: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    (0..150)
                        .map(|_| spawn(&s, &[], &["sleep", "120"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        r.group(worker_pid(&s, id));
    }
    assert_eq!(ids.len(), 600);
    // Give the monitor time to look at every one of them.
    std::thread::sleep(Duration::from_secs(2));
    let zombies = s.ids_in("zombie");
    assert!(
        zombies.is_empty(),
        "{} healthy workers declared gone: {:?}\n{}",
        zombies.len(),
        zombies
            .iter()
            .map(|z| s.spec("zombie", z)["exit"]["reason"].clone())
            .collect::<Vec<_>>(),
        m.stderr()
    );
}

#[test]
fn a_held_worker_lock_delays_that_worker_and_not_the_fleet() {
    let s = Scene::new();
    if !have_tool(
        std::process::Command::new("flock")
            .arg("-V")
            .output()
            .is_ok(),
        "flock(1)",
    ) {
        return;
    }
    s.set_policy("restart.enabled", json!(false));
    let mut m = Monitor::start(&s, &[]);
    let r = Reaper::default();
    let (a, apid) = spawn_sh(&s, &r, &[], "exec sleep 300");
    let (b, bpid) = spawn_sh(&s, &r, &[], "exec sleep 300");
    assert!(wait_until(T, || m.watches(apid) && m.watches(bpid)));
    let lock = s.coord().join(".locks/workers").join(format!("{a}.lock"));
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .args(["sleep", "20"])
        .spawn()
        .expect("flock");
    r.track(holder.id());
    // Probing takes the lock when it is free: let go at once, or flock would wait on us.
    let held = || {
        let f = std::fs::File::open(&lock).expect("lock file");
        let taken = f.try_lock().is_ok();
        drop(f);
        !taken
    };
    assert!(wait_until(T, held), "flock never took the lock");
    // A dies while someone holds its lock; then B dies.
    signal_group(apid, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    signal_group(bpid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || s.dirs_of(&b) == ["zombie"]),
        "the held lock of {a} blinded the monitor to {b}'s death\n{}",
        m.stderr()
    );
    eprintln!(
        "B detected after {:?} while A's lock was held",
        t0.elapsed()
    );
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the lock was held throughout"
    );
    assert_eq!(s.dirs_of(&a), ["active"], "A waits for its lock");
    signal(holder.id() as i32, libc::SIGKILL);
    holder.wait().unwrap();
    assert!(
        wait_until(T, || s.dirs_of(&a) == ["zombie"]),
        "A judged once the lock is released\n{}",
        m.stderr()
    );
    m.assert_running();
}

#[test]
fn cpu_is_sampled_over_the_whole_process_group() {
    let s = Scene::new();
    let r = Reaper::default();
    // The leader only waits (0 %); its child burns a core (5 % is enough to tell, even on a
    // loaded machine).
    let (id, _) = spawn_sh(&s, &r, &[], "sh -c 'while :; do :; done' & wait");
    let m = Monitor::start(&s, &["--sample-interval", "0.3"]);
    assert!(
        wait_until(T, || s.spec("active", &id)["resources"]["cpu_percent"]
            .as_f64()
            .is_some_and(|c| c >= 5.0)),
        "{:#}\n{}",
        s.spec("active", &id),
        m.stderr()
    );
}

#[test]
fn a_worker_launched_from_the_cli_is_not_an_orphan() {
    let s = Scene::new();
    let r = Reaper::default();
    let (id, _) = spawn_sh(&s, &r, &[], "exec sleep 300");
    let m = Monitor::start(&s, &["--check-orphans", "--sample-interval", "0.2"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.dirs_of(&id), ["active"], "{}", m.stderr());
    assert!(events_for(&s, "worker_stopping", &id).is_empty());
}
