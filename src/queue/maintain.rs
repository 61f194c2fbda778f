//! The monitor's pass over the queue ([`maintain`], called by `heartbeat-monitor` every
//! tick and by `--once`): requeue tasks whose claimant is gone or whose lease ran out,
//! requeue claims that were never recorded (within seconds), finish moves a crash
//! interrupted, report stuck tasks and starved classes once, release or dead-letter tasks
//! waiting for dependencies that ended, purge old finished tasks when the policy says so,
//! and keep the counts exact.
//!
//! Cost per pass when nothing changed: one read per processing task (bounded by the
//! claimants), the active specs, one counter file and at most sixteen small directories per
//! class (the heads of its priorities), one `stat` per awaited dependency. No pending task
//! file is opened and nothing grows with the queue's length.

use super::counts::{self, Delta};
use super::layout::{self, class_dir, file_age, read_task, state_path};
use super::moves::{self, emit};
use super::policy::QueuePolicy;
use super::task::Task;
use super::task_event;
use super::walk;
use crate::error::Result;
use crate::events::{Event, EventType};
use crate::home::{Home, StateDir, TaskState};
use crate::policy::HeartbeatPolicy;
use crate::spec::{self, Status};
use crate::store::ReadError;
use crate::time::{self, Timestamp};
use std::path::Path;

/// What one maintenance pass did to the queue.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Maintenance {
    /// Tasks put back in pending because their claimant is gone or their lease ran out.
    pub requeued: u64,
    /// Of those, claims that were never recorded (the claimer died right after the rename).
    pub unrecorded: u64,
    /// `task_stuck` events written in this pass.
    pub stuck: u64,
    /// `task_starved` events written in this pass.
    pub starved: u64,
    /// Processing tasks whose cancellation was asked for and whose claimant is gone.
    pub cancelled: u64,
    /// Dependencies that ended and whose waiting tasks were settled.
    pub released: u64,
    /// Finished tasks removed by the policy's retention.
    pub purged: u64,
    /// True when the counts were recounted exactly in this pass.
    pub recounted: bool,
    /// Classes of the tasks requeued in this pass (their claimants died or lapsed, maybe
    /// between a move and its count update): their pending counts are recounted.
    #[serde(skip)]
    pub requeued_classes: std::collections::BTreeSet<String>,
    /// One line for the monitor's log: `workers 3/3, queue 123 (llm:123), processing 2, stuck 2`.
    pub summary: String,
    /// The earliest [`next_change`] of the tasks this pass kept in processing/.
    #[serde(skip)]
    pub next_change: Option<Timestamp>,
}

/// How the claimant of a processing task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimant {
    /// A worker whose spec is in `active/`.
    Live,
    /// A worker that has finished, failed or been archived: its task will not be finished.
    Gone { dir: StateDir },
    /// A name that is no worker (a script, a cron job): its liveness is the lease.
    NotAWorker,
    /// Nobody recorded yet (claimed, but the claimant died before writing its record).
    Unrecorded,
}

/// Judges a claimant by where its spec lives: `active/` is live, any other directory is gone,
/// no spec at all is not a worker.
pub fn claimant_state(home: &Home, claimed_by: Option<&str>) -> Claimant {
    let Some(name) = claimed_by else {
        return Claimant::Unrecorded;
    };
    if crate::id::validate("worker", name).is_err() {
        return Claimant::NotAWorker;
    }
    match spec::locate(home, name) {
        Some((StateDir::Active, _)) => Claimant::Live,
        Some((dir, _)) => Claimant::Gone { dir },
        None => Claimant::NotAWorker,
    }
}

/// True when `name` is a worker whose spec is in `active/` (the cmd layer heartbeats it).
pub fn is_active_worker(home: &Home, name: &str) -> bool {
    claimant_state(home, Some(name)) == Claimant::Live
}

/// What the monitor should do with one processing task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do.
    Keep,
    /// Back to pending (the claimant is gone, or its lease ran out).
    Requeue(String),
    /// The claimant is gone on the task's last attempt: to `failed/`.
    DeadLetter(String),
    /// Its cancellation was asked for and nobody is running it any more: to `cancelled/`.
    Cancel(String),
    /// Processing too long: warn once.
    Stuck { elapsed: f64 },
    /// A crash left the task in processing/ with a later state written: finish the move.
    FinishMove,
}

/// Thresholds a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub stuck_task_seconds: f64,
    /// Age after which a claim without a record is taken for a dead claimer's.
    pub claim_grace_seconds: f64,
}

impl Limits {
    /// From the two policies.
    pub fn of(p: &HeartbeatPolicy, q: &QueuePolicy) -> Limits {
        Limits {
            stuck_task_seconds: p.stuck_task_seconds,
            claim_grace_seconds: q.claim_grace_seconds,
        }
    }
}

/// The monitor's decision for one processing task, as a pure function of the task, its
/// claimant's standing, the file's age (for unrecorded claims) and `now`.
pub fn decide(
    task: &Task,
    claimant: &Claimant,
    file_age_seconds: f64,
    limits: Limits,
    now: Timestamp,
) -> Decision {
    if task.state != TaskState::Processing && !task.is_unrecorded_claim() {
        return Decision::FinishMove;
    }
    if task.is_unrecorded_claim() {
        // No claim record: the claimer died between its rename and its record (or its disk
        // was full). A live claimer writes it within milliseconds.
        return if file_age_seconds >= limits.claim_grace_seconds {
            Decision::Requeue(format!(
                "claimed {file_age_seconds:.0}s ago but the claim was never recorded"
            ))
        } else {
            Decision::Keep
        };
    }
    let last_attempt = task.attempts >= task.max_attempts;
    let cancelling = task.cancel_requested_at.is_some();
    let gone = |why: String| {
        if cancelling {
            Decision::Cancel(format!("{why}, and its cancellation was asked for"))
        } else if last_attempt {
            Decision::DeadLetter(format!("{why}, on its last attempt"))
        } else {
            Decision::Requeue(why)
        }
    };
    match claimant {
        Claimant::Gone { dir } => {
            return gone(format!(
                "claimant {} is no longer live (spec in {}/)",
                task.claimed_by.as_deref().unwrap_or("?"),
                dir.name()
            ))
        }
        Claimant::Unrecorded => return Decision::Keep,
        Claimant::NotAWorker => {
            let expired = match task.lease_expires_at {
                Some(exp) => now >= exp,
                None => task
                    .processing_seconds(now)
                    .is_some_and(|e| e >= limits.stuck_task_seconds),
            };
            if expired {
                return gone(format!(
                    "lease of {} ran out",
                    task.claimed_by.as_deref().unwrap_or("?")
                ));
            }
        }
        Claimant::Live => {}
    }
    match task.processing_seconds(now) {
        Some(elapsed)
            if elapsed > limits.stuck_task_seconds && task.stuck_reported_at.is_none() =>
        {
            Decision::Stuck { elapsed }
        }
        _ => Decision::Keep,
    }
}

/// When a task that [`decide`] keeps would be decided otherwise by the passing of time
/// alone: a lease that runs out, or a claim without record that outlives the grace. The
/// monitor runs its next pass then instead of at its paced interval, so a lapsed lease is
/// requeued within moments even where passes are slow and therefore rare. `None`: nothing
/// to wait for (a live claimant's task changes by events, not by time).
pub fn next_change(
    task: &Task,
    claimant: &Claimant,
    file_age_seconds: f64,
    limits: Limits,
    now: Timestamp,
) -> Option<Timestamp> {
    if task.is_unrecorded_claim() {
        let left = limits.claim_grace_seconds - file_age_seconds;
        return Some(crate::time::add_secs(now, left.max(0.0)));
    }
    if task.state != TaskState::Processing || *claimant != Claimant::NotAWorker {
        return None;
    }
    task.lease_expires_at.or_else(|| {
        task.claimed_at
            .map(|c| crate::time::add_secs(c, limits.stuck_task_seconds))
    })
}

/// What the monitor passes around about the workers.
#[derive(Debug, Clone, Default)]
struct Workers {
    total: usize,
    alive: usize,
    idle: Vec<String>,
}

fn scan_workers(home: &Home) -> Result<Workers> {
    let (specs, _) = spec::scan(home, StateDir::Active)?;
    let mut w = Workers {
        total: specs.len(),
        ..Workers::default()
    };
    for s in specs {
        match s.status {
            Status::Running => w.alive += 1,
            Status::Idle => {
                w.alive += 1;
                w.idle.push(s.worker_id);
            }
            _ => {}
        }
    }
    Ok(w)
}

/// Settles what claimers that died left in `.claiming/`. A live claimer holds the task's lock
/// the whole time the task is there, so a task found there under that lock is a dead
/// claimer's: one it had not written its record into yet goes straight back to pending (a
/// requeue of an unrecorded claim, so the counts are recounted); one with its record is
/// moved to processing/, where the rule for its recorded, dead claimant applies. Returns
/// whether anything was found (evidence of a crash, for the counts).
fn sweep_claiming(home: &Home, now: Timestamp, out: &mut Maintenance) -> Result<bool> {
    let dir = layout::claiming_dir(home);
    let mut found = false;
    for name in crate::store::list_json(&dir)? {
        let held = dir.join(&name);
        let Some(id) = name
            .strip_suffix(".json")
            .filter(|id| crate::id::validate("task", id).is_ok())
        else {
            moves::quarantine(home, &held, "not a task file name in .claiming/");
            continue;
        };
        let _g = moves::task_lock(home, id)?;
        if std::fs::symlink_metadata(&held).is_err() {
            continue;
        }
        // Anything left here is a crash: the counts are recounted whatever it holds.
        found = true;
        let mut task = match read_task(&held) {
            Ok(t) if t.task_id == id => t,
            Ok(t) => {
                let why = format!("file name says task {id}, content says task {}", t.task_id);
                moves::quarantine(home, &held, &why);
                continue;
            }
            Err(ReadError::Missing) => continue,
            Err(ReadError::Refused(why)) => {
                moves::quarantine(home, &held, &why);
                continue;
            }
            Err(ReadError::Io(e)) => return Err(e),
        };
        if task.is_unrecorded_claim() {
            let why = "its claimer died while claiming it";
            tracing::warn!("requeueing {id}: {why}");
            let dest = layout::pending_path(home, &task);
            moves::rename_into_pending(home, &held, &dest, moves::Durability::Durable)?;
            task.transition(TaskState::Pending, None, why, now);
            emit(
                home,
                task_event(
                    EventType::TaskRequeued,
                    &task,
                    format!("{id} requeued: {why}"),
                )
                .with("reason", why)
                .with("from", "claiming"),
            );
            out.requeued += 1;
            out.unrecorded += 1;
            continue;
        }
        let to = state_path(home, TaskState::Processing, id);
        match moves::rename_noreplace(&held, &to) {
            Ok(()) => {
                tracing::warn!(
                    "task {id}: its claimer died while placing it; moved to processing/"
                );
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => moves::quarantine(
                home,
                &held,
                "left by a claimer that died, while a task of the same id is in processing/",
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(crate::error::Error::io(
                    format!("cannot move {} to processing/", held.display()),
                    e,
                ))
            }
        }
    }
    Ok(found)
}

/// Applies one decision under the task's lock, re-reading and re-deciding first.
fn apply(
    home: &Home,
    limits: Limits,
    id: &str,
    now: Timestamp,
    out: &mut Maintenance,
) -> Result<()> {
    let g = moves::task_lock(home, id)?;
    let path = state_path(home, TaskState::Processing, id);
    let mut task = match super::transitions::read_checked(home, &path, id) {
        Ok(t) => t,
        Err(ReadError::Missing) => return Ok(()),
        Err(ReadError::Refused(why)) => {
            moves::quarantine(home, &path, &why);
            return Ok(());
        }
        Err(ReadError::Io(e)) => return Err(e),
    };
    let claimant = claimant_state(home, task.claimed_by.as_deref());
    let age = file_age(&path, now).unwrap_or(0.0);
    let decision = decide(&task, &claimant, age, limits, now);
    let claimed_by = task.claimed_by.clone();
    let mut ended = false;
    match decision {
        Decision::Keep => {}
        Decision::FinishMove => {
            tracing::info!(
                "finishing the interrupted move of {id} to {}",
                task.state.name()
            );
            let st = task.state;
            moves::finish_move(home, &path, &task, &Delta::add(st, 1))?;
            ended = matches!(
                st,
                TaskState::Completed | TaskState::Failed | TaskState::Cancelled
            );
        }
        Decision::Requeue(why) => {
            tracing::warn!("requeueing {id}: {why}");
            let unrecorded = task.is_unrecorded_claim();
            let from = task.claimed_by.clone();
            task.transition(TaskState::Pending, None, &why, now);
            task.reset_claim();
            // An unrecorded claim was never taken off the pending count.
            let delta = if unrecorded {
                Delta::default()
            } else {
                Delta::add(TaskState::Pending, 1)
            };
            moves::move_out(home, &path, &mut task, &delta)?;
            let mut ev = task_event(
                EventType::TaskRequeued,
                &task,
                format!("{id} requeued: {why}"),
            )
            .with("reason", why)
            .with("from", "processing");
            ev.worker_id = from.clone();
            if let Some(f) = from {
                ev = ev.with("claimed_by", f);
            }
            emit(home, ev);
            out.requeued += 1;
            out.requeued_classes.insert(task.class.clone());
            if unrecorded {
                out.unrecorded += 1;
            }
        }
        Decision::DeadLetter(why) => {
            tracing::warn!("dead-lettering {id}: {why}");
            task.set_error(why.clone(), super::task::MAX_ERROR_BYTES);
            task.failed_at = Some(now);
            task.transition(TaskState::Failed, None, &why, now);
            moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Failed, 1))?;
            emit(home, super::dead_lettered_event(&task, &why));
            ended = true;
        }
        Decision::Cancel(why) => {
            task.transition(TaskState::Cancelled, None, &why, now);
            task.cancelled_at = Some(now);
            moves::move_out(home, &path, &mut task, &Delta::add(TaskState::Cancelled, 1))?;
            emit(
                home,
                task_event(
                    EventType::TaskCancelled,
                    &task,
                    format!("{id} cancelled: {why}"),
                )
                .with("reason", why)
                .with("from", "processing"),
            );
            out.cancelled += 1;
            ended = true;
        }
        Decision::Stuck { elapsed } => {
            let who = claimed_by.clone().unwrap_or_else(|| "?".into());
            tracing::warn!("stuck task: {id} processing for {elapsed:.0}s by {who}");
            task.stuck_reported_at = Some(now);
            moves::save(home, &path, &mut task, moves::Durability::Atomic)?;
            emit(
                home,
                task_event(
                    EventType::TaskStuck,
                    &task,
                    format!(
                        "{id} processing for {:.0} min by {who}",
                        (elapsed / 60.0).floor()
                    ),
                )
                .with("elapsed_seconds", elapsed.round())
                .with("claimed_by", who)
                .with("threshold_seconds", limits.stuck_task_seconds),
            );
            out.stuck += 1;
        }
    }
    drop(g);
    if ended {
        super::deps::release_dependents(home, id)?;
    }
    Ok(())
}

/// What the monitor needs about one class of pending work.
#[derive(Debug, Clone)]
struct ClassQueue {
    class: String,
    count: u64,
    paused: bool,
    /// The first claimable task, with its path.
    head: Option<walk::Entry>,
}

/// One maintenance pass: requeue, stuck and starvation detection, dependencies, retention,
/// counts, summary line.
pub fn maintain(home: &Home, policy: &HeartbeatPolicy, now: Timestamp) -> Result<Maintenance> {
    let qp = QueuePolicy::from_doc(&super::policy::policy_doc(home));
    maintain_with(home, policy, &qp, now)
}

/// [`maintain`] with the queue's policy given.
pub fn maintain_with(
    home: &Home,
    policy: &HeartbeatPolicy,
    qp: &QueuePolicy,
    now: Timestamp,
) -> Result<Maintenance> {
    let mut out = Maintenance::default();
    let limits = Limits::of(policy, qp);
    let workers = scan_workers(home)?;

    let crashed = sweep_claiming(home, now, &mut out)?;

    // processing/: decide per task, act only where a decision says so.
    let pdir = home.tasks_dir(TaskState::Processing);
    let mut processing = 0u64;
    let mut stuck_now = 0u64;
    for name in crate::store::list_json(&pdir)? {
        let path = pdir.join(&name);
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let task = match read_task(&path) {
            Ok(t) if t.task_id != id => {
                let why = format!("file name says task {id}, content says task {}", t.task_id);
                moves::quarantine(home, &path, &why);
                continue;
            }
            Ok(t) => t,
            Err(ReadError::Missing) => continue,
            Err(ReadError::Refused(why)) => {
                moves::quarantine(home, &path, &why);
                continue;
            }
            Err(ReadError::Io(e)) => return Err(e),
        };
        let claimant = claimant_state(home, task.claimed_by.as_deref());
        let age = file_age(&path, now).unwrap_or(0.0);
        let d = decide(&task, &claimant, age, limits, now);
        if d == Decision::Keep {
            if let Some(t) = next_change(&task, &claimant, age, limits, now) {
                out.next_change = Some(out.next_change.map_or(t, |n: Timestamp| n.min(t)));
            }
        }
        if matches!(d, Decision::Keep | Decision::Stuck { .. }) {
            processing += 1;
            if task
                .processing_seconds(now)
                .is_some_and(|e| e > policy.stuck_task_seconds)
            {
                stuck_now += 1;
            }
        }
        if d != Decision::Keep {
            apply(home, limits, &task.task_id, now, &mut out)?;
        }
    }

    out.released = super::deps::sweep(home)?;
    if qp.purge.any() {
        out.purged = super::control::purge_paced(home, &qp.purge, now)?;
    }

    // Counts: recounted in full on evidence of drift (see `counts`); the pending count of
    // one class per pass when its last recount is older than `queue.recount_seconds`
    // (names only: a million pending is a second or two, once an hour).
    let mut all = counts::read_all(home)?;
    // A dead claimer (a leftover in .claiming/, a requeue from processing/) or a worker that
    // ended uncleanly may have died between a move and its count update: that leaves a
    // pending count off by one, which the pending names alone repair (the finished states
    // are read file by file only on evidence that they drifted).
    let evidence = !counts::initialised(home)
        || out.unrecorded > 0
        || all.values().any(|c| c.is_none_or(|c| c.suspect));
    if evidence {
        counts::take_owed_recount(home);
        counts::recount(home)?;
        out.recounted = true;
        all = counts::read_all(home)?;
    } else if counts::take_owed_recount(home) | crashed {
        // A worker or claimer died since the last pass, maybe between a move and its count
        // update: recount every class's pending names, or everything while the finished
        // states are small enough to read (a finishing move's count can be off as well).
        if counts::filed_at_most(home, counts::EXACT_RECOUNT_MAX_FILES) {
            counts::recount(home)?;
        } else {
            for class in layout::classes(home)? {
                counts::recount_pending(home, &class)?;
            }
        }
        out.recounted = true;
        all = counts::read_all(home)?;
    } else if !out.requeued_classes.is_empty() {
        // A requeued task's claimant died or let its lease lapse, maybe between a claim and
        // its count update: recount those classes' pending tasks (names only, cheap).
        for class in &out.requeued_classes {
            counts::recount_pending(home, class)?;
        }
        out.recounted = true;
        all = counts::read_all(home)?;
    } else if qp.recount_seconds > 0.0 {
        let now_s = now.timestamp().max(0) as u64;
        let stale = all.iter().find_map(|(class, c)| {
            c.filter(|c| now_s.saturating_sub(c.recounted) as f64 > qp.recount_seconds)
                .map(|_| class.clone())
        });
        if let Some(class) = stale {
            counts::recount_pending(home, &class)?;
            out.recounted = true;
            all = counts::read_all(home)?;
        }
    }

    // pending/: counts and heads only.
    let now_ns = super::task::time_ns(now);
    let mut queues = Vec::new();
    for c in layout::classes(home)? {
        let heads = walk::heads(home, &c)?;
        let mut count = all
            .get(&c)
            .copied()
            .flatten()
            .map(|n| n.pending)
            .unwrap_or(0);
        let empty = heads.iter().all(Option::is_none);
        if empty != (count == 0) {
            // The count disagrees with what is there: recount this class (cheap when empty).
            count = counts::recount_pending(home, &c)?;
        }
        let head = heads.into_iter().flatten().find(|e| e.ns <= now_ns);
        queues.push(ClassQueue {
            paused: class_dir(home, &c).join(layout::PAUSED_MARKER).exists(),
            class: c,
            count,
            head,
        });
    }
    for q in &queues {
        out.starved += check_starvation(home, policy, q, &workers, now)?;
    }

    let total: u64 = queues.iter().map(|q| q.count).sum();
    let by_class: Vec<String> = queues
        .iter()
        .filter(|q| q.count > 0)
        .map(|q| {
            format!(
                "{}:{}{}",
                q.class,
                q.count,
                if q.paused { " paused" } else { "" }
            )
        })
        .collect();
    out.summary = format!(
        "workers {}/{}, queue {total}{}, processing {processing}, stuck {stuck_now}",
        workers.alive,
        workers.total,
        if by_class.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_class.join(", "))
        }
    );
    Ok(out)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `task_starved` once per class per episode: the class's next task has waited past
/// `starvation_seconds` while workers sit idle. The episode is remembered in
/// `pending/<class>/.starved` (so a restarted monitor does not repeat it) and ends when the
/// head is claimed, the class empties, or no worker is idle. A paused class does not starve.
fn check_starvation(
    home: &Home,
    policy: &HeartbeatPolicy,
    q: &ClassQueue,
    workers: &Workers,
    now: Timestamp,
) -> Result<u64> {
    let dir = class_dir(home, &q.class);
    let marker = dir.join(layout::STARVED_MARKER);
    let head_wait = q.head.as_ref().and_then(|h| file_age(&h.path, now));
    let starving = policy.starvation_seconds > 0.0
        && !q.paused
        && !workers.idle.is_empty()
        && head_wait.is_some_and(|w| w > policy.starvation_seconds);
    if !starving {
        if exists(&marker) {
            let _ = std::fs::remove_file(&marker);
        }
        return Ok(0);
    }
    if exists(&marker) {
        return Ok(0);
    }
    let wait = head_wait.unwrap_or(0.0);
    let head_id = q
        .head
        .as_ref()
        .map(|h| h.task_id.clone())
        .unwrap_or_default();
    let prio = q
        .head
        .as_ref()
        .map(|h| layout::priority_of_rank(h.prio).as_str())
        .unwrap_or("medium");
    tracing::warn!(
        "class {} starved: {} pending, next task {head_id} waiting {wait:.0}s, idle workers {:?}",
        q.class,
        q.count,
        workers.idle
    );
    let note = serde_json::json!({"reported_at": time::format(&now), "head": head_id});
    crate::store::atomic_write(home, &marker, note.to_string().as_bytes())?;
    let ev = Event::new(
        EventType::TaskStarved,
        format!(
            "{} tasks of class {} waiting (next for {wait:.0}s) while {} workers are idle: {}",
            q.count,
            q.class,
            workers.idle.len(),
            workers.idle.join(", ")
        ),
    )
    .task(&head_id)
    .with("class", q.class.clone())
    .with("pending", q.count)
    .with("waiting_seconds", wait.round())
    .with("priority", prio)
    .with("idle_workers", workers.idle.clone())
    .with("threshold_seconds", policy.starvation_seconds);
    emit(home, ev);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claimed(by: &str, at: Timestamp) -> Task {
        let mut t: Task = Task::from_value(json!({
            "task_id": "t1", "class": "llm", "priority": "high",
            "enqueued_at": "2026-01-01T00:00:00Z", "state": "processing", "attempts": 1
        }))
        .unwrap();
        t.claimed_by = Some(by.into());
        t.claimed_at = Some(at);
        t.lease_expires_at = Some(at + chrono::Duration::seconds(300));
        t
    }

    /// `t` as a claim that was never recorded (the claimer died after its rename).
    fn unrecorded(t: &Task) -> Task {
        let mut u = t.clone();
        u.state = TaskState::Pending;
        u.claimed_by = None;
        u
    }

    fn limits() -> Limits {
        Limits {
            stuck_task_seconds: 300.0,
            claim_grace_seconds: 5.0,
        }
    }

    fn t0() -> Timestamp {
        time::parse("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn decisions_follow_claimant_lease_grace_and_time() {
        let (l, t0) = (limits(), t0());
        let t = claimed("w1", t0);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!(decide(&t, &Claimant::Live, 0.0, l, at(10)), Decision::Keep);
        assert_eq!(
            decide(&t, &Claimant::Live, 0.0, l, at(301)),
            Decision::Stuck { elapsed: 301.0 }
        );
        let mut reported = t.clone();
        reported.stuck_reported_at = Some(at(301));
        assert_eq!(
            decide(&reported, &Claimant::Live, 0.0, l, at(900)),
            Decision::Keep
        );
        let gone = Claimant::Gone {
            dir: StateDir::Zombie,
        };
        assert!(matches!(
            decide(&t, &gone, 0.0, l, at(1)),
            Decision::Requeue(_)
        ));
        let mut last = t.clone();
        last.attempts = 3;
        assert!(matches!(
            decide(&last, &gone, 0.0, l, at(1)),
            Decision::DeadLetter(_)
        ));
        let mut cancelling = t.clone();
        cancelling.cancel_requested_at = Some(at(1));
        assert!(matches!(
            decide(&cancelling, &gone, 0.0, l, at(2)),
            Decision::Cancel(_)
        ));
        assert_eq!(
            decide(&t, &Claimant::NotAWorker, 0.0, l, at(299)),
            Decision::Keep
        );
        assert!(matches!(
            decide(&t, &Claimant::NotAWorker, 0.0, l, at(300)),
            Decision::Requeue(_)
        ));
        // A claim that was never recorded: requeued after seconds, not stuck_task_seconds.
        let unrec = unrecorded(&t);
        assert_eq!(
            decide(&unrec, &Claimant::Unrecorded, 2.0, l, at(1)),
            Decision::Keep
        );
        assert!(matches!(
            decide(&unrec, &Claimant::Unrecorded, 6.0, l, at(1)),
            Decision::Requeue(_)
        ));
        let mut done = t.clone();
        done.state = TaskState::Completed;
        assert_eq!(
            decide(&done, &Claimant::Live, 0.0, l, at(1)),
            Decision::FinishMove
        );
    }

    #[test]
    fn next_change_is_when_time_alone_would_change_the_decision() {
        let (l, t0) = (limits(), t0());
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        // What `next_change` promises: kept just before it, decided otherwise at it.
        let flips_at = |task: &Task, c: &Claimant, now: Timestamp| {
            let due = next_change(task, c, 0.0, l, now).expect("a time");
            let before = due - chrono::Duration::milliseconds(1);
            let age = |t: Timestamp| time::secs_between(now, t);
            assert_eq!(decide(task, c, age(before), l, before), Decision::Keep);
            assert_ne!(decide(task, c, age(due), l, due), Decision::Keep);
            due
        };
        let t = claimed("a-cron-job", t0);
        // The lease of a claimant that is no worker.
        assert_eq!(flips_at(&t, &Claimant::NotAWorker, at(10)), at(300));
        // A live worker's task changes by events (the worker ends), not by time.
        assert_eq!(next_change(&t, &Claimant::Live, 0.0, l, at(10)), None);
        // A claim without record: when it outlives the grace (5 s from a file 2 s old).
        let unrec = unrecorded(&t);
        assert_eq!(
            next_change(&unrec, &Claimant::Unrecorded, 2.0, l, at(1)),
            Some(at(4))
        );
        assert_eq!(flips_at(&unrec, &Claimant::Unrecorded, at(1)), at(6));
        // No lease recorded: the stuck limit from the claim is the lease.
        let mut no_lease = t.clone();
        no_lease.lease_expires_at = None;
        assert_eq!(flips_at(&no_lease, &Claimant::NotAWorker, at(1)), at(300));
    }
}
