//! The event log (DESIGN.md §7): `dashboard-events.jsonl`, one compact JSON object per line,
//! appended with a single `write(2)` under `.locks/events.lock` so lines from concurrent
//! processes never interleave, and rotated by size with renames (`.1`, `.2`, …) so `tail -F`,
//! which follows the name, keeps working.

use crate::error::{Error, IoContext, Result};
use crate::home::Home;
use crate::schema::{self, Kind};
use crate::store;
use crate::time::{serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::sync::OnceLock;

macro_rules! event_types {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// Every event type corral writes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventType { $( #[serde(rename = $name)] $variant ),+ }

        impl EventType {
            /// All types, in the order DESIGN.md lists them.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The name written to the log.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name),+ }
            }
        }
    };
}

event_types! {
    WorkerSpawned => "worker_spawned", WorkerStarting => "worker_starting",
    WorkerRegistered => "worker_registered", WorkerReady => "worker_ready",
    WorkerStopping => "worker_stopping", WorkerStopped => "worker_stopped",
    WorkerCompleted => "worker_completed", WorkerFailed => "worker_failed",
    WorkerArchived => "worker_archived", PoolStarting => "pool_starting",
    PoolStarted => "pool_started", PoolStopping => "pool_stopping", PoolStopped => "pool_stopped",
    HeartbeatWarning => "heartbeat_warning", HeartbeatCritical => "heartbeat_critical",
    HeartbeatResumed => "heartbeat_resumed", ZombieDetected => "zombie_detected",
    ZombieProcessTerminated => "zombie_process_terminated",
    ZombieCleanupCompleted => "zombie_cleanup_completed", ZombieCleanupFailed => "zombie_cleanup_failed",
    WorkerRestartScheduled => "worker_restart_scheduled", WorkerRestarted => "worker_restarted",
    WorkerRestartFailed => "worker_restart_failed", WorkerRestartAbandoned => "worker_restart_abandoned",
    CircuitBreakerTripped => "circuit_breaker_tripped", CircuitBreakerReset => "circuit_breaker_reset",
    ThresholdViolation => "threshold_violation", BudgetReserved => "budget_reserved",
    BudgetReleased => "budget_released", BudgetExceeded => "budget_exceeded",
    BudgetRecalculated => "budget_recalculated", TaskEnqueued => "task_enqueued",
    TaskClaimed => "task_claimed", TaskCompleted => "task_completed", TaskFailed => "task_failed",
    TaskRequeued => "task_requeued", TaskDeadLettered => "task_dead_lettered",
    TaskStuck => "task_stuck", TaskStarved => "task_starved", SpecQuarantined => "spec_quarantined",
    TaskCancelled => "task_cancelled", TaskTimedOut => "task_timed_out",
    TaskReleased => "task_released", TasksPurged => "tasks_purged",
    QueuePaused => "queue_paused", QueueResumed => "queue_resumed",
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: String,
    #[serde(with = "serde_ts")]
    pub timestamp: Timestamp,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub source: String,
    pub host: String,
    pub worker_id: Option<String>,
    pub worker_type: Option<String>,
    pub task_id: Option<String>,
    pub session_id: Option<String>,
    pub message: String,
    pub data: Map<String, Value>,
}

static SOURCE: OnceLock<String> = OnceLock::new();

/// Names the program writing events (set once by the binary wrapper).
pub fn set_source(name: &str) {
    let _ = SOURCE.set(name.to_string());
}

fn source() -> String {
    SOURCE.get().cloned().unwrap_or_else(|| "corral".into())
}

impl Event {
    /// A new event stamped now, from this program and host.
    pub fn new(kind: EventType, message: impl Into<String>) -> Event {
        let now = crate::time::now();
        Event {
            id: crate::id::new_event_id(now),
            timestamp: now,
            kind,
            source: source(),
            host: crate::process::host_name(),
            worker_id: None,
            worker_type: None,
            task_id: None,
            session_id: None,
            message: message.into(),
            data: Map::new(),
        }
    }

    /// Fills the worker fields from a spec.
    pub fn worker(mut self, spec: &crate::spec::WorkerSpec) -> Event {
        self.worker_id = Some(spec.worker_id.clone());
        self.worker_type = Some(spec.worker_type.clone());
        self.task_id = spec.task_id.clone();
        self.session_id = spec.session_id.clone();
        self
    }

    /// Sets the task id.
    pub fn task(mut self, task_id: &str) -> Event {
        self.task_id = Some(task_id.to_string());
        self
    }

    /// Sets the session id.
    pub fn session(mut self, session: Option<&str>) -> Event {
        self.session_id = session.map(str::to_string);
        self
    }

    /// Adds one `data` field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.data.insert(key.to_string(), value.into());
        self
    }

    /// The compact JSON line (with newline), validated against the event schema.
    pub fn to_line(&self) -> Result<Vec<u8>> {
        let v = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialise event: {e}")))?;
        schema::validate(Kind::Event, &v)?;
        let mut line =
            serde_json::to_vec(&v).map_err(|e| Error::Internal(format!("serialise event: {e}")))?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Bounds of the rotation settings, as in the policy schema.
const MIN_MAX_BYTES: u64 = 1024;
const MAX_MAX_BYTES: u64 = 1 << 40;
const MAX_KEEP: u32 = 1000;

/// Rotation settings: from `events` in the heartbeat policy, overridden by
/// `CORRAL_EVENTS_MAX_BYTES` / `CORRAL_EVENTS_KEEP`.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Rotation {
    /// The settings for a home, read at most once every few seconds per process: an append
    /// is on every hot path (spawn, claim), and re-reading the policy each time showed up in
    /// the queue benchmark. A long-running daemon still picks up an edited policy.
    pub fn for_home(home: &Home) -> Rotation {
        use std::sync::Mutex;
        use std::time::{Duration, Instant};
        type Cached = Option<(std::path::PathBuf, Instant, Rotation)>;
        static CACHE: Mutex<Cached> = Mutex::new(None);
        let key = home.policy_path();
        if let Ok(guard) = CACHE.lock() {
            if let Some((p, at, r)) = guard.as_ref() {
                if *p == key && at.elapsed() < Duration::from_secs(5) {
                    return *r;
                }
            }
        }
        let r = Rotation::read(home);
        if let Ok(mut guard) = CACHE.lock() {
            *guard = Some((key, Instant::now(), r));
        }
        r
    }

    /// Reads the settings from the policy file and the environment.
    fn read(home: &Home) -> Rotation {
        let mut r = Rotation {
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        };
        if let Ok(policy) = store::read_json(&home.policy_path()) {
            if let Some(n) = policy.pointer("/events/max_bytes").and_then(Value::as_u64) {
                r.max_bytes = n;
            }
            if let Some(n) = policy.pointer("/events/keep").and_then(Value::as_u64) {
                r.keep = n.min(u64::from(u32::MAX)) as u32;
            }
        }
        if let Some(n) = std::env::var("CORRAL_EVENTS_MAX_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            r.max_bytes = n;
        }
        if let Some(n) = std::env::var("CORRAL_EVENTS_KEEP")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            r.keep = n.min(u64::from(u32::MAX)) as u32;
        }
        // Logging must never fail or spin on a bad setting (S5): a keep of 0 or four
        // billion, or a size of a few bytes, is brought into the range the policy schema
        // allows.
        r.max_bytes = r.max_bytes.clamp(MIN_MAX_BYTES, MAX_MAX_BYTES);
        r.keep = r.keep.clamp(1, MAX_KEEP);
        r
    }
}

/// Appends one event. Failure to log never undoes the state change it reports, so callers
/// that already committed a change use [`emit`], which logs the failure instead of failing.
pub fn append(home: &Home, event: &Event) -> Result<()> {
    append_many(home, std::slice::from_ref(event))
}

/// Appends events in order, one `write` each, under one hold of the lock.
pub fn append_many(home: &Home, events: &[Event]) -> Result<()> {
    let lines = events
        .iter()
        .map(Event::to_line)
        .collect::<Result<Vec<_>>>()?;
    write_lines(home, &lines)
}

/// Appends and, on failure, reports on stderr: the change the event describes has happened.
pub fn emit(home: &Home, event: Event) {
    if let Err(e) = append(home, &event) {
        tracing::error!("cannot write {} event: {e}", event.kind);
    }
}

/// Like [`emit`] for several events.
pub fn emit_many(home: &Home, events: &[Event]) {
    if let Err(e) = append_many(home, events) {
        tracing::error!("cannot write events: {e}");
    }
}

/// The lock file and the log of one home, kept open by this process: an append is then an
/// `flock`, two `stat`s (one notices a lock file made anew, the other a rotation by another
/// process), one `write` and the unlock, instead of opening and closing both files each time.
struct Appender {
    /// The lock file and its (device, inode).
    lock: Option<(std::fs::File, (u64, u64))>,
    /// The log and its (device, inode), or none until the first append.
    log: Option<(std::fs::File, (u64, u64))>,
    /// Whether the log is on a network filesystem (known after the first append). There the
    /// log is opened for each append and closed before the unlock: an NFS client appends at
    /// the end it saw when it opened the file and sends its writes on close (close-to-open),
    /// so a descriptor kept open would write over lines another host appended meanwhile.
    network: Option<bool>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Appender>>;

/// Open appenders (a few homes at most; tests use many, so the oldest is closed). Each has
/// its own mutex, so a wait for one home's lock never holds up another home's appends.
static APPENDERS: std::sync::Mutex<Vec<(std::path::PathBuf, Shared)>> =
    std::sync::Mutex::new(Vec::new());
const MAX_APPENDERS: usize = 8;

fn appender(path: &std::path::Path) -> Shared {
    let mut all = APPENDERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, a)) = all.iter().find(|(p, _)| p == path) {
        return a.clone();
    }
    if all.len() >= MAX_APPENDERS {
        all.remove(0);
    }
    let a = std::sync::Arc::new(std::sync::Mutex::new(Appender {
        lock: None,
        log: None,
        network: None,
    }));
    all.push((path.to_path_buf(), a.clone()));
    a
}

fn dev_ino(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn write_lines(home: &Home, lines: &[Vec<u8>]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let rotation = Rotation::for_home(home);
    let path = home.events_path();
    let lock_path = home.events_lock();
    let shared = appender(&path);
    let mut a = shared.lock().unwrap_or_else(|p| p.into_inner());
    // The lock file this process holds open must still be the one at its path (a home made
    // anew at the same place has a new one), or the lock would exclude nobody.
    let on_disk = std::fs::symlink_metadata(&lock_path)
        .ok()
        .map(|m| dev_ino(&m));
    if on_disk.is_none() || a.lock.as_ref().map(|l| l.1) != on_disk {
        // A duplicate of a freshly opened (and checked) lock file, unlocked: the lock
        // belongs to the open file both descriptors share.
        let guard = store::lock(&lock_path)?;
        let f = guard.file().try_clone().ctx("dup", &lock_path)?;
        let id = dev_ino(&f.metadata().ctx("stat", &lock_path)?);
        drop(guard);
        a.lock = Some((f, id));
    }
    let Some((lock, _)) = a.lock.as_ref() else {
        return Err(Error::Internal("event lock vanished".into()));
    };
    // The common case is a free lock; a held one is waited for with the bounded wait every
    // lock has (DESIGN §6 S4).
    let slow_guard = match lock.try_lock() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => Some(store::lock(&lock_path)?),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io("cannot lock the event log", e))
        }
    };
    let fast = slow_guard.is_none();
    let network = *a
        .network
        .get_or_insert_with(|| crate::netfs::network_fs(&home.coordination()).is_some());
    if network {
        a.log = None;
    }
    let res = append_locked(home, &mut a.log, &path, lines, &rotation);
    if network {
        // Closing writes the lines back to the server before the lock is let go.
        a.log = None;
    }
    if fast {
        if let Some((lock, _)) = a.lock.as_ref() {
            let _ = lock.unlock();
        }
    }
    drop(slow_guard);
    if res.is_err() {
        // Whatever went wrong, the next append starts from fresh descriptors.
        a.log = None;
        a.lock = None;
    }
    res
}

/// The appends themselves, under the lock: rotation by size, and a log rotated or removed
/// by another process is opened again.
fn append_locked(
    home: &Home,
    log: &mut Option<(std::fs::File, (u64, u64))>,
    path: &std::path::Path,
    lines: &[Vec<u8>],
    rotation: &Rotation,
) -> Result<()> {
    for line in lines {
        let current = match std::fs::symlink_metadata(path) {
            Ok(m) => Some((dev_ino(&m), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("cannot stat {}", path.display()), e)),
        };
        let size = current.map(|c| c.1).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > rotation.max_bytes {
            rotate(home, rotation.keep)?;
            *log = None;
        } else if current.map(|c| c.0) != log.as_ref().map(|l| l.1) {
            *log = None;
        }
        if log.is_none() {
            let f = store::open_log(path)?;
            let id = dev_ino(&f.metadata().ctx("stat", path)?);
            *log = Some((f, id));
        }
        if let Some((f, _)) = log.as_mut() {
            f.write_all(line).ctx("append to", path)?;
        }
    }
    Ok(())
}

fn rotate(home: &Home, keep: u32) -> Result<()> {
    let oldest = home.rotated_events_path(keep);
    let _ = std::fs::remove_file(&oldest);
    for n in (1..keep).rev() {
        let from = home.rotated_events_path(n);
        if from.exists() {
            std::fs::rename(&from, home.rotated_events_path(n + 1)).ctx("rotate", &from)?;
        }
    }
    let cur = home.events_path();
    std::fs::rename(&cur, home.rotated_events_path(1)).ctx("rotate", &cur)?;
    Ok(())
}

/// Moves a bad file into `quarantine/` (with its `.reason`) and logs `spec_quarantined`:
/// the one way every scanner (doctor, monitor, cleanup, task queue) sets a file aside.
pub fn quarantine(home: &Home, path: &std::path::Path, why: &str) -> Result<std::path::PathBuf> {
    let q = store::quarantine(home, path, why)?;
    emit(
        home,
        Event::new(
            EventType::SpecQuarantined,
            format!("quarantined {}: {why}", path.display()),
        )
        .with("path", path.display().to_string())
        .with("quarantined_as", q.display().to_string())
        .with("reason", why),
    );
    Ok(q)
}

/// Appends one JSON line to another JSONL file (restart history), under a lock named after it.
pub fn append_jsonl(
    home: &Home,
    path: &std::path::Path,
    lock_name: &str,
    value: &Value,
) -> Result<()> {
    let mut line =
        serde_json::to_vec(value).map_err(|e| Error::Internal(format!("serialise: {e}")))?;
    line.push(b'\n');
    let _guard = store::lock(&home.named_lock(lock_name))?;
    let mut f = store::open_log(path)?;
    f.write_all(&line).ctx("append to", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_compact_and_valid() {
        let e = Event::new(EventType::WorkerSpawned, "spawned").with("tokens", 5);
        let line = e.to_line().unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "worker_spawned");
        assert_eq!(v["data"]["tokens"], 5);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn all_types_are_in_the_schema() {
        for t in EventType::ALL {
            Event::new(*t, "x").to_line().unwrap();
        }
        assert_eq!(EventType::ALL.len(), 46);
    }

    #[test]
    fn rotation_keeps_every_line() {
        let (_dir, home) = crate::home::test_home();
        let policy = home.policy_path();
        let mut p: Value =
            serde_json::from_str(&std::fs::read_to_string(&policy).unwrap()).unwrap();
        p["events"]["max_bytes"] = 2048.into();
        p["events"]["keep"] = 50.into();
        std::fs::write(&policy, p.to_string()).unwrap();
        for i in 0..100 {
            append(&home, &Event::new(EventType::TaskEnqueued, format!("n{i}"))).unwrap();
        }
        let mut lines = 0;
        for n in 0..=50 {
            let path = if n == 0 {
                home.events_path()
            } else {
                home.rotated_events_path(n)
            };
            if let Ok(t) = std::fs::read_to_string(&path) {
                assert!(t.len() <= 2048);
                lines += t.lines().count();
            }
        }
        assert_eq!(lines, 100);
        assert!(home.rotated_events_path(1).exists());
    }
}
