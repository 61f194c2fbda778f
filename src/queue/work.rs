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
use super::task::{Task, MAX_RESULT_BYTES};
use super::transitions::{self, Caller};
use super::watch::{Waker, Watcher};
use super::{layout, task_event};
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::home::{Home, TaskState};
use crate::store::ReadError;
use crate::time;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::AsFd;
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

    fn run_task(&mut self, task: &Task) -> Result<Outcome> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::process::Stdio;
        // A task run before (its claim lapsed, it was requeued) may still have processes
        // of that run on this host: they go before it runs again.
        if task.attempts > 1 {
            if let Some((reason, why)) = self.fence(task) {
                marker(&format!(
                    "--- corral task {} start {}",
                    task.task_id,
                    time::format(&time::now())
                ));
                if reason == StopReason::Lost {
                    self.lost_task(task, &why);
                }
                return Ok(Outcome {
                    code: None,
                    signal: None,
                    stdout: Vec::new(),
                    stdout_bytes: 0,
                    truncated: false,
                    stopped: Some(reason),
                    took: 0.0,
                });
            }
        }
        let argv = &self.opts.command;
        let mut cmd = crate::process::command(&argv[0]);
        cmd.args(&argv[1..])
            .env("CORRAL_TASK_ID", &task.task_id)
            .env("CORRAL_TASK_CLASS", &task.class)
            .env("CORRAL_WORKER_ID", &self.opts.worker)
            .env("CORRAL_HOME", self.home.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // The command dies with the loop (SIGKILL), so a loop that is killed cannot leave
        // it running while its task is requeued and run again elsewhere.
        let loop_pid = nix::unistd::getpid().as_raw();
        // SAFETY: die_with_loop only makes async-signal-safe calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || die_with_loop(loop_pid));
        }
        marker(&format!(
            "--- corral task {} start {}",
            task.task_id,
            time::format(&time::now())
        ));
        let input =
            serde_json::to_vec(&task.to_value()?).map_err(|e| Error::Internal(e.to_string()))?;
        let t0 = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Not runnable (it was when the loop started): the task is not at fault and
                // goes back for another worker; this loop ends, since every task would fail
                // the same way, each attempt in a millisecond.
                tracing::error!("cannot run {}: {e}", argv[0]);
                let why = format!("cannot run {}: {e}", argv[0]);
                self.unrunnable = Some(match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        Error::Invalid(format!("{why} (task {} requeued)", task.task_id))
                    }
                    _ => Error::io(format!("{why} (task {} requeued)", task.task_id), e),
                });
                return Ok(Outcome {
                    code: Some(127),
                    signal: None,
                    stdout_bytes: why.len() as u64,
                    stdout: why.into_bytes(),
                    truncated: false,
                    stopped: Some(StopReason::Unrunnable),
                    took: 0.0,
                });
            }
        };
        self.sum.spawn_seconds += t0.elapsed().as_secs_f64();
        let pid = child.id() as i32;
        // Until the command is waited for, leaving this function kills its group (an error
        // return here must not leave it running unwatched).
        let mut guard = GroupGuard(pid);
        let pidfd = crate::process::PidFd::open(pid)?;
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        for fd in [
            stdin.as_ref().map(|s| s.as_fd()),
            stdout.as_ref().map(|s| s.as_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd)?;
        }
        // The task file is watched for a cancellation (it is rewritten when one is asked).
        let processing = layout::state_path(self.home, TaskState::Processing, &task.task_id);
        // One watcher for the loop's life (taken out while the task runs).
        let mut tw = match self.task_watch.take() {
            Some(w) => w,
            None => Watcher::new()?,
        };
        let mut evs = Vec::new();
        tw.drain(&mut evs)?;
        let mut task_wd = tw.watch_file(&processing)?;
        let timeout = task
            .timeout_seconds
            .or(self.opts.task_timeout)
            .map(|s| t0 + time::duration(s));
        let poll_every = self.opts.poll_interval.map(time::duration);
        let mut written = 0usize;
        let mut out = Vec::new();
        let mut out_bytes = 0u64;
        let mut truncated = false;
        let mut stopped: Option<StopReason> = None;
        let mut kill_at: Option<Instant> = None;
        let mut next_beat = Instant::now() + self.interval;
        let mut next_poll = poll_every.map(|p| Instant::now() + p);
        let mut exited = pidfd.is_none();
        let (_, wake_fd) = self
            .claimer
            .watcher()
            .map(Watcher::fds)
            .ok_or_else(|| Error::Internal("the work loop's claimer has no watch".into()))?;
        let wake_fd = wake_fd
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", e))?;
        let mut buf = vec![0u8; 64 * 1024];
        // Why the task stopped being ours, when it just did.
        let mut lost: Option<String> = None;
        loop {
            if self.stopper.stopped() && stopped.is_none() {
                stopped = Some(StopReason::Shutdown);
                tracing::info!("stopping the command of {} (shutdown)", task.task_id);
                signal_group(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
            }
            if exited && stdout.is_none() {
                break;
            }
            let now = Instant::now();
            let mut until = next_beat;
            for d in [timeout.filter(|_| stopped.is_none()), kill_at, next_poll]
                .into_iter()
                .flatten()
            {
                until = until.min(d);
            }
            if exited {
                // Only stdout left to drain: do not wait on a grandchild that holds it.
                until = now;
            }
            let ms = until.saturating_duration_since(now).as_millis().min(60_000) as i32;
            let mut fds: Vec<PollFd> = Vec::with_capacity(6);
            let mut idx = [usize::MAX; 5];
            if let Some(s) = &stdout {
                idx[0] = fds.len();
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &stdin {
                idx[1] = fds.len();
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if let (Some(p), false) = (&pidfd, exited) {
                idx[2] = fds.len();
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            idx[3] = fds.len();
            fds.push(PollFd::new(tw.fds().0, PollFlags::POLLIN));
            idx[4] = fds.len();
            fds.push(PollFd::new(wake_fd.as_fd(), PollFlags::POLLIN));
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::io("poll(work)", e.into())),
            }
            let ready =
                |i: usize| i != usize::MAX && fds[i].revents().is_some_and(|r| !r.is_empty());
            let (r_out, r_in, r_exit, r_task, r_wake) = (
                ready(idx[0]),
                ready(idx[1]),
                ready(idx[2]),
                ready(idx[3]),
                ready(idx[4]),
            );
            drop(fds);
            if r_wake {
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(&wake_fd, &mut b);
                // Stop requests are seen through the flag at the top of the loop; the
                // claimer's own waits re-check the flag, so nothing is lost by draining.
            }
            if r_out {
                if let Some(s) = stdout.as_mut() {
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                stdout = None;
                                break;
                            }
                            Ok(n) => {
                                // Past the cap stdout is still read (the command never
                                // blocks on a full pipe) and counted, not kept.
                                out_bytes += n as u64;
                                let room = (MAX_RESULT_BYTES * 4).saturating_sub(out.len());
                                if n > room {
                                    truncated = true;
                                }
                                out.extend_from_slice(&buf[..n.min(room)]);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(_) => {
                                stdout = None;
                                break;
                            }
                        }
                    }
                }
            } else if exited {
                // Nothing more right now and the command is gone.
                stdout = None;
            }
            if r_in {
                if let Some(s) = stdin.as_mut() {
                    match s.write(&input[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // A command that does not read its stdin is fine (EPIPE).
                        Err(_) => written = input.len(),
                    }
                }
            }
            if written >= input.len() {
                stdin = None;
            }
            if r_exit {
                exited = true;
            }
            // The task file is also read at each beat: a watch lost to a move (or a claimant
            // with no lease to renew) cannot hide that the task is no longer ours.
            if r_task
                || next_poll.is_some_and(|p| Instant::now() >= p)
                || Instant::now() >= next_beat
            {
                evs.clear();
                let _ = tw.drain(&mut evs);
                if let Some(p) = poll_every {
                    next_poll = Some(Instant::now() + p);
                }
                match transitions::read_checked(self.home, &processing, &task.task_id) {
                    Ok(t) => {
                        if t.cancel_requested_at.is_some() && stopped.is_none() {
                            tracing::info!("task {} cancelled: stopping its command", task.task_id);
                            stopped = Some(StopReason::Cancel);
                            signal_group(pid, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
                        }
                        if t.claimed_by.as_deref() != Some(self.opts.worker.as_str()) {
                            lost = Some(format!(
                                "claimed by {}",
                                t.claimed_by.as_deref().unwrap_or("nobody")
                            ));
                        }
                    }
                    Err(ReadError::Missing) => {
                        lost = match moves::locate(self.home, &task.task_id) {
                            // Back in place already (a move in two steps): look again.
                            Ok(Some((TaskState::Processing, p))) if p == processing => None,
                            Ok(Some((st, _))) => Some(format!("it is {} now", st.name())),
                            _ => Some("it left processing/".to_string()),
                        };
                    }
                    Err(ReadError::Refused(why)) => {
                        lost = Some(format!("its file was set aside: {why}"));
                    }
                    Err(ReadError::Io(e)) => {
                        tracing::warn!("cannot read task {} while it runs: {e}", task.task_id)
                    }
                }
                // The file was replaced: watch the new one.
                if let Some(wd) = task_wd.take() {
                    tw.unwatch(wd);
                }
                task_wd = tw.watch_file(&processing).ok().flatten();
            }
            let now = Instant::now();
            if stopped.is_none() && timeout.is_some_and(|t| now >= t) {
                let secs = task
                    .timeout_seconds
                    .or(self.opts.task_timeout)
                    .unwrap_or(0.0);
                tracing::warn!(
                    "task {} timed out after {secs}s: stopping its command",
                    task.task_id
                );
                moves::emit(
                    self.home,
                    task_event(
                        EventType::TaskTimedOut,
                        task,
                        format!("{} timed out after {secs}s", task.task_id),
                    )
                    .with("timeout_seconds", secs),
                );
                stopped = Some(StopReason::Timeout);
                signal_group(pid, Signal::SIGTERM);
                kill_at = Some(now + time::duration(self.opts.kill_grace));
            }
            if kill_at.is_some_and(|k| now >= k) && !exited {
                tracing::warn!("the command of {} ignored SIGTERM: SIGKILL", task.task_id);
                signal_group(pid, Signal::SIGKILL);
                kill_at = None;
            }
            if now >= next_beat {
                if let Err(why) = self.keepalive_busy(task) {
                    lost = Some(why);
                }
                next_beat = Instant::now() + self.interval;
            }
            if let Some(why) = lost.take() {
                if stopped != Some(StopReason::Lost) {
                    self.lost_task(task, &why);
                    if stopped.is_none() {
                        signal_group(pid, Signal::SIGTERM);
                        kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
                    }
                    stopped = Some(StopReason::Lost);
                }
            }
        }
        drop(stdin);
        if let Some(wd) = task_wd {
            tw.unwatch(wd);
        }
        self.task_watch = Some(tw);
        let status = child
            .wait()
            .map_err(|e| Error::io("cannot wait for the command", e))?;
        guard.0 = 0;
        // Anything left in the group (a stopped command's children) goes too.
        if stopped.is_some() {
            signal_group(pid, Signal::SIGKILL);
        }
        let took = t0.elapsed().as_secs_f64();
        self.sum.run_seconds += took;
        Ok(Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout: out,
            stdout_bytes: out_bytes,
            truncated,
            stopped,
            took,
        })
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

    /// Stops the processes still carrying `CORRAL_TASK_ID=<this task>` on this host (an
    /// earlier run whose loop died or lost the task): SIGTERM, `kill_grace`, SIGKILL, and
    /// waits for them to be gone, so two runs of one task never overlap here.
    /// While it waits, the claim is kept alive; it gives up early on a stop request or when
    /// the task is no longer ours (that reason is returned).
    fn fence(&mut self, task: &Task) -> Option<(StopReason, String)> {
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
                        let text = String::from_utf8_lossy(&out.stdout);
                        json!({
                            "truncated": true,
                            "bytes": out.stdout_bytes,
                            "head": cut_str(&text, RESULT_HEAD_BYTES),
                        })
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

fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::io("fcntl", e.into()))?;
    let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(fl)).map_err(|e| Error::io("fcntl", e.into()))?;
    Ok(())
}

/// The head kept of a stdout too long to keep whole (the task file's marker keeps 16 KiB).
const RESULT_HEAD_BYTES: usize = 16 * 1024;

/// The first `max` bytes of `s`, cut at a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// In the command's child, before exec: SIGKILL when the loop's thread that started it
/// ends (`PR_SET_PDEATHSIG`; the loop runs and waits for each command on one thread, so
/// that is the loop ending, however it ends). If the loop is already gone (it died between
/// fork and here) the command never starts.
fn die_with_loop(loop_pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls on this process only.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != loop_pid {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Kills a command's process group when dropped, unless disarmed (pgid set to 0) once the
/// command was waited for.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// Processes of this host (that this user may inspect) whose environment holds
/// `CORRAL_TASK_ID=<id>`, as (pid, start time): what is left of an earlier run of the
/// task. This process and its ancestors are left out (a loop run from inside a task).
fn leftovers(id: &str) -> Vec<(i32, u64)> {
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
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 1 || skip.contains(&pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()) {
            continue;
        }
        if let Some(st) = crate::process::read_stat(pid) {
            if !matches!(st.state, 'Z' | 'X') {
                found.push((pid, st.start_time_ticks));
            }
        }
    }
    found
}

/// `pid` is still the process that started at `ticks`, and not yet dead.
fn same_process(pid: i32, ticks: u64) -> bool {
    crate::process::read_stat(pid)
        .is_some_and(|st| st.start_time_ticks == ticks && !matches!(st.state, 'Z' | 'X'))
}

/// Signals the command's process group (it leads its own, started with `process_group(0)`).
fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return;
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{enqueue, find, EnqueueRequest};

    fn opts(cmd: &[&str]) -> WorkOptions {
        WorkOptions {
            worker: "w-test".into(),
            classes: vec!["t".into()],
            command: cmd.iter().map(|s| s.to_string()).collect(),
            max_tasks: None,
            idle_exit: Some(0.3),
            lease: 60.0,
            heartbeat_interval: 5.0,
            task_timeout: None,
            kill_grace: 0.5,
            poll_interval: None,
        }
    }

    #[test]
    fn runs_completes_fails_and_times_out() {
        let (_d, h) = crate::home::test_home();
        let ok = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
        let mut slow = EnqueueRequest::new("t");
        slow.timeout_seconds = Some(0.3);
        slow.max_attempts = Some(1);
        slow.payload = json!("slow");
        let slow = enqueue(&h, &slow).unwrap();
        let script = r#"t=$(cat); case "$t" in *slow*) exec sleep 30;; esac; echo '{"ok": true}'"#;
        let w = Work::new(&h, opts(&["sh", "-c", script]), NoSpec).unwrap();
        let s = w.run().unwrap();
        assert_eq!(
            (s.tasks, s.completed, s.failed, s.timed_out),
            (2, 1, 1, 1),
            "{s:?}"
        );
        let done = find(&h, &ok.task_id).unwrap();
        assert_eq!(done.state, TaskState::Completed);
        assert_eq!(done.task.result.unwrap()["ok"], true);
        let f = find(&h, &slow.task_id).unwrap();
        assert_eq!(f.state, TaskState::Failed);
        assert!(f.task.error.unwrap().contains("timed out"));
    }

    #[test]
    fn a_stop_requeues_the_running_task() {
        let (_d, h) = crate::home::test_home();
        let t = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
        let mut o = opts(&["sh", "-c", "cat >/dev/null; exec sleep 30"]);
        o.idle_exit = None;
        let w = Work::new(&h, o, NoSpec).unwrap();
        let stop = w.stopper();
        let h2 = h.clone();
        let id = t.task_id.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if find(&h2, &id).is_ok_and(|f| f.state == TaskState::Processing) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(100));
            stop.stop();
        });
        let s = w.run().unwrap();
        assert!(s.stopped);
        assert_eq!(s.requeued, 1, "{s:?}");
        assert_eq!(find(&h, &t.task_id).unwrap().state, TaskState::Pending);
    }
    #[test]
    fn a_task_taken_from_the_loop_stops_its_command_and_records_nothing() {
        let (_d, h) = crate::home::test_home();
        let t = enqueue(&h, &EnqueueRequest::new("t")).unwrap();
        let mut o = opts(&["sh", "-c", "cat >/dev/null; exec sleep 30"]);
        o.idle_exit = Some(0.5);
        o.max_tasks = Some(1);
        let w = Work::new(&h, o, NoSpec).unwrap();
        let h2 = h.clone();
        let id = t.task_id.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if find(&h2, &id).is_ok_and(|f| f.state == TaskState::Processing) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(100));
            // Completed by hand (the loop cannot claim it back, as it could a requeued one).
            let op = Caller {
                worker: Some("operator".into()),
                force: true,
            };
            transitions::complete(&h2, &id, &op, Some(json!("by hand"))).unwrap();
        });
        let t0 = Instant::now();
        let s = w.run().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(20), "the command ran on");
        assert_eq!(
            (s.lost, s.tasks, s.completed, s.failed),
            (1, 0, 0, 0),
            "{s:?}"
        );
        let f = find(&h, &t.task_id).unwrap();
        assert_eq!(f.state, TaskState::Completed);
        assert_eq!(f.task.result, Some(json!("by hand")));
    }

    #[test]
    fn leftovers_finds_the_processes_carrying_the_task_id() {
        let mut c = std::process::Command::new("sleep");
        c.arg("30").env("CORRAL_TASK_ID", "task-leftover-test-1");
        let mut child = c.spawn().unwrap();
        let pid = child.id() as i32;
        let found = leftovers("task-leftover-test-1");
        assert_eq!(found.iter().map(|p| p.0).collect::<Vec<_>>(), vec![pid]);
        assert!(leftovers("task-leftover-test-2").is_empty());
        let _ = child.kill();
        let _ = child.wait();
        assert!(!same_process(pid, found[0].1));
    }
}
