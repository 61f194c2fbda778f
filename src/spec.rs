//! The worker spec (DESIGN.md §3): one JSON file per worker, whose directory and `status`
//! never disagree. The model is lenient on read (a spec written by hand the runbook's way
//! loads, as do specs of older corral versions) and complete on write (the first rewrite fills
//! every field and `schema_version`). Fields it does not know are carried through untouched.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::process::ProcessInfo;
use crate::schema::{self, Kind};
use crate::store::{self, LockGuard, ReadError};
use crate::time::{serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The spec format version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Transitions a spec keeps in `history`: the newest ones. Every transition is also an
/// event in the event log, which holds the full story; the cap keeps a long-lived worker's
/// spec (two entries per task in `task-queue work`) far below what readers accept (S9).
pub const MAX_HISTORY: usize = 50;

/// A worker's status. The directory it belongs in follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Idle,
    ShuttingDown,
    Completed,
    Failed,
    Zombie,
}

impl Status {
    /// All statuses.
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Idle,
        Status::ShuttingDown,
        Status::Completed,
        Status::Failed,
        Status::Zombie,
    ];

    /// The snake_case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Idle => "idle",
            Status::ShuttingDown => "shutting_down",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Zombie => "zombie",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Where a spec with this status lives (before archiving, which keeps any status).
    pub fn home_dir(self) -> StateDir {
        match self {
            Status::Pending | Status::Running | Status::Idle | Status::ShuttingDown => {
                StateDir::Active
            }
            Status::Completed => StateDir::Completed,
            Status::Failed | Status::Zombie => StateDir::Zombie,
        }
    }

    /// True when a spec with this status may sit in `dir`.
    pub fn fits(self, dir: StateDir) -> bool {
        dir == StateDir::Archived || self.home_dir() == dir
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheduling priority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    /// 0 (critical) … 3 (low): the task queue's file-name prefix.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// Parses a priority name.
    pub fn parse(s: &str) -> Option<Priority> {
        [
            Priority::Critical,
            Priority::High,
            Priority::Medium,
            Priority::Low,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Tokens reserved for and spent by one worker.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TokenBudget {
    #[serde(default)]
    pub allocated: u64,
    #[serde(default)]
    pub used: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Liveness as last reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    #[serde(default, with = "serde_ts::option")]
    pub last_seen: Option<Timestamp>,
    /// 0–100, an integer as the runbook sorts it; any JSON number is accepted on read.
    #[serde(default = "full_health", deserialize_with = "score_from_number")]
    pub health_score: u32,
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub sequence: u64,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn full_health() -> u32 {
    100
}

fn score_from_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let n = f64::deserialize(d)?;
    Ok(n.round().clamp(0.0, 100.0) as u32)
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            last_seen: None,
            health_score: 100,
            health: Some("healthy".into()),
            sequence: 0,
            message: None,
            progress: None,
            extra: Map::new(),
        }
    }
}

/// Health band for a score (DESIGN.md §6).
pub fn health_band(score: u32) -> &'static str {
    if score >= 80 {
        "healthy"
    } else if score >= 50 {
        "degraded"
    } else {
        "unhealthy"
    }
}

/// Limits and last samples.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Resources {
    #[serde(default)]
    pub timeout_minutes: Option<u64>,
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub rss_mb: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Restart lineage.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Restart {
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub original_worker_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a worker ended. `code` and `signal` are data only when `known` is true: a process
/// whose parent is not corral (spawn-worker exits at once) cannot have its exit status read
/// by anyone in corral, and the record says so instead of writing nulls that look like
/// data. Older specs have no `known`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitInfo {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    pub reason: String,
    #[serde(with = "serde_ts")]
    pub at: Timestamp,
    /// True when `code` or `signal` was observed (waitpid by the parent, our own SIGKILL,
    /// or the worker's own report of success); false when nobody could see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known: Option<bool>,
    /// Why the exit status is not known, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_because: Option<String>,
    /// Who saw the end: `wait_status` (the parent's waitpid), `stopper` (our own SIGKILL),
    /// `worker_report` (heartbeat --complete/--fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ExitInfo {
    /// An end whose exit code or signal was observed.
    pub fn observed(
        reason: &str,
        code: Option<i32>,
        signal: Option<i32>,
        at: Timestamp,
    ) -> ExitInfo {
        if code.is_none() && signal.is_none() {
            return ExitInfo::unobserved(reason, "no exit code or signal was observed", at);
        }
        ExitInfo {
            code,
            signal,
            reason: reason.into(),
            at,
            known: Some(true),
            unknown_because: None,
            source: None,
            extra: Map::new(),
        }
    }

    /// An end whose exit status nobody in corral could observe, and why.
    pub fn unobserved(reason: &str, why: &str, at: Timestamp) -> ExitInfo {
        ExitInfo {
            code: None,
            signal: None,
            reason: reason.into(),
            at,
            known: Some(false),
            unknown_because: Some(why.into()),
            source: None,
            extra: Map::new(),
        }
    }

    /// The exit of a child reaped by its parent (see [`crate::process::reap_children`]).
    pub fn from_wait(reason: &str, exit: &crate::process::ChildExit, at: Timestamp) -> ExitInfo {
        let mut e = ExitInfo::observed(reason, exit.code, exit.signal, at);
        e.source = Some("wait_status".into());
        if exit.core_dumped {
            e.extra.insert("core_dumped".into(), Value::Bool(true));
        }
        e
    }
}

/// How a worker's process is started, recorded at spawn so that a restart reproduces the
/// launch (DESIGN §6 S7): the program resolved to an absolute path, the spawn's working
/// directory and the `spawn-worker --env` pairs. The type's `env` and `env_file` are read
/// at each launch and never copied here (an env file may hold secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LaunchSpec {
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One state change, kept in the spec for the post-mortem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    #[serde(with = "serde_ts")]
    pub at: Timestamp,
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    #[serde(default)]
    pub reason: String,
    /// Fields other tools added to the entry (DESIGN §3: preserved on rewrite).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Transition {
    /// An entry corral writes: no fields of other tools.
    pub fn new(
        at: Timestamp,
        from: Option<&str>,
        to: &str,
        reason: impl Into<String>,
    ) -> Transition {
        Transition {
            at,
            from: from.map(str::to_string),
            to: to.to_string(),
            reason: reason.into(),
            extra: Map::new(),
        }
    }
}

/// A worker spec. Field names and types are the contract the runbook's `jq` reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerSpec {
    #[serde(default = "version_one")]
    pub schema_version: u32,
    pub worker_id: String,
    pub worker_type: String,
    pub status: Status,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub token_budget: TokenBudget,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(default)]
    pub process: Option<ProcessInfo>,
    /// How to (re)start the worker's process; absent for workers without a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchSpec>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default, with = "serde_ts::option")]
    pub created_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub started_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub updated_at: Option<Timestamp>,
    #[serde(default)]
    pub exit: Option<ExitInfo>,
    #[serde(default)]
    pub history: Vec<Transition>,
    /// Fields written by other tools, preserved on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn version_one() -> u32 {
    SCHEMA_VERSION
}

impl WorkerSpec {
    /// A fresh pending spec.
    pub fn new(worker_id: String, worker_type: String, now: Timestamp) -> WorkerSpec {
        WorkerSpec {
            schema_version: SCHEMA_VERSION,
            worker_id,
            worker_type,
            status: Status::Pending,
            task_id: None,
            master: None,
            priority: Priority::Medium,
            repo: None,
            session_id: None,
            pid: None,
            token_budget: TokenBudget::default(),
            heartbeat: Heartbeat::default(),
            process: None,
            launch: None,
            resources: Resources::default(),
            restart: Restart::default(),
            created_at: Some(now),
            started_at: None,
            completed_at: None,
            updated_at: Some(now),
            exit: None,
            history: vec![Transition::new(now, None, "pending", "spawned")],
            extra: Map::new(),
        }
    }

    /// Validates a JSON document against the schema and loads it.
    pub fn from_value(value: Value) -> Result<WorkerSpec> {
        schema::validate(Kind::WorkerSpec, &value)?;
        let spec: WorkerSpec = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("invalid worker spec: {e}")))?;
        crate::id::validate("worker", &spec.worker_id)?;
        Ok(spec)
    }

    /// Serialises and validates (every write validates, DESIGN.md §3). Only the newest
    /// [`MAX_HISTORY`] transitions are written.
    pub fn to_value(&self) -> Result<Value> {
        let mut v = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialise spec: {e}")))?;
        if let Some(Value::Array(h)) = v.get_mut("history") {
            if h.len() > MAX_HISTORY {
                h.drain(..h.len() - MAX_HISTORY);
            }
        }
        schema::validate(Kind::WorkerSpec, &v)?;
        Ok(v)
    }

    /// Drops the oldest transitions beyond [`MAX_HISTORY`].
    pub fn cap_history(&mut self) {
        if self.history.len() > MAX_HISTORY {
            self.history.drain(..self.history.len() - MAX_HISTORY);
        }
    }

    /// Fills what a hand-made or older spec lacks, and stamps `updated_at`.
    pub fn normalize(&mut self, now: Timestamp) {
        self.schema_version = SCHEMA_VERSION;
        if self.created_at.is_none() {
            self.created_at = Some(now);
        }
        if let Some(p) = &self.process {
            self.pid = Some(p.pid);
        }
        if self.heartbeat.health.is_none() {
            self.heartbeat.health = Some(health_band(self.heartbeat.health_score).into());
        }
        self.updated_at = Some(now);
    }

    /// Changes status and appends the transition to `history` (capped).
    pub fn set_status(&mut self, to: Status, reason: &str, now: Timestamp) {
        self.history.push(Transition::new(
            now,
            Some(self.status.as_str()),
            to.as_str(),
            reason,
        ));
        self.cap_history();
        self.status = to;
        self.updated_at = Some(now);
    }

    /// The time liveness counts from: the last beat, or creation before the first beat.
    pub fn last_alive(&self) -> Option<Timestamp> {
        self.heartbeat.last_seen.or(self.created_at)
    }

    /// When the worker finished, for "consumed this period".
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.completed_at
            .or(self.exit.as_ref().map(|e| e.at))
            .or(self.updated_at)
    }

    /// Tokens left of the allocation.
    pub fn tokens_remaining(&self) -> u64 {
        self.token_budget
            .allocated
            .saturating_sub(self.token_budget.used)
    }
}

/// A spec read from where it lives now.
#[derive(Debug, Clone)]
pub struct Located {
    pub dir: StateDir,
    pub path: PathBuf,
    pub spec: WorkerSpec,
}

/// Finds which state directory holds `id`, without reading it.
pub fn locate(home: &Home, id: &str) -> Option<(StateDir, PathBuf)> {
    let look = || {
        StateDir::ALL.into_iter().find_map(|d| {
            let p = home.spec_path(d, id);
            std::fs::symlink_metadata(&p).ok().map(|_| (d, p))
        })
    };
    look().or_else(|| {
        // An NFS client may answer from a cached "no such file" for a spec another host has
        // just moved: look the state directories up again before saying it is nowhere.
        for d in StateDir::ALL {
            let _ = crate::netfs::revalidate_dir(&home.specs_dir(d));
        }
        look()
    })
}

/// Reads and validates one spec file.
pub fn read(path: &std::path::Path) -> Result<WorkerSpec> {
    let value = store::read_json(path).map_err(|e| e.into_error(path))?;
    WorkerSpec::from_value(value).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Reads a spec file, telling a vanished file apart from a bad one (for scanners).
pub fn read_for_scan(path: &std::path::Path) -> std::result::Result<WorkerSpec, ReadError> {
    let value = store::read_json(path)?;
    WorkerSpec::from_value(value).map_err(|e| ReadError::Refused(e.to_string()))
}

/// Loads a worker wherever it lives; exit 3 when there is no such worker, 6 when its file
/// names another worker.
pub fn load(home: &Home, id: &str) -> Result<Located> {
    crate::id::validate("worker", id)?;
    let mut first = true;
    loop {
        let (dir, path) =
            locate(home, id).ok_or_else(|| Error::NotFound(format!("no such worker: {id}")))?;
        match store::read_json(&path) {
            Ok(value) => {
                let spec = WorkerSpec::from_value(value).map_err(|e| match e {
                    Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
                    other => other,
                })?;
                // A copied or hand-renamed spec: acting on it would save or move the
                // worker its content names (S9). The monitor and `corral doctor --fix`
                // quarantine it; a command only refuses.
                if spec.worker_id != id {
                    return Err(Error::Invalid(format!(
                        "{}: the file is named {id} but the spec says {}; not acted on \
                         (`corral doctor --fix` quarantines it)",
                        path.display(),
                        spec.worker_id
                    )));
                }
                return Ok(Located { dir, path, spec });
            }
            // Moved since it was located (by another process, or another host whose move
            // this NFS client has not seen yet): look the state directories up again once.
            Err(ReadError::Missing) if first => {
                first = false;
                for d in StateDir::ALL {
                    let _ = crate::netfs::revalidate_dir(&home.specs_dir(d));
                }
            }
            Err(e) => return Err(e.into_error(&path)),
        }
    }
}

/// Takes the worker's sidecar lock. Every read-modify-write or move holds it. The wait is
/// bounded by `CORRAL_LOCK_TIMEOUT` (exit 5 naming the lock).
pub fn lock(home: &Home, id: &str) -> Result<LockGuard> {
    crate::id::validate("worker", id)?;
    store::lock(&home.worker_lock(id))
}

/// Takes the worker's lock if it is free (`None` when held): for a daemon, which must never
/// wait on one worker (DESIGN §6 S4) and comes back to it later instead.
pub fn try_lock(home: &Home, id: &str) -> Result<Option<LockGuard>> {
    crate::id::validate("worker", id)?;
    store::try_lock(&home.worker_lock(id))
}

/// Writes `spec` into `dir` atomically after validating it.
pub fn save(home: &Home, dir: StateDir, spec: &WorkerSpec) -> Result<()> {
    let value = spec.to_value()?;
    store::atomic_write(
        home,
        &home.spec_path(dir, &spec.worker_id),
        &store::to_pretty(&value)?,
    )
}

/// Rewrites a located spec where it lives, then moves it to `to` if that differs. Writing
/// first means whoever watches `to` reads the final content; a crash in between leaves a
/// status/directory disagreement that `corral doctor --fix` settles. Caller holds the lock.
pub fn save_and_move(
    home: &Home,
    from: StateDir,
    to: StateDir,
    spec: &WorkerSpec,
) -> Result<PathBuf> {
    save(home, from, spec)?;
    let dest = home.spec_path(to, &spec.worker_id);
    if from != to {
        store::move_file(&home.spec_path(from, &spec.worker_id), &dest)?;
    }
    Ok(dest)
}

/// Files a scan could not read, with the reason.
pub type Unreadable = Vec<(PathBuf, String)>;

/// All specs in a directory; unreadable ones are returned separately with the reason.
pub fn scan(home: &Home, dir: StateDir) -> Result<(Vec<WorkerSpec>, Unreadable)> {
    let d = home.specs_dir(dir);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for name in store::list_json(&d)? {
        let p = d.join(&name);
        match read_for_scan(&p) {
            Ok(s) => good.push(s),
            Err(ReadError::Missing) => {}
            Err(ReadError::Refused(why)) => bad.push((p, why)),
            Err(ReadError::Io(e)) => return Err(e),
        }
    }
    Ok((good, bad))
}

/// True when `dir` holds a spec named `id`.
pub fn locate_in(home: &Home, id: &str, dir: StateDir) -> bool {
    std::fs::symlink_metadata(home.spec_path(dir, id)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hand_made_spec_loads_and_fills_on_rewrite() {
        let v = json!({
            "worker_id": "worker-implementation-1763719200",
            "worker_type": "implementation-worker",
            "status": "pending",
            "task_id": "task-001",
            "priority": "high",
            "token_budget": {"allocated": 100000, "used": 0},
            "heartbeat": {"last_seen": null, "health_score": 100},
            "created_at": "2026-11-22T10:15:00Z",
            "custom_field": {"kept": true}
        });
        let mut s = WorkerSpec::from_value(v).unwrap();
        s.normalize(crate::time::now());
        let out = s.to_value().unwrap();
        assert_eq!(out["schema_version"], 1);
        assert_eq!(out["custom_field"]["kept"], true);
        assert_eq!(out["created_at"], "2026-11-22T10:15:00.000Z");
        assert_eq!(out["heartbeat"]["health"], "healthy");
        assert_eq!(out["priority"], "high");
        assert!(out["updated_at"].is_string());
    }

    #[test]
    fn status_and_directory_agree() {
        assert_eq!(Status::Idle.home_dir(), StateDir::Active);
        assert_eq!(Status::Failed.home_dir(), StateDir::Zombie);
        assert!(Status::Running.fits(StateDir::Archived));
        assert!(!Status::Running.fits(StateDir::Zombie));
    }

    #[test]
    fn history_is_capped_to_the_newest_entries() {
        let now = crate::time::now();
        let mut s = WorkerSpec::new("w1".into(), "t".into(), now);
        for i in 0..(MAX_HISTORY * 3) {
            let to = if i % 2 == 0 {
                Status::Running
            } else {
                Status::Idle
            };
            s.set_status(to, &format!("step {i}"), now);
        }
        assert_eq!(s.history.len(), MAX_HISTORY);
        assert_eq!(
            s.history.last().map(|t| t.reason.as_str()),
            Some(format!("step {}", MAX_HISTORY * 3 - 1).as_str())
        );
        // A hand-made spec with a long history is written capped too.
        s.history = (0..500)
            .map(|i| Transition::new(now, None, "running", format!("r{i}")))
            .collect();
        let v = s.to_value().unwrap();
        let h = v["history"].as_array().unwrap();
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h[MAX_HISTORY - 1]["reason"], "r499");
    }

    #[test]
    fn an_unknown_exit_says_so() {
        let now = crate::time::now();
        let e = ExitInfo::unobserved("stopped", "not our child", now);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["known"], false);
        assert_eq!(v["code"], Value::Null);
        assert_eq!(v["unknown_because"], "not our child");
        let k = ExitInfo::observed("crashed", None, Some(9), now);
        assert_eq!(serde_json::to_value(&k).unwrap()["known"], true);
        assert_eq!(ExitInfo::observed("x", None, None, now).known, Some(false));
    }

    #[test]
    fn health_bands() {
        assert_eq!(health_band(80), "healthy");
        assert_eq!(health_band(79), "degraded");
        assert_eq!(health_band(49), "unhealthy");
    }
}
