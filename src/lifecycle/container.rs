//! Launching a container worker (execution mode `container`, seed 001's `docker`). The same
//! order as a direct launch keeps DESIGN §6 S1 and S2:
//!
//! - the liveness lock is taken before the spec is visible and handed to the `ENGINE run`
//!   client, which Podman's conmon inherits from it: the lock stays held while the
//!   container runs, even after a SIGKILL of the client, and comes free once the container
//!   has exited and its exit code is recorded. (Docker's daemon inherits nothing, so a free
//!   lock alone never declares a container worker gone: the engine is asked first.)
//! - the process recorded is the container's init, by its host pid and start time, with the
//!   container's engine, name, id (`--cidfile`) and image; its environment carries
//!   `CORRAL_WORKER_ID=<id>`, the proof S2 asks for. Signals go through the engine
//!   (`stop -t grace`), never to a pid.
//!
//! The launch waits until the engine reports the container running (or already exited), so
//! `spawn-worker` returns with the container's identity in the spec. A launch that fails
//! (no image, a refused argument, a name in use) writes the engine's message into the error.

use super::plan;
use crate::container::{self, EngineKind, LaunchContainer, RunRequest, Target};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::policy::{HeartbeatPolicy, WorkerType};
use crate::process::{self, ContainerInfo, ProcessInfo};
use crate::spec::{LaunchSpec, WorkerSpec};
use crate::store::LockGuard;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a launch waits for the engine to run the container (an image pull counts):
/// longer means a failed launch, and the container is removed.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine and image a spawn asks for, or `None` for a direct worker. A container type
/// (or a restart of a container worker, which reproduces its launch whatever became of the
/// type) gets one; `--image` for a direct type is a usage error.
pub(super) fn requested(
    home: &Home,
    t: &WorkerType,
    image: Option<&str>,
    engine: Option<&str>,
    restart: bool,
) -> Result<Option<LaunchContainer>> {
    let by_type = container::is_container_mode(t.execution_mode.as_deref())?;
    let reproduced = restart && image.is_some();
    if !(by_type || reproduced) {
        if image.is_some() || engine.is_some() {
            return Err(Error::Usage(
                "--image applies to a worker type whose execution_mode is container".into(),
            ));
        }
        return Ok(None);
    }
    let engine = match engine.or(t.engine.as_deref()) {
        Some(e) => EngineKind::parse(Some(e))?,
        None => EngineKind::parse(container::policy_engine(home)?.as_deref())?,
    };
    let image = image
        .or(t.image.as_deref())
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            Error::Invalid(
                "container mode needs an image: the type's \"image\" or spawn-worker --image"
                    .into(),
            )
        })?;
    Ok(Some(LaunchContainer {
        engine: engine.program().to_string(),
        image: image.to_string(),
    }))
}

/// The type as a container launch uses it: the recorded engine wins over the type's (S7).
fn effective_type(t: Option<&WorkerType>, lc: &LaunchContainer) -> WorkerType {
    let mut t = t.cloned().unwrap_or_default();
    t.engine = Some(lc.engine.clone());
    t
}

/// The launch block of a container worker, tried in full before anything is written: the
/// run argv is built (every refusal of [`container::run_plan`] is exit 6 now, not a failed
/// launch later), the engine must be on `PATH`, a type's env file must read. The command
/// runs inside the image as given: it is not resolved on this host.
pub(super) fn launch_spec(
    home: &Home,
    t: Option<&WorkerType>,
    lc: &LaunchContainer,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Result<LaunchSpec> {
    let eff = effective_type(t, lc);
    let vars = plan::launch_env(home, t, env)?;
    let probe = home.worker_log_dir("probe").join("container.cid");
    container::run_plan(&RunRequest {
        worker_id: "probe",
        home: home.root(),
        worker_type: &eff,
        image: Some(&lc.image),
        default_engine: None,
        command,
        env: &vars,
        cidfile: &probe,
        user: None,
    })?;
    engine_program(lc)?;
    let mut l = LaunchSpec {
        command: command.to_vec(),
        cwd: None,
        env: env.clone(),
        extra: Default::default(),
    };
    container::set_launch_container(&mut l, lc);
    Ok(l)
}

/// The engine's executable, from `PATH` (exit 6 when it is not installed).
fn engine_program(lc: &LaunchContainer) -> Result<String> {
    let kind = EngineKind::parse(Some(&lc.engine))?;
    let cwd = Path::new("/");
    crate::process::resolve_program(kind.program(), cwd, std::env::var_os("PATH").as_deref())
        .map_err(|_| {
            Error::Invalid(format!(
            "container engine {} not found on PATH (install it, or see scripts/containers setup)",
            kind.program()
        ))
        })
}

/// A container that started: its state when first seen running (or already exited).
struct Started {
    client: i32,
    state: Option<container::ContainerState>,
}

/// Starts worker `s`'s container through the engine, handing the `run` client the liveness
/// lock `alive`, waits until the container runs, and returns the process to record.
pub(super) fn start(
    home: &Home,
    s: &WorkerSpec,
    t: Option<&WorkerType>,
    lc: &LaunchContainer,
    alive: LockGuard,
) -> Result<ProcessInfo> {
    let id = &s.worker_id;
    let l = s
        .launch
        .as_ref()
        .ok_or_else(|| Error::Internal(format!("{id}: no launch recorded")))?;
    let eff = effective_type(t, lc);
    let mut env = plan::launch_env(home, t, &l.env)?;
    let mut env_remove = vec!["CORRAL_ALIVE_FD".to_string()];
    for (key, value) in [
        ("CORRAL_TASK_ID", &s.task_id),
        ("CORRAL_SESSION_ID", &s.session_id),
    ] {
        match value {
            Some(v) => env.push((key.to_string(), v.clone())),
            None => env_remove.push(key.to_string()),
        }
    }
    let log_dir = home.worker_log_dir(id);
    let log = crate::store::open_log(&home.worker_log(id))?;
    // The engine refuses an existing cidfile; a stale OOM marker would misreport this run.
    let cidfile = container::cidfile_path(home, id);
    for stale in [&cidfile, &container::oom_marker_path(home, id)] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {}", stale.display()), e)),
        }
    }
    let plan = container::run_plan(&RunRequest {
        worker_id: id,
        home: home.root(),
        worker_type: &eff,
        image: Some(&lc.image),
        default_engine: None,
        command: &l.command,
        env: &env,
        cidfile: &cidfile,
        user: None,
    })?;
    let mut argv = vec![engine_program(lc)?];
    argv.extend(plan.args.iter().cloned());
    // The client runs in the worker's log directory: conmon inherits it as its working
    // directory and leaves its `oom` marker there.
    let client = process::launch(&process::Launch {
        command: &argv,
        log: &log,
        cwd: Some(&log_dir),
        env: plan.env.clone(),
        env_remove,
        alive_lock: Some(alive.file()),
    })?;
    // The client (and conmon after it) holds the lock from here on.
    alive.hand_off();
    let target = Target {
        kind: plan.engine,
        name: plan.name.clone(),
        id: None,
    };
    let started = match wait_started(home, id, &target, &cidfile, client) {
        Ok(s) => s,
        Err(e) => {
            abandon(home, id, &target, &cidfile, client);
            return Err(e);
        }
    };
    let init = started
        .state
        .as_ref()
        .filter(|st| st.running && st.pid > 1)
        .and_then(|st| ProcessInfo::capture(st.pid, l.command.clone()).ok());
    // Exited before it was seen running (or right after): the client stands in, and the
    // monitor asks the engine for the exit code as soon as it watches the worker.
    let mut info = init.unwrap_or_else(|| {
        ProcessInfo::capture(started.client, l.command.clone()).unwrap_or_else(|_| ProcessInfo {
            host: process::host_name(),
            boot_id: process::boot_id(),
            pid: started.client,
            command: l.command.clone(),
            ..Default::default()
        })
    });
    if let Some(st) = started.state.as_ref().filter(|st| st.running) {
        let proof = process::Proof::new(id, home.alive_lock(id));
        if !proof.has_env(st.pid) {
            tracing::warn!(
                "{id}: the init of container {} (pid {}) does not show CORRAL_WORKER_ID: only the engine can stop it",
                plan.name,
                st.pid
            );
        }
    }
    info.execution_mode = "container".into();
    info.container = Some(ContainerInfo {
        engine: lc.engine.clone(),
        name: plan.name.clone(),
        id: started.state.as_ref().map(|st| st.id.clone()),
        image: lc.image.clone(),
        client_pid: Some(started.client),
        extra: Default::default(),
    });
    Ok(info)
}

/// Waits for the container to be created (its id in the cidfile) and then running or
/// exited. A client that exits without creating it is a failed launch, with the engine's
/// words from the log.
fn wait_started(
    home: &Home,
    id: &str,
    target: &Target,
    cidfile: &Path,
    client: i32,
) -> Result<Started> {
    let engine = target.engine();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut cid: Option<String> = None;
    loop {
        let client_gone =
            process::read_stat(client).is_none_or(|st| st.state == 'Z' || st.state == 'X');
        if cid.is_none() {
            cid = std::fs::read_to_string(cidfile)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        if let Some(c) = &cid {
            let t = Target {
                id: Some(c.clone()),
                ..target.clone()
            };
            match container::control::find(&engine, home.root(), id, &t)? {
                container::Found::Ours(st) if (st.running && st.pid > 1) || st.has_exited() => {
                    return Ok(Started {
                        client,
                        state: Some(st),
                    })
                }
                // Created, and nobody left to start it.
                container::Found::Ours(st) if client_gone => {
                    return Err(Error::Invalid(format!(
                        "{} run exited before container {} started (state {}){}",
                        target.kind.program(),
                        st.name,
                        st.status,
                        log_tail(&home.worker_log(id))
                    )))
                }
                container::Found::Ours(_) => {}
                container::Found::NotOurs(st) => {
                    return Err(Error::Internal(format!(
                        "{id}: the engine's container {} does not carry this worker's labels",
                        st.id
                    )))
                }
                // Removed already (an `rm -f` by someone else): the client's end tells.
                container::Found::Missing if client_gone => {
                    return Ok(Started {
                        client,
                        state: None,
                    })
                }
                container::Found::Missing => {}
            }
        } else if client_gone {
            // One more look: the cidfile is written before the client can exit.
            if std::fs::metadata(cidfile).is_ok_and(|m| m.len() > 0) {
                continue;
            }
            return Err(Error::Invalid(format!(
                "{} run exited without starting the container{}",
                target.kind.program(),
                log_tail(&home.worker_log(id))
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Internal(format!(
                "{id}: container {} not running {} s after {} run (pull large images ahead)",
                target.name,
                START_TIMEOUT.as_secs(),
                target.kind.program()
            )));
        }
        std::thread::sleep(Duration::from_millis(if cid.is_some() { 10 } else { 5 }));
    }
}

/// The last lines of a worker log, for an error message (`: …`), empty when there are none.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", super::bounded_text(tail.trim()))
    }
}

/// Ends a container launch that will not be recorded: removes the container (ours only, by
/// the id in the cidfile when there is one) and ends the client.
pub(super) fn abandon(home: &Home, id: &str, target: &Target, cidfile: &Path, client: i32) {
    let cid = std::fs::read_to_string(cidfile)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let t = Target {
        id: cid,
        ..target.clone()
    };
    if let Err(e) = container::control::remove(home.root(), id, &t) {
        tracing::warn!("{id}: cannot remove container {}: {e}", t.reference());
    }
    super::spawn::kill_unrecorded(client);
}

/// Removes the container of a launch recorded in `info` whose spec could not take it.
pub(super) fn abandon_recorded(home: &Home, id: &str, info: &ProcessInfo) {
    if let Some(t) = Target::of_process(info) {
        let client = info
            .container
            .as_ref()
            .and_then(|c| c.client_pid)
            .unwrap_or(0);
        abandon(home, id, &t, &container::cidfile_path(home, id), client);
    }
}

/// Records a container worker's process in its spec, wherever the spec is by now. A
/// container takes a moment to start, and its worker may beat, complete or fail from inside
/// before the launch sees it running: its end is its own, and its container (exiting on its
/// own) stays recorded for cleanup. A worker stopped (or archived) before its container was
/// known had nothing to stop then: its container is stopped now, and the launch fails (exit
/// 5), as a direct launch does.
pub(super) fn record(home: &Home, id: &str, info: ProcessInfo) -> Result<WorkerSpec> {
    let (spec, dir) = match super::spawn::record_process(home, id, info.clone())? {
        (spec, None) => return Ok(spec),
        (spec, Some(dir)) => (spec, dir),
    };
    if let Some(t) = Target::of_process(&info) {
        let grace = HeartbeatPolicy::load(home)
            .map(|p| crate::time::duration(p.grace_seconds))
            .unwrap_or(Duration::from_secs(5));
        if let Err(e) = container::control::stop(home.root(), id, &t, grace) {
            tracing::warn!("{id}: cannot stop container {}: {e}", t.name);
        }
    }
    Err(Error::Conflict(format!(
        "worker {id} was {} (in {}/) before its container was running; the container was stopped",
        spec.status,
        dir.name()
    )))
}
