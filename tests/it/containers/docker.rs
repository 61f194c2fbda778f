//! The `docker` engine for real: the Docker CLI with `DOCKER_HOST` at Podman's
//! Docker-compatible API service (`scripts/containers service start`), through corral's
//! binaries. What differs from Podman is what these tests pin: no `--rm` (the exit code
//! comes from `docker inspect`), the init's host pid from `{{.State.Pid}}`, and a liveness
//! lock held by the `docker run` client alone (the container runs under the service), so a
//! free lock is never a docker worker's end by itself.

use super::*;
use crate::support::containers::{bin_path, docker, podman};
use crate::support::procs::{alive, signal, Monitor};
use crate::support::*;
use serde_json::{json, Value};

/// The `run` client's argv, as `/proc` shows it.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn carries_worker_id(pid: i32, id: &str) -> bool {
    let want = format!("CORRAL_WORKER_ID={id}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|v| v == want.as_bytes())
}

/// The docker engine (the Docker CLI with `DOCKER_HOST` at Podman's API socket, inherited
/// from the environment of corral's commands as an operator would set it): spawn → beat
/// from inside → complete, and a crash whose exit code is the real one. The client runs
/// without `--rm` (the Docker CLI on Podman's socket loses the exit code with it) and with
/// `--cidfile`, `--init` and no `--log-driver passthrough` (Podman's alone); the recorded
/// pid is the container's init on the host (`{{.State.Pid}}` through the Docker API), not
/// the client; the monitor records the crash's code 3 from `docker inspect`. Then doctor
/// reports the docker-labelled container once its spec is gone (once, though Podman lists it
/// too) and cleanup removes it.
#[test]
fn docker_engine_spawn_beat_complete_and_the_real_exit_code() {
    let Some(d) = docker() else { return };
    let mut s = d.scene();
    // A Podman type too, on the same store: doctor and cleanup then ask both engines, which
    // list the same containers (one finding, one removal each).
    let p = podman().expect("podman");
    for (k, v) in p.env() {
        s.scene.set_env(&k, &v);
    }
    p.add_type(&s, "a-podman-type", &sh("true"), |_| {});
    s.set_policy("restart.enabled", json!(false));
    let hb = bin_path("heartbeat");
    d.add_type(
        &s,
        "dk-once",
        &sh(&format!(
            "echo said-in-docker; {hb} --tokens-add 5 --message in-docker && {hb} --complete --summary done"
        )),
        |_| {},
    );
    d.add_type(
        &s,
        "dk-exit3",
        &sh(&format!(
            "{hb} && while [ ! -e \"$CORRAL_HOME/go3\" ]; do sleep 0.1; done; exit 3"
        )),
        |_| {},
    );
    let m = Monitor::start(&s, &[]);
    let done = spawn(&s, "dk-once");
    let crash = spawn(&s, "dk-exit3");
    wait_in(&s, &done, "completed");
    let spec = s.spec("completed", &done);
    assert_eq!(spec["token_budget"]["used"], 5, "{spec:#}");
    let c = &spec["process"]["container"];
    assert_eq!(c["engine"], "docker", "{spec:#}");
    assert_eq!(spec["launch"]["container"]["engine"], "docker");
    let cid = std::fs::read_to_string(
        s.home
            .join(format!("agents/logs/workers/{done}/container.cid")),
    )
    .expect("cidfile");
    assert_eq!(
        c["id"],
        cid.trim(),
        "the id the Docker CLI wrote to --cidfile"
    );

    let running = wait_running(&s, &crash);
    let pid = running["process"]["pid"].as_i64().unwrap() as i32;
    let client = running["process"]["container"]["client_pid"]
        .as_i64()
        .unwrap() as i32;
    assert_ne!(pid, client, "the init is recorded, not the client");
    assert!(carries_worker_id(pid, &crash), "a host pid: {pid}");
    let argv = cmdline(client);
    assert!(argv[0].ends_with("docker"), "{argv:?}");
    assert_eq!(argv[1], "run", "{argv:?}");
    for flag in ["--cidfile", "--init", "--name"] {
        assert!(argv.iter().any(|a| a == flag), "{flag} in {argv:?}");
    }
    for flag in ["--rm", "--log-driver"] {
        assert!(!argv.iter().any(|a| a == flag), "no {flag}: {argv:?}");
    }
    assert!(
        wait_until(T, || m.watches(pid)),
        "the monitor watches the init\n{}",
        m.stderr()
    );
    std::fs::write(s.home.join("go3"), "").unwrap();
    wait_in(&s, &crash, "zombie");
    let failed = s.spec("zombie", &crash);
    assert_eq!(failed["exit"]["code"], 3, "the real code: {failed:#}");
    assert_eq!(failed["exit"]["source"], "engine", "{failed:#}");
    assert_eq!(failed["exit"]["reason"], "container exited with code 3");
    let st = d
        .engine()
        .wait_exit(&format!("corral-{crash}"), T)
        .unwrap()
        .expect("kept for its code");
    assert_eq!(st.exit_code, 3);
    drop(m);

    // Known to a spec: no finding. Its spec gone: an orphan, which cleanup removes.
    std::fs::remove_file(s.spec_path("completed", &done)).unwrap();
    s.ok("recalc-budget", &[]);
    let out = s.code("corral", &["doctor", "--format", "json"], 10);
    let found: Value = serde_json::from_slice(&out.stdout).expect("findings");
    let orphans: Vec<&Value> = found["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "orphan_container")
        .collect();
    assert_eq!(orphans.len(), 1, "{found:#}");
    let name = format!("corral-{done}");
    assert!(
        orphans[0]["detail"].as_str().unwrap().contains(&name),
        "{found:#}"
    );
    let out = s.ok("cleanup-zombies", &["--format", "json"]);
    let report: Value = serde_json::from_str(&out).expect("report");
    let removed: Vec<&Value> = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name.as_str())
        .collect();
    assert_eq!(removed.len(), 1, "{report:#}");
    assert_eq!(removed[0]["action"], "removed", "{report:#}");
    assert_eq!(container_state(d, &name), None);
    assert!(
        log_of(&s, &done).contains("said-in-docker"),
        "through the client"
    );
    let kept = std::fs::read_to_string(
        s.home
            .join(format!("agents/logs/workers/{done}/container.log")),
    )
    .unwrap_or_default();
    assert!(
        kept.contains("said-in-docker"),
        "the engine's log, kept through docker though Podman lists it too: {kept:?}"
    );
    let w = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == crash.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(w["container"], "removed", "{report:#}");
    assert!(names_of(d, &s).is_empty(), "{:?}", names_of(d, &s));
}

/// The docker engine's client is not the container's parent: the container runs under
/// Podman's service (its conmon), so a SIGKILL of the `docker run` client frees the liveness
/// lock (the client was its only holder) while the container runs on. The worker is still
/// tracked by its init's pid and the engine: a `heartbeat-monitor --once` pass keeps it
/// active, a monitor watches its init, a worker that exits on its own after losing its
/// client gets its own code (5) from `docker inspect`, and `stop-worker` stops the
/// container through the engine recording 143 (TERM through `--init`); a worker whose
/// client lives records its own code from a TERM handler (7). What a worker prints after its
/// client is gone reached only the engine: cleanup keeps it in `container.log`.
#[test]
fn docker_engine_stop_worker_and_sigkill_of_the_client() {
    let Some(d) = docker() else { return };
    let s = d.scene();
    s.set_policy("restart.enabled", json!(false));
    let hb = bin_path("heartbeat");
    d.add_type(
        &s,
        "dk-trap",
        &sh(&format!(
            "trap 'echo bye; exit 7' TERM; {hb}; while :; do sleep 0.1; done"
        )),
        |_| {},
    );
    d.add_type(
        &s,
        "dk-sleep",
        &sh(&format!("{hb} && exec sleep 300")),
        |_| {},
    );
    d.add_type(
        &s,
        "dk-exit5",
        &sh(&format!(
            "{hb} && while [ ! -e \"$CORRAL_HOME/go5\" ]; do sleep 0.1; done; echo after-client-gone; exit 5"
        )),
        |_| {},
    );
    let trap = spawn(&s, "dk-trap");
    let id = spawn(&s, "dk-sleep");
    let later = spawn(&s, "dk-exit5");
    let pid_of = |v: &Value| v["process"]["pid"].as_i64().unwrap() as i32;
    let client_of = |v: &Value| v["process"]["container"]["client_pid"].as_i64().unwrap() as i32;
    wait_running(&s, &trap);
    let spec = wait_running(&s, &id);
    let later_spec = wait_running(&s, &later);
    let (pid, later_pid) = (pid_of(&spec), pid_of(&later_spec));
    for c in [client_of(&spec), client_of(&later_spec)] {
        signal(c, libc::SIGKILL);
        assert!(wait_until(T, || !alive(c)), "client {c} gone");
    }
    assert!(
        wait_until(T, || !lock_held(&s, &id)),
        "the docker client was the lock's only holder"
    );
    let st = container_state(d, &format!("corral-{id}")).expect("container");
    assert!(st.running && st.pid == pid, "{st:?}");
    assert!(alive(pid) && carries_worker_id(pid, &id));
    // A pass that judges it now: its lock is free, its container runs: still active.
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(s.dirs_of(&id), ["active"], "{}", s.tree());
    assert_eq!(s.dirs_of(&later), ["active"], "{}", s.tree());
    assert!(s.events_of("worker_failed").is_empty(), "{}", s.tree());
    let m = Monitor::start(&s, &[]);
    for p in [pid, later_pid] {
        assert!(
            wait_until(T, || m.watches(p)),
            "the monitor watches init {p}\n{}",
            m.stderr()
        );
    }
    std::fs::write(s.home.join("go5"), "").unwrap();
    wait_in(&s, &later, "zombie");
    let failed = s.spec("zombie", &later);
    assert_eq!(
        failed["exit"]["code"], 5,
        "its own code, client gone: {failed:#}"
    );
    assert_eq!(failed["exit"]["source"], "engine", "{failed:#}");

    let out = s.ok(
        "stop-worker",
        &[&id, &trap, "--grace", "10", "--format", "json"],
    );
    let res: Value = serde_json::from_str(&out).unwrap();
    for r in res.as_array().unwrap() {
        assert_eq!(r["process"], "terminated", "{res:#}");
    }
    let stopped = s.spec("completed", &id);
    assert_eq!(
        stopped["exit"]["code"], 143,
        "TERM through --init: {stopped:#}"
    );
    assert_eq!(stopped["exit"]["source"], "engine");
    let trapped = s.spec("completed", &trap);
    assert_eq!(
        trapped["exit"]["code"], 7,
        "the worker's own code: {trapped:#}"
    );
    assert!(!alive(pid), "the init is gone");
    for w in [&id, &trap] {
        assert!(
            wait_until(T, || !lock_held(&s, w)),
            "nothing holds {w}'s lock after the stop"
        );
    }
    let failed: Vec<Value> = s.events_of("worker_failed");
    assert!(
        failed.iter().all(|e| e["worker_id"] == later.as_str()),
        "only the worker that exited 5 failed: {failed:?}\n{}",
        m.stderr()
    );
    // What the worker printed after its client was gone reached only the engine: cleanup
    // keeps it (`container.log`) before it removes the container.
    assert!(!log_of(&s, &later).contains("after-client-gone"));
    drop(m);
    let out = s.ok("cleanup-zombies", &["--format", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let w = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == later.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(w["container"], "removed", "{report:#}");
    let kept = s
        .home
        .join(format!("agents/logs/workers/{later}/container.log"));
    let kept = std::fs::read_to_string(&kept).unwrap_or_default();
    assert!(kept.contains("after-client-gone"), "{kept:?}");
}

/// S1 for the docker engine when only the liveness lock speaks: a docker worker whose
/// container is running but not yet recorded in its spec (the window between the engine
/// starting it and the launch writing `process`, recreated here by taking `process` out of
/// the spec) and whose client was SIGKILLed has a free liveness lock, which for a direct
/// worker means "every process is gone". For a container worker the monitor asks the
/// engine first: `heartbeat-monitor --once` keeps it active, and once the container does
/// exit the daemon records its own code (5) from `docker inspect`.
#[test]
fn docker_worker_with_a_free_lock_is_gone_only_when_the_engine_says_so() {
    use crate::support::procs::plant_spec;
    let Some(d) = docker() else { return };
    let s = d.scene();
    s.set_policy("restart.enabled", json!(false));
    let hb = bin_path("heartbeat");
    d.add_type(
        &s,
        "dk-wait",
        &sh(&format!(
            "{hb} && while [ ! -e \"$CORRAL_HOME/go\" ]; do sleep 0.1; done; exit 5"
        )),
        |_| {},
    );
    let id = spawn(&s, "dk-wait");
    let mut spec = wait_running(&s, &id);
    let pid = spec["process"]["pid"].as_i64().unwrap() as i32;
    let client = spec["process"]["container"]["client_pid"].as_i64().unwrap() as i32;
    signal(client, libc::SIGKILL);
    assert!(wait_until(T, || !alive(client)), "client gone");
    assert!(wait_until(T, || !lock_held(&s, &id)), "the lock is free");
    let o = spec.as_object_mut().unwrap();
    o.remove("process");
    o.remove("pid");
    plant_spec(&s, "active", &spec);
    s.ok("heartbeat-monitor", &["--once"]);
    assert_eq!(s.dirs_of(&id), ["active"], "{}", s.tree());
    assert!(s.events_of("worker_failed").is_empty(), "{}", s.tree());
    assert!(alive(pid), "the container's init runs on");
    let m = Monitor::start(&s, &[]);
    std::fs::write(s.home.join("go"), "").unwrap();
    wait_in(&s, &id, "zombie");
    let failed = s.spec("zombie", &id);
    assert_eq!(failed["exit"]["code"], 5, "{failed:#}\n{}", m.stderr());
    assert_eq!(failed["exit"]["source"], "engine", "{failed:#}");
}
