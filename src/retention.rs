//! Retention: `archived/` and the worker logs grow forever unless something removes them.
//! [`purge_archived`] deletes archived specs older than a cutoff together with their logs
//! (`agents/logs/workers/<id>/`) and lock files, and the logs of workers that no longer have
//! a spec at all (removed by hand, as the runbook's emergency kill does) once those logs are
//! older than the cutoff. Nothing live is touched: only `archived/` specs are removed, each
//! under its worker lock and re-checked there, so a concurrent cleanup or a second purge
//! can never remove something twice or half.
//!
//! The age of an archived spec is the time it was archived (its last history entry), else
//! when it ended (`completed_at`, `exit.at`), else its last update, else the file's mtime.
//! `corral purge --archived-older-than 30d` is the front end; the monitor can run the same
//! function on its policy key [`POLICY_KEY`].

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::spec::{self, WorkerSpec};
use crate::store::{self, ReadError};
use crate::time::{self, Timestamp};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Heartbeat-policy key (seconds; absent or 0: never) for purging from the monitor.
pub const POLICY_KEY: &str = "purge_archived_after_seconds";

/// The policy's purge age, when it sets one.
pub fn policy_after(p: &crate::policy::HeartbeatPolicy) -> Option<f64> {
    p.extra
        .get(POLICY_KEY)
        .and_then(serde_json::Value::as_f64)
        .filter(|s| *s > 0.0 && s.is_finite())
}

/// One removed (or, in a dry run, removable) worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Purged {
    pub worker_id: String,
    /// `archived` (spec and logs) or `orphan_logs` (logs of a worker with no spec).
    pub what: &'static str,
    #[serde(with = "time::serde_ts::option")]
    pub ended_at: Option<Timestamp>,
    pub log_bytes: u64,
}

/// What a purge did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub older_than_seconds: f64,
    pub purged: Vec<Purged>,
    /// Specs in `archived/` that could not be read (left alone; `corral doctor` reports them).
    pub skipped: Vec<String>,
    pub bytes_freed: u64,
}

/// When an archived worker counts from (see the module docs).
pub fn archived_at(s: &WorkerSpec, path: &Path) -> Option<Timestamp> {
    s.history
        .last()
        .map(|h| h.at)
        .or(s.completed_at)
        .or(s.exit.as_ref().map(|e| e.at))
        .or(s.updated_at)
        .or_else(|| mtime(path))
}

fn mtime(path: &Path) -> Option<Timestamp> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(chrono::DateTime::<chrono::Utc>::from(m))
}

fn dir_bytes(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Newest modification time of anything under `p`.
fn newest(p: &Path) -> Option<Timestamp> {
    walkdir::WalkDir::new(p)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| mtime(e.path()))
        .max()
}

fn remove_logs(home: &Home, id: &str) -> Result<()> {
    let dir = home.worker_log_dir(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", dir.display()), e)),
    }
}

/// Removes archived workers (spec, logs, lock files) that ended more than `older_than`
/// seconds before `now`, and logs without a spec that old. With `dry_run` nothing is removed.
pub fn purge_archived(
    home: &Home,
    older_than: f64,
    now: Timestamp,
    dry_run: bool,
) -> Result<PurgeReport> {
    let older_than = time::check_secs("--archived-older-than", older_than)?;
    let cutoff = time::add_secs(now, -older_than);
    let mut report = PurgeReport {
        dry_run,
        older_than_seconds: older_than,
        ..Default::default()
    };
    let dir = home.specs_dir(StateDir::Archived);
    for name in store::list_json(&dir)? {
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if crate::id::validate("worker", id).is_err() {
            continue;
        }
        let path = dir.join(&name);
        let _g = spec::lock(home, id)?;
        let s = match spec::read_for_scan(&path) {
            Ok(s) => s,
            Err(ReadError::Missing) => continue,
            Err(_) => {
                report.skipped.push(id.to_string());
                continue;
            }
        };
        let Some(at) = archived_at(&s, &path).filter(|t| *t < cutoff) else {
            continue;
        };
        let log_bytes = dir_bytes(&home.worker_log_dir(id));
        if !dry_run {
            remove_logs(home, id)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot remove {}", path.display()), e)),
            }
            store::fsync_dir(&dir)?;
            // Lock files hold no state; the spec is gone, so a later locker finds nothing.
            let _ = std::fs::remove_file(home.alive_lock(id));
        }
        report.bytes_freed += log_bytes;
        report.purged.push(Purged {
            worker_id: id.to_string(),
            what: "archived",
            ended_at: Some(at),
            log_bytes,
        });
        if !dry_run {
            drop(_g);
            let _ = std::fs::remove_file(home.worker_lock(id));
        }
    }
    purge_orphan_logs(home, cutoff, dry_run, &mut report)?;
    Ok(report)
}

fn purge_orphan_logs(
    home: &Home,
    cutoff: Timestamp,
    dry_run: bool,
    report: &mut PurgeReport,
) -> Result<()> {
    let Some(root) = home.worker_log_dir("x").parent().map(PathBuf::from) else {
        return Ok(());
    };
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot list {}", root.display()), e)),
    };
    for e in rd.flatten() {
        let Some(id) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) || crate::id::validate("worker", &id).is_err() {
            continue;
        }
        if spec::locate(home, &id).is_some() {
            continue;
        }
        let Some(at) = newest(&e.path()).filter(|t| *t < cutoff) else {
            continue;
        };
        // Re-checked under the lock: a spawn with this very id may have just written one.
        let g = spec::lock(home, &id)?;
        if spec::locate(home, &id).is_some() {
            continue;
        }
        let log_bytes = dir_bytes(&e.path());
        if !dry_run {
            remove_logs(home, &id)?;
        }
        drop(g);
        if !dry_run {
            let _ = std::fs::remove_file(home.worker_lock(&id));
        }
        report.bytes_freed += log_bytes;
        report.purged.push(Purged {
            worker_id: id,
            what: "orphan_logs",
            ended_at: Some(at),
            log_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archived(home: &Home, id: &str, at: &str) {
        let mut s = WorkerSpec::new(id.into(), "build-worker".into(), time::parse(at).unwrap());
        s.status = crate::spec::Status::Completed;
        s.history[0].at = time::parse(at).unwrap();
        spec::save(home, StateDir::Archived, &s).unwrap();
        std::fs::create_dir_all(home.worker_log_dir(id)).unwrap();
        std::fs::write(home.worker_log(id), "line\n").unwrap();
    }

    #[test]
    fn old_archived_workers_go_with_their_logs() {
        let (_d, home) = crate::home::test_home();
        let now = time::parse("2026-12-31T00:00:00Z").unwrap();
        archived(&home, "w-old", "2026-10-01T00:00:00Z");
        archived(&home, "w-new", "2026-12-30T00:00:00Z");
        let dry = purge_archived(&home, 30.0 * 86_400.0, now, true).unwrap();
        assert_eq!(dry.purged.len(), 1);
        assert!(
            home.worker_log("w-old").exists(),
            "a dry run removes nothing"
        );
        let r = purge_archived(&home, 30.0 * 86_400.0, now, false).unwrap();
        assert_eq!(r.purged[0].worker_id, "w-old");
        assert_eq!(r.bytes_freed, 5);
        assert!(!home.spec_path(StateDir::Archived, "w-old").exists());
        assert!(!home.worker_log_dir("w-old").exists());
        assert!(home.spec_path(StateDir::Archived, "w-new").exists());
        assert!(home.worker_log("w-new").exists());
        let again = purge_archived(&home, 30.0 * 86_400.0, now, false).unwrap();
        assert!(again.purged.is_empty(), "idempotent");
        assert!(purge_archived(&home, f64::INFINITY, now, true).is_err());
    }

    #[test]
    fn logs_of_live_workers_are_never_orphans() {
        let (_d, home) = crate::home::test_home();
        let now = time::now();
        let live = WorkerSpec::new("w-live".into(), "build-worker".into(), now);
        spec::save(&home, StateDir::Active, &live).unwrap();
        for id in ["w-live", "w-gone"] {
            std::fs::create_dir_all(home.worker_log_dir(id)).unwrap();
            std::fs::write(home.worker_log(id), "x").unwrap();
        }
        let later = time::add_secs(now, 3600.0);
        let r = purge_archived(&home, 60.0, later, false).unwrap();
        assert_eq!(r.purged.len(), 1, "{r:?}");
        assert_eq!(
            (r.purged[0].worker_id.as_str(), r.purged[0].what),
            ("w-gone", "orphan_logs")
        );
        assert!(home.worker_log("w-live").exists());
    }
}
