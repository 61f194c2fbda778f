//! The worker list: read specs fast, filter, sort, print as a table or JSON.
//!
//! Listing is a display read, so it does not go through `spec::read` (full JSON Schema
//! validation costs more than the read itself and would hide a half-valid spec from the one
//! person trying to see it). Each file is read with the store's guards (no symlinks, regular
//! files, 1 MiB cap) and deserialised into [`RawSpec`], which names only the fields shown and
//! skips the rest (history, process, extra fields) without building them. A spec whose fields
//! have unexpected types falls back to a field-by-field read of the JSON value. Large
//! directories are read on all cores with `std::thread::scope` over chunks of the file list;
//! measured in `scripts/bench.d/40-dashboards.sh`.

use super::term::{self, Cell, Colour};
use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::store::{self, ReadError};
use crate::time::{self, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One worker as the dashboards show it. Also the `--format json` shape of the list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerRow {
    pub worker_id: String,
    pub worker_type: String,
    pub status: String,
    /// The state directory the spec was found in.
    pub state_dir: StateDir,
    /// healthy | degraded | unhealthy | unresponsive (as written by the monitor, else derived
    /// from the score) for a live worker; for a dead one (failed, zombie, completed, or any
    /// archived worker) its status, since a last health score says nothing about it.
    pub health: String,
    /// The last score for a live worker; null for a dead one.
    pub health_score: Option<u32>,
    /// How a dead worker ended (`failed: exit 1`, `zombie: SIGKILL`, `completed`); null while
    /// it lives.
    pub verdict: Option<String>,
    #[serde(with = "time::serde_ts::option")]
    pub last_seen: Option<Timestamp>,
    /// Seconds since the last beat; null before the first beat.
    pub heartbeat_age_seconds: Option<f64>,
    pub tokens_used: u64,
    pub tokens_allocated: u64,
    /// used / allocated in percent (0 when nothing is allocated).
    pub tokens_percent: f64,
    pub task_id: Option<String>,
    pub pid: Option<i64>,
    pub session_id: Option<String>,
    pub priority: Option<String>,
    pub master: Option<String>,
    pub execution_mode: Option<String>,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub jobs_processed: Option<u64>,
    #[serde(with = "time::serde_ts::option")]
    pub created_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub started_at: Option<Timestamp>,
    #[serde(with = "time::serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    /// Seconds from start (or creation) to the end, or to now while the worker lives.
    pub uptime_seconds: Option<f64>,
    /// Why the file is no worker's spec, when its content names no worker or another one
    /// than its file name (DESIGN §6 S9: never acted on). The row still shows, so a stray
    /// file is seen; `corral status` counts it as a problem, as `corral doctor` does.
    #[serde(skip)]
    pub not_a_spec: Option<String>,
}

/// The shown fields of a spec, typed loosely; everything else is skipped unbuilt.
#[derive(Debug, Deserialize)]
struct RawSpec {
    worker_id: Option<String>,
    worker_type: Option<String>,
    status: Option<String>,
    task_id: Option<String>,
    session_id: Option<String>,
    priority: Option<String>,
    master: Option<String>,
    pid: Option<i64>,
    #[serde(default)]
    token_budget: Option<RawTokens>,
    #[serde(default)]
    heartbeat: Option<RawBeat>,
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    exit: Option<RawExit>,
    created_at: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    jobs_processed: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct RawTokens {
    allocated: Option<u64>,
    used: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct RawBeat {
    last_seen: Option<String>,
    health_score: Option<f64>,
    health: Option<String>,
    message: Option<String>,
    progress: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
struct RawProcess {
    execution_mode: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawExit {
    code: Option<i64>,
    signal: Option<i64>,
}

/// True for a worker that has ended: its spec left `active/`, or says it ended.
pub fn is_dead(dir: StateDir, status: &str) -> bool {
    dir != StateDir::Active || matches!(status, "completed" | "failed" | "zombie")
}

/// The verdict on a dead worker: its status, and how its process ended when known.
fn verdict(status: &str, exit: Option<&RawExit>) -> String {
    let how = exit.and_then(|e| match (e.code, e.signal) {
        (_, Some(sig)) => Some(
            i32::try_from(sig)
                .ok()
                .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| format!("signal {sig}")),
        ),
        (Some(code), None) => Some(format!("exit {code}")),
        (None, None) => None,
    });
    match how {
        Some(h) => format!("{status}: {h}"),
        None => status.to_string(),
    }
}

fn ts(s: Option<&str>) -> Option<Timestamp> {
    s.filter(|s| !s.is_empty())
        .and_then(|s| time::parse(s).ok())
}

impl RawSpec {
    /// Field-by-field read for a spec whose types do not fit [`RawSpec`].
    fn from_value(v: &Value) -> RawSpec {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        let u = |p: &str| v.pointer(p).and_then(Value::as_u64);
        let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
        RawSpec {
            worker_id: s("/worker_id"),
            worker_type: s("/worker_type"),
            status: s("/status"),
            task_id: s("/task_id"),
            session_id: s("/session_id"),
            priority: s("/priority"),
            master: s("/master"),
            pid: v.pointer("/pid").and_then(Value::as_i64),
            token_budget: Some(RawTokens {
                allocated: u("/token_budget/allocated"),
                used: u("/token_budget/used"),
            }),
            heartbeat: Some(RawBeat {
                last_seen: s("/heartbeat/last_seen"),
                health_score: f("/heartbeat/health_score"),
                health: s("/heartbeat/health"),
                message: s("/heartbeat/message"),
                progress: f("/heartbeat/progress"),
            }),
            process: Some(RawProcess {
                execution_mode: s("/process/execution_mode"),
            }),
            exit: Some(RawExit {
                code: v.pointer("/exit/code").and_then(Value::as_i64),
                signal: v.pointer("/exit/signal").and_then(Value::as_i64),
            }),
            created_at: s("/created_at"),
            started_at: s("/started_at"),
            completed_at: s("/completed_at"),
            jobs_processed: u("/jobs_processed"),
        }
    }

    fn into_row(self, dir: StateDir, file_id: &str, now: Timestamp) -> WorkerRow {
        let beat = self.heartbeat.unwrap_or_default();
        let tokens = self.token_budget.unwrap_or_default();
        let score = beat.health_score.unwrap_or(100.0).round().clamp(0.0, 100.0) as u32;
        let last_seen = ts(beat.last_seen.as_deref());
        let created_at = ts(self.created_at.as_deref());
        let started_at = ts(self.started_at.as_deref());
        let completed_at = ts(self.completed_at.as_deref());
        let (used, allocated) = (tokens.used.unwrap_or(0), tokens.allocated.unwrap_or(0));
        let live = dir == StateDir::Active;
        let end = if live { Some(now) } else { completed_at };
        let status = self.status.unwrap_or_else(|| "unknown".into());
        let dead = is_dead(dir, &status);
        let uptime = match (started_at.or(created_at), end) {
            (Some(a), Some(b)) => Some(super::secs_between(a, b)),
            _ => None,
        };
        let not_a_spec = match &self.worker_id {
            None => Some("it names no worker_id".to_string()),
            Some(w) if w != file_id => Some(format!("it names worker {w:?}")),
            Some(_) => None,
        };
        WorkerRow {
            not_a_spec,
            worker_id: self.worker_id.unwrap_or_else(|| file_id.to_string()),
            worker_type: self.worker_type.unwrap_or_else(|| "unknown".into()),
            state_dir: dir,
            // The score decides the band; only "unresponsive" (set once a worker is
            // critical) says more than the score can. A dead worker has no health.
            health: match beat.health {
                _ if dead => status.clone(),
                Some(h) if h == "unresponsive" => h,
                _ => crate::spec::health_band(score).to_string(),
            },
            health_score: (!dead).then_some(score),
            verdict: dead.then(|| verdict(&status, self.exit.as_ref())),
            status,
            heartbeat_age_seconds: last_seen.map(|t| super::secs_between(t, now)),
            last_seen,
            tokens_used: used,
            tokens_allocated: allocated,
            tokens_percent: if allocated == 0 {
                0.0
            } else {
                used as f64 * 100.0 / allocated as f64
            },
            task_id: self.task_id,
            pid: self.pid,
            session_id: self.session_id,
            priority: self.priority,
            master: self.master,
            execution_mode: self.process.and_then(|p| p.execution_mode),
            progress: beat.progress,
            message: beat.message,
            jobs_processed: self.jobs_processed,
            created_at,
            started_at,
            completed_at,
            uptime_seconds: uptime,
        }
    }
}

/// Parses one spec's bytes into a row; `None` when it is not a JSON object.
pub fn row_from_bytes(
    bytes: &[u8],
    dir: StateDir,
    file_id: &str,
    now: Timestamp,
) -> Option<WorkerRow> {
    let raw = match serde_json::from_slice::<RawSpec>(bytes) {
        Ok(r) => r,
        Err(_) => {
            let v: Value = serde_json::from_slice(bytes).ok()?;
            if !v.is_object() {
                return None;
            }
            RawSpec::from_value(&v)
        }
    };
    Some(raw.into_row(dir, file_id, now))
}

/// Reads one spec file for display. `Ok(None)` when the file vanished meanwhile.
pub fn read_row(path: &Path, dir: StateDir, now: Timestamp) -> Result<Option<WorkerRow>> {
    let id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    match store::read_guarded(path) {
        Ok(bytes) => row_from_bytes(&bytes, dir, &id, now)
            .map(Some)
            .ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", path.display()))),
        Err(ReadError::Missing) => Ok(None),
        Err(e) => Err(e.into_error(path)),
    }
}

/// Workers found by a load, and the files that could not be shown (path, why).
#[derive(Debug, Default)]
pub struct Loaded {
    pub rows: Vec<WorkerRow>,
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Below this many files a second thread costs more than it saves.
const PARALLEL_MIN: usize = 512;

/// One spec file to read: its directory's index in the job list, and its name.
struct Job {
    dir: usize,
    name: String,
}

/// Reads specs relative to an open directory descriptor (`openat`), which spares the path
/// walk per file, with the store's guards: `O_NOFOLLOW` (symlinks were already refused by
/// their directory entry type; this closes the race), `O_NONBLOCK` (a FIFO cannot hang the
/// dashboard) and the 1 MiB cap. One buffer is reused for every file of a thread.
struct DirReader {
    fd: rustix::fd::OwnedFd,
    path: PathBuf,
    state: StateDir,
}

fn read_at(r: &DirReader, name: &str, buf: &mut Vec<u8>) -> std::result::Result<bool, String> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&r.fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(Errno::LOOP) => return Err("symlink refused".into()),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    buf.clear();
    let cap = store::MAX_FILE_BYTES as usize + 1;
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let room = buf.capacity() - buf.len();
        let n = match rustix::io::read(&fd, buf.spare_capacity_mut()) {
            Ok((init, _)) => init.len(),
            Err(Errno::INTR) => continue,
            Err(Errno::ISDIR) | Err(Errno::AGAIN) => return Err("not a regular file".into()),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        if n == 0 {
            return Ok(true);
        }
        // SAFETY: `read` initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        if buf.len() >= cap {
            return Err(format!(
                "file too large (limit {} bytes)",
                store::MAX_FILE_BYTES
            ));
        }
        // A short read of a regular file is its end: saves one read(2) per spec.
        if n < room {
            return Ok(true);
        }
    }
}

fn read_jobs(readers: &[DirReader], jobs: &[Job], now: Timestamp) -> Loaded {
    let mut out = Loaded::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    for j in jobs {
        let r = &readers[j.dir];
        let id = j.name.strip_suffix(".json").unwrap_or(&j.name);
        match read_at(r, &j.name, &mut buf) {
            Ok(true) => match row_from_bytes(&buf, r.state, id, now) {
                Some(row) => out.rows.push(row),
                None => out
                    .unreadable
                    .push((r.path.join(&j.name), "not a JSON object".into())),
            },
            Ok(false) => {}
            Err(why) => out.unreadable.push((r.path.join(&j.name), why)),
        }
    }
    out
}

/// Reads every spec in `dirs`, in parallel for large directories. Entries that are not
/// regular files (symlinks, directories) are reported as unreadable without being opened.
pub fn load(home: &Home, dirs: &[StateDir], now: Timestamp) -> Result<Loaded> {
    use rustix::fs::{Mode, OFlags};
    let mut all = Loaded::default();
    let mut readers = Vec::new();
    let mut jobs = Vec::new();
    for &d in dirs {
        let path = home.specs_dir(d);
        let rd = match std::fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot list {}", path.display()), e)),
        };
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e.into()))?;
        for entry in rd {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_file() => jobs.push(Job {
                    dir: readers.len(),
                    name,
                }),
                Ok(t) if t.is_symlink() => all
                    .unreadable
                    .push((path.join(&name), "symlink refused".into())),
                Ok(_) => all
                    .unreadable
                    .push((path.join(&name), "not a regular file".into())),
                Err(_) => {}
            }
        }
        readers.push(DirReader { fd, path, state: d });
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let parts: Vec<Loaded> = if jobs.len() < PARALLEL_MIN || threads < 2 {
        vec![read_jobs(&readers, &jobs, now)]
    } else {
        let per = jobs.len().div_ceil(threads);
        let readers = &readers;
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(per)
                .map(|c| s.spawn(move || read_jobs(readers, c, now)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    for p in parts {
        all.rows.extend(p.rows);
        all.unreadable.extend(p.unreadable);
    }
    Ok(all)
}

/// Orderings of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Least healthy first (lowest score).
    Health,
    /// Highest share of the allocation used first.
    Tokens,
    /// Stalest heartbeat first (never-beaten workers by their age).
    Age,
    /// By worker id.
    Id,
}

/// Which workers to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub statuses: Vec<String>,
    pub types: Vec<String>,
    pub sessions: Vec<String>,
}

impl Filter {
    /// True when the row passes every given criterion.
    pub fn matches(&self, r: &WorkerRow) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && (self.types.is_empty() || self.types.contains(&r.worker_type))
            && (self.sessions.is_empty()
                || r.session_id
                    .as_ref()
                    .is_some_and(|s| self.sessions.iter().any(|x| x == s)))
    }
}

/// The state directories to read when the operator did not say: where the asked-for statuses
/// live, else `active/` (the runbook's dashboards look at active workers).
pub fn default_dirs(statuses: &[String]) -> Vec<StateDir> {
    let mut dirs: Vec<StateDir> = statuses
        .iter()
        .filter_map(|s| crate::spec::Status::parse(s).map(|st| st.home_dir()))
        .collect();
    if dirs.is_empty() {
        dirs.push(StateDir::Active);
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

fn age_key(r: &WorkerRow, now: Timestamp) -> f64 {
    r.heartbeat_age_seconds
        .or_else(|| r.created_at.map(|t| super::secs_between(t, now)))
        .unwrap_or(0.0)
}

/// The ordering of two rows under `key`; ties break by id so output is stable.
pub fn compare(a: &WorkerRow, b: &WorkerRow, key: SortKey, now: Timestamp) -> std::cmp::Ordering {
    let by_id = a.worker_id.cmp(&b.worker_id);
    match key {
        SortKey::Id => by_id,
        // Dead workers (no score) first, then the least healthy.
        SortKey::Health => a.health_score.cmp(&b.health_score).then(by_id),
        SortKey::Tokens => b
            .tokens_percent
            .total_cmp(&a.tokens_percent)
            .then_with(|| b.tokens_used.cmp(&a.tokens_used))
            .then(by_id),
        SortKey::Age => age_key(b, now).total_cmp(&age_key(a, now)).then(by_id),
    }
}

/// Sorts rows in place by `key`.
pub fn sort(rows: &mut [WorkerRow], key: SortKey, now: Timestamp) {
    rows.sort_unstable_by(|a, b| compare(a, b, key, now));
}

/// The HEALTH cell: band and score for a live worker, the verdict for a dead one.
pub fn health_cell(r: &WorkerRow) -> Cell {
    match (&r.verdict, r.health_score) {
        (Some(v), _) => Cell {
            text: v.clone(),
            colour: status_colour(&r.status),
        },
        (None, score) => Cell {
            text: format!(
                "{} {}",
                r.health,
                score.map(|s| s.to_string()).unwrap_or_default()
            ),
            colour: term::health_colour(&r.health),
        },
    }
}

/// Short forms of the worker and task ids of `rows`, for tables (see `crate::lookup`).
pub fn short_ids(rows: &[WorkerRow]) -> std::collections::HashMap<&str, String> {
    crate::lookup::short_ids(
        rows.iter()
            .map(|r| r.worker_id.as_str())
            .chain(rows.iter().filter_map(|r| r.task_id.as_deref())),
    )
}

/// The list table: id, type, status, health, beat age, tokens, task, pid, uptime. Ids are
/// shown in their short form, which every command accepts back.
pub fn table(rows: &[WorkerRow], width: Option<usize>, colour: bool) -> String {
    let header = [
        "ID", "TYPE", "STATUS", "HEALTH", "BEAT", "TOKENS", "TASK", "PID", "UPTIME",
    ];
    let short = short_ids(rows);
    let show = |id: &str| short.get(id).cloned().unwrap_or_else(|| id.to_string());
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            vec![
                Cell::from(show(&r.worker_id)),
                Cell::from(r.worker_type.as_str()),
                Cell {
                    text: r.status.clone(),
                    colour: status_colour(&r.status),
                },
                health_cell(r),
                Cell::from(
                    r.heartbeat_age_seconds
                        .map(|s| format!("{} ago", super::human_duration(s)))
                        .unwrap_or_else(|| "never".into()),
                ),
                Cell::from(format!(
                    "{}/{}",
                    short_count(r.tokens_used),
                    short_count(r.tokens_allocated)
                )),
                Cell::from(r.task_id.as_deref().map(show).unwrap_or_else(|| "-".into())),
                Cell::from(r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())),
                Cell::from(
                    r.uptime_seconds
                        .map(super::human_duration)
                        .unwrap_or_else(|| "-".into()),
                ),
            ]
        })
        .collect();
    // Task, type, then id give way first when the terminal is narrow.
    term::render_table(&header, &cells, width, &[6, 1, 0], colour)
}

/// The colour of a status (red for failures, yellow for transitions, dim when done).
pub fn status_colour(status: &str) -> Option<Colour> {
    match status {
        "failed" | "zombie" => Some(Colour::Red),
        "shutting_down" | "pending" => Some(Colour::Yellow),
        "completed" => Some(Colour::Dim),
        _ => None,
    }
}

/// 1234 → `1.2k`, 2500000 → `2.5M`: token counts that fit a column.
pub fn short_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        time::parse("2026-11-22T10:20:00Z").unwrap()
    }

    #[test]
    fn runbook_made_spec_becomes_a_row() {
        let bytes = br#"{"worker_id":"worker-implementation-1","worker_type":"implementation-worker",
            "status":"pending","task_id":"task-001","priority":"high",
            "token_budget":{"allocated":100000,"used":25000},
            "heartbeat":{"last_seen":null,"health_score":100},"created_at":"2026-11-22T10:15:00Z"}"#;
        let r = row_from_bytes(bytes, StateDir::Active, "x", now()).unwrap();
        assert_eq!(r.worker_id, "worker-implementation-1");
        assert_eq!(r.health, "healthy");
        assert_eq!(r.tokens_percent, 25.0);
        assert_eq!(r.heartbeat_age_seconds, None);
        assert_eq!(r.uptime_seconds, Some(300.0));
    }

    #[test]
    fn odd_types_fall_back_instead_of_hiding_the_worker() {
        let bytes = br#"{"worker_id":"w1","worker_type":"t","status":"running","pid":"4242",
            "heartbeat":{"last_seen":"2026-11-22T10:19:00Z","health_score":40}}"#;
        let r = row_from_bytes(bytes, StateDir::Active, "w1", now()).unwrap();
        assert_eq!(r.pid, None);
        assert_eq!(r.health, "unhealthy");
        assert_eq!(r.heartbeat_age_seconds, Some(60.0));
        assert_eq!((r.health_score, r.verdict.as_deref()), (Some(40), None));
        assert!(row_from_bytes(b"[1]", StateDir::Active, "w1", now()).is_none());
        assert!(row_from_bytes(b"{", StateDir::Active, "w1", now()).is_none());
    }

    #[test]
    fn dead_workers_show_their_verdict_not_a_health_score() {
        let spec = |status: &str, exit: &str| {
            format!(
                r#"{{"worker_id":"w1","worker_type":"t","status":"{status}","exit":{exit},
                "heartbeat":{{"health_score":100,"health":"healthy"}}}}"#
            )
        };
        let row = |dir, status: &str, exit: &str| {
            row_from_bytes(spec(status, exit).as_bytes(), dir, "w1", now()).unwrap()
        };
        let z = row(
            StateDir::Zombie,
            "failed",
            r#"{"code":null,"signal":9,"reason":"x","at":"2026-11-22T10:00:00Z"}"#,
        );
        assert_eq!(z.verdict.as_deref(), Some("failed: SIGKILL"));
        assert_eq!((z.health.as_str(), z.health_score), ("failed", None));
        let c = row(StateDir::Completed, "completed", r#"{"code":0}"#);
        assert_eq!(c.verdict.as_deref(), Some("completed: exit 0"));
        let a = row(StateDir::Archived, "zombie", "null");
        assert_eq!(a.verdict.as_deref(), Some("zombie"));
        let t = table(&[z, c, a], None, false);
        assert!(!t.contains("healthy"), "{t}");
        assert!(
            t.contains("failed: SIGKILL") && t.contains("completed: exit 0"),
            "{t}"
        );
        let live = row(StateDir::Active, "running", "null");
        assert_eq!(health_cell(&live).text, "healthy 100");
    }

    #[test]
    fn tables_show_short_ids_json_keeps_them_whole() {
        let id = "worker-implementation-20261122T101500Z-7f3a9c01d2e4b5a6";
        let b = format!(
            r#"{{"worker_id":"{id}","worker_type":"implementation-worker","status":"running",
            "task_id":"task-20261122T101500Z-aaaabbbbccccdddd"}}"#
        );
        let r = row_from_bytes(b.as_bytes(), StateDir::Active, id, now()).unwrap();
        let t = table(std::slice::from_ref(&r), None, false);
        assert!(t.contains("implementation-7f3a9c01 "), "{t}");
        assert!(t.contains("task-aaaabbbb"), "{t}");
        assert!(!t.contains(id));
        assert_eq!(serde_json::to_value(&r).unwrap()["worker_id"], id);
    }

    #[test]
    fn sorting_and_filters() {
        let mk = |id: &str, score: u32, used: u64| {
            let b = format!(
                r#"{{"worker_id":"{id}","worker_type":"t","status":"running","session_id":"s1",
                "token_budget":{{"allocated":100,"used":{used}}},"heartbeat":{{"health_score":{score}}}}}"#
            );
            row_from_bytes(b.as_bytes(), StateDir::Active, id, now()).unwrap()
        };
        let mut rows = vec![mk("a", 90, 10), mk("b", 40, 90), mk("c", 60, 50)];
        sort(&mut rows, SortKey::Health, now());
        assert_eq!(
            rows.iter()
                .map(|r| r.worker_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
        sort(&mut rows, SortKey::Tokens, now());
        assert_eq!(rows[0].worker_id, "b");
        let f = Filter {
            statuses: vec!["running".into()],
            sessions: vec!["s2".into()],
            ..Filter::default()
        };
        assert!(!f.matches(&rows[0]));
        assert_eq!(
            default_dirs(&["completed".into(), "failed".into()]),
            [StateDir::Completed, StateDir::Zombie]
        );
        assert_eq!(short_count(2_500_000), "2.5M");
    }
}
