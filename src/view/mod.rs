//! Views of a home for people and tools: the worker table, the event log (with rotation and
//! follow), the fleet dashboards (recent events, failures, sessions, lifecycles, jobs per
//! worker) as one summary, worker logs, the Prometheus textfile and the live terminal
//! dashboard.
//!
//! Everything here only *reads* the files of DESIGN.md §2 (the Prometheus file is the one
//! write, done atomically). Reads are display reads: a spec that is malformed or does not
//! match the schema is still shown as far as it can be understood, and a file that vanishes
//! between listing and reading is skipped, because a dashboard that refuses to draw while a
//! worker moves between directories is no dashboard. Validation on write stays the job of
//! `lifecycle`; quarantining bad files stays the monitor's.
//!
//! The layering puts `view` above `lifecycle`/`budget`/`queue` and below `monitor`, so the
//! heartbeat monitor can call [`write_prometheus`] on its own schedule. Task files are read
//! directly per DESIGN.md §8 so the views do not depend on the queue's in-process API.

pub mod eventlog;
pub mod logs;
pub mod prom;
pub mod summary;
pub mod tasks;
pub mod term;
pub mod watch;
pub mod workers;

use crate::error::Result;
use crate::home::Home;
use std::path::Path;

/// The Prometheus text exposition of the home's state (workers by status and type, health,
/// tokens, budget, queue depth, restarts, detections).
pub fn prometheus_text(home: &Home) -> Result<String> {
    prom::render(home, crate::time::now())
}

/// Writes [`prometheus_text`] atomically to `path` (node_exporter's textfile collector reads
/// the file at any moment, so it must never see a half-written one).
pub fn write_prometheus(home: &Home, path: &Path) -> Result<()> {
    crate::store::atomic_write(home, path, prometheus_text(home)?.as_bytes())
}

/// Seconds between two instants as a float (negative clock skew shows as 0).
pub(crate) fn secs_between(from: crate::time::Timestamp, to: crate::time::Timestamp) -> f64 {
    ((to - from).num_milliseconds() as f64 / 1000.0).max(0.0)
}

/// A duration in seconds for a table cell: `42s`, `7m05s`, `3h12m`, `2d04h`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(5.9), "5s");
        assert_eq!(human_duration(425.0), "7m05s");
        assert_eq!(human_duration(3.0 * 3600.0 + 720.0), "3h12m");
        assert_eq!(human_duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(human_duration(-3.0), "0s");
    }
}
