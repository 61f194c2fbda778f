//! The task queue as the dashboards see it. Counts and ages come from the queue's own
//! reading (`queue::report`: kept counts per class and the head of each class), so a deep
//! queue costs what a shallow one does and every view agrees with `task-queue stats`. Task
//! files that a view does read (`processing/`, and the per-worker job history) are read
//! leniently (any missing field is fine), because the views must keep working with whatever
//! version of the queue wrote them.

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

/// Pending tasks per class: (class, count, oldest claimable task's time in ns). From the
/// queue's kept counts and the head of each class (`queue::report::pending_classes`), so it
/// costs the same at 1,000 and 1,000,000 pending, in the flat layout or the bucketed one.
pub fn pending_by_class(home: &Home) -> Result<Vec<(String, u64, Option<u128>)>> {
    let now = crate::queue::task::time_ns(time::now());
    Ok(crate::queue::report::pending_classes(home, now)?
        .into_iter()
        .map(|c| (c.class, c.count, c.oldest_ns.map(u128::from)))
        .collect())
}

/// Number of tasks in a state: the kept counts, except `processing/` (listed: it holds one
/// file per claimant at most).
pub fn count_files(home: &Home, state: TaskState) -> Result<u64> {
    if state == TaskState::Processing {
        return Ok(store::list_json(&home.tasks_dir(state))?.len() as u64);
    }
    if state == TaskState::Pending {
        return Ok(pending_by_class(home)?.iter().map(|p| p.1).sum());
    }
    Ok(crate::queue::report::kept_counts(home)?
        .values()
        .map(|c| c.get(state))
        .sum())
}

/// Counts by state and class: the queue's kept counts, and `processing/` read for each
/// task's class (what Prometheus wants labelled). No finished task file is read.
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
    for (class, c) in crate::queue::report::kept_counts(home)? {
        for st in [
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Deferred,
            TaskState::Cancelled,
        ] {
            let n = c.get(st);
            if n > 0 {
                q.by_state
                    .entry(st.name().into())
                    .or_default()
                    .insert(class.clone(), n);
            }
        }
    }
    for st in [TaskState::Completed, TaskState::Failed] {
        q.by_state.entry(st.name().into()).or_default();
    }
    let m = q.by_state.entry("processing".into()).or_default();
    for t in tasks_in(home, TaskState::Processing)? {
        *m.entry(t.class).or_default() += 1;
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

/// `5s`, `12m`, `3.5h`, `2.1d`; `in 5m` for a time still to come; `-` for none.
pub fn age(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 0.0 => format!("in {}", age(Some(-s))),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        Some(s) => format!("{:.1}d", s / 86_400.0),
    }
}

const LIST_HEADER: [&str; 8] = [
    "TASK",
    "STATE",
    "CLASS",
    "PRIORITY",
    "ATTEMPTS",
    "CLAIMED_BY",
    "AGE",
    "NAME",
];

/// Rows of a table buffered to size its columns before streaming the rest.
const HEAD_ROWS: usize = 200;
/// Hex digits of the ids of rows streamed after the head: 48 bits, so even a listing of a
/// million tasks shows each one a prefix of its own (an ambiguous one is refused with the
/// candidates when typed, never taken for another).
const STREAMED_HEX: usize = 12;

/// Writes tasks as `task-queue list` prints them, one at a time, so a listing of a million
/// tasks holds none of them: JSON as an array written item by item, jsonl line by line, a
/// table whose column widths come from its first rows (a longer cell later just runs over).
pub struct TaskListWriter<W: std::io::Write> {
    out: W,
    format: crate::cli::Format,
    now: Timestamp,
    buffered: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    first: bool,
}

fn werr(e: std::io::Error) -> crate::Error {
    crate::Error::io("cannot write to stdout", e)
}

impl<W: std::io::Write> TaskListWriter<W> {
    /// Starts a listing (writes the opening of a JSON array).
    pub fn new(mut out: W, format: crate::cli::Format, now: Timestamp) -> Result<Self> {
        if format == crate::cli::Format::Json {
            write!(out, "[").map_err(werr)?;
        }
        Ok(TaskListWriter {
            out,
            format,
            now,
            buffered: Vec::new(),
            widths: None,
            first: true,
        })
    }

    fn row(&self, t: &crate::queue::Task) -> Vec<String> {
        let since = match t.state {
            TaskState::Processing => t.claimed_at,
            TaskState::Completed => t.completed_at,
            TaskState::Failed => t.failed_at,
            TaskState::Cancelled => t.cancelled_at,
            TaskState::Pending | TaskState::Deferred => {
                Some(crate::queue::task::ns_time(t.position_ns()))
            }
        };
        // Every cell is built here, and every cell is escaped here (DESIGN §10): a name is
        // free text from whoever enqueued, and a file read for display may hold anything,
        // so no cell can drive the terminal or break its row.
        [
            t.task_id.clone(),
            t.state.name().into(),
            t.class.clone(),
            t.priority.as_str().into(),
            format!("{}/{}", t.attempts, t.max_attempts),
            t.claimed_by.clone().unwrap_or_else(|| "-".into()),
            age(since.map(|s| time::secs_between(s, self.now))),
            t.name.clone().unwrap_or_default(),
        ]
        .into_iter()
        .map(|c| match crate::view::term::escape_line(&c) {
            std::borrow::Cow::Borrowed(_) => c,
            std::borrow::Cow::Owned(e) => e,
        })
        .collect()
    }

    fn line(cells: &[String], widths: &[usize]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    }

    /// The id cells (task, claimant) of a row, shortened: the buffered head of the table
    /// with `lookup::short_ids` (unique among the rows shown together), rows streamed after
    /// it with [`STREAMED_HEX`] hex digits, as the writer cannot know the rows to come.
    fn shorten(rows: &mut [Vec<String>]) {
        let short = crate::lookup::short_ids(
            rows.iter()
                .flat_map(|r| [r[0].as_str(), r[5].as_str()])
                .collect::<Vec<&str>>(),
        );
        let short: std::collections::HashMap<String, String> =
            short.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for r in rows.iter_mut() {
            for i in [0, 5] {
                if let Some(s) = short.get(&r[i]) {
                    r[i] = s.clone();
                }
            }
        }
    }

    fn start_table(&mut self) -> Result<()> {
        Self::shorten(&mut self.buffered);
        let mut ws: Vec<usize> = LIST_HEADER.iter().map(|h| h.len()).collect();
        for r in &self.buffered {
            for (i, c) in r.iter().enumerate() {
                ws[i] = ws[i].max(c.chars().count());
            }
        }
        let hdr: Vec<String> = LIST_HEADER.iter().map(|h| h.to_string()).collect();
        writeln!(self.out, "{}", Self::line(&hdr, &ws)).map_err(werr)?;
        for r in std::mem::take(&mut self.buffered) {
            writeln!(self.out, "{}", Self::line(&r, &ws)).map_err(werr)?;
        }
        self.widths = Some(ws);
        Ok(())
    }

    /// Writes one task.
    pub fn write(&mut self, t: &crate::queue::Task) -> Result<()> {
        use crate::cli::Format;
        match self.format {
            Format::Json => {
                let sep = if self.first { "" } else { "," };
                write!(self.out, "{sep}\n  {}", t.to_value()?).map_err(werr)?;
            }
            Format::Jsonl => writeln!(self.out, "{}", t.to_value()?).map_err(werr)?,
            Format::Table => {
                let mut r = self.row(t);
                match &self.widths {
                    Some(ws) => {
                        for i in [0, 5] {
                            r[i] = crate::lookup::short_id(&r[i], STREAMED_HEX);
                        }
                        writeln!(self.out, "{}", Self::line(&r, ws)).map_err(werr)?
                    }
                    None => {
                        self.buffered.push(r);
                        if self.buffered.len() >= HEAD_ROWS {
                            self.start_table()?;
                        }
                    }
                }
            }
        }
        self.first = false;
        Ok(())
    }

    /// Ends the listing (a short table, the closing of a JSON array) and flushes.
    pub fn finish(mut self) -> Result<()> {
        match self.format {
            crate::cli::Format::Table if self.widths.is_none() => self.start_table()?,
            crate::cli::Format::Json => {
                writeln!(self.out, "{}]", if self.first { "" } else { "\n" }).map_err(werr)?
            }
            _ => {}
        }
        self.out.flush().map_err(werr)
    }
}

/// The `task-queue stats` table.
pub fn stats_table(s: &crate::queue::Stats) -> String {
    let mut rows = Vec::new();
    for (state, by_class) in &s.counts {
        for (class, n) in by_class {
            let oldest = (state == "pending")
                .then(|| s.oldest_pending_by_class.get(class).copied())
                .flatten();
            rows.push(vec![
                state.clone(),
                class.clone(),
                n.to_string(),
                age(oldest),
            ]);
        }
    }
    let mut out = crate::view::term::table(&["STATE", "CLASS", "COUNT", "OLDEST"], &rows);
    let totals: Vec<String> = s.totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("\ntotal: {}", totals.join(", ")));
    out.push_str(&format!(
        "\noldest pending: {}",
        age(s.oldest_pending_seconds)
    ));
    let short = crate::lookup::short_ids(s.processing_by_worker.keys().map(String::as_str));
    let per: Vec<String> = s
        .processing_by_worker
        .iter()
        .map(|(w, n)| format!("{}:{n}", short.get(w.as_str()).unwrap_or(w)))
        .collect();
    out.push_str(&format!(
        "\nprocessing per worker: {}",
        if per.is_empty() {
            "-".into()
        } else {
            per.join(", ")
        }
    ));
    out.push_str(&format!(
        "\nstuck (processing > {}s): {}",
        s.stuck_task_seconds, s.stuck
    ));
    if !s.paused.is_empty() {
        out.push_str(&format!("\npaused: {}", s.paused.join(", ")));
    }
    if !s.next_due_by_class.is_empty() {
        let due: Vec<String> = s
            .next_due_by_class
            .iter()
            .map(|(c, t)| format!("{c} at {t}"))
            .collect();
        out.push_str(&format!("\ndelayed, next due: {}", due.join(", ")));
    }
    out
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
