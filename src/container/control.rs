//! What the rest of corral does to a worker's container, each through the engine and each
//! behind the container form of DESIGN §6 S2 (only our own processes get signals):
//!
//! - **identity**: the container id the launch read from `--cidfile`, recorded in the spec's
//!   `process.container.id`, as a start time pins a pid. Without an id (a launch that never
//!   saw the container created) the name `corral-<worker_id>` is used;
//! - **proof**: the labels corral's launch path set, `corral.home=<this home>` and
//!   `corral.worker_id=<id>`. A container that lacks them (another home's worker with the
//!   same id, or anything named like ours by hand) is never stopped or removed.
//!
//! The engine does the signalling (`stop -t grace`: TERM, the grace period, KILL), since
//! the worker is PID 1 of its own namespace (or the child of the engine's init there) and
//! only the engine knows its exit code.

use super::{home_label, ContainerState, Engine, EngineKind, LABEL_HOME, LABEL_WORKER};
use crate::error::Result;
use crate::process::ProcessInfo;
use crate::spec::WorkerSpec;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which container of which engine a worker runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: EngineKind,
    pub name: String,
    /// The container id recorded at launch, when it was seen.
    pub id: Option<String>,
}

impl Target {
    /// The container of a recorded process (`process.container`).
    pub fn of_process(p: &ProcessInfo) -> Option<Target> {
        let c = p.container.as_ref()?;
        Some(Target {
            kind: EngineKind::parse(Some(&c.engine)).ok()?,
            name: c.name.clone(),
            id: c.id.clone().filter(|i| !i.is_empty()),
        })
    }

    /// The container a worker's spec says it runs (or is being started) in: its recorded
    /// process, else its launch (a worker whose container is still starting).
    pub fn of_spec(s: &WorkerSpec) -> Option<Target> {
        if let Some(t) = s.process.as_ref().and_then(Target::of_process) {
            return Some(t);
        }
        let lc = super::launch_container(s.launch.as_ref()?)?;
        Some(Target {
            kind: EngineKind::parse(Some(&lc.engine)).ok()?,
            name: super::container_name(&s.worker_id),
            id: None,
        })
    }

    /// What the engine is asked about: the id when known, else the name.
    pub fn reference(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// The engine (found on `PATH`, configured by the environment, e.g. `CONTAINERS_CONF`).
    pub fn engine(&self) -> Engine {
        Engine::new(self.kind)
    }
}

/// What the engine knows of a worker's container.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The container, carrying this home's and this worker's labels.
    Ours(ContainerState),
    /// A container answers to the reference but is not this worker's: never acted on.
    NotOurs(ContainerState),
    /// No such container.
    Missing,
}

/// True when `st` is worker `worker_id`'s container of `home` (and the recorded one, when an
/// id was recorded).
pub fn owned(st: &ContainerState, home: &Path, worker_id: &str, t: &Target) -> bool {
    st.label(LABEL_HOME) == Some(home_label(home).as_str())
        && st.label(LABEL_WORKER) == Some(worker_id)
        && t.id
            .as_deref()
            .is_none_or(|id| st.id.starts_with(id) || id.starts_with(&st.id))
}

/// Looks the worker's container up through the engine.
pub fn find(engine: &Engine, home: &Path, worker_id: &str, t: &Target) -> Result<Found> {
    Ok(match engine.inspect(t.reference())? {
        None => Found::Missing,
        Some(st) if owned(&st, home, worker_id, t) => Found::Ours(st),
        Some(st) => Found::NotOurs(st),
    })
}

/// What [`stop`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stop {
    /// The container as found.
    pub before: Option<ContainerState>,
    /// The container after the stop (its exit code), when it still exists.
    pub after: Option<ContainerState>,
    /// The engine was asked to stop a live container.
    pub signalled: bool,
    /// It outlived the grace period and the engine's SIGKILL ended it.
    pub killed: bool,
    /// A container answered to the reference but was not this worker's (left alone).
    pub not_ours: bool,
}

impl Stop {
    /// The final state: after the stop, else as found.
    pub fn last(&self) -> Option<&ContainerState> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

/// Stops the worker's container gracefully: the engine's stop signal (SIGTERM), `grace`,
/// then SIGKILL; a container that is still live after that (paused, or an engine that
/// ignored the stop) is killed. Nothing is asked of the engine for a container that is not
/// this worker's, and nothing for one that has exited already.
pub fn stop(home: &Path, worker_id: &str, t: &Target, grace: Duration) -> Result<Stop> {
    let engine = t.engine();
    let st = match find(&engine, home, worker_id, t)? {
        Found::Missing => return Ok(Stop::default()),
        Found::NotOurs(st) => {
            tracing::warn!(
                "{worker_id}: container {} is not this worker's (labels {:?}); not stopped",
                st.name,
                st.labels
            );
            return Ok(Stop {
                not_ours: true,
                ..Default::default()
            });
        }
        Found::Ours(st) => st,
    };
    if !st.is_live() {
        return Ok(Stop {
            before: Some(st.clone()),
            after: Some(st),
            ..Default::default()
        });
    }
    // Stop by id: the one just checked, even if the name were taken meanwhile.
    let started = Instant::now();
    engine.stop(&st.id, grace)?;
    let took = started.elapsed();
    let mut after = engine.inspect(&st.id)?;
    if after.as_ref().is_some_and(ContainerState::is_live) {
        engine.kill(&st.id, "KILL")?;
        after = engine.wait_exit(&st.id, Duration::from_secs(10))?;
    }
    // The engine does not say whether its KILL was needed: an exit by SIGKILL (137) after
    // the whole grace period is one.
    let killed = took >= grace && after.as_ref().is_some_and(|a| a.exit_code == 137);
    Ok(Stop {
        before: Some(st),
        after,
        signalled: true,
        killed,
        not_ours: false,
    })
}

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// `rm -f` removed it (running or not).
    Removed,
    /// There was no such container.
    Missing,
    /// The container is not this worker's: left alone.
    NotOurs,
}

/// Where [`remove`] keeps a docker container's output, as its engine recorded it, beside
/// the worker's log.
pub fn kept_log_path(home: &Path, worker_id: &str) -> PathBuf {
    crate::Home::at(home)
        .worker_log_dir(worker_id)
        .join("container.log")
}

/// Before a docker container goes: its output as the engine kept it, into
/// [`kept_log_path`]. The Docker API streams a container's output to its `run` client, so
/// after a SIGKILL of the client the rest of it reached only the engine (Podman's
/// `passthrough` driver writes `worker.log` itself and keeps nothing). Only where the
/// worker's log directory exists: no directory is made for a container no spec knew.
fn keep_docker_log(engine: &Engine, home: &Path, worker_id: &str, id: &str) {
    let path = kept_log_path(home, worker_id);
    if !path.parent().is_some_and(Path::is_dir) {
        return;
    }
    let kept = crate::store::open_log(&path).and_then(|f| engine.logs_to(id, &f));
    if let Err(e) = kept {
        tracing::warn!("{worker_id}: cannot keep the engine's log of container {id}: {e}");
    }
}

/// Removes the worker's container (`rm -f`: a running one is killed first). A docker
/// container's output is kept first ([`kept_log_path`]).
pub fn remove(home: &Path, worker_id: &str, t: &Target) -> Result<Removed> {
    let engine = t.engine();
    match find(&engine, home, worker_id, t)? {
        Found::Missing => Ok(Removed::Missing),
        Found::NotOurs(_) => Ok(Removed::NotOurs),
        Found::Ours(st) => {
            if t.kind == EngineKind::Docker {
                keep_docker_log(&engine, home, worker_id, &st.id);
            }
            Ok(if engine.remove(&st.id)? {
                Removed::Removed
            } else {
                Removed::Missing
            })
        }
    }
}

/// How a container's exit reads in a spec: its code and why. `oom` says the kernel's OOM
/// killer ended it (the engine's flag, conmon's marker or the cgroup's count).
pub fn exit_reason(st: &ContainerState, oom: bool) -> (i32, String) {
    let code = st.exit_code;
    let mut why = format!("container exited with code {code}");
    if oom || st.oom_killed {
        why.push_str(": killed by the kernel's OOM killer (its memory_limit was hit)");
    }
    (code, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ContainerInfo;

    fn state(id: &str, home: &str, worker: &str) -> ContainerState {
        let text = format!(
            "{id}\ncorral-{worker}\n{{\"corral.home\":\"{home}\",\"corral.worker_id\":\"{worker}\"}}\n{{\"Status\":\"running\",\"Running\":true,\"Pid\":7,\"ExitCode\":0}}"
        );
        super::super::engine::parse_inspect(&text).unwrap()
    }

    #[test]
    fn only_a_container_with_our_labels_and_id_is_ours() {
        let t = Target {
            kind: EngineKind::Podman,
            name: "corral-w1".into(),
            id: Some("abcdef".into()),
        };
        let h = Path::new("/srv/home");
        assert!(owned(&state("abcdef0123", "/srv/home", "w1"), h, "w1", &t));
        assert!(!owned(&state("abcdef0123", "/other", "w1"), h, "w1", &t));
        assert!(!owned(&state("abcdef0123", "/srv/home", "w2"), h, "w1", &t));
        assert!(
            !owned(&state("999999", "/srv/home", "w1"), h, "w1", &t),
            "a later container that took the name"
        );
        let by_name = Target { id: None, ..t };
        assert!(owned(
            &state("999999", "/srv/home", "w1"),
            h,
            "w1",
            &by_name
        ));
        assert_eq!(by_name.reference(), "corral-w1");
    }

    #[test]
    fn targets_come_from_the_process_or_the_launch() {
        let mut s = WorkerSpec::new("w1".into(), "t".into(), crate::time::now());
        assert_eq!(Target::of_spec(&s), None);
        let mut l = crate::spec::LaunchSpec {
            command: vec!["sh".into()],
            cwd: None,
            env: Default::default(),
            extra: Default::default(),
        };
        super::super::set_launch_container(
            &mut l,
            &super::super::LaunchContainer {
                engine: "docker".into(),
                image: "img".into(),
            },
        );
        s.launch = Some(l);
        let t = Target::of_spec(&s).unwrap();
        assert_eq!(
            (t.kind, t.name.as_str(), t.id),
            (EngineKind::Docker, "corral-w1", None)
        );
        s.process = Some(ProcessInfo {
            pid: 5,
            container: Some(ContainerInfo {
                engine: "podman".into(),
                name: "corral-w1".into(),
                id: Some("abc".into()),
                image: "img".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let t = Target::of_spec(&s).unwrap();
        assert_eq!((t.kind, t.reference()), (EngineKind::Podman, "abc"));
    }

    #[test]
    fn exit_reasons_name_the_oom_killer() {
        let mut st = state("a", "/h", "w");
        st.exit_code = 3;
        assert_eq!(
            exit_reason(&st, false),
            (3, "container exited with code 3".into())
        );
        st.exit_code = 137;
        let (code, why) = exit_reason(&st, true);
        assert_eq!(code, 137);
        assert!(why.contains("OOM killer"), "{why}");
    }
}
