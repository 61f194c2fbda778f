//! CPU and RSS of a worker, over its whole process group (a wrapper script around a busy
//! child is busy), the threshold crossings that raise `threshold_violation`, and the orphan
//! rule. Readings come from one [`ProcTable`] scan per sampling round, shared by all workers;
//! the arithmetic is pure and unit-tested.

use super::group::ProcTable;
use crate::process::{self, ProcessInfo};
use serde_json::Value;
use std::collections::HashMap;

/// One reading of a worker's processes.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Seconds since boot when read (the clock process start times are counted in).
    pub at: f64,
    /// CPU ticks by (pid, start time) of each live member.
    pub ticks: HashMap<(i32, u64), u64>,
    pub rss_mb: f64,
    /// Start of the leader (or the earliest member), in seconds since boot.
    pub started: f64,
}

/// Seconds since boot.
pub fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Reads the leader `pid` and every live member of its group `pgid` from `table`; `None`
/// when none of them lives.
pub fn read(table: &ProcTable, pid: i32, pgid: Option<i32>, at: f64) -> Option<Reading> {
    let tps = process::ticks_per_second().max(1) as f64;
    let page_mb = process::page_size() as f64 / (1024.0 * 1024.0);
    let group = pgid.unwrap_or(pid);
    let members: Vec<_> = table
        .procs
        .iter()
        .filter(|p| p.live() && (p.pid == pid || (group > 1 && p.stat.pgid == group)))
        .collect();
    if members.is_empty() {
        return None;
    }
    let started = members
        .iter()
        .find(|p| p.pid == pid)
        .or_else(|| members.iter().min_by_key(|p| p.stat.start_time_ticks))
        .map(|p| p.stat.start_time_ticks as f64 / tps)
        .unwrap_or(at);
    Some(Reading {
        at,
        ticks: members
            .iter()
            .map(|p| {
                (
                    (p.pid, p.stat.start_time_ticks),
                    p.stat.utime.saturating_add(p.stat.stime),
                )
            })
            .collect(),
        rss_mb: members.iter().map(|p| p.stat.rss_pages as f64).sum::<f64>() * page_mb,
        started,
    })
}

/// CPU percent of the group since `prev` (members that started since count whole; members
/// that left are not counted), or over the group's life without an earlier reading, as `ps`
/// reports it.
pub fn cpu_percent(prev: Option<&Reading>, cur: &Reading, ticks_per_second: f64) -> Option<f64> {
    let tps = ticks_per_second.max(1.0);
    match prev {
        Some(p) => {
            let wall = cur.at - p.at;
            if wall <= 0.05 {
                return None;
            }
            let used: u64 = cur
                .ticks
                .iter()
                .map(|(k, t)| match p.ticks.get(k) {
                    Some(before) => t.saturating_sub(*before),
                    None if (k.1 as f64 / tps) >= p.at => *t,
                    None => 0,
                })
                .sum();
            Some((used as f64 / tps / wall * 100.0).max(0.0))
        }
        None => {
            let life = cur.at - cur.started;
            if life <= 0.01 {
                return None;
            }
            let used: u64 = cur.ticks.values().sum();
            Some((used as f64 / tps / life * 100.0).max(0.0))
        }
    }
}

/// Whether a reading crossed a threshold: `(over now, report it)`. A violation is reported
/// once when the value goes over, not again until it has come back under.
pub fn crossing(was_over: bool, value: f64, threshold: f64) -> (bool, bool) {
    let over = value > threshold;
    (over, over && !was_over)
}

/// True when new figures differ enough from the written ones to be worth a write (5 CPU
/// points, or 10 % of RSS and at least 1 MiB).
pub fn moved(old_cpu: Option<f64>, cpu: Option<f64>, old_rss: Option<f64>, rss: f64) -> bool {
    let cpu_moved = match (old_cpu, cpu) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => (a - b).abs() >= 5.0,
        _ => false,
    };
    let rss_moved = match old_rss {
        None => true,
        Some(a) => (a - rss).abs() >= (a * 0.1).max(1.0),
    };
    cpu_moved || rss_moved
}

/// The recorded parent of a worker, when one was given explicitly (`spawn-worker
/// --parent-pid`); a spec without one has no parent and is never an orphan.
pub fn recorded_parent(p: &ProcessInfo) -> Option<(i32, Option<u64>)> {
    let pid = p.parent_pid.filter(|pp| *pp > 1)?;
    let start = p
        .extra
        .get("parent_start_time_ticks")
        .and_then(Value::as_u64);
    Some((pid, start))
}

/// `Some(parent)` when the worker's recorded parent is gone (or its pid now names another
/// process, when the parent's start time was recorded).
pub fn orphaned(p: &ProcessInfo) -> Option<i32> {
    let (pid, start) = recorded_parent(p)?;
    match process::read_stat(pid) {
        None => Some(pid),
        Some(s) if s.state == 'Z' || s.state == 'X' => Some(pid),
        Some(s) if start.is_some_and(|t| t != s.start_time_ticks) => Some(pid),
        Some(_) => None,
    }
}

/// Rounds to one decimal, as written in specs.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Memory use in percent of `total_mb`.
pub fn mem_percent(rss_mb: f64, total_mb: Option<f64>) -> Option<f64> {
    total_mb.filter(|t| *t > 0.0).map(|t| rss_mb / t * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: f64, started: f64, ticks: &[((i32, u64), u64)]) -> Reading {
        Reading {
            at,
            ticks: ticks.iter().copied().collect(),
            rss_mb: 1.0,
            started,
        }
    }

    #[test]
    fn cpu_is_summed_over_the_group() {
        // 100 ticks a second. Leader idle, child busy for the whole second.
        let a = reading(10.0, 5.0, &[((1, 500), 2), ((2, 600), 100)]);
        let b = reading(11.0, 5.0, &[((1, 500), 2), ((2, 600), 200)]);
        assert_eq!(cpu_percent(Some(&a), &b, 100.0), Some(100.0));
        // A child born since the last reading counts whole; one that left does not.
        let c = reading(12.0, 5.0, &[((1, 500), 2), ((3, 1150), 50)]);
        assert_eq!(cpu_percent(Some(&b), &c, 100.0), Some(50.0));
        // Without an earlier reading: over the group's life.
        assert_eq!(
            cpu_percent(None, &a, 100.0),
            Some(102.0 / 100.0 / 5.0 * 100.0)
        );
        assert_eq!(cpu_percent(Some(&a), &a, 100.0), None, "no time passed");
    }

    #[test]
    fn a_wrapper_around_a_busy_child_is_busy() {
        use std::os::unix::process::CommandExt;
        let mut child = crate::process::command("sh")
            .args(["-c", "sh -c 'while :; do :; done' & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let t0 = uptime().unwrap();
        let a = read(&ProcTable::scan(), pid, Some(pid), t0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let t1 = uptime().unwrap();
        let b = read(&ProcTable::scan(), pid, Some(pid), t1).unwrap();
        assert_eq!(b.ticks.len(), 2, "leader and child");
        let cpu = cpu_percent(Some(&a), &b, process::ticks_per_second() as f64).unwrap();
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        let _ = child.wait();
        // The leader alone is idle; the group is not (a loaded machine still gives it time).
        assert!(cpu > 10.0, "cpu {cpu}");
        assert!(b.rss_mb > 0.0);
    }

    #[test]
    fn thresholds_report_once_per_crossing() {
        assert_eq!(crossing(false, 95.0, 90.0), (true, true));
        assert_eq!(crossing(true, 96.0, 90.0), (true, false));
        assert_eq!(crossing(true, 10.0, 90.0), (false, false));
        assert!(moved(None, Some(1.0), Some(10.0), 10.0));
        assert!(!moved(Some(1.0), Some(3.0), Some(100.0), 105.0));
        assert!(moved(Some(1.0), Some(3.0), Some(100.0), 111.0));
        assert_eq!(mem_percent(512.0, Some(1024.0)), Some(50.0));
        assert_eq!(mem_percent(512.0, Some(0.0)), None);
    }

    #[test]
    fn only_an_explicit_parent_makes_an_orphan() {
        let me = std::process::id() as i32;
        let mut p = ProcessInfo::default();
        assert_eq!(orphaned(&p), None, "no parent recorded: no parent");
        p.parent_pid = Some(me);
        assert_eq!(orphaned(&p), None, "parent alive");
        let my_start = process::read_stat(me).unwrap().start_time_ticks;
        p.extra
            .insert("parent_start_time_ticks".into(), (my_start + 1).into());
        assert_eq!(orphaned(&p), Some(me), "pid reused by another process");
        p.parent_pid = Some(i32::MAX);
        assert_eq!(orphaned(&p), Some(i32::MAX), "parent gone");
    }
}
