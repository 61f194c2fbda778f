//! The one place where a worker changes state: spawn, first beat, beats, completion,
//! failure, zombie, stop and archive. Every binary and the monitor call these functions, so
//! each transition, its budget effect and its event are written once.
//!
//! Lock order, everywhere: worker lock(s) → budget lock → events lock. A process holding the
//! budget lock never waits for a worker lock: brand-new generated ids are only `try_lock`ed
//! (a held lock means the id is taken, and another is drawn), so no cycle can form.

use crate::budget;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::policy::WorkerTypes;
use crate::process::{self, Identity, ProcessInfo};
use crate::spec::{self, ExitInfo, Located, Priority, Status, WorkerSpec};
use crate::store;
use crate::time::{self, Timestamp};
use serde_json::{json, Value};
use std::time::Duration;

/// What `spawn-worker` was asked for.
#[derive(Debug, Clone, Default)]
pub struct SpawnRequest {
    pub worker_type: String,
    pub task_id: Option<String>,
    pub master: Option<String>,
    pub priority: Option<Priority>,
    pub repo: Option<String>,
    pub tokens: Option<u64>,
    pub timeout_minutes: Option<u64>,
    pub session: Option<String>,
    pub count: u32,
    pub id: Option<String>,
    /// Explicit command (`-- CMD ARGS…`); otherwise the type's `command`, if any.
    pub command: Option<Vec<String>>,
    pub dry_run: bool,
    /// Restart lineage, set by the monitor when it restarts a worker.
    pub restart_of: Option<(String, u32)>,
}

fn build_specs(
    req: &SpawnRequest,
    types: &WorkerTypes,
    now: Timestamp,
) -> Result<(Vec<WorkerSpec>, Option<Vec<String>>)> {
    let t = types.get(&req.worker_type)?;
    if req.count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    if req.id.is_some() && req.count > 1 {
        return Err(Error::Usage(
            "--id names one worker; it cannot be combined with --count > 1".into(),
        ));
    }
    if let Some(id) = &req.id {
        crate::id::validate("worker", id)?;
    }
    if let Some(task) = &req.task_id {
        crate::id::validate("task", task)?;
    }
    let tokens = req.tokens.or(t.tokens).unwrap_or(0);
    let command = req
        .command
        .clone()
        .or_else(|| t.command.clone())
        .filter(|c| !c.is_empty());
    if let Some(cmd) = &command {
        check_command(cmd)?;
    }
    let session = req.session.clone().or_else(|| {
        (req.count > 1).then(|| {
            format!(
                "pool-{}-{:08x}",
                now.format("%Y%m%dT%H%M%SZ"),
                crate::id::random_u64() as u32
            )
        })
    });
    let mut specs = Vec::with_capacity(req.count as usize);
    for _ in 0..req.count {
        let id = req
            .id
            .clone()
            .unwrap_or_else(|| crate::id::new_worker_id(&req.worker_type, now));
        let mut s = WorkerSpec::new(id, req.worker_type.clone(), now);
        s.task_id = req.task_id.clone();
        s.master = req.master.clone();
        s.priority = req.priority.or(t.priority).unwrap_or_default();
        s.repo = req.repo.clone();
        s.session_id = session.clone();
        s.token_budget.allocated = tokens;
        s.resources.timeout_minutes = req.timeout_minutes.or(t.timeout_minutes);
        if let Some((orig, attempt)) = &req.restart_of {
            s.restart.original_worker_id = Some(orig.clone());
            s.restart.attempt = *attempt;
        }
        s.to_value()?;
        specs.push(s);
    }
    Ok((specs, command))
}

/// Refuses a command whose program cannot be found, before anything is written.
fn check_command(cmd: &[String]) -> Result<()> {
    let prog = cmd
        .first()
        .ok_or_else(|| Error::Invalid("empty worker command".into()))?;
    let found = if prog.contains('/') {
        std::path::Path::new(prog).is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "worker command not found: {prog:?}"
        )))
    }
}

/// Creates worker specs (and launches their processes when there is a command). The budget
/// for the whole pool is reserved at once: all or nothing, and nothing is written when it
/// does not fit (exit 4).
pub fn spawn(home: &Home, req: &SpawnRequest) -> Result<Vec<WorkerSpec>> {
    let types = WorkerTypes::load(home)?;
    let now = time::now();
    let (mut specs, command) = build_specs(req, &types, now)?;
    let need: u64 = specs.iter().map(|s| s.token_budget.allocated).sum();
    if req.dry_run {
        let b = budget::read(home)?;
        if b.available < need {
            return Err(Error::Budget {
                need,
                available: b.available,
            });
        }
        return Ok(specs);
    }
    let pool = req.count > 1;
    let session = specs.first().and_then(|s| s.session_id.clone());
    // An operator-chosen id is locked first (lock order: worker before budget).
    let named = match &req.id {
        Some(id) => {
            let g = spec::lock(home, id)?;
            if let Some((dir, _)) = spec::locate(home, id) {
                return Err(Error::Conflict(format!(
                    "worker {id} already exists (in {}/)",
                    dir.name()
                )));
            }
            Some(g)
        }
        None => None,
    };
    {
        let mut b = budget::lock(home)?;
        b.budget.reserve(need)?;
        // Saved before the specs: a crash in between over-reserves (safe), never over-spends.
        b.save()?;
        // Only once the reservation holds: a pool that does not fit writes nothing.
        if pool {
            events::emit(
                home,
                Event::new(
                    EventType::PoolStarting,
                    format!("starting pool of {} {}", req.count, req.worker_type),
                )
                .session(session.as_deref())
                .with("worker_type", req.worker_type.clone())
                .with("count", req.count),
            );
        }
        let mut written = 0usize;
        let res: Result<()> = (|| {
            for s in specs.iter_mut() {
                write_new(home, s, req.id.is_none(), now)?;
                written += 1;
            }
            Ok(())
        })();
        if let Err(e) = res {
            let unwritten: u64 = specs[written..]
                .iter()
                .map(|s| s.token_budget.allocated)
                .sum();
            b.budget.release(unwritten, 0);
            b.save()?;
            return Err(e);
        }
    }
    let mut evs: Vec<Event> = specs
        .iter()
        .map(|s| {
            Event::new(
                EventType::WorkerSpawned,
                format!("spawned {} ({})", s.worker_id, s.worker_type),
            )
            .worker(s)
            .with("tokens_allocated", s.token_budget.allocated)
            .with("priority", s.priority.as_str())
            .with("restart_attempt", s.restart.attempt)
        })
        .collect();
    evs.push(
        Event::new(
            EventType::BudgetReserved,
            format!("reserved {need} tokens for {} worker(s)", specs.len()),
        )
        .session(session.as_deref())
        .with("tokens", need)
        .with("workers", specs.len()),
    );
    events::emit_many(home, &evs);
    // launch() takes the worker lock itself: a second flock on another open file description
    // would block on our own hold.
    drop(named);
    if let Some(cmd) = &command {
        for s in specs.iter_mut() {
            match launch(home, s, cmd) {
                Ok(updated) => *s = updated,
                Err(e) => {
                    let _ = fail_worker(
                        home,
                        &s.worker_id,
                        &format!("launch failed: {e}"),
                        None,
                        None,
                    );
                    return Err(e);
                }
            }
        }
    }
    if pool {
        events::emit(
            home,
            Event::new(
                EventType::PoolStarted,
                format!("pool of {} {} started", specs.len(), req.worker_type),
            )
            .session(session.as_deref())
            .with("worker_type", req.worker_type.clone())
            .with("count", specs.len())
            .with(
                "worker_ids",
                specs
                    .iter()
                    .map(|s| s.worker_id.clone())
                    .collect::<Vec<_>>(),
            ),
        );
    }
    Ok(specs)
}

/// Writes a brand-new spec into `active/`, drawing a new id if a generated one is taken.
fn write_new(home: &Home, s: &mut WorkerSpec, generated: bool, now: Timestamp) -> Result<()> {
    for _ in 0..16 {
        let guard = if generated {
            match store::try_lock(&home.worker_lock(&s.worker_id))? {
                Some(g) => Some(g),
                None => {
                    s.worker_id = crate::id::new_worker_id(&s.worker_type, now);
                    continue;
                }
            }
        } else {
            None
        };
        if spec::locate(home, &s.worker_id).is_some() {
            if !generated {
                return Err(Error::Conflict(format!(
                    "worker {} already exists",
                    s.worker_id
                )));
            }
            drop(guard);
            s.worker_id = crate::id::new_worker_id(&s.worker_type, now);
            continue;
        }
        return spec::save(home, StateDir::Active, s);
    }
    Err(Error::Internal("could not draw a free worker id".into()))
}

/// Starts the worker's process detached and records its identity in the spec.
pub fn launch(home: &Home, s: &WorkerSpec, cmd: &[String]) -> Result<WorkerSpec> {
    let alive = store::lock(&home.alive_lock(&s.worker_id))?;
    let root = std::path::absolute(home.root()).unwrap_or_else(|_| home.root().to_path_buf());
    let mut env = vec![
        ("CORRAL_HOME".to_string(), root.display().to_string()),
        ("CORRAL_WORKER_ID".to_string(), s.worker_id.clone()),
    ];
    if let Some(t) = &s.task_id {
        env.push(("CORRAL_TASK_ID".into(), t.clone()));
    }
    if let Some(sess) = &s.session_id {
        env.push(("CORRAL_SESSION_ID".into(), sess.clone()));
    }
    let pid = process::launch(&process::Launch {
        command: cmd,
        log_file: &home.worker_log(&s.worker_id),
        env,
        alive_lock: Some(alive.file()),
    })?;
    // Our copy of the liveness lock closes here; the worker's inherited copy keeps it held.
    drop(alive);
    let mut info = ProcessInfo::capture(pid, cmd.to_vec()).unwrap_or_else(|_| ProcessInfo {
        host: process::host_name(),
        boot_id: process::boot_id(),
        pid,
        pgid: Some(pid),
        start_time_ticks: None,
        parent_pid: Some(std::process::id() as i32),
        execution_mode: "direct".into(),
        command: cmd.to_vec(),
        extra: Default::default(),
    });
    info.parent_pid = Some(std::process::id() as i32);
    let _g = spec::lock(home, &s.worker_id)?;
    let mut loc = spec::load(home, &s.worker_id)?;
    loc.spec.process = Some(info);
    loc.spec.normalize(time::now());
    spec::save(home, loc.dir, &loc.spec)?;
    events::emit(
        home,
        Event::new(
            EventType::WorkerStarting,
            format!("started {} as pid {pid}", s.worker_id),
        )
        .worker(&loc.spec)
        .with("pid", pid)
        .with("command", cmd.to_vec())
        .with("log", home.worker_log(&s.worker_id).display().to_string()),
    );
    Ok(loc.spec)
}

/// Validates a hand-made spec and writes it where its status says (the runbook's
/// validate-and-write). Its allocation is reserved like a spawn's.
pub fn write_from_spec(home: &Home, value: Value) -> Result<WorkerSpec> {
    let mut s = WorkerSpec::from_value(value)?;
    let now = time::now();
    s.normalize(now);
    if s.history.is_empty() {
        s.history.push(spec::Transition {
            at: now,
            from: None,
            to: s.status.as_str().into(),
            reason: "written from spec".into(),
        });
    }
    let dir = s.status.home_dir();
    let _g = spec::lock(home, &s.worker_id)?;
    if let Some((d, _)) = spec::locate(home, &s.worker_id) {
        return Err(Error::Conflict(format!(
            "worker {} already exists (in {}/)",
            s.worker_id,
            d.name()
        )));
    }
    {
        let mut b = budget::lock(home)?;
        if dir.is_live() {
            b.budget.reserve(s.token_budget.allocated)?;
            b.save()?;
        }
        spec::save(home, dir, &s)?;
    }
    events::emit(
        home,
        Event::new(
            EventType::WorkerSpawned,
            format!("registered hand-made spec {}", s.worker_id),
        )
        .worker(&s)
        .with("tokens_allocated", s.token_budget.allocated)
        .with("from_spec", true),
    );
    Ok(s)
}

/// An idle, healthy, live worker of `worker_type` to reuse instead of spawning (seed 001).
pub fn find_reusable(home: &Home, worker_type: &str) -> Result<Option<WorkerSpec>> {
    let (specs, _) = spec::scan(home, StateDir::Active)?;
    let mut best: Option<WorkerSpec> = None;
    for s in specs {
        if s.worker_type != worker_type || s.status != Status::Idle || s.heartbeat.health_score < 80
        {
            continue;
        }
        let alive = match &s.process {
            Some(p) => p.check() != Identity::Gone,
            None => true,
        };
        if alive
            && best
                .as_ref()
                .is_none_or(|b| s.last_alive() > b.last_alive())
        {
            best = Some(s);
        }
    }
    Ok(best)
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
    hb.sequence += 1;
    if let Some(m) = &beat.message {
        hb.message = Some(m.clone());
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
        None => spec.history.push(spec::Transition {
            at: now,
            from: Some(dir.name().into()),
            to: mv.to.name().into(),
            reason: mv.reason.into(),
        }),
    }
    mutate(&mut spec);
    spec.normalize(now);
    let releases = dir.is_live() && !mv.to.is_live();
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

fn exit_info(reason: &str, code: Option<i32>, signal: Option<i32>) -> ExitInfo {
    ExitInfo {
        code,
        signal,
        reason: reason.into(),
        at: time::now(),
        extra: Default::default(),
    }
}

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
            s.exit = Some(exit_info(&reason, Some(0), None));
            if let Some(sum) = summary {
                s.heartbeat.message = Some(sum.to_string());
            }
            s.heartbeat.progress = Some(100.0);
        },
    )?;
    let now = time::now();
    let mut evs = vec![
        Event::new(EventType::WorkerCompleted, format!("{id} completed"))
            .worker(&spec)
            .with("summary", summary.unwrap_or(""))
            .with("tokens_used", spec.token_budget.used)
            .with("uptime_seconds", uptime_seconds(&spec, now))
            .with("jobs_processed", jobs_processed(&spec)),
    ];
    if released {
        evs.push(budget_released_event(&spec));
    }
    events::emit_many(home, &evs);
    Ok(spec)
}

/// The worker failed (its own report, a crash, a launch failure): `zombie/` with `exit`
/// filled and `worker_failed`. Its reservation is kept until cleanup.
pub fn fail_worker(
    home: &Home,
    id: &str,
    error: &str,
    code: Option<i32>,
    signal: Option<i32>,
) -> Result<WorkerSpec> {
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
            s.exit = Some(exit_info(error, code, signal));
            s.completed_at = Some(time::now());
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
            s.exit = Some(exit_info(reason, None, None));
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
                s.exit = Some(exit_info(reason, None, None));
            }
        },
    )?;
    let now = time::now();
    let mut evs = vec![
        Event::new(EventType::WorkerStopped, format!("{id} stopped: {reason}"))
            .worker(&spec)
            .with("reason", reason)
            .with("uptime_seconds", uptime_seconds(&spec, now))
            .with("jobs_processed", jobs_processed(&spec)),
    ];
    if released {
        evs.push(budget_released_event(&spec));
    }
    events::emit_many(home, &evs);
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
    let mut evs = vec![Event::new(
        EventType::WorkerArchived,
        format!("{id} archived from {}/", from.name()),
    )
    .worker(&spec)
    .with("from", from.name())
    .with("reason", reason)];
    if released {
        evs.push(budget_released_event(&spec));
    }
    events::emit_many(home, &evs);
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
