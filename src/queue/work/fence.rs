//! One task, one run at a time on this host: before a task claimed before runs again, what
//! is left of its earlier run (a loop that died or lost it) is stopped.

use super::{Liveness, StopReason, Work};
use crate::queue::task::Task;
use crate::time;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

impl<L: Liveness> Work<'_, L> {
    /// Stops the processes still carrying `CORRAL_TASK_ID=<this task>` on this host (an
    /// earlier run whose loop died or lost the task): SIGTERM, `kill_grace`, SIGKILL, and
    /// waits for them to be gone, so two runs of one task never overlap here.
    /// While it waits, the claim is kept alive; it gives up early on a stop request or when
    /// the task is no longer ours (that reason is returned).
    pub(super) fn fence(&mut self, task: &Task) -> Option<(StopReason, String)> {
        let procs = leftovers(&task.task_id);
        if procs.is_empty() {
            return None;
        }
        let pids: Vec<String> = procs.iter().map(|(p, _)| p.to_string()).collect();
        tracing::warn!(
            "task {} still has processes of an earlier run (pids {}): stopping them before running it again",
            task.task_id,
            pids.join(" ")
        );
        let signal_all = |sig: Signal| {
            for &(pid, ticks) in &procs {
                if same_process(pid, ticks) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        };
        let gone = || procs.iter().all(|&(p, t)| !same_process(p, t));
        let mut next_beat = Instant::now() + self.interval;
        let mut wait = |me: &mut Self, until: Instant| {
            while !gone() && Instant::now() < until {
                if me.stopper.stopped() {
                    return Some((StopReason::Shutdown, "stop requested".to_string()));
                }
                if Instant::now() >= next_beat {
                    if let Err(why) = me.keepalive_busy(task) {
                        return Some((StopReason::Lost, why));
                    }
                    next_beat = Instant::now() + me.interval;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        };
        signal_all(Signal::SIGTERM);
        let grace = Instant::now() + time::duration(self.opts.kill_grace);
        if let Some(r) = wait(self, grace) {
            return Some(r);
        }
        if !gone() {
            signal_all(Signal::SIGKILL);
            if let Some(r) = wait(self, Instant::now() + Duration::from_secs(5)) {
                return Some(r);
            }
        }
        if !gone() {
            tracing::error!(
                "processes of an earlier run of {} survived SIGKILL: running it anyway",
                task.task_id
            );
        }
        None
    }
}

/// Processes of this host (that this user may inspect) whose environment holds
/// `CORRAL_TASK_ID=<id>`, as (pid, start time): what is left of an earlier run of the
/// task. This process and its ancestors are left out (a loop run from inside a task).
pub(super) fn leftovers(id: &str) -> Vec<(i32, u64)> {
    let entry = format!("CORRAL_TASK_ID={id}");
    let me = std::process::id() as i32;
    let mut skip = vec![me];
    let mut p = me;
    while let Some(st) = crate::process::read_stat(p) {
        if st.ppid <= 1 || skip.len() > 64 {
            break;
        }
        skip.push(st.ppid);
        p = st.ppid;
    }
    crate::process::all_pids()
        .into_iter()
        .filter(|&pid| pid > 1 && !skip.contains(&pid))
        .filter(|&pid| crate::process::environ_has(pid, entry.as_bytes()))
        .filter_map(|pid| {
            let st = crate::process::read_stat(pid)?;
            (!matches!(st.state, 'Z' | 'X')).then_some((pid, st.start_time_ticks))
        })
        .collect()
}

/// `pid` is still the process that started at `ticks`, and not yet dead.
pub(super) fn same_process(pid: i32, ticks: u64) -> bool {
    crate::process::read_stat(pid)
        .is_some_and(|st| st.start_time_ticks == ticks && !matches!(st.state, 'Z' | 'X'))
}
