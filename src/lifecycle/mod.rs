//! The one place where a worker changes state: spawn, first beat, beats, completion,
//! failure, zombie, stop and archive. Every binary and the monitor call these functions, so
//! each transition, its budget effect and its event are written once.
//!
//! Lock order, everywhere: worker lock(s) → budget lock → events lock. A process holding the
//! budget lock never waits for a worker lock: brand-new generated ids are only `try_lock`ed
//! (a held lock means the id is taken, and another is drawn), so no cycle can form.
//!
//! Spawning (and what a launch needs) lives in `spawn` and `plan`; this file holds the
//! transitions of a worker that exists.

mod container;
mod plan;
mod spawn;

pub use container::START_TIMEOUT;
pub use plan::{parse_env_pairs, RESERVED_ENV};
pub use spawn::{
    reuse, spawn, unreuse, write_from_spec, FromSpec, Parent, Reused, SpawnRequest, MAX_COUNT,
};

use crate::budget;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::process;
use crate::spec::{self, ExitInfo, Located, Status, WorkerSpec};
use crate::store;
use crate::time::{self, Timestamp};
use serde_json::{json, Value};
use std::time::Duration;

/// Longest free text (message, summary, error) recorded in a spec; longer text is cut with
/// a marker, so one report can never push a spec past what readers accept (S9).
pub const MAX_TEXT_BYTES: usize = 4096;

/// `text` cut to [`MAX_TEXT_BYTES`] at a character boundary, with a marker saying so.
pub fn bounded_text(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated {} bytes]", &text[..end], text.len() - end)
}

/// What a heartbeat reports.
#[derive(Debug, Clone, Default)]
pub struct Beat {
    pub status: Option<Status>,
    pub tokens_used: Option<u64>,
    pub tokens_add: Option<u64>,
    pub task_id: Option<String>,
    pub message: Option<String>,
    pub progress: Option<f64>,
    /// Jobs finished since the last report, added to the spec's `jobs_processed` (seed 000's
    /// "jobs per worker").
    pub jobs_add: Option<u64>,
}

/// Records a heartbeat. The first beat confirms a pending worker alive (`worker_ready`).
/// Exit 5 when the worker is no longer active, so the worker knows to stop; a beat can never
/// bring a spec back into `active/`, because it is written only where the spec is found
/// under the worker lock.
pub fn heartbeat(home: &Home, id: &str, beat: &Beat) -> Result<WorkerSpec> {
    if let Some(st) = beat.status {
        if !matches!(st, Status::Running | Status::Idle) {
            return Err(Error::Usage("--status takes running or idle".into()));
        }
    }
    if let Some(t) = &beat.task_id {
        crate::id::validate("task", t)?;
    }
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if dir != StateDir::Active {
        return Err(Error::Conflict(format!(
            "worker {id} is {} (in {}/): it is no longer active and should stop",
            spec.status,
            dir.name()
        )));
    }
    if !spec.status.fits(StateDir::Active) {
        // Ended, but the move out of active/ was cut short (a crash mid-stop, a hand edit):
        // the monitor finishes the move; the worker must stop all the same.
        return Err(Error::Conflict(format!(
            "worker {id} is {} (its move out of active/ is unfinished): it is no longer \
             active and should stop",
            spec.status
        )));
    }
    let now = time::now();
    let mut evs = Vec::new();
    let first = spec.status == Status::Pending;
    if first {
        let to = beat.status.unwrap_or(Status::Running);
        spec.set_status(to, "first heartbeat", now);
        spec.started_at = Some(now);
        evs.push(Event::new(EventType::WorkerReady, format!("{id} is {to}")).worker(&spec));
    } else if let Some(to) = beat.status {
        if spec.status != Status::ShuttingDown && spec.status != to {
            spec.set_status(to, "heartbeat", now);
        }
    }
    if let Some(t) = &beat.task_id {
        spec.task_id = Some(t.clone());
    }
    let before = spec.token_budget.used;
    if let Some(n) = beat.tokens_used {
        spec.token_budget.used = n;
    }
    if let Some(n) = beat.tokens_add {
        spec.token_budget.used = spec.token_budget.used.saturating_add(n);
    }
    let alloc = spec.token_budget.allocated;
    if spec.token_budget.used > alloc && before <= alloc {
        evs.push(
            Event::new(
                EventType::BudgetExceeded,
                format!(
                    "{id} used {} of {alloc} allocated tokens",
                    spec.token_budget.used
                ),
            )
            .worker(&spec)
            .with("used", spec.token_budget.used)
            .with("allocated", alloc),
        );
    }
    if let Some(n) = beat.jobs_add {
        let total = jobs_processed(&spec).saturating_add(n);
        spec.extra.insert("jobs_processed".into(), total.into());
    }
    let hb = &mut spec.heartbeat;
    hb.last_seen = Some(now);
    hb.sequence = hb.sequence.saturating_add(1);
    if let Some(m) = &beat.message {
        hb.message = Some(bounded_text(m));
    }
    if let Some(p) = beat.progress {
        hb.progress = Some(p.clamp(0.0, 100.0));
    }
    // The monitor marks a late worker in `heartbeat.alert`; the beat that answers clears it.
    if let Some(level) = hb.extra.remove("alert") {
        if hb.health.as_deref() == Some("unresponsive") {
            hb.health = Some(spec::health_band(hb.health_score).into());
        }
        evs.push(
            Event::new(
                EventType::HeartbeatResumed,
                format!("{id} is beating again"),
            )
            .worker(&spec)
            .with("after", level),
        );
    }
    spec.normalize(now);
    spec::save(home, StateDir::Active, &spec)?;
    events::emit_many(home, &evs);
    if spec.status == Status::ShuttingDown {
        return Err(Error::Conflict(format!(
            "worker {id} is shutting down: finish and exit"
        )));
    }
    Ok(spec)
}

/// A state move request for [`move_worker`].
pub struct Move<'a> {
    /// Directories the worker may be in for this move (else exit 5).
    pub from: &'a [StateDir],
    /// Target directory.
    pub to: StateDir,
    /// New status, or keep the current one (archiving).
    pub status: Option<Status>,
    pub reason: &'a str,
}

/// Moves a worker between state directories under its lock, re-reading it first, and
/// releases its budget reservation when it leaves the live set. `mutate` fills in what the
/// transition records (exit, completed_at, …).
pub fn move_worker(
    home: &Home,
    id: &str,
    mv: &Move<'_>,
    mutate: impl FnOnce(&mut WorkerSpec),
) -> Result<(StateDir, WorkerSpec, bool)> {
    let _g = spec::lock(home, id)?;
    let Located { dir, mut spec, .. } = spec::load(home, id)?;
    if !mv.from.contains(&dir) {
        return Err(Error::Conflict(format!(
            "worker {id} is {} (in {}/): cannot move it to {}/",
            spec.status,
            dir.name(),
            mv.to.name()
        )));
    }
    let now = time::now();
    match mv.status {
        Some(st) => spec.set_status(st, mv.reason, now),
        None => spec.history.push(spec::Transition::new(
            now,
            Some(dir.name()),
            mv.to.name(),
            mv.reason,
        )),
    }
    mutate(&mut spec);
    spec.normalize(now);
    let releases = dir.is_live() && !mv.to.is_live();
    let clean_end = mv.to == StateDir::Completed
        && spec.status == Status::Completed
        && spec.exit.as_ref().and_then(|e| e.code) == Some(0);
    if dir == StateDir::Active && mv.to != StateDir::Active && !clean_end {
        // It may have died between a task's move and that move's count update: the next
        // queue maintenance recounts the pending names. Noted here, by whoever moves it
        // (monitor, `--once`, stop-worker, cleanup), not only by a daemon that saw it go.
        crate::queue::counts::owe_recount(home);
    }
    if releases {
        if spec.completed_at.is_none() {
            spec.completed_at = Some(now);
        }
        let mut b = budget::lock(home)?;
        spec::save_and_move(home, dir, mv.to, &spec)?;
        b.budget
            .release(spec.token_budget.allocated, spec.token_budget.used);
        b.save()?;
    } else {
        spec::save_and_move(home, dir, mv.to, &spec)?;
    }
    Ok((dir, spec, releases))
}

/// Writes the events of a state move, followed by `budget_released` when the move let go
/// of the worker's reservation ([`move_worker`]'s third result).
pub fn emit_move(home: &Home, mut evs: Vec<Event>, spec: &WorkerSpec, released: bool) {
    if released {
        evs.push(budget_released_event(spec));
    }
    events::emit_many(home, &evs);
}

fn budget_released_event(spec: &WorkerSpec) -> Event {
    Event::new(
        EventType::BudgetReleased,
        format!(
            "released {} tokens of {} ({} used)",
            spec.token_budget.allocated, spec.worker_id, spec.token_budget.used
        ),
    )
    .worker(spec)
    .with("allocated", spec.token_budget.allocated)
    .with("used", spec.token_budget.used)
}

/// What a spec says about an end nobody in corral saw the exit status of.
pub const NOT_OUR_CHILD: &str =
    "the exit status was not observed: the recording process is not the worker's parent";

/// Uptime in seconds from start (or creation) to now.
pub fn uptime_seconds(s: &WorkerSpec, now: Timestamp) -> f64 {
    s.started_at
        .or(s.created_at)
        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0)
        .max(0.0)
}

fn jobs_processed(s: &WorkerSpec) -> u64 {
    s.extra
        .get("jobs_processed")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The worker reports success: `completed/`, budget released, `worker_completed`.
pub fn complete_worker(home: &Home, id: &str, summary: Option<&str>) -> Result<WorkerSpec> {
    let summary = summary.map(bounded_text);
    let summary = summary.as_deref();
    let reason = summary
        .map(|s| format!("completed: {s}"))
        .unwrap_or_else(|| "completed".into());
    let (_, spec, released) = move_worker(
        home,
        id,
        &Move {
            from: &[StateDir::Active],
            to: StateDir::Completed,
            status: Some(Status::Completed),
            reason: &reason,
        },
        |s| {
            // The worker's own report of success: its process may not even have exited.
            let mut e = ExitInfo::observed(&reason, Some(0), None, time::now());
            e.source = Some("worker_report".into());
            s.exit = Some(e);
            if let Some(sum) = summary {
                s.heartbeat.message = Some(sum.to_string());
            }
            s.heartbeat.progress = Some(100.0);
        },
    )?;
    let now = time::now();
    let evs = vec![
        Event::new(EventType::WorkerCompleted, format!("{id} completed"))
            .worker(&spec)
            .with("summary", summary.unwrap_or(""))
            .with("tokens_used", spec.token_budget.used)
            .with("uptime_seconds", uptime_seconds(&spec, now))
            .with("jobs_processed", jobs_processed(&spec)),
    ];
    emit_move(home, evs, &spec, released);
    Ok(spec)
}

/// The worker failed (its own report, a crash, a launch failure): `zombie/` with `exit`
/// filled and `worker_failed`. Its reservation is kept until cleanup. `code`/`signal` are
/// the exit status when the caller observed it (the parent's waitpid); without either the
/// record says the status is not known.
pub fn fail_worker(
    home: &Home,
    id: &str,
    error: &str,
    code: Option<i32>,
    signal: Option<i32>,
) -> Result<WorkerSpec> {
    let error = bounded_text(error);
    let error = error.as_str();
    let (_, spec, _) = move_worker(
        home,
        id,
        &Move {
            from: &[StateDir::Active],
            to: StateDir::Zombie,
            status: Some(Status::Failed),
            reason: error,
        },
        |s| {
            let now = time::now();
            s.exit = Some(if code.is_some() || signal.is_some() {
                let mut e = ExitInfo::observed(error, code, signal, now);
                // A container worker's code can only have come from its engine (also one
                // whose launch had not recorded its container yet).
                if s.process.as_ref().is_some_and(|p| p.is_container())
                    || s.launch
                        .as_ref()
                        .and_then(crate::container::launch_container)
                        .is_some()
                {
                    e.source = Some("engine".into());
                }
                e
            } else {
                ExitInfo::unobserved(error, NOT_OUR_CHILD, now)
            });
            s.completed_at = Some(now);
        },
    )?;
    events::emit(
        home,
        Event::new(EventType::WorkerFailed, format!("{id} failed: {error}"))
            .worker(&spec)
            .with("error", error)
            .with("exit_code", code.map(Value::from).unwrap_or(Value::Null))
            .with("signal", signal.map(Value::from).unwrap_or(Value::Null))
            .with("uptime_seconds", uptime_seconds(&spec, time::now())),
    );
    Ok(spec)
}

/// The worker is declared a zombie (stale heartbeat): `zombie/`, `zombie_detected`.
pub fn zombify_worker(home: &Home, id: &str, reason: &str, data: Value) -> Result<WorkerSpec> {
    let (_, spec, _) = move_worker(
        home,
        id,
        &Move {
            from: &[StateDir::Active],
            to: StateDir::Zombie,
            status: Some(Status::Zombie),
            reason,
        },
        |s| {
            s.exit = Some(ExitInfo::unobserved(
                reason,
                "declared a zombie by its heartbeat: no exit was observed",
                time::now(),
            ));
            s.heartbeat.health = Some("unresponsive".into());
        },
    )?;
    let mut ev = Event::new(
        EventType::ZombieDetected,
        format!("{id} is a zombie: {reason}"),
    )
    .worker(&spec)
    .with("reason", reason);
    if let Value::Object(m) = data {
        ev.data.extend(m);
    }
    events::emit(home, ev);
    Ok(spec)
}

/// A stopped worker: `completed/` with the reason, budget released, `worker_stopped`.
pub fn record_stopped(
    home: &Home,
    id: &str,
    reason: &str,
    from: &[StateDir],
) -> Result<WorkerSpec> {
    let (_, spec, released) = move_worker(
        home,
        id,
        &Move {
            from,
            to: StateDir::Completed,
            status: Some(Status::Completed),
            reason,
        },
        |s| {
            if s.exit.is_none() {
                s.exit = Some(ExitInfo::unobserved(reason, NOT_OUR_CHILD, time::now()));
            }
        },
    )?;
    let now = time::now();
    let evs = vec![
        Event::new(EventType::WorkerStopped, format!("{id} stopped: {reason}"))
            .worker(&spec)
            .with("reason", reason)
            .with("uptime_seconds", uptime_seconds(&spec, now))
            .with("jobs_processed", jobs_processed(&spec)),
    ];
    emit_move(home, evs, &spec, released);
    Ok(spec)
}

/// Archives a zombie or completed worker (releasing a zombie's reservation), keeping its
/// status: `worker_archived`.
pub fn archive_worker(home: &Home, id: &str, reason: &str) -> Result<WorkerSpec> {
    let (from, spec, released) = move_worker(
        home,
        id,
        &Move {
            from: &[StateDir::Zombie, StateDir::Completed],
            to: StateDir::Archived,
            status: None,
            reason,
        },
        |_| {},
    )?;
    let evs = vec![Event::new(
        EventType::WorkerArchived,
        format!("{id} archived from {}/", from.name()),
    )
    .worker(&spec)
    .with("from", from.name())
    .with("reason", reason)];
    emit_move(home, evs, &spec, released);
    Ok(spec)
}

/// Beats for process `pid` every `interval` until it exits or the worker is no longer
/// active. With `hold_lock`, holds the worker's liveness lock meanwhile.
pub fn heartbeat_loop(
    home: &Home,
    id: &str,
    pid: i32,
    interval: Duration,
    hold_lock: bool,
) -> Result<u64> {
    let fd =
        process::PidFd::open(pid)?.ok_or_else(|| Error::NotFound(format!("no process {pid}")))?;
    let _alive = if hold_lock {
        Some(store::lock(&home.alive_lock(id))?)
    } else {
        None
    };
    let mut beats = 0u64;
    loop {
        match heartbeat(home, id, &Beat::default()) {
            Ok(_) => beats += 1,
            Err(Error::Conflict(m)) => {
                tracing::info!("stopping the heartbeat loop: {m}");
                return Ok(beats);
            }
            // A lock held too long costs one beat, not the loop.
            Err(e @ Error::LockTimeout { .. }) => tracing::warn!("beat skipped: {e}"),
            Err(e) => return Err(e),
        }
        if fd.wait_exit(interval)? {
            tracing::info!("process {pid} exited; heartbeat loop ends after {beats} beats");
            return Ok(beats);
        }
    }
}

/// Finds ids by selector, for commands that act on several workers.
pub fn ids_in(
    home: &Home,
    dir: StateDir,
    filter: impl Fn(&WorkerSpec) -> bool,
) -> Result<Vec<String>> {
    let (specs, _) = spec::scan(home, dir)?;
    Ok(specs
        .into_iter()
        .filter(|s| filter(s))
        .map(|s| s.worker_id)
        .collect())
}

/// JSON view of a spec for `--format json` outputs.
pub fn spec_json(s: &WorkerSpec) -> Value {
    s.to_value()
        .unwrap_or_else(|_| json!({"worker_id": s.worker_id}))
}
