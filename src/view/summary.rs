//! `worker-monitor summary`: the fleet dashboards (recent lifecycle events, failures
//! of the last day, sessions, active workers with uptime, lifecycle start → stop, jobs per
//! worker) plus queue progress, budget, restarts and circuit breakers, as one report.
//!
//! The event log is streamed once, line by line, into fixed-size aggregates: ring buffers
//! for the "last N" lists, one small record per session, and one record per worker whose
//! end has not been seen yet (finished workers leave the map and only the newest `limit` of
//! them are kept). Memory is therefore bounded by the number of sessions and live workers,
//! not by the log's length. Each line is parsed into a borrowed [`LightEvent`]; only the
//! few types whose `data` is reported (failures, ends, breakers) are parsed a second time.

use super::eventlog::{self, LightEvent};
use super::tasks::{self, WorkerJobs};
use super::workers;
use crate::error::Result;
use crate::home::{Home, StateDir, TaskState};
use crate::time::{self, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};

/// Windows and list lengths of the report.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lifecycle events newer than this are "recent" (seed: 1 hour).
    pub recent_since: Timestamp,
    /// Failures newer than this are listed (seed: 1 day).
    pub failures_since: Timestamp,
    /// Longest list in any section.
    pub limit: usize,
}

/// One event in a list.
#[derive(Debug, Clone, Serialize)]
pub struct EventBrief {
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub worker_id: Option<String>,
    pub worker_type: Option<String>,
    pub session_id: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl EventBrief {
    fn from_light(e: &LightEvent<'_>) -> EventBrief {
        EventBrief {
            timestamp: e.timestamp.to_string(),
            kind: e.kind.to_string(),
            worker_id: e.worker_id.as_ref().map(|s| s.to_string()),
            worker_type: e.worker_type.as_ref().map(|s| s.to_string()),
            session_id: e.session_id.as_ref().map(|s| s.to_string()),
            message: e.message.as_deref().unwrap_or("").to_string(),
            data: None,
        }
    }
}

/// Events in a time window: how many, and the newest `limit`, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    #[serde(with = "time::serde_ts")]
    pub since: Timestamp,
    pub count: u64,
    pub events: Vec<EventBrief>,
}

/// One session (seed: event count, first and last event).
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub session_id: String,
    pub event_count: u64,
    #[serde(with = "time::serde_ts")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde_ts")]
    pub ended_at: Timestamp,
}

/// An active worker with its uptime and jobs (seed: "current active workers").
#[derive(Debug, Clone, Serialize)]
pub struct ActiveWorker {
    pub worker_id: String,
    pub worker_type: String,
    pub execution_mode: Option<String>,
    pub status: String,
    pub task_id: Option<String>,
    pub jobs_processed: u64,
    pub jobs_failed: u64,
    #[serde(with = "time::serde_ts::option")]
    pub started_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub last_heartbeat: Option<Timestamp>,
    pub uptime_seconds: Option<f64>,
}

/// One finished worker's life: spawned (or registered) → ended.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleRow {
    pub worker_id: String,
    pub worker_type: Option<String>,
    #[serde(with = "time::serde_ts::option")]
    pub spawned_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub ready_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts")]
    pub ended_at: Timestamp,
    /// worker_completed | worker_stopped | worker_failed | worker_archived
    pub end: String,
    pub lifetime_seconds: Option<f64>,
    pub jobs_processed: Option<u64>,
}

/// Lifecycle section: totals and the newest finished workers by start.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    pub finished: u64,
    pub by_end: std::collections::BTreeMap<String, u64>,
    pub mean_lifetime_seconds: Option<f64>,
    pub recent: Vec<LifecycleRow>,
}

/// Queue progress as seed 000's ProgressTracker logs it.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct QueueProgress {
    pub total: u64,
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub percent_complete: f64,
}

impl QueueProgress {
    /// `Progress: 25/50 jobs completed | 4 active | 0 failed (50%)`.
    pub fn line(&self) -> String {
        format!(
            "Progress: {}/{} jobs completed | {} active | {} failed ({:.0}%)",
            self.completed, self.total, self.processing, self.failed, self.percent_complete
        )
    }
}

/// Counts the queue's files without reading them.
pub fn queue_progress(home: &Home) -> Result<QueueProgress> {
    let pending: u64 = tasks::pending_by_class(home)?.iter().map(|p| p.1).sum();
    let processing = tasks::count_files(home, TaskState::Processing)?;
    let completed = tasks::count_files(home, TaskState::Completed)?;
    let failed = tasks::count_files(home, TaskState::Failed)?;
    let total = pending + processing + completed + failed;
    Ok(QueueProgress {
        total,
        pending,
        processing,
        completed,
        failed,
        percent_complete: if total == 0 {
            0.0
        } else {
            completed as f64 * 100.0 / total as f64
        },
    })
}

/// Restart history: totals by result and the newest lines.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Restarts {
    pub total: u64,
    pub by_result: std::collections::BTreeMap<String, u64>,
    pub recent: Vec<Value>,
}

/// A circuit breaker's last known state, from its events.
#[derive(Debug, Clone, Serialize)]
pub struct Breaker {
    pub worker_type: String,
    /// open (tripped) or closed (reset).
    pub state: String,
    pub since: String,
    pub trips: u64,
    pub message: String,
}

/// Where the numbers came from.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LogStats {
    pub files: usize,
    pub lines: u64,
    pub unparsable: u64,
}

/// The whole report (`worker-monitor summary --format json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(with = "time::serde_ts")]
    pub generated_at: Timestamp,
    pub recent_events: Window,
    pub failures: Window,
    pub sessions_total: u64,
    pub sessions: Vec<SessionRow>,
    pub active_workers: Vec<ActiveWorker>,
    pub lifecycle: Lifecycle,
    pub jobs_per_worker: Vec<WorkerJobs>,
    pub queue: QueueProgress,
    pub budget: Value,
    pub restarts: Restarts,
    pub circuit_breakers: Vec<Breaker>,
    pub log: LogStats,
}

struct Open {
    worker_type: Option<String>,
    spawned_at: Option<Timestamp>,
    ready_at: Option<Timestamp>,
}

/// The streaming state of one pass over the log.
struct Scan {
    opts: Options,
    recent: VecDeque<EventBrief>,
    recent_count: u64,
    failures: VecDeque<EventBrief>,
    failures_count: u64,
    sessions: HashMap<String, (u64, Timestamp, Timestamp)>,
    open: HashMap<String, Open>,
    finished: Vec<LifecycleRow>,
    finished_count: u64,
    by_end: std::collections::BTreeMap<String, u64>,
    lifetime_sum: f64,
    lifetime_n: u64,
    breakers: HashMap<String, Breaker>,
    stats: LogStats,
}

fn push_ring<T>(q: &mut VecDeque<T>, item: T, limit: usize) {
    if limit == 0 {
        return;
    }
    if q.len() == limit {
        q.pop_front();
    }
    q.push_back(item);
}

fn data_of(line: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|mut v| v.get_mut("data").map(Value::take))
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

impl Scan {
    fn new(opts: Options) -> Scan {
        Scan {
            opts,
            recent: VecDeque::new(),
            recent_count: 0,
            failures: VecDeque::new(),
            failures_count: 0,
            sessions: HashMap::new(),
            open: HashMap::new(),
            finished: Vec::new(),
            finished_count: 0,
            by_end: Default::default(),
            lifetime_sum: 0.0,
            lifetime_n: 0,
            breakers: HashMap::new(),
            stats: LogStats::default(),
        }
    }

    fn line(&mut self, line: &[u8]) {
        self.stats.lines += 1;
        let Some(e) = LightEvent::parse(line) else {
            self.stats.unparsable += 1;
            return;
        };
        let Some(t) = e.time() else {
            self.stats.unparsable += 1;
            return;
        };
        let kind: &str = &e.kind;
        if let Some(s) = e.session_id.as_deref() {
            match self.sessions.get_mut(s) {
                Some(x) => {
                    x.0 += 1;
                    x.1 = x.1.min(t);
                    x.2 = x.2.max(t);
                }
                None => {
                    self.sessions.insert(s.to_string(), (1, t, t));
                }
            }
        }
        let lifecycle_kind = kind.starts_with("worker_") || kind.starts_with("pool_");
        if lifecycle_kind && t >= self.opts.recent_since {
            self.recent_count += 1;
            push_ring(
                &mut self.recent,
                EventBrief::from_light(&e),
                self.opts.limit,
            );
        }
        if kind == "worker_failed" && t >= self.opts.failures_since {
            self.failures_count += 1;
            let mut b = EventBrief::from_light(&e);
            b.data = Some(Value::Object(data_of(line)));
            push_ring(&mut self.failures, b, self.opts.limit);
        }
        match kind {
            "worker_spawned" | "worker_registered" | "worker_starting" | "worker_ready" => {
                if let Some(w) = e.worker_id.as_deref() {
                    let o = self.open.entry(w.to_string()).or_insert(Open {
                        worker_type: None,
                        spawned_at: None,
                        ready_at: None,
                    });
                    if o.worker_type.is_none() {
                        o.worker_type = e.worker_type.as_ref().map(|s| s.to_string());
                    }
                    if matches!(kind, "worker_spawned" | "worker_registered") {
                        o.spawned_at = Some(o.spawned_at.map_or(t, |s| s.min(t)));
                    } else if kind == "worker_ready" && o.ready_at.is_none() {
                        o.ready_at = Some(t);
                    }
                }
            }
            "worker_completed" | "worker_stopped" | "worker_failed" | "worker_archived" => {
                if let Some(w) = e.worker_id.as_deref() {
                    self.end(w, &e, t, line);
                }
            }
            "circuit_breaker_tripped" | "circuit_breaker_reset" => {
                let data = data_of(line);
                let wt = data
                    .get("worker_type")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| e.worker_type.as_ref().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown".into());
                let tripped = kind == "circuit_breaker_tripped";
                let b = self.breakers.entry(wt.clone()).or_insert(Breaker {
                    worker_type: wt,
                    state: String::new(),
                    since: String::new(),
                    trips: 0,
                    message: String::new(),
                });
                b.state = if tripped { "open" } else { "closed" }.into();
                b.since = e.timestamp.to_string();
                b.message = e.message.as_deref().unwrap_or("").to_string();
                if tripped {
                    b.trips += 1;
                }
            }
            _ => {}
        }
    }

    /// A worker's first end closes its lifecycle. An archive after another end (or of a
    /// worker whose start rotated away) is not a second life.
    fn end(&mut self, w: &str, e: &LightEvent<'_>, t: Timestamp, line: &[u8]) {
        let open = self.open.remove(w);
        if open.is_none() && e.kind == "worker_archived" {
            return;
        }
        let data = data_of(line);
        let open = open.unwrap_or(Open {
            worker_type: None,
            spawned_at: None,
            ready_at: None,
        });
        let start = open.spawned_at.or(open.ready_at);
        let lifetime = start.map(|s| super::secs_between(s, t));
        if let Some(l) = lifetime {
            self.lifetime_sum += l;
            self.lifetime_n += 1;
        }
        self.finished_count += 1;
        *self.by_end.entry(e.kind.to_string()).or_default() += 1;
        self.finished.push(LifecycleRow {
            worker_id: w.to_string(),
            worker_type: open
                .worker_type
                .or_else(|| e.worker_type.as_ref().map(|s| s.to_string())),
            spawned_at: open.spawned_at,
            ready_at: open.ready_at,
            ended_at: t,
            end: e.kind.to_string(),
            lifetime_seconds: lifetime,
            jobs_processed: data.get("jobs_processed").and_then(Value::as_u64),
        });
        if self.finished.len() >= 4 * self.opts.limit.max(16) {
            self.trim_finished();
        }
    }

    fn trim_finished(&mut self) {
        let key = |r: &LifecycleRow| r.spawned_at.or(r.ready_at).unwrap_or(r.ended_at);
        self.finished.sort_by_key(|r| std::cmp::Reverse(key(r)));
        self.finished.truncate(self.opts.limit);
    }
}

/// Builds the report. The event log is streamed; the rest is read from the current files.
pub fn build(home: &Home, opts: Options, now: Timestamp) -> Result<Summary> {
    let limit = opts.limit;
    let mut scan = Scan::new(opts);
    scan.stats.files = eventlog::log_files(home).len() + 1;
    eventlog::read_all(home, &mut |line| {
        scan.line(line);
        Ok(())
    })?;
    scan.trim_finished();

    let mut sessions: Vec<SessionRow> = scan
        .sessions
        .iter()
        .map(|(k, v)| SessionRow {
            session_id: k.clone(),
            event_count: v.0,
            started_at: v.1,
            ended_at: v.2,
        })
        .collect();
    sessions.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.session_id.cmp(&b.session_id))
    });
    let sessions_total = sessions.len() as u64;
    sessions.truncate(limit.clamp(1, 10));

    let jobs = tasks::jobs_per_worker(home)?;
    let jobs_by: HashMap<&str, &WorkerJobs> =
        jobs.iter().map(|j| (j.worker_id.as_str(), j)).collect();
    let loaded = workers::load(home, &[StateDir::Active], now)?;
    let mut active: Vec<ActiveWorker> = loaded
        .rows
        .into_iter()
        .map(|r| {
            let j = jobs_by.get(r.worker_id.as_str());
            ActiveWorker {
                jobs_processed: r.jobs_processed.or(j.map(|j| j.completed)).unwrap_or(0),
                jobs_failed: j.map(|j| j.failed).unwrap_or(0),
                execution_mode: r.execution_mode,
                status: r.status,
                task_id: r.task_id,
                started_at: r.started_at,
                last_heartbeat: r.last_seen,
                uptime_seconds: r.uptime_seconds,
                worker_id: r.worker_id,
                worker_type: r.worker_type,
            }
        })
        .collect();
    active.sort_by(|a, b| {
        a.worker_type
            .cmp(&b.worker_type)
            .then_with(|| a.worker_id.cmp(&b.worker_id))
    });

    let budget = match crate::budget::read(home) {
        Ok(b) => serde_json::to_value(&b).unwrap_or(Value::Null),
        Err(e) => {
            tracing::warn!("cannot read the token budget: {e}");
            Value::Null
        }
    };

    let mut restarts = Restarts::default();
    let mut ring = VecDeque::new();
    eventlog::for_each_line_in(&home.restart_history_path(), &mut |line| {
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            restarts.total += 1;
            let r = v
                .get("result")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            *restarts.by_result.entry(r).or_default() += 1;
            push_ring(&mut ring, v, limit);
        }
        Ok(())
    })?;
    restarts.recent = ring.into_iter().rev().collect();

    let mut breakers: Vec<Breaker> = scan.breakers.into_values().collect();
    breakers.sort_by(|a, b| a.worker_type.cmp(&b.worker_type));

    Ok(Summary {
        generated_at: now,
        recent_events: Window {
            since: scan.opts.recent_since,
            count: scan.recent_count,
            events: scan.recent.into_iter().rev().collect(),
        },
        failures: Window {
            since: scan.opts.failures_since,
            count: scan.failures_count,
            events: scan.failures.into_iter().rev().collect(),
        },
        sessions_total,
        sessions,
        active_workers: active,
        lifecycle: Lifecycle {
            finished: scan.finished_count,
            by_end: scan.by_end,
            mean_lifetime_seconds: (scan.lifetime_n > 0)
                .then(|| scan.lifetime_sum / scan.lifetime_n as f64),
            recent: scan.finished,
        },
        jobs_per_worker: jobs,
        queue: queue_progress(home)?,
        budget,
        restarts,
        circuit_breakers: breakers,
        log: scan.stats,
    })
}

fn opt_dur(s: Option<f64>) -> String {
    s.map(super::human_duration).unwrap_or_else(|| "-".into())
}

fn opt_ts(t: Option<Timestamp>) -> String {
    t.map(|t| time::format(&t)).unwrap_or_else(|| "-".into())
}

/// The report as text sections for a terminal. Ids are shown in their short form (see
/// `crate::lookup`); the JSON report has them whole.
pub fn render_text(s: &Summary) -> String {
    let short = crate::lookup::short_ids(
        s.active_workers
            .iter()
            .map(|w| w.worker_id.as_str())
            .chain(s.lifecycle.recent.iter().map(|r| r.worker_id.as_str()))
            .chain(s.jobs_per_worker.iter().map(|j| j.worker_id.as_str()))
            .chain(s.active_workers.iter().filter_map(|w| w.task_id.as_deref())),
    );
    let show = |id: &str| short.get(id).cloned().unwrap_or_else(|| id.to_string());
    let table = |header: &[&str], rows: &[Vec<String>]| {
        if rows.is_empty() {
            "(none)".to_string()
        } else {
            // The views' one table renderer: every cell escaped (DESIGN §10).
            super::term::table(header, rows)
        }
    };
    let mut out = String::new();
    let mut section = |title: String, body: String| {
        // Titles carry counts keyed by logged text (ends, restart results): one line each.
        out.push_str(&format!("== {}\n", super::term::escape_line(&title)));
        if !body.is_empty() {
            out.push_str(&body);
            out.push('\n');
        }
        out.push('\n');
    };
    let event_rows = |w: &Window, with_error: bool| -> Vec<Vec<String>> {
        w.events
            .iter()
            .map(|e| {
                let mut msg = e.message.clone();
                if with_error {
                    if let Some(err) = e
                        .data
                        .as_ref()
                        .and_then(|d| d.get("error"))
                        .and_then(Value::as_str)
                    {
                        if !msg.contains(err) {
                            msg = format!("{msg} ({err})");
                        }
                    }
                }
                vec![
                    e.timestamp.clone(),
                    e.kind.clone(),
                    e.worker_type.clone().unwrap_or_else(|| "-".into()),
                    msg,
                ]
            })
            .collect()
    };
    section(
        format!(
            "Recent lifecycle events since {} ({})",
            time::format(&s.recent_events.since),
            s.recent_events.count
        ),
        table(
            &["TIME", "EVENT", "TYPE", "MESSAGE"],
            &event_rows(&s.recent_events, false),
        ),
    );
    section(
        format!(
            "Worker failures since {} ({})",
            time::format(&s.failures.since),
            s.failures.count
        ),
        table(
            &["TIME", "EVENT", "TYPE", "MESSAGE"],
            &event_rows(&s.failures, true),
        ),
    );
    section(
        format!("Sessions ({} in the log)", s.sessions_total),
        table(
            &["SESSION", "EVENTS", "STARTED", "ENDED"],
            &s.sessions
                .iter()
                .map(|x| {
                    vec![
                        x.session_id.clone(),
                        x.event_count.to_string(),
                        time::format(&x.started_at),
                        time::format(&x.ended_at),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    section(
        format!("Active workers ({})", s.active_workers.len()),
        table(
            &[
                "ID",
                "TYPE",
                "MODE",
                "STATUS",
                "TASK",
                "JOBS",
                "FAILED",
                "LAST BEAT",
                "UPTIME",
            ],
            &s.active_workers
                .iter()
                .map(|w| {
                    vec![
                        show(&w.worker_id),
                        w.worker_type.clone(),
                        w.execution_mode.clone().unwrap_or_else(|| "-".into()),
                        w.status.clone(),
                        w.task_id.as_deref().map(show).unwrap_or_else(|| "-".into()),
                        w.jobs_processed.to_string(),
                        w.jobs_failed.to_string(),
                        opt_ts(w.last_heartbeat),
                        opt_dur(w.uptime_seconds),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    let ends: Vec<String> = s
        .lifecycle
        .by_end
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    section(
        format!(
            "Lifecycle: {} finished ({}), mean lifetime {}",
            s.lifecycle.finished,
            if ends.is_empty() {
                "-".to_string()
            } else {
                ends.join(", ")
            },
            opt_dur(s.lifecycle.mean_lifetime_seconds)
        ),
        table(
            &["ID", "TYPE", "SPAWNED", "ENDED", "END", "LIFETIME", "JOBS"],
            &s.lifecycle
                .recent
                .iter()
                .map(|r| {
                    vec![
                        show(&r.worker_id),
                        r.worker_type.clone().unwrap_or_else(|| "-".into()),
                        opt_ts(r.spawned_at),
                        time::format(&r.ended_at),
                        r.end.clone(),
                        opt_dur(r.lifetime_seconds),
                        r.jobs_processed
                            .map(|j| j.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    section(
        "Jobs per worker".into(),
        table(
            &[
                "WORKER",
                "TOTAL",
                "COMPLETED",
                "FAILED",
                "PROCESSING",
                "MEAN",
            ],
            &s.jobs_per_worker
                .iter()
                .take(20)
                .map(|j| {
                    vec![
                        show(&j.worker_id),
                        j.total.to_string(),
                        j.completed.to_string(),
                        j.failed.to_string(),
                        j.processing.to_string(),
                        j.mean_duration_seconds
                            .map(|d| format!("{d:.2}s"))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    section(format!("Queue  {}", s.queue.line()), String::new());
    let b = |k: &str| {
        s.budget
            .get(k)
            .and_then(Value::as_u64)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    };
    section(
        format!(
            "Budget  total {}  used {}  consumed {}  available {}",
            b("total"),
            b("used"),
            b("consumed"),
            b("available")
        ),
        String::new(),
    );
    let results: Vec<String> = s
        .restarts
        .by_result
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    section(
        format!(
            "Restarts: {}{}",
            s.restarts.total,
            if results.is_empty() {
                String::new()
            } else {
                format!(" ({})", results.join(", "))
            }
        ),
        table(
            &["TIME", "ORIGINAL", "NEW", "ATTEMPT", "RESULT", "REASON"],
            &s.restarts
                .recent
                .iter()
                .map(|r| {
                    let f = |k: &str| match r.get(k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => "-".into(),
                        Some(v) => v.to_string(),
                    };
                    vec![
                        f("timestamp"),
                        f("original_worker_id"),
                        f("new_worker_id"),
                        f("attempt"),
                        f("result"),
                        f("reason"),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    section(
        "Circuit breakers".into(),
        table(
            &["TYPE", "STATE", "SINCE", "TRIPS", "MESSAGE"],
            &s.circuit_breakers
                .iter()
                .map(|b| {
                    vec![
                        b.worker_type.clone(),
                        b.state.clone(),
                        b.since.clone(),
                        b.trips.to_string(),
                        b.message.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    );
    out.push_str(&format!(
        "({} lines in {} log file(s), {} unparsable)",
        s.log.lines, s.log.files, s.log.unparsable
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, kind: &str, w: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"e","timestamp":"{ts}","type":"{kind}","source":"t","host":"h","worker_id":"{w}","worker_type":"conv","task_id":null,"session_id":"s1","message":"{kind} {w}","data":{{{extra}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn lifecycles_sessions_windows_and_breakers() {
        let t = |s: &str| time::parse(s).unwrap();
        let mut sc = Scan::new(Options {
            recent_since: t("2026-01-01T10:00:00Z"),
            failures_since: t("2026-01-01T00:00:00Z"),
            limit: 2,
        });
        sc.line(&line(
            "2026-01-01T09:00:00.000Z",
            "worker_spawned",
            "w1",
            "",
        ));
        sc.line(&line("2026-01-01T09:00:01.000Z", "worker_ready", "w1", ""));
        sc.line(&line(
            "2026-01-01T09:00:10.000Z",
            "worker_completed",
            "w1",
            r#""jobs_processed":7"#,
        ));
        sc.line(&line(
            "2026-01-01T09:00:11.000Z",
            "worker_archived",
            "w1",
            "",
        ));
        sc.line(&line(
            "2026-01-01T10:00:00.000Z",
            "worker_spawned",
            "w2",
            "",
        ));
        sc.line(&line(
            "2026-01-01T10:00:30.000Z",
            "worker_failed",
            "w2",
            r#""error":"boom""#,
        ));
        sc.line(&line(
            "2026-01-01T10:01:00.000Z",
            "circuit_breaker_tripped",
            "",
            r#""worker_type":"conv""#,
        ));
        sc.line(b"garbage");
        assert_eq!(sc.finished_count, 2);
        assert_eq!(sc.lifetime_sum, 40.0);
        sc.trim_finished();
        assert_eq!(sc.finished[0].worker_id, "w2");
        assert_eq!(sc.finished[1].jobs_processed, Some(7));
        assert_eq!(sc.recent_count, 2);
        assert_eq!(sc.failures_count, 1);
        assert_eq!(sc.failures[0].data.as_ref().unwrap()["error"], "boom");
        assert_eq!(sc.sessions["s1"].0, 7);
        assert_eq!(sc.breakers["conv"].state, "open");
        assert_eq!(sc.stats.unparsable, 1);
        assert!(sc.open.is_empty());
    }
}
