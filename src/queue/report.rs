//! Reading the queue for people and dashboards: [`stats`] (counts by state and class,
//! oldest pending, processing per worker — the same cost at 1,000 and 1,000,000 pending),
//! [`list_each`] (streams tasks in claim order with bounded memory) and [`check`] (the
//! doctor's look at every task file).

use super::counts::{self, COUNTED};
use super::layout::{self, class_dir, read_task, PAUSED_MARKER};
use super::moves::FILED;
use super::task::{time_ns, Task};
use super::walk::{self, ClassWalk, Entry};
use crate::error::Result;
use crate::home::{Home, TaskState};
use crate::policy::HeartbeatPolicy;
use crate::store::ReadError;
use crate::time::{self, Timestamp};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;

/// Queue statistics (`task-queue stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// state → class → count.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// state → count.
    pub totals: BTreeMap<String, u64>,
    /// How long the longest-waiting claimable task has waited, seconds.
    pub oldest_pending_seconds: Option<f64>,
    /// class → how long its next claimable task has waited, seconds.
    pub oldest_pending_by_class: BTreeMap<String, f64>,
    /// class → when its next delayed task becomes claimable (nothing claimable before).
    pub next_due_by_class: BTreeMap<String, String>,
    /// claimant → number of tasks it is processing.
    pub processing_by_worker: BTreeMap<String, u64>,
    /// Tasks processing longer than `stuck_task_seconds`.
    pub stuck: u64,
    pub stuck_task_seconds: f64,
    /// Paused classes.
    pub paused: Vec<String>,
    /// The counts were recounted from the files for this report (`--exact`, or a first
    /// look at a home from before counts were kept).
    pub recounted: bool,
}

/// Pending work of one class, as every view reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassPending {
    pub class: String,
    pub count: u64,
    /// When the longest-waiting claimable task became claimable (ns since the epoch).
    pub oldest_ns: Option<u64>,
    /// When the first not-yet-claimable (delayed) task becomes claimable, if it comes first.
    pub next_due_ns: Option<u64>,
    pub paused: bool,
}

/// The kept counts of every class, recounted first when they cannot be trusted (a home
/// from before counts were kept, an unreadable counter file).
pub fn kept_counts(home: &Home) -> Result<BTreeMap<String, counts::Counts>> {
    let mut kept = counts::read_all(home)?;
    if !counts::initialised(home) || kept.values().any(Option::is_none) {
        counts::recount(home)?;
        kept = counts::read_all(home)?;
    }
    Ok(kept
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Pending work per class: the kept count, checked against the head of each priority (an
/// empty class with a count, or the reverse, is recounted on the spot), and the head's age.
/// Cost: a few small directories per class, whatever the queue's length.
pub fn pending_classes(home: &Home, now_ns: u64) -> Result<Vec<ClassPending>> {
    let kept = kept_counts(home)?;
    let mut out = Vec::new();
    for class in layout::classes(home)? {
        let heads = walk::heads(home, &class)?;
        let mut count = kept.get(&class).map(|c| c.pending).unwrap_or(0);
        if heads.iter().all(Option::is_none) != (count == 0) {
            count = counts::recount_pending(home, &class)?;
        }
        out.push(ClassPending {
            // Each priority's head is its oldest task: the oldest of those is the class's.
            oldest_ns: heads
                .iter()
                .flatten()
                .filter(|h| h.ns <= now_ns)
                .map(|h| h.ns)
                .min(),
            next_due_ns: heads
                .iter()
                .flatten()
                .filter(|h| h.ns > now_ns)
                .map(|h| h.ns)
                .min(),
            paused: class_dir(home, &class).join(PAUSED_MARKER).exists(),
            class,
            count,
        });
    }
    Ok(out)
}

/// Counts by state and class (kept counts, see `counts`), oldest pending age from the head
/// of each class, processing per worker, stuck count. Reads no pending task file and no
/// finished task file; with `exact`, recounts first (O(tasks)).
pub fn stats(home: &Home, policy: &HeartbeatPolicy, now: Timestamp, exact: bool) -> Result<Stats> {
    let mut s = Stats {
        stuck_task_seconds: policy.stuck_task_seconds,
        ..Stats::default()
    };
    for st in TaskState::ALL {
        s.counts.insert(st.name().into(), BTreeMap::new());
        s.totals.insert(st.name().into(), 0);
    }
    if exact || !counts::initialised(home) {
        counts::recount(home)?;
        s.recounted = true;
    }
    let now_ns = time_ns(now);
    let pending = pending_classes(home, now_ns)?;
    let mut kept = kept_counts(home)?;
    for p in &pending {
        kept.entry(p.class.clone()).or_default().pending = p.count;
        if let Some(ns) = p.oldest_ns {
            let age = now_ns.saturating_sub(ns) as f64 / 1e9;
            s.oldest_pending_by_class.insert(p.class.clone(), age);
            s.oldest_pending_seconds = Some(s.oldest_pending_seconds.map_or(age, |a| a.max(age)));
        }
        if let Some(due) = p.next_due_ns {
            s.next_due_by_class
                .insert(p.class.clone(), time::format(&super::task::ns_time(due)));
        }
        if p.paused {
            s.paused.push(p.class.clone());
        }
    }
    for (class, c) in &kept {
        for st in COUNTED {
            let n = c.get(st);
            if n > 0 {
                s.counts
                    .entry(st.name().into())
                    .or_default()
                    .insert(class.clone(), n);
                *s.totals.entry(st.name().into()).or_default() += n;
            }
        }
    }
    let pdir = home.tasks_dir(TaskState::Processing);
    for name in crate::store::list_json(&pdir)? {
        let p = pdir.join(&name);
        let t = match read_task(&p) {
            Ok(t) => t,
            Err(_) => continue,
        };
        *s.totals.entry("processing".into()).or_default() += 1;
        *s.counts
            .entry("processing".into())
            .or_default()
            .entry(t.class.clone())
            .or_default() += 1;
        let who = t
            .claimed_by
            .clone()
            .unwrap_or_else(|| "(unrecorded)".into());
        *s.processing_by_worker.entry(who).or_default() += 1;
        if t.processing_seconds(now)
            .is_some_and(|e| e > policy.stuck_task_seconds)
        {
            s.stuck += 1;
        }
    }
    Ok(s)
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// One state (all when `None`, in the order of `TaskState::ALL`).
    pub state: Option<TaskState>,
    pub class: Option<String>,
    /// At most this many tasks.
    pub limit: Option<u64>,
}

/// Streams tasks to `visit`, oldest first — pending in claim order, the others by the time
/// they got to their state — holding at most one bucket listing per class level (pending)
/// or the names and times of one state directory (the others), never the tasks. `visit`
/// returns false to stop. Unreadable files are skipped (reported at warn).
pub fn list_each(
    home: &Home,
    q: &ListQuery,
    mut visit: impl FnMut(&Task) -> Result<bool>,
) -> Result<()> {
    if let Some(c) = &q.class {
        crate::id::validate("class", c)?;
    }
    let left = std::cell::Cell::new(q.limit.unwrap_or(u64::MAX));
    let states: Vec<TaskState> = match q.state {
        Some(s) => vec![s],
        None => TaskState::ALL.to_vec(),
    };
    let show = |p: &PathBuf, visit: &mut dyn FnMut(&Task) -> Result<bool>| -> Result<bool> {
        match read_task(p) {
            Ok(t) => {
                if q.class.as_ref().is_some_and(|c| *c != t.class) {
                    return Ok(true);
                }
                if left.get() == 0 {
                    return Ok(false);
                }
                left.set(left.get() - 1);
                visit(&t)
            }
            Err(ReadError::Missing) => Ok(true),
            Err(ReadError::Refused(why)) => {
                tracing::warn!("skipping {}: {why}", p.display());
                Ok(true)
            }
            Err(ReadError::Io(e)) => {
                tracing::warn!("skipping {}: {e}", p.display());
                Ok(true)
            }
        }
    };
    for st in states {
        if left.get() == 0 {
            break;
        }
        if st == TaskState::Pending {
            let classes = match &q.class {
                Some(c) => vec![c.clone()],
                None => layout::classes(home)?,
            };
            let mut walks = Vec::new();
            let mut heap: BinaryHeap<Reverse<(String, usize)>> = BinaryHeap::new();
            let mut fronts: Vec<Option<Entry>> = Vec::new();
            for c in classes {
                let mut w = ClassWalk::new(home, &c, 0, false)?;
                let first = w.next_entry()?;
                if let Some(e) = &first {
                    heap.push(Reverse((e.key.clone(), walks.len())));
                }
                fronts.push(first);
                walks.push(w);
            }
            while let Some(Reverse((_, i))) = heap.pop() {
                let Some(e) = fronts[i].take() else { continue };
                if !show(&e.path, &mut visit)? {
                    return Ok(());
                }
                let next = walks[i].next_entry()?;
                if let Some(n) = &next {
                    heap.push(Reverse((n.key.clone(), i)));
                }
                fronts[i] = next;
            }
            continue;
        }
        let dir = home.tasks_dir(st);
        let mut names: Vec<(std::time::SystemTime, String)> = Vec::new();
        for n in layout::list_names(&dir)? {
            if !n.ends_with(".json") {
                continue;
            }
            if let Ok(m) = std::fs::symlink_metadata(dir.join(&n)) {
                names.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), n));
            }
        }
        names.sort_unstable();
        for (_, n) in names {
            if !show(&dir.join(&n), &mut visit)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// [`list_each`] into a vector (tests, small queues).
pub fn list(home: &Home, state: TaskState, class: Option<&str>) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    list_each(
        home,
        &ListQuery {
            state: Some(state),
            class: class.map(str::to_string),
            limit: None,
        },
        |t| {
            out.push(t.clone());
            Ok(true)
        },
    )?;
    Ok(out)
}

/// One problem the queue check found (the doctor maps it to its own finding).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub path: String,
    pub detail: String,
    /// What `fix` did about it, if anything.
    pub fixed: Option<String>,
}

fn finding(
    home: &Home,
    fix: bool,
    kind: &'static str,
    path: &std::path::Path,
    detail: String,
) -> Finding {
    let mut f = Finding {
        kind,
        path: path.display().to_string(),
        detail: detail.clone(),
        fixed: None,
    };
    if fix && path.is_file() {
        match crate::events::quarantine(home, path, &detail) {
            Ok(q) => f.fixed = Some(format!("quarantined as {}", q.display())),
            Err(e) => f.fixed = Some(format!("cannot quarantine: {e}")),
        }
    }
    f
}

/// The doctor's look at the queue: malformed or misnamed pending files, files whose name
/// and content disagree (id or class), the same id in two places, claims never recorded,
/// and counts that drifted. With `fix`, bad files are quarantined (`spec_quarantined`) and
/// the counts rewritten. Reads every task file: O(tasks), for an operator's command.
pub fn check(home: &Home, fix: bool) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for class in layout::classes(home)? {
        let mut w = ClassWalk::new(home, &class, 0, false)?;
        while let Some(e) = w.next_entry()? {
            match read_task(&e.path) {
                Ok(t) if t.task_id != e.task_id || t.class != class => out.push(finding(
                    home,
                    fix,
                    "id_mismatch",
                    &e.path,
                    format!(
                        "name says task {} of class {class}, content says task {} of class {}",
                        e.task_id, t.task_id, t.class
                    ),
                )),
                Ok(_) => seen
                    .entry(e.task_id.clone())
                    .or_default()
                    .push(e.path.display().to_string()),
                Err(ReadError::Missing) => {}
                Err(ReadError::Refused(why)) => {
                    out.push(finding(home, fix, "malformed_pending", &e.path, why))
                }
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
        for s in w.strays {
            if s.in_bucket || s.path.is_file() {
                out.push(finding(home, fix, "malformed_pending", &s.path, s.why));
            } else {
                out.push(Finding {
                    kind: "stray_in_pending",
                    path: s.path.display().to_string(),
                    detail: s.why,
                    fixed: None,
                });
            }
        }
    }
    let grace = super::policy::QueuePolicy::load(home).claim_grace_seconds;
    let now = time::now();
    for st in FILED {
        let dir = home.tasks_dir(st);
        for name in layout::list_names(&dir)? {
            let p = dir.join(&name);
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match read_task(&p) {
                Ok(t) if t.task_id != id => out.push(finding(
                    home,
                    fix,
                    "id_mismatch",
                    &p,
                    format!("file name says task {id}, content says task {}", t.task_id),
                )),
                Ok(t) => {
                    if st == TaskState::Processing
                        && t.is_unrecorded_claim()
                        && layout::file_age(&p, now).is_some_and(|a| a > grace)
                    {
                        out.push(Finding {
                            kind: "unrecorded_claim",
                            path: p.display().to_string(),
                            detail: "claimed, but the claim was never recorded (the next maintenance pass requeues it)".into(),
                            fixed: None,
                        });
                    }
                    seen.entry(id.to_string())
                        .or_default()
                        .push(p.display().to_string());
                }
                Err(ReadError::Missing) => {}
                Err(ReadError::Refused(why)) => {
                    out.push(finding(home, fix, "malformed_task", &p, why))
                }
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
    }
    for (id, places) in seen.iter().filter(|(_, v)| v.len() > 1) {
        out.push(Finding {
            kind: "duplicate_task",
            path: places[0].clone(),
            detail: format!(
                "task {id} is in {} places: {}",
                places.len(),
                places.join(", ")
            ),
            fixed: None,
        });
    }
    let exact = counts::count_exact(home)?;
    let kept = counts::read_all(home)?;
    let mut drift = Vec::new();
    for (class, c) in &exact {
        let k = kept.get(class).copied().flatten().unwrap_or_default();
        for st in COUNTED {
            if k.get(st) != c.get(st) {
                drift.push(format!(
                    "{class} {}: kept {}, found {}",
                    st.name(),
                    k.get(st),
                    c.get(st)
                ));
            }
        }
    }
    for (class, k) in &kept {
        if !exact.contains_key(class) {
            if let Some(k) = k {
                if COUNTED.iter().any(|st| k.get(*st) > 0) {
                    drift.push(format!("{class}: kept counts for a class with no tasks"));
                }
            }
        }
    }
    if !drift.is_empty() {
        let mut f = Finding {
            kind: "count_drift",
            path: layout::counts_dir(home).display().to_string(),
            detail: drift.join("; "),
            fixed: None,
        };
        if fix {
            counts::recount(home)?;
            f.fixed = Some("recounted".into());
        }
        out.push(f);
    }
    Ok(out)
}
