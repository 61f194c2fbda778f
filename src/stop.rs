//! Graceful stop of workers (DESIGN.md §6 "Identity before signals", §5, §7).
//!
//! A stop ends processes that corral did not necessarily start in this run, so every signal
//! goes through [`stop_group`]: the recorded identity (host, boot id, pid start time) must
//! match AND the process must carry proof of being that worker (`process::Proof`, S2), and
//! only the worker's own process group is signalled. A leader that has exited is not the end
//! of a worker: while its liveness lock is held, the rest of its group (and any other lock
//! holder) is stopped too (S1), instead of reporting "already gone".
//!
//! The slow part (the grace period) runs *outside* the worker lock: holding the lock for
//! seconds would stall every heartbeat and the monitor for that worker. What makes this safe
//! is that each state change re-reads the spec under the lock (lifecycle::move_worker), so a
//! worker that completed or failed meanwhile is settled exactly once and its budget released
//! exactly once. A worker another stopper finished first is a success, not a conflict.
//!
//! `stop_worker` and `stop_group` are also called by the heartbeat monitor (timeouts, idle
//! stops, a leader that exited), which is why they live in the library.
//!
//! A container worker is stopped through its engine instead ([`container`]): the engine's
//! `stop -t grace` on the container its launch recorded, and its exit code recorded.

pub mod container;

use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle;
use crate::process::{self, Identity, ProcessInfo, Proof};
use crate::spec::{self, ExitInfo, Located, Status, WorkerSpec};
use crate::time;
use std::time::Duration;

/// What was done to a worker's process during a stop or a cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessOutcome {
    /// The spec records no process (never launched by corral).
    NoProcess,
    /// The process belongs to another host or boot: its pid means nothing here.
    Foreign,
    /// The recorded process is gone, or its pid now names another process: nothing signalled.
    Gone,
    /// SIGTERM to the verified process group ended it within the grace period.
    Terminated,
    /// The group outlived the grace period and was sent SIGKILL.
    Killed,
    /// A live process has the recorded identity but no proof of being this worker (a copied
    /// or forged spec): it was not signalled.
    Unproven,
    /// The leader had exited, but its group still held the liveness lock: SIGTERM to the
    /// group ended it within the grace period.
    GroupTerminated,
    /// The leader had exited and the rest of its group outlived the grace period: SIGKILL.
    GroupKilled,
    /// Something of the worker still holds its liveness lock after everything corral may
    /// signal was stopped; it needs a human.
    Lingering,
    /// Another stopper had already stopped the worker (concurrent stops).
    AlreadyStopped,
}

impl ProcessOutcome {
    /// True when a signal was sent.
    pub fn signalled(self) -> bool {
        matches!(
            self,
            ProcessOutcome::Terminated
                | ProcessOutcome::Killed
                | ProcessOutcome::GroupTerminated
                | ProcessOutcome::GroupKilled
        )
    }

    /// The last signal we sent to end the process (group), when we sent one.
    pub fn signal(self) -> Option<i32> {
        match self {
            ProcessOutcome::Terminated | ProcessOutcome::GroupTerminated => Some(libc::SIGTERM),
            ProcessOutcome::Killed | ProcessOutcome::GroupKilled => Some(libc::SIGKILL),
            _ => None,
        }
    }

    /// Words for tables.
    pub fn describe(self) -> &'static str {
        match self {
            ProcessOutcome::NoProcess => "no process",
            ProcessOutcome::Foreign => "other host (not signalled)",
            ProcessOutcome::Gone => "already gone",
            ProcessOutcome::Terminated => "SIGTERM",
            ProcessOutcome::Killed => "SIGKILL after grace",
            ProcessOutcome::Unproven => "not this worker's (not signalled)",
            ProcessOutcome::GroupTerminated => "leader gone; group SIGTERM",
            ProcessOutcome::GroupKilled => "leader gone; group SIGKILL after grace",
            ProcessOutcome::Lingering => "still holds the liveness lock",
            ProcessOutcome::AlreadyStopped => "stopped by another stopper",
        }
    }
}

/// The outcome of a successful stop.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The spec as recorded in `completed/`.
    pub spec: WorkerSpec,
    /// The status the worker had when the stop began.
    pub previous_status: Status,
    pub process: ProcessOutcome,
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
    let reason = lifecycle::bounded_text(reason);
    let reason = reason.as_str();
    let (spec, previous_status) = match mark_shutting_down(home, id, grace, reason) {
        Ok(x) => x,
        Err(e @ Error::Conflict(_)) => return already_stopped(home, id).ok_or(e),
        Err(e) => return Err(e),
    };
    let (process, last) = stop_processes(home, id, spec.process.as_ref(), grace)?;
    match &last {
        Some(st) => container::note_exit(home, id, reason, process, st)?,
        None => note_exit(home, id, reason, process)?,
    }
    // The monitor may have seen the exit and moved the worker to zombie/ meanwhile: a stop
    // we asked for is still a stop, so it is settled from there too (once: move_worker
    // re-reads under the lock and releases the budget only on leaving the live set).
    let spec =
        match lifecycle::record_stopped(home, id, reason, &[StateDir::Active, StateDir::Zombie]) {
            Ok(s) => s,
            Err(e @ Error::Conflict(_)) => return already_stopped(home, id).ok_or(e),
            Err(e) => return Err(e),
        };
    Ok(Stopped {
        spec,
        previous_status,
        process,
    })
}

/// A worker that another stopper stopped first (its last move into `completed/` came from
/// `shutting_down`): for this stopper, a success.
fn already_stopped(home: &Home, id: &str) -> Option<Stopped> {
    let loc = spec::load(home, id).ok()?;
    if !matches!(loc.dir, StateDir::Completed | StateDir::Archived) {
        return None;
    }
    let last = loc
        .spec
        .history
        .iter()
        .rev()
        .find(|t| t.to == "completed")?;
    (last.from.as_deref() == Some(Status::ShuttingDown.as_str())).then(|| Stopped {
        previous_status: loc.spec.status,
        spec: loc.spec,
        process: ProcessOutcome::AlreadyStopped,
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
        .with("pid", spec.process.as_ref().map(|p| p.pid)),
    );
    Ok((spec, previous))
}

/// Ends what lives of a worker: the process group of its recorded leader, and after the
/// leader has exited whatever still holds its liveness lock (the rest of its group, or a
/// child that left it). Nothing is signalled without the proof of S2 (identity AND
/// `CORRAL_WORKER_ID=<id>` or an open descriptor on `.locks/alive/<id>.lock`), nothing for a
/// worker without a recorded process, nothing on another host. SIGTERM, `grace`, SIGKILL.
///
/// The monitor calls this for a leader that exited while its group holds the lock
/// (`leader_exited`, S1) before it records the failure, requeues the task or restarts.
pub fn stop_group(
    home: &Home,
    id: &str,
    info: Option<&ProcessInfo>,
    grace: Duration,
) -> Result<ProcessOutcome> {
    stop_processes(home, id, info, grace).map(|(o, _)| o)
}

/// [`stop_group`], also returning a container worker's last state as its engine reports it
/// (its exit code), for the record.
pub fn stop_processes(
    home: &Home,
    id: &str,
    info: Option<&ProcessInfo>,
    grace: Duration,
) -> Result<(ProcessOutcome, Option<crate::container::ContainerState>)> {
    if info.is_none_or(|p| p.is_local()) {
        if let Some(t) = container::target(home, id, info) {
            return container::stop(home, id, &t, grace);
        }
    }
    stop_process_group(home, id, info, grace).map(|o| (o, None))
}

/// The direct-mode stop of [`stop_group`].
fn stop_process_group(
    home: &Home,
    id: &str,
    info: Option<&ProcessInfo>,
    grace: Duration,
) -> Result<ProcessOutcome> {
    let recovered;
    let info = match info {
        Some(info) => info,
        None => match recover_launch(home, id) {
            Some(r) => {
                recovered = r;
                &recovered
            }
            None => return Ok(ProcessOutcome::NoProcess),
        },
    };
    if !info.is_local() {
        return Ok(ProcessOutcome::Foreign);
    }
    let proof = Proof::new(id, home.alive_lock(id));
    let mut outcome = match info.check() {
        Identity::Alive if proof.carried_by(info.pid) => {
            match process::terminate(info, &proof, grace)? {
                (false, _) => ProcessOutcome::Gone,
                (true, false) => ProcessOutcome::Terminated,
                (true, true) => ProcessOutcome::Killed,
            }
        }
        Identity::Alive => ProcessOutcome::Unproven,
        _ => ProcessOutcome::Gone,
    };
    if outcome.signalled() && !lock_held(home, id, true) {
        return Ok(outcome);
    }
    // The leader is gone (or was never ours); a free lock means every process that had it
    // is gone too. A missing lock file (an older worker) tells nothing: look at the group.
    let lock = home.alive_lock(id);
    let lock_free = lock.exists() && !lock_held(home, id, false);
    if lock_free {
        return Ok(outcome);
    }
    if let Some(pgid) = info.pgid.filter(|g| *g > 1) {
        let g = process::stop_group(pgid, &proof, grace)?;
        if g.signalled && !outcome.signalled() {
            outcome = if g.killed {
                ProcessOutcome::GroupKilled
            } else {
                ProcessOutcome::GroupTerminated
            };
        }
        if g.signalled && !g.unproven.is_empty() {
            tracing::warn!(
                "{id}: members {:?} of its group carry no proof of being the worker's; they were in its group and got its signals",
                g.unproven
            );
        }
    }
    if lock.exists() && lock_held(home, id, true) {
        // A process that left the group but kept the lock: holding it is the proof.
        if stop_lock_holders(home, id, &proof, grace, &mut outcome)? {
            tracing::warn!(
                "{id}: a process of this worker still holds {} and could not be stopped",
                lock.display()
            );
            return Ok(ProcessOutcome::Lingering);
        }
    }
    Ok(outcome)
}

/// The process of a worker with none on record that its launcher started but died before
/// recording (a SIGKILL between the launch and the write): found by its proof (the
/// liveness lock *and* `CORRAL_WORKER_ID`, which only corral's launch gives a process) and
/// recorded now, so it can be stopped, restarted from and told about. Without this the
/// worker ran on with nobody able to stop it, while every stop reported "no process".
/// The record is written when the worker lock is free at once (the monitor never waits);
/// the stop goes ahead either way.
pub(crate) fn recover_launch(home: &Home, id: &str) -> Option<ProcessInfo> {
    let pid = process::unrecorded_launch(&Proof::new(id, home.alive_lock(id)))?;
    let mut info = ProcessInfo::capture(pid, Vec::new()).ok()?;
    let recorded = spec::try_lock(home, id).ok().flatten().and_then(|_g| {
        let mut loc = spec::load(home, id).ok()?;
        if loc.spec.process.is_some() || !loc.dir.is_live() {
            return None;
        }
        if let Some(l) = &loc.spec.launch {
            info.command = l.command.clone();
            info.cwd = l.cwd.clone();
        }
        loc.spec.process = Some(info.clone());
        loc.spec.normalize(time::now());
        spec::save(home, loc.dir, &loc.spec).ok()?;
        Some(loc.spec)
    });
    let message = format!(
        "{id}: pid {pid} holds its liveness lock and carries its id, but its launcher died \
         before recording it; {}",
        if recorded.is_some() {
            "recorded it now"
        } else {
            "stopping it without a record"
        }
    );
    tracing::warn!("{message}");
    let mut ev = Event::new(EventType::WorkerStarting, message)
        .with("pid", pid)
        .with("recovered", true);
    match &recorded {
        Some(s) => ev = ev.worker(s),
        None => ev.worker_id = Some(id.to_string()),
    }
    crate::events::emit(home, ev);
    Some(info)
}

/// True when something of the worker holds its liveness lock. Right after a group kill the
/// last members may still be exiting, so with `settle` a held lock gets a second to go.
/// Stops every process that still holds `id`'s liveness lock (TERM, `grace`, KILL; each
/// proven by `proof` first) and updates `outcome` when it had signalled nothing yet. True
/// when the lock is still held afterwards.
pub(crate) fn stop_lock_holders(
    home: &Home,
    id: &str,
    proof: &Proof,
    grace: Duration,
    outcome: &mut ProcessOutcome,
) -> Result<bool> {
    for pid in process::lock_holders(&home.alive_lock(id)) {
        if let (true, killed) = process::terminate_pid(pid, proof, grace)? {
            if !outcome.signalled() {
                *outcome = if killed {
                    ProcessOutcome::GroupKilled
                } else {
                    ProcessOutcome::GroupTerminated
                };
            }
        }
    }
    Ok(lock_held(home, id, true))
}

fn lock_held(home: &Home, id: &str, settle: bool) -> bool {
    let path = home.alive_lock(id);
    let free = || process::alive_lock_free(&path).unwrap_or(true);
    if free() {
        return false;
    }
    if settle {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if free() {
                return false;
            }
        }
    }
    true
}

/// Records in the spec how the stop ended the process, so the post-mortem in `completed/`
/// or `archived/` says whether the worker honoured SIGTERM. Only a SIGKILL of the leader is
/// its known cause of death; after a SIGTERM the worker may have exited any way it liked,
/// and the stopper is not its parent, so the exit status is recorded as not known.
pub(crate) fn note_exit(
    home: &Home,
    id: &str,
    reason: &str,
    outcome: ProcessOutcome,
) -> Result<()> {
    let Some(signal) = outcome.signal() else {
        return Ok(());
    };
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if !dir.is_live() {
        return Ok(());
    }
    let now = time::now();
    match &mut spec.exit {
        // A failure already recorded (by the worker or the monitor) keeps its reason.
        Some(exit) => {
            exit.extra
                .insert("terminated_by".into(), serde_json::Value::from(signal));
        }
        None => {
            let mut exit = if outcome == ProcessOutcome::Killed {
                let mut e = ExitInfo::observed(reason, None, Some(signal), now);
                e.source = Some("stopper".into());
                e
            } else {
                ExitInfo::unobserved(
                    reason,
                    "ended after the stopper's signal; its exit status is visible only to its parent",
                    now,
                )
            };
            exit.extra
                .insert("terminated_by".into(), serde_json::Value::from(signal));
            spec.exit = Some(exit);
        }
    }
    spec.normalize(now);
    spec::save(home, dir, &spec)
}

/// Which active workers a stop applies to. Selectors combine as "and"; explicit ids are
/// taken as given (an unknown or inactive id is reported, not skipped).
#[derive(Debug, Clone, Default)]
pub struct StopSelection {
    pub ids: Vec<String>,
    pub all: bool,
    pub session: Option<String>,
    pub worker_type: Option<String>,
}

/// One worker's line in a stop report.
#[derive(Debug)]
pub struct StopResult {
    pub worker_id: String,
    pub outcome: Result<Stopped>,
}

/// Resolves a selection to worker ids, in a stable order.
pub fn select(home: &Home, sel: &StopSelection) -> Result<Vec<String>> {
    if !sel.ids.is_empty() {
        return Ok(sel.ids.clone());
    }
    if !sel.all && sel.session.is_none() && sel.worker_type.is_none() {
        return Err(Error::Usage(
            "say which workers to stop: IDs, --all, --session S or --type T".into(),
        ));
    }
    lifecycle::ids_in(home, StateDir::Active, |s| {
        sel.session
            .as_deref()
            .is_none_or(|x| s.session_id.as_deref() == Some(x))
            && sel
                .worker_type
                .as_deref()
                .is_none_or(|t| s.worker_type == t)
    })
}

/// Stops the selected workers in parallel (so fifty workers take one grace period, not
/// fifty), with `pool_stopping` / `pool_stopped` around them when a session is stopped.
/// One worker's failure does not stop the others: each result is reported.
pub fn stop_many(
    home: &Home,
    sel: &StopSelection,
    grace: Duration,
    reason: &str,
) -> Result<Vec<StopResult>> {
    let ids = select(home, sel)?;
    let pool = sel
        .ids
        .is_empty()
        .then_some(sel.session.as_deref())
        .flatten();
    if let Some(session) = pool {
        events::emit(
            home,
            Event::new(
                EventType::PoolStopping,
                format!("stopping {} worker(s) of session {session}", ids.len()),
            )
            .session(Some(session))
            .with("count", ids.len())
            .with("worker_ids", ids.clone())
            .with("reason", reason),
        );
    }
    let started = std::time::Instant::now();
    let outcomes = par_map(&ids, MAX_PARALLEL, |id| {
        stop_worker_detailed(home, id, grace, reason)
    });
    let results: Vec<StopResult> = ids
        .into_iter()
        .zip(outcomes)
        .map(|(worker_id, outcome)| StopResult { worker_id, outcome })
        .collect();
    if let Some(session) = pool {
        let stopped = results.iter().filter(|r| r.outcome.is_ok()).count();
        events::emit(
            home,
            Event::new(
                EventType::PoolStopped,
                format!(
                    "session {session}: {stopped} of {} worker(s) stopped",
                    results.len()
                ),
            )
            .session(Some(session))
            .with("stopped", stopped)
            .with("failed", results.len() - stopped)
            .with("duration_seconds", started.elapsed().as_secs_f64())
            .with("reason", reason),
        );
    }
    Ok(results)
}

/// Workers handled at once. Each thread mostly sleeps in `poll` on a pidfd during the grace
/// period, so this bounds threads and open descriptors, not CPU.
const MAX_PARALLEL: usize = 64;

/// Maps `f` over `items` on up to `max` scoped threads, keeping the input order.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    max: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let threads = items.len().min(max.max(1));
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_order_and_runs_everything() {
        let items: Vec<u32> = (0..200).collect();
        let out = par_map(&items, 8, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(par_map(&Vec::<u32>::new(), 8, |x| *x).is_empty());
    }

    #[test]
    fn outcomes_say_what_was_signalled() {
        assert!(ProcessOutcome::GroupKilled.signalled());
        assert_eq!(
            ProcessOutcome::GroupTerminated.signal(),
            Some(libc::SIGTERM)
        );
        assert!(!ProcessOutcome::Unproven.signalled());
        assert!(!ProcessOutcome::AlreadyStopped.signalled());
        assert_eq!(ProcessOutcome::Lingering.signal(), None);
    }
}
