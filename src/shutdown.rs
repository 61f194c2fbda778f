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
use crate::process::{self, Identity};
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
}

impl ProcessOutcome {
    /// True when a signal was sent.
    pub fn signalled(self) -> bool {
        matches!(self, ProcessOutcome::Terminated | ProcessOutcome::Killed)
    }

    /// The signal that ended the process, when we sent one.
    pub fn signal(self) -> Option<i32> {
        match self {
            ProcessOutcome::Terminated => Some(libc::SIGTERM),
            ProcessOutcome::Killed => Some(libc::SIGKILL),
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
    let (spec, previous_status) = mark_shutting_down(home, id, grace, reason)?;
    let process = terminate(spec.process.as_ref(), grace)?;
    note_exit(home, id, reason, process)?;
    // The monitor may have seen the exit and moved the worker to zombie/ meanwhile: a stop
    // we asked for is still a stop, so it is settled from there too (once: move_worker
    // re-reads under the lock and releases the budget only on leaving the live set).
    let spec = lifecycle::record_stopped(home, id, reason, &[StateDir::Active, StateDir::Zombie])?;
    Ok(Stopped {
        spec,
        previous_status,
        process,
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

/// Terminates a worker's process group if (and only if) the recorded identity still names
/// a live local process. `process::terminate` re-checks the identity after opening a pidfd,
/// so a pid reused between this check and the signal cannot be hit.
fn terminate(info: Option<&process::ProcessInfo>, grace: Duration) -> Result<ProcessOutcome> {
    let Some(info) = info else {
        return Ok(ProcessOutcome::NoProcess);
    };
    match info.check() {
        Identity::Foreign => return Ok(ProcessOutcome::Foreign),
        Identity::Gone => return Ok(ProcessOutcome::Gone),
        Identity::Alive => {}
    }
    Ok(match process::terminate(info, grace)? {
        (false, _) => ProcessOutcome::Gone,
        (true, false) => ProcessOutcome::Terminated,
        (true, true) => ProcessOutcome::Killed,
    })
}

/// Records in the spec which signal ended the process, so the post-mortem in `completed/`
/// or `archived/` says whether the worker honoured SIGTERM.
fn note_exit(home: &Home, id: &str, reason: &str, outcome: ProcessOutcome) -> Result<()> {
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
            spec.exit = Some(ExitInfo {
                code: None,
                signal: Some(signal),
                reason: reason.to_string(),
                at: now,
                extra: Default::default(),
            })
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
fn par_map<T: Sync, R: Send>(items: &[T], max: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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

/// What `cleanup-zombies` is asked to do.
#[derive(Debug, Clone)]
pub struct CleanupOptions {
    /// Only these workers (default: every spec in `zombie/`).
    pub workers: Vec<String>,
    /// Every zombie; with `force`, every active worker too (seed 001 `cleanup --all --force`).
    pub all: bool,
    /// Also end live (active) workers: all of them with `all`, the named ones otherwise.
    pub force: bool,
    /// SIGTERM-to-SIGKILL grace for processes that are still alive.
    pub grace: Duration,
    /// Report what would be done; write and signal nothing.
    pub dry_run: bool,
    /// Archive completed specs whose `completed_at` is older than this.
    pub archive_completed_older_than: Option<chrono::Duration>,
}

/// What cleanup did (or would do) to one worker.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanupItem {
    pub worker_id: String,
    /// The state directory the worker was found in (`null` for an unknown id).
    pub from: Option<&'static str>,
    /// `archived`, `stopped`, `skipped`, `failed`, or `would_archive` / `would_stop`.
    pub action: &'static str,
    pub process: Option<ProcessOutcome>,
    pub tokens_released: u64,
    pub error: Option<String>,
    /// Exit code this item contributes (0 when it went well).
    #[serde(skip)]
    pub code: u8,
}

/// A bad file moved aside during the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantinedFile {
    pub path: String,
    pub reason: String,
    /// Where it went (`null` in a dry run).
    pub quarantined_as: Option<String>,
}

/// The report of one cleanup run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// Set when another run holds the cleanup lock and this one did nothing.
    pub skipped: Option<String>,
    pub workers: Vec<CleanupItem>,
    pub archived_completed: Vec<CleanupItem>,
    pub quarantined: Vec<QuarantinedFile>,
}

impl CleanupReport {
    /// The exit code of the run: 0, or the worst code of any item (1 outranks the rest,
    /// since an unexpected failure matters more than a wrong id).
    pub fn exit_code(&self) -> u8 {
        let codes = self
            .workers
            .iter()
            .chain(&self.archived_completed)
            .map(|i| i.code);
        worst_code(codes)
    }
}

/// Combines exit codes ripgrep-style: 0 when all are 0, 1 when any is 1, else the highest.
pub fn worst_code(codes: impl IntoIterator<Item = u8>) -> u8 {
    let mut worst = 0u8;
    for c in codes {
        if c == 1 || worst == 1 {
            worst = 1;
        } else {
            worst = worst.max(c);
        }
    }
    worst
}

/// A worker the run will act on.
struct Target {
    id: String,
    dir: StateDir,
    spec: WorkerSpec,
}

const CLEANUP_REASON: &str = "zombie cleanup";
const FORCE_REASON: &str = "cleanup-zombies --force";

/// Cleans up zombies and failed workers: identity-checked termination of any process still
/// alive (its group), budget released, spec archived, worker log kept; with `force`, live
/// workers are stopped; old completed specs are archived. Bad files met on the way are
/// quarantined and the run goes on.
///
/// Runs are serialised by the `cleanup-zombies` lock so that cron overlap is harmless: a
/// run that finds the lock held does nothing and says so in `skipped`. Even without it,
/// every move re-reads the spec under its worker lock, so nothing is released twice.
pub fn cleanup(home: &Home, opts: &CleanupOptions) -> Result<CleanupReport> {
    let mut report = CleanupReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // A dry run takes no lock: it writes nothing, not even a lock file.
    let _run = if opts.dry_run {
        None
    } else {
        match crate::store::try_lock(&home.named_lock("cleanup-zombies"))? {
            Some(g) => Some(g),
            None => {
                report.skipped = Some(
                    "another cleanup-zombies run is in progress; nothing done (it will finish the job)"
                        .into(),
                );
                return Ok(report);
            }
        }
    };
    let (targets, mut failed) = collect_targets(home, opts, &mut report)?;
    let progress = crate::progress::Progress::new("cleanup-zombies", targets.len());
    let items = par_map(&targets, CLEANUP_PARALLEL, |t| {
        let item = clean_one(home, t, opts);
        progress.inc();
        item
    });
    progress.finish();
    // Keep the order of the ids as found; named-but-unusable ids come last.
    report.workers = items;
    report.workers.append(&mut failed);
    if let Some(age) = opts.archive_completed_older_than {
        report.archived_completed =
            archive_completed(home, age, opts.dry_run, &mut report.quarantined)?;
    }
    Ok(report)
}

/// Cleanup threads: archiving is short but fsync-bound, and a zombie whose process is still
/// alive waits out the grace period, so several run at once.
const CLEANUP_PARALLEL: usize = 16;

/// Finds the workers to act on; named ids that cannot be acted on become failed items.
fn collect_targets(
    home: &Home,
    opts: &CleanupOptions,
    report: &mut CleanupReport,
) -> Result<(Vec<Target>, Vec<CleanupItem>)> {
    let mut targets = Vec::new();
    let mut failed = Vec::new();
    if !opts.workers.is_empty() {
        for id in &opts.workers {
            match named_target(home, id, opts, &mut report.quarantined) {
                Ok(t) => targets.push(t),
                Err(e) => failed.push(failed_item(id, spec::locate(home, id).map(|(d, _)| d), e)),
            }
        }
        return Ok((targets, failed));
    }
    let mut dirs = vec![StateDir::Zombie];
    if opts.all && opts.force {
        dirs.insert(0, StateDir::Active);
    }
    for dir in dirs {
        let (specs, bad) = spec::scan(home, dir)?;
        quarantine_all(home, bad, opts.dry_run, &mut report.quarantined)?;
        targets.extend(specs.into_iter().map(|spec| Target {
            id: spec.worker_id.clone(),
            dir,
            spec,
        }));
    }
    Ok((targets, failed))
}

/// Resolves one `--worker ID`: it must be a zombie, or active with `--force`.
fn named_target(
    home: &Home,
    id: &str,
    opts: &CleanupOptions,
    quarantined: &mut Vec<QuarantinedFile>,
) -> Result<Target> {
    crate::id::validate("worker", id)?;
    let (dir, path) =
        spec::locate(home, id).ok_or_else(|| Error::NotFound(format!("no such worker: {id}")))?;
    let allowed = dir == StateDir::Zombie || (dir == StateDir::Active && opts.force);
    if !allowed {
        let hint = if dir == StateDir::Active {
            " (add --force to end a live worker)"
        } else {
            ""
        };
        return Err(Error::Conflict(format!(
            "worker {id} is in {}/, not a zombie{hint}",
            dir.name()
        )));
    }
    match spec::read_for_scan(&path) {
        Ok(spec) => Ok(Target {
            id: id.to_string(),
            dir,
            spec,
        }),
        Err(crate::store::ReadError::Refused(why)) => {
            quarantine_all(
                home,
                vec![(path.clone(), why.clone())],
                opts.dry_run,
                quarantined,
            )?;
            Err(Error::Invalid(format!(
                "{}: {why} (quarantined)",
                path.display()
            )))
        }
        Err(e) => Err(e.into_error(&path)),
    }
}

fn failed_item(id: &str, dir: Option<StateDir>, e: Error) -> CleanupItem {
    CleanupItem {
        worker_id: id.to_string(),
        from: dir.map(StateDir::name),
        action: "failed",
        process: None,
        tokens_released: 0,
        code: e.exit_code(),
        error: Some(e.to_string()),
    }
}

/// Quarantines unreadable files (each with a `spec_quarantined` event), or only lists them
/// in a dry run.
fn quarantine_all(
    home: &Home,
    bad: spec::Unreadable,
    dry_run: bool,
    out: &mut Vec<QuarantinedFile>,
) -> Result<()> {
    for (path, reason) in bad {
        let quarantined_as = if dry_run {
            None
        } else {
            match crate::events::quarantine(home, &path, &reason) {
                Ok(q) => Some(q.display().to_string()),
                // Someone else moved it first: nothing left to do.
                Err(e) if e.is_not_found_io() => continue,
                Err(e) => return Err(e),
            }
        };
        tracing::warn!("quarantined {}: {reason}", path.display());
        out.push(QuarantinedFile {
            path: path.display().to_string(),
            reason,
            quarantined_as,
        });
    }
    Ok(())
}

/// Cleans one worker; never fails the run, the item says what went wrong.
fn clean_one(home: &Home, t: &Target, opts: &CleanupOptions) -> CleanupItem {
    let mut item = CleanupItem {
        worker_id: t.id.clone(),
        from: Some(t.dir.name()),
        action: "failed",
        process: None,
        tokens_released: 0,
        error: None,
        code: 0,
    };
    if opts.dry_run {
        item.action = if t.dir == StateDir::Active {
            "would_stop"
        } else {
            "would_archive"
        };
        item.process = Some(predict(t.spec.process.as_ref()));
        item.tokens_released = t.spec.token_budget.allocated;
        return item;
    }
    if t.dir == StateDir::Active {
        return match stop_worker_detailed(home, &t.id, opts.grace, FORCE_REASON) {
            Ok(s) => CleanupItem {
                action: "stopped",
                process: Some(s.process),
                tokens_released: s.spec.token_budget.allocated,
                ..item
            },
            Err(e) => settle_error(item, e),
        };
    }
    match clean_zombie(home, t, opts.grace) {
        Ok((process, released)) => CleanupItem {
            action: "archived",
            process: Some(process),
            tokens_released: released,
            ..item
        },
        Err(e) => {
            let item = settle_error(item, e);
            if item.action == "failed" {
                events::emit(
                    home,
                    Event::new(
                        EventType::ZombieCleanupFailed,
                        format!(
                            "cleanup of {} failed: {}",
                            t.id,
                            item.error.as_deref().unwrap_or("")
                        ),
                    )
                    .worker(&t.spec)
                    .with("error", item.error.clone().unwrap_or_default()),
                );
            }
            item
        }
    }
}

/// A worker found by a scan that moved on before we got to it (another cleanup, a
/// concurrent stop) is skipped, not failed: someone else settled it.
fn settle_error(mut item: CleanupItem, e: Error) -> CleanupItem {
    let moved_on = matches!(e, Error::NotFound(_) | Error::Conflict(_));
    item.action = if moved_on { "skipped" } else { "failed" };
    item.code = if moved_on { 0 } else { e.exit_code() };
    item.error = Some(e.to_string());
    item
}

/// What a dry run expects for a process, without signalling it.
fn predict(info: Option<&process::ProcessInfo>) -> ProcessOutcome {
    match info.map(|i| i.check()) {
        None => ProcessOutcome::NoProcess,
        Some(Identity::Foreign) => ProcessOutcome::Foreign,
        Some(Identity::Gone) => ProcessOutcome::Gone,
        Some(Identity::Alive) => ProcessOutcome::Terminated,
    }
}

/// Terminates a zombie's process if it is still (verifiably) alive, then archives it,
/// releasing its reservation. Returns the process outcome and the tokens released.
fn clean_zombie(home: &Home, t: &Target, grace: Duration) -> Result<(ProcessOutcome, u64)> {
    let process = terminate(t.spec.process.as_ref(), grace)?;
    if process.signalled() {
        let pid = t.spec.process.as_ref().map(|p| p.pid);
        events::emit(
            home,
            Event::new(
                EventType::ZombieProcessTerminated,
                format!(
                    "terminated the process group of zombie {} ({})",
                    t.id,
                    process.describe()
                ),
            )
            .worker(&t.spec)
            .with("pid", pid)
            .with("pgid", t.spec.process.as_ref().and_then(|p| p.pgid))
            .with("signal", process.signal())
            .with("killed", process == ProcessOutcome::Killed),
        );
        note_exit(home, &t.id, CLEANUP_REASON, process)?;
    }
    // The liveness lock is held by every process the worker started, in any group: if it
    // is still held, something of the worker outlived its group and needs a human.
    let lingering = lingering(home, &t.id, process.signalled());
    if lingering {
        tracing::warn!(
            "{}: a process of this worker still holds its liveness lock ({}); it was not signalled",
            t.id,
            home.alive_lock(&t.id).display()
        );
    }
    let spec = lifecycle::archive_worker(home, &t.id, CLEANUP_REASON)?;
    let from_zombie = spec
        .history
        .last()
        .and_then(|h| h.from.as_deref())
        .is_some_and(|f| f == StateDir::Zombie.name());
    let released = if from_zombie {
        spec.token_budget.allocated
    } else {
        0
    };
    events::emit(
        home,
        Event::new(
            EventType::ZombieCleanupCompleted,
            format!("cleaned up {}: {released} tokens released", t.id),
        )
        .worker(&spec)
        .with("process", process.describe())
        .with("tokens_released", released)
        .with("processes_lingering", lingering)
        .with("log", home.worker_log(&t.id).display().to_string()),
    );
    Ok((process, released))
}

/// Archives completed specs older than `age` (by `completed_at`, else when they finished).
fn archive_completed(
    home: &Home,
    age: chrono::Duration,
    dry_run: bool,
    quarantined: &mut Vec<QuarantinedFile>,
) -> Result<Vec<CleanupItem>> {
    let cutoff = time::now() - age;
    let (specs, bad) = spec::scan(home, StateDir::Completed)?;
    quarantine_all(home, bad, dry_run, quarantined)?;
    let reason = format!("completed more than {} ago", human_age(age));
    let old: Vec<WorkerSpec> = specs
        .into_iter()
        .filter(|s| s.finished_at().is_some_and(|t| t < cutoff))
        .collect();
    Ok(par_map(&old, CLEANUP_PARALLEL, |s| {
        let item = CleanupItem {
            worker_id: s.worker_id.clone(),
            from: Some(StateDir::Completed.name()),
            action: "would_archive",
            process: None,
            tokens_released: 0,
            error: None,
            code: 0,
        };
        if dry_run {
            return item;
        }
        match lifecycle::archive_worker(home, &s.worker_id, &reason) {
            Ok(_) => CleanupItem {
                action: "archived",
                ..item
            },
            Err(e) => settle_error(item, e),
        }
    }))
}

/// True when something of the worker still holds its liveness lock. Right after a group
/// kill the last members may still be exiting, so a signalled worker gets a short grace.
fn lingering(home: &Home, id: &str, signalled: bool) -> bool {
    let path = home.alive_lock(id);
    let free = || process::alive_lock_free(&path).unwrap_or(true);
    if signalled {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if free() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    !free()
}

/// `7d`, `12h`, `90s`: an age as an operator would have written it.
fn human_age(age: chrono::Duration) -> String {
    let s = age.num_seconds();
    match s {
        s if s > 0 && s % 604_800 == 0 => format!("{}w", s / 604_800),
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_code_prefers_unexpected_failures_then_the_highest() {
        assert_eq!(worst_code([]), 0);
        assert_eq!(worst_code([0, 0]), 0);
        assert_eq!(worst_code([3, 5, 0]), 5);
        assert_eq!(worst_code([5, 1, 3]), 1);
        assert_eq!(worst_code([1, 6]), 1);
    }

    #[test]
    fn ages_read_as_written() {
        assert_eq!(human_age(chrono::Duration::days(7)), "1w");
        assert_eq!(human_age(chrono::Duration::days(3)), "3d");
        assert_eq!(human_age(chrono::Duration::hours(12)), "12h");
        assert_eq!(human_age(chrono::Duration::seconds(90)), "90s");
        assert_eq!(human_age(chrono::Duration::zero()), "0s");
    }

    #[test]
    fn par_map_keeps_order_and_runs_everything() {
        let items: Vec<u32> = (0..200).collect();
        let out = par_map(&items, 8, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(par_map(&Vec::<u32>::new(), 8, |x| *x).is_empty());
    }
}
