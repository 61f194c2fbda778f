//! The operator's controls over a running queue: pause and resume a class, wait for tasks
//! to finish (as `pueue wait`), and purge old finished tasks (retention).

use super::counts::{self, Delta};
use super::ids;
use super::layout::{self, class_dir, state_path, PAUSED_MARKER};
use super::moves::emit;
use super::policy::Retention;
use super::watch::{FsEvent, Watcher};
use crate::error::{Error, Result};
use crate::events::{Event, EventType};
use crate::home::{Home, TaskState};
use crate::time::{self, Timestamp};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Pauses a class: claimers skip it (enqueues still land) until [`resume`]. The mark is
/// `pending/<class>/.paused`. Returns false when it was paused already.
pub fn pause(home: &Home, class: &str, reason: &str) -> Result<bool> {
    crate::id::validate("class", class)?;
    let root = layout::pending_root(home);
    layout::check_real_dir(&root)?;
    let dir = class_dir(home, class);
    layout::make_dirs(&root, &dir, true)?;
    let marker = dir.join(PAUSED_MARKER);
    if marker.exists() {
        return Ok(false);
    }
    let now = time::now();
    let note = serde_json::json!({"paused_at": time::format(&now), "reason": reason});
    crate::store::atomic_write(home, &marker, note.to_string().as_bytes())?;
    emit(
        home,
        Event::new(
            EventType::QueuePaused,
            format!("class {class} paused: {reason}"),
        )
        .with("class", class)
        .with("reason", reason),
    );
    Ok(true)
}

/// Resumes a paused class (its waiting claimers wake on the marker's removal). Returns
/// false when it was not paused.
pub fn resume(home: &Home, class: &str) -> Result<bool> {
    crate::id::validate("class", class)?;
    let marker = class_dir(home, class).join(PAUSED_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot remove {}", marker.display()), e)),
    }
    emit(
        home,
        Event::new(EventType::QueueResumed, format!("class {class} resumed")).with("class", class),
    );
    Ok(true)
}

/// The paused classes.
pub fn paused(home: &Home) -> Result<Vec<String>> {
    Ok(layout::classes(home)?
        .into_iter()
        .filter(|c| class_dir(home, c).join(PAUSED_MARKER).exists())
        .collect())
}

/// How a waited task ended (or where it stood when the wait timed out).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waited {
    pub task_id: String,
    /// `completed`, `failed`, `cancelled`; while not done, its current state; `gone` when
    /// it no longer names any task (purged during the wait, after it ended): that counts
    /// as ended, with an unknown outcome.
    pub state: String,
}

/// The result of [`wait`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct WaitOutcome {
    pub tasks: Vec<Waited>,
    pub timed_out: bool,
}

impl WaitOutcome {
    /// True when every task completed.
    pub fn all_completed(&self) -> bool {
        !self.timed_out && self.tasks.iter().all(|t| t.state == "completed")
    }

    /// The ids that no longer name a task (purged during the wait).
    pub fn gone(&self) -> Vec<&str> {
        self.tasks
            .iter()
            .filter(|t| t.state == "gone")
            .map(|t| t.task_id.as_str())
            .collect()
    }
}

fn ended(home: &Home, id: &str) -> Option<TaskState> {
    [
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ]
    .into_iter()
    .find(|st| state_path(home, *st, id).exists())
}

/// Blocks until every task in `ids` has ended (completed, dead-lettered or cancelled) or is
/// gone (purged after it ended), or `timeout` passes. Sleeps on inotify (and polls every
/// `poll` on network filesystems). Exit 3 before waiting when an id names no task.
pub fn wait(
    home: &Home,
    ids: &[String],
    timeout: Option<f64>,
    poll: Option<f64>,
) -> Result<WaitOutcome> {
    for id in ids {
        crate::id::validate("task", id)?;
    }
    let deadline = match timeout {
        Some(t) => Some(Instant::now() + time::duration(time::check_secs("--timeout", t)?)),
        None => None,
    };
    let poll = match poll {
        Some(p) => Some(time::duration(
            time::check_secs("--poll-interval", p)?.max(0.05),
        )),
        None => None,
    };
    // Watched before the first look: a task that ends and is purged right after it still
    // leaves a removal in a terminal directory for the loop to see.
    let mut w = Watcher::new()?;
    for st in [
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ] {
        let d = layout::ensure_state_dir(home, st)?;
        w.watch_dir(&d)?;
    }
    // Where each unfinished task was last seen: one `stat` says it is still there, and
    // only a task that moved is looked for again (finding a pending task by id may mean
    // walking its class).
    let mut seen: Vec<Option<PathBuf>> = vec![None; ids.len()];
    for (i, id) in ids.iter().enumerate() {
        if ended(home, id).is_some() {
            continue;
        }
        match super::moves::locate(home, id)? {
            Some((_, p)) => seen[i] = Some(p),
            None => return Err(Error::NotFound(format!("no such task: {id}"))),
        }
    }
    let mut by_name: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        by_name.entry(id.as_str()).or_default().push(i);
    }
    let mut gone = vec![false; ids.len()];
    let mut suspects: Vec<usize> = Vec::new();
    let mut evs = Vec::new();
    let states = loop {
        // A task named by a removal from a terminal directory (purged, or requeued), or
        // every task after lost events or a poll tick: still somewhere, or gone?
        for &i in &suspects {
            if gone[i] || ended(home, &ids[i]).is_some() {
                continue;
            }
            if seen[i].as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            match super::moves::locate(home, &ids[i])? {
                Some((_, p)) => seen[i] = Some(p),
                None => gone[i] = ended(home, &ids[i]).is_none(),
            }
        }
        suspects.clear();
        let mut states = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let st = if gone[i] {
                "gone"
            } else if let Some(st) = ended(home, id) {
                st.name()
            } else {
                break;
            };
            states.push(st.to_string());
        }
        if states.len() == ids.len() {
            break states;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let mut tasks = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let state = if gone[i] {
                    "gone".to_string()
                } else {
                    match ended(home, id) {
                        Some(st) => st.name().to_string(),
                        None => super::moves::locate(home, id)?
                            .map(|(st, _)| st.name().to_string())
                            .unwrap_or_else(|| "gone".into()),
                    }
                };
                tasks.push(Waited {
                    task_id: id.clone(),
                    state,
                });
            }
            return Ok(WaitOutcome {
                tasks,
                timed_out: true,
            });
        }
        let mut until = deadline;
        if let Some(p) = poll {
            let at = Instant::now() + p;
            until = Some(until.map_or(at, |d| d.min(at)));
        }
        let woken = w.wait(until)?;
        evs.clear();
        w.drain(&mut evs)?;
        let mut all = !woken.fs && !woken.waker;
        for ev in &evs {
            match ev {
                FsEvent::Removed { name, .. } => {
                    if let Some(i) = name.strip_suffix(".json").and_then(|n| by_name.get(n)) {
                        suspects.extend(i);
                    }
                }
                FsEvent::Overflow | FsEvent::Gone { .. } => all = true,
                _ => {}
            }
        }
        if all {
            suspects = (0..ids.len()).collect();
        }
    };
    let tasks = ids
        .iter()
        .zip(states)
        .map(|(id, state)| Waited {
            task_id: id.clone(),
            state,
        })
        .collect();
    Ok(WaitOutcome {
        tasks,
        timed_out: false,
    })
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Finished tasks old enough to go but kept because deferred tasks still wait for them
    /// (their file is the only record that they completed); purged once those are released.
    pub kept: u64,
}

impl Purged {
    /// All removed tasks.
    pub fn total(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }

    /// `; kept N that deferred tasks still wait for`, or nothing when none was kept.
    pub fn kept_note(&self) -> String {
        if self.kept == 0 {
            String::new()
        } else {
            format!("; kept {} that deferred tasks still wait for", self.kept)
        }
    }
}

/// Removes finished tasks older than the retention says (age: since the file's last
/// write, which is when the task reached that state), at most `limit` of them, and logs one
/// `tasks_purged`. A task that deferred tasks still wait for is kept (and counted in
/// `kept`): removing a completed dependency would leave its dependents waiting for a task
/// that no longer exists. With `dry_run`, only counts.
pub fn purge(
    home: &Home,
    keep: &Retention,
    now: Timestamp,
    limit: Option<u64>,
    dry_run: bool,
) -> Result<Purged> {
    let mut out = Purged::default();
    let now_sys: SystemTime = now.into();
    let mut left = limit.unwrap_or(u64::MAX);
    for (st, max_age) in [
        (TaskState::Completed, keep.completed_after_seconds),
        (TaskState::Failed, keep.failed_after_seconds),
        (TaskState::Cancelled, keep.cancelled_after_seconds),
    ] {
        let Some(max_age) = max_age else { continue };
        let dir = home.tasks_dir(st);
        for name in layout::list_names(&dir)? {
            if left == 0 {
                break;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let p = dir.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now_sys.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            if age.as_secs_f64() <= max_age {
                continue;
            }
            if super::deps::awaited(home, id) {
                out.kept += 1;
                continue;
            }
            left -= 1;
            let slot = match st {
                TaskState::Completed => &mut out.completed,
                TaskState::Failed => &mut out.failed,
                _ => &mut out.cancelled,
            };
            *slot += 1;
            if dry_run {
                continue;
            }
            let class = crate::store::read_json(&p)
                .ok()
                .and_then(|v| v.get("class").and_then(|c| c.as_str()).map(str::to_string))
                .filter(|c| crate::id::validate("class", c).is_ok())
                .unwrap_or_else(|| "default".into());
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    counts::add(home, &class, &Delta::add(st, -1));
                    ids::release(home, id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => *slot -= 1,
                Err(e) => return Err(Error::io(format!("cannot remove {}", p.display()), e)),
            }
        }
    }
    if !dry_run && out.total() > 0 {
        emit(
            home,
            Event::new(
                EventType::TasksPurged,
                format!(
                    "purged {} finished tasks ({} completed, {} failed, {} cancelled){}",
                    out.total(),
                    out.completed,
                    out.failed,
                    out.cancelled,
                    out.kept_note()
                ),
            )
            .with("completed", out.completed)
            .with("failed", out.failed)
            .with("cancelled", out.cancelled)
            .with("kept", out.kept),
        );
    }
    Ok(out)
}

/// Maintenance's purge: at most once a minute and 5,000 tasks per pass, so a large backlog
/// of old tasks is worked off without stalling the monitor.
pub fn purge_paced(home: &Home, keep: &Retention, now: Timestamp) -> Result<u64> {
    let stamp = layout::counts_dir(home).join(".last-purge");
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::from(now).duration_since(m).ok())
        .is_some_and(|age| age < Duration::from_secs(60));
    if recent {
        return Ok(0);
    }
    let modes = crate::perms::modes(home);
    crate::perms::mkdir_all(&layout::counts_dir(home), modes)?;
    crate::perms::write_file(&stamp, b"", modes)?;
    Ok(purge(home, keep, now, Some(5000), false)?.total())
}
