//! Workers as containers (seed 001's execution mode `docker`, here `container`): the engine
//! abstraction container mode is built on. A worker type with `"execution_mode": "container"`
//! runs its command in an image through Podman (the default) or Docker.
//!
//! Shaped by what real Podman does here (checked with `scripts/containers`):
//! - The `ENGINE run` client is not the worker. SIGKILL of the client leaves the container
//!   running, so a container is tracked by its name (`corral-<worker_id>`), its id (the
//!   `--cidfile`) and its labels (`corral.home`, `corral.worker_id`), never by the client's
//!   pid; [`Engine::inspect`] gives the host pid of the container's init and its state.
//! - A worker without a SIGTERM handler is PID 1 in its container and ignores `stop` until
//!   the timeout, so `init` (catatonit) is on by default: stop then takes ~0.3 s and exits 143.
//! - `podman stop` records the worker's own exit code, `kill` gives 137, and `--rm` loses the
//!   exit code (so it is refused): a finished container stays until cleanup removes it.
//! - Podman's `passthrough` log driver hands the client's stdout and stderr (the worker's
//!   log file) to the container itself, so output keeps reaching `worker.log` after the
//!   client is gone.
//! - The `docker` engine is the Docker CLI (checked against Podman's Docker-compatible API
//!   service, `scripts/containers service start`): the same argv less the log driver, the
//!   same `inspect` fields (a host pid in `.State.Pid`, a `/` before `.Name`). Its client
//!   is not the container's parent, so nothing of the container inherits the liveness lock
//!   (see [`crate::liveness`]'s container notes), and `docker run --rm` on Podman's socket
//!   loses the exit code. Where the engine is (`DOCKER_HOST`, `CONTAINER_HOST`,
//!   `CONTAINERS_CONF`) comes from the environment of corral's commands, the same for the
//!   launch and every later `inspect`/`stop`; a worker's env may not set it
//!   ([`args::ENGINE_CLIENT_ENV`]).
//!
//! [`args`] builds the `run` argv from a [`WorkerType`](crate::policy::WorkerType) (pure, unit
//! tested); [`engine`] runs every other engine command (argv through
//! [`crate::process::command`], never a shell, each with a timeout); [`cgroup`] samples CPU
//! and memory from the container's cgroup.

pub mod args;
pub mod cgroup;
pub mod control;
pub mod engine;

pub use args::{run_plan, RunPlan, RunRequest};
pub use control::{Found, Stop, Target};
pub use engine::{orphans, ContainerState, Engine, Listed};

use crate::error::{Error, Result};
use crate::spec::LaunchSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Label carrying the absolute home a container belongs to (doctor and cleanup list by it).
pub const LABEL_HOME: &str = "corral.home";
/// Label carrying the worker id.
pub const LABEL_WORKER: &str = "corral.worker_id";
/// Container names are this prefix plus the worker id.
pub const NAME_PREFIX: &str = "corral-";

/// The container name of a worker.
pub fn container_name(worker_id: &str) -> String {
    format!("{NAME_PREFIX}{worker_id}")
}

/// Where the launch path asks the engine to write the container id (`--cidfile`): beside
/// the worker's log. The engine refuses an existing file, so a relaunch removes it first.
pub fn cidfile_path(home: &crate::Home, worker_id: &str) -> PathBuf {
    home.worker_log_dir(worker_id).join("container.cid")
}

/// Where conmon (Podman's per-container monitor) leaves its `oom` marker when the kernel's
/// OOM killer ended the container's worker: its working directory, which the launch makes
/// the worker's log directory. Podman 4.3 on a cgroup v1 host does not set `OOMKilled`, so
/// this file is how a memory-limit kill is told apart from any other exit 137.
pub fn oom_marker_path(home: &crate::Home, worker_id: &str) -> PathBuf {
    home.worker_log_dir(worker_id).join("oom")
}

/// The spec's `launch.container`: the engine and image a container worker was started with,
/// so a restart starts the same image through the same engine (DESIGN §6 S7). The rest of
/// the container's settings are the type's, read at each launch like its `env`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchContainer {
    /// `podman` or `docker`.
    pub engine: String,
    pub image: String,
}

/// Key of the container block inside a spec's `launch`.
pub const LAUNCH_KEY: &str = "container";

/// The container a spec's launch asks for, if any.
pub fn launch_container(l: &LaunchSpec) -> Option<LaunchContainer> {
    serde_json::from_value(l.extra.get(LAUNCH_KEY)?.clone()).ok()
}

/// Records the container in a launch block.
pub fn set_launch_container(l: &mut LaunchSpec, c: &LaunchContainer) {
    if let Ok(v) = serde_json::to_value(c) {
        l.extra.insert(LAUNCH_KEY.into(), v);
    }
}

/// Whether an `execution_mode` asks for a container: `direct` (or none) is a plain process,
/// `container` and its seed alias `docker` a container; anything else is refused (exit 6).
pub fn is_container_mode(mode: Option<&str>) -> Result<bool> {
    match mode.map(str::trim) {
        None | Some("") | Some("direct") => Ok(false),
        Some("container") | Some("docker") => Ok(true),
        Some(other) => Err(Error::Invalid(format!(
            "unknown execution_mode {other:?}: use direct or container (docker is an alias)"
        ))),
    }
}

/// The policy key naming the engine of container types that name none
/// (`CORRAL_HEARTBEAT__CONTAINER_ENGINE=docker` in the environment works too).
pub const POLICY_ENGINE_KEY: &str = "container_engine";

/// The policy's `container_engine`, when it sets one.
pub fn policy_engine(home: &crate::Home) -> Result<Option<String>> {
    let p = crate::policy::HeartbeatPolicy::load(home)?;
    Ok(p.extra
        .get(POLICY_ENGINE_KEY)
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

/// The engines the home's container workers use: those of its container worker types (the
/// type's `engine`, else the policy's `container_engine`, else Podman). Empty for a home
/// without container types, so cleanup and doctor never start an engine for nothing.
pub fn engines_in_use(home: &crate::Home) -> Vec<EngineKind> {
    let Ok(types) = crate::policy::WorkerTypes::load(home) else {
        return Vec::new();
    };
    let default = || policy_engine(home).ok().flatten();
    let mut out = Vec::new();
    for t in types.types.values() {
        if !is_container_mode(t.execution_mode.as_deref()).unwrap_or(false) {
            continue;
        }
        let kind = match &t.engine {
            Some(e) => EngineKind::parse(Some(e)),
            None => EngineKind::parse(default().as_deref()),
        };
        if let Ok(k) = kind {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// The container engines corral drives. Both take the same `run`/`inspect`/`stop` argv;
/// Podman alone has the `passthrough` log driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Podman,
    Docker,
}

impl EngineKind {
    /// Parses an `engine` setting; none means Podman.
    pub fn parse(s: Option<&str>) -> Result<EngineKind> {
        match s.map(str::trim) {
            None | Some("") | Some("podman") => Ok(EngineKind::Podman),
            Some("docker") => Ok(EngineKind::Docker),
            Some(other) => Err(Error::Invalid(format!(
                "unknown container engine {other:?}: use podman or docker"
            ))),
        }
    }

    /// The engine's command name (looked up on `PATH`).
    pub fn program(self) -> &'static str {
        match self {
            EngineKind::Podman => "podman",
            EngineKind::Docker => "docker",
        }
    }
}

/// The worker id a container's name stands for, when it is one of ours.
pub fn worker_of_name(name: &str) -> Option<&str> {
    name.trim_start_matches('/').strip_prefix(NAME_PREFIX)
}

/// Absolute form of the home, as it is mounted and labelled (the same string everywhere,
/// so a label filter finds every container of this home).
pub fn home_label(home: &Path) -> String {
    std::path::absolute(home)
        .unwrap_or_else(|_| home.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_engines_parse() {
        assert!(!is_container_mode(None).unwrap());
        assert!(!is_container_mode(Some("direct")).unwrap());
        assert!(is_container_mode(Some("container")).unwrap());
        assert!(is_container_mode(Some("docker")).unwrap());
        assert_eq!(is_container_mode(Some("vm")).unwrap_err().exit_code(), 6);
        assert_eq!(EngineKind::parse(None).unwrap(), EngineKind::Podman);
        assert_eq!(
            EngineKind::parse(Some("docker")).unwrap().program(),
            "docker"
        );
        assert!(EngineKind::parse(Some("lxc")).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(container_name("worker-a-1"), "corral-worker-a-1");
        assert_eq!(worker_of_name("corral-worker-a-1"), Some("worker-a-1"));
        assert_eq!(worker_of_name("/corral-w"), Some("w"));
        assert_eq!(worker_of_name("other"), None);
        let (_d, home) = crate::home::test_home();
        let cid = cidfile_path(&home, "w1");
        assert!(cid.starts_with(home.worker_log_dir("w1")));
        assert!(Path::new(&home_label(Path::new("rel/home"))).is_absolute());
    }
}
