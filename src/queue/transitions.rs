//! Every change of a task after its claim: complete, fail (retry with backoff, or dead
//! letter), requeue, lease renewal and cancel. Each takes the task's stripe lock, re-reads
//! the task from where it lives now, checks who is asking, writes, moves, counts and logs
//! its event; dependents of a task that ended are settled after the lock is released.

use super::counts::{self, Delta};
use super::layout::{self, read_task, state_path};
use super::moves::{self, emit, emit_many, Durability};
use super::policy::QueuePolicy;
use super::task::{Task, MAX_ERROR_BYTES};
use super::task_event;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::home::{Home, TaskState};
use crate::store::ReadError;
use crate::time;
use serde_json::Value;
use std::path::PathBuf;

/// Who is asking to change a claimed task.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The caller's worker name (`--worker`, `$CORRAL_WORKER_ID`).
    pub worker: Option<String>,
    /// Act even when the caller is not the claimant.
    pub force: bool,
}

impl Caller {
    /// The claimant itself.
    pub fn worker(name: &str) -> Caller {
        Caller {
            worker: Some(name.to_string()),
            force: false,
        }
    }
}

/// The operations that need a processing task, with the words their messages use.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Complete,
    Fail,
    Requeue,
    Renew,
    Cancel,
}

impl Verb {
    fn base(self) -> &'static str {
        match self {
            Verb::Complete => "complete",
            Verb::Fail => "fail",
            Verb::Requeue => "requeue",
            Verb::Renew => "renew the lease of",
            Verb::Cancel => "cancel",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Complete => "completed",
            Verb::Fail => "failed",
            Verb::Requeue => "requeued",
            Verb::Renew => "renewed",
            Verb::Cancel => "cancelled",
        }
    }
}

fn check_claimant(task: &Task, caller: &Caller, verb: Verb) -> Result<()> {
    if caller.force {
        return Ok(());
    }
    let claimant = task.claimed_by.as_deref().unwrap_or("nobody");
    match caller.worker.as_deref() {
        Some(w) if Some(w) == task.claimed_by.as_deref() => Ok(()),
        Some(w) => Err(Error::Conflict(format!(
            "task {} is claimed by {claimant}, not {w}: only the claimant may {} it (--force overrides)",
            task.task_id,
            verb.base()
        ))),
        None => Err(Error::Conflict(format!(
            "task {} is claimed by {claimant}: say who you are with --worker (or CORRAL_WORKER_ID), or pass --force",
            task.task_id
        ))),
    }
}

/// Reads a file that must hold task `id`; a file whose content names another task is
/// quarantined (S9: never act on it).
pub(crate) fn read_checked(
    home: &Home,
    path: &std::path::Path,
    id: &str,
) -> std::result::Result<Task, ReadError> {
    let t = read_task(path)?;
    if t.task_id != id {
        let why = format!("file name says task {id}, content says task {}", t.task_id);
        moves::quarantine(home, path, &why);
        return Err(ReadError::Refused(why));
    }
    Ok(t)
}

/// Loads a task that must be in processing/, under its stripe lock (held by the caller).
fn load_processing(home: &Home, id: &str, verb: Verb) -> Result<(PathBuf, Task)> {
    crate::id::validate("task", id)?;
    let path = state_path(home, TaskState::Processing, id);
    match read_checked(home, &path, id) {
        Ok(t) => Ok((path, t)),
        Err(ReadError::Missing) => match moves::locate(home, id)? {
            Some((st, _)) => Err(Error::Conflict(format!(
                "cannot {} task {id}: it is {} (only a processing task can be {})",
                verb.base(),
                st.name(),
                verb.done()
            ))),
            None => Err(Error::NotFound(format!("no such task: {id}"))),
        },
        Err(e) => Err(e.into_error(&path)),
    }
}

/// Marks a processing task completed and moves it to `completed/`. A result too large to
/// keep whole is truncated with a marker (see `task`).
pub fn complete(home: &Home, id: &str, caller: &Caller, result: Option<Value>) -> Result<Task> {
    let task = {
        let _g = moves::task_lock(home, id)?;
        let (path, mut task) = load_processing(home, id, Verb::Complete)?;
        check_claimant(&task, caller, Verb::Complete)?;
        let now = time::now();
        let by = caller.worker.clone().or(task.claimed_by.clone());
        task.transition(TaskState::Completed, by.as_deref(), "completed", now);
        task.completed_at = Some(now);
        task.result = result;
        moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Completed, 1))?;
        let elapsed = task.processing_seconds(now).unwrap_or(0.0);
        emit(
            home,
            task_event(
                EventType::TaskCompleted,
                &task,
                format!("{id} completed after {elapsed:.1}s"),
            )
            .with("elapsed_seconds", elapsed),
        );
        task
    };
    super::deps::release_dependents(home, id)?;
    Ok(task)
}

/// Where a failure sent the task.
#[derive(Debug, Clone)]
pub struct Failed {
    pub task: Task,
    /// True when it went to `failed/` (dead-lettered), false when back to pending.
    pub dead_lettered: bool,
}

/// Records a failure, with the retry backoff of the home's policy (see [`fail_with`]).
pub fn fail(
    home: &Home,
    id: &str,
    caller: &Caller,
    error: Option<String>,
    no_retry: bool,
) -> Result<Failed> {
    let policy = QueuePolicy::load(home);
    fail_with(home, id, caller, error, no_retry, &policy)
}

/// Records a failure: back to pending for another attempt — not claimable before the
/// class's retry backoff has passed — or to `failed/` once `attempts` reached
/// `max_attempts` or `no_retry` is set (`task_dead_lettered`). A task whose cancellation
/// was asked for is cancelled instead of retried.
pub fn fail_with(
    home: &Home,
    id: &str,
    caller: &Caller,
    error: Option<String>,
    no_retry: bool,
    policy: &QueuePolicy,
) -> Result<Failed> {
    let (task, dead) = {
        let _g = moves::task_lock(home, id)?;
        let (path, mut task) = load_processing(home, id, Verb::Fail)?;
        check_claimant(&task, caller, Verb::Fail)?;
        if task.cancel_requested_at.is_some() {
            drop(_g);
            let t = finish_cancel(home, id, caller)?;
            return Ok(Failed {
                task: t,
                dead_lettered: true,
            });
        }
        let now = time::now();
        let by = caller.worker.clone().or(task.claimed_by.clone());
        let claimant = task.claimed_by.clone();
        let why = error.clone().unwrap_or_else(|| "failed".into());
        task.set_error(why.clone(), MAX_ERROR_BYTES);
        task.failed_at = Some(now);
        let dead = no_retry || task.attempts >= task.max_attempts;
        let mut evs = vec![task_event(
            EventType::TaskFailed,
            &task,
            format!(
                "{id} failed (attempt {}/{}): {}",
                task.attempts,
                task.max_attempts,
                super::task::cut(&why, 512)
            ),
        )
        .with("error", super::task::cut(&why, 4096))];
        if dead {
            task.transition(TaskState::Failed, by.as_deref(), &why, now);
            moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Failed, 1))?;
            let reason = if no_retry {
                "--no-retry".to_string()
            } else {
                format!("{} of {} attempts used", task.attempts, task.max_attempts)
            };
            evs.push(
                super::dead_lettered_event(&task, &reason)
                    .with("error", super::task::cut(&why, 4096)),
            );
        } else {
            let delay = policy.retry_delay(&task.class, task.attempts);
            let mut reason = format!("retry: {why}");
            if delay > 0.0 {
                let at = time::add_secs(now, delay);
                task.not_before = Some(at);
                reason = format!("retry in {delay:.1}s: {why}");
                if let Some(ev) = evs.first_mut() {
                    ev.data.insert("retry_at".into(), time::format(&at).into());
                    ev.data
                        .insert("backoff_seconds".into(), serde_json::json!(delay));
                }
            }
            task.transition(TaskState::Pending, by.as_deref(), &reason, now);
            task.reset_claim();
            moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Pending, 1))?;
        }
        for ev in &mut evs {
            ev.worker_id = claimant.clone();
        }
        emit_many(home, &evs);
        (task, dead)
    };
    if dead {
        super::deps::release_dependents(home, id)?;
    }
    Ok(Failed {
        task,
        dead_lettered: dead,
    })
}

/// Puts a processing, failed or cancelled task back in pending (an operator's decision, or
/// the monitor's when the claimant is gone). A dead-lettered or cancelled task gets a fresh
/// set of attempts.
///
/// A failed or cancelled task enqueued `--after` others is judged by them again, as at
/// enqueue: it goes back to `deferred/` while one is still pending, deferred or processing
/// (released when they complete), to pending when all completed, and is refused (exit 5,
/// naming it) while one is dead-lettered or cancelled — requeue that one first — or no
/// longer exists when it never ran (nothing says whether that one completed).
///
/// With `caller`, only the claimant (or `force`) may requeue, and only a processing task: the
/// `work` loop returns its task this way on SIGTERM without touching a task the monitor has
/// already given to someone else.
pub fn requeue(home: &Home, id: &str, caller: Option<&Caller>, reason: &str) -> Result<Task> {
    crate::id::validate("task", id)?;
    let task = requeue_locked(home, id, caller, reason)?;
    if task.state != TaskState::Deferred {
        return Ok(task);
    }
    // A dependency may have ended between the check and the markers (as at enqueue).
    match super::deps::settle(home, id)? {
        Some(TaskState::Deferred) | None => Ok(task),
        Some(_) => Ok(moves::find(home, id).map(|f| f.task).unwrap_or(task)),
    }
}

/// Where a failed or cancelled task's dependencies send it back: pending when they all
/// completed, deferred while one has not ended; an error naming a dependency that died.
fn requeue_target(home: &Home, task: &Task) -> Result<TaskState> {
    if task.after.is_empty() {
        return Ok(TaskState::Pending);
    }
    let id = &task.task_id;
    match super::deps::check(home, &task.after, true)? {
        super::deps::DepState::Ready => Ok(TaskState::Pending),
        super::deps::DepState::Waiting => Ok(TaskState::Deferred),
        super::deps::DepState::Dead(why) => {
            let dep = task
                .after
                .iter()
                .find(|d| why.starts_with(&format!("dependency {d} was ")))
                .cloned()
                .unwrap_or_else(|| "it".into());
            Err(Error::Conflict(format!(
                "cannot requeue task {id}: {why} (requeue {dep} first, or enqueue the work again without it)"
            )))
        }
        // Purged: it ended, and if this task ever left deferred, it completed.
        super::deps::DepState::Missing(_) if was_released(task) => Ok(TaskState::Pending),
        super::deps::DepState::Missing(d) => Err(Error::Conflict(format!(
            "cannot requeue task {id}: its dependency {d} no longer exists (purged), so it cannot be known to have completed (enqueue the work again without it)"
        ))),
    }
}

/// True when the task has been pending or processing before: its dependencies had all
/// completed then, and a completed task stays completed.
fn was_released(task: &Task) -> bool {
    task.attempts > 0
        || task.claimed_at.is_some()
        || task
            .history
            .iter()
            .any(|h| h.to == "pending" || h.to == "processing")
}

fn requeue_locked(home: &Home, id: &str, caller: Option<&Caller>, reason: &str) -> Result<Task> {
    let _g = moves::task_lock(home, id)?;
    let now = time::now();
    let processing = state_path(home, TaskState::Processing, id);
    let (path, mut task) = match read_checked(home, &processing, id) {
        Ok(t) => (processing, t),
        Err(ReadError::Missing) => {
            let found = if caller.is_none() {
                [TaskState::Failed, TaskState::Cancelled]
                    .into_iter()
                    .map(|st| state_path(home, st, id))
                    .find(|p| p.exists())
            } else {
                None
            };
            match found {
                Some(p) => {
                    let t = read_checked(home, &p, id).map_err(|e| e.into_error(&p))?;
                    (p, t)
                }
                None => {
                    return Err(match moves::locate(home, id)? {
                        Some((st, _)) => Error::Conflict(format!(
                            "cannot requeue task {id}: it is {} (only a processing, failed or cancelled task can be requeued{})",
                            st.name(),
                            if caller.is_some() { " by an operator; a claimant requeues only its processing task" } else { "" }
                        )),
                        None => Error::NotFound(format!("no such task: {id}")),
                    })
                }
            }
        }
        Err(e) => return Err(e.into_error(&path_for_error(home, id))),
    };
    if let Some(c) = caller {
        check_claimant(&task, c, Verb::Requeue)?;
    }
    let from_state = task.state;
    let from_dir = if path.starts_with(home.tasks_dir(TaskState::Processing)) {
        TaskState::Processing
    } else {
        from_state
    };
    let claimant = task.claimed_by.clone();
    let to = if matches!(from_dir, TaskState::Failed | TaskState::Cancelled) {
        requeue_target(home, &task)?
    } else {
        TaskState::Pending
    };
    if matches!(from_dir, TaskState::Failed | TaskState::Cancelled) {
        task.attempts = 0;
        task.cancelled_at = None;
    }
    task.transition(to, None, reason, now);
    task.reset_claim();
    if to == TaskState::Deferred {
        // Markers first, as at enqueue: an ending that misses the deferred file finds them.
        super::deps::add_markers(home, &task)?;
    }
    moves::move_out(
        home,
        &path,
        &mut task,
        &Delta::moved(
            (from_dir != TaskState::Processing).then_some(from_dir),
            Some(to),
        ),
    )?;
    let mut ev = task_event(
        EventType::TaskRequeued,
        &task,
        if to == TaskState::Deferred {
            format!(
                "{id} requeued: {reason} (waits for {})",
                task.after.join(", ")
            )
        } else {
            format!("{id} requeued: {reason}")
        },
    )
    .with("reason", reason)
    .with("from", from_dir.name())
    .with("to", to.name());
    ev.worker_id = claimant.clone();
    if let Some(c) = claimant {
        ev = ev.with("claimed_by", c);
    }
    emit(home, ev);
    Ok(task)
}

fn path_for_error(home: &Home, id: &str) -> PathBuf {
    state_path(home, TaskState::Processing, id)
}

/// Extends the lease of a claim (the `work` loop does this for claimants that are not
/// workers, whose liveness is the lease). Not synced: a lost renewal is renewed again.
pub fn renew_lease(home: &Home, id: &str, worker: &str, lease_seconds: f64) -> Result<Task> {
    let _g = moves::task_lock(home, id)?;
    let (path, mut task) = load_processing(home, id, Verb::Renew)?;
    check_claimant(&task, &Caller::worker(worker), Verb::Renew)?;
    let now = time::now();
    task.lease_seconds = Some(lease_seconds);
    task.lease_expires_at = Some(time::add_secs(now, lease_seconds));
    moves::save(home, &path, &mut task, Durability::Atomic)?;
    Ok(task)
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancelled {
    /// It was pending or deferred: it is in `cancelled/` now.
    Cancelled,
    /// It is processing: its claimant was asked to stop (the `work` loop stops the command
    /// and records the cancellation; a claimant that completes it anyway completes it).
    Cancelling,
}

/// Cancels a task: pending or deferred → `cancelled/` (`task_cancelled`); processing → the
/// request is recorded in the task for its claimant. Tasks waiting for it are dead-lettered.
pub fn cancel(home: &Home, id: &str, reason: &str) -> Result<Cancelled> {
    crate::id::validate("task", id)?;
    for _ in 0..5 {
        let Some((st, path)) = moves::locate(home, id)? else {
            return Err(Error::NotFound(format!("no such task: {id}")));
        };
        match st {
            TaskState::Pending => {
                if let Some(done) = cancel_pending(home, id, &path, reason)? {
                    super::deps::release_dependents(home, id)?;
                    return Ok(done);
                }
            }
            TaskState::Deferred | TaskState::Processing => {
                let g = moves::task_lock(home, id)?;
                let mut task = match read_checked(home, &path, id) {
                    Ok(t) => t,
                    Err(ReadError::Missing) => continue,
                    Err(e) => return Err(e.into_error(&path)),
                };
                let now = time::now();
                if st == TaskState::Processing {
                    if task.cancel_requested_at.is_none() {
                        task.cancel_requested_at = Some(now);
                        task.history.push(super::task::TaskTransition {
                            at: now,
                            from: Some("processing".into()),
                            to: "processing".into(),
                            by: None,
                            reason: format!("cancel requested: {reason}"),
                        });
                        moves::save(home, &path, &mut task, Durability::Durable)?;
                    }
                    return Ok(Cancelled::Cancelling);
                }
                task.transition(TaskState::Cancelled, None, reason, now);
                task.cancelled_at = Some(now);
                moves::move_out(
                    home,
                    &path,
                    &mut task,
                    &Delta::moved(Some(TaskState::Deferred), Some(TaskState::Cancelled)),
                )?;
                for d in &task.after {
                    let dir = layout::deps_dir(home).join(d);
                    let _ = std::fs::remove_file(dir.join(id));
                    let _ = std::fs::remove_dir(&dir);
                }
                emit(home, cancelled_event(&task, reason, TaskState::Deferred));
                drop(g);
                super::deps::release_dependents(home, id)?;
                return Ok(Cancelled::Cancelled);
            }
            st => {
                return Err(Error::Conflict(format!(
                    "cannot cancel task {id}: it is {} already",
                    st.name()
                )))
            }
        }
    }
    Err(Error::Conflict(format!(
        "task {id} keeps moving; try again"
    )))
}

fn cancelled_event(task: &Task, reason: &str, from: TaskState) -> crate::events::Event {
    task_event(
        EventType::TaskCancelled,
        task,
        format!("{} cancelled: {reason}", task.task_id),
    )
    .with("reason", reason)
    .with("from", from.name())
}

/// A pending task is taken out of pending by one rename, racing claimers fairly: `None`
/// when a claimer won (the caller looks again and finds it processing).
fn cancel_pending(
    home: &Home,
    id: &str,
    path: &std::path::Path,
    reason: &str,
) -> Result<Option<Cancelled>> {
    let dir = layout::ensure_state_dir(home, TaskState::Cancelled)?;
    let dest = state_path(home, TaskState::Cancelled, id);
    let _g = moves::task_lock(home, id)?;
    match moves::rename_noreplace(path, &dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                format!("cannot move {} to {}", path.display(), dest.display()),
                e,
            ))
        }
    }
    let mut task = match read_checked(home, &dest, id) {
        Ok(t) => t,
        Err(e) => return Err(e.into_error(&dest)),
    };
    let now = time::now();
    task.transition(TaskState::Cancelled, None, reason, now);
    task.cancelled_at = Some(now);
    moves::save(home, &dest, &mut task, Durability::Durable)?;
    moves::sync_dir(&dir)?;
    counts::add(
        home,
        &task.class,
        &Delta::moved(Some(TaskState::Pending), Some(TaskState::Cancelled)),
    );
    emit(home, cancelled_event(&task, reason, TaskState::Pending));
    Ok(Some(Cancelled::Cancelled))
}

/// Records the cancellation of a processing task whose command was stopped (the `work`
/// loop), or whose claimant failed it after the request.
pub fn finish_cancel(home: &Home, id: &str, caller: &Caller) -> Result<Task> {
    let task = {
        let _g = moves::task_lock(home, id)?;
        let (path, mut task) = load_processing(home, id, Verb::Cancel)?;
        check_claimant(&task, caller, Verb::Cancel)?;
        let now = time::now();
        let by = caller.worker.clone().or(task.claimed_by.clone());
        task.transition(TaskState::Cancelled, by.as_deref(), "cancelled", now);
        task.cancelled_at = Some(now);
        moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Cancelled, 1))?;
        emit(
            home,
            cancelled_event(&task, "cancel requested", TaskState::Processing),
        );
        task
    };
    super::deps::release_dependents(home, id)?;
    Ok(task)
}
