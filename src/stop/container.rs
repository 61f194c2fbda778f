//! Stopping a container worker: [`super::stop_group`] for execution mode `container`. The
//! engine signals (`stop -t grace`: TERM, the grace period, KILL), and only a container that
//! carries this home's and this worker's labels, by the id its launch recorded
//! ([`crate::container::control`]: the container form of S2). Its exit code is the
//! engine's to tell, so a stop records it (`exit.source` `engine`).
//!
//! The liveness lock is held by the `ENGINE run` client (and Podman's conmon), which let go
//! of it once the container's exit is recorded; a holder still there after that is ended
//! like any process holding a worker's lock (holding it is its proof), so "stopped" means
//! nothing of the worker is left (S1). A docker worker's lock is its client's alone (the
//! engine's daemon runs the container), so a free lock says nothing of its container: the
//! engine's stop and its `inspect` afterwards are what say the container has exited.

use super::{lock_held, ProcessOutcome};
use crate::container::{self, control, ContainerState, Target};
use crate::error::Result;
use crate::home::Home;
use crate::process::{ProcessInfo, Proof};
use crate::spec::{self, ExitInfo, Located};
use crate::time;
use std::time::{Duration, Instant};

/// How long the client and conmon get, past the grace period, to let go of the liveness
/// lock after the container's end (they record its exit code first: ~0.4 s here).
const LOCK_SETTLE: Duration = Duration::from_secs(3);

/// The container a worker runs in: its recorded process's, or, before the process is
/// recorded (the container is still starting), the one its spec's launch asks for.
pub(super) fn target(home: &Home, id: &str, info: Option<&ProcessInfo>) -> Option<Target> {
    match info {
        Some(p) => Target::of_process(p),
        None => spec::load(home, id)
            .ok()
            .and_then(|l| Target::of_spec(&l.spec)),
    }
}

/// Stops the container through its engine, then whatever still holds the liveness lock.
/// Returns what was done and the container's last state (its exit code).
pub(super) fn stop(
    home: &Home,
    id: &str,
    t: &Target,
    grace: Duration,
) -> Result<(ProcessOutcome, Option<ContainerState>)> {
    let st = control::stop(home.root(), id, t, grace)?;
    let mut outcome = if st.not_ours {
        ProcessOutcome::Unproven
    } else if st.killed {
        ProcessOutcome::Killed
    } else if st.signalled {
        ProcessOutcome::Terminated
    } else {
        ProcessOutcome::Gone
    };
    let lock = home.alive_lock(id);
    if lock.exists() && !wait_lock_free(home, id, grace + LOCK_SETTLE) {
        let proof = Proof::new(id, &lock);
        if super::stop_lock_holders(home, id, &proof, grace, &mut outcome)? {
            tracing::warn!(
                "{id}: a process still holds {} after its container was stopped",
                lock.display()
            );
            return Ok((ProcessOutcome::Lingering, st.last().cloned()));
        }
    }
    Ok((outcome, st.last().cloned()))
}

/// Waits up to `limit` for the worker's liveness lock to come free.
fn wait_lock_free(home: &Home, id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !lock_held(home, id, false) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when the kernel's OOM killer ended the worker's container: conmon's marker in the
/// worker's log directory (or the engine's own flag, checked by the caller).
pub fn oom_marked(home: &Home, id: &str) -> bool {
    container::oom_marker_path(home, id).exists()
}

/// Records in a live spec how its container ended, with the engine's exit code: what a
/// stop (or a cleanup) saw. A failure recorded before keeps its reason; the code and the
/// signal sent are added.
pub(crate) fn note_exit(
    home: &Home,
    id: &str,
    reason: &str,
    outcome: ProcessOutcome,
    st: &ContainerState,
) -> Result<()> {
    if !st.has_exited() {
        return Ok(());
    }
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if !dir.is_live() {
        return Ok(());
    }
    let now = time::now();
    let (code, why) = control::exit_reason(st, oom_marked(home, id));
    match &mut spec.exit {
        Some(exit) => {
            exit.extra.insert("container_exit_code".into(), code.into());
        }
        None => {
            let mut e = ExitInfo::observed(&format!("{reason}: {why}"), Some(code), None, now);
            e.source = Some("engine".into());
            spec.exit = Some(e);
        }
    }
    if let (Some(exit), Some(sig)) = (spec.exit.as_mut(), outcome.signal()) {
        exit.extra.insert("terminated_by".into(), sig.into());
    }
    spec.normalize(now);
    spec::save(home, dir, &spec)
}
