//! The worker loop (`task-queue work`): claim (sleeping on inotify), run the command with
//! the task JSON on stdin, keep the claim alive meanwhile, record the outcome, repeat.
//!
//! One `poll` per running task watches everything that can end or change it: the child's
//! exit (pidfd), its stdout (the result), its stdin (the task, written as the child reads
//! it), the task file (a `cancel` rewrites it), a stop request ([`Stopper`], which the
//! binary's signal thread uses on SIGTERM/SIGINT), the task's timeout and the next
//! heartbeat. The command runs in its own process group, so a stop, a cancel or a timeout
//! signals everything it started: SIGTERM, then SIGKILL after `kill_grace`.
//!
//! One task, one run at a time (a run outliving its claim would overlap the next one):
//! - a task taken from the loop while its command runs (requeued by hand or by maintenance,
//!   claimed by another, its lease not renewable) stops the command the same way and
//!   records nothing (`outcome=lost`);
//! - the command gets SIGKILL from the kernel when the loop dies (`PR_SET_PDEATHSIG`, set
//!   in the child before exec; the loop's one thread spawns and waits for every command);
//! - that reaches the command only, not its children, so a task claimed before is run
//!   only once no process of this host still carries its `CORRAL_TASK_ID` (`leftovers`:
//!   SIGTERM, `kill_grace`, SIGKILL).
//!
//! Outcomes: exit 0 completes (stdout is the result: JSON if it parses, else a string; past
//! 1 MiB a marker with the size of all of it); any other exit fails (retry or dead letter);
//! a timeout fails with `task_timed_out`; a cancellation records `task_cancelled`; a stop
//! requeues the task unless the command still exited 0; a lost task records nothing. The
//! command's stderr goes where the loop's does (a launched worker's log), between two
//! marker lines per task:
//!
//! ```text
//! --- corral task <task_id> start <rfc3339>
//! --- corral task <task_id> end <rfc3339> exit=<code|signal:N> outcome=<completed|failed|requeued|cancelled|timed_out|lost>
//! ```
//!
//! Durability: a claim costs no sync; recording an outcome syncs the new content before it
//! replaces the claim record (a reader never sees a torn file), and the destination
//! directories are synced as a group — when the loop goes idle, every 100 ms, and when it
//! ends (`moves::defer_moves`). A power cut can only undo the last moves before a group
//! sync, which leaves those tasks in `processing/` to be run again: at-least-once, as DESIGN
//! §8 promises, at one sync per task instead of two.
//!
//! The spec of a worker running the loop is told where it stands through [`Liveness`]
//! (provided by the layer above, which owns worker lifecycles); beats are coalesced so a
//! stream of short tasks does not rewrite the spec twice per task.

use super::claim::Claimer;
use super::moves::{self, costs, Costs};
use super::policy::QueuePolicy;
use super::task::{result_marker, Task};
use super::transitions::{self, Caller};
use super::watch::{Waker, Watcher};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::time;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a completion recorded by the loop waits for its directory sync.
const GROUP_COMMIT: Duration = Duration::from_millis(100);

/// What the loop runs and how.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// The claimant (a worker id, or any name).
    pub worker: String,
    /// Classes in preference order (empty: all).
    pub classes: Vec<String>,
    /// The command per task (argv, no shell).
    pub command: Vec<String>,
    /// Stop after this many tasks.
    pub max_tasks: Option<u64>,
    /// Stop after this many seconds with nothing to claim.
    pub idle_exit: Option<f64>,
    /// Lease of a claimant that is not a worker (renewed while the command runs).
    pub lease: f64,
    /// Seconds between heartbeats or lease renewals.
    pub heartbeat_interval: f64,
    /// Default per-task timeout (a task's own `timeout_seconds` wins).
    pub task_timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL when stopping a command.
    pub kill_grace: f64,
    /// Also re-read the queue (and the running task) this often (network filesystems).
    pub poll_interval: Option<f64>,
}

/// What the worker's spec should say (the layer above turns this into a heartbeat).
pub trait Liveness {
    /// `task`: the task being run (None: idle); `jobs`: tasks finished since the last
    /// beat. Returns false when the worker may not go on (its spec left `active/`, or it is
    /// shutting down).
    fn beat(&mut self, task: Option<&str>, jobs: u64) -> bool;
    /// True when beats mean anything (a worker spec); false for a plain name, whose claims
    /// live by their lease instead.
    fn is_worker(&self) -> bool;
}

/// A claimant with no spec: nothing to beat.
pub struct NoSpec;

impl Liveness for NoSpec {
    fn beat(&mut self, _: Option<&str>, _: u64) -> bool {
        true
    }
    fn is_worker(&self) -> bool {
        false
    }
}

/// Asks a running loop to stop: the command gets SIGTERM, the loop records the outcome and
/// returns. Clone it into a signal thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Waker,
}

impl Stopper {
    /// Requests the stop (idempotent).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether a stop was requested.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// What a run of the loop did, and where its time went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkSummary {
    pub tasks: u64,
    pub completed: u64,
    pub failed: u64,
    pub requeued: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    /// Tasks taken from the loop while their command ran (requeued, claimed by another):
    /// their command was stopped and no outcome recorded.
    pub lost: u64,
    /// The loop ended because its spec left `active/` (or was told to shut down).
    pub worker_gone: bool,
    /// The loop ended on a stop request.
    pub stopped: bool,
    pub elapsed_seconds: f64,
    /// Seconds spent claiming (the claim attempts that found a task).
    pub claim_seconds: f64,
    /// Seconds spent starting commands (fork/exec).
    pub spawn_seconds: f64,
    /// Seconds commands ran (spawn to exit).
    pub run_seconds: f64,
    /// Seconds spent recording outcomes (complete/fail, with their syncs and events).
    pub record_seconds: f64,
    /// Seconds spent in beats (worker specs) or lease renewals.
    pub beat_seconds: f64,
    /// This process's syncs and event appends during the run.
    pub costs: Costs,
}

/// Why a command was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Shutdown,
    Cancel,
    Timeout,
    /// The command could not be started: the task goes back, the loop ends.
    Unrunnable,
    /// The task is no longer this loop's (requeued by hand or by maintenance, claimed by
    /// another, moved on): the command is stopped and nothing is recorded.
    Lost,
}

/// How a run of the command ended.
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    /// Bytes the command printed on stdout (all of them, kept or not).
    stdout_bytes: u64,
    truncated: bool,
    stopped: Option<StopReason>,
    took: f64,
}

/// The loop.
pub struct Work<'h, L: Liveness> {
    home: &'h Home,
    opts: WorkOptions,
    live: L,
    claimer: Claimer,
    stopper: Stopper,
    policy: QueuePolicy,
    interval: Duration,
    last_beat: Instant,
    beat_task: Option<String>,
    jobs_unreported: u64,
    /// Watches the running task's file (a cancellation rewrites it).
    task_watch: Option<Watcher>,
    /// Why the command could not be started, once it could not: the loop's error.
    unrunnable: Option<Error>,
    sum: WorkSummary,
}

impl<'h, L: Liveness> Work<'h, L> {
    /// Sets up the claimer and its watch (so no enqueue after this is missed). Every
    /// duration is checked here, before anything is claimed.
    pub fn new(home: &'h Home, opts: WorkOptions, live: L) -> Result<Work<'h, L>> {
        if opts.command.is_empty() {
            return Err(Error::Invalid("work needs a command to run".into()));
        }
        // A command that cannot start is refused before any claim (exit 6): run anyway, it
        // would fail every task of the queue, each attempt in a millisecond.
        let cwd = std::env::current_dir().map_err(|e| Error::io("cannot read the cwd", e))?;
        crate::process::resolve_program(
            &opts.command[0],
            &cwd,
            std::env::var_os("PATH").as_deref(),
        )?;
        for (what, v) in [
            ("--lease", Some(opts.lease)),
            ("--heartbeat-interval", Some(opts.heartbeat_interval)),
            ("--idle-exit", opts.idle_exit),
            ("--task-timeout", opts.task_timeout),
            ("--kill-grace", Some(opts.kill_grace)),
            ("--poll-interval", opts.poll_interval),
        ] {
            if let Some(v) = v {
                time::check_secs(what, v)?;
            }
        }
        let mut claimer = Claimer::new(home, &opts.worker, &opts.classes, opts.lease)?;
        claimer.poll_every(opts.poll_interval)?;
        let waker = claimer.watch()?;
        let mut interval = time::duration(opts.heartbeat_interval.max(0.05));
        if interval.as_secs_f64() > opts.lease / 3.0 {
            interval = time::duration((opts.lease / 3.0).max(0.05));
        }
        Ok(Work {
            home,
            policy: QueuePolicy::load(home),
            stopper: Stopper {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            claimer,
            live,
            opts,
            interval,
            last_beat: Instant::now(),
            beat_task: None,
            jobs_unreported: 0,
            task_watch: None,
            unrunnable: None,
            sum: WorkSummary::default(),
        })
    }

    /// A handle that stops the loop from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Beats when the worker goes from idle to busy or back, or the interval passed (a new
    /// task right after the last one is reported with the next beat, so a stream of short
    /// tasks costs no spec write each); false: the loop must end.
    fn beat(&mut self, task: Option<&str>, force: bool) -> bool {
        if !self.live.is_worker() {
            return true;
        }
        let changed = self.beat_task.is_some() != task.is_some();
        if !force && !changed && self.last_beat.elapsed() < self.interval {
            return true;
        }
        let t = Instant::now();
        let jobs = std::mem::take(&mut self.jobs_unreported);
        let ok = self.live.beat(task, jobs);
        self.sum.beat_seconds += t.elapsed().as_secs_f64();
        self.last_beat = Instant::now();
        self.beat_task = task.map(str::to_string);
        ok
    }

    /// Makes the deferred moves durable (a failure is logged: the tasks are whole, a power
    /// cut may only run them again).
    fn flush(&mut self) {
        if let Err(e) = moves::flush_moves() {
            tracing::warn!("cannot sync the completed tasks' directories: {e}");
        }
    }

    /// Runs until `max_tasks`, `idle_exit`, a stop, or the worker's spec leaving `active/`.
    pub fn run(mut self) -> Result<WorkSummary> {
        let started = Instant::now();
        let costs0 = costs();
        tracing::info!(
            "worker {} starting main loop (classes: {}, {})",
            self.opts.worker,
            if self.opts.classes.is_empty() {
                "all".to_string()
            } else {
                self.opts.classes.join(", ")
            },
            if self.live.is_worker() {
                "heartbeating its spec"
            } else {
                "not a worker spec: holding leases"
            }
        );
        let mut idle_since = Instant::now();
        let mut alive = self.beat(None, true);
        // Group commit: completions are durable when the loop goes idle, every
        // GROUP_COMMIT, and when it ends (see `moves::defer_moves`).
        moves::defer_moves(true);
        let mut last_flush = Instant::now();
        while alive && !self.stopper.stopped() {
            if last_flush.elapsed() >= GROUP_COMMIT {
                self.flush();
                last_flush = Instant::now();
            }
            if self.opts.max_tasks.is_some_and(|m| self.sum.tasks >= m) {
                tracing::info!("{} tasks done (--max-tasks)", self.sum.tasks);
                break;
            }
            // A task ready now is taken without a beat in between.
            let t = Instant::now();
            let mut task = self.claimer.try_claim()?;
            if task.is_some() {
                self.sum.claim_seconds += t.elapsed().as_secs_f64();
            } else {
                // Going to sleep: what was done is made durable, and the spec says idle
                // (and how many jobs were done).
                self.flush();
                last_flush = Instant::now();
                alive = self.beat(None, self.jobs_unreported > 0);
                if !alive {
                    break;
                }
                let idle_deadline = self.opts.idle_exit.map(|s| idle_since + time::duration(s));
                let mut deadline = idle_deadline;
                if self.live.is_worker() {
                    let beat_at = Instant::now() + self.interval;
                    deadline = Some(deadline.map_or(beat_at, |d| d.min(beat_at)));
                }
                task = self.claimer.claim_wait(deadline)?;
                if task.is_none() {
                    if self.stopper.stopped() {
                        break;
                    }
                    if idle_deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::info!(
                            "nothing to claim for {}s (--idle-exit)",
                            self.opts.idle_exit.unwrap_or(0.0)
                        );
                        break;
                    }
                    alive = self.beat(None, true);
                    continue;
                }
            }
            let Some(task) = task else { continue };
            tracing::info!(
                "claimed {} task {} ({})",
                task.class,
                task.task_id,
                task.priority.as_str()
            );
            alive = self.beat(Some(&task.task_id), false);
            let out = self.run_task(&task)?;
            let t = Instant::now();
            let outcome = self.finish(&task, &out);
            self.sum.record_seconds += t.elapsed().as_secs_f64();
            marker(&format!(
                "--- corral task {} end {} exit={} outcome={outcome}",
                task.task_id,
                time::format(&time::now()),
                match (out.code, out.signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("signal:{s}"),
                    _ => "unknown".into(),
                }
            ));
            if self.unrunnable.is_some() {
                break;
            }
            if outcome == "lost" {
                // Not done by this loop: not counted against --max-tasks nor as a job.
                continue;
            }
            self.sum.tasks += 1;
            self.jobs_unreported += 1;
            idle_since = Instant::now();
        }
        self.flush();
        moves::defer_moves(false);
        if !alive {
            self.sum.worker_gone = true;
        }
        // Whatever is left to report.
        if alive && self.jobs_unreported > 0 {
            self.beat(None, true);
        }
        self.sum.stopped = self.stopper.stopped();
        self.sum.elapsed_seconds = started.elapsed().as_secs_f64();
        let c = costs();
        self.sum.costs = Costs {
            fsyncs: c.fsyncs - costs0.fsyncs,
            fsync_ns: c.fsync_ns - costs0.fsync_ns,
            events: c.events - costs0.events,
            event_ns: c.event_ns - costs0.event_ns,
        };
        let s = &self.sum;
        let per = |x: f64| {
            if s.tasks > 0 {
                1000.0 * x / s.tasks as f64
            } else {
                0.0
            }
        };
        tracing::info!(
            "worker {} shutting down - completed {} tasks ({:.1} tasks/s; per task: claim {:.2} ms, spawn {:.2} ms, run {:.2} ms, record {:.2} ms, beats {:.2} ms; {} fsyncs {:.2} ms, {} events {:.2} ms)",
            self.opts.worker,
            s.tasks,
            if s.elapsed_seconds > 0.0 { s.tasks as f64 / s.elapsed_seconds } else { 0.0 },
            per(s.claim_seconds),
            per(s.spawn_seconds),
            per(s.run_seconds),
            per(s.record_seconds),
            per(s.beat_seconds),
            s.costs.fsyncs,
            s.costs.fsync_ns as f64 / 1e6 / s.tasks.max(1) as f64,
            s.costs.events,
            s.costs.event_ns as f64 / 1e6 / s.tasks.max(1) as f64,
        );
        match self.unrunnable.take() {
            Some(e) => Err(e),
            None => Ok(self.sum),
        }
    }

    /// Beats or renews the lease; Err(why) when the lease shows the task is no longer ours.
    fn keepalive_busy(&mut self, task: &Task) -> std::result::Result<(), String> {
        let t = Instant::now();
        let mut res = Ok(());
        if self.live.is_worker() {
            if !self.beat(Some(&task.task_id), true) {
                self.stopper.stop();
            }
        } else {
            match transitions::renew_lease(
                self.home,
                &task.task_id,
                &self.opts.worker,
                self.opts.lease,
            ) {
                Ok(_) => {}
                Err(e @ (Error::Conflict(_) | Error::NotFound(_))) => {
                    res = Err(format!("its lease cannot be renewed: {e}"))
                }
                Err(e) => tracing::warn!("cannot renew the lease on {}: {e}", task.task_id),
            }
        }
        self.sum.beat_seconds += t.elapsed().as_secs_f64();
        res
    }

    /// Says (log and stderr marker context) that the running task was taken from this loop.
    fn lost_task(&self, task: &Task, why: &str) {
        tracing::warn!(
            "task {} is no longer ours ({why}): stopping its command, recording nothing",
            task.task_id
        );
    }

    fn finish(&mut self, task: &Task, out: &Outcome) -> &'static str {
        let me = Caller::worker(&self.opts.worker);
        let id = &task.task_id;
        let cmd0 = &self.opts.command[0];
        let (res, outcome) = match out.stopped {
            Some(StopReason::Lost) => {
                // Whoever has the task now records its outcome; this run's is dropped.
                self.sum.lost += 1;
                tracing::warn!(
                    "task {id}: the command of a run that lost the task was stopped; nothing recorded"
                );
                return "lost";
            }
            Some(StopReason::Unrunnable) => (
                transitions::requeue(
                    self.home,
                    id,
                    Some(&me),
                    &format!(
                        "worker {}: {}",
                        self.opts.worker,
                        String::from_utf8_lossy(&out.stdout)
                    ),
                )
                .map(|_| ()),
                "requeued",
            ),
            Some(StopReason::Cancel) => (
                transitions::finish_cancel(self.home, id, &me).map(|_| ()),
                "cancelled",
            ),
            Some(StopReason::Timeout) => {
                let secs = task
                    .timeout_seconds
                    .or(self.opts.task_timeout)
                    .unwrap_or(0.0);
                self.sum.timed_out += 1;
                (
                    transitions::fail_with(
                        self.home,
                        id,
                        &me,
                        Some(format!(
                            "timed out after {secs}s ({cmd0} stopped after {:.1}s)",
                            out.took
                        )),
                        false,
                        &self.policy,
                    )
                    .map(|_| ()),
                    "timed_out",
                )
            }
            _ if out.code == Some(0) => {
                let result = match serde_json::from_slice::<Value>(&out.stdout) {
                    Ok(v) if !out.truncated => v,
                    _ if out.truncated => {
                        // Too long to keep: the task file's marker, with the size of all the
                        // command printed and the start of it.
                        result_marker(&String::from_utf8_lossy(&out.stdout), out.stdout_bytes)
                    }
                    _ => {
                        let text = String::from_utf8_lossy(&out.stdout);
                        let text = text.strip_suffix('\n').unwrap_or(&text);
                        Value::String(text.to_string())
                    }
                };
                tracing::info!("task {id} completed");
                (
                    transitions::complete(self.home, id, &me, Some(result)).map(|_| ()),
                    "completed",
                )
            }
            Some(StopReason::Shutdown) => {
                tracing::info!("task {id} interrupted by shutdown: returning it to the queue");
                (
                    transitions::requeue(
                        self.home,
                        id,
                        Some(&me),
                        &format!("worker {} stopped before finishing", self.opts.worker),
                    )
                    .map(|_| ()),
                    "requeued",
                )
            }
            None => {
                let why = match (out.code, out.signal) {
                    (Some(c), _) => format!("{cmd0} exited with code {c}"),
                    (None, Some(s)) => format!("{cmd0} killed by signal {s}"),
                    _ => format!("{cmd0} ended abnormally"),
                };
                tracing::info!("task {id} failed: {why}");
                (
                    transitions::fail_with(self.home, id, &me, Some(why), false, &self.policy)
                        .map(|_| ()),
                    "failed",
                )
            }
        };
        match (&res, outcome) {
            (Ok(()), "completed") => self.sum.completed += 1,
            (Ok(()), "failed") | (Ok(()), "timed_out") => self.sum.failed += 1,
            (Ok(()), "requeued") => self.sum.requeued += 1,
            (Ok(()), "cancelled") => self.sum.cancelled += 1,
            _ => {}
        }
        if let Err(e) = res {
            // The monitor may have requeued it (lease ran out): someone else has it now.
            tracing::error!("cannot record the outcome of {id}: {e}");
            return "unrecorded";
        }
        outcome
    }
}

/// One marker line on stderr, written with a single `write(2)` so it never interleaves.
fn marker(line: &str) {
    let mut l = String::with_capacity(line.len() + 1);
    l.push_str(line);
    l.push('\n');
    let _ = std::io::stderr().lock().write_all(l.as_bytes());
}

mod fence;
mod run;
#[cfg(test)]
mod tests;
