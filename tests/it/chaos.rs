//! Chaos: random rounds of spawns, SIGKILLs of leaders, of whole groups and of the monitor,
//! restarts, `--once` passes and stops, against a fleet of `task-queue work` workers. After
//! settling, the safety invariants must hold:
//! - no live process has its spec outside `active/` (S1);
//! - no two workers share `restart.original_worker_id` + `restart.attempt` (S3);
//! - no task was processed by two live processes at once (each task run holds a marker
//!   file created with O_EXCL naming its pid; finding a live owner's marker is a violation);
//! - the budget is exact and `corral doctor` finds no inconsistency.
//!
//! About a minute by default; `CORRAL_CHAOS_SECONDS` runs it longer.

use crate::fleet::*;
use crate::support::procs::*;
use crate::support::{wait_until, Scene};
use serde_json::{json, Value};
use std::process::Child;
use std::time::{Duration, Instant};

/// xorshift: enough randomness for choosing rounds, seeded (and printed) per run.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CORRAL_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("chaos seed {seed} (CORRAL_CHAOS_SEED={seed} repeats the choices)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize].clone())
    }
}

/// The task each worker runs: claims its task's marker with O_EXCL (noclobber), notes a
/// violation if a live process holds it, works a little, and lets go.
fn task_script(dir: &std::path::Path) -> String {
    format!(
        r#"cat >/dev/null
m="{d}/run-$CORRAL_TASK_ID"
if ! ( set -C; echo $$ > "$m" ) 2>/dev/null; then
  other=$(cat "$m" 2>/dev/null)
  # A live owner (not an exited one waiting to be reaped) is double processing.
  st=$(cut -d' ' -f3 "/proc/$other/stat" 2>/dev/null)
  if [ -n "$other" ] && [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; then
    echo "$CORRAL_TASK_ID run by $other ($st, worker $(tr '\0' '\n' < /proc/$other/environ | grep '^CORRAL_WORKER_ID=')) and $$ (worker $CORRAL_WORKER_ID)" >> "{d}/violations"
  fi
  echo $$ > "$m"
fi
sleep 0.4
rm -f "$m"
"#,
        d = dir.display()
    )
}

#[derive(Default, Debug)]
struct Tally {
    spawned: u32,
    leaders_killed: u32,
    groups_killed: u32,
    monitors_killed: u32,
    once_passes: u32,
    stops: u32,
    stoppers_killed: u32,
}

/// Active workers with their leader pid and status.
fn active(s: &Scene) -> Vec<(String, i32, String)> {
    s.ids_in("active")
        .into_iter()
        .filter_map(|id| {
            let p = s.spec_path("active", &id);
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
            let pid = v["process"]["pid"].as_i64()? as i32;
            Some((id, pid, v["status"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

#[test]
fn chaos_keeps_the_safety_invariants() {
    let seconds: u64 = std::env::var("CORRAL_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let s = Scene::new();
    let types = s.coord().join("config/worker-types.json");
    let mut t = crate::support::read_json(&types);
    t["types"]["chaos-worker"] = json!({"tokens": 100, "max_retries": 3});
    std::fs::write(&types, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    for (k, v) in [
        ("heartbeat_interval_seconds", json!(0.5)),
        ("warning_seconds", json!(2)),
        ("critical_seconds", json!(3)),
        ("zombie_seconds", json!(4)),
        ("pending_timeout_seconds", json!(5)),
        ("grace_seconds", json!(0.5)),
        ("stuck_task_seconds", json!(30)),
        ("restart.base_seconds", json!(0.2)),
        ("restart.max_seconds", json!(1)),
        ("restart.breaker_consecutive_failures", json!(1000)),
        ("restart.rate_global_per_minute", json!(1000)),
        ("restart.rate_per_type_per_minute", json!(1000)),
    ] {
        s.set_policy(k, v);
    }
    let script = s.dir.path().join("task.sh");
    std::fs::write(&script, task_script(s.dir.path())).unwrap();
    let tq = exe("task-queue");
    let sh = script.display().to_string();
    let worker_cmd: Vec<&str> = vec![
        &tq,
        "work",
        "--class",
        "chaos",
        "--idle-exit",
        "3",
        "--heartbeat-interval",
        "0.5",
        "--",
        "/bin/sh",
        &sh,
    ];
    let r = Reaper::default();
    let _guard = FleetGuard(&s);
    let mut rng = Rng::new();
    let mut tally = Tally::default();
    let mut monitor = Some(Monitor::start(&s, &[]));
    let mut stoppers: Vec<Child> = Vec::new();
    for _ in 0..10 {
        enqueue(&s, "chaos");
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let workers = active(&s);
        match rng.below(100) {
            0..=24 if workers.len() < 8 => {
                let id = spawn_typed(&s, "chaos-worker", &[], &worker_cmd);
                r.group(worker_pid(&s, &id));
                tally.spawned += 1;
            }
            25..=39 => {
                for _ in 0..3 {
                    enqueue(&s, "chaos");
                }
            }
            40..=51 => {
                // Only the leader: its task child runs on, holding the liveness lock.
                if let Some((_, pid, st)) = rng.pick(&workers) {
                    if st != "shutting_down" {
                        signal(pid, libc::SIGKILL);
                        tally.leaders_killed += 1;
                    }
                }
            }
            52..=59 => {
                if let Some((_, pid, _)) = rng.pick(&workers) {
                    signal_group(pid, libc::SIGKILL);
                    tally.groups_killed += 1;
                }
            }
            60..=67 => {
                if let Some(m) = monitor.take() {
                    kill_monitor(&s, m);
                    tally.monitors_killed += 1;
                }
            }
            68..=75 if monitor.is_none() => monitor = Some(Monitor::start(&s, &[])),
            76..=83 if monitor.is_none() => {
                let out = s.run("heartbeat-monitor", &["--once", "-q"]);
                s.expect_code("heartbeat-monitor", &["--once"], &out, 0);
                tally.once_passes += 1;
            }
            84..=91 => {
                if let Some((id, pid, st)) = rng.pick(&workers) {
                    if st != "shutting_down" && alive(pid) {
                        let c = s
                            .cmd("stop-worker")
                            .args([id.as_str(), "--grace", "1"])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .spawn()
                            .expect("stop-worker");
                        r.track(c.id());
                        stoppers.push(c);
                        tally.stops += 1;
                    }
                }
            }
            92..=95 => {
                // A stopper dies mid-grace now and then: the monitor must finish its stop.
                let running = stoppers
                    .iter_mut()
                    .position(|c| matches!(c.try_wait(), Ok(None)));
                if let Some(c) = running.map(|i| &mut stoppers[i]) {
                    let _ = c.kill();
                    tally.stoppers_killed += 1;
                }
            }
            _ => {}
        }
        // Never leave the fleet unwatched for long.
        if monitor.is_none() && rng.below(3) == 0 {
            monitor = Some(Monitor::start(&s, &[]));
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
    }
    eprintln!("chaos: {tally:?}");

    // Settle: no more restarts, stop everyone through a running monitor.
    s.set_policy("restart.enabled", json!(false));
    let mut m = monitor.take().unwrap_or_else(|| Monitor::start(&s, &[]));
    for c in stoppers.iter_mut() {
        let _ = c.wait();
    }
    let _ = s.run("stop-worker", &["--all", "--grace", "1"]);
    assert!(
        wait_until(Duration::from_secs(90), || {
            if !s.ids_in("active").is_empty() {
                let _ = s.run("stop-worker", &["--all", "--grace", "1"]);
            }
            s.ids_in("active").is_empty()
        }),
        "the fleet did not settle: {:?}\n{}",
        active(&s),
        m.stderr()
    );
    assert_eq!(m.terminate().code(), Some(0), "{}", m.stderr());

    // S1: nothing outside active/ still runs (a work loop that just completed its own
    // worker may take a moment to exit).
    let mut running = Vec::new();
    let settled = wait_until(Duration::from_secs(15), || {
        running = held_outside_active(&s);
        running.is_empty()
    });
    assert!(
        settled,
        "processes live on for {running:#?}\n{}",
        story(&s, &running.join(" "))
    );
    // S3: one restart per failure.
    let mut seen = std::collections::BTreeMap::<(String, u64), Vec<String>>::new();
    for dir in ["active", "completed", "zombie", "archived"] {
        for id in s.ids_in(dir) {
            let v = s.spec(dir, &id);
            if let Some(o) = v["restart"]["original_worker_id"].as_str() {
                let a = v["restart"]["attempt"].as_u64().unwrap_or(0);
                seen.entry((o.to_string(), a)).or_default().push(id);
            }
        }
    }
    let forks: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(forks.is_empty(), "restarted twice: {forks:#?}");
    // No task run twice at once.
    let violations = std::fs::read_to_string(s.dir.path().join("violations")).unwrap_or_default();
    assert!(
        violations.is_empty(),
        "double processing:\n{violations}\n{}",
        story(&s, &violations)
    );
    // The books balance, and doctor finds nothing but the staging files SIGKILLed writers
    // leave behind (they hold no state; `doctor --fix` removes them). Kept queue counts a
    // killed worker left off by one are the monitor's to repair, in its next pass after it
    // saw the worker end: a monitor runs again for that.
    budget_exact(&s);
    let mut m = Monitor::start(&s, &[]);
    let mut last = String::new();
    let clean = wait_until(Duration::from_secs(20), || {
        let (ok, text) = doctor_clean(&s);
        last = text;
        ok
    });
    assert!(clean, "doctor: {last}\n{}", m.stderr());
    assert_eq!(m.terminate().code(), Some(0), "{}", m.stderr());
    assert!(
        tally.spawned > 0 && tally.leaders_killed + tally.groups_killed > 0,
        "the chaos did nothing: {tally:?}"
    );
}

/// Whether `corral doctor` finds nothing but leftover staging files, and what it printed.
fn doctor_clean(s: &Scene) -> (bool, String) {
    let out = s.run("corral", &["doctor", "--format", "json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let findings: Vec<Value> = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.as_array()
                .cloned()
                .or_else(|| v["findings"].as_array().cloned())
        })
        .unwrap_or_default();
    let real = findings.iter().any(|f| f["kind"] != "leftover_tmp");
    let ok = !real && matches!(out.status.code(), Some(0) | Some(10));
    (ok, format!("{text}\n{}", crate::support::stderr(&out)))
}

/// Workers outside `active/` whose liveness lock is still held, with who holds it.
fn held_outside_active(s: &Scene) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["completed", "zombie", "archived"] {
        for id in s.ids_in(dir) {
            let lock = s.coord().join(".locks/alive").join(format!("{id}.lock"));
            let held = std::fs::File::open(&lock).is_ok_and(|f| f.try_lock().is_err());
            if held {
                let holders: Vec<String> = corral::process::lock_holders(&lock)
                    .into_iter()
                    .map(|p| {
                        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                        format!("{p} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
                    })
                    .collect();
                let hist = s.spec(dir, &id)["history"].to_string();
                out.push(format!("{dir}/{id} held by {holders:?}; history {hist}"));
            }
        }
    }
    out
}

/// The events that mention the tasks and workers named in `text`, for a failure report.
fn story(s: &Scene, text: &str) -> String {
    let names: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || "=()/;,\"".contains(c))
        .filter(|w| w.starts_with("task-") || w.starts_with("worker-"))
        .collect();
    s.events()
        .iter()
        .filter(|e| {
            let line = e.to_string();
            names.iter().any(|n| line.contains(n))
        })
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e["timestamp"].as_str().unwrap_or(""),
                e["type"].as_str().unwrap_or(""),
                e["worker_id"].as_str().unwrap_or("-"),
                e["task_id"].as_str().unwrap_or("-"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ends every worker still holding its liveness lock when the test ends (restarted
/// workers were launched by the monitor, not by the test, so the Reaper does not know
/// them). The held lock says the pid in the spec is still that worker's leader or group.
struct FleetGuard<'a>(&'a Scene);

impl Drop for FleetGuard<'_> {
    fn drop(&mut self) {
        for dir in ["active", "completed", "zombie", "archived"] {
            for id in self.0.ids_in(dir) {
                let lock = self
                    .0
                    .coord()
                    .join(".locks/alive")
                    .join(format!("{id}.lock"));
                let held = std::fs::File::open(&lock).is_ok_and(|f| f.try_lock().is_err());
                if !held {
                    continue;
                }
                let v = self.0.spec(dir, &id);
                if let Some(pgid) = v["process"]["pgid"]
                    .as_i64()
                    .or(v["process"]["pid"].as_i64())
                {
                    signal_group(pgid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

/// A worker killed between a task's move and its count update leaves the kept count off by
/// one where no zero/non-zero check can see it (kept 3, found 2). The monitor that sees the
/// worker end owes every class a pending recount and pays it in its next pass; before, the
/// drift stood until the hourly recount.
#[test]
fn a_worker_killed_mid_move_owes_a_recount_the_monitor_pays() {
    let s = Scene::new();
    for _ in 0..3 {
        enqueue(&s, "c");
    }
    let mut m = Monitor::start(&s, &[]);
    drift_counts(&s);
    let r = Reaper::default();
    let (id, pid) = spawn_sh(&s, &r, &[], "sleep 60");
    assert!(wait_until(Duration::from_secs(10), || alive(pid)));
    signal_group(pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(20), || !s
            .ids_in("active")
            .contains(&id)),
        "{}",
        m.stderr()
    );
    let mut last = String::new();
    let repaired = wait_until(Duration::from_secs(20), || {
        let (ok, text) = doctor_clean(&s);
        last = text;
        ok
    });
    assert!(repaired, "doctor: {last}\n{}", m.stderr());
    assert_eq!(m.terminate().code(), Some(0), "{}", m.stderr());
}

/// The moves killed workers made without their count updates, and `doctor` says so: a
/// pending task gone (pending kept 3, found 2), and a claimed task finished into
/// `completed/` by hand (completed kept 0, found 1), which a pending recount cannot see.
fn drift_counts(s: &Scene) {
    let pending: Vec<_> = walkdir::WalkDir::new(s.coord().join("tasks/pending"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    assert_eq!(pending.len(), 3, "{pending:?}");
    std::fs::remove_file(&pending[0]).unwrap();
    let claimed: Value =
        serde_json::from_str(&s.ok("task-queue", &["claim", "--worker", "w", "--class", "c"]))
            .unwrap();
    let id = claimed["task_id"].as_str().unwrap();
    let processing = s.coord().join(format!("tasks/processing/{id}.json"));
    let mut t = crate::support::read_json(&processing);
    t["state"] = json!("completed");
    t["completed_at"] = json!(from_now(0));
    let done = s.coord().join(format!("tasks/completed/{id}.json"));
    std::fs::create_dir_all(done.parent().unwrap()).unwrap();
    std::fs::write(&done, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    std::fs::remove_file(&processing).unwrap();
    let (drifted, text) = doctor_clean(s);
    assert!(
        !drifted && text.contains("pending: kept") && text.contains("completed: kept 0, found 1"),
        "{text}"
    );
}

/// The same drift where no daemon watches: cron's `--once` passes find the worker dead and
/// move it. Whoever moves a worker out of `active/` other than completed with exit 0 owes
/// the recount (the daemon's own observation of the move is not needed), so the next pass
/// pays it.
#[test]
fn a_worker_found_dead_by_once_owes_the_recount_too() {
    let s = Scene::new();
    for _ in 0..3 {
        enqueue(&s, "c");
    }
    // A first pass, so that the counts are initialised and nothing else is owed.
    s.ok("heartbeat-monitor", &["--once", "-q"]);
    let r = Reaper::default();
    let (id, pid) = spawn_sh(&s, &r, &[], "sleep 60");
    assert!(wait_until(Duration::from_secs(10), || alive(pid)));
    drift_counts(&s);
    signal_group(pid, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    let mut last = String::new();
    let mut passes = 0;
    let repaired = wait_until(Duration::from_secs(10), || {
        s.ok("heartbeat-monitor", &["--once", "-q"]);
        passes += 1;
        let (ok, text) = doctor_clean(&s);
        last = text;
        ok && !s.ids_in("active").contains(&id)
    });
    assert!(repaired, "after {passes} passes, doctor: {last}");
    assert!(passes <= 2, "took {passes} passes");
}
