//! Graceful stop and zombie cleanup (DESIGN.md §6 "Identity before signals", §5, §7).
//!
//! Both operations end processes that corral did not necessarily start in this run, so both
//! go through [`process::terminate`], which verifies the recorded identity (host, boot id,
//! pid start time) before any signal and only ever signals the worker's own process group.
//! The slow part (the grace period) runs *outside* the worker lock: holding the lock for
//! seconds would stall every heartbeat and the monitor for that worker. What makes this safe
//! is that each state change re-reads the spec under the lock (lifecycle::move_worker), so a
//! worker that completed or failed meanwhile is settled exactly once and its budget released
//! exactly once.
//!
//! `stop_worker` is also called by the heartbeat monitor (timeouts, idle stops), which is
//! why it lives in the library and not in the `stop-worker` binary.

use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle;
use crate::process;
use crate::spec::{self, ExitInfo, Located, Status, WorkerSpec};
use crate::time;
use std::time::Duration;

/// What happened to one worker's process during a stop or a cleanup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Termination {
    /// SIGTERM was sent to the (identity-verified) process group.
    pub signalled: bool,
    /// The group outlived the grace period and was sent SIGKILL.
    pub killed: bool,
}

/// The outcome of a successful stop.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The spec as recorded in `completed/`.
    pub spec: WorkerSpec,
    /// The status the worker had when the stop began.
    pub previous_status: Status,
    pub termination: Termination,
}

/// Stops one active worker: under the worker lock its status becomes `shutting_down`
/// (`worker_stopping`); the lock is released; its process group is terminated (identity
/// check, SIGTERM, `grace`, SIGKILL); then it is recorded stopped: `completed/` with
/// `reason`, budget released, `worker_stopped` with uptime and jobs processed.
///
/// A worker without a local process (another host, or none recorded) is just recorded
/// stopped. Exit 3 when there is no such worker, 5 when it is not in `active/`.
pub fn stop_worker(
    home: &Home,
    id: &str,
    grace: Duration,
    reason: &str,
) -> Result<crate::spec::WorkerSpec> {
    stop_worker_detailed(home, id, grace, reason).map(|s| s.spec)
}

/// [`stop_worker`], also telling what was done to the process (for `--format json`).
pub fn stop_worker_detailed(
    home: &Home,
    id: &str,
    grace: Duration,
    reason: &str,
) -> Result<Stopped> {
    let (spec, previous_status) = mark_shutting_down(home, id, grace, reason)?;
    let termination = match &spec.process {
        Some(info) => terminate(info, grace)?,
        None => Termination::default(),
    };
    note_exit(home, id, reason, termination)?;
    // The monitor may have seen the exit and moved the worker to zombie/ meanwhile: a stop
    // we asked for is still a stop, so it is settled from there too (once: move_worker
    // re-reads under the lock and releases the budget only on leaving the live set).
    let spec = lifecycle::record_stopped(home, id, reason, &[StateDir::Active, StateDir::Zombie])?;
    Ok(Stopped {
        spec,
        previous_status,
        termination,
    })
}

/// Sets `shutting_down` under the lock and emits `worker_stopping`. A worker already
/// shutting down (a stop that was interrupted, or a concurrent one) is stopped again: every
/// later step tolerates repetition.
fn mark_shutting_down(
    home: &Home,
    id: &str,
    grace: Duration,
    reason: &str,
) -> Result<(WorkerSpec, Status)> {
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if dir != StateDir::Active {
        return Err(Error::Conflict(format!(
            "worker {id} is {} (in {}/): only active workers can be stopped",
            spec.status,
            dir.name()
        )));
    }
    let previous = spec.status;
    let now = time::now();
    if previous != Status::ShuttingDown {
        spec.set_status(Status::ShuttingDown, reason, now);
    }
    spec.normalize(now);
    spec::save(home, StateDir::Active, &spec)?;
    events::emit(
        home,
        Event::new(
            EventType::WorkerStopping,
            format!("stopping {id}: {reason}"),
        )
        .worker(&spec)
        .with("reason", reason)
        .with("previous_status", previous.as_str())
        .with("grace_seconds", grace.as_secs_f64())
        .with(
            "pid",
            spec.process
                .as_ref()
                .map(|p| serde_json::Value::from(p.pid))
                .unwrap_or(serde_json::Value::Null),
        ),
    );
    Ok((spec, previous))
}

/// Terminates a worker's process group if (and only if) the recorded identity still names
/// a live local process (`process::terminate` checks it after opening a pidfd, so a pid
/// reused in between cannot be signalled).
fn terminate(info: &process::ProcessInfo, grace: Duration) -> Result<Termination> {
    let (signalled, killed) = process::terminate(info, grace)?;
    Ok(Termination { signalled, killed })
}

/// Records in the spec how the process ended (the signal that ended it), so the
/// post-mortem in `completed/` says whether the worker honoured SIGTERM.
fn note_exit(home: &Home, id: &str, reason: &str, t: Termination) -> Result<()> {
    if !t.signalled {
        return Ok(());
    }
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if !dir.is_live() || spec.exit.is_some() {
        return Ok(());
    }
    let signal = if t.killed {
        libc::SIGKILL
    } else {
        libc::SIGTERM
    };
    let now = time::now();
    spec.exit = Some(ExitInfo {
        code: None,
        signal: Some(signal),
        reason: reason.to_string(),
        at: now,
        extra: Default::default(),
    });
    spec.normalize(now);
    spec::save(home, dir, &spec)
}
