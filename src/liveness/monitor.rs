//! The monitor's state, and what it does when a worker's deadline comes: apply the verdict
//! of [`verdicts::due`] through [`actions`], and settle a worker's end once all of its
//! processes are gone. Reading files is in [`super::tracking`], process exits in
//! [`super::exits`], the event loop in [`super::daemon`].
//!
//! Threads: one thread owns all of this. Slow work runs in helper threads that report on a
//! channel and poke the loop: graceful stops (their grace period), group stops (S1), queue
//! maintenance and Prometheus (they read every spec and take task locks), alert commands.
//! So a held lock or a slow disk delays that one job, never the detection of other deaths.

use super::actions::{self, Outcome};
use super::group::GroupStop;
use super::reactor::Waker;
use super::resources::Reading;
use super::restarts::Restarts;
use super::verdicts::{self, Action, Alert, View};
use super::{clock, files::FileKey, schedule::Schedule, status, Settings};
use crate::error::Result;
use crate::events::{Event, EventType};
use crate::home::{Home, StateDir};
use crate::policy::{HeartbeatPolicy, WorkerTypes};
use crate::process::ProcessInfo;
use crate::spec::WorkerSpec;
use crate::time::{self, Timestamp};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

/// Timed work: one deadline per key in the [`Schedule`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A worker's next verdict deadline (or a retry after its lock was busy).
    Judge(String),
    /// A worker's end waits (on its stopper, a busy lock, or a group stop to retry).
    Settle(String),
    /// Look at a file again: it did not parse, or its lock was busy.
    Recheck(StateDir, String),
    /// Quarantine a file that still does not parse.
    BadFile(PathBuf),
    SampleRound,
    Restarts,
    Housekeeping,
    Prometheus,
    DirPoll,
    IdentityPoll,
    FsBatch,
    Status,
}

/// How a worker's end will be recorded once its processes are gone.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Fail {
        reason: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Zombify {
        reason: String,
        data: Value,
    },
    Stopped {
        reason: String,
    },
}

/// How a worker's leader ended, as far as the monitor knows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitNote {
    pub reason: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What a group stop was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Then record the tracked worker's end (its `settling`).
    Settle,
    /// Leftovers of a failed worker whose restart is due: then retry the restart.
    Restart,
}

/// What helper threads tell the loop.
pub enum Msg {
    StopDone {
        id: String,
        result: String,
    },
    GroupStopped {
        id: String,
        purpose: Purpose,
        outcome: GroupStop,
    },
    Housekeeping {
        prometheus: bool,
        took_ms: i64,
        summary: Option<String>,
        error: Option<String>,
        /// Unix ms when a task the pass kept will need a decision by time alone (a lease).
        next_change_ms: Option<i64>,
    },
    /// Workers a pool launched on the housekeeping thread: `(pid, worker id)`.
    Launched(Vec<(i32, String)>),
    /// The engine's answer about a container worker whose watched process is gone.
    ContainerExit {
        id: String,
        how: String,
        answer: super::containers::Answer,
    },
}

/// One active worker as the monitor knows it.
pub struct Tracked {
    /// The spec file version last read.
    pub key: FileKey,
    pub view: View,
    pub worker_type: String,
    pub process: Option<ProcessInfo>,
    /// Its pidfd's token in the reactor.
    pub pidfd: Option<u64>,
    pub reading: Option<Reading>,
    pub over_cpu: bool,
    pub over_mem: bool,
    /// The leader is known gone; its end is being settled.
    pub exited: bool,
    /// How the leader ended.
    pub exit: Option<ExitNote>,
    /// Consecutive busy locks (for the retry backoff).
    pub busy: u32,
    /// The end to record once every process is gone.
    pub settling: Option<Settle>,
    /// The shape (top-level keys, status) of the last version that passed the full
    /// validation: later versions of that shape are read with a glance.
    pub validated: Option<(u64, crate::spec::Status)>,
    /// A container worker's container (execution mode `container`).
    pub container: Option<super::containers::ContainerTrack>,
}

impl Tracked {
    pub fn new(spec: &WorkerSpec, key: FileKey) -> Tracked {
        Tracked {
            key,
            view: View::of(spec),
            worker_type: spec.worker_type.clone(),
            process: spec.process.clone(),
            pidfd: None,
            reading: None,
            over_cpu: false,
            over_mem: false,
            exited: false,
            exit: None,
            busy: 0,
            settling: None,
            validated: None,
            container: super::containers::ContainerTrack::of(spec),
        }
    }

    /// True when a glance of a new version can stand in for the full read.
    pub fn trusts(&self, g: &super::glance::Glance) -> bool {
        self.validated == Some((g.keys, g.status)) && self.process == g.process
    }
}

/// The monitor.
pub struct Monitor {
    pub home: Home,
    pub overrides: Vec<(String, Value)>,
    pub policy: HeartbeatPolicy,
    pub types: WorkerTypes,
    pub settings: Settings,
    pub network_fs: Option<&'static str>,
    /// Daemon (pidfds, threads) or one `--once` pass (everything inline).
    pub daemon: bool,
    pub workers: HashMap<String, Tracked>,
    pub timers: Schedule<Timer>,
    pub restarts: Restarts,
    /// pidfd token → worker.
    pub tokens: HashMap<u64, String>,
    pub pidfd_budget: u64,
    /// Local workers without a pidfd: checked every identity-poll tick.
    pub polled: BTreeSet<String>,
    /// Graceful stops (timeouts, idle, orphans) in helper threads.
    pub stopping: HashSet<String>,
    /// Group stops in helper threads.
    pub group_stops: HashSet<String>,
    /// Files that did not parse, with why, waiting for their settle time.
    pub bad: HashMap<PathBuf, String>,
    /// Workers this monitor launched (restarts): pid → id, for their exit status.
    pub children: HashMap<i32, String>,
    /// Exit statuses of reaped children, by worker.
    pub exits: HashMap<String, (Option<i32>, Option<i32>)>,
    /// Exit statuses of children reaped before the loop learnt which worker they are (a pool
    /// worker launched on the housekeeping thread that died at once): pid → (reaped at ms,
    /// code, signal). Kept [`UNCLAIMED_MS`], so a pid reused later is never mistaken.
    pub unclaimed: HashMap<i32, (i64, Option<i32>, Option<i32>)>,
    pub mem_total_mb: Option<f64>,
    pub tx: Sender<Msg>,
    pub rx: Receiver<Msg>,
    pub waker: Option<Waker>,
    /// The epoll set (daemon only).
    pub reactor: Option<super::reactor::Reactor>,
    pub pause: clock::PauseDetector,
    pub status: status::MonitorStatus,
    pub housekeeping_busy: bool,
    pub maintain_cost_ms: i64,
    pub next_summary_ms: i64,
    pub last_maintain_error: Option<String>,
    pub shutdown: bool,
    /// Worker locks found held by another process, by worker, until seen free.
    pub held: HashMap<String, HeldLock>,
    /// See [`held_warn_ms`].
    pub held_warn_ms: i64,
    /// When the last warning about event lines waiting for the event lock was logged.
    pub backlog_warned_ms: Option<i64>,
}

/// How long the exit of an unknown child is kept for a launch to claim it.
pub const UNCLAIMED_MS: i64 = 60_000;

/// How often the warning about a worker lock that stays held is repeated.
pub const HELD_REPEAT_MS: i64 = 60_000;

/// A worker lock the monitor found held by another process (S4: it never waits for it).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLock {
    /// When the monitor first found it held (ms since the epoch).
    pub since_ms: i64,
    /// When the last warning about it was logged.
    pub warned_ms: Option<i64>,
    /// When it was last found held. A busy worker is retried at least every
    /// [`actions::RETRY_MAX_MS`], so a longer gap means it was free in between.
    pub last_ms: i64,
}

/// After how long a held worker lock is warned about: as long as a CLI would wait for it
/// (`CORRAL_LOCK_TIMEOUT`, default 10 s, kept within 1 s … 60 s). Past that, the CLIs that
/// need it fail too, and the worker's state (a death, a stale heartbeat) cannot be recorded.
pub fn held_warn_ms() -> i64 {
    crate::store::lock_timeout()
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .unwrap_or((crate::store::DEFAULT_LOCK_TIMEOUT_SECS * 1000.0) as i64)
        .clamp(1_000, 60_000)
}

/// Milliseconds since the epoch.
pub fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    ms(time::now())
}

/// Seconds to milliseconds, saturating.
pub fn secs_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

impl Monitor {
    /// A monitor for `home`; `once` selects the single pass (no pidfds, no threads).
    pub fn new(
        home: Home,
        overrides: Vec<(String, Value)>,
        policy: HeartbeatPolicy,
        once: bool,
    ) -> Result<Monitor> {
        let network_fs = super::sys::network_fs(&home.coordination());
        let settings = Settings::of(&policy, network_fs.is_some());
        let types = WorkerTypes::load(&home)?;
        let restarts = Restarts::load(&home)?;
        let (tx, rx) = channel();
        let pidfd_budget = if once {
            0
        } else {
            super::sys::raise_nofile_limit()
        };
        let mode = if once {
            status::Mode::Once
        } else {
            status::Mode::Daemon
        };
        Ok(Monitor {
            status: status::MonitorStatus::new(&home, mode, settings.poll_interval),
            pause: clock::PauseDetector::new(policy.warning_seconds),
            home,
            overrides,
            policy,
            types,
            settings,
            network_fs,
            daemon: !once,
            workers: HashMap::new(),
            timers: Schedule::default(),
            restarts,
            tokens: HashMap::new(),
            pidfd_budget,
            polled: BTreeSet::new(),
            stopping: HashSet::new(),
            group_stops: HashSet::new(),
            bad: HashMap::new(),
            children: HashMap::new(),
            exits: HashMap::new(),
            unclaimed: HashMap::new(),
            mem_total_mb: super::sys::mem_total_mb(),
            tx,
            rx,
            waker: None,
            reactor: None,
            housekeeping_busy: false,
            maintain_cost_ms: 0,
            next_summary_ms: 0,
            last_maintain_error: None,
            shutdown: false,
            held: HashMap::new(),
            held_warn_ms: held_warn_ms(),
            backlog_warned_ms: None,
        })
    }

    /// Busy lock: try this worker again after a growing delay.
    pub fn retry(&mut self, key: Timer, id: &str) {
        let n = self.workers.get_mut(id).map_or(0, |w| {
            w.busy = w.busy.saturating_add(1);
            w.busy - 1
        });
        self.note_held(id);
        self.timers
            .set(key, now_ms().saturating_add(actions::retry_delay_ms(n)));
    }

    /// Worker `id`'s lock was found held by another process: said once at info, then
    /// warned about once it has been held past [`Monitor::held_warn_ms`] (and again every
    /// [`HELD_REPEAT_MS`] while it stays held), and listed in `metrics/monitor.json`, which
    /// `corral status` reports: while it is held, a death or a stale heartbeat of that worker
    /// cannot be recorded.
    pub fn note_held(&mut self, id: &str) {
        let now = now_ms();
        let lock = self.home.worker_lock(id);
        if self.held.get(id).is_some_and(|h| {
            now.saturating_sub(h.last_ms) > actions::RETRY_MAX_MS.saturating_mul(3)
        }) {
            // Free in between: a new episode.
            self.lock_released(id);
        }
        let h = self.held.entry(id.to_string()).or_insert_with(|| {
            tracing::info!(
                "{id}: its lock {} is held by another process; coming back to it (every other worker is still watched)",
                lock.display()
            );
            HeldLock {
                since_ms: now,
                warned_ms: None,
                last_ms: now,
            }
        });
        h.last_ms = now;
        let held_ms = now.saturating_sub(h.since_ms);
        if held_ms < self.held_warn_ms
            || h.warned_ms
                .is_some_and(|w| now.saturating_sub(w) < HELD_REPEAT_MS)
        {
            return;
        }
        let first = h.warned_ms.is_none();
        h.warned_ms = Some(now);
        tracing::warn!(
            "{id}: its lock {} has been held by another process for {:.0} s: what happens to this worker (its death, a stale heartbeat) cannot be recorded until the holder lets go",
            lock.display(),
            held_ms as f64 / 1000.0
        );
        if first && self.daemon {
            // Into metrics/monitor.json (and so `corral status`) now, not at the next write.
            self.timers.set(Timer::Status, now);
        }
    }

    /// Worker `id`'s lock is no longer known held (it was taken, or the worker is gone).
    pub fn lock_released(&mut self, id: &str) {
        if let Some(h) = self.held.remove(id) {
            if h.warned_ms.is_some() {
                tracing::info!(
                    "{id}: its lock {} is free again after {:.0} s",
                    self.home.worker_lock(id).display(),
                    now_ms().saturating_sub(h.since_ms) as f64 / 1000.0
                );
            }
        }
    }

    /// Forgets held locks that are free again or whose worker is no longer watched.
    pub fn sweep_held(&mut self) {
        let ids: Vec<String> = self.held.keys().cloned().collect();
        for id in ids {
            if !self.workers.contains_key(&id) || actions::probe(&self.home, &id) {
                self.lock_released(&id);
            }
        }
    }

    /// The held locks worth an operator's attention (held past the warning time).
    pub fn held_report(&self) -> Vec<status::HeldLockReport> {
        let (now, at) = (now_ms(), time::now());
        let mut v: Vec<status::HeldLockReport> = self
            .held
            .iter()
            .filter(|(_, h)| h.warned_ms.is_some())
            .map(|(id, h)| {
                let held = now.saturating_sub(h.since_ms) as f64 / 1000.0;
                status::HeldLockReport {
                    worker_id: id.clone(),
                    lock: self.home.worker_lock(id).display().to_string(),
                    since: time::add_secs(at, -held),
                    held_seconds: super::resources::round1(held),
                }
            })
            .collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    /// A worker is no longer active: forget it and stop watching its process.
    pub fn forget(&mut self, id: &str) {
        self.untrack(id);
        self.maintain_soon();
    }

    /// Applies whatever is due for a worker now, then schedules its next deadline.
    pub fn evaluate(&mut self, id: &str) {
        for _ in 0..4 {
            let now = time::now();
            let Some(w) = self.workers.get(id) else {
                return;
            };
            if w.exited
                || w.settling.is_some()
                || self.stopping.contains(id)
                || self.group_stops.contains(id)
            {
                return;
            }
            let Some(action) = verdicts::due(&w.view, &self.policy, now) else {
                break;
            };
            match self.apply(id, action, now) {
                Step::Again => {}
                Step::Done => break,
                Step::Stop => return,
            }
        }
        let now = time::now();
        let Some(w) = self.workers.get(id) else {
            return;
        };
        match verdicts::next_deadline(&w.view, &self.policy, now) {
            Some(next) => self.timers.set(Timer::Judge(id.to_string()), ms(next)),
            None => self.timers.cancel(&Timer::Judge(id.to_string())),
        }
    }

    /// Applies one verdict.
    fn apply(&mut self, id: &str, action: Action, now: Timestamp) -> Step {
        let action = match action {
            Action::FailPending { .. } | Action::Zombify { .. } => {
                // Not on a stale clock: a pause of the monitor re-arms instead (S8).
                if self.daemon {
                    if let Some(lost) = self.pause.within_pass(clock::Mark::now()) {
                        self.rearm(lost);
                        return Step::Stop;
                    }
                }
                // Decided again on the file as it is now: a beat may have landed.
                match self.confirm(id, now) {
                    Some(a) if std::mem::discriminant(&a) == std::mem::discriminant(&action) => a,
                    _ => return Step::Done,
                }
            }
            a => a,
        };
        match action {
            Action::FailPending { waited } => {
                let reason = format!(
                    "pending for {waited:.0} s: never confirmed alive (pending_timeout_seconds {})",
                    self.policy.pending_timeout_seconds
                );
                let settle = Settle::Fail {
                    reason,
                    code: None,
                    signal: None,
                };
                self.end_when_gone(id, settle, "pending_timeout");
                Step::Stop
            }
            Action::Zombify { age } => {
                let reason = format!(
                    "no heartbeat for {age:.1} s (zombie_seconds {})",
                    self.policy.zombie_seconds
                );
                let last = self.workers.get(id).and_then(|w| w.view.alive_at());
                let data = actions::zombie_data(age, last, self.policy.zombie_seconds);
                self.end_when_gone(id, Settle::Zombify { reason, data }, "stale_heartbeat");
                Step::Stop
            }
            Action::FinishStop { since } => {
                let reason = format!(
                    "stop finished by heartbeat-monitor: shutting down for {since:.0} s, its stopper is gone"
                );
                self.end_when_gone(id, Settle::Stopped { reason }, "stop_overdue");
                Step::Stop
            }
            Action::StopTimeout { minutes } => {
                self.stop(
                    id,
                    format!("timeout: running longer than {minutes} minute(s)"),
                );
                Step::Stop
            }
            Action::StopIdle { idle } => {
                self.stop(
                    id,
                    format!(
                        "idle for {idle:.0} s (idle_timeout_seconds {})",
                        self.policy.idle_timeout_seconds
                    ),
                );
                Step::Stop
            }
            Action::Alert { level, .. } => self.raise_alert(id, level, now),
            Action::Health { .. } => {
                let policy = self.policy.clone();
                let out = actions::update(&self.home, id, |s| {
                    let v = View::of(s);
                    let score = verdicts::health_score(&v, &policy, now);
                    let label = verdicts::health_label(score, v.alert);
                    if s.heartbeat.health_score == score
                        && s.heartbeat.health.as_deref() == Some(label)
                    {
                        return false;
                    }
                    s.heartbeat.health_score = score;
                    s.heartbeat.health = Some(label.to_string());
                    true
                });
                self.after_update(id, out)
            }
        }
    }

    /// Keeps the view current after a rewrite; a busy lock is retried later.
    pub fn after_update(&mut self, id: &str, out: Outcome<actions::Updated>) -> Step {
        match out {
            Outcome::Done(u) => {
                let key = FileKey::at(&self.home.spec_path(StateDir::Active, id));
                if let Some(w) = self.workers.get_mut(id) {
                    let floor = w.view.floor;
                    w.view = View::of(&u.spec);
                    w.view.floor = floor;
                    w.key = key;
                    w.busy = 0;
                }
                self.lock_released(id);
                Step::Again
            }
            Outcome::Busy => {
                self.retry(Timer::Judge(id.to_string()), id);
                Step::Stop
            }
            Outcome::Moved => {
                self.refresh_id(id);
                Step::Stop
            }
            Outcome::Failed(e) => {
                tracing::warn!("cannot update {id}: {e}");
                Step::Done
            }
        }
    }

    fn raise_alert(&mut self, id: &str, level: Alert, now: Timestamp) -> Step {
        let policy = self.policy.clone();
        let floor = self.workers.get(id).and_then(|w| w.view.floor);
        let mut age = 0.0;
        let out = actions::update(&self.home, id, |s| {
            let mut v = View::of(s);
            v.floor = floor;
            age = v.age(now);
            let threshold = match level {
                Alert::Critical => policy.critical_seconds,
                _ => policy.warning_seconds,
            };
            // Decided again on the spec as it is now: a beat may have landed meanwhile.
            if v.alert >= level || age < threshold {
                return false;
            }
            s.heartbeat
                .extra
                .insert("alert".into(), Value::from(level.as_str()));
            let score = verdicts::health_score(&v, &policy, now);
            s.heartbeat.health_score = score;
            s.heartbeat.health = Some(verdicts::health_label(score, level).to_string());
            true
        });
        if let Outcome::Done(u) = &out {
            if u.written {
                let (kind, threshold) = match level {
                    Alert::Critical => (EventType::HeartbeatCritical, policy.critical_seconds),
                    _ => (EventType::HeartbeatWarning, policy.warning_seconds),
                };
                let ev = Event::new(
                    kind,
                    format!("{id}: no heartbeat for {age:.1} s ({})", level.as_str()),
                )
                .worker(&u.spec)
                .with("age_seconds", super::resources::round1(age))
                .with("last_seen", u.spec.last_alive().map(|t| time::format(&t)))
                .with("threshold_seconds", threshold)
                .with("health_score", u.spec.heartbeat.health_score);
                tracing::warn!("{}", ev.message);
                super::sys::emit_alerting(&self.home, &self.policy, ev, level == Alert::Critical);
            }
        }
        self.after_update(id, out)
    }

    /// A failed or zombie worker was seen: decide about a restart.
    pub fn consider_failure(&mut self, spec: &WorkerSpec) {
        if crate::pool::is_pool_worker(spec) {
            // Its pool replaces it at the next housekeeping pass: one replacement, not two.
            tracing::debug!("{} is a pool worker: its pool replaces it", spec.worker_id);
            self.maintain_soon();
            return;
        }
        self.restarts
            .on_failure(spec, &self.policy, &self.types, time::now());
        self.schedule_restarts();
    }

    /// Keeps the restart timer at the next restart or breaker reset.
    pub fn schedule_restarts(&mut self) {
        match self.restarts.next_wakeup(&self.policy) {
            Some(t) => self.timers.set(Timer::Restarts, ms(t)),
            None => self.timers.cancel(&Timer::Restarts),
        }
    }

    /// Restarts that are due.
    pub fn run_restarts(&mut self) {
        let now = time::now();
        for fid in self.restarts.due(&self.policy, now) {
            match self.restarts.fire(&fid, &self.policy, now) {
                super::restarts::Fired::Spawned(s) => {
                    // A container's init is not our child (its `run` client is, reaped as any).
                    if let Some(p) = s.process.as_ref().filter(|p| !p.is_container()) {
                        self.children.insert(p.pid, s.worker_id.clone());
                    }
                    self.reap();
                    // Watch the new worker at once rather than on its inotify event.
                    self.refresh(StateDir::Active, &format!("{}.json", s.worker_id), false);
                }
                super::restarts::Fired::AlreadySpawned(id) => self.refresh_id(&id),
                super::restarts::Fired::LeftoverAlive { process } => {
                    tracing::info!(
                        "restart of {fid}: its processes still run; stopping them first"
                    );
                    self.group_stop(&fid, process.map(|p| *p), Purpose::Restart);
                }
                super::restarts::Fired::Waiting | super::restarts::Fired::Dropped => {}
            }
        }
        self.schedule_restarts();
    }

    /// The monitor was paused (S8): heartbeat ages count from now for every worker.
    pub fn rearm(&mut self, lost_ms: i64) {
        let now = time::now();
        tracing::warn!(
            "heartbeat-monitor was paused for {:.1} s (a VM pause, suspend or SIGSTOP): re-arming heartbeat deadlines from now instead of judging the fleet on a stale clock",
            lost_ms as f64 / 1000.0
        );
        let ids: Vec<String> = self.workers.keys().cloned().collect();
        for id in &ids {
            if let Some(w) = self.workers.get_mut(id) {
                w.view.floor = Some(now);
            }
        }
        for id in ids {
            self.evaluate(&id);
        }
    }

    /// Reaps exited children; keeps the status of the workers among them.
    pub fn reap(&mut self) {
        for c in crate::process::reap_children() {
            match self.children.remove(&c.pid) {
                Some(id) => {
                    self.exits.insert(id, (c.code, c.signal));
                }
                // Kept until the housekeeping thread says whose it was; children that are
                // no worker's are forgotten after a while.
                None => {
                    let now = now_ms();
                    self.unclaimed
                        .retain(|_, e| now.saturating_sub(e.0) < UNCLAIMED_MS);
                    if self.unclaimed.len() < 1024 {
                        self.unclaimed.insert(c.pid, (now, c.code, c.signal));
                    }
                }
            }
        }
    }

    /// How the worker's leader ended, if this process reaped it: by the pid it launched it
    /// with, or, for a worker a pool launched on the housekeeping thread whose exit came
    /// before the loop learnt its pid ([`Msg::Launched`]), among the unclaimed exits by the
    /// pid in its spec.
    pub fn take_exit(&mut self, id: &str) -> (Option<i32>, Option<i32>) {
        if let Some(e) = self.exits.remove(id) {
            return e;
        }
        let pid = self
            .workers
            .get(id)
            .and_then(|w| w.process.as_ref())
            .map(|p| p.pid);
        match pid.and_then(|p| self.unclaimed.remove(&p)) {
            Some((_, code, signal)) => (code, signal),
            None => (None, None),
        }
    }

    /// A worker left `active/`: its claimed task should be requeued soon, not at the next
    /// regular pass.
    pub fn maintain_soon(&mut self) {
        let soon = now_ms().saturating_add(super::daemon::paced_by(
            0.2,
            self.maintain_cost_ms,
            super::daemon::PACING_SOON,
        ));
        self.timers.set_earlier(Timer::Housekeeping, soon);
    }
}

/// What a step of [`Monitor::evaluate`] leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The view changed: look again.
    Again,
    /// Nothing more now: schedule the next deadline.
    Done,
    /// Handed off (a stop, a settlement, a retry): no deadline now.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Status;

    fn monitor(home: &Home) -> Monitor {
        let policy = HeartbeatPolicy::default();
        Monitor::new(home.clone(), Vec::new(), policy, true).unwrap()
    }

    fn put(home: &Home, dir: StateDir, s: &WorkerSpec) {
        crate::spec::save(home, dir, s).unwrap();
    }

    #[test]
    fn a_pass_settles_what_is_due_and_leaves_the_rest() {
        let (_dir, home) = crate::home::test_home();
        let now = time::now();
        // Pending for two minutes, never beat: failed.
        let old = WorkerSpec::new(
            "w-old".into(),
            "build-worker".into(),
            time::add_secs(now, -120.0),
        );
        put(&home, StateDir::Active, &old);
        // Beat a second ago: untouched, and judged again at its first deadline.
        let mut fresh = WorkerSpec::new("w-fresh".into(), "build-worker".into(), now);
        fresh.status = Status::Running;
        fresh.heartbeat.last_seen = Some(now);
        put(&home, StateDir::Active, &fresh);
        let mut m = monitor(&home);
        m.scan_all(true).unwrap();
        assert_eq!(
            crate::spec::locate(&home, "w-old").unwrap().0,
            StateDir::Zombie
        );
        assert_eq!(
            crate::spec::locate(&home, "w-fresh").unwrap().0,
            StateDir::Active
        );
        let next = m.timers.when(&Timer::Judge("w-fresh".into())).unwrap();
        assert_eq!(next, ms(time::add_secs(now, 60.0)), "warning time");
        assert!(!m.workers.contains_key("w-old"));
    }

    #[test]
    fn a_held_lock_defers_only_that_worker() {
        let (_dir, home) = crate::home::test_home();
        let now = time::now();
        for id in ["w-held", "w-free"] {
            let s = WorkerSpec::new(
                id.into(),
                "build-worker".into(),
                time::add_secs(now, -120.0),
            );
            put(&home, StateDir::Active, &s);
        }
        let held = crate::store::lock(&home.worker_lock("w-held")).unwrap();
        let mut m = monitor(&home);
        m.scan_all(true).unwrap();
        assert_eq!(
            crate::spec::locate(&home, "w-free").unwrap().0,
            StateDir::Zombie
        );
        assert_eq!(
            crate::spec::locate(&home, "w-held").unwrap().0,
            StateDir::Active
        );
        assert!(
            m.timers.when(&Timer::Settle("w-held".into())).is_some(),
            "a retry is scheduled"
        );
        drop(held);
        m.settle_timer("w-held");
        assert_eq!(
            crate::spec::locate(&home, "w-held").unwrap().0,
            StateDir::Zombie
        );
    }

    #[test]
    fn a_free_lock_is_final_even_before_a_process_is_recorded() {
        let (_dir, home) = crate::home::test_home();
        // The launch path holds the liveness lock before the spec is visible (S1), so a
        // pending spec whose lock file is free never had, or no longer has, a process:
        // the spawner died before launching it.
        let s = WorkerSpec::new("w-new".into(), "build-worker".into(), time::now());
        put(&home, StateDir::Active, &s);
        std::fs::create_dir_all(home.alive_lock("w-new").parent().unwrap()).unwrap();
        std::fs::write(home.alive_lock("w-new"), b"").unwrap();
        let held = crate::store::lock(&home.alive_lock("w-new")).unwrap();
        let mut m = monitor(&home);
        m.scan_all(true).unwrap();
        assert!(m.polled.contains("w-new"), "watched while its lock is held");
        m.poll_identities();
        assert_eq!(
            crate::spec::locate(&home, "w-new").unwrap().0,
            StateDir::Active
        );
        drop(held);
        m.poll_identities();
        assert_eq!(
            crate::spec::locate(&home, "w-new").unwrap().0,
            StateDir::Zombie
        );
    }

    #[test]
    fn a_pause_rearms_every_worker_from_now() {
        let (_dir, home) = crate::home::test_home();
        let now = time::now();
        let mut s = WorkerSpec::new(
            "w1".into(),
            "build-worker".into(),
            time::add_secs(now, -10.0),
        );
        s.status = Status::Running;
        s.heartbeat.last_seen = Some(time::add_secs(now, -10.0));
        put(&home, StateDir::Active, &s);
        let mut m = monitor(&home);
        m.scan_all(true).unwrap();
        m.rearm(400_000);
        let w = &m.workers["w1"];
        assert!(w.view.floor.is_some_and(|f| f >= now));
        let next = m.timers.when(&Timer::Judge("w1".into())).unwrap();
        assert!(
            next >= ms(time::add_secs(now, 59.0)),
            "re-armed from the resume"
        );
    }
}
