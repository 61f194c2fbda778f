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

/// `CORRAL_EVENTS_MAX_BYTES` and `CORRAL_EVENTS_KEEP`, checked against the ranges of the
/// policy schema (S5): `None` where unset, exit 6 naming the variable where out of range or
/// not a number (a bad value was silently ignored, and 1 byte rotated on every write).
pub fn env_rotation() -> Result<(Option<u64>, Option<u32>)> {
    let get = |name: &str, min: u64, max: u64| -> Result<Option<u64>> {
        let Ok(raw) = std::env::var(name) else {
            return Ok(None);
        };
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(Error::Invalid(format!(
                "{name}={raw:?}: not a whole number in {min}..={max}"
            ))),
        }
    };
    let max_bytes = get("CORRAL_EVENTS_MAX_BYTES", MIN_MAX_BYTES, MAX_MAX_BYTES)?;
    let keep = get("CORRAL_EVENTS_KEEP", 1, u64::from(MAX_KEEP))?;
    Ok((max_bytes, keep.map(|k| k as u32)))
}

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
        match env_rotation() {
            Ok((max_bytes, keep)) => {
                r.max_bytes = max_bytes.unwrap_or(r.max_bytes);
                r.keep = keep.unwrap_or(r.keep);
            }
            Err(e) => {
                // Logging itself must not fail: say it once, and keep the policy's.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| tracing::warn!("{e}; using the policy's event rotation"));
            }
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
    if let Some(d) = deferred_for(home) {
        return d.push(lines);
    }
    write_now(home, lines, Wait::Bounded, &mut 0).map(|_| ())
}

/// How an append waits for `.locks/events.lock` when another process holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The bounded wait every CLI lock has (`CORRAL_LOCK_TIMEOUT`, DESIGN §6 S4).
    Bounded,
    /// Not at all: `Ok(false)` and nothing written.
    Try,
    /// Until it is free (the deferred writer's own thread, which nothing else waits on).
    Blocking,
}

/// Writes `lines` under the event lock; `Ok(false)` when `wait` is [`Wait::Try`] and the
/// lock is held. `done` counts the lines written, also when a later one fails.
fn write_now(home: &Home, lines: &[Vec<u8>], wait: Wait, done: &mut usize) -> Result<bool> {
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
        let guard = match wait {
            Wait::Try => match store::try_lock(&lock_path)? {
                Some(g) => g,
                None => return Ok(false),
            },
            Wait::Bounded => store::lock(&lock_path)?,
            // As long as it takes: a bounded wait that ran out is simply waited again.
            Wait::Blocking => loop {
                match store::lock(&lock_path) {
                    Ok(g) => break g,
                    Err(Error::LockTimeout { .. }) => continue,
                    Err(e) => return Err(e),
                }
            },
        };
        let f = guard.file().try_clone().ctx("dup", &lock_path)?;
        let id = dev_ino(&f.metadata().ctx("stat", &lock_path)?);
        drop(guard);
        a.lock = Some((f, id));
    }
    let Some((lock, _)) = a.lock.as_ref() else {
        return Err(Error::Internal("event lock vanished".into()));
    };
    // The common case is a free lock; a held one is waited for with the bounded wait every
    // lock has (DESIGN §6 S4), or not at all, or (the deferred writer) until it is free.
    let slow_guard = match lock.try_lock() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => match wait {
            Wait::Bounded => Some(store::lock(&lock_path)?),
            Wait::Try => return Ok(false),
            Wait::Blocking => {
                // The kernel queues this wait fairly and wakes it when the holder lets go.
                lock.lock()
                    .map_err(|e| Error::io(format!("cannot lock {}", lock_path.display()), e))?;
                None
            }
        },
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
    let res = append_locked(home, &mut a.log, &path, lines, &rotation, done);
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
    res.map(|()| true)
}

/// The appends themselves, under the lock: rotation by size, and a log rotated or removed
/// by another process is opened again.
fn append_locked(
    home: &Home,
    log: &mut Option<(std::fs::File, (u64, u64))>,
    path: &std::path::Path,
    lines: &[Vec<u8>],
    rotation: &Rotation,
    done: &mut usize,
) -> Result<()> {
    for line in lines {
        let current = match std::fs::symlink_metadata(path) {
            Ok(m) => Some((dev_ino(&m), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("cannot stat {}", path.display()), e)),
        };
        let mut size = current.map(|c| c.1).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > rotation.max_bytes {
            rotate(home, rotation.keep)?;
            *log = None;
            size = 0;
        } else if current.map(|c| c.0) != log.as_ref().map(|l| l.1) {
            *log = None;
        }
        if log.is_none() {
            let f = store::open_log(path)?;
            let id = dev_ino(&f.metadata().ctx("stat", path)?);
            *log = Some((f, id));
        }
        if let Some((f, _)) = log.as_mut() {
            store::append_line(f, size, line).ctx("append to", path)?;
            *done += 1;
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

// ---------------------------------------------------------------------------------------
// Deferred appends: a process that must never wait for `.locks/events.lock` (the monitor
// daemon, DESIGN §6 S4: any CLI, or `flock .locks/events.lock sleep 60`, can hold it).

/// How much a deferring process keeps in memory while the event lock is held (bytes of
/// lines, about 60,000 events); beyond it new events are refused with an error.
pub const DEFERRED_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Lines waiting for the event lock, in the order they were appended.
#[derive(Default)]
struct Backlog {
    lines: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of `lines` and of the batch being written.
    bytes: usize,
    /// Lines the writer thread took and is writing now.
    in_flight: usize,
    /// Since when lines have been waiting (none while nothing waits).
    since: Option<std::time::Instant>,
    /// Lines refused because the backlog was full, since it last drained.
    dropped: u64,
    /// No more lines will come: the writer ends once the backlog is empty.
    closed: bool,
}

/// The deferred appends of one home: the backlog and the thread that writes it.
struct Deferred {
    home: Home,
    events_path: std::path::PathBuf,
    max_bytes: usize,
    backlog: std::sync::Mutex<Backlog>,
    /// Signalled when lines are queued (or the backlog is closed).
    more: std::sync::Condvar,
    /// Signalled when the backlog drained.
    drained: std::sync::Condvar,
}

static DEFERRED: std::sync::Mutex<Vec<std::sync::Arc<Deferred>>> =
    std::sync::Mutex::new(Vec::new());

fn deferred_for(home: &Home) -> Option<std::sync::Arc<Deferred>> {
    let all = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    if all.is_empty() {
        return None;
    }
    let path = home.events_path();
    all.iter().find(|d| d.events_path == path).cloned()
}

/// From now on this process never waits for the event lock of `home`: an append finds it
/// free and writes at once, or finds it held and queues the lines in memory (returning at
/// once), and a writer thread appends them, in order, as soon as the holder lets go. While
/// lines wait, later appends queue behind them, so the log keeps this process's order.
/// At most [`DEFERRED_MAX_BYTES`] wait; appends beyond that fail with an error naming the
/// lock. End with [`stop_deferring`], which gives the backlog a bounded time to drain.
pub fn defer_when_busy(home: &Home) -> Result<()> {
    defer_with(home, DEFERRED_MAX_BYTES)
}

fn defer_with(home: &Home, max_bytes: usize) -> Result<()> {
    let mut all = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    let path = home.events_path();
    if all.iter().any(|d| d.events_path == path) {
        return Ok(());
    }
    let d = std::sync::Arc::new(Deferred {
        home: home.clone(),
        events_path: path,
        max_bytes,
        backlog: std::sync::Mutex::new(Backlog::default()),
        more: std::sync::Condvar::new(),
        drained: std::sync::Condvar::new(),
    });
    let writer = d.clone();
    std::thread::Builder::new()
        .name("event-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| Error::Internal(format!("cannot start the event writer thread: {e}")))?;
    all.push(d);
    Ok(())
}

/// Waits up to `timeout` for the lines still waiting to be written; returns how many are
/// left (0: all written). Deferral goes on.
pub fn flush_deferred(home: &Home, timeout: std::time::Duration) -> usize {
    match deferred_for(home) {
        Some(d) => d.flush(timeout),
        None => 0,
    }
}

/// Ends deferral for `home` after waiting up to `timeout` for the backlog to drain; returns
/// the number of lines that could not be written in that time (the writer thread keeps
/// trying while the process lives).
pub fn stop_deferring(home: &Home, timeout: std::time::Duration) -> usize {
    let Some(d) = deferred_for(home) else {
        return 0;
    };
    let left = d.flush(timeout);
    DEFERRED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|x| !std::sync::Arc::ptr_eq(x, &d));
    let mut b = d.lock();
    b.closed = true;
    d.more.notify_all();
    left
}

/// What waits for the event lock in a deferring process.
#[derive(Debug, Clone, PartialEq)]
pub struct BacklogState {
    /// Lines not written yet.
    pub lines: usize,
    pub bytes: usize,
    /// How long the oldest of them has waited.
    pub waiting_seconds: f64,
    /// Events refused since the backlog last drained because it was full.
    pub dropped: u64,
}

/// The backlog of a deferring process, or `None` when nothing waits (or it does not defer).
pub fn backlog(home: &Home) -> Option<BacklogState> {
    let d = deferred_for(home)?;
    let b = d.lock();
    let lines = b.lines.len() + b.in_flight;
    (lines > 0 || b.dropped > 0).then(|| BacklogState {
        lines,
        bytes: b.bytes,
        waiting_seconds: b.since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        dropped: b.dropped,
    })
}

impl Deferred {
    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, lines: &[Vec<u8>]) -> Result<()> {
        let mut b = self.lock();
        if b.lines.is_empty() && b.in_flight == 0 {
            // Nothing waits: write now if the lock is free. The backlog stays locked
            // meanwhile, so no line of this process can overtake these.
            let mut done = 0;
            match write_now(&self.home, lines, Wait::Try, &mut done) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Written in part: the rest waits, and the writer reports a lasting error.
                Err(_) => return self.queue(&mut b, &lines[done.min(lines.len())..]),
            }
        }
        self.queue(&mut b, lines)
    }

    fn queue(&self, b: &mut Backlog, lines: &[Vec<u8>]) -> Result<()> {
        let n: usize = lines.iter().map(Vec::len).sum();
        if b.bytes.saturating_add(n) > self.max_bytes {
            b.dropped = b.dropped.saturating_add(lines.len() as u64);
            return Err(Error::Internal(format!(
                "event backlog full: {} line(s) ({} bytes, the limit) have waited {:.0} s for {}, held by another process; {} event(s) dropped since",
                b.lines.len() + b.in_flight,
                b.bytes,
                b.since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
                self.home.events_lock().display(),
                b.dropped
            )));
        }
        b.since.get_or_insert_with(std::time::Instant::now);
        b.lines.extend(lines.iter().cloned());
        b.bytes += n;
        self.more.notify_one();
        Ok(())
    }

    fn flush(&self, timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut b = self.lock();
        loop {
            let left = b.lines.len() + b.in_flight;
            let now = std::time::Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            b = self
                .drained
                .wait_timeout(b, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The writer thread: takes everything queued and appends it under one hold of the
    /// lock, waiting for the lock as long as it takes (the kernel wakes it when the holder
    /// lets go); an I/O error is retried with a growing pause, so no line is lost while
    /// the process lives.
    fn run(&self) {
        let mut failing: Option<String> = None;
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut b = self.lock();
                while b.lines.is_empty() && !b.closed {
                    b = self.more.wait(b).unwrap_or_else(|p| p.into_inner());
                }
                if b.lines.is_empty() {
                    return;
                }
                b.in_flight = b.lines.len();
                b.lines.drain(..).collect()
            };
            let bytes: usize = batch.iter().map(Vec::len).sum();
            let mut written = 0;
            let mut pause = std::time::Duration::from_millis(100);
            while written < batch.len() {
                let mut done = 0;
                match write_now(&self.home, &batch[written..], Wait::Blocking, &mut done) {
                    Ok(_) => {
                        written = batch.len();
                        if failing.take().is_some() {
                            tracing::info!("the event log is writable again");
                        }
                    }
                    Err(e) => {
                        written += done;
                        self.lock().in_flight = batch.len() - written;
                        let msg = e.to_string();
                        if failing.as_deref() != Some(msg.as_str()) {
                            tracing::error!(
                                "cannot append {} waiting event line(s) yet (kept in memory, retrying): {msg}",
                                batch.len() - written
                            );
                            failing = Some(msg);
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
            let mut b = self.lock();
            b.bytes = b.bytes.saturating_sub(bytes);
            b.in_flight = 0;
            if b.lines.is_empty() {
                if let Some(since) = b.since.take() {
                    let waited = since.elapsed().as_secs_f64();
                    if waited >= 1.0 {
                        tracing::info!(
                            "wrote the event line(s) that waited {waited:.1} s for {}",
                            self.home.events_lock().display()
                        );
                    }
                }
                if b.dropped > 0 {
                    tracing::error!(
                        "{} event(s) were dropped while the event backlog was full",
                        b.dropped
                    );
                    b.dropped = 0;
                }
                self.drained.notify_all();
            }
        }
    }
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
    let size = f.metadata().ctx("stat", path)?.len();
    store::append_line(&mut f, size, &line).ctx("append to", path)
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

    fn messages(home: &Home) -> Vec<String> {
        std::fs::read_to_string(home.events_path())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_deferring_process_never_waits_for_a_held_lock_and_loses_nothing() {
        let (_dir, home) = crate::home::test_home();
        defer_when_busy(&home).unwrap();
        append(&home, &Event::new(EventType::TaskEnqueued, "n0")).unwrap();
        assert_eq!(messages(&home), ["n0"], "a free lock: written at once");
        // Another open file of the lock: to flock, another process.
        let held = store::lock(&home.events_lock()).unwrap();
        let t = std::time::Instant::now();
        for i in 1..50 {
            append(&home, &Event::new(EventType::TaskEnqueued, format!("n{i}"))).unwrap();
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "waited {:?}",
            t.elapsed()
        );
        assert_eq!(messages(&home), ["n0"]);
        let b = backlog(&home).unwrap();
        assert_eq!(b.lines, 49);
        assert_eq!(b.dropped, 0);
        assert_eq!(
            flush_deferred(&home, std::time::Duration::from_millis(50)),
            49
        );
        drop(held);
        assert_eq!(flush_deferred(&home, std::time::Duration::from_secs(10)), 0);
        let want: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
        assert_eq!(messages(&home), want, "every line, in order");
        assert!(backlog(&home).is_none());
        // Lines that find the lock free again are written at once, after the backlog.
        append(&home, &Event::new(EventType::TaskEnqueued, "n50")).unwrap();
        assert_eq!(messages(&home).len(), 51);
        assert_eq!(stop_deferring(&home, std::time::Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_full_backlog_refuses_new_events_with_an_error_naming_the_lock() {
        let (_dir, home) = crate::home::test_home();
        let line = Event::new(EventType::TaskEnqueued, "x")
            .to_line()
            .unwrap()
            .len();
        defer_with(&home, line * 3 + line / 2).unwrap();
        let held = store::lock(&home.events_lock()).unwrap();
        for i in 0..3 {
            append(&home, &Event::new(EventType::TaskEnqueued, format!("{i}"))).unwrap();
        }
        let err = append(&home, &Event::new(EventType::TaskEnqueued, "3"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("backlog full") && err.contains("events.lock"),
            "{err}"
        );
        assert_eq!(backlog(&home).unwrap().dropped, 1);
        drop(held);
        assert_eq!(stop_deferring(&home, std::time::Duration::from_secs(10)), 0);
        assert_eq!(messages(&home), ["0", "1", "2"]);
        // No longer deferring: a held lock is waited for (bounded) again.
        assert!(deferred_for(&home).is_none());
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
