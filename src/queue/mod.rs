//! The filesystem-native task queue (DESIGN.md §8).
//!
//! A task is one JSON file ([`task`]). Pending tasks live in bucket directories under
//! `tasks/pending/<class>/` named so that every path sorts like its file name,
//! `<prio>-<enqueued_ns>-<task_id>.json`: the claim order is visible to `find | sort`, and
//! the head of a class is a few small directories away however long the queue is (the
//! scale rule; [`layout`]). Other states are one file per id in `tasks/<state>/`.
//!
//! **Claim is one `rename(2)`** from the bucket to `processing/<task_id>.json` ([`claim`]):
//! exactly one claimer wins, no lock decides it, no lock file is left per task. A claimer
//! that stays (`work`, `claim --wait`) keeps its view of the queue current through inotify
//! ([`index`], [`watch`]) instead of reading directories again.
//!
//! After a claim, every change holds a striped lock and re-reads the task ([`moves`],
//! [`transitions`]); each move writes the new content first and then renames, so a task is
//! never in two places and never lost: delivery is at-least-once. Counts per class are kept
//! as tasks move ([`counts`]), so `stats` reads no task file. The monitor's pass
//! ([`maintain`]) requeues what dead claimants hold, settles dependencies ([`deps`]), applies
//! retention and keeps the counts exact. [`work`] is the worker loop.
//!
//! Package map: `task` (the file and its limits), `layout` (names and paths), `walk`
//! (ordered reads), `counts`, `ids` (explicit ids), `moves` (locks, staging, moves),
//! `enqueue` (one or bulk), `claim` + `index` + `watch` (claimers), `transitions` (complete,
//! fail, requeue, cancel), `deps`, `control` (pause, wait, purge), `report` (stats, list,
//! check), `maintain`, `policy` (the queue section of the policy), `work` (the loop).

pub mod claim;
pub mod control;
pub mod counts;
pub mod deps;
pub mod enqueue;
pub mod ids;
pub mod index;
pub mod layout;
pub mod maintain;
pub mod moves;
pub mod policy;
pub mod report;
pub mod task;
pub mod transitions;
pub mod turn;
pub mod walk;
pub mod watch;
pub mod work;

pub use claim::{ClaimStats, Claimer};
pub use control::{pause, paused, purge, resume, wait, Purged, WaitOutcome, Waited};
pub use enqueue::{enqueue, enqueue_bulk, enqueue_with, BulkOptions, BulkSummary, EnqueueRequest};
pub use layout::{classes, parse_pending_name, pending_name, PendingName};
pub use maintain::{
    claimant_state, decide, is_active_worker, maintain, maintain_with, Claimant, Decision, Limits,
    Maintenance,
};
pub use moves::{costs, find, Costs, Found, LOCK_STRIPES};
pub use policy::QueuePolicy;
pub use report::{check, list, list_each, stats, Finding, ListQuery, Stats};
pub use task::{Task, TaskTransition, DEFAULT_MAX_ATTEMPTS, MAX_TASK_BYTES, SCHEMA_VERSION};
pub use transitions::{
    cancel, complete, fail, fail_with, finish_cancel, renew_lease, requeue, Caller, Cancelled,
    Failed,
};
pub use watch::Waker;

use crate::error::Result;
use crate::events::{Event, EventType};
use crate::home::Home;

/// The event every task change logs, with the task's class, priority and attempts.
pub(crate) fn task_event(kind: EventType, task: &Task, message: String) -> Event {
    let mut ev = Event::new(kind, message)
        .task(&task.task_id)
        .with("class", task.class.clone())
        .with("priority", task.priority.as_str())
        .with("attempts", task.attempts);
    ev.worker_id = task.claimed_by.clone();
    if let Some(n) = &task.name {
        ev = ev.with("name", n.clone());
    }
    ev
}

/// `task_dead_lettered` for `task`, with the reason it went to `failed/`.
pub(crate) fn dead_lettered_event(task: &Task, reason: &str) -> Event {
    task_event(
        EventType::TaskDeadLettered,
        task,
        format!("{} dead-lettered: {reason}", task.task_id),
    )
    .with("reason", reason)
}

/// Indexes the explicit ids of pending tasks written before the id index existed (a home
/// from an older corral), so `--id` stays unique. Runs once per home (the first explicit
/// id); a home with no pending task makes it cheap.
pub(crate) fn ids_backfill(home: &Home) -> Result<()> {
    for class in layout::classes(home)? {
        for e in walk::ClassWalk::new(home, &class, 0, false)? {
            let e = e?;
            if !ids::looks_generated(&e.task_id) {
                ids::reserve(home, &e.task_id, Some(&e.path), false)?;
            }
        }
    }
    ids::mark_initialised(home)
}
