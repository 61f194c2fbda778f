//! `task-queue work`: the flags of the loop, and what ties it to a worker's lifecycle when
//! the loop runs as (or for) a corral worker: its beats and, at the end, its completion.

use super::{beat, lease_or_default, poll_interval, refuse_dead_worker, secs, WorkArgs};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::lifecycle;
use crate::queue;
use crate::queue::policy::{policy_doc, policy_secs};
use crate::queue::work::{Liveness, NoSpec, Work, WorkOptions, WorkSummary};
use crate::spec::Status;

/// The work loop's beats for a worker spec (`lifecycle::heartbeat`).
struct SpecBeats<'h> {
    home: &'h Home,
    worker: String,
}

impl Liveness for SpecBeats<'_> {
    fn beat(&mut self, task: Option<&str>, jobs: u64) -> bool {
        let status = if task.is_some() {
            Status::Running
        } else {
            Status::Idle
        };
        match beat(self.home, &self.worker, status, task, jobs) {
            Ok(()) => {
                tracing::debug!("heartbeat sent - status: {status}");
                true
            }
            Err(Error::Conflict(m)) => {
                tracing::info!("{m}");
                false
            }
            Err(e) => {
                tracing::warn!("heartbeat failed: {e}");
                true
            }
        }
    }

    fn is_worker(&self) -> bool {
        true
    }
}

pub(super) fn work(home: &Home, a: WorkArgs) -> Result<()> {
    let set = crate::process::signals::block(&crate::process::signals::STOP_AND_RELOAD)?;
    let doc = policy_doc(home);
    let opts = WorkOptions {
        worker: a.worker.clone(),
        classes: a.classes.clone(),
        command: a.command.clone(),
        max_tasks: a.max_tasks,
        idle_exit: secs("--idle-exit", &a.idle_exit)?,
        lease: lease_or_default(home, &a.lease)?,
        heartbeat_interval: secs("--heartbeat-interval", &Some(a.heartbeat_interval.clone()))?
            .unwrap_or(5.0),
        task_timeout: secs("--task-timeout", &a.task_timeout)?.filter(|s| *s > 0.0),
        kill_grace: match secs("--kill-grace", &a.kill_grace)? {
            Some(g) => g,
            None => policy_secs(&doc, "grace_seconds").unwrap_or(5.0),
        },
        poll_interval: poll_interval(home, &a.poll_interval)?,
    };
    refuse_dead_worker(home, &a.worker)?;
    let summary = if queue::is_active_worker(home, &a.worker) {
        let live = SpecBeats {
            home,
            worker: a.worker.clone(),
        };
        run_loop(Work::new(home, opts, live)?, set)?
    } else {
        run_loop(Work::new(home, opts, NoSpec)?, set)?
    };
    if queue::is_active_worker(home, &a.worker) && !summary.stopped && !summary.worker_gone {
        complete_if_own_process(home, &a.worker, summary.tasks);
    }
    Ok(())
}

fn run_loop<L: Liveness>(w: Work<'_, L>, set: nix::sys::signal::SigSet) -> Result<WorkSummary> {
    let stopper = w.stopper();
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            tracing::info!("received {sig:?}: finishing the current task, then exiting");
            stopper.stop();
        }
    });
    w.run()
}

/// When this loop is the worker's own launched process (`exec task-queue work …`) and it
/// ends by itself (`--idle-exit`, `--max-tasks`), the worker has finished: report completion,
/// so the monitor does not take the exit for a crash and restart it. On SIGTERM the stopper
/// records the stop instead; a loop run by some other process of the worker leaves the
/// worker's fate to that process.
fn complete_if_own_process(home: &Home, worker: &str, done: u64) {
    let own = crate::spec::load(home, worker)
        .ok()
        .and_then(|l| l.spec.process.map(|p| p.pid))
        == Some(std::process::id() as i32);
    if !own {
        return;
    }
    let summary = format!("work loop ended after {done} task(s)");
    match lifecycle::complete_worker(home, worker, Some(&summary)) {
        Ok(_) => tracing::info!("worker {worker} completed: {summary}"),
        Err(Error::Conflict(m)) => tracing::debug!("not completing {worker}: {m}"),
        Err(e) => tracing::warn!("cannot complete worker {worker}: {e}"),
    }
}
