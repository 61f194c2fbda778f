//! Container workers against real Podman (set up by `scripts/containers`), through the real
//! binaries (the `docker` engine, the Docker CLI on Podman's API service, in [`docker`]):
//! `spawn-worker --type T` of a type with `"execution_mode": "container"` starts the
//! container, corral's own binaries beat and claim tasks from inside it against the
//! mounted home, and `stop-worker`, `heartbeat-monitor`, `cleanup-zombies` and
//! `corral doctor` track, stop, restart and remove it through the engine. Each test names
//! the engine behaviour container mode relies on, so a Podman upgrade that changes it fails
//! here first.

mod docker;

use crate::support::containers::{bin_path, docker, podman, HomeScene, Podman};
use crate::support::procs::{alive, signal, Monitor};
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn spawn(s: &HomeScene, ty: &str) -> String {
    stdout(&s.code("spawn-worker", &["--type", ty], 0))
}

fn log_of(s: &HomeScene, id: &str) -> String {
    std::fs::read_to_string(s.home.join(format!("agents/logs/workers/{id}/worker.log")))
        .unwrap_or_default()
}

/// The spec wherever it is now.
fn spec_of(s: &HomeScene, id: &str) -> Value {
    let dirs = s.dirs_of(id);
    assert_eq!(dirs.len(), 1, "{id} in {dirs:?}\n{}", s.tree());
    s.spec(&dirs[0], id)
}

fn wait_in(s: &HomeScene, id: &str, dir: &str) {
    assert!(
        wait_until(T, || s.dirs_of(id) == [dir]),
        "{id} never reached {dir}/: in {:?}\n--- log\n{}\n--- home\n{}",
        s.dirs_of(id),
        log_of(s, id),
        s.tree()
    );
}

fn wait_running(s: &HomeScene, id: &str) -> Value {
    assert!(
        wait_until(T, || s.spec_path("active", id).exists()
            && s.spec("active", id)["status"] == "running"),
        "{id} never beat\n{}\n{}",
        log_of(s, id),
        s.tree()
    );
    s.spec("active", id)
}

fn container_state(p: &Podman, name: &str) -> Option<corral::container::ContainerState> {
    p.engine().inspect(name).expect("inspect")
}

fn names_of(p: &Podman, s: &HomeScene) -> Vec<String> {
    p.engine()
        .list(&s.home)
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect()
}

fn lock_held(s: &HomeScene, id: &str) -> bool {
    let path = s.coord().join(format!(".locks/alive/{id}.lock"));
    !corral::process::alive_lock_free(&path).expect("lock")
}

/// spawn → beat from inside → complete. The home is mounted at its own path and corral's
/// binaries run inside as the home's owner; the spec records the container (engine, name,
/// the id the engine wrote to `--cidfile`, image), which carries corral's labels and no
/// network. A worker that completes before its launch has seen the container running still
/// gets its container recorded. Then `corral doctor` knows it, reports it once its spec is
/// gone, and `cleanup-zombies` removes it.
#[test]
fn spawn_beat_from_inside_complete_doctor_and_cleanup() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    let hb = bin_path("heartbeat");
    p.add_type(
        &s,
        "ctr-once",
        &sh(&format!(
            "echo inside-as-$(id -u); {hb} --tokens-add 5 --message in-container && {hb} --complete --summary done"
        )),
        |_| {},
    );
    let id = spawn(&s, "ctr-once");
    wait_in(&s, &id, "completed");
    let spec = s.spec("completed", &id);
    assert_eq!(spec["token_budget"]["used"], 5, "{spec:#}");
    assert_eq!(spec["exit"]["source"], "worker_report");
    let proc_ = &spec["process"];
    assert_eq!(proc_["execution_mode"], "container", "{spec:#}");
    let c = &proc_["container"];
    let name = format!("corral-{id}");
    assert_eq!(c["engine"], "podman");
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["image"], crate::support::containers::IMAGE);
    let cid = std::fs::read_to_string(
        s.home
            .join(format!("agents/logs/workers/{id}/container.cid")),
    )
    .expect("cidfile");
    assert_eq!(c["id"], cid.trim(), "the id the engine wrote to --cidfile");
    assert_eq!(spec["launch"]["container"]["image"], c["image"]);
    assert_eq!(
        spec["launch"]["command"][0], "sh",
        "not resolved on the host"
    );
    let uid = rustix::process::geteuid().as_raw();
    assert!(
        log_of(&s, &id).contains(&format!("inside-as-{uid}")),
        "the worker runs as the home's owner, its output in worker.log: {}",
        log_of(&s, &id)
    );
    let st = p.engine().wait_exit(&name, T).unwrap().expect("exited");
    assert_eq!(st.exit_code, 0);
    let home = std::path::absolute(&s.home).unwrap();
    assert_eq!(st.label("corral.home"), Some(home.to_str().unwrap()));
    assert_eq!(st.label("corral.worker_id"), Some(id.as_str()));
    let net = p
        .engine()
        .invoke(
            &[
                "container",
                "inspect",
                "--format",
                "{{.HostConfig.NetworkMode}}",
                &name,
            ],
            T,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&net.stdout).trim(), "none");

    // Known to a spec: no finding. Its spec gone: an orphan, which cleanup removes.
    s.code("corral", &["doctor"], 0);
    std::fs::remove_file(s.spec_path("completed", &id)).unwrap();
    s.ok("recalc-budget", &[]);
    let out = s.code("corral", &["doctor", "--format", "json"], 10);
    let found: Value = serde_json::from_slice(&out.stdout).expect("findings");
    let found = &found["findings"];
    let kinds: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["orphan_container"], "{found:#}");
    assert!(
        found[0]["detail"].as_str().unwrap().contains(&name),
        "{found:#}"
    );
    let out = s.ok("cleanup-zombies", &["--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["containers"][0]["name"], name.as_str(), "{report:#}");
    assert_eq!(report["containers"][0]["action"], "removed");
    assert_eq!(report["containers"][0]["reason"], "no spec");
    assert_eq!(container_state(p, &name), None);
    s.code("corral", &["doctor"], 0);
}

/// SIGKILL of the `podman run` client leaves the container running: the liveness lock stays
/// held (conmon inherited it), a `heartbeat-monitor --once` pass keeps the worker active, a
/// monitor started afterwards adopts it (a pidfd on the container's init, which carries the
/// proof S2 asks for), and `stop-worker` still stops the container through the engine,
/// recording its exit code. A second worker whose client was killed too exits on its own
/// later: the monitor sees its init go and records the container's own exit code.
#[test]
fn sigkill_of_the_client_leaves_a_tracked_worker_that_stop_worker_stops() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    let hb = bin_path("heartbeat");
    p.add_type(
        &s,
        "ctr-sleep",
        &sh(&format!("{hb} && echo started && exec sleep 300")),
        |_| {},
    );
    p.add_type(
        &s,
        "ctr-exit5",
        &sh(&format!(
            "{hb} && while [ ! -e \"$CORRAL_HOME/go\" ]; do sleep 0.1; done; exit 5"
        )),
        |_| {},
    );
    s.set_policy("restart.enabled", json!(false));
    let id = spawn(&s, "ctr-sleep");
    let later = spawn(&s, "ctr-exit5");
    let later_spec = wait_running(&s, &later);
    let later_pid = later_spec["process"]["pid"].as_i64().unwrap() as i32;
    signal(
        later_spec["process"]["container"]["client_pid"]
            .as_i64()
            .unwrap() as i32,
        libc::SIGKILL,
    );
    let spec = wait_running(&s, &id);
    let pid = spec["process"]["pid"].as_i64().unwrap() as i32;
    let client = spec["process"]["container"]["client_pid"].as_i64().unwrap() as i32;
    assert_eq!(
        spec["pid"], pid,
        "the runbook's .pid is the container's init"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let want = format!("CORRAL_WORKER_ID={id}");
    assert!(
        environ.split(|&b| b == 0).any(|v| v == want.as_bytes()),
        "the init carries {want}"
    );
    signal(client, libc::SIGKILL);
    assert!(wait_until(T, || !alive(client)), "client gone");
    assert!(lock_held(&s, &id), "conmon still holds the liveness lock");
    let st = container_state(p, &format!("corral-{id}")).expect("container");
    assert!(st.running && st.pid == pid, "{st:?}");
    // A pass that judges it now: still alive, still active.
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(s.dirs_of(&id), ["active"], "{}", s.tree());
    assert!(s.events_of("worker_failed").is_empty());
    let m = Monitor::start(&s, &[]);
    assert!(
        wait_until(T, || m.watches(pid)),
        "the monitor watches the init\n{}",
        m.stderr()
    );

    assert!(
        wait_until(T, || m.watches(later_pid)),
        "the monitor watches the other init\n{}",
        m.stderr()
    );
    std::fs::write(s.home.join("go"), "").unwrap();
    wait_in(&s, &later, "zombie");
    let failed = s.spec("zombie", &later);
    assert_eq!(
        failed["exit"]["code"], 5,
        "its own code, client gone: {failed:#}"
    );
    assert_eq!(failed["exit"]["source"], "engine", "{failed:#}");

    let out = s.ok("stop-worker", &[&id, "--grace", "10", "--format", "json"]);
    let res: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(res[0]["process"], "terminated", "{res:#}");
    let spec = s.spec("completed", &id);
    assert_eq!(spec["exit"]["code"], 143, "TERM through --init: {spec:#}");
    assert_eq!(spec["exit"]["source"], "engine");
    assert!(!alive(pid), "the init is gone");
    let st = container_state(p, &format!("corral-{id}")).expect("kept for its code");
    assert!(st.has_exited() && st.exit_code == 143, "{st:?}");
    assert!(
        wait_until(T, || !lock_held(&s, &id)),
        "nothing holds the lock after the stop"
    );
    let failed: Vec<Value> = s.events_of("worker_failed");
    assert!(
        failed.iter().all(|e| e["worker_id"] == later.as_str()),
        "only the worker that exited 5 failed: {failed:?}\n{}",
        m.stderr()
    );
}

/// `stop-worker` with and without a TERM handler: the engine's stop records the worker's
/// own exit code when it handles TERM; a worker that is PID 1 of its container without an
/// init (`"init": false`) ignores TERM, and only the engine's KILL after the grace period
/// ends it (137, `killed`), which is why `init` is the default.
#[test]
fn stop_worker_with_and_without_a_term_handler() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    let hb = bin_path("heartbeat");
    p.add_type(
        &s,
        "ctr-trap",
        &sh(&format!(
            "trap 'echo bye; exit 7' TERM; {hb}; while :; do sleep 0.1; done"
        )),
        |_| {},
    );
    p.add_type(
        &s,
        "ctr-pid1",
        &sh(&format!("{hb}; while :; do sleep 0.1; done")),
        |t| t["init"] = json!(false),
    );
    let trap = spawn(&s, "ctr-trap");
    let pid1 = spawn(&s, "ctr-pid1");
    wait_running(&s, &trap);
    wait_running(&s, &pid1);
    let out = s.ok(
        "stop-worker",
        &[&trap, &pid1, "--grace", "2", "--format", "json"],
    );
    let res: Value = serde_json::from_str(&out).unwrap();
    let by = |id: &str| {
        res.as_array()
            .unwrap()
            .iter()
            .find(|r| r["worker_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by(&trap)["process"], "terminated", "{res:#}");
    assert_eq!(by(&pid1)["process"], "killed", "{res:#}");
    let t = s.spec("completed", &trap);
    assert_eq!(t["exit"]["code"], 7, "the worker's own code: {t:#}");
    assert!(log_of(&s, &trap).contains("bye"), "{}", log_of(&s, &trap));
    let k = s.spec("completed", &pid1);
    assert_eq!(k["exit"]["code"], 137, "PID 1 ignored TERM: {k:#}");
    assert_eq!(k["exit"]["terminated_by"], libc::SIGKILL);
}

/// A crash → its exit code recorded from the engine → a restart by the monitor starts a new
/// container of the same image; `cleanup-zombies` archives the failures and removes their
/// containers. (The monitor asks the engine in helper threads: its SIGCHLD reaper must not
/// take the engine commands' exit status.)
#[test]
fn a_crash_is_recorded_with_its_exit_code_and_restarted_in_a_new_container() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    s.set_policy("restart.base_seconds", json!(0.2));
    s.set_policy("restart.rate_per_type_per_minute", json!(100));
    let hb = bin_path("heartbeat");
    p.add_type(&s, "ctr-crash", &sh(&format!("{hb} && exit 3")), |t| {
        t["max_retries"] = json!(1)
    });
    let m = Monitor::start(&s, &[]);
    let first = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "ctr-crash",
            "--image",
            "localhost/corral-busybox:latest",
        ],
        0,
    ));
    assert!(
        wait_until(T, || !s.events_of("worker_restart_abandoned").is_empty()),
        "{}\n{}",
        s.tree(),
        m.stderr()
    );
    let failed = s.spec("zombie", &first);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exit"]["code"], 3, "{failed:#}");
    assert_eq!(failed["exit"]["source"], "engine");
    assert_eq!(failed["exit"]["reason"], "container exited with code 3");
    let restarted = s
        .events_of("worker_restarted")
        .first()
        .map(|e| e["data"]["new_worker_id"].as_str().unwrap().to_string())
        .expect("restarted");
    let second = spec_of(&s, &restarted);
    assert_eq!(second["restart"]["original_worker_id"], first.as_str());
    assert_eq!(
        second["process"]["container"]["image"], "localhost/corral-busybox:latest",
        "the --image of the first launch"
    );
    assert_ne!(
        second["process"]["container"]["id"],
        failed["process"]["container"]["id"]
    );
    assert_eq!(second["exit"]["code"], 3);
    drop(m);
    let names = names_of(p, &s);
    assert_eq!(names.len(), 2, "{names:?}");
    let out = s.ok("cleanup-zombies", &["--format", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    for w in report["workers"].as_array().unwrap() {
        assert_eq!(w["action"], "archived", "{report:#}");
        assert_eq!(w["container"], "removed", "{report:#}");
    }
    assert!(names_of(p, &s).is_empty(), "{:?}", names_of(p, &s));
}

/// `task-queue work` as a container worker's command: it claims a task enqueued on the
/// host, runs its handler inside the container, and completes the task; once its loop has
/// exited, `stop-worker` finds the container gone and records its exit code 0.
#[test]
fn task_queue_work_inside_a_container_worker() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    let task = stdout(&s.code(
        "task-queue",
        &["enqueue", "--class", "ctr", "--payload", "{\"n\":1}"],
        0,
    ));
    let mut cmd = vec![
        bin_path("task-queue"),
        "work".into(),
        "--class".into(),
        "ctr".into(),
        "--max-tasks".into(),
        "1".into(),
        "--".into(),
    ];
    cmd.extend(sh("cat >/dev/null; echo '{\"done_in\":\"container\"}'"));
    p.add_type(&s, "ctr-queue", &cmd, |_| {});
    let id = spawn(&s, "ctr-queue");
    let done = s.coord().join(format!("tasks/completed/{task}.json"));
    assert!(
        wait_until(T, || done.exists()),
        "{}\n{}",
        log_of(&s, &id),
        s.tree()
    );
    let t = read_json(&done);
    assert_eq!(t["claimed_by"], id.as_str());
    assert_eq!(t["result"]["done_in"], "container", "{t}");
    let name = format!("corral-{id}");
    p.engine().wait_exit(&name, T).unwrap().expect("exited");
    let out = s.ok("stop-worker", &[&id, "--format", "json"]);
    let res: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(res[0]["process"], "gone", "{res:#}");
    assert_eq!(s.spec("completed", &id)["exit"]["code"], 0);
}

/// `memory_limit` is enforced by the engine and a hit is recorded: a worker that allocates
/// past it is killed by the kernel (exit 137, the reason naming the OOM killer, from
/// conmon's marker since Podman's own flag stays false on this cgroup v1 host), and a
/// child killed at the limit inside a worker that lives on is reported by the monitor's
/// cgroup sample (`threshold_violation` `oom_kills`, `resources.oom_kills`) with the memory
/// figures of the whole container against its limit.
#[test]
fn a_memory_limit_hit_is_recorded() {
    let Some(p) = podman() else { return };
    let s = p.scene();
    s.set_policy("restart.enabled", json!(false));
    s.set_policy("sample_interval_seconds", json!(0.2));
    let hb = bin_path("heartbeat");
    let dd = "dd if=/dev/zero of=/dev/null bs=64M count=1";
    let limit = |t: &mut Value| t["memory_limit"] = json!("32m");
    p.add_type(&s, "ctr-oom", &sh(&format!("{hb} && exec {dd}")), limit);
    p.add_type(
        &s,
        "ctr-child-oom",
        &sh(&format!("{hb}; {dd}; echo after-oom rc=$?; exec sleep 300")),
        limit,
    );
    let m = Monitor::start(&s, &[]);
    let killed = spawn(&s, "ctr-oom");
    let lives = spawn(&s, "ctr-child-oom");
    wait_in(&s, &killed, "zombie");
    let spec = s.spec("zombie", &killed);
    assert_eq!(spec["exit"]["code"], 137, "{spec:#}");
    assert!(
        spec["exit"]["reason"]
            .as_str()
            .unwrap()
            .contains("OOM killer"),
        "{spec:#}"
    );
    let oom_event = || {
        s.events_of("threshold_violation")
            .into_iter()
            .find(|e| e["worker_id"] == lives.as_str() && e["data"]["metric"] == "oom_kills")
    };
    assert!(
        wait_until(T, || oom_event().is_some()),
        "{}\n{}",
        log_of(&s, &lives),
        m.stderr()
    );
    assert!(
        wait_until(T, || log_of(&s, &lives).contains("after-oom rc=137")),
        "{}",
        log_of(&s, &lives)
    );
    assert_eq!(oom_event().unwrap()["data"]["memory_limit_mb"], 32.0);
    assert!(
        wait_until(T, || s.spec("active", &lives)["resources"]["oom_kills"]
            == 1),
        "{:#}",
        s.spec("active", &lives)
    );
    // The whole container's memory, read from its cgroup, under its limit.
    let rss = || s.spec("active", &lives)["resources"]["rss_mb"].as_f64();
    assert!(
        wait_until(T, || rss().is_some_and(|r| r > 0.0 && r < 32.0)),
        "{:?}",
        rss()
    );
    drop(m);
    s.ok("stop-worker", &[&lives, "--grace", "5"]);
}

/// A container launch that cannot work is refused before any spec is written (no worker
/// appears, no budget is reserved): a type without an image (exit 6), `--image` for a direct
/// type (usage, exit 2), an `engine_args` that would take the container from corral (`--rm`:
/// its exit code would be lost), a worker env that would point the `run` client alone at
/// another engine (`DOCKER_HOST`), an unknown execution mode, and an engine not on `PATH`
/// (the message names the engine chosen: the type's, else the policy's `container_engine`,
/// else Podman; `docker` is accepted as seed 001's name for the mode). Needs no engine.
#[test]
fn container_launches_that_cannot_work_are_refused_before_any_spec() {
    let mut s = crate::support::scene::Scene::new();
    let nowhere = s.dir.path().join("empty-path");
    std::fs::create_dir(&nowhere).unwrap();
    s.set_env("PATH", nowhere.to_str().unwrap());
    let types = s.coord().join("config/worker-types.json");
    let mut doc = read_json(&types);
    let ctr = |extra: Value| {
        let mut t = json!({"tokens": 100, "command": ["true"], "image": "localhost/x"});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    };
    doc["types"]["no-image"] =
        json!({"tokens": 100, "command": ["true"], "execution_mode": "container"});
    doc["types"]["rm"] = ctr(json!({"execution_mode": "container", "engine_args": ["--rm"]}));
    doc["types"]["alias"] = ctr(json!({"execution_mode": "docker"}));
    doc["types"]["by-policy"] = ctr(json!({"execution_mode": "container"}));
    doc["types"]["by-type"] = ctr(json!({"execution_mode": "container", "engine": "podman"}));
    doc["types"]["plain"] = json!({"tokens": 100, "command": ["true"]});
    doc["types"]["redirect"] = ctr(json!({
        "execution_mode": "container",
        "engine": "docker",
        "env": {"DOCKER_HOST": "unix:///elsewhere.sock"}
    }));
    std::fs::write(&types, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let budget = || read_json(&s.coord().join("token-budget.json"));
    let before = budget();
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = s.code("spawn-worker", args, code);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(&["--type", "no-image"], 6, "needs an image");
    refused(&["--type", "plain", "--image", "localhost/x"], 2, "--image");
    refused(&["--type", "rm"], 6, "--rm");
    // The engine's endpoint comes from corral's environment, not the worker's: the `run`
    // client alone would reach it.
    refused(
        &["--type", "redirect"],
        6,
        "environment of corral's commands",
    );
    refused(&["--type", "alias"], 6, "engine podman not found");
    s.set_policy("container_engine", json!("docker"));
    refused(&["--type", "by-policy"], 6, "engine docker not found");
    refused(&["--type", "by-type"], 6, "engine podman not found");
    doc["types"]["vm"] = ctr(json!({"execution_mode": "vm"}));
    std::fs::write(&types, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    refused(&["--type", "vm"], 6, "execution_mode");
    for dir in ["active", "completed", "zombie", "archived"] {
        let d = s.coord().join("worker-specs").join(dir);
        let specs: Vec<_> = std::fs::read_dir(&d)
            .map(|r| {
                r.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(specs.is_empty(), "{dir}: {specs:?}");
    }
    assert_eq!(budget()["available"], before["available"], "{}", budget());
    assert_eq!(before["available"], 1_000_000);
}

/// A container the engine creates but cannot start (its command does not exist in the
/// image, and without `init` nothing inside runs first): the `run` client exits, the
/// container stays `created`, never live. The launch fails at once as a bad launch (exit 6,
/// the engine's words), not after the start timeout; no worker is left active and the
/// created container is removed. Both engines.
#[test]
fn a_container_created_but_never_started_fails_its_launch() {
    let Some(p) = podman() else { return };
    let mut engines = vec![p];
    engines.extend(docker());
    for e in engines {
        let s = e.scene();
        s.set_policy("restart.enabled", json!(false));
        e.add_type(&s, "nx", &["/nonexistent/worker".to_string()], |t| {
            t["init"] = json!(false)
        });
        let out = s.code("spawn-worker", &["--type", "nx"], 6);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exited before container") && err.contains("state created"),
            "{:?}: {err}",
            e.kind
        );
        let active = s.coord().join("worker-specs/active");
        let live: Vec<_> = std::fs::read_dir(&active)
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
            .collect();
        assert!(live.is_empty(), "{:?}: {live:?}\n{}", e.kind, s.tree());
        assert!(names_of(e, &s).is_empty(), "{:?}", names_of(e, &s));
    }
}
