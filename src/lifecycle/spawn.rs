//! Spawning: specs written with their budget reserved, and for workers with a command, the
//! process launched and recorded. Two invariants of DESIGN §6 shape the order of things:
//!
//! - S1: the worker's liveness lock is held (by the spawner) *before* its spec becomes
//!   visible in `active/`, and handed to the worker at exec; so no monitor can ever find the
//!   lock free for a worker whose process has not started yet.
//! - S7: what the launch used (absolute program, working directory, `--env`) is recorded in
//!   the spec's `launch` block, so a restart starts the same thing from anywhere.
//!
//! Also here: reusing idle workers (`--reuse`), assigned atomically under the worker lock,
//! and writing hand-made specs (`--from-spec`), which may never carry a `process` block (S2).

use super::{fail_worker, plan};
use crate::budget;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::policy::WorkerTypes;
use crate::process::{self, Identity, ProcessInfo};
use crate::spec::{self, LaunchSpec, Priority, Status, WorkerSpec};
use crate::store::{self, LockGuard};
use crate::time::{self, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Most workers one spawn may create (`--count`): more is surely a typo, and each pending
/// launch holds a descriptor.
pub const MAX_COUNT: u32 = 10_000;

/// A parent named at spawn (`spawn-worker --parent-pid P`): its pid and start time, so a
/// reused pid is never taken for the parent. Without one, a worker has no parent to be
/// orphaned from (its launcher, spawn-worker, exits at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub pid: i32,
    pub start_time_ticks: u64,
}

impl Parent {
    /// Records the identity of the running process `pid` (exit 6 when there is none).
    pub fn of(pid: i32) -> Result<Parent> {
        let st = process::read_stat(pid)
            .filter(|st| st.state != 'Z' && st.state != 'X')
            .ok_or_else(|| Error::Invalid(format!("--parent-pid {pid}: no such process")))?;
        Ok(Parent {
            pid,
            start_time_ticks: st.start_time_ticks,
        })
    }
}

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
    /// `spawn-worker --env K=V`: recorded in the spec's `launch.env`, so restarts have them.
    pub env: BTreeMap<String, String>,
    /// Working directory the command is resolved against and run in (default: the
    /// caller's); recorded in `launch.cwd`. The type's `cwd` overrides it at launch.
    pub cwd: Option<PathBuf>,
    /// An explicit parent (`--parent-pid`): the monitor may stop the worker once it is gone.
    pub parent: Option<Parent>,
    /// `spawn-worker --image`: the image of a container type's worker (over the type's);
    /// set by a restart of a container worker to the image it ran.
    pub image: Option<String>,
    /// The container engine a restart reproduces (`podman` or `docker`); `None`: the
    /// type's, else the policy's `container_engine`, else Podman.
    pub engine: Option<String>,
}

impl SpawnRequest {
    /// The request that restarts `failed` as `new_id`: same type, task, master, priority,
    /// repo, tokens, timeout, session and launch (the absolute program, working directory,
    /// `--env` and named parent: DESIGN §6 S7), with its lineage set. The id is chosen by
    /// the caller so it can be recorded before anything is spawned (S3).
    pub fn restart(
        failed: &WorkerSpec,
        new_id: &str,
        original: &str,
        attempt: u32,
    ) -> SpawnRequest {
        let launch = failed.launch.as_ref();
        let process = failed.process.as_ref();
        let ctr = launch.and_then(crate::container::launch_container);
        SpawnRequest {
            worker_type: failed.worker_type.clone(),
            task_id: failed.task_id.clone(),
            master: failed.master.clone(),
            priority: Some(failed.priority),
            repo: failed.repo.clone(),
            tokens: Some(failed.token_budget.allocated),
            timeout_minutes: failed.resources.timeout_minutes,
            session: failed.session_id.clone(),
            count: 1,
            id: Some(new_id.to_string()),
            command: launch
                .map(|l| l.command.clone())
                .filter(|c| !c.is_empty())
                .or_else(|| process.map(|p| p.command.clone()))
                .filter(|c| !c.is_empty()),
            dry_run: false,
            restart_of: Some((original.to_string(), attempt)),
            env: launch.map(|l| l.env.clone()).unwrap_or_default(),
            cwd: launch
                .and_then(|l| l.cwd.clone())
                .or_else(|| process.and_then(|p| p.cwd.clone()))
                .map(PathBuf::from),
            parent: process.and_then(|p| {
                Some(Parent {
                    pid: p.parent_pid?,
                    start_time_ticks: p.parent_start_time_ticks?,
                })
            }),
            image: ctr.as_ref().map(|c| c.image.clone()),
            engine: ctr.map(|c| c.engine),
        }
    }
}

/// Builds and validates the specs of a request; nothing is written. Every input is
/// range-checked here (S5) and the launch is worked out in full (program, working directory,
/// env file), so a spawn that could not start writes nothing.
fn build_specs(
    home: &Home,
    req: &SpawnRequest,
    types: &WorkerTypes,
    now: Timestamp,
) -> Result<(Vec<WorkerSpec>, Option<LaunchSpec>)> {
    let t = types.get(&req.worker_type)?;
    if req.count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    time::check_count("--count", u64::from(req.count), u64::from(MAX_COUNT))?;
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
    let timeout = match req.timeout_minutes {
        Some(m) => Some(time::check_minutes("--timeout-minutes", m)?),
        None => match t.timeout_minutes {
            Some(m) => Some(time::check_minutes(
                &format!("worker type {}: timeout_minutes", req.worker_type),
                m,
            )?),
            None => None,
        },
    };
    let tokens = req.tokens.or(t.tokens).unwrap_or(0);
    tokens.checked_mul(u64::from(req.count)).ok_or_else(|| {
        Error::Invalid(format!(
            "{tokens} tokens for each of {} workers is more than can be counted",
            req.count
        ))
    })?;
    let command = req
        .command
        .clone()
        .or_else(|| t.command.clone())
        .filter(|c| !c.is_empty());
    let ctr = super::container::requested(
        home,
        t,
        req.image.as_deref(),
        req.engine.as_deref(),
        req.restart_of.is_some(),
    )?;
    let launch = match (&command, &ctr) {
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "worker type {} runs in a container and has no command: give one (-- CMD) or set the type's command",
                req.worker_type
            )))
        }
        // Run inside the image as given: not resolved on this host.
        (Some(cmd), Some(lc)) => Some(super::container::launch_spec(
            home,
            Some(t),
            lc,
            cmd,
            &req.env,
        )?),
        (Some(cmd), None) => {
            let cwd = match &req.cwd {
                Some(c) => std::path::absolute(c).unwrap_or_else(|_| c.clone()),
                None => std::env::current_dir()
                    .map_err(|e| Error::io("cannot read the current directory", e))?,
            };
            let resolved = plan::resolve_command(cmd, &cwd, std::env::var_os("PATH").as_deref())?;
            let cwd = cwd
                .into_os_string()
                .into_string()
                .map_err(|c| Error::Invalid(format!("working directory is not UTF-8: {c:?}")))?;
            // What each launch will do, tried now: a missing env file or working directory
            // is refused before anything is written.
            plan::launch_cwd(home, Some(t), Some(&cwd))?;
            plan::launch_env(home, Some(t), &req.env)?;
            Some(LaunchSpec {
                command: resolved,
                cwd: Some(cwd),
                env: req.env.clone(),
                extra: Default::default(),
            })
        }
        (None, None) => {
            if !req.env.is_empty() || req.parent.is_some() {
                return Err(Error::Usage(
                    "--env and --parent-pid apply to a launched worker: give a command (-- CMD) or a type with one".into(),
                ));
            }
            None
        }
    };
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
        s.resources.timeout_minutes = timeout;
        s.launch = launch.clone();
        if let Some((orig, attempt)) = &req.restart_of {
            s.restart.original_worker_id = Some(orig.clone());
            s.restart.attempt = *attempt;
        }
        s.to_value()?;
        specs.push(s);
    }
    Ok((specs, launch))
}

/// Creates worker specs (and launches their processes when there is a command). The budget
/// for the whole pool is reserved at once: all or nothing, and nothing is written when it
/// does not fit (exit 4).
pub fn spawn(home: &Home, req: &SpawnRequest) -> Result<Vec<WorkerSpec>> {
    let types = WorkerTypes::load(home)?;
    let now = time::now();
    let (mut specs, launch) = build_specs(home, req, &types, now)?;
    // build_specs checked that tokens × count fits.
    let need: u64 = specs
        .iter()
        .fold(0u64, |a, s| a.saturating_add(s.token_budget.allocated));
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
    let launching = launch.is_some();
    if launching {
        // One held liveness lock per worker until its process has started.
        process::raise_fd_limit(specs.len() as u64 + 256);
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
    let mut alive: Vec<Option<LockGuard>> = Vec::with_capacity(specs.len());
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
        let res: Result<()> = (|| {
            for s in specs.iter_mut() {
                alive.push(write_new(home, s, req.id.is_none(), now, launching)?);
            }
            Ok(())
        })();
        if let Err(e) = res {
            let unwritten: u64 = specs[alive.len()..]
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
    if launching {
        let mut failure: Option<Error> = None;
        for (s, guard) in specs.iter_mut().zip(alive.iter_mut()) {
            let Some(guard) = guard.take() else { continue };
            if let Some(e) = &failure {
                // A pool whose launch failed part-way: the rest never start.
                drop(guard);
                let _ = fail_worker(
                    home,
                    &s.worker_id,
                    &format!("not launched: an earlier launch of the pool failed: {e}"),
                    None,
                    None,
                );
                continue;
            }
            match launch_worker(home, s, &types, guard, req.parent) {
                Ok(updated) => *s = updated,
                Err(e) => {
                    let recorded = fail_worker(
                        home,
                        &s.worker_id,
                        &format!("launch failed: {e}"),
                        None,
                        None,
                    );
                    // The spec exists now: name it, so a script can clean up what it made.
                    failure = Some(match recorded {
                        Ok(_) => Error::with_code(
                            e.exit_code(),
                            format!(
                                "{e}; worker {id} is recorded as failed in zombie/ (its tokens \
                                 stay reserved until `cleanup-zombies --worker {id}`)",
                                id = s.worker_id
                            ),
                        ),
                        Err(_) => e,
                    });
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
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
/// With `launching`, the worker's liveness lock is taken first and returned held, so the
/// spec is never visible with a free lock (S1). Only `try_lock` is used: the caller holds
/// the budget lock, which must never wait for a worker lock.
fn write_new(
    home: &Home,
    s: &mut WorkerSpec,
    generated: bool,
    now: Timestamp,
    launching: bool,
) -> Result<Option<LockGuard>> {
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
        let alive = if launching {
            match store::try_lock(&home.alive_lock(&s.worker_id))? {
                Some(a) => Some(a),
                None if generated => {
                    s.worker_id = crate::id::new_worker_id(&s.worker_type, now);
                    continue;
                }
                None => {
                    return Err(Error::Conflict(format!(
                        "worker {}: a process of an earlier worker with this id still holds {}",
                        s.worker_id,
                        home.alive_lock(&s.worker_id).display()
                    )))
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
        spec::save(home, StateDir::Active, s)?;
        return Ok(alive);
    }
    Err(Error::Internal("could not draw a free worker id".into()))
}

/// Starts a spawned worker's process detached, handing it the liveness lock `alive` (held
/// since before its spec was visible), and records its identity in the spec.
fn launch_worker(
    home: &Home,
    s: &WorkerSpec,
    types: &WorkerTypes,
    alive: LockGuard,
    parent: Option<Parent>,
) -> Result<WorkerSpec> {
    let id = &s.worker_id;
    let l = s
        .launch
        .as_ref()
        .ok_or_else(|| Error::Internal(format!("{id}: no launch recorded")))?;
    let t = types.types.get(&s.worker_type);
    if let Some(lc) = crate::container::launch_container(l) {
        return launch_container_worker(home, s, t, &lc, alive, parent);
    }
    let cwd = plan::launch_cwd(home, t, l.cwd.as_deref())?;
    let mut env = plan::launch_env(home, t, &l.env)?;
    let root = std::path::absolute(home.root()).unwrap_or_else(|_| home.root().to_path_buf());
    env.push(("CORRAL_HOME".into(), root.display().to_string()));
    env.push(("CORRAL_WORKER_ID".into(), id.clone()));
    let mut env_remove = Vec::new();
    match &s.task_id {
        Some(t) => env.push(("CORRAL_TASK_ID".into(), t.clone())),
        None => env_remove.push("CORRAL_TASK_ID".to_string()),
    }
    match &s.session_id {
        Some(sess) => env.push(("CORRAL_SESSION_ID".into(), sess.clone())),
        None => env_remove.push("CORRAL_SESSION_ID".to_string()),
    }
    let log_path = home.worker_log(id);
    let log = store::open_log(&log_path)?;
    let pid = process::launch(&process::Launch {
        command: &l.command,
        log: &log,
        cwd: Some(&cwd),
        env,
        env_remove,
        alive_lock: Some(alive.file()),
    })?;
    // Our copy of the liveness lock closes here; the worker's inherited copy keeps it held.
    alive.hand_off();
    let mut info = ProcessInfo::capture(pid, l.command.clone()).unwrap_or_else(|_| ProcessInfo {
        host: process::host_name(),
        boot_id: process::boot_id(),
        pid,
        pgid: Some(pid),
        execution_mode: "direct".into(),
        command: l.command.clone(),
        ..Default::default()
    });
    info.parent_pid = parent.map(|p| p.pid);
    info.parent_start_time_ticks = parent.map(|p| p.start_time_ticks);
    info.cwd = Some(cwd.display().to_string());
    let spec = match record_process(home, id, info) {
        Ok((spec, None)) => spec,
        Ok((spec, Some(dir))) => {
            // Stopped before its process could be (S2): end it now.
            kill_unrecorded(pid);
            return Err(Error::Conflict(format!(
                "worker {id} was {} (in {}/) before its process was recorded; the process was ended",
                spec.status,
                dir.name()
            )));
        }
        Err(e) => {
            // A process nobody can find in a spec could never be stopped (S2): end it.
            kill_unrecorded(pid);
            return Err(e);
        }
    };
    events::emit(
        home,
        Event::new(
            EventType::WorkerStarting,
            format!("started {id} as pid {pid}"),
        )
        .worker(&spec)
        .with("pid", pid)
        .with("command", l.command.clone())
        .with("cwd", cwd.display().to_string())
        .with("log", log_path.display().to_string()),
    );
    Ok(spec)
}

/// [`launch_worker`] for a container worker: the engine starts it, its init is recorded.
fn launch_container_worker(
    home: &Home,
    s: &WorkerSpec,
    t: Option<&crate::policy::WorkerType>,
    lc: &crate::container::LaunchContainer,
    alive: LockGuard,
    parent: Option<Parent>,
) -> Result<WorkerSpec> {
    let id = &s.worker_id;
    let mut info = super::container::start(home, s, t, lc, alive)?;
    info.parent_pid = parent.map(|p| p.pid);
    info.parent_start_time_ticks = parent.map(|p| p.start_time_ticks);
    let spec = match super::container::record(home, id, info.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            // Nothing may run that no spec records (S2).
            super::container::abandon_recorded(home, id, &info);
            return Err(e);
        }
    };
    let c = info.container.clone().unwrap_or_default();
    events::emit(
        home,
        Event::new(
            EventType::WorkerStarting,
            format!(
                "started {id} in container {} ({} {}), init pid {}",
                c.name, c.engine, c.image, info.pid
            ),
        )
        .worker(&spec)
        .with("pid", info.pid)
        .with("execution_mode", "container")
        .with("engine", c.engine.clone())
        .with("container", c.name.clone())
        .with("container_id", c.id.clone())
        .with("image", c.image.clone())
        .with("command", info.command.clone())
        .with("log", home.worker_log(id).display().to_string()),
    );
    Ok(spec)
}

/// Records a launched worker's process in its spec, under its lock, wherever the spec is by
/// now. A worker can report its own end (`heartbeat --complete` or `--fail`), or exit and be
/// judged by the monitor, before the launch gets here: that end is its own, and the process
/// stays recorded for cleanup. Returns the spec, and the directory it was moved to when
/// someone else stopped or archived it before its process was known: it had nothing to
/// stop then, so the caller ends the process and fails the launch.
pub(super) fn record_process(
    home: &Home,
    id: &str,
    info: ProcessInfo,
) -> Result<(WorkerSpec, Option<StateDir>)> {
    let _g = spec::lock(home, id)?;
    let mut loc = spec::load(home, id)?;
    loc.spec.process = Some(info);
    loc.spec.normalize(time::now());
    spec::save(home, loc.dir, &loc.spec)?;
    let stopped =
        (loc.dir != StateDir::Active && stopped_by_others(&loc.spec, loc.dir)).then_some(loc.dir);
    Ok((loc.spec, stopped))
}

/// True when a spec left `active/` by someone else's hand: a stop (its move came from
/// `shutting_down`) or an archive; not by the worker's own report of its end, nor by the
/// monitor's judgement of its exit.
fn stopped_by_others(s: &WorkerSpec, dir: StateDir) -> bool {
    dir == StateDir::Archived
        || s.history
            .iter()
            .rev()
            .find(|t| t.to == s.status.as_str())
            .is_some_and(|t| t.from.as_deref() == Some(Status::ShuttingDown.as_str()))
}

/// Ends a process we just started and could not record: it is our child, in its own group.
pub(super) fn kill_unrecorded(pid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    }
}

/// The result of writing a hand-made spec.
#[derive(Debug, Clone)]
pub struct FromSpec {
    pub spec: WorkerSpec,
    /// Fields of the input that were dropped (only corral's launch path writes them).
    pub dropped: Vec<&'static str>,
}

/// Validates a hand-made spec and writes it where its status says (the runbook's
/// validate-and-write). Its allocation is reserved like a spawn's. A `process` block in the
/// input (and the `pid` that mirrors it) is dropped: only corral's own launch path records
/// a process, since signals go to it (S2; a copied spec must never aim them at another
/// worker's process).
pub fn write_from_spec(home: &Home, value: Value) -> Result<FromSpec> {
    let given = value.as_object().cloned().unwrap_or_default();
    let mut s = WorkerSpec::from_value(value)?;
    // A spec that will sit in active/ gets what `corral adopt` gives the same spec: its
    // type must be configured, and what it leaves out comes from the type (it reserved 0
    // tokens for an unknown type or a missing allocation). A finished spec is a record.
    let filled = if s.status.home_dir() == StateDir::Active {
        let types = WorkerTypes::load(home)?;
        let t = types.get(&s.worker_type)?;
        crate::adopt::fill_from_type(&mut s, &given, t)
    } else {
        Vec::new()
    };
    let mut dropped = Vec::new();
    if s.process.take().is_some() {
        dropped.push("process");
        if s.pid.take().is_some() {
            dropped.push("pid");
        }
    }
    let now = time::now();
    s.normalize(now);
    if s.history.is_empty() {
        s.history.push(spec::Transition::new(
            now,
            None,
            s.status.as_str(),
            "written from spec",
        ));
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
        // A live spec reserves its allocation; a finished one adds what it used to
        // `consumed`, as its end would have (DESIGN §5, and what a recount finds).
        let (reserve, spent) = if dir.is_live() {
            (s.token_budget.allocated, 0)
        } else {
            let in_period = match (b.budget.period_start, s.finished_at()) {
                (Some(p), Some(f)) => f >= p,
                _ => true,
            };
            (0, if in_period { s.token_budget.used } else { 0 })
        };
        b.budget.reserve(reserve)?;
        b.budget.release(0, spent);
        b.save()?;
        if let Err(e) = spec::save(home, dir, &s) {
            b.budget.release(reserve, 0);
            b.budget.consumed = b.budget.consumed.saturating_sub(spent);
            b.budget.settle();
            b.save()?;
            return Err(e);
        }
    }
    events::emit(
        home,
        Event::new(
            EventType::WorkerSpawned,
            format!("registered hand-made spec {}", s.worker_id),
        )
        .worker(&s)
        .with("tokens_allocated", s.token_budget.allocated)
        .with("from_spec", true)
        .with("dropped", dropped.clone())
        .with("filled", filled),
    );
    Ok(FromSpec { spec: s, dropped })
}

/// True when an idle worker may be handed a new task: idle, healthy, of the type, and its
/// process (if it has one here) still the recorded one.
fn reusable(s: &WorkerSpec, worker_type: &str) -> bool {
    s.worker_type == worker_type
        && s.status == Status::Idle
        && s.heartbeat.health_score >= 80
        && s.process
            .as_ref()
            .is_none_or(|p| p.check() != Identity::Gone)
}

/// A worker handed to a `--reuse` caller, with what it was doing before.
#[derive(Debug, Clone)]
pub struct Reused {
    pub spec: WorkerSpec,
    pub previous_task_id: Option<String>,
}

/// Hands up to `max` idle, healthy workers of `worker_type` to this caller for `task_id`
/// (seed 001's reuse). Each is assigned under its worker lock: re-read where it lives now,
/// checked still idle, then set `running` with the task, so two callers can never be
/// handed the same worker. Freshest first.
pub fn reuse(
    home: &Home,
    worker_type: &str,
    task_id: Option<&str>,
    max: u32,
) -> Result<Vec<Reused>> {
    if let Some(t) = task_id {
        crate::id::validate("task", t)?;
    }
    let (mut candidates, _) = spec::scan(home, StateDir::Active)?;
    candidates.retain(|s| reusable(s, worker_type));
    candidates.sort_by_key(|s| std::cmp::Reverse(s.last_alive()));
    let mut taken = Vec::new();
    for c in candidates {
        if taken.len() >= max as usize {
            break;
        }
        let _g = spec::lock(home, &c.worker_id)?;
        let Ok(mut loc) = spec::load(home, &c.worker_id) else {
            continue;
        };
        if loc.dir != StateDir::Active || !reusable(&loc.spec, worker_type) {
            continue;
        }
        let now = time::now();
        let previous_task = loc.spec.task_id.clone();
        let reason = match task_id {
            Some(t) => format!("reused for task {t}"),
            None => "reused".to_string(),
        };
        loc.spec.set_status(Status::Running, &reason, now);
        loc.spec.task_id = task_id.map(str::to_string);
        loc.spec.normalize(now);
        spec::save(home, StateDir::Active, &loc.spec)?;
        events::emit(
            home,
            Event::new(
                EventType::WorkerRegistered,
                format!("{}: {reason}", loc.spec.worker_id),
            )
            .worker(&loc.spec)
            .with("reused", true)
            .with("previous_task_id", previous_task.clone()),
        );
        taken.push(Reused {
            spec: loc.spec,
            previous_task_id: previous_task,
        });
    }
    Ok(taken)
}

/// Gives reused workers back (idle, their previous task) when the rest of a `--reuse
/// --count` request could not be spawned, so a failed request changes nothing.
pub fn unreuse(home: &Home, reused: &[Reused]) {
    for r in reused {
        let id = &r.spec.worker_id;
        let Ok(_g) = spec::lock(home, id) else {
            continue;
        };
        let Ok(mut loc) = spec::load(home, id) else {
            continue;
        };
        if loc.dir == StateDir::Active
            && loc.spec.status == Status::Running
            && loc.spec.task_id == r.spec.task_id
        {
            let now = time::now();
            loc.spec
                .set_status(Status::Idle, "reuse undone: the request failed", now);
            loc.spec.task_id = r.previous_task_id.clone();
            loc.spec.normalize(now);
            let _ = spec::save(home, StateDir::Active, &loc.spec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{complete_worker, move_worker, Move};

    fn active(home: &Home, id: &str) {
        let s = WorkerSpec::new(id.into(), "build-worker".into(), time::now());
        spec::save(home, StateDir::Active, &s).unwrap();
    }

    fn info() -> ProcessInfo {
        ProcessInfo {
            pid: std::process::id() as i32,
            command: vec!["/bin/true".into()],
            ..Default::default()
        }
    }

    /// A fast worker reports its own end before its launch records the process: the
    /// record lands in its spec where it is now, and the launch succeeds (it used to fail,
    /// end the worker's group and, for a restart, lose the `worker_restarted` event).
    #[test]
    fn a_worker_that_ended_itself_before_its_record_keeps_the_record() {
        let (_d, home) = crate::home::test_home();
        active(&home, "w1");
        complete_worker(&home, "w1", None).unwrap();
        let (s, stopped) = record_process(&home, "w1", info()).expect("recorded");
        assert_eq!((s.status, stopped), (Status::Completed, None));
        let on_disk = spec::load(&home, "w1").unwrap();
        assert_eq!(on_disk.dir, StateDir::Completed);
        assert_eq!(
            on_disk.spec.process.map(|p| p.pid),
            Some(std::process::id() as i32)
        );
    }

    /// A worker someone else stopped before its process was known had nothing to stop
    /// then: the record is kept (for cleanup) and the launch fails, so the caller ends it.
    #[test]
    fn a_worker_stopped_before_its_record_fails_the_launch() {
        let (_d, home) = crate::home::test_home();
        active(&home, "w2");
        let stop = |st: Status, to: StateDir| Move {
            from: &[StateDir::Active],
            to,
            status: Some(st),
            reason: "stop-worker",
        };
        move_worker(
            &home,
            "w2",
            &stop(Status::ShuttingDown, StateDir::Active),
            |_| {},
        )
        .unwrap();
        move_worker(
            &home,
            "w2",
            &stop(Status::Completed, StateDir::Completed),
            |_| {},
        )
        .unwrap();
        let (_, stopped) = record_process(&home, "w2", info()).unwrap();
        assert_eq!(stopped, Some(StateDir::Completed), "the launch fails");
        let on_disk = spec::load(&home, "w2").unwrap();
        assert!(on_disk.spec.process.is_some());
        assert!(stopped_by_others(&on_disk.spec, on_disk.dir));
    }
}
