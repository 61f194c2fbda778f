//! Dependencies (`enqueue --after ID…`), as RQ's `depends_on`: a task waits in `deferred/`
//! until every task it names has completed, then goes to pending (`task_released`); if one
//! of them is dead-lettered or cancelled instead, it is dead-lettered too, with the reason,
//! and so are the tasks waiting for it.
//!
//! Who releases it: whoever ends a dependency (complete, fail, cancel, maintenance) looks in
//! `tasks/.deps/<dependency>/`, which holds one empty file per waiting task. The enqueue
//! writes those markers *before* its last look at the dependencies, and an ending writes its
//! final state *before* it reads the markers, so at least one of the two sees the other; a
//! crash in between is caught by maintenance, which settles every marker directory whose
//! dependency has ended.
//!
//! A finished task that deferred tasks still wait for is never purged ([`awaited`]): the
//! file in `completed/` is the only record that it completed, so it stays until the last
//! task waiting for it has been released (or has died with another dependency).

use super::counts::Delta;
use super::layout::{self, deps_dir, read_task, state_path};
use super::moves::{self, emit};
use super::task::{Task, MAX_ERROR_BYTES};
use crate::error::Result;
use crate::events::EventType;
use crate::home::{Home, TaskState};
use crate::store::ReadError;

/// Where a task's dependencies stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepState {
    /// All completed.
    Ready,
    /// Some are still pending, deferred or processing.
    Waiting,
    /// One was dead-lettered or cancelled (or vanished): the reason.
    Dead(String),
    /// One does not exist (only checked at enqueue).
    Missing(String),
}

/// Judges `after`. With `verify`, a dependency in no terminal state must exist somewhere
/// (pending is searched); without, it is taken to be on its way.
pub fn check(home: &Home, after: &[String], verify: bool) -> Result<DepState> {
    let mut waiting = false;
    for d in after {
        if state_path(home, TaskState::Completed, d).exists() {
            continue;
        }
        if state_path(home, TaskState::Failed, d).exists() {
            return Ok(DepState::Dead(format!("dependency {d} was dead-lettered")));
        }
        if state_path(home, TaskState::Cancelled, d).exists() {
            return Ok(DepState::Dead(format!("dependency {d} was cancelled")));
        }
        if verify && moves::locate(home, d)?.is_none() {
            return Ok(DepState::Missing(d.clone()));
        }
        waiting = true;
    }
    Ok(if waiting {
        DepState::Waiting
    } else {
        DepState::Ready
    })
}

/// Writes a marker per dependency of a deferred task.
pub fn add_markers(home: &Home, task: &Task) -> Result<()> {
    // The home's modes, not the umask's: every member of a group home enqueues and
    // releases dependents here.
    let modes = crate::perms::modes(home);
    for d in &task.after {
        let dir = deps_dir(home).join(d);
        crate::perms::mkdir_all(&dir, modes)?;
        let m = dir.join(&task.task_id);
        crate::perms::write_file(&m, b"", modes)?;
        moves::sync_dir(&dir)?;
    }
    Ok(())
}

fn drop_markers(home: &Home, task: &Task) {
    for d in &task.after {
        let dir = deps_dir(home).join(d);
        let _ = std::fs::remove_file(dir.join(&task.task_id));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Re-judges one deferred task under its lock: to pending when ready, to failed when a
/// dependency died; nothing while it waits. Returns the state it ended in.
pub fn settle(home: &Home, id: &str) -> Result<Option<TaskState>> {
    let ended = {
        let _g = moves::task_lock(home, id)?;
        let path = state_path(home, TaskState::Deferred, id);
        let mut task = match read_task(&path) {
            Ok(t) => t,
            Err(ReadError::Missing) => return Ok(None),
            Err(ReadError::Refused(why)) => {
                moves::quarantine(home, &path, &why);
                return Ok(None);
            }
            Err(ReadError::Io(e)) => return Err(e),
        };
        let now = crate::time::now();
        match check(home, &task.after, false)? {
            DepState::Waiting => return Ok(Some(TaskState::Deferred)),
            DepState::Ready | DepState::Missing(_) => {
                task.transition(TaskState::Pending, None, "dependencies completed", now);
                let dest = moves::move_out(
                    home,
                    &path,
                    &mut task,
                    &Delta::moved(Some(TaskState::Deferred), Some(TaskState::Pending)),
                )?;
                emit(
                    home,
                    super::task_event(
                        EventType::TaskReleased,
                        &task,
                        format!("{id} released: {} completed", task.after.join(", ")),
                    )
                    .with("after", task.after.clone()),
                );
                tracing::debug!("released {id} to {}", dest.display());
                drop_markers(home, &task);
                return Ok(Some(TaskState::Pending));
            }
            DepState::Dead(why) => {
                dead_letter_held(home, &path, &mut task, &why, now)?;
                task
            }
        }
    };
    // Outside the lock: its own dependents die with it.
    release_dependents(home, &ended.task_id)?;
    Ok(Some(TaskState::Failed))
}

/// Called after task `id` ended (completed, dead-lettered, cancelled): settles every task
/// waiting for it.
pub fn release_dependents(home: &Home, id: &str) -> Result<()> {
    let dir = deps_dir(home).join(id);
    let names = layout::list_names(&dir)?;
    for dependent in names {
        if crate::id::validate("task", &dependent).is_err() {
            continue;
        }
        match settle(home, &dependent) {
            Ok(Some(TaskState::Deferred)) => {}
            Ok(_) => {
                let _ = std::fs::remove_file(dir.join(&dependent));
            }
            Err(e) => tracing::warn!("cannot settle {dependent} (after {id}): {e}"),
        }
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

/// Maintenance: settles the waiting tasks of every dependency that has ended (a crash may
/// have stopped the ending's own release). Cost: one `stat` per awaited dependency.
pub fn sweep(home: &Home) -> Result<u64> {
    let mut n = 0;
    for dep in layout::list_names(&deps_dir(home))? {
        if crate::id::validate("task", &dep).is_err() {
            continue;
        }
        let ended = [
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Cancelled,
        ]
        .iter()
        .any(|st| state_path(home, *st, &dep).exists());
        let dir = deps_dir(home).join(&dep);
        if ended {
            release_dependents(home, &dep)?;
            n += 1;
        } else if layout::list_names(&dir)?.is_empty() {
            let _ = std::fs::remove_dir(&dir);
        } else if moves::locate(home, &dep)?.is_none() {
            // Removed by hand, or purged by an older corral (purge keeps an awaited task):
            // whether it completed is unknown, so the waiting tasks can never run.
            for d in layout::list_names(&dir)? {
                if let Err(e) =
                    dead_letter_deferred(home, &d, &format!("dependency {dep} no longer exists"))
                {
                    tracing::warn!("cannot dead-letter {d}: {e}");
                }
                let _ = std::fs::remove_file(dir.join(&d));
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
    Ok(n)
}

/// A marker younger than this counts even without its deferred task: an enqueue or requeue
/// writes the markers first and the deferred file right after.
const MARKER_GRACE_SECS: u64 = 60;

/// True when some deferred task still waits for `id` (a marker in `tasks/.deps/<id>/` whose
/// task is in `deferred/`, or one just written): purge keeps such a finished task. A marker
/// left behind by a crash (no deferred task, older than a minute) does not count;
/// maintenance removes it. One `stat` when nothing waits for `id`.
pub fn awaited(home: &Home, id: &str) -> bool {
    let dir = deps_dir(home).join(id);
    let Ok(names) = layout::list_names(&dir) else {
        // Unreadable: keep the task rather than guess.
        return true;
    };
    names.iter().any(|dependent| {
        if crate::id::validate("task", dependent).is_err() {
            return false;
        }
        if state_path(home, TaskState::Deferred, dependent).exists() {
            return true;
        }
        match std::fs::symlink_metadata(dir.join(dependent)) {
            // Gone since the listing: its task was released or died.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => true,
            Ok(m) => m
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_none_or(|age| age.as_secs() < MARKER_GRACE_SECS),
        }
    })
}

/// Dead-letters the deferred `task` read from `path` (its lock held by the caller): to
/// `failed/` with `why`, counted, its event, its markers dropped.
fn dead_letter_held(
    home: &Home,
    path: &std::path::Path,
    task: &mut Task,
    why: &str,
    now: crate::time::Timestamp,
) -> Result<()> {
    task.set_error(why.to_string(), MAX_ERROR_BYTES);
    task.failed_at = Some(now);
    task.transition(TaskState::Failed, None, why, now);
    moves::move_out(
        home,
        path,
        task,
        &Delta::moved(Some(TaskState::Deferred), Some(TaskState::Failed)),
    )?;
    emit(home, super::dead_lettered_event(task, why));
    drop_markers(home, task);
    Ok(())
}

fn dead_letter_deferred(home: &Home, id: &str, why: &str) -> Result<()> {
    crate::id::validate("task", id)?;
    let task = {
        let _g = moves::task_lock(home, id)?;
        let path = state_path(home, TaskState::Deferred, id);
        let mut task = match read_task(&path) {
            Ok(t) => t,
            Err(ReadError::Missing) => return Ok(()),
            Err(e) => return Err(e.into_error(&path)),
        };
        dead_letter_held(home, &path, &mut task, why, crate::time::now())?;
        task
    };
    release_dependents(home, &task.task_id)
}

/// A deferred task's file, for `cancel`.
pub fn deferred_path(home: &Home, id: &str) -> std::path::PathBuf {
    state_path(home, TaskState::Deferred, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(home: &Home, dep: &str, dependent: &str, age_secs: u64) {
        let dir = deps_dir(home).join(dep);
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join(dependent);
        std::fs::write(&m, b"").unwrap();
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&m)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn awaited_counts_deferred_and_fresh_markers_not_stale_ones() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::at(d.path());
        assert!(!awaited(&home, "dep"), "no marker directory");
        // A crash's leftover: no deferred task, an hour old.
        marker(&home, "dep", "old", 3600);
        assert!(!awaited(&home, "dep"));
        // Its deferred task exists: awaited, however old the marker.
        let deferred = state_path(&home, TaskState::Deferred, "old");
        std::fs::create_dir_all(deferred.parent().unwrap()).unwrap();
        std::fs::write(&deferred, b"{}").unwrap();
        assert!(awaited(&home, "dep"));
        std::fs::remove_file(&deferred).unwrap();
        // Just written by an enqueue whose deferred file is on its way.
        marker(&home, "dep", "new", 0);
        assert!(awaited(&home, "dep"));
        // Names that are no task ids do not count.
        marker(&home, "other", "..bad", 0);
        assert!(!awaited(&home, "other"));
    }
}
