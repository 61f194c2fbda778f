//! `corral status`: the one screen an operator reads first, like `supervisorctl status` or
//! `pueue status`. Is anything watching the fleet, how many workers are where, what is left
//! of the budget, how deep is each queue class, and what needs a human (stuck tasks,
//! quarantined files, open circuit breakers, unresponsive workers).
//!
//! "Is the monitor running" is answered from the monitor's singleton lock
//! (`.locks/heartbeat-monitor.lock`), not from a pid file: the kernel drops a `flock` when its
//! holder dies, so a held lock means a live monitor and a free one means none, whatever
//! files a crash left behind. `/proc/locks` is asked first (it also names the holder's pid
//! and has no side effect); only when it does not list the lock (another host on a network
//! filesystem, no procfs) is a non-blocking `try_lock` taken and dropped at once. The
//! monitor's status file (`metrics/monitor.json`, written by the daemon) adds since when,
//! the last pass and its log file; a file without a held lock is stale.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir, TaskState};
use crate::policy::{HeartbeatPolicy, WorkerTypes};
use crate::time::{self, Timestamp};
use crate::view::workers;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// A monitor whose last pass is older than this is reported as stalled.
pub const STALE_PASS_SECONDS: f64 = 60.0;
/// A `--once` pass (cron mode) younger than this counts as the fleet being watched.
pub const CRON_PASS_SECONDS: f64 = 180.0;

/// What `metrics/monitor.json` says (every field optional: older or newer monitors).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MonitorFile {
    pub pid: Option<i64>,
    pub host: Option<String>,
    pub boot_id: Option<String>,
    pub started_at: Option<String>,
    pub last_pass_at: Option<String>,
    pub mode: Option<String>,
    pub log_file: Option<String>,
    pub version: Option<String>,
    pub workers_watched: Option<u64>,
    pub poll_interval_seconds: Option<f64>,
    /// Worker locks another process held past the monitor's warning time.
    #[serde(default)]
    pub held_locks: Vec<HeldLockSeen>,
    /// Event lines waiting in the monitor's memory for `.locks/events.lock`.
    pub events_backlog: Option<BacklogSeen>,
}

/// A held worker lock, as the monitor reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldLockSeen {
    pub worker_id: String,
    pub lock: String,
    pub since: Option<String>,
    pub held_seconds: Option<f64>,
}

/// The monitor's event backlog, as it reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BacklogSeen {
    pub lines: u64,
    pub waiting_seconds: f64,
    pub dropped: u64,
    pub lock: String,
}

/// Whether a heartbeat monitor watches this home.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorState {
    /// A monitor holds the singleton lock now.
    pub running: bool,
    /// How that was found: `lock held`, `lock free`, `never started` (no lock file).
    pub evidence: String,
    /// The lock holder's pid, when `/proc/locks` shows it.
    pub lock_pid: Option<i64>,
    /// The status file, when there is one.
    pub status_file: Option<MonitorFile>,
    /// Seconds since the last completed pass, from the status file.
    pub last_pass_age_seconds: Option<f64>,
    /// Running, but its last pass is older than [`STALE_PASS_SECONDS`].
    pub stalled: bool,
    /// Someone watches the fleet: a running, not stalled daemon, or a recent `--once` pass.
    pub watching: bool,
    /// The daemon's log file (from the status file, else the default name).
    pub log_file: String,
}

/// `(device, inode)` of a file in the form `/proc/locks` prints: `MAJ:MIN:INODE`, major
/// and minor in hex.
fn proc_locks_key(meta: &std::fs::Metadata) -> String {
    let dev = meta.dev();
    format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        meta.ino()
    )
}

/// The pid holding a `flock` on the file `key` names, from the text of `/proc/locks`.
pub fn lock_holder(proc_locks: &str, key: &str) -> Option<i64> {
    proc_locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 18568 fe:00:5358837 0 EOF"; blocked waiters show "->".
        let f = if f.get(1) == Some(&"->") {
            return None;
        } else {
            f
        };
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&key))
            .then(|| f.get(4).and_then(|p| p.parse().ok()))
            .flatten()
    })
}

/// Checks the monitor's singleton lock and reads its status file.
pub fn monitor_state(home: &Home, now: Timestamp) -> MonitorState {
    let path = home.named_lock("heartbeat-monitor");
    let status_file = read_monitor_file(home);
    let (running, evidence, lock_pid) = lock_check(&path);
    let last_pass_age_seconds = status_file
        .as_ref()
        .and_then(|f| f.last_pass_at.as_deref())
        .and_then(|t| time::parse(t).ok())
        .map(|t| time::secs_between(t, now).max(0.0));
    let stalled = running && last_pass_age_seconds.is_some_and(|a| a > STALE_PASS_SECONDS);
    let cron = status_file
        .as_ref()
        .is_some_and(|f| f.mode.as_deref() == Some("once"))
        && last_pass_age_seconds.is_some_and(|a| a <= CRON_PASS_SECONDS);
    let log_file = status_file
        .as_ref()
        .and_then(|f| f.log_file.clone())
        .unwrap_or_else(|| {
            home.daemon_log_dir()
                .join("heartbeat-monitor.log")
                .display()
                .to_string()
        });
    MonitorState {
        running,
        evidence: evidence.into(),
        lock_pid,
        status_file,
        last_pass_age_seconds,
        stalled,
        watching: (running && !stalled) || cron,
        log_file,
    }
}

/// Reads `metrics/monitor.json` field by field, so one field of an unexpected type (a newer
/// or older monitor) does not hide the others.
fn read_monitor_file(home: &Home) -> Option<MonitorFile> {
    let v = crate::store::read_json(&home.metrics_dir().join("monitor.json")).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    Some(MonitorFile {
        pid: v.get("pid").and_then(Value::as_i64),
        host: s("host"),
        boot_id: s("boot_id"),
        started_at: s("started_at"),
        last_pass_at: s("last_pass_at"),
        mode: s("mode"),
        log_file: s("log_file"),
        version: s("version").or_else(|| v.get("version").map(|x| x.to_string())),
        workers_watched: v.get("workers_watched").and_then(Value::as_u64),
        poll_interval_seconds: v.get("poll_interval_seconds").and_then(Value::as_f64),
        held_locks: v
            .get("held_locks")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|h| {
                        Some(HeldLockSeen {
                            worker_id: h.get("worker_id")?.as_str()?.to_string(),
                            lock: h.get("lock")?.as_str()?.to_string(),
                            since: h.get("since").and_then(Value::as_str).map(String::from),
                            held_seconds: h.get("held_seconds").and_then(Value::as_f64),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        events_backlog: v
            .get("events_backlog")
            .filter(|b| b.is_object())
            .map(|b| BacklogSeen {
                lines: b.get("lines").and_then(Value::as_u64).unwrap_or(0),
                waiting_seconds: b
                    .get("waiting_seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                dropped: b.get("dropped").and_then(Value::as_u64).unwrap_or(0),
                lock: b
                    .get("lock")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
    })
}

/// Seconds a lock the monitor reported has been held, counted to `now` from its `since`
/// (the status file is written every few seconds), else as reported.
fn held_for(h: &HeldLockSeen, now: Timestamp) -> f64 {
    h.since
        .as_deref()
        .and_then(|t| time::parse(t).ok())
        .map(|t| time::secs_between(t, now).max(0.0))
        .or(h.held_seconds)
        .unwrap_or(0.0)
}

/// Problems the running monitor reported about locks other processes hold.
fn lock_problems(m: &MonitorState, now: Timestamp, problems: &mut Vec<String>) {
    // Only a live monitor's report is current; a dead one's file says nothing of now.
    let Some(f) = m.status_file.as_ref().filter(|_| m.running && !m.stalled) else {
        return;
    };
    for h in &f.held_locks {
        problems.push(format!(
            "worker lock {} held by another process for {:.0}s: the monitor cannot record what happens to {} (a dead worker looks alive) until it is released",
            h.lock,
            held_for(h, now),
            h.worker_id
        ));
    }
    if let Some(b) = f
        .events_backlog
        .as_ref()
        .filter(|b| b.lines > 0 || b.dropped > 0)
    {
        problems.push(format!(
            "{} event line(s) waiting {:.0}s in the monitor's memory for {}, held by another process{}",
            b.lines,
            b.waiting_seconds,
            b.lock,
            if b.dropped > 0 {
                format!("; {} event(s) dropped (backlog full)", b.dropped)
            } else {
                String::new()
            }
        ));
    }
}

/// `(running, evidence, pid)`. The lock file is opened without creating it: a status query
/// must not leave files behind.
fn lock_check(path: &std::path::Path) -> (bool, &'static str, Option<i64>) {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let file = match open(true).or_else(|_| open(false)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (false, "never started", None)
        }
        Err(_) => return (false, "lock unreadable", None),
    };
    if let Ok(meta) = file.metadata() {
        if let Ok(text) = std::fs::read_to_string("/proc/locks") {
            if let Some(pid) = lock_holder(&text, &proc_locks_key(&meta)) {
                return (true, "lock held", Some(pid));
            }
        }
    }
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            (false, "lock free", None)
        }
        Err(std::fs::TryLockError::WouldBlock) => (true, "lock held", None),
        Err(std::fs::TryLockError::Error(_)) => (false, "lock unreadable", None),
    }
}

/// The warning for views read while nothing watches the fleet, or `None` when a monitor
/// does (or ran a `--once` pass recently).
pub fn stale_warning(home: &Home) -> Option<String> {
    let m = monitor_state(home, time::now());
    if m.watching {
        return None;
    }
    Some(if m.stalled {
        "warning: the heartbeat monitor has stopped making passes: statuses and health may be stale (see `corral status`)".to_string()
    } else {
        "warning: no heartbeat-monitor is running on this home: statuses and health are only what workers last wrote (see `corral status`)".to_string()
    })
}

/// Live workers a monitor should be watching: running, idle or shutting down, or launched
/// with a process (a pending spec without a process is only a record so far).
pub fn needs_watching(r: &workers::WorkerRow) -> bool {
    r.state_dir == StateDir::Active
        && (matches!(r.status.as_str(), "running" | "idle" | "shutting_down") || r.pid.is_some())
}

/// Workers per state directory and, for `active/`, per status and health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerCounts {
    pub by_state_dir: BTreeMap<String, u64>,
    pub active_by_status: BTreeMap<String, u64>,
    pub active_by_health: BTreeMap<String, u64>,
    /// Active workers a monitor should watch (see [`needs_watching`]).
    pub live: u64,
    pub unreadable_specs: u64,
}

/// An active worker that needs attention.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerBrief {
    pub worker_id: String,
    pub worker_type: String,
    pub status: String,
    pub health: String,
    pub heartbeat_age_seconds: Option<f64>,
}

/// One queue class.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassCounts {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub oldest_pending_seconds: Option<f64>,
}

/// A task processing longer than `stuck_task_seconds`.
#[derive(Debug, Clone, Serialize)]
pub struct StuckTask {
    pub task_id: String,
    pub class: String,
    pub claimed_by: Option<String>,
    pub processing_seconds: f64,
}

/// A restart circuit breaker, from `metrics/restart-state.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerState {
    pub worker_type: String,
    pub open: bool,
    pub consecutive_failures: u64,
    pub open_since: Option<String>,
}

/// A worker type with `replicas`: how many of its pool are running.
#[derive(Debug, Clone, Serialize)]
pub struct PoolState {
    pub worker_type: String,
    pub replicas: u32,
    pub running: u64,
}

/// The whole status report (`--format json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub home: String,
    #[serde(with = "time::serde_ts")]
    pub generated_at: Timestamp,
    pub monitor: MonitorState,
    pub workers: WorkerCounts,
    pub attention: Vec<WorkerBrief>,
    pub budget: Option<crate::budget::Budget>,
    pub queue: BTreeMap<String, ClassCounts>,
    pub queue_totals: BTreeMap<String, u64>,
    pub stuck_tasks: Vec<StuckTask>,
    pub stuck_task_seconds: f64,
    pub quarantined_files: u64,
    pub breakers: Vec<BreakerState>,
    pub pending_restarts: u64,
    pub pools: Vec<PoolState>,
    /// What needs a human; empty when healthy (exit 0), else exit 10.
    pub problems: Vec<String>,
}

/// Gathers the report. Nothing is written.
pub fn gather(home: &Home, now: Timestamp) -> Result<Status> {
    let mut problems = Vec::new();
    let monitor = monitor_state(home, now);
    let policy = HeartbeatPolicy::load(home).unwrap_or_else(|e| {
        problems.push(format!("the heartbeat policy is invalid: {e}"));
        HeartbeatPolicy::default()
    });

    let mut counts = WorkerCounts::default();
    let mut attention = Vec::new();
    let active = workers::load(home, &[StateDir::Active], now)?;
    // A file whose content names no worker, or another one, is no worker (S9): counted with
    // the unreadable ones rather than as a healthy worker of unknown type.
    let strays = active
        .rows
        .iter()
        .filter(|r| r.not_a_spec.is_some())
        .count();
    counts.unreadable_specs = (active.unreadable.len() + strays) as u64;
    for r in active.rows.iter().filter(|r| r.not_a_spec.is_none()) {
        *counts.active_by_status.entry(r.status.clone()).or_default() += 1;
        *counts.active_by_health.entry(r.health.clone()).or_default() += 1;
        if needs_watching(r) {
            counts.live += 1;
        }
        if matches!(r.health.as_str(), "unresponsive" | "unhealthy") {
            attention.push(WorkerBrief {
                worker_id: r.worker_id.clone(),
                worker_type: r.worker_type.clone(),
                status: r.status.clone(),
                health: r.health.clone(),
                heartbeat_age_seconds: r.heartbeat_age_seconds,
            });
        }
    }
    attention.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    counts
        .by_state_dir
        .insert("active".into(), (active.rows.len() - strays) as u64);
    for d in [StateDir::Completed, StateDir::Zombie, StateDir::Archived] {
        let n = crate::store::list_json(&home.specs_dir(d))?.len() as u64;
        counts.by_state_dir.insert(d.name().into(), n);
    }

    if counts.live > 0 && !monitor.watching {
        problems.push(if monitor.stalled {
            format!(
                "the heartbeat monitor (pid {}) has not finished a pass for {:.0}s: {} live worker(s) are not watched",
                monitor.lock_pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                monitor.last_pass_age_seconds.unwrap_or(0.0),
                counts.live
            )
        } else {
            format!(
                "no heartbeat-monitor is running: {} live worker(s) are not watched (start `heartbeat-monitor`)",
                counts.live
            )
        });
    }
    lock_problems(&monitor, now, &mut problems);
    let unresponsive = attention
        .iter()
        .filter(|a| a.health == "unresponsive")
        .count();
    if unresponsive > 0 {
        problems.push(format!(
            "{unresponsive} worker(s) unresponsive (no heartbeat past critical_seconds)"
        ));
    }
    if counts.unreadable_specs > 0 {
        problems.push(format!(
            "{} unreadable or invalid spec file(s) in active/ (run `corral doctor`)",
            counts.unreadable_specs
        ));
    }

    let budget = match crate::budget::read(home) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(format!("the token budget is unreadable: {e}"));
            None
        }
    };

    let (queue, queue_totals, stuck_tasks) = queue_figures(home, &policy, now)?;
    if !stuck_tasks.is_empty() {
        problems.push(format!(
            "{} task(s) processing longer than {}s",
            stuck_tasks.len(),
            policy.stuck_task_seconds
        ));
    }

    let quarantined_files = quarantined(home)?;
    if quarantined_files > 0 {
        problems.push(format!(
            "{quarantined_files} file(s) in quarantine/ (each has a .reason file; remove them once dealt with)"
        ));
    }

    let (breakers, pending_restarts) = restart_state(home);
    let open: Vec<&str> = breakers
        .iter()
        .filter(|b| b.open)
        .map(|b| b.worker_type.as_str())
        .collect();
    if !open.is_empty() {
        problems.push(format!(
            "restart circuit breaker open for {}",
            open.join(", ")
        ));
    }

    let pools = pools(home, &active.rows, &mut problems);

    Ok(Status {
        home: std::path::absolute(home.root())
            .unwrap_or_else(|_| home.root().to_path_buf())
            .display()
            .to_string(),
        generated_at: now,
        monitor,
        workers: counts,
        attention,
        budget,
        queue,
        queue_totals,
        stuck_tasks,
        stuck_task_seconds: policy.stuck_task_seconds,
        quarantined_files,
        breakers,
        pending_restarts,
        pools,
        problems,
    })
}

type QueueFigures = (
    BTreeMap<String, ClassCounts>,
    BTreeMap<String, u64>,
    Vec<StuckTask>,
);

/// Queue counts per class and the stuck tasks, through the queue's own `stats` and `list`.
fn queue_figures(home: &Home, policy: &HeartbeatPolicy, now: Timestamp) -> Result<QueueFigures> {
    let stats = crate::queue::stats(home, policy, now, false)?;
    let mut by_class: BTreeMap<String, ClassCounts> = BTreeMap::new();
    for (state, classes) in &stats.counts {
        for (class, n) in classes {
            let c = by_class.entry(class.clone()).or_default();
            match state.as_str() {
                "pending" => c.pending = *n,
                "processing" => c.processing = *n,
                "completed" => c.completed = *n,
                "failed" => c.failed = *n,
                _ => {}
            }
        }
    }
    for (class, age) in &stats.oldest_pending_by_class {
        by_class
            .entry(class.clone())
            .or_default()
            .oldest_pending_seconds = Some(*age);
    }
    let mut stuck = Vec::new();
    if stats.stuck > 0 {
        for t in crate::queue::list(home, TaskState::Processing, None)? {
            if let Some(secs) = t
                .processing_seconds(now)
                .filter(|s| *s > policy.stuck_task_seconds)
            {
                stuck.push(StuckTask {
                    task_id: t.task_id.clone(),
                    class: t.class.clone(),
                    claimed_by: t.claimed_by.clone(),
                    processing_seconds: secs,
                });
            }
        }
    }
    Ok((by_class, stats.totals, stuck))
}

/// Files moved aside (not counting their `.reason` notes).
fn quarantined(home: &Home) -> Result<u64> {
    let dir = home.quarantine_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
    };
    Ok(rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| !n.ends_with(".reason") && n != ".keep")
        })
        .count() as u64)
}

/// Breakers and the number of pending restarts, read leniently from the monitor's state.
fn restart_state(home: &Home) -> (Vec<BreakerState>, u64) {
    let Ok(v) = crate::store::read_json(&home.restart_state_path()) else {
        return (Vec::new(), 0);
    };
    let mut breakers: Vec<BreakerState> = v
        .get("breakers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(t, b)| {
                    let open_since = b
                        .get("open_since")
                        .and_then(Value::as_str)
                        .map(String::from);
                    BreakerState {
                        worker_type: t.clone(),
                        open: open_since.is_some(),
                        consecutive_failures: b
                            .get("consecutive_failures")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                        open_since,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    breakers.sort_by(|a, b| a.worker_type.cmp(&b.worker_type));
    let pending = v
        .get("pending")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len() as u64);
    (breakers, pending)
}

fn pools(home: &Home, active: &[workers::WorkerRow], problems: &mut Vec<String>) -> Vec<PoolState> {
    let types = match WorkerTypes::load(home) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("config/worker-types.json is invalid: {e}"));
            return Vec::new();
        }
    };
    types
        .types
        .iter()
        .filter_map(|(name, t)| {
            let replicas = t.replicas?;
            let session = crate::pool::session_for(name);
            let running = active
                .iter()
                .filter(|r| {
                    r.worker_type == *name
                        && r.session_id.as_deref() == Some(session.as_str())
                        && r.status != "shutting_down"
                })
                .count() as u64;
            Some(PoolState {
                worker_type: name.clone(),
                replicas,
                running,
            })
        })
        .collect()
}

/// The report as one screen of text.
pub fn render(s: &Status) -> String {
    use crate::view::human_duration as dur;
    let mut out = Vec::new();
    out.push(format!("corral status  {}", s.home));
    let m = &s.monitor;
    let f = m.status_file.clone().unwrap_or_default();
    let monitor = if m.running {
        let mut parts = vec![format!(
            "running (pid {}{})",
            m.lock_pid
                .or(f.pid)
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            f.host
                .as_deref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default()
        )];
        if let Some(since) = f.started_at.as_deref() {
            parts.push(format!("since {since}"));
        }
        match m.last_pass_age_seconds {
            Some(a) => parts.push(format!(
                "last pass {} ago{}",
                dur(a),
                if m.stalled { " (STALLED)" } else { "" }
            )),
            None => parts.push("last pass unknown".into()),
        }
        parts.push(format!("log {}", m.log_file));
        parts.join(", ")
    } else {
        let mut s = format!("NOT RUNNING ({})", m.evidence);
        if let Some(a) = m.last_pass_age_seconds {
            s.push_str(&format!(
                ", last {} pass {} ago",
                f.mode.as_deref().unwrap_or("monitor"),
                dur(a)
            ));
            if m.watching {
                s.push_str(" (cron mode)");
            }
        }
        s
    };
    out.push(format!("monitor     {monitor}"));
    let dirs = &s.workers.by_state_dir;
    let n = |k: &str| dirs.get(k).copied().unwrap_or(0);
    let by_status: Vec<String> = s
        .workers
        .active_by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push(format!(
        "workers     active {}{}  completed {}  zombie {}  archived {}",
        n("active"),
        if by_status.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_status.join(", "))
        },
        n("completed"),
        n("zombie"),
        n("archived")
    ));
    if !s.workers.active_by_health.is_empty() {
        let h: Vec<String> = s
            .workers
            .active_by_health
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push(format!("health      {}", h.join("  ")));
    }
    out.push(match &s.budget {
        Some(b) => format!(
            "budget      total {}  used {}  consumed {}  available {} ({:.0}%)",
            b.total,
            b.used,
            b.consumed,
            b.available,
            if b.total == 0 {
                0.0
            } else {
                b.available as f64 * 100.0 / b.total as f64
            }
        ),
        None => "budget      unreadable".into(),
    });
    let t = |k: &str| s.queue_totals.get(k).copied().unwrap_or(0);
    out.push(format!(
        "queue       pending {}  processing {}  completed {}  failed {}",
        t("pending"),
        t("processing"),
        t("completed"),
        t("failed")
    ));
    if !s.queue.is_empty() {
        let rows: Vec<Vec<String>> = s
            .queue
            .iter()
            .map(|(class, c)| {
                vec![
                    format!("  {class}"),
                    c.pending.to_string(),
                    c.processing.to_string(),
                    c.completed.to_string(),
                    c.failed.to_string(),
                    c.oldest_pending_seconds
                        .map(dur)
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push(crate::view::term::table(
            &[
                "  CLASS",
                "PENDING",
                "PROCESSING",
                "COMPLETED",
                "FAILED",
                "OLDEST",
            ],
            &rows,
        ));
    }
    let short = crate::lookup::short_ids(
        s.stuck_tasks
            .iter()
            .map(|t| t.task_id.as_str())
            .chain(s.stuck_tasks.iter().filter_map(|t| t.claimed_by.as_deref()))
            .chain(s.attention.iter().map(|a| a.worker_id.as_str())),
    );
    let show = |id: &str| short.get(id).cloned().unwrap_or_else(|| id.to_string());
    if s.stuck_tasks.is_empty() {
        out.push("stuck       none".into());
    } else {
        for (i, t) in s.stuck_tasks.iter().enumerate() {
            out.push(format!(
                "{}{} ({}) on {} for {}",
                if i == 0 {
                    "stuck       "
                } else {
                    "            "
                },
                show(&t.task_id),
                t.class,
                t.claimed_by
                    .as_deref()
                    .map(show)
                    .unwrap_or_else(|| "?".into()),
                dur(t.processing_seconds)
            ));
        }
    }
    for a in &s.attention {
        out.push(format!(
            "attention   {} ({}) {}, last beat {}",
            show(&a.worker_id),
            a.worker_type,
            a.health,
            a.heartbeat_age_seconds
                .map(|x| format!("{} ago", dur(x)))
                .unwrap_or_else(|| "never".into())
        ));
    }
    if m.running && !m.stalled {
        for (i, h) in f.held_locks.iter().enumerate() {
            out.push(format!(
                "{}{} held {} (worker {})",
                if i == 0 {
                    "locks       "
                } else {
                    "            "
                },
                h.lock,
                dur(held_for(h, s.generated_at)),
                show(&h.worker_id)
            ));
        }
    }
    out.push(format!("quarantine  {} file(s)", s.quarantined_files));
    let open: Vec<String> = s
        .breakers
        .iter()
        .filter(|b| b.open)
        .map(|b| {
            format!(
                "{} open since {}",
                b.worker_type,
                b.open_since.as_deref().unwrap_or("?")
            )
        })
        .collect();
    out.push(format!(
        "restarts    {} pending; breakers: {}",
        s.pending_restarts,
        if open.is_empty() {
            "none open".to_string()
        } else {
            open.join(", ")
        }
    ));
    if !s.pools.is_empty() {
        let p: Vec<String> = s
            .pools
            .iter()
            .map(|p| format!("{} {}/{}", p.worker_type, p.running, p.replicas))
            .collect();
        out.push(format!("pools       {}", p.join("  ")));
    }
    if s.problems.is_empty() {
        out.push("ok: no problems".into());
    } else {
        out.push(format!("{} problem(s):", s.problems.len()));
        for p in &s.problems {
            out.push(format!("  - {p}"));
        }
    }
    crate::view::term::escape(&out.join("\n")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_names_the_holder() {
        let text = "1: FLOCK  ADVISORY  WRITE 18568 fe:00:5358837 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 999 fe:00:42 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 fe:00:42 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 4242 fe:00:42 0 EOF\n";
        assert_eq!(lock_holder(text, "fe:00:42"), Some(4242));
        assert_eq!(lock_holder(text, "fe:00:5358837"), Some(18568));
        assert_eq!(lock_holder(text, "fe:00:1"), None);
    }

    #[test]
    fn the_lock_decides_not_the_file() {
        let (_d, home) = crate::home::test_home();
        let now = time::now();
        let m = monitor_state(&home, now);
        assert!(!m.running && !m.watching);
        assert_eq!(m.evidence, "never started");
        assert!(
            !home.named_lock("heartbeat-monitor").exists(),
            "a status query creates no lock file"
        );
        // A stale status file with a free lock: not running.
        std::fs::write(
            home.metrics_dir().join("monitor.json"),
            format!(
                r#"{{"pid": 1, "mode": "daemon", "last_pass_at": "{}"}}"#,
                time::format(&now)
            ),
        )
        .unwrap();
        let g = crate::store::lock(&home.named_lock("heartbeat-monitor")).unwrap();
        let m = monitor_state(&home, now);
        assert!(m.running && m.watching && !m.stalled, "{m:?}");
        assert_eq!(m.lock_pid, Some(std::process::id() as i64));
        drop(g);
        let m = monitor_state(&home, now);
        assert!(!m.running && !m.watching, "{m:?}");
        assert_eq!(m.evidence, "lock free");
        // Held but silent for long: stalled.
        let _g = crate::store::lock(&home.named_lock("heartbeat-monitor")).unwrap();
        let later = time::add_secs(now, STALE_PASS_SECONDS + 5.0);
        let m = monitor_state(&home, later);
        assert!(m.running && m.stalled && !m.watching, "{m:?}");
    }

    #[test]
    fn a_recent_once_pass_counts_as_watching() {
        let (_d, home) = crate::home::test_home();
        let now = time::now();
        std::fs::write(
            home.metrics_dir().join("monitor.json"),
            format!(
                r#"{{"mode": "once", "last_pass_at": "{}"}}"#,
                time::format(&now)
            ),
        )
        .unwrap();
        assert!(monitor_state(&home, now).watching);
        assert!(!monitor_state(&home, time::add_secs(now, CRON_PASS_SECONDS + 1.0)).watching);
    }
}
