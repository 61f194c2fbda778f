//! `coordination/metrics/monitor.json`: who is watching this home, and since when. Operators
//! (`corral status`, a cron check, a human with `jq`) read it to tell a live monitor from a
//! dead one without `ps`: `last_pass_at` older than a few seconds means the daemon is stuck
//! or gone. Written atomically at start, at most every [`WRITE_EVERY_MS`] while running, and
//! at the end of a `--once` pass; `stopped_at` is set on a clean exit, so the next monitor
//! knows whether its predecessor died in the middle of something ([`predecessor_crashed`]).

use crate::error::{Error, Result};
use crate::home::Home;
use crate::store;
use crate::time::{self, Timestamp};
use serde::Serialize;

/// Shortest time between two writes of the status file while the daemon runs.
pub const WRITE_EVERY_MS: i64 = 5_000;

/// The file's name under `metrics/`.
pub const FILE_NAME: &str = "monitor.json";

/// Daemon or a single `--once` pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Daemon,
    Once,
}

/// A worker lock held by another process, as `monitor.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldLockReport {
    pub worker_id: String,
    /// The lock file's path.
    pub lock: String,
    /// Since when the monitor has found it held.
    #[serde(with = "time::serde_ts")]
    pub since: Timestamp,
    pub held_seconds: f64,
}

/// Event lines the monitor could not write yet (the event lock is held).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventsBacklog {
    pub lines: usize,
    pub bytes: usize,
    pub waiting_seconds: f64,
    /// Events refused because the in-memory backlog was full.
    pub dropped: u64,
    /// The lock file's path.
    pub lock: String,
}

/// The content of `monitor.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorStatus {
    pub pid: u32,
    pub host: String,
    pub boot_id: String,
    #[serde(with = "time::serde_ts")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde_ts")]
    pub last_pass_at: Timestamp,
    pub mode: Mode,
    pub log_file: String,
    pub version: String,
    pub workers_watched: usize,
    pub poll_interval_seconds: Option<f64>,
    /// Worker locks another process has held past the warning time (as long as a CLI
    /// would wait, `CORRAL_LOCK_TIMEOUT`): those workers' state cannot be recorded.
    pub held_locks: Vec<HeldLockReport>,
    /// Event lines waiting in memory for `.locks/events.lock` (held by another process);
    /// `null` when none wait.
    pub events_backlog: Option<EventsBacklog>,
    /// Set when the monitor ended cleanly; `null` while it runs (or after it crashed).
    #[serde(with = "time::serde_ts::option")]
    pub stopped_at: Option<Timestamp>,
}

impl MonitorStatus {
    /// The status of this process, started at `now`.
    pub fn new(home: &Home, mode: Mode, poll_interval_seconds: Option<f64>) -> MonitorStatus {
        let now = time::now();
        MonitorStatus {
            pid: std::process::id(),
            host: crate::process::host_name(),
            boot_id: crate::process::boot_id(),
            started_at: now,
            last_pass_at: now,
            mode,
            log_file: home
                .daemon_log_dir()
                .join("heartbeat-monitor.log")
                .display()
                .to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            workers_watched: 0,
            poll_interval_seconds,
            held_locks: Vec::new(),
            events_backlog: None,
            stopped_at: None,
        }
    }
}

/// Where the status file lives.
pub fn path(home: &Home) -> std::path::PathBuf {
    home.metrics_dir().join(FILE_NAME)
}

/// True when the last monitor on this home did not end cleanly: its status file says it
/// was running. (The caller holds the singleton lock, so that monitor is gone.)
pub fn predecessor_crashed(home: &Home) -> bool {
    match store::read_json(&path(home)) {
        Ok(v) => v.get("stopped_at").is_some_and(serde_json::Value::is_null),
        Err(_) => false,
    }
}

/// Writes the status file atomically.
pub fn write(home: &Home, st: &MonitorStatus) -> Result<()> {
    let v = serde_json::to_value(st).map_err(|e| Error::Internal(e.to_string()))?;
    store::atomic_write(home, &path(home), &store::to_pretty(&v)?)
}

/// Paces the writes: true when a write is due at `now_ms` (and records it).
#[derive(Debug, Default, Clone)]
pub struct Pacer {
    last_ms: Option<i64>,
}

impl Pacer {
    /// True when the last write is at least [`WRITE_EVERY_MS`] old (or there was none).
    pub fn due(&mut self, now_ms: i64) -> bool {
        if self
            .last_ms
            .is_some_and(|l| now_ms.saturating_sub(l) < WRITE_EVERY_MS)
        {
            return false;
        }
        self.last_ms = Some(now_ms);
        true
    }

    /// When the next write may happen.
    pub fn next_ms(&self) -> Option<i64> {
        self.last_ms.map(|l| l.saturating_add(WRITE_EVERY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_with_the_documented_fields() {
        let (_dir, home) = crate::home::test_home();
        let mut st = MonitorStatus::new(&home, Mode::Once, Some(2.0));
        st.workers_watched = 3;
        write(&home, &st).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path(&home)).unwrap()).unwrap();
        for k in [
            "pid",
            "host",
            "boot_id",
            "started_at",
            "last_pass_at",
            "mode",
            "log_file",
            "version",
            "workers_watched",
            "poll_interval_seconds",
            "held_locks",
            "events_backlog",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["mode"], "once");
        assert_eq!(v["workers_watched"], 3);
        assert_eq!(v["pid"], std::process::id());
        assert!(
            predecessor_crashed(&home),
            "running, as far as the file says"
        );
        st.stopped_at = Some(time::now());
        write(&home, &st).unwrap();
        assert!(!predecessor_crashed(&home));
        std::fs::remove_file(path(&home)).unwrap();
        assert!(!predecessor_crashed(&home), "no monitor before");
    }

    #[test]
    fn writes_are_paced() {
        let mut p = Pacer::default();
        assert!(p.due(1_000));
        assert!(!p.due(1_000 + WRITE_EVERY_MS - 1));
        assert_eq!(p.next_ms(), Some(1_000 + WRITE_EVERY_MS));
        assert!(p.due(1_000 + WRITE_EVERY_MS));
    }
}
