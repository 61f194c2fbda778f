//! The filesystem-native task queue (DESIGN.md §8).
//!
//! A task is one JSON file. Pending tasks live in `tasks/pending/<class>/` under the name
//! `<prio>-<enqueued_ns>-<task_id>.json` (prio 0 critical … 3 low, ns zero-padded to 20
//! digits), so a directory listing sorted by name *is* the claim order and every figure the
//! monitor needs about pending work (counts, oldest, head) comes from names alone, without
//! opening a file.
//!
//! **Claim is one `rename(2)`** (`renameat2` with `RENAME_NOREPLACE`) from
//! `pending/<class>/<name>` to `processing/<task_id>.json`. The kernel lets exactly one
//! claimer win; the others get `ENOENT` and try the next name. No lock is taken to decide a
//! claim and no lock file is left behind per task — the two failures of the system this
//! replaces (seed 004: a glob of the whole queue and a `FileLock` per task).
//!
//! Everything that changes a task *after* it was claimed (recording the claim, complete,
//! fail, requeue, lease renewal, the monitor's repairs) holds one of [`LOCK_STRIPES`]
//! striped sidecar locks (`.locks/task-NN.lock`, chosen by a hash of the task id) and
//! re-reads the task from where it lives now before deciding. A fixed number of lock files
//! means nothing accumulates, and unrelated tasks rarely contend.
//!
//! Every move out of `processing/` writes the new content first and then renames, like
//! `spec::save_and_move`: a crash in between leaves the task in `processing/` with its new
//! `state`, and [`maintain`] finishes the move. A task is therefore never in two places and
//! never lost; delivery is at-least-once.

use crate::error::{Error, IoContext, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir, TaskState};
use crate::policy::HeartbeatPolicy;
use crate::schema::{self, Kind};
use crate::spec::{self, Priority, Status};
use crate::store::{self, ReadError};
use crate::time::{self, serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

/// The task format version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Attempts before a failing task is dead-lettered, unless `--max-attempts` says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Number of striped task locks. Fixed, so lock files never accumulate with the queue.
pub const LOCK_STRIPES: u64 = 32;

/// Largest payload or result accepted, so the task file stays under the 1 MiB read limit.
pub const MAX_TASK_BYTES: usize = 900 * 1024;

/// Name of the per-class marker that remembers a reported starvation episode.
const STARVED_MARKER: &str = ".starved";

fn default_version() -> u32 {
    SCHEMA_VERSION
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// One state change of a task, kept in its file for the post-mortem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskTransition {
    #[serde(with = "serde_ts")]
    pub at: Timestamp,
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// A task file. Fields other tools add are preserved on rewrite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    #[serde(default = "default_version")]
    pub schema_version: u32,
    pub task_id: String,
    pub class: String,
    #[serde(default)]
    pub name: Option<String>,
    pub priority: Priority,
    #[serde(default)]
    pub payload: Value,
    #[serde(default = "pending_state")]
    pub state: TaskState,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(with = "serde_ts")]
    pub enqueued_at: Timestamp,
    #[serde(default)]
    pub enqueued_ns: u64,
    #[serde(default)]
    pub claimed_by: Option<String>,
    #[serde(default, with = "serde_ts::option")]
    pub claimed_at: Option<Timestamp>,
    #[serde(default)]
    pub lease_seconds: Option<f64>,
    #[serde(default, with = "serde_ts::option")]
    pub lease_expires_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub stuck_reported_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub failed_at: Option<Timestamp>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub history: Vec<TaskTransition>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn pending_state() -> TaskState {
    TaskState::Pending
}

impl Task {
    /// Loads a task document (serde only: every *write* is validated against the schema,
    /// and the claim path should not pay for validating what a write already validated).
    pub fn from_value(value: Value) -> Result<Task> {
        let t: Task = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("invalid task: {e}")))?;
        crate::id::validate("task", &t.task_id)?;
        crate::id::validate("class", &t.class)?;
        Ok(t)
    }

    /// Serialises and validates against `schemas/task.schema.json`.
    pub fn to_value(&self) -> Result<Value> {
        let v = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialise task: {e}")))?;
        schema::validate(Kind::Task, &v)?;
        Ok(v)
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        store::to_pretty(&self.to_value()?)
    }

    /// The file name this task has while pending: claim order is name order.
    pub fn pending_name(&self) -> String {
        pending_name(self.priority, self.enqueued_ns, &self.task_id)
    }

    fn transition(&mut self, to: TaskState, by: Option<&str>, reason: &str, now: Timestamp) {
        self.history.push(TaskTransition {
            at: now,
            from: Some(self.state.name().to_string()),
            to: to.name().to_string(),
            by: by.map(str::to_string),
            reason: reason.to_string(),
        });
        self.state = to;
    }

    /// Back to the shape of a pending task (claim fields cleared, attempts kept).
    fn reset_claim(&mut self) {
        self.claimed_by = None;
        self.claimed_at = None;
        self.lease_seconds = None;
        self.lease_expires_at = None;
        self.stuck_reported_at = None;
    }

    /// Seconds since the claim, if claimed.
    pub fn processing_seconds(&self, now: Timestamp) -> Option<f64> {
        self.claimed_at.map(|c| secs_between(c, now))
    }
}

fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// `<prio>-<ns:020>-<id>.json`.
pub fn pending_name(priority: Priority, ns: u64, id: &str) -> String {
    format!("{}-{ns:020}-{id}.json", priority.rank())
}

/// The parts of a pending file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingName<'a> {
    pub prio: u8,
    pub ns: u64,
    pub task_id: &'a str,
}

/// Parses `<prio>-<ns:020>-<id>.json`; anything else in a class directory is not a task
/// (a stray file, the `.starved` marker) and is ignored by claimers.
pub fn parse_pending_name(name: &str) -> Option<PendingName<'_>> {
    let stem = name.strip_suffix(".json")?;
    let b = stem.as_bytes();
    if b.len() < 24 || b[1] != b'-' || b[22] != b'-' || !(b'0'..=b'3').contains(&b[0]) {
        return None;
    }
    let digits = &stem[2..22];
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let task_id = &stem[23..];
    crate::id::validate("task", task_id).ok()?;
    Some(PendingName {
        prio: b[0] - b'0',
        ns: digits.parse().ok()?,
        task_id,
    })
}

fn priority_of_rank(rank: u8) -> Priority {
    match rank {
        0 => Priority::Critical,
        1 => Priority::High,
        2 => Priority::Medium,
        _ => Priority::Low,
    }
}

fn now_ns(now: Timestamp) -> u64 {
    now.timestamp_nanos_opt()
        .map(|n| n.max(0) as u64)
        .unwrap_or(0)
}

fn ns_to_time(ns: u64) -> Timestamp {
    chrono::DateTime::from_timestamp_nanos(ns.min(i64::MAX as u64) as i64)
}

fn pending_dir(home: &Home) -> PathBuf {
    home.tasks_dir(TaskState::Pending)
}

fn class_dir(home: &Home, class: &str) -> PathBuf {
    pending_dir(home).join(class)
}

fn state_path(home: &Home, state: TaskState, id: &str) -> PathBuf {
    home.tasks_dir(state).join(format!("{id}.json"))
}

/// The striped lock guarding post-claim changes of task `id` (FNV-1a of the id).
fn task_lock(home: &Home, id: &str) -> Result<store::LockGuard> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    store::lock(&home.named_lock(&format!("task-{:02}", h % LOCK_STRIPES)))
}

/// Writes a task where it lives now (validated, atomic).
fn save(home: &Home, path: &Path, task: &Task) -> Result<()> {
    store::atomic_write(home, path, &task.to_bytes()?)
}

/// Whether the claim record's data is fsynced (default yes). `CORRAL_QUEUE_CLAIM_SYNC=0`
/// skips it: on ext4 (data=ordered, `auto_da_alloc`) a rename over an existing file already
/// orders the data before the rename, and a lost claim record only means the task is
/// requeued; on other filesystems a power loss could then leave an empty task file. The
/// fsync is most of the cost of a claim (see `examples/bench_queue.rs`).
fn claim_sync() -> bool {
    static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SYNC.get_or_init(|| {
        !matches!(
            std::env::var("CORRAL_QUEUE_CLAIM_SYNC").as_deref(),
            Ok("0") | Ok("false") | Ok("no")
        )
    })
}

/// The claim record: stage, fsync the data, rename over. The directory is not fsynced: if a
/// power loss undoes this rename, the unclaimed version is what survives, and the claimant
/// is gone with the power anyway, so [`maintain`] requeues it after the lease. This keeps
/// one of the two fsyncs of [`store::atomic_write`] off the claim path.
fn save_claim(home: &Home, path: &Path, task: &Task) -> Result<()> {
    use std::io::Write;
    let bytes = task.to_bytes()?;
    let tmp = home.tmp_dir().join(format!(
        "claim-{}-{:016x}.tmp",
        std::process::id(),
        crate::id::random_u64()
    ));
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            if claim_sync() {
                f.sync_data()?;
            }
            Ok(())
        })
        .ctx("write", &tmp)
        .and_then(|_| std::fs::rename(&tmp, path).ctx("rename into", path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn read_task(path: &Path) -> std::result::Result<Task, ReadError> {
    let v = store::read_json(path)?;
    Task::from_value(v).map_err(|e| ReadError::Refused(e.to_string()))
}

fn task_event(kind: EventType, task: &Task, message: String) -> Event {
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

/// Quarantines a bad task file found by a scanner and says so in the log; scanning goes on.
fn quarantine_task(home: &Home, path: &Path, why: &str) {
    match events::quarantine(home, path, why) {
        Ok(_) => tracing::warn!("quarantined bad task file {}: {why}", path.display()),
        Err(e) => tracing::error!("cannot quarantine {}: {e}", path.display()),
    }
}

/// Names of the class directories under `pending/`, sorted.
pub fn classes(home: &Home) -> Result<Vec<String>> {
    let dir = pending_dir(home);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.ctx("list", &dir)?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(n) = e.file_name().to_str() {
                if crate::id::validate("class", n).is_ok() {
                    out.push(n.to_string());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Pending task file names of one class, sorted (= claim order). One `read_dir` of one
/// directory; no file is opened.
pub fn pending_names(home: &Home, class: &str) -> Result<Vec<String>> {
    let dir = class_dir(home, class);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for e in rd {
        let e = e.ctx("list", &dir)?;
        if let Ok(n) = e.file_name().into_string() {
            if parse_pending_name(&n).is_some() {
                names.push(n);
            }
        }
    }
    names.sort_unstable();
    Ok(names)
}

// ---------------------------------------------------------------------------------------
// enqueue

/// What to enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    pub class: String,
    pub priority: Priority,
    pub name: Option<String>,
    /// Explicit id (checked for uniqueness across all states, exit 5 on a duplicate);
    /// `None` generates one, unique by construction.
    pub id: Option<String>,
    pub payload: Value,
    pub max_attempts: Option<u32>,
}

impl EnqueueRequest {
    /// A request with defaults: medium priority, no payload.
    pub fn new(class: &str) -> EnqueueRequest {
        EnqueueRequest {
            class: class.to_string(),
            priority: Priority::Medium,
            name: None,
            id: None,
            payload: Value::Null,
            max_attempts: None,
        }
    }
}

/// Writes a new pending task atomically (the file appears whole or not at all) and logs
/// `task_enqueued`.
pub fn enqueue(home: &Home, req: &EnqueueRequest) -> Result<Task> {
    enqueue_with(home, req, true)
}

/// [`enqueue`] with the event optional, for bulk loads that log one summary instead.
pub fn enqueue_with(home: &Home, req: &EnqueueRequest, log_event: bool) -> Result<Task> {
    crate::id::validate("class", &req.class)?;
    if let Some(id) = &req.id {
        crate::id::validate("task", id)?;
    }
    if req.max_attempts == Some(0) {
        return Err(Error::Invalid("--max-attempts must be at least 1".into()));
    }
    let now = time::now();
    let task_id = req
        .id
        .clone()
        .unwrap_or_else(|| crate::id::new_task_id(now));
    let mut task = Task {
        schema_version: SCHEMA_VERSION,
        task_id: task_id.clone(),
        class: req.class.clone(),
        name: req.name.clone(),
        priority: req.priority,
        payload: req.payload.clone(),
        state: TaskState::Pending,
        attempts: 0,
        max_attempts: req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        enqueued_at: now,
        enqueued_ns: now_ns(now),
        claimed_by: None,
        claimed_at: None,
        lease_seconds: None,
        lease_expires_at: None,
        stuck_reported_at: None,
        completed_at: None,
        failed_at: None,
        result: None,
        error: None,
        history: Vec::new(),
        extra: Map::new(),
    };
    task.history.push(TaskTransition {
        at: now,
        from: None,
        to: "pending".into(),
        by: None,
        reason: "enqueued".into(),
    });
    let bytes = task.to_bytes()?;
    if bytes.len() > MAX_TASK_BYTES {
        return Err(Error::Invalid(format!(
            "task too large: {} bytes (limit {MAX_TASK_BYTES})",
            bytes.len()
        )));
    }
    let dir = class_dir(home, &req.class);
    let target = dir.join(task.pending_name());
    let write = || -> Result<()> {
        match store::atomic_write(home, &target, &bytes) {
            Err(e) if e.is_not_found_io() => {
                std::fs::create_dir_all(&dir).ctx("create", &dir)?;
                store::fsync_dir(&pending_dir(home))?;
                store::atomic_write(home, &target, &bytes)
            }
            other => other,
        }
    };
    if req.id.is_some() {
        // Explicit ids can collide. The stripe lock orders us against every move out of
        // processing/, and processing/ is checked again after pending/, so a task moving
        // pending → processing during the check is still seen.
        let _g = task_lock(home, &task_id)?;
        if let Some(state) = locate_state(home, &task_id)? {
            return Err(Error::Conflict(format!(
                "task {task_id} already exists (in {}/)",
                state.name()
            )));
        }
        write()?;
    } else {
        write()?;
    }
    tracing::debug!(
        "enqueued {task_id} in {} ({})",
        req.class,
        req.priority.as_str()
    );
    if log_event {
        events::emit(
            home,
            task_event(
                EventType::TaskEnqueued,
                &task,
                format!("{task_id} enqueued in {}", task.class),
            ),
        );
    }
    Ok(task)
}

// ---------------------------------------------------------------------------------------
// finding tasks

/// A task read from where it lives now.
#[derive(Debug, Clone)]
pub struct Found {
    pub state: TaskState,
    pub path: PathBuf,
    pub task: Task,
}

fn find_pending_path(home: &Home, id: &str) -> Result<Option<PathBuf>> {
    let suffix = format!("-{id}.json");
    for class in classes(home)? {
        let dir = class_dir(home, &class);
        for n in pending_names(home, &class)? {
            if n.ends_with(&suffix) && parse_pending_name(&n).map(|p| p.task_id) == Some(id) {
                return Ok(Some(dir.join(n)));
            }
        }
    }
    Ok(None)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Which state holds `id` (pending needs a scan of the pending names; the others are one
/// `stat`). Processing is checked on both sides of the pending scan, so a concurrent claim
/// cannot hide a task.
fn locate_state(home: &Home, id: &str) -> Result<Option<TaskState>> {
    for st in [
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
    ] {
        if exists(&state_path(home, st, id)) {
            return Ok(Some(st));
        }
    }
    if find_pending_path(home, id)?.is_some() {
        return Ok(Some(TaskState::Pending));
    }
    if exists(&state_path(home, TaskState::Processing, id)) {
        return Ok(Some(TaskState::Processing));
    }
    Ok(None)
}

/// Finds and reads a task wherever it lives; exit 3 when there is no such task.
pub fn find(home: &Home, id: &str) -> Result<Found> {
    crate::id::validate("task", id)?;
    for _ in 0..3 {
        let mut path = None;
        for st in [
            TaskState::Processing,
            TaskState::Completed,
            TaskState::Failed,
        ] {
            let p = state_path(home, st, id);
            if exists(&p) {
                path = Some((st, p));
                break;
            }
        }
        if path.is_none() {
            path = find_pending_path(home, id)?.map(|p| (TaskState::Pending, p));
        }
        let Some((state, path)) = path else {
            if exists(&state_path(home, TaskState::Processing, id)) {
                continue;
            }
            return Err(Error::NotFound(format!("no such task: {id}")));
        };
        match read_task(&path) {
            Ok(task) => return Ok(Found { state, path, task }),
            // It moved between the lookup and the read: look again.
            Err(ReadError::Missing) => continue,
            Err(e) => return Err(e.into_error(&path)),
        }
    }
    Err(Error::Conflict(format!(
        "task {id} keeps moving; try again"
    )))
}

// ---------------------------------------------------------------------------------------
// claim

/// What woke a waiting claimer.
#[derive(Debug)]
pub enum Wake {
    /// A filesystem event under `pending/`.
    Fs(notify::Result<notify::Event>),
    /// Someone (a signal handler thread) asked the wait to end.
    Interrupt,
}

struct Watch {
    watcher: notify::RecommendedWatcher,
    rx: Receiver<Wake>,
    tx: Sender<Wake>,
    watched: HashSet<PathBuf>,
}

#[derive(Debug, Clone)]
struct Candidate {
    class: usize,
    name: String,
}

#[derive(Debug)]
struct Group {
    /// Indices into `Claimer::classes`, merged by name order inside the group.
    classes: Vec<usize>,
    cache: VecDeque<Candidate>,
    dirty: bool,
}

/// Outcome of one claim attempt, for the log and the bench.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClaimStats {
    pub listings: u64,
    pub lost_races: u64,
}

/// Claims tasks for one claimant, keeping what it learnt between claims.
///
/// Classes are tried in preference order (one group per `--class`); with no class given,
/// all classes form one group ordered by priority then age across classes. Each group keeps
/// the sorted names from its last listing and walks them: a name someone else took costs
/// one failed `rename` (`ENOENT`), not a new listing. With a watch (see [`Claimer::watch`])
/// a create in a class directory marks its group for a fresh listing, so a newly enqueued
/// critical task is seen at the next claim; without one, every claim lists afresh.
pub struct Claimer {
    home: Home,
    worker: String,
    explicit: bool,
    classes: Vec<String>,
    groups: Vec<Group>,
    lease_seconds: f64,
    watch: Option<Watch>,
    classes_dirty: bool,
    interrupted: bool,
    /// Totals since creation (for the bench and the log).
    pub stats: ClaimStats,
}

fn io_errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// `rename` that refuses to replace an existing target: a duplicate id in processing/ is
/// never silently overwritten. Falls back to plain `rename` where the filesystem lacks it.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if exists(to) {
                Err(std::io::Error::from_raw_os_error(libc::EEXIST))
            } else {
                std::fs::rename(from, to)
            }
        }
        Err(e) => Err(e.into()),
    }
}

enum Take {
    Won(Box<Task>),
    Lost,
    Skip,
}

impl Claimer {
    /// A claimer for `worker` over `classes` (preference order; empty = all classes).
    pub fn new(
        home: &Home,
        worker: &str,
        classes: &[String],
        lease_seconds: f64,
    ) -> Result<Claimer> {
        crate::id::validate("worker", worker)?;
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        for c in classes {
            crate::id::validate("class", c)?;
            if seen.insert(c.clone()) {
                list.push(c.clone());
            }
        }
        if lease_seconds.is_nan() || lease_seconds <= 0.0 {
            return Err(Error::Invalid("--lease must be positive".into()));
        }
        let explicit = !list.is_empty();
        let groups = if explicit {
            (0..list.len())
                .map(|i| Group {
                    classes: vec![i],
                    cache: VecDeque::new(),
                    dirty: true,
                })
                .collect()
        } else {
            vec![Group {
                classes: Vec::new(),
                cache: VecDeque::new(),
                dirty: true,
            }]
        };
        Ok(Claimer {
            home: home.clone(),
            worker: worker.to_string(),
            explicit,
            classes: list,
            groups,
            lease_seconds,
            watch: None,
            classes_dirty: true,
            interrupted: false,
            stats: ClaimStats::default(),
        })
    }

    /// The claimant's name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Starts an inotify watch on `pending/` and the class directories. Call it *before*
    /// the first claim, so no enqueue between a scan and a wait can be missed.
    pub fn watch(&mut self) -> Result<Sender<Wake>> {
        use notify::Watcher;
        if let Some(w) = &self.watch {
            return Ok(w.tx.clone());
        }
        let (tx, rx) = mpsc::channel();
        let fs_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res| {
            let _ = fs_tx.send(Wake::Fs(res));
        })
        .map_err(|e| Error::Internal(format!("cannot start inotify watch: {e}")))?;
        let mut w = Watch {
            watcher,
            rx,
            tx: tx.clone(),
            watched: HashSet::new(),
        };
        let root = pending_dir(&self.home);
        std::fs::create_dir_all(&root).ctx("create", &root)?;
        w.watcher
            .watch(&root, notify::RecursiveMode::NonRecursive)
            .map_err(|e| Error::Internal(format!("cannot watch {}: {e}", root.display())))?;
        w.watched.insert(root);
        self.watch = Some(w);
        self.classes_dirty = true;
        for g in &mut self.groups {
            g.dirty = true;
        }
        self.add_class_watches()?;
        Ok(tx)
    }

    fn add_class_watches(&mut self) -> Result<()> {
        use notify::Watcher;
        let Some(w) = &mut self.watch else {
            return Ok(());
        };
        for c in &self.classes {
            let d = class_dir(&self.home, c);
            if w.watched.contains(&d) || !d.is_dir() {
                continue;
            }
            match w.watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    w.watched.insert(d);
                }
                // Removed between the check and the watch: the root watch sees it return.
                Err(e) => tracing::debug!("cannot watch {}: {e}", d.display()),
            }
        }
        Ok(())
    }

    /// Applies queued watch events: a create or move-in marks the class's group dirty, a new
    /// class directory is watched, an interrupt is remembered until a wait sees it. Returns
    /// true when something may have arrived. Other events (our own `read_dir` opening a
    /// watched directory, tasks leaving) are ignored, so they cannot spin a waiting claimer.
    fn drain(&mut self, first: Option<Wake>) -> bool {
        let mut arrived = false;
        let mut wakes: Vec<Wake> = first.into_iter().collect();
        if let Some(w) = &self.watch {
            while let Ok(x) = w.rx.try_recv() {
                wakes.push(x);
            }
        }
        let root = pending_dir(&self.home);
        for wake in wakes {
            match wake {
                Wake::Interrupt => self.interrupted = true,
                Wake::Fs(Err(e)) => {
                    tracing::debug!("watch error ({e}); relisting");
                    self.mark_all_dirty();
                    arrived = true;
                }
                Wake::Fs(Ok(ev)) => {
                    use notify::event::{EventKind, ModifyKind, RenameMode};
                    if ev.need_rescan() {
                        self.mark_all_dirty();
                        arrived = true;
                        continue;
                    }
                    let arrives = matches!(
                        ev.kind,
                        EventKind::Create(_)
                            | EventKind::Modify(ModifyKind::Name(
                                RenameMode::To | RenameMode::Both | RenameMode::Any
                            ))
                            | EventKind::Any
                            | EventKind::Other
                    );
                    if !arrives {
                        continue;
                    }
                    arrived = true;
                    for p in &ev.paths {
                        let parent = p.parent().map(Path::to_path_buf);
                        if parent.as_deref() == Some(root.as_path()) {
                            // A class directory appeared (or came back).
                            self.classes_dirty = true;
                            self.mark_class_dirty(p.file_name().and_then(|n| n.to_str()));
                        } else if let Some(par) = parent {
                            let class = par.file_name().and_then(|n| n.to_str());
                            self.mark_class_dirty(class);
                        }
                    }
                }
            }
        }
        arrived
    }

    fn mark_all_dirty(&mut self) {
        self.classes_dirty = true;
        for g in &mut self.groups {
            g.dirty = true;
        }
    }

    fn mark_class_dirty(&mut self, class: Option<&str>) {
        let Some(class) = class else { return };
        if !self.explicit {
            self.groups[0].dirty = true;
            return;
        }
        if let Some(i) = self.classes.iter().position(|c| c == class) {
            for g in &mut self.groups {
                if g.classes.contains(&i) {
                    g.dirty = true;
                }
            }
        }
    }

    fn refresh_classes(&mut self) -> Result<()> {
        if self.explicit {
            self.classes_dirty = false;
            return self.add_class_watches();
        }
        let found = classes(&self.home)?;
        for c in found {
            if !self.classes.contains(&c) {
                self.classes.push(c);
            }
        }
        self.groups[0].classes = (0..self.classes.len()).collect();
        self.groups[0].dirty = true;
        self.classes_dirty = false;
        self.add_class_watches()
    }

    fn list_group(&mut self, gi: usize) -> Result<()> {
        let mut all: Vec<Candidate> = Vec::new();
        let class_ids = self.groups[gi].classes.clone();
        for ci in class_ids {
            let names = pending_names(&self.home, &self.classes[ci])?;
            tracing::debug!(
                "claim: {} sees {}: {} pending{}",
                self.worker,
                self.classes[ci],
                names.len(),
                names
                    .first()
                    .map(|n| format!(", next {}", n.trim_end_matches(".json")))
                    .unwrap_or_default()
            );
            all.extend(names.into_iter().map(|name| Candidate { class: ci, name }));
        }
        if self.groups[gi].classes.len() > 1 {
            all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        self.stats.listings += 1;
        let g = &mut self.groups[gi];
        g.cache = all.into();
        g.dirty = false;
        Ok(())
    }

    fn take(&mut self, c: &Candidate) -> Result<Take> {
        let Some(parsed) = parse_pending_name(&c.name) else {
            return Ok(Take::Skip);
        };
        let id = parsed.task_id.to_string();
        let class = &self.classes[c.class];
        let from = class_dir(&self.home, class).join(&c.name);
        let to = state_path(&self.home, TaskState::Processing, &id);
        tracing::trace!("attempting claim: {id}");
        match rename_noreplace(&from, &to) {
            Ok(()) => {}
            Err(e) if io_errno(&e) == Some(libc::ENOENT) => {
                tracing::debug!("lost race: {id} in {class} (claimed by another worker)");
                self.stats.lost_races += 1;
                return Ok(Take::Lost);
            }
            Err(e) if io_errno(&e) == Some(libc::EEXIST) => {
                tracing::warn!(
                    "task {id} is already in processing/; leaving {} alone (run `corral doctor`)",
                    from.display()
                );
                return Ok(Take::Skip);
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "cannot claim {} (rename to {})",
                        from.display(),
                        to.display()
                    ),
                    e,
                ))
            }
        }
        let _g = task_lock(&self.home, &id)?;
        let mut task = match read_task(&to) {
            Ok(t) => t,
            Err(ReadError::Missing) => return Ok(Take::Lost),
            Err(ReadError::Refused(why)) => {
                quarantine_task(&self.home, &to, &why);
                return Ok(Take::Skip);
            }
            Err(ReadError::Io(e)) => return Err(e),
        };
        let now = time::now();
        task.reset_claim();
        task.transition(TaskState::Processing, Some(&self.worker), "claimed", now);
        task.attempts = task.attempts.saturating_add(1);
        task.claimed_by = Some(self.worker.clone());
        task.claimed_at = Some(now);
        task.lease_seconds = Some(self.lease_seconds);
        task.lease_expires_at =
            Some(now + chrono::Duration::milliseconds((self.lease_seconds * 1000.0) as i64));
        save_claim(&self.home, &to, &task)?;
        Ok(Take::Won(Box::new(task)))
    }

    /// One claim attempt over all groups, in preference order. `Ok(None)` when there is
    /// nothing to claim right now.
    pub fn try_claim(&mut self) -> Result<Option<Task>> {
        self.drain(None);
        if self.watch.is_none() {
            self.mark_all_dirty();
        }
        if self.classes_dirty {
            self.refresh_classes()?;
        }
        let mut lost = 0u64;
        for gi in 0..self.groups.len() {
            let mut listed = false;
            loop {
                if self.groups[gi].dirty || self.groups[gi].cache.is_empty() {
                    if listed {
                        break;
                    }
                    self.list_group(gi)?;
                    listed = true;
                }
                let Some(c) = self.groups[gi].cache.pop_front() else {
                    break;
                };
                match self.take(&c)? {
                    Take::Won(task) => {
                        tracing::debug!(
                            "claimed {} task {} ({}) for {} after {lost} lost races",
                            task.class,
                            task.task_id,
                            task.priority.as_str(),
                            self.worker
                        );
                        events::emit(
                            &self.home,
                            task_event(
                                EventType::TaskClaimed,
                                &task,
                                format!("{} claimed {}", self.worker, task.task_id),
                            )
                            .with("lost_races", lost),
                        );
                        return Ok(Some(*task));
                    }
                    Take::Lost => lost += 1,
                    Take::Skip => {}
                }
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.log_nothing(lost);
        }
        Ok(None)
    }

    fn log_nothing(&self, lost: u64) {
        let preferred = if self.explicit {
            format!("[{}]", self.classes.join(", "))
        } else {
            "all".to_string()
        };
        if lost > 0 {
            tracing::debug!(
                "claim attempt by {}: {lost} tasks seen in {preferred}, all claimed by others",
                self.worker
            );
            return;
        }
        let summary: Vec<String> = classes(&self.home)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                let n = pending_names(&self.home, &c).map(|v| v.len()).unwrap_or(0);
                (n > 0).then(|| format!("{c}:{n}"))
            })
            .collect();
        if summary.is_empty() {
            tracing::debug!("claim by {}: queue empty", self.worker);
        } else {
            tracing::debug!(
                "claim by {}: no suitable tasks - queue: [{}], preferred: {preferred}",
                self.worker,
                summary.join(", ")
            );
        }
    }

    /// Claims, sleeping on inotify until a task arrives, `deadline` passes (`Ok(None)`), or
    /// a [`Wake::Interrupt`] is sent through the sender [`Claimer::watch`] returned.
    pub fn claim_wait(&mut self, deadline: Option<Instant>) -> Result<Option<Task>> {
        self.watch()?;
        loop {
            if let Some(t) = self.try_claim()? {
                return Ok(Some(t));
            }
            // Sleep until something arrives: other events do not cost a listing.
            loop {
                if std::mem::take(&mut self.interrupted) {
                    return Ok(None);
                }
                let Some(wake) = self.next_wake(deadline)? else {
                    return Ok(None);
                };
                if self.drain(Some(wake)) {
                    break;
                }
            }
            if std::mem::take(&mut self.interrupted) {
                return Ok(None);
            }
        }
    }

    /// The next watch event, or `None` once `deadline` passes.
    fn next_wake(&self, deadline: Option<Instant>) -> Result<Option<Wake>> {
        let Some(w) = &self.watch else {
            return Ok(None);
        };
        let ended = || Error::Internal("inotify watch ended".into());
        match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                match w.rx.recv_timeout(left) {
                    Ok(x) => Ok(Some(x)),
                    Err(RecvTimeoutError::Timeout) => Ok(None),
                    Err(RecvTimeoutError::Disconnected) => Err(ended()),
                }
            }
            None => w.rx.recv().map(Some).map_err(|_| ended()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// complete, fail, requeue, lease

/// Who is asking to change a claimed task.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The caller's worker name (`--worker`, `$CORRAL_WORKER_ID`).
    pub worker: Option<String>,
    /// Act even when the caller is not the claimant.
    pub force: bool,
}

fn check_claimant(task: &Task, caller: &Caller, verb: &str) -> Result<()> {
    if caller.force {
        return Ok(());
    }
    let claimant = task.claimed_by.as_deref().unwrap_or("nobody");
    match caller.worker.as_deref() {
        Some(w) if Some(w) == task.claimed_by.as_deref() => Ok(()),
        Some(w) => Err(Error::Conflict(format!(
            "task {} is claimed by {claimant}, not {w}: only the claimant may {verb} it (--force overrides)",
            task.task_id
        ))),
        None => Err(Error::Conflict(format!(
            "task {} is claimed by {claimant}: say who you are with --worker (or CORRAL_WORKER_ID), or pass --force",
            task.task_id
        ))),
    }
}

/// Loads a task that must be in processing/, under its stripe lock (held by the caller).
fn load_processing(home: &Home, id: &str, verb: &str) -> Result<(PathBuf, Task)> {
    crate::id::validate("task", id)?;
    let path = state_path(home, TaskState::Processing, id);
    match read_task(&path) {
        Ok(t) => Ok((path, t)),
        Err(ReadError::Missing) => match locate_state(home, id)? {
            Some(st) => Err(Error::Conflict(format!(
                "cannot {verb} task {id}: it is {} (only a processing task can be {verb}d)",
                st.name()
            ))),
            None => Err(Error::NotFound(format!("no such task: {id}"))),
        },
        Err(e) => Err(e.into_error(&path)),
    }
}

/// Writes `task` in processing/ and then renames it to its place for `task.state`.
fn move_out(home: &Home, from: &Path, task: &Task) -> Result<PathBuf> {
    save(home, from, task)?;
    let dest = match task.state {
        TaskState::Pending => {
            let dir = class_dir(home, &task.class);
            std::fs::create_dir_all(&dir).ctx("create", &dir)?;
            dir.join(task.pending_name())
        }
        st => state_path(home, st, &task.task_id),
    };
    store::move_file(from, &dest)?;
    Ok(dest)
}

/// Marks a processing task completed and moves it to `completed/`.
pub fn complete(home: &Home, id: &str, caller: &Caller, result: Option<Value>) -> Result<Task> {
    let _g = task_lock(home, id)?;
    let (path, mut task) = load_processing(home, id, "complete")?;
    check_claimant(&task, caller, "complete")?;
    if let Some(r) = &result {
        let n = serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0);
        if n > MAX_TASK_BYTES {
            return Err(Error::Invalid(format!(
                "result too large: {n} bytes (limit {MAX_TASK_BYTES})"
            )));
        }
    }
    let now = time::now();
    let by = caller.worker.clone().or(task.claimed_by.clone());
    task.transition(TaskState::Completed, by.as_deref(), "completed", now);
    task.completed_at = Some(now);
    task.result = result;
    move_out(home, &path, &task)?;
    let elapsed = task.processing_seconds(now).unwrap_or(0.0);
    events::emit(
        home,
        task_event(
            EventType::TaskCompleted,
            &task,
            format!("{id} completed after {elapsed:.1}s"),
        )
        .with("elapsed_seconds", elapsed),
    );
    Ok(task)
}

/// Where a failure sent the task.
#[derive(Debug, Clone)]
pub struct Failed {
    pub task: Task,
    /// True when it went to `failed/` (dead-lettered), false when back to pending.
    pub dead_lettered: bool,
}

/// Records a failure: back to pending for another attempt, or to `failed/` once
/// `attempts` reached `max_attempts` or `no_retry` is set (`task_dead_lettered`).
pub fn fail(
    home: &Home,
    id: &str,
    caller: &Caller,
    error: Option<String>,
    no_retry: bool,
) -> Result<Failed> {
    let _g = task_lock(home, id)?;
    let (path, mut task) = load_processing(home, id, "fail")?;
    check_claimant(&task, caller, "fail")?;
    let now = time::now();
    let by = caller.worker.clone().or(task.claimed_by.clone());
    let claimant = task.claimed_by.clone();
    task.error = error.clone();
    task.failed_at = Some(now);
    let dead = no_retry || task.attempts >= task.max_attempts;
    let why = error.as_deref().unwrap_or("failed");
    let mut evs = vec![task_event(
        EventType::TaskFailed,
        &task,
        format!(
            "{id} failed (attempt {}/{}): {why}",
            task.attempts, task.max_attempts
        ),
    )
    .with("error", why)];
    if dead {
        task.transition(TaskState::Failed, by.as_deref(), why, now);
        move_out(home, &path, &task)?;
        let reason = if no_retry {
            "--no-retry".to_string()
        } else {
            format!("{} of {} attempts used", task.attempts, task.max_attempts)
        };
        evs.push(
            task_event(
                EventType::TaskDeadLettered,
                &task,
                format!("{id} dead-lettered: {reason}"),
            )
            .with("reason", reason)
            .with("error", why),
        );
    } else {
        task.transition(
            TaskState::Pending,
            by.as_deref(),
            &format!("retry: {why}"),
            now,
        );
        task.reset_claim();
        move_out(home, &path, &task)?;
    }
    for ev in &mut evs {
        ev.worker_id = claimant.clone();
    }
    events::emit_many(home, &evs);
    Ok(Failed {
        task,
        dead_lettered: dead,
    })
}

/// Puts a processing or failed task back in pending (an operator's decision, or the
/// monitor's when the claimant is gone). A dead-lettered task gets a fresh set of attempts.
///
/// With `caller`, only the claimant (or `force`) may requeue, as for complete and fail: the
/// `work` loop returns its task this way on SIGTERM without touching a task the monitor has
/// already given to someone else.
pub fn requeue(home: &Home, id: &str, caller: Option<&Caller>, reason: &str) -> Result<Task> {
    crate::id::validate("task", id)?;
    let _g = task_lock(home, id)?;
    let now = time::now();
    let failed_path = state_path(home, TaskState::Failed, id);
    let (path, mut task) = match load_processing(home, id, "requeue") {
        Ok(x) => x,
        Err(Error::Conflict(_)) if exists(&failed_path) && caller.is_none() => {
            let t = read_task(&failed_path).map_err(|e| e.into_error(&failed_path))?;
            (failed_path, t)
        }
        Err(e) => return Err(e),
    };
    if let Some(c) = caller {
        check_claimant(&task, c, "requeue")?;
    }
    let from_state = task.state;
    let claimant = task.claimed_by.clone();
    if task.state == TaskState::Failed {
        task.attempts = 0;
    }
    task.transition(TaskState::Pending, None, reason, now);
    task.reset_claim();
    move_out(home, &path, &task)?;
    let mut ev = task_event(
        EventType::TaskRequeued,
        &task,
        format!("{id} requeued: {reason}"),
    )
    .with("reason", reason)
    .with("from", from_state.name());
    ev.worker_id = claimant.clone();
    if let Some(c) = claimant {
        ev = ev.with("claimed_by", c);
    }
    events::emit(home, ev);
    Ok(task)
}

/// Extends the lease of a claim (the `work` loop does this for claimants that are not
/// workers, whose liveness is the lease).
pub fn renew_lease(home: &Home, id: &str, worker: &str, lease_seconds: f64) -> Result<Task> {
    let _g = task_lock(home, id)?;
    let (path, mut task) = load_processing(home, id, "renew")?;
    check_claimant(
        &task,
        &Caller {
            worker: Some(worker.to_string()),
            force: false,
        },
        "renew",
    )?;
    let now = time::now();
    task.lease_seconds = Some(lease_seconds);
    task.lease_expires_at =
        Some(now + chrono::Duration::milliseconds((lease_seconds * 1000.0) as i64));
    save(home, &path, &task)?;
    Ok(task)
}

// ---------------------------------------------------------------------------------------
// listing and stats

/// Reads the tasks in one state (optionally one class), skipping files that vanish or are
/// unreadable (reported at warn).
pub fn list(home: &Home, state: TaskState, class: Option<&str>) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    let read = |p: PathBuf, out: &mut Vec<Task>| match read_task(&p) {
        Ok(t) => {
            if class.is_none_or(|c| c == t.class) {
                out.push(t);
            }
        }
        Err(ReadError::Missing) => {}
        Err(ReadError::Refused(why)) => tracing::warn!("skipping {}: {why}", p.display()),
        Err(ReadError::Io(e)) => tracing::warn!("skipping {}: {e}", p.display()),
    };
    if state == TaskState::Pending {
        let cs = match class {
            Some(c) => vec![c.to_string()],
            None => classes(home)?,
        };
        let mut names: Vec<(String, String)> = Vec::new();
        for c in cs {
            for n in pending_names(home, &c)? {
                names.push((n, c.clone()));
            }
        }
        names.sort();
        for (n, c) in names {
            read(class_dir(home, &c).join(n), &mut out);
        }
    } else {
        let dir = home.tasks_dir(state);
        for n in store::list_json(&dir)? {
            read(dir.join(n), &mut out);
        }
        if state == TaskState::Processing {
            out.sort_by_key(|t| t.claimed_at);
        }
    }
    Ok(out)
}

/// Queue statistics (`task-queue stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// state → class → count.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// state → count.
    pub totals: BTreeMap<String, u64>,
    /// Age of the oldest pending task (since it was enqueued), seconds.
    pub oldest_pending_seconds: Option<f64>,
    /// class → age of its oldest pending task, seconds.
    pub oldest_pending_by_class: BTreeMap<String, f64>,
    /// claimant → number of tasks it is processing.
    pub processing_by_worker: BTreeMap<String, u64>,
    /// Tasks processing longer than `stuck_task_seconds`.
    pub stuck: u64,
    pub stuck_task_seconds: f64,
}

/// Counts by state and class, oldest pending age, processing per worker, stuck count.
/// Pending figures come from names only; the other states read their files.
pub fn stats(home: &Home, policy: &HeartbeatPolicy, now: Timestamp) -> Result<Stats> {
    let mut s = Stats {
        stuck_task_seconds: policy.stuck_task_seconds,
        ..Stats::default()
    };
    for st in TaskState::ALL {
        s.counts.insert(st.name().into(), BTreeMap::new());
        s.totals.insert(st.name().into(), 0);
    }
    for c in classes(home)? {
        let names = pending_names(home, &c)?;
        if names.is_empty() {
            continue;
        }
        let oldest = names
            .iter()
            .filter_map(|n| parse_pending_name(n).map(|p| p.ns))
            .min()
            .unwrap_or(0);
        let age = secs_between(ns_to_time(oldest), now).max(0.0);
        s.oldest_pending_by_class.insert(c.clone(), age);
        s.oldest_pending_seconds = Some(s.oldest_pending_seconds.map_or(age, |a| a.max(age)));
        *s.totals.entry("pending".into()).or_default() += names.len() as u64;
        s.counts
            .entry("pending".into())
            .or_default()
            .insert(c, names.len() as u64);
    }
    for st in [
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
    ] {
        for t in list(home, st, None)? {
            *s.totals.entry(st.name().into()).or_default() += 1;
            *s.counts
                .entry(st.name().into())
                .or_default()
                .entry(t.class.clone())
                .or_default() += 1;
            if st == TaskState::Processing {
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
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// the monitor's pass

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
    /// Processing too long: warn once.
    Stuck { elapsed: f64 },
    /// A crash left the task in processing/ with a later state written: finish the move.
    FinishMove,
}

/// The monitor's decision for one processing task, as a pure function of the task, its
/// claimant's standing, the file's age (for unrecorded claims) and `now`.
pub fn decide(
    task: &Task,
    claimant: &Claimant,
    file_age_seconds: f64,
    policy: &HeartbeatPolicy,
    now: Timestamp,
) -> Decision {
    if task.state != TaskState::Processing {
        // A claim whose record was never written still carries state "pending" from the
        // pending file: that is the unrecorded claim below, not an unfinished move.
        if !(task.state == TaskState::Pending && task.claimed_by.is_none()) {
            return Decision::FinishMove;
        }
    }
    let last_attempt = task.attempts >= task.max_attempts;
    let requeue_or_dead = |why: String| {
        if last_attempt {
            Decision::DeadLetter(format!("{why}, on its last attempt"))
        } else {
            Decision::Requeue(why)
        }
    };
    match claimant {
        Claimant::Gone { dir } => {
            return requeue_or_dead(format!(
                "claimant {} is no longer live (spec in {}/)",
                task.claimed_by.as_deref().unwrap_or("?"),
                dir.name()
            ))
        }
        Claimant::Unrecorded => {
            if file_age_seconds > policy.stuck_task_seconds {
                return Decision::Requeue(format!(
                    "claimed {file_age_seconds:.0}s ago but the claim was never recorded"
                ));
            }
            return Decision::Keep;
        }
        Claimant::NotAWorker => {
            let expired = match task.lease_expires_at {
                Some(exp) => now >= exp,
                None => task
                    .processing_seconds(now)
                    .is_some_and(|e| e > policy.stuck_task_seconds),
            };
            if expired {
                return requeue_or_dead(format!(
                    "lease of {} ran out",
                    task.claimed_by.as_deref().unwrap_or("?")
                ));
            }
        }
        Claimant::Live => {}
    }
    match task.processing_seconds(now) {
        Some(elapsed)
            if elapsed > policy.stuck_task_seconds && task.stuck_reported_at.is_none() =>
        {
            Decision::Stuck { elapsed }
        }
        _ => Decision::Keep,
    }
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

/// What the monitor needs about one class of pending work, from names only.
#[derive(Debug, Clone)]
struct ClassQueue {
    class: String,
    count: usize,
    head: Option<String>,
}

fn file_age(path: &Path, now: Timestamp) -> Option<f64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    // ctime: a rename into the directory updates it, so this is "since it got here".
    let t = chrono::DateTime::from_timestamp(m.ctime(), m.ctime_nsec() as u32)?;
    Some(secs_between(t, now).max(0.0))
}

/// Applies one decision under the task's lock, re-reading and re-deciding first.
fn apply(
    home: &Home,
    policy: &HeartbeatPolicy,
    id: &str,
    now: Timestamp,
    out: &mut Maintenance,
) -> Result<()> {
    let _g = task_lock(home, id)?;
    let path = state_path(home, TaskState::Processing, id);
    let mut task = match read_task(&path) {
        Ok(t) => t,
        Err(ReadError::Missing) => return Ok(()),
        Err(ReadError::Refused(why)) => {
            quarantine_task(home, &path, &why);
            return Ok(());
        }
        Err(ReadError::Io(e)) => return Err(e),
    };
    let claimant = claimant_state(home, task.claimed_by.as_deref());
    let age = file_age(&path, now).unwrap_or(0.0);
    let decision = decide(&task, &claimant, age, policy, now);
    let claimed_by = task.claimed_by.clone();
    match decision {
        Decision::Keep => {}
        Decision::FinishMove => {
            tracing::info!(
                "finishing the interrupted move of {id} to {}",
                task.state.name()
            );
            move_out(home, &path, &task)?;
        }
        Decision::Requeue(why) => {
            tracing::warn!("requeueing {id}: {why}");
            let from = task.claimed_by.clone();
            task.transition(TaskState::Pending, None, &why, now);
            task.reset_claim();
            move_out(home, &path, &task)?;
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
            events::emit(home, ev);
            out.requeued += 1;
        }
        Decision::DeadLetter(why) => {
            tracing::warn!("dead-lettering {id}: {why}");
            task.error = Some(why.clone());
            task.failed_at = Some(now);
            task.transition(TaskState::Failed, None, &why, now);
            move_out(home, &path, &task)?;
            events::emit(
                home,
                task_event(
                    EventType::TaskDeadLettered,
                    &task,
                    format!("{id} dead-lettered: {why}"),
                )
                .with("reason", why),
            );
        }
        Decision::Stuck { elapsed } => {
            let who = claimed_by.clone().unwrap_or_else(|| "?".into());
            tracing::warn!("stuck task: {id} processing for {elapsed:.0}s by {who}");
            task.stuck_reported_at = Some(now);
            save(home, &path, &task)?;
            events::emit(
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
                .with("threshold_seconds", policy.stuck_task_seconds),
            );
            out.stuck += 1;
        }
    }
    Ok(())
}

/// What one maintenance pass of the monitor did to the queue.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Maintenance {
    /// Tasks put back in pending because their claimant is gone or their lease ran out.
    pub requeued: u64,
    /// `task_stuck` events written in this pass.
    pub stuck: u64,
    /// `task_starved` events written in this pass.
    pub starved: u64,
    /// One line for the monitor's log: `workers 3/3, queue 123 (llm:123), processing 2, stuck 2`.
    pub summary: String,
}

/// One maintenance pass: requeue, stuck and starvation detection, summary line.
///
/// Cost per pass when nothing changed: one `read_dir` per class directory (names only),
/// one of `processing/`, one read per processing task (bounded by the number of claimants),
/// the active specs, and one `stat` per class head. No pending task file is opened. Actions
/// re-read the task under its lock, so a concurrent complete or claim always wins cleanly.
pub fn maintain(home: &Home, policy: &HeartbeatPolicy, now: Timestamp) -> Result<Maintenance> {
    let mut out = Maintenance::default();
    let workers = scan_workers(home)?;

    // processing/: decide per task, act only where a decision says so.
    let pdir = home.tasks_dir(TaskState::Processing);
    let mut processing = 0u64;
    let mut stuck_now = 0u64;
    for name in store::list_json(&pdir)? {
        let path = pdir.join(&name);
        let task = match read_task(&path) {
            Ok(t) => t,
            Err(ReadError::Missing) => continue,
            Err(ReadError::Refused(why)) => {
                quarantine_task(home, &path, &why);
                continue;
            }
            Err(ReadError::Io(e)) => return Err(e),
        };
        let claimant = claimant_state(home, task.claimed_by.as_deref());
        let age = file_age(&path, now).unwrap_or(0.0);
        let d = decide(&task, &claimant, age, policy, now);
        let stays = matches!(d, Decision::Keep | Decision::Stuck { .. });
        if stays {
            processing += 1;
            if task
                .processing_seconds(now)
                .is_some_and(|e| e > policy.stuck_task_seconds)
            {
                stuck_now += 1;
            }
        }
        if d != Decision::Keep {
            apply(home, policy, &task.task_id, now, &mut out)?;
        }
    }

    // pending/: names only.
    let mut queues = Vec::new();
    for c in classes(home)? {
        let names = pending_names(home, &c)?;
        queues.push(ClassQueue {
            class: c,
            count: names.len(),
            head: names.into_iter().next(),
        });
    }
    for q in &queues {
        out.starved += check_starvation(home, policy, q, &workers, now)?;
    }

    let total: usize = queues.iter().map(|q| q.count).sum();
    let by_class: Vec<String> = queues
        .iter()
        .filter(|q| q.count > 0)
        .map(|q| format!("{}:{}", q.class, q.count))
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

/// `task_starved` once per class per episode: the class's next task has waited past
/// `starvation_seconds` while workers sit idle. The episode is remembered in
/// `pending/<class>/.starved` (so a restarted monitor does not repeat it) and ends when the
/// head is claimed, the class empties, or no worker is idle.
fn check_starvation(
    home: &Home,
    policy: &HeartbeatPolicy,
    q: &ClassQueue,
    workers: &Workers,
    now: Timestamp,
) -> Result<u64> {
    let dir = class_dir(home, &q.class);
    let marker = dir.join(STARVED_MARKER);
    let head_wait = q.head.as_ref().and_then(|h| file_age(&dir.join(h), now));
    let starving = policy.starvation_seconds > 0.0
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
        .as_deref()
        .and_then(parse_pending_name)
        .map(|p| p.task_id.to_string())
        .unwrap_or_default();
    let prio = q
        .head
        .as_deref()
        .and_then(parse_pending_name)
        .map(|p| priority_of_rank(p.prio).as_str())
        .unwrap_or("medium");
    tracing::warn!(
        "class {} starved: {} pending, next task {head_id} waiting {wait:.0}s, idle workers {:?}",
        q.class,
        q.count,
        workers.idle
    );
    let note = serde_json::json!({"reported_at": time::format(&now), "head": head_id});
    store::atomic_write(home, &marker, note.to_string().as_bytes())?;
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
    .with("pending", q.count as u64)
    .with("waiting_seconds", wait.round())
    .with("priority", prio)
    .with("idle_workers", workers.idle.clone())
    .with("threshold_seconds", policy.starvation_seconds);
    events::emit(home, ev);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn home() -> (tempfile::TempDir, Home) {
        crate::home::test_home()
    }

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

    #[test]
    fn names_sort_in_claim_order_and_parse_back() {
        let a = pending_name(Priority::Critical, 5, "z");
        let b = pending_name(Priority::High, 1, "a");
        let c = pending_name(Priority::High, 10, "a");
        assert!(a < b && b < c);
        let p = parse_pending_name(&c).unwrap();
        assert_eq!((p.prio, p.ns, p.task_id), (1, 10, "a"));
        for bad in [
            "x.json",
            "4-00000000000000000001-a.json",
            ".starved",
            "1-12-a.json",
        ] {
            assert!(parse_pending_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn decisions_follow_claimant_lease_and_time() {
        let p = HeartbeatPolicy::default();
        let t0 = time::parse("2026-01-01T00:00:00Z").unwrap();
        let t = claimed("w1", t0);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!(decide(&t, &Claimant::Live, 0.0, &p, at(10)), Decision::Keep);
        assert_eq!(
            decide(&t, &Claimant::Live, 0.0, &p, at(301)),
            Decision::Stuck { elapsed: 301.0 }
        );
        let mut reported = t.clone();
        reported.stuck_reported_at = Some(at(301));
        assert_eq!(
            decide(&reported, &Claimant::Live, 0.0, &p, at(900)),
            Decision::Keep
        );
        let gone = Claimant::Gone {
            dir: StateDir::Zombie,
        };
        assert!(matches!(
            decide(&t, &gone, 0.0, &p, at(1)),
            Decision::Requeue(_)
        ));
        let mut last = t.clone();
        last.attempts = 3;
        assert!(matches!(
            decide(&last, &gone, 0.0, &p, at(1)),
            Decision::DeadLetter(_)
        ));
        assert_eq!(
            decide(&t, &Claimant::NotAWorker, 0.0, &p, at(299)),
            Decision::Keep
        );
        assert!(matches!(
            decide(&t, &Claimant::NotAWorker, 0.0, &p, at(300)),
            Decision::Requeue(_)
        ));
        let mut unrec = t.clone();
        unrec.state = TaskState::Pending;
        unrec.claimed_by = None;
        assert_eq!(
            decide(&unrec, &Claimant::Unrecorded, 10.0, &p, at(1)),
            Decision::Keep
        );
        assert!(matches!(
            decide(&unrec, &Claimant::Unrecorded, 301.0, &p, at(1)),
            Decision::Requeue(_)
        ));
        let mut done = t.clone();
        done.state = TaskState::Completed;
        assert_eq!(
            decide(&done, &Claimant::Live, 0.0, &p, at(1)),
            Decision::FinishMove
        );
    }

    #[test]
    fn claim_order_is_priority_then_fifo_and_classes_in_preference() {
        let (_d, h) = home();
        let mut req = EnqueueRequest::new("b");
        req.priority = Priority::Low;
        let low = enqueue(&h, &req).unwrap();
        req.priority = Priority::Critical;
        let crit = enqueue(&h, &req).unwrap();
        let crit2 = enqueue(&h, &req).unwrap();
        let a = enqueue(&h, &EnqueueRequest::new("a")).unwrap();
        let mut c = Claimer::new(&h, "w", &["b".into(), "a".into()], 60.0).unwrap();
        let got: Vec<String> =
            std::iter::from_fn(|| c.try_claim().unwrap().map(|t| t.task_id)).collect();
        assert_eq!(
            got,
            vec![crit.task_id, crit2.task_id, low.task_id, a.task_id]
        );
    }

    #[test]
    fn maintain_requeues_stuck_and_starves_once() {
        let (_d, h) = home();
        let p = HeartbeatPolicy::default();
        let t = enqueue(&h, &EnqueueRequest::new("llm")).unwrap();
        let mut c = Claimer::new(&h, "script-1", &[], 30.0).unwrap();
        assert_eq!(c.try_claim().unwrap().unwrap().task_id, t.task_id);
        let now = time::now();
        let m = maintain(&h, &p, now).unwrap();
        assert_eq!((m.requeued, m.stuck), (0, 0));
        assert_eq!(m.summary, "workers 0/0, queue 0, processing 1, stuck 0");
        // The lease (30 s) runs out.
        let m = maintain(&h, &p, now + chrono::Duration::seconds(31)).unwrap();
        assert_eq!(m.requeued, 1, "{m:?}");
        assert_eq!(find(&h, &t.task_id).unwrap().state, TaskState::Pending);

        // An idle worker and an old head: starved once per episode.
        let mut spec = crate::spec::WorkerSpec::new("w-idle".into(), "t".into(), now);
        spec.status = Status::Idle;
        crate::spec::save(&h, StateDir::Active, &spec).unwrap();
        let later = now + chrono::Duration::seconds(400);
        assert_eq!(maintain(&h, &p, later).unwrap().starved, 1);
        let m = maintain(&h, &p, later).unwrap();
        assert_eq!(m.starved, 0);
        assert_eq!(
            m.summary,
            "workers 1/1, queue 1 (llm:1), processing 0, stuck 0"
        );
        // The episode ends when the head is young again, and a new one is reported.
        assert_eq!(maintain(&h, &p, now).unwrap().starved, 0);
        assert_eq!(maintain(&h, &p, later).unwrap().starved, 1);
    }

    #[test]
    fn stuck_is_reported_once() {
        let (_d, h) = home();
        let p = HeartbeatPolicy::default();
        let now = time::now();
        let mut spec = crate::spec::WorkerSpec::new("w1".into(), "t".into(), now);
        spec.status = Status::Running;
        crate::spec::save(&h, StateDir::Active, &spec).unwrap();
        enqueue(&h, &EnqueueRequest::new("x")).unwrap();
        Claimer::new(&h, "w1", &[], 30.0)
            .unwrap()
            .try_claim()
            .unwrap()
            .unwrap();
        let later = now + chrono::Duration::seconds(600);
        let m = maintain(&h, &p, later).unwrap();
        assert_eq!((m.stuck, m.requeued), (1, 0));
        assert!(
            m.summary.ends_with("processing 1, stuck 1"),
            "{}",
            m.summary
        );
        assert_eq!(maintain(&h, &p, later).unwrap().stuck, 0);
    }
}
