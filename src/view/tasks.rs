//! The task queue as the dashboards see it, read straight from the files of DESIGN.md §8:
//! `tasks/pending/<class>/<prio>-<enqueued_ns>-<id>.json` and
//! `tasks/{processing,completed,failed}/<id>.json`. Pending tasks are counted from their
//! names alone (class from the directory, age from the name), so a deep queue costs one
//! directory listing; the other states are read leniently (any missing field is fine),
//! because the views must keep working with whatever version of the queue wrote them.

use crate::error::Result;
use crate::home::{Home, TaskState};
use crate::store;
use crate::time::{self, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;

/// One task file, as far as the views need it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TaskRow {
    pub task_id: String,
    pub class: String,
    pub state: String,
    pub attempts: u64,
    pub claimed_by: Option<String>,
    #[serde(with = "time::serde_ts::option")]
    pub claimed_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub failed_at: Option<Timestamp>,
}

impl TaskRow {
    fn from_value(v: &Value, state: TaskState, file_id: &str) -> TaskRow {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let t = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .and_then(|x| time::parse(x).ok())
        };
        TaskRow {
            task_id: s("task_id").unwrap_or_else(|| file_id.to_string()),
            class: s("class").unwrap_or_else(|| "default".into()),
            state: state.name().into(),
            attempts: v.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            claimed_by: s("claimed_by"),
            claimed_at: t("claimed_at"),
            completed_at: t("completed_at"),
            failed_at: t("failed_at"),
        }
    }

    /// Seconds from claim to completion, for a completed task.
    pub fn duration_seconds(&self) -> Option<f64> {
        match (self.claimed_at, self.completed_at) {
            (Some(a), Some(b)) => Some(super::secs_between(a, b)),
            _ => None,
        }
    }
}

/// Reads every task in `processing/`, `completed/` or `failed/` (unreadable files skipped:
/// the queue or the monitor deals with them).
pub fn tasks_in(home: &Home, state: TaskState) -> Result<Vec<TaskRow>> {
    let dir = home.tasks_dir(state);
    let mut out = Vec::new();
    for name in store::list_json(&dir)? {
        let id = name.trim_end_matches(".json");
        if let Ok(v) = store::read_json(&dir.join(&name)) {
            out.push(TaskRow::from_value(&v, state, id));
        }
    }
    Ok(out)
}

/// Counts of tasks by state and class, and the oldest pending task's age by class.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueCounts {
    /// state → class → count.
    pub by_state: BTreeMap<String, BTreeMap<String, u64>>,
    /// class → seconds the oldest pending task has waited.
    pub oldest_pending_seconds: BTreeMap<String, f64>,
}

impl QueueCounts {
    /// Tasks in a state, all classes.
    pub fn total(&self, state: TaskState) -> u64 {
        self.by_state
            .get(state.name())
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }
}

/// Pending tasks per class from the directory listing: (class, count, oldest enqueued ns).
pub fn pending_by_class(home: &Home) -> Result<Vec<(String, u64, Option<u128>)>> {
    let root = home.tasks_dir(TaskState::Pending);
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(crate::Error::io(
                format!("cannot list {}", root.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(class) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let names = store::list_json(&entry.path())?;
        // Names sort by priority then time, so the oldest is found by parsing each name.
        let oldest = names
            .iter()
            .filter_map(|n| n.split('-').nth(1).and_then(|ns| ns.parse::<u128>().ok()))
            .min();
        out.push((class, names.len() as u64, oldest));
    }
    out.sort();
    Ok(out)
}

/// Number of `*.json` files directly in a state directory (no reads).
pub fn count_files(home: &Home, state: TaskState) -> Result<u64> {
    Ok(store::list_json(&home.tasks_dir(state))?.len() as u64)
}

/// Counts by state and class. Pending from names; the other states read each file for its
/// class, which is what Prometheus wants labelled.
pub fn counts(home: &Home, now: Timestamp) -> Result<QueueCounts> {
    let mut q = QueueCounts::default();
    let now_ns = now.timestamp_nanos_opt().unwrap_or(0).max(0) as u128;
    let pending = q.by_state.entry("pending".into()).or_default();
    for (class, n, oldest) in pending_by_class(home)? {
        pending.insert(class.clone(), n);
        if let Some(ns) = oldest {
            q.oldest_pending_seconds
                .insert(class, now_ns.saturating_sub(ns) as f64 / 1e9);
        }
    }
    for st in [
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
    ] {
        let m = q.by_state.entry(st.name().into()).or_default();
        for t in tasks_in(home, st)? {
            *m.entry(t.class).or_default() += 1;
        }
    }
    Ok(q)
}

/// Jobs handled by one worker, from the queue's files (seed 000's "job processing by worker").
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct WorkerJobs {
    pub worker_id: String,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub processing: u64,
    pub mean_duration_seconds: Option<f64>,
}

/// Jobs per claimant over processing, completed and failed tasks, most jobs first.
pub fn jobs_per_worker(home: &Home) -> Result<Vec<WorkerJobs>> {
    let mut m: BTreeMap<String, (WorkerJobs, f64, u64)> = BTreeMap::new();
    for st in [
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
    ] {
        for t in tasks_in(home, st)? {
            let Some(w) = t.claimed_by.clone() else {
                continue;
            };
            let e = m.entry(w.clone()).or_insert_with(|| {
                (
                    WorkerJobs {
                        worker_id: w,
                        ..WorkerJobs::default()
                    },
                    0.0,
                    0,
                )
            });
            e.0.total += 1;
            match st {
                TaskState::Processing => e.0.processing += 1,
                TaskState::Completed => {
                    e.0.completed += 1;
                    if let Some(d) = t.duration_seconds() {
                        e.1 += d;
                        e.2 += 1;
                    }
                }
                _ => e.0.failed += 1,
            }
        }
    }
    let mut out: Vec<WorkerJobs> = m
        .into_values()
        .map(|(mut j, sum, n)| {
            j.mean_duration_seconds = (n > 0).then(|| sum / n as f64);
            j
        })
        .collect();
    out.sort_by(|a, b| {
        b.total
            .cmp(&a.total)
            .then_with(|| a.worker_id.cmp(&b.worker_id))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_jobs_from_files() {
        let (_dir, home) = crate::home::test_home();
        let p = home.tasks_dir(TaskState::Pending).join("llm");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("1-1000000000-t1.json"), "{}").unwrap();
        std::fs::write(p.join("0-3000000000-t2.json"), "{}").unwrap();
        let c = home.tasks_dir(TaskState::Completed);
        std::fs::write(
            c.join("t3.json"),
            r#"{"task_id":"t3","class":"llm","claimed_by":"w1","claimed_at":"2026-01-01T00:00:00Z","completed_at":"2026-01-01T00:00:04Z"}"#,
        )
        .unwrap();
        std::fs::write(c.join("t4.json"), r#"{"claimed_by":"w1"}"#).unwrap();
        std::fs::write(
            home.tasks_dir(TaskState::Failed).join("t5.json"),
            r#"{"task_id":"t5","class":"x","claimed_by":"w2"}"#,
        )
        .unwrap();
        let now = time::parse("1970-01-01T00:00:10Z").unwrap();
        let q = counts(&home, now).unwrap();
        assert_eq!(q.total(TaskState::Pending), 2);
        assert_eq!(q.by_state["completed"]["llm"], 1);
        assert_eq!(q.by_state["completed"]["default"], 1);
        assert_eq!(q.oldest_pending_seconds["llm"], 9.0);
        let j = jobs_per_worker(&home).unwrap();
        assert_eq!(j[0].worker_id, "w1");
        assert_eq!((j[0].total, j[0].completed), (2, 2));
        assert_eq!(j[0].mean_duration_seconds, Some(4.0));
        assert_eq!((j[1].worker_id.as_str(), j[1].failed), ("w2", 1));
    }
}
