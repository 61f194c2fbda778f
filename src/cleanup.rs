//! Zombie cleanup (DESIGN.md §5, §6, §7): whatever still lives of a zombie or failed worker
//! is ended through [`crate::stop::stop_group`] (identity and proof checked, S2; the group
//! and any liveness-lock holder stopped when the leader is gone, S1), its reservation is
//! released and its spec archived; with `--force` live workers are stopped; old completed
//! specs are archived. Bad files met on the way are quarantined and the run goes on.
//! Container workers' leftover containers are removed ([`containers`]).

pub mod containers;

use crate::container::Target;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle;
use crate::process::{self, Identity};
use crate::spec::{self, WorkerSpec};
use crate::stop::{note_exit, par_map, stop_processes, stop_worker_detailed, ProcessOutcome};
use crate::time;
use std::time::Duration;

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
    /// A container worker's container: `removed`, `gone`, `would_remove`, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'static str>,
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
    /// Leftover containers of this home removed (or, in a dry run, to remove).
    pub containers: Vec<containers::ContainerItem>,
}

impl CleanupReport {
    /// The exit code of the run: 0, or the worst code of any item (1 outranks the rest,
    /// since an unexpected failure matters more than a wrong id).
    pub fn exit_code(&self) -> u8 {
        let codes = self
            .workers
            .iter()
            .chain(&self.archived_completed)
            .map(|i| i.code)
            .chain(
                self.containers
                    .iter()
                    .map(|c| u8::from(c.action == "failed")),
            );
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
struct CleanTarget {
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
    if opts.workers.is_empty() {
        let mut engines = crate::container::engines_in_use(home);
        for t in targets.iter().filter_map(|t| Target::of_spec(&t.spec)) {
            if !engines.contains(&t.kind) {
                engines.push(t.kind);
            }
        }
        report.containers = containers::sweep(home, opts.dry_run, &engines);
    }
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
) -> Result<(Vec<CleanTarget>, Vec<CleanupItem>)> {
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
        targets.extend(specs.into_iter().map(|spec| CleanTarget {
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
) -> Result<CleanTarget> {
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
        Ok(spec) => Ok(CleanTarget {
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
        container: None,
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
fn clean_one(home: &Home, t: &CleanTarget, opts: &CleanupOptions) -> CleanupItem {
    let mut item = CleanupItem {
        worker_id: t.id.clone(),
        from: Some(t.dir.name()),
        action: "failed",
        process: None,
        tokens_released: 0,
        error: None,
        code: 0,
        container: None,
    };
    if opts.dry_run {
        item.action = if t.dir == StateDir::Active {
            "would_stop"
        } else {
            "would_archive"
        };
        item.process = Some(predict(home, &t.id, t.spec.process.as_ref()));
        item.tokens_released = t.spec.token_budget.allocated;
        if t.dir != StateDir::Active && Target::of_spec(&t.spec).is_some() {
            item.container = Some("would_remove");
        }
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
        Ok((process, released, container)) => CleanupItem {
            action: "archived",
            process: Some(process),
            tokens_released: released,
            container,
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
fn predict(home: &Home, id: &str, info: Option<&process::ProcessInfo>) -> ProcessOutcome {
    let proof = process::Proof::new(id, home.alive_lock(id));
    match info.map(|i| (i, i.check())) {
        None => ProcessOutcome::NoProcess,
        Some((_, Identity::Foreign)) => ProcessOutcome::Foreign,
        Some((i, Identity::Alive)) if proof.carried_by(i.pid) => ProcessOutcome::Terminated,
        Some((_, Identity::Alive)) => ProcessOutcome::Unproven,
        Some((_, Identity::Gone)) => {
            if process::alive_lock_free(&home.alive_lock(id)).unwrap_or(true) {
                ProcessOutcome::Gone
            } else {
                ProcessOutcome::GroupTerminated
            }
        }
    }
}

/// Ends whatever still lives of a zombie (its group, and after the leader's exit anything
/// holding its liveness lock), then archives it, releasing its reservation. Returns the
/// process outcome and the tokens released.
fn clean_zombie(
    home: &Home,
    t: &CleanTarget,
    grace: Duration,
) -> Result<(ProcessOutcome, u64, Option<&'static str>)> {
    let (process, last) = stop_processes(home, &t.id, t.spec.process.as_ref(), grace)?;
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
            .with("killed", process.signal() == Some(libc::SIGKILL))
            .with(
                "leader_exited",
                matches!(
                    process,
                    ProcessOutcome::GroupTerminated | ProcessOutcome::GroupKilled
                ),
            ),
        );
        if last.is_none() {
            note_exit(home, &t.id, CLEANUP_REASON, process)?;
        }
    }
    if let Some(st) = &last {
        crate::stop::container::note_exit(home, &t.id, CLEANUP_REASON, process, st)?;
    }
    let lingering = process == ProcessOutcome::Lingering;
    let spec = lifecycle::archive_worker(home, &t.id, CLEANUP_REASON)?;
    // Archived: its container (kept for its exit code) has nothing left to tell.
    let container = Target::of_spec(&spec).map(|c| containers::remove_of(home, &t.id, &c));
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
        .with("container", container)
        .with("log", home.worker_log(&t.id).display().to_string()),
    );
    Ok((process, released, container))
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
            container: None,
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
}
