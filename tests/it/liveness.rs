//! `heartbeat-monitor` against real processes, real signals and real inotify: each liveness
//! signal of DESIGN.md §6, health and resources, bad input, the singleton, adoption, hosts.

use crate::support::procs::*;
use crate::support::{stdout, wait_until, write_script, Scene};
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn spawn_cmd(s: &Scene, extra: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["--type", "build-worker"];
    args.extend_from_slice(extra);
    if !cmd.is_empty() {
        args.push("--");
        args.extend_from_slice(cmd);
    }
    stdout(&s.code("spawn-worker", &args, 0))
}

#[test]
fn sigkill_of_a_worker_is_a_failure_within_milliseconds() {
    let s = Scene::new();
    let m = Monitor::start(&s, &[]);
    let r = Reaper::default();
    let id = spawn_cmd(&s, &["--task-id", "task-9"], &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.add(pid);
    assert!(
        wait_until(T, || m.watches(pid)),
        "no pidfd for {pid}\n{}",
        m.stderr()
    );
    let t0 = Instant::now();
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        s.tree()
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "detection took {took:?}");
    let spec = s.spec("zombie", &id);
    assert_eq!(spec["status"], "failed");
    let reason = spec["exit"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("process exited"), "{spec:#}");
    assert!(spec["exit"]["at"].is_string());
    let failed = wait_event(&s, "worker_failed", &id);
    assert_eq!(failed["task_id"], "task-9");
    assert_eq!(events_for(&s, "worker_failed", &id).len(), 1);
    // Launched by corral with a command: a restart is scheduled (base backoff 30 s).
    assert!(wait_until(T, || !events_for(
        &s,
        "worker_restart_scheduled",
        &id
    )
    .is_empty()));
}

#[test]
fn the_liveness_lock_is_signal_zero() {
    let s = Scene::new();
    let lock_path = s.coord().join(".locks/alive/w-locked.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    // No process recorded: only the lock tells whether the worker lives.
    write_spec(
        &s,
        &json!({"worker_id": "w-locked", "worker_type": "build-worker", "status": "running",
                "heartbeat": {"last_seen": ago(0)}, "created_at": ago(0)}),
    );
    let mut m = Monitor::start(&s, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.dirs_of("w-locked"), ["active"], "held lock = alive");
    drop(lock);
    let t0 = Instant::now();
    assert!(
        wait_until(T, || s.dirs_of("w-locked") == ["zombie"]),
        "{}",
        m.stderr()
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "polled every second");
    let spec = s.spec("zombie", "w-locked");
    assert!(
        spec["exit"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("liveness lock"),
        "{spec:#}"
    );
    m.assert_running();
}

#[test]
fn heartbeat_age_warns_goes_critical_resumes_and_zombifies_on_time() {
    let s = Scene::new();
    s.set_policy("heartbeat_interval_seconds", json!(0.5));
    s.set_policy("warning_seconds", json!(1));
    s.set_policy("critical_seconds", json!(2));
    s.set_policy("zombie_seconds", json!(3.5));
    let id = spawn_cmd(&s, &[], &[]);
    s.ok("heartbeat", &[&id]);
    let _m = Monitor::start(&s, &[]);
    assert!(wait_until(T, || !events_for(&s, "heartbeat_warning", &id).is_empty()));
    let spec = s.spec("active", &id);
    assert_eq!(spec["heartbeat"]["alert"], "warning", "{spec:#}");
    s.ok("heartbeat", &[&id]);
    assert_eq!(events_for(&s, "heartbeat_resumed", &id).len(), 1);
    let beat_at = Instant::now();
    assert!(s.spec("active", &id)["heartbeat"].get("alert").is_none());
    assert!(wait_until(T, || events_for(&s, "heartbeat_warning", &id)
        .len()
        == 2));
    assert!(wait_until(T, || !events_for(&s, "heartbeat_critical", &id).is_empty()));
    let spec = s.spec("active", &id);
    assert_eq!(spec["heartbeat"]["health"], "unresponsive", "{spec:#}");
    assert!(
        spec["heartbeat"]["health_score"].as_u64().unwrap() < 100,
        "{spec:#}"
    );
    assert!(wait_until(T, || s.dirs_of(&id) == ["zombie"]));
    let late = beat_at.elapsed().as_secs_f64();
    assert!(
        (3.4..5.0).contains(&late),
        "zombie after {late} s, threshold 3.5 s"
    );
    assert_eq!(s.spec("zombie", &id)["status"], "zombie");
    let z = wait_event(&s, "zombie_detected", &id);
    assert!(z["data"]["age_seconds"].as_f64().unwrap() >= 3.5);
    assert_eq!(events_for(&s, "zombie_detected", &id).len(), 1);
}

#[test]
fn a_pending_worker_never_confirmed_alive_fails() {
    let s = Scene::new();
    s.set_policy("pending_timeout_seconds", json!(1));
    let id = spawn_cmd(&s, &[], &[]);
    let _m = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        s.tree()
    );
    let spec = s.spec("zombie", &id);
    assert_eq!(spec["status"], "failed");
    assert!(spec["exit"]["reason"]
        .as_str()
        .unwrap()
        .contains("never confirmed alive"));
    wait_event(&s, "worker_failed", &id);
}

#[test]
fn run_time_limit_stops_the_worker_gracefully() {
    let s = Scene::new();
    let r = Reaper::default();
    let mut child = sleeper_for(&r, "w-timeout");
    let pid = child.id() as i32;
    plant_spec(
        &s,
        "active",
        &spec_for(
            "w-timeout",
            pid,
            json!({"started_at": ago(120), "resources": {"timeout_minutes": 1}}),
        ),
    );
    let _m = Monitor::start(&s, &["--grace-seconds", "2"]);
    assert!(
        wait_until(T, || s.dirs_of("w-timeout") == ["completed"]),
        "{}",
        s.tree()
    );
    let st = child.wait().unwrap();
    assert!(!st.success(), "the worker was signalled: {st:?}");
    let ev = wait_event(&s, "worker_stopped", "w-timeout");
    assert!(
        ev["data"]["reason"].as_str().unwrap().contains("timeout"),
        "{ev:?}"
    );
}

#[test]
fn an_idle_worker_is_stopped_after_the_idle_timeout() {
    let s = Scene::new();
    s.set_policy("idle_timeout_seconds", json!(1));
    let r = Reaper::default();
    let id = spawn_cmd(&s, &[], &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.add(pid);
    let _m = Monitor::start(&s, &[]);
    s.ok("heartbeat", &[&id, "--status", "idle"]);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["completed"]),
        "{}",
        s.tree()
    );
    assert!(wait_until(T, || !alive(pid)), "process ended");
    let spec = s.spec("completed", &id);
    let reasons: Vec<String> = spec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("idle for")),
        "{reasons:?}"
    );
    assert!(
        events_for(&s, "worker_failed", &id).is_empty(),
        "a stop, not a failure"
    );
}

#[test]
fn an_orphaned_worker_is_stopped_when_asked_for() {
    let s = Scene::new();
    let r = Reaper::default();
    let mut parent = sleeper(&r);
    let mut child = sleeper_for(&r, "w-orphan");
    let mut v = spec_for("w-orphan", child.id() as i32, json!({}));
    v["process"]["parent_pid"] = json!(parent.id());
    plant_spec(&s, "active", &v);
    let _m = Monitor::start(&s, &["--check-orphans", "--sample-interval", "0.2"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        s.dirs_of("w-orphan"),
        ["active"],
        "parent alive: not an orphan"
    );
    parent.kill().unwrap();
    parent.wait().unwrap();
    assert!(
        wait_until(T, || s.dirs_of("w-orphan") == ["completed"]),
        "{}",
        s.tree()
    );
    child.wait().unwrap();
    let ev = wait_event(&s, "worker_stopped", "w-orphan");
    assert!(
        ev["data"]["reason"].as_str().unwrap().contains("orphaned"),
        "{ev:?}"
    );
}

#[test]
fn cpu_over_the_threshold_raises_a_violation_and_runs_the_alert_command() {
    let s = Scene::new();
    let received = s.dir.path().join("received.jsonl");
    let script = s.dir.path().join("alert.sh");
    write_script(&script, "#!/bin/sh\ncat >> \"$1\"\n");
    s.set_policy("cpu_threshold_percent", json!(5));
    s.set_policy(
        "alert_command",
        json!([script.display().to_string(), received.display().to_string()]),
    );
    let r = Reaper::default();
    let id = spawn_cmd(&s, &[], &["sh", "-c", "while :; do :; done"]);
    r.add(worker_pid(&s, &id));
    let _m = Monitor::start(&s, &["--sample-interval", "0.3"]);
    assert!(wait_until(T, || !events_for(
        &s,
        "threshold_violation",
        &id
    )
    .is_empty()));
    let ev = &events_for(&s, "threshold_violation", &id)[0];
    assert_eq!(ev["data"]["metric"], "cpu_percent");
    assert!(ev["data"]["value"].as_f64().unwrap() > 5.0, "{ev}");
    assert!(wait_until(T, || std::fs::read_to_string(&received)
        .map(|t| t.contains("threshold_violation"))
        .unwrap_or(false)));
    let got: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&received)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got["id"], ev["id"], "the alert got the logged event");
    let spec = s.spec("active", &id);
    assert!(
        spec["resources"]["cpu_percent"].as_f64().unwrap() > 5.0,
        "{spec:#}"
    );
    assert!(
        spec["resources"]["rss_mb"].as_f64().unwrap() > 0.0,
        "{spec:#}"
    );
}

#[test]
fn bad_files_are_quarantined_and_every_other_worker_is_still_watched() {
    let s = Scene::new();
    let mut m = Monitor::start(&s, &[]);
    let r = Reaper::default();
    let specs = s.coord().join("worker-specs");
    let good = json!({"worker_id": "x", "worker_type": "t", "status": "running"});
    let mut big = good.clone();
    big["worker_id"] = json!("w-big");
    big["padding"] = json!("x".repeat(1_100_000));
    let bad: Vec<(&str, &str, Vec<u8>)> = vec![
        ("active", "w-malformed.json", b"{ not json".to_vec()),
        (
            "active",
            "w-truncated.json",
            br#"{"worker_id": "w-truncated", "worker_"#.to_vec(),
        ),
        ("active", "w-big.json", serde_json::to_vec(&big).unwrap()),
        (
            "active",
            "w-schema.json",
            br#"{"worker_id": "w-schema", "worker_type": "t", "status": "sleeping"}"#.to_vec(),
        ),
        (
            "active",
            "w-mismatch.json",
            br#"{"worker_id": "w-other", "worker_type": "t", "status": "running"}"#.to_vec(),
        ),
        ("zombie", "w-z.json", b"[]".to_vec()),
        ("completed", "w-c.json", b"".to_vec()),
        ("archived", "w-a.json", b"{\"worker_id\": 5}".to_vec()),
    ];
    for (d, name, bytes) in &bad {
        std::fs::write(specs.join(d).join(name), bytes).unwrap();
    }
    let target = s.dir.path().join("elsewhere.json");
    std::fs::write(&target, serde_json::to_vec(&good).unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, specs.join("active/w-link.json")).unwrap();
    // A good worker next to them is still handled.
    let id = spawn_cmd(&s, &[], &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.add(pid);
    assert!(wait_until(T, || m.watches(pid)));
    let n = bad.len() + 1;
    assert!(
        wait_until(T, || s.events_of("spec_quarantined").len() >= n),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    for (d, name, _) in &bad {
        assert!(!specs.join(d).join(name).exists(), "{d}/{name} still there");
    }
    assert!(std::fs::symlink_metadata(specs.join("active/w-link.json")).is_err());
    assert!(target.exists(), "a symlink's target is never touched");
    let q: Vec<String> = std::fs::read_dir(s.coord().join("quarantine"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(
        q.iter().filter(|n| n.ends_with(".reason")).count(),
        n,
        "{q:?}"
    );
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        s.tree()
    );
    m.assert_running();
}

#[test]
fn one_monitor_per_home_and_sigterm_stops_it_cleanly() {
    let s = Scene::new();
    let pidfile = s.dir.path().join("monitor.pid");
    let mut m = Monitor::start(&s, &["--pidfile", pidfile.to_str().unwrap()]);
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written.trim(), m.pid().to_string());
    let out = s.code("heartbeat-monitor", &[], 5);
    assert!(crate::support::stderr(&out).contains("another heartbeat-monitor"));
    s.code("heartbeat-monitor", &["--once"], 5);
    let st = m.terminate();
    assert_eq!(st.code(), Some(0), "{}", m.stderr());
    assert!(!pidfile.exists(), "pidfile removed on a clean exit");
    // The lock went with it: a new monitor starts.
    let _m2 = Monitor::start(&s, &[]);
}

#[test]
fn print_config_merges_file_env_and_flags() {
    let mut s = Scene::new();
    s.set_policy("restart.max_retries", json!(7));
    s.set_env("CORRAL_HEARTBEAT__WARNING_SECONDS", "3");
    let out = s.ok(
        "heartbeat-monitor",
        &[
            "--print-config",
            "--zombie-seconds",
            "9",
            "--poll-interval",
            "0.5",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["restart"]["max_retries"], 7);
    assert_eq!(v["warning_seconds"], 3.0);
    assert_eq!(v["zombie_seconds"], 9.0);
    assert_eq!(v["critical_seconds"], 120.0);
    assert_eq!(v["poll_interval_seconds"], 0.5);
    let out = s.code(
        "heartbeat-monitor",
        &["--print-config", "--zombie-seconds", "-1"],
        2,
    );
    assert!(!out.status.success());
    s.set_policy("zombie_seconds", json!("soon"));
    s.code("heartbeat-monitor", &["--print-config"], 6);
}

#[test]
fn a_restarted_monitor_adopts_running_workers() {
    let s = Scene::new();
    let r = Reaper::default();
    let id = spawn_cmd(&s, &[], &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.add(pid);
    let mut m = Monitor::start(&s, &[]);
    assert!(wait_until(T, || m.watches(pid)));
    assert_eq!(m.terminate().code(), Some(0));
    let m2 = Monitor::start(&s, &[]);
    assert!(wait_until(T, || m2.watches(pid)), "{}", m2.stderr());
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        s.tree()
    );
}

#[test]
fn once_judges_stale_and_dead_workers_and_leaves_healthy_ones() {
    let s = Scene::new();
    let r = Reaper::default();
    write_spec(
        &s,
        &json!({"worker_id": "w-stale", "worker_type": "build-worker", "status": "running",
                "heartbeat": {"last_seen": ago(600)}, "created_at": ago(700)}),
    );
    write_spec(
        &s,
        &json!({"worker_id": "w-fresh", "worker_type": "build-worker", "status": "running",
                "heartbeat": {"last_seen": ago(1)}, "created_at": ago(700)}),
    );
    let dead = spawn_cmd(&s, &[], &["sleep", "300"]);
    let pid = worker_pid(&s, &dead);
    r.add(pid);
    signal(pid, libc::SIGKILL);
    assert!(wait_until(T, || !alive(pid)));
    let t0 = Instant::now();
    s.ok("heartbeat-monitor", &["--once"]);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(s.dirs_of("w-stale"), ["zombie"]);
    assert_eq!(s.spec("zombie", "w-stale")["status"], "zombie");
    assert_eq!(s.dirs_of(&dead), ["zombie"]);
    assert_eq!(s.spec("zombie", &dead)["status"], "failed");
    assert_eq!(s.dirs_of("w-fresh"), ["active"]);
    assert!(s.coord().join("metrics/corral.prom").exists());
}

#[test]
fn workers_of_another_host_are_judged_by_heartbeat_age_alone() {
    let mut s = Scene::new();
    s.set_policy("zombie_seconds", json!(3));
    s.set_policy("warning_seconds", json!(100));
    s.set_policy("critical_seconds", json!(200));
    s.set_env("CORRAL_HOST", "host-a");
    let r = Reaper::default();
    // A spec from host-b naming a live pid of ours: that pid means nothing for host-b's worker.
    let mut bystander = sleeper(&r);
    let bpid = bystander.id() as i32;
    let mut v = spec_for("w-remote", bpid, json!({}));
    v["process"]["host"] = json!("host-b");
    write_spec(&s, &v);
    let m = Monitor::start(&s, &["--grace-seconds", "1"]);
    assert!(!m.watches(bpid), "no pidfd for another host's pid");
    // Host B in its own pid namespace, when the kernel lets us make one.
    let unshare = std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
            "true",
        ])
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    let mut ns_child = None;
    let mut ns_id = None;
    if unshare {
        let spawn = crate::support::bin("spawn-worker");
        let script = format!(
            "ID=$({} --type build-worker -- sleep 300) && echo $ID > {}/ns-id && sleep 300",
            spawn.display(),
            s.dir.path().display()
        );
        let mut c = std::process::Command::new("unshare");
        c.args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CORRAL_HOME", &s.home)
        .env("CORRAL_HOST", "host-b")
        .stdin(std::process::Stdio::null());
        let child = c.spawn().expect("unshare");
        r.add(child.id() as i32);
        ns_child = Some(child);
        let idf = s.dir.path().join("ns-id");
        assert!(wait_until(T, || std::fs::read_to_string(&idf)
            .is_ok_and(|t| !t.trim().is_empty())));
        let id = std::fs::read_to_string(&idf).unwrap().trim().to_string();
        let spec = s.spec("active", &id);
        assert_eq!(spec["process"]["host"], "host-b");
        ns_id = Some(id);
    } else {
        eprintln!("unshare --pid not permitted here: the pid-namespace part is skipped");
    }
    // The whole of host B dies; only heartbeat age can tell.
    if let Some(mut c) = ns_child.take() {
        signal(c.id() as i32, libc::SIGKILL);
        let _ = c.wait();
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(s.dirs_of("w-remote"), ["active"], "not judged by pid");
    if let Some(id) = &ns_id {
        assert_eq!(s.dirs_of(id), ["active"], "not judged by pid");
    }
    assert!(
        wait_until(T, || s.dirs_of("w-remote") == ["zombie"]),
        "{}",
        s.tree()
    );
    assert_eq!(s.spec("zombie", "w-remote")["status"], "zombie");
    if let Some(id) = &ns_id {
        assert!(wait_until(T, || s.dirs_of(id) == ["zombie"]));
        assert!(events_for(&s, "worker_failed", id).is_empty());
    }
    assert!(alive(bpid), "another host's pid is never signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(events_for(&s, "worker_failed", "w-remote").is_empty());
    assert!(
        events_for(&s, "worker_restart_scheduled", "w-remote").is_empty(),
        "not restarted here"
    );
}

#[test]
fn the_status_file_says_who_watches_the_home() {
    let s = Scene::new();
    let path = s.coord().join("metrics/monitor.json");
    let mut m = Monitor::start(&s, &["--poll-interval", "7"]);
    assert!(wait_until(T, || path.exists()));
    let v = crate::support::read_json(&path);
    assert_eq!(v["pid"], m.pid());
    assert_eq!(v["mode"], "daemon");
    assert_eq!(v["poll_interval_seconds"], 7.0);
    assert!(v["stopped_at"].is_null(), "running");
    for k in [
        "host",
        "boot_id",
        "started_at",
        "last_pass_at",
        "log_file",
        "version",
        "workers_watched",
    ] {
        assert!(!v[k].is_null(), "{k}: {v:#}");
    }
    // Kept current while it runs.
    let first = v["last_pass_at"].as_str().unwrap().to_string();
    assert!(wait_until(T, || crate::support::read_json(&path)
        ["last_pass_at"]
        .as_str()
        .is_some_and(|t| t > first.as_str())));
    assert_eq!(m.terminate().code(), Some(0));
    let v = crate::support::read_json(&path);
    assert!(
        v["stopped_at"].is_string(),
        "a clean exit is recorded: {v:#}"
    );
    s.ok("heartbeat-monitor", &["--once"]);
    let v = crate::support::read_json(&path);
    assert_eq!(v["mode"], "once");
    assert!(v["stopped_at"].is_string());
}

/// `flock -x -o PATH sleep SECS` as a child the reaper kills, once it holds the lock.
fn hold_lock(r: &Reaper, lock: &std::path::Path, secs: u32) -> Option<std::process::Child> {
    if !crate::support::have_tool(
        std::process::Command::new("flock")
            .arg("--version")
            .output()
            .is_ok(),
        "flock (util-linux)",
    ) {
        return None;
    }
    let holder = r.spawn(
        // `-o`: the lock stays with flock itself (not its `sleep`), so killing it frees it.
        std::process::Command::new("flock")
            .args(["-x", "-o"])
            .arg(lock)
            .args(["sleep", &secs.to_string()])
            .stdin(std::process::Stdio::null()),
    );
    let pid = holder.id() as i32;
    assert!(
        wait_until(T, || corral::process::lock_holders(lock).contains(&pid)),
        "flock never took {}",
        lock.display()
    );
    Some(holder)
}

/// S4: a held `.locks/events.lock` froze the loop ~10 s per event (one death settled every
/// 10 s, `last_pass_at` standing still) and lost the events. Now the deaths are recorded at
/// once while the lock is held, and every `worker_failed` is in the log, in order, as soon
/// as the holder lets go.
#[test]
fn a_held_event_lock_neither_stalls_the_monitor_nor_loses_its_events() {
    let s = Scene::new();
    s.set_policy("restart.enabled", json!(false));
    let r = Reaper::default();
    let m = Monitor::start(&s, &[]);
    let ids: Vec<String> = (0..3)
        .map(|_| spawn_cmd(&s, &[], &["sleep", "300"]))
        .collect();
    let pids: Vec<i32> = ids.iter().map(|id| worker_pid(&s, id)).collect();
    for p in &pids {
        r.add(*p);
    }
    assert!(wait_until(T, || pids.iter().all(|p| m.watches(*p))));
    let lock = s.coord().join(".locks/events.lock");
    let Some(mut holder) = hold_lock(&r, &lock, 60) else {
        return;
    };
    let t0 = Instant::now();
    for p in &pids {
        signal(*p, libc::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(10), || ids
            .iter()
            .all(|id| s.dirs_of(id) == ["zombie"])),
        "{}",
        m.stderr()
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "three deaths took {took:?} to record while the event lock was held\n{}",
        m.stderr()
    );
    // The lock is honoured: nothing was written under it.
    assert!(s.events_of("worker_failed").is_empty());
    assert!(!m.stderr().contains("cannot write"), "{}", m.stderr());
    signal(holder.id() as i32, libc::SIGKILL);
    let _ = holder.wait();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .events_of("worker_failed")
            .len()
            == 3),
        "events lost after the lock was released\n{}",
        m.stderr()
    );
    for id in &ids {
        assert_eq!(events_for(&s, "worker_failed", id).len(), 1, "{id}");
    }
    // In the order the monitor recorded them: its own events' timestamps never go back,
    // and the failures follow the order of the deaths' records in the specs.
    let mine: Vec<String> = s
        .events()
        .into_iter()
        .filter(|e| e["source"] == "heartbeat-monitor")
        .map(|e| e["timestamp"].as_str().unwrap().to_string())
        .collect();
    assert!(mine.windows(2).all(|w| w[0] <= w[1]), "{mine:#?}");
    let logged: Vec<String> = s
        .events_of("worker_failed")
        .iter()
        .map(|e| e["worker_id"].as_str().unwrap().to_string())
        .collect();
    let mut recorded = ids.clone();
    recorded.sort_by_key(|id| {
        s.spec("zombie", id)["updated_at"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(logged, recorded);
}

/// A held worker lock hid a dead worker: one INFO line that named no lock, never a warning,
/// and `corral status` said ok. Now the lock is named, a warning follows once it has been
/// held as long as a CLI would wait (`CORRAL_LOCK_TIMEOUT`), and `corral status` (through
/// `metrics/monitor.json`) reports it until it is released.
#[test]
fn a_held_worker_lock_is_named_warned_about_and_reported_by_status() {
    let mut s = Scene::new();
    s.set_env("CORRAL_LOCK_TIMEOUT", "2");
    s.set_policy("restart.enabled", json!(false));
    let r = Reaper::default();
    let m = Monitor::start(&s, &[]);
    let id = spawn_cmd(&s, &[], &["sleep", "300"]);
    let pid = worker_pid(&s, &id);
    r.add(pid);
    assert!(wait_until(T, || m.watches(pid)));
    let lock = s.coord().join(".locks/workers").join(format!("{id}.lock"));
    let Some(mut holder) = hold_lock(&r, &lock, 60) else {
        return;
    };
    signal(pid, libc::SIGKILL);
    let name = lock.display().to_string();
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&name) && l.contains("held"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || warned(&m.stderr())),
        "no warning naming {name}\n{}",
        m.stderr()
    );
    assert_eq!(
        s.dirs_of(&id),
        ["active"],
        "its death cannot be recorded yet"
    );
    // `corral status` reports it as a problem (exit 10), naming the lock and the worker.
    let reported = || {
        let out = s.run("corral", &["status", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.code() == Some(10)
            && v["monitor"]["status_file"]["held_locks"][0]["worker_id"] == json!(id)
            && v["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p.as_str().unwrap_or("").contains(&name)))
    };
    assert!(
        wait_until(Duration::from_secs(10), reported),
        "{}",
        m.stderr()
    );
    let out = s.run("corral", &["status"]);
    let text = stdout(&out);
    assert!(text.contains(&name) && text.contains("held"), "{text}");
    // Released: the death is recorded, and the report clears.
    signal(holder.id() as i32, libc::SIGKILL);
    let _ = holder.wait();
    assert!(
        wait_until(T, || s.dirs_of(&id) == ["zombie"]),
        "{}",
        m.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(10), || crate::support::read_json(
            &s.coord().join("metrics/monitor.json")
        )["held_locks"]
            == json!([])),
        "{}",
        m.stderr()
    );
}
