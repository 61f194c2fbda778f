//! The monitor's state and event loop. [`Monitor`] holds what it has learnt from the files
//! (a small [`View`] per active worker, its pidfd, its deadline) and applies the decisions
//! of [`judge`] and [`restart`] through `lifecycle` and `shutdown`.
//!
//! One thread owns all of it. It sleeps in `epoll_wait` on: a signalfd (SIGTERM/SIGINT stop
//! the daemon, SIGHUP reloads the policy), an eventfd that the inotify callback and helper
//! threads poke, and one pidfd per local worker; the timeout is the earliest deadline of the
//! timer heap. Slow work (graceful stops with their grace period, alert commands) runs in
//! helper threads that report back through a channel, so detection never waits on it.

use super::judge::{self, Action, Alert, View};
use super::restart::{self, Decision, Gate, RestartState};
use super::sys::{self, Sample};
use super::Settings;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle::{self, SpawnRequest};
use crate::policy::{HeartbeatPolicy, WorkerTypes};
use crate::process::{Identity, PidFd, ProcessInfo};
use crate::spec::{self, Status, WorkerSpec};
use crate::store::ReadError;
use crate::time::{self, Timestamp};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How long a file that does not parse is given to settle (a non-atomic writer may be
/// half-way through it) before it is quarantined.
const BAD_FILE_SETTLE_MS: i64 = 500;
/// Extra wait, beyond the grace period, for `stop-worker` to record a stop it started.
const SHUTDOWN_SETTLE_SECONDS: f64 = 2.0;
/// Shortest time between two batches of inotify events (see the event loop).
const FS_BATCH_MS: i64 = 25;
/// Alert commands are killed after this long.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);
/// epoll tokens below this are not pidfds.
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const FIRST_PID_TOKEN: u64 = 16;

/// What helper threads and the inotify callback tell the loop.
enum Msg {
    Fs(notify::Event),
    FsError(String),
    StopDone { id: String, result: String },
}

/// Timed work, in the heap with its due time (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Judge a worker again (stale unless `gen` is still current).
    Judge { id: String, gen: u64 },
    /// Sample CPU/RSS of a local worker.
    Sample { id: String, gen: u64 },
    /// A shutting-down worker's process exited: settle it unless stop-worker did.
    AfterShutdown { id: String },
    /// Look at a file that did not parse again, and quarantine it if it still does not.
    BadFile { path: PathBuf },
}

/// Identifies one version of a spec file without reading it: an atomic write makes a new
/// inode (and new times), so an unchanged key means nothing new to read. This is what keeps
/// the monitor's own writes, and repeated events for one write, from costing a parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FileKey {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileKey {
    fn of(m: &std::fs::Metadata) -> FileKey {
        FileKey {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }

    fn at(path: &Path) -> FileKey {
        std::fs::symlink_metadata(path)
            .map(|m| FileKey::of(&m))
            .unwrap_or_default()
    }
}

/// One active worker as the monitor knows it.
struct Tracked {
    /// The spec file version last read.
    ino: FileKey,
    view: View,
    worker_type: String,
    process: Option<ProcessInfo>,
    gen: u64,
    scheduled: Option<i64>,
    sample_gen: u64,
    pidfd: Option<(PidFd, u64)>,
    sample: Option<Sample>,
    over_cpu: bool,
    over_mem: bool,
    /// The process is known gone; its end is being settled.
    exited: bool,
}

/// The monitor.
pub struct Monitor {
    home: Home,
    overrides: Vec<(String, Value)>,
    policy: HeartbeatPolicy,
    types: WorkerTypes,
    settings: Settings,
    network_fs: Option<&'static str>,
    daemon: bool,
    workers: HashMap<String, Tracked>,
    heap: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    seq: u64,
    restart: RestartState,
    epoll: Option<nix::sys::epoll::Epoll>,
    tokens: HashMap<u64, String>,
    next_token: u64,
    pidfd_budget: u64,
    /// Local workers without a pidfd (descriptor budget spent, or no verifiable identity
    /// but a liveness lock): checked every identity-poll tick.
    polled: BTreeSet<String>,
    stopping: HashSet<String>,
    /// Files that did not parse, with why, waiting for their settle time.
    bad: HashMap<PathBuf, String>,
    mem_total_mb: Option<f64>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    wake: Option<Arc<nix::sys::eventfd::EventFd>>,
    /// The state directories, built once (every inotify batch is matched against them).
    state_dirs: Vec<(PathBuf, StateDir)>,
    next_maintain: i64,
    fs_pending: bool,
    last_fs_batch: i64,
    maintain_cost: i64,
    next_summary: i64,
    next_prom: i64,
    next_dir_poll: i64,
    next_identity_poll: i64,
    last_maintain_error: Option<String>,
    shutdown: bool,
}

fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

fn now_ms() -> i64 {
    ms(time::now())
}

fn secs_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

/// Milliseconds until the next run of a periodic pass that took `took_ms`: the configured
/// interval, stretched so the pass never uses more than 1/[`PACING`] of a core (queue
/// maintenance and Prometheus read every spec: 10,000 workers make them ~100 ms each).
fn paced(interval_s: f64, took_ms: i64) -> i64 {
    secs_ms(interval_s).max(took_ms * PACING)
}

/// Periodic passes may use at most 1/PACING of a core.
const PACING: i64 = 200;

fn timed(f: impl FnOnce()) -> i64 {
    let t = std::time::Instant::now();
    f();
    t.elapsed().as_millis() as i64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The result of a guarded rewrite of an active spec.
enum Update {
    Written(Box<WorkerSpec>, FileKey),
    Unchanged(Box<WorkerSpec>, FileKey),
    /// Not in `active/` any more: nothing written.
    Moved,
}

impl Monitor {
    /// A monitor for `home`; `once` selects the single-pass mode (no pidfds, no threads).
    pub fn new(
        home: Home,
        overrides: Vec<(String, Value)>,
        policy: HeartbeatPolicy,
        once: bool,
    ) -> Result<Monitor> {
        let network_fs = sys::network_fs(&home.coordination());
        let settings = Settings::of(&policy, network_fs.is_some());
        let types = WorkerTypes::load(&home)?;
        let restart = RestartState::load(&home)?;
        let (tx, rx) = channel();
        let state_dirs = StateDir::ALL
            .iter()
            .map(|d| (home.specs_dir(*d), *d))
            .collect();
        let pidfd_budget = if once { 0 } else { sys::raise_nofile_limit() };
        Ok(Monitor {
            home,
            overrides,
            policy,
            types,
            settings,
            network_fs,
            daemon: !once,
            workers: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            restart,
            epoll: None,
            tokens: HashMap::new(),
            next_token: FIRST_PID_TOKEN,
            pidfd_budget,
            polled: BTreeSet::new(),
            stopping: HashSet::new(),
            bad: HashMap::new(),
            mem_total_mb: sys::mem_total_mb(),
            tx,
            rx,
            wake: None,
            state_dirs,
            next_maintain: 0,
            fs_pending: false,
            last_fs_batch: 0,
            maintain_cost: 0,
            next_summary: 0,
            next_prom: 0,
            next_dir_poll: 0,
            next_identity_poll: 0,
            last_maintain_error: None,
            shutdown: false,
        })
    }

    fn push(&mut self, at: i64, t: Timer) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, t)));
    }

    // ---- single pass -------------------------------------------------------------------

    /// One pass over the home (cron): judge every worker at `now`, settle dead ones, make
    /// due restarts, run queue maintenance, write Prometheus, and exit.
    pub fn run_once(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        self.scan_all(true)?;
        if !self.bad.is_empty() {
            // Give a writer that is half-way through a file one chance to finish it.
            std::thread::sleep(Duration::from_millis(BAD_FILE_SETTLE_MS as u64));
            let paths: Vec<PathBuf> = self.bad.keys().cloned().collect();
            for p in paths {
                self.recheck_bad(&p);
            }
        }
        let scanned = started.elapsed();
        self.restarts(time::now());
        self.maintain(time::now(), true);
        let maintained = started.elapsed();
        if self.policy.prometheus_interval_seconds > 0.0 {
            self.write_prometheus();
        }
        tracing::debug!(
            "scan {:.0} ms, restarts and queue {:.0} ms, prometheus {:.0} ms",
            scanned.as_secs_f64() * 1000.0,
            (maintained - scanned).as_secs_f64() * 1000.0,
            (started.elapsed() - maintained).as_secs_f64() * 1000.0
        );
        tracing::info!(
            "one pass over {} active worker(s) in {:.0} ms",
            self.workers.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }

    // ---- the daemon --------------------------------------------------------------------

    /// Runs until SIGTERM or SIGINT.
    pub fn run_daemon(&mut self) -> Result<()> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let sys_err = |what: &str, e: nix::errno::Errno| Error::io(what.to_string(), e.into());

        // Signals are blocked before any thread starts, so only the signalfd sees them.
        // Children get a clean mask: std resets it before exec.
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| sys_err("block signals", e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| sys_err("signalfd", e))?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| sys_err("eventfd", e))?,
        );
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| sys_err("epoll", e))?;
        epoll
            .add(&sigfd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))
            .map_err(|e| sys_err("epoll_ctl", e))?;
        epoll
            .add(
                wake.as_ref(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
            )
            .map_err(|e| sys_err("epoll_ctl", e))?;
        self.epoll = Some(epoll);
        self.wake = Some(wake.clone());

        let _watcher = self.watch(wake)?;
        tracing::info!(
            "heartbeat-monitor watching {} ({}; pidfd budget {}; poll {})",
            self.home.root().display(),
            self.network_fs
                .map(|n| format!("{n}: network filesystem, polling"))
                .unwrap_or_else(|| "inotify".into()),
            self.pidfd_budget,
            self.settings
                .poll_interval
                .map(|s| format!("every {s} s"))
                .unwrap_or_else(|| "off".into())
        );
        // Watch first, then scan: nothing written in between is missed.
        self.scan_all(true)?;
        tracing::info!(
            "ready: {} active worker(s), {} pidfd(s), {} polled, {} pending restart(s)",
            self.workers.len(),
            self.tokens.len(),
            self.polled.len(),
            self.restart.pending.len()
        );
        let now = now_ms();
        self.next_maintain = now;
        self.next_summary = now + secs_ms(self.policy.summary_interval_seconds);
        self.next_prom = now;
        self.schedule_dir_poll(now);

        let mut evs = vec![EpollEvent::empty(); 256];
        while !self.shutdown {
            let timeout = self.wait_ms();
            let n = match self.epoll.as_ref() {
                Some(ep) => match ep.wait(&mut evs, timeout) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => 0,
                    Err(e) => return Err(sys_err("epoll_wait", e)),
                },
                None => 0,
            };
            let mut exited = Vec::new();
            for ev in &evs[..n] {
                match ev.data() {
                    TOKEN_SIGNAL => {
                        while let Ok(Some(si)) = sigfd.read_signal() {
                            let sig = si.ssi_signo as i32;
                            if sig == libc::SIGHUP {
                                tracing::info!("SIGHUP: reloading the policy");
                                self.reload_config();
                            } else {
                                tracing::info!("signal {sig}: shutting down");
                                self.shutdown = true;
                            }
                        }
                    }
                    TOKEN_WAKE => {
                        if let Some(w) = &self.wake {
                            let _ = w.read();
                        }
                        self.fs_pending = true;
                    }
                    tok => exited.push(tok),
                }
            }
            for tok in exited {
                if let Some(id) = self.tokens.remove(&tok) {
                    self.process_gone(&id, "process exited");
                }
            }
            // Under a steady stream of beats, inotify batches are taken at most every
            // FS_BATCH_MS: one wakeup per batch instead of one per beat. Process exits
            // (pidfd) and deadlines (timer heap) are never held back by this.
            if self.fs_pending && now_ms() >= self.last_fs_batch + FS_BATCH_MS {
                self.fs_pending = false;
                self.last_fs_batch = now_ms();
                self.drain_messages();
            }
            self.run_timers();
            self.periodic();
        }
        self.drain_messages();
        if !self.stopping.is_empty() {
            tracing::info!(
                "leaving {} graceful stop(s) to finish in the background",
                self.stopping.len()
            );
        }
        tracing::info!("heartbeat-monitor stopped");
        Ok(())
    }

    fn watch(&self, wake: Arc<nix::sys::eventfd::EventFd>) -> Result<notify::RecommendedWatcher> {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        use notify::{RecursiveMode, Watcher};
        let tx = self.tx.clone();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let msg = match res {
                Ok(ev) => {
                    let wanted = match ev.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        EventKind::Modify(ModifyKind::Metadata(_)) => ev.need_rescan(),
                        _ => true,
                    };
                    if !wanted {
                        return;
                    }
                    Msg::Fs(ev)
                }
                Err(e) => Msg::FsError(e.to_string()),
            };
            if tx.send(msg).is_ok() {
                let _ = wake.write(1);
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start inotify: {e}")))?;
        let mut dirs: Vec<PathBuf> = StateDir::ALL
            .iter()
            .map(|d| self.home.specs_dir(*d))
            .collect();
        if let Some(c) = self.home.policy_path().parent() {
            dirs.push(c.to_path_buf());
        }
        for d in dirs {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
            w.watch(&d, RecursiveMode::NonRecursive)
                .map_err(|e| Error::Internal(format!("cannot watch {}: {e}", d.display())))?;
        }
        Ok(w)
    }

    /// Milliseconds until the next thing is due (the epoll timeout).
    fn wait_ms(&self) -> u16 {
        let mut next = self.next_maintain;
        if self.policy.summary_interval_seconds > 0.0 {
            next = next.min(self.next_summary);
        }
        if self.policy.prometheus_interval_seconds > 0.0 {
            next = next.min(self.next_prom);
        }
        if self.settings.poll_interval.is_some() {
            next = next.min(self.next_dir_poll);
        }
        if !self.polled.is_empty() {
            next = next.min(self.next_identity_poll);
        }
        if let Some(Reverse((at, _, _))) = self.heap.peek() {
            next = next.min(*at);
        }
        if let Some(t) = self.restart.next_wakeup(&self.policy.restart) {
            next = next.min(ms(t));
        }
        if self.fs_pending {
            next = next.min(self.last_fs_batch + FS_BATCH_MS);
        }
        if !self.bad.is_empty() || !self.stopping.is_empty() {
            next = next.min(now_ms() + 1000);
        }
        (next - now_ms()).clamp(0, 60_000) as u16
    }

    fn drain_messages(&mut self) {
        let mut dirty: BTreeSet<(StateDir, String)> = BTreeSet::new();
        let mut config = false;
        let mut rescan = false;
        let dirs = std::mem::take(&mut self.state_dirs);
        let config_dir = self.home.policy_path().parent().map(Path::to_path_buf);
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Fs(ev) => {
                    if ev.need_rescan() {
                        rescan = true;
                    }
                    for p in &ev.paths {
                        let (Some(parent), Some(name)) =
                            (p.parent(), p.file_name().and_then(|n| n.to_str()))
                        else {
                            continue;
                        };
                        if let Some((_, d)) = dirs.iter().find(|(dp, _)| dp == parent) {
                            dirty.insert((*d, name.to_string()));
                        } else if config_dir.as_deref() == Some(parent) {
                            config = true;
                        }
                    }
                }
                Msg::FsError(e) => {
                    tracing::warn!("inotify: {e}; rescanning");
                    rescan = true;
                }
                Msg::StopDone { id, result } => {
                    self.stopping.remove(&id);
                    self.maintain_soon();
                    tracing::info!("graceful stop of {id}: {result}");
                    self.refresh_id(&id);
                }
            }
        }
        self.state_dirs = dirs;
        if config {
            self.reload_config();
        }
        if rescan {
            if let Err(e) = self.scan_all(false) {
                tracing::error!("rescan failed: {e}");
            }
        }
        for (d, name) in dirty {
            self.refresh(d, &name, false);
        }
    }

    fn run_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, t))) = self.heap.pop() else {
                break;
            };
            match t {
                Timer::Judge { id, gen } => {
                    let current = match self.workers.get_mut(&id) {
                        Some(w) if w.gen == gen => {
                            w.scheduled = None;
                            true
                        }
                        _ => false,
                    };
                    if current {
                        self.evaluate(&id);
                    }
                }
                Timer::Sample { id, gen } => {
                    if self.workers.get(&id).is_some_and(|w| w.sample_gen == gen) {
                        self.sample(&id);
                    }
                }
                Timer::AfterShutdown { id } => self.settle_shutdown(&id),
                Timer::BadFile { path } => self.recheck_bad(&path),
            }
        }
    }

    fn periodic(&mut self) {
        let now = now_ms();
        if now >= self.next_identity_poll {
            self.next_identity_poll =
                now + secs_ms(self.settings.poll_interval.unwrap_or(1.0).min(1.0));
            self.poll_identities();
        }
        if self.settings.poll_interval.is_some() && now >= self.next_dir_poll {
            self.schedule_dir_poll(now);
            if let Err(e) = self.scan_all(false) {
                tracing::error!("poll rescan failed: {e}");
            }
        }
        let t = time::now();
        self.restarts(t);
        if now >= self.next_maintain {
            let log_summary =
                self.policy.summary_interval_seconds > 0.0 && now >= self.next_summary;
            if log_summary {
                self.next_summary = now + secs_ms(self.policy.summary_interval_seconds);
            }
            let took = timed(|| self.maintain(t, log_summary));
            self.maintain_cost = took;
            self.next_maintain = now_ms() + paced(self.settings.maintain_interval, took);
        }
        if self.policy.prometheus_interval_seconds > 0.0 && now >= self.next_prom {
            let took = timed(|| self.write_prometheus());
            self.next_prom = now_ms() + paced(self.policy.prometheus_interval_seconds, took);
        }
    }

    /// A worker left `active/`: its claimed task should be requeued soon, not at the next
    /// regular pass (still no more often than the pacing allows).
    fn maintain_soon(&mut self) {
        let soon = now_ms() + paced(0.2, self.maintain_cost);
        self.next_maintain = self.next_maintain.min(soon);
    }

    fn schedule_dir_poll(&mut self, now: i64) {
        if let Some(p) = self.settings.poll_interval {
            self.next_dir_poll = now + secs_ms(p);
        }
    }

    fn maintain(&mut self, now: Timestamp, log_summary: bool) {
        match crate::queue::maintain(&self.home, &self.policy, now) {
            Ok(m) => {
                self.last_maintain_error = None;
                if log_summary && !m.summary.is_empty() {
                    tracing::info!("{}", m.summary);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_maintain_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!("queue maintenance failed: {msg}");
                }
                self.last_maintain_error = Some(msg);
            }
        }
    }

    fn write_prometheus(&self) {
        if let Err(e) = crate::view::write_prometheus(&self.home, &self.home.prom_path()) {
            tracing::warn!("cannot write {}: {e}", self.home.prom_path().display());
        }
    }

    fn reload_config(&mut self) {
        match super::effective_policy(&self.home, &self.overrides) {
            Ok(p) => {
                if p != self.policy {
                    tracing::info!("policy changed: re-judging every worker");
                    self.settings = Settings::of(&p, self.network_fs.is_some());
                    self.policy = p;
                    let ids: Vec<String> = self.workers.keys().cloned().collect();
                    for id in ids {
                        self.evaluate(&id);
                    }
                }
            }
            Err(e) => tracing::warn!("keeping the previous policy: {e}"),
        }
        match WorkerTypes::load(&self.home) {
            Ok(t) => self.types = t,
            Err(e) => tracing::warn!("keeping the previous worker types: {e}"),
        }
    }

    // ---- reading the files -------------------------------------------------------------

    /// Reads every state directory: tracks active workers, validates the rest, and takes up
    /// failures not decided yet. `initial` is the first look (completions found then are old
    /// news for the breakers).
    fn scan_all(&mut self, initial: bool) -> Result<()> {
        let mut seen_active = HashSet::new();
        for d in StateDir::ALL {
            let dir = self.home.specs_dir(d);
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect();
            names.sort();
            for name in names {
                if d == StateDir::Active {
                    if let Some(id) = name.strip_suffix(".json") {
                        seen_active.insert(id.to_string());
                    }
                }
                self.refresh(d, &name, initial);
            }
        }
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|id| !seen_active.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.untrack(&id);
        }
        Ok(())
    }

    /// Re-reads one worker wherever it lives now.
    fn refresh_id(&mut self, id: &str) {
        match spec::locate(&self.home, id) {
            Some((d, _)) => self.refresh(d, &format!("{id}.json"), false),
            None => self.untrack(id),
        }
    }

    /// Looks at one file of a state directory after an event (or in a scan).
    fn refresh(&mut self, dir: StateDir, name: &str, initial: bool) {
        let path = self.home.specs_dir(dir).join(name);
        let Some(id) = name.strip_suffix(".json") else {
            return;
        };
        if name.starts_with('.') {
            return;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                if dir == StateDir::Active {
                    self.untrack(id);
                }
                self.bad.remove(&path);
                return;
            }
        };
        if crate::id::validate("worker", id).is_err() {
            self.note_bad(
                &path,
                format!("file name {name:?} is not a valid worker id"),
            );
            return;
        }
        if dir == StateDir::Active {
            if let Some(w) = self.workers.get(id) {
                if w.ino == FileKey::of(&meta) && meta.file_type().is_file() {
                    return;
                }
            }
        }
        let spec = match spec::read_for_scan(&path) {
            Ok(s) => s,
            Err(ReadError::Missing) => {
                if dir == StateDir::Active {
                    self.untrack(id);
                }
                return;
            }
            Err(ReadError::Refused(why)) => {
                if dir == StateDir::Active {
                    self.untrack(id);
                }
                self.note_bad(&path, why);
                return;
            }
            Err(ReadError::Io(e)) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                return;
            }
        };
        self.bad.remove(&path);
        if spec.worker_id != id {
            let why = format!("file name says {id}, spec says {}", spec.worker_id);
            self.note_bad(&path, why);
            return;
        }
        match dir {
            StateDir::Active => {
                if spec.status.fits(StateDir::Active) {
                    self.track(spec, FileKey::of(&meta));
                } else {
                    // `corral doctor --fix` settles a status that disagrees with its directory.
                    tracing::warn!(
                        "{id} has status {} in active/: left for `corral doctor --fix`",
                        spec.status
                    );
                    self.untrack(id);
                }
            }
            StateDir::Zombie => {
                self.untrack(id);
                self.consider_failure(&spec);
            }
            StateDir::Completed => {
                self.untrack(id);
                let success = spec.status == Status::Completed
                    && spec.exit.as_ref().and_then(|e| e.code) == Some(0);
                if success && !initial && self.restart.on_success(&spec.worker_type) {
                    self.save_restart_state();
                }
            }
            StateDir::Archived => self.untrack(id),
        }
    }

    fn note_bad(&mut self, path: &Path, why: String) {
        if self.bad.insert(path.to_path_buf(), why).is_none() {
            let at = now_ms() + BAD_FILE_SETTLE_MS;
            self.push(
                at,
                Timer::BadFile {
                    path: path.to_path_buf(),
                },
            );
        }
    }

    /// Quarantines a file that is still bad after its settle time. The worker lock is held
    /// (when the name is a valid id) so no writer is racing the move.
    fn recheck_bad(&mut self, path: &Path) {
        let Some(why) = self.bad.remove(path) else {
            return;
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let id = name.strip_suffix(".json").unwrap_or(name);
        let _guard = if crate::id::validate("worker", id).is_ok() {
            spec::lock(&self.home, id).ok()
        } else {
            None
        };
        let still_bad = match spec::read_for_scan(path) {
            Ok(s) => (s.worker_id != id).then_some(why.clone()),
            Err(ReadError::Refused(w)) => Some(w),
            Err(ReadError::Missing) => None,
            Err(ReadError::Io(e)) => Some(e.to_string()),
        };
        let Some(why) = still_bad else {
            drop(_guard);
            if let Some(d) = path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(StateDir::parse)
            {
                self.refresh(d, name, false);
            }
            return;
        };
        match crate::events::quarantine(&self.home, path, &why) {
            Ok(q) => tracing::warn!("quarantined {} as {}: {why}", path.display(), q.display()),
            Err(e) if e.is_not_found_io() => {}
            Err(e) => tracing::error!("cannot quarantine {}: {e}", path.display()),
        }
    }

    // ---- active workers ----------------------------------------------------------------

    fn track(&mut self, spec: WorkerSpec, ino: FileKey) {
        let id = spec.worker_id.clone();
        let view = View::of(&spec);
        let process_changed;
        match self.workers.get_mut(&id) {
            Some(w) => {
                process_changed = w.process != spec.process;
                w.ino = ino;
                w.view = view;
                w.process = spec.process;
                w.worker_type = spec.worker_type;
            }
            None => {
                process_changed = true;
                self.workers.insert(
                    id.clone(),
                    Tracked {
                        ino,
                        view,
                        worker_type: spec.worker_type,
                        process: spec.process,
                        gen: 0,
                        scheduled: None,
                        sample_gen: 0,
                        pidfd: None,
                        sample: None,
                        over_cpu: false,
                        over_mem: false,
                        exited: false,
                    },
                );
            }
        }
        if process_changed {
            self.setup_liveness(&id);
        }
        self.evaluate(&id);
    }

    fn untrack(&mut self, id: &str) {
        if let Some(w) = self.workers.remove(id) {
            if let Some((_, tok)) = w.pidfd {
                self.tokens.remove(&tok);
            }
        }
        self.polled.remove(id);
    }

    /// Chooses how a worker's liveness is watched: a pidfd for a verifiable local process
    /// (opened first, then the identity checked, so a reused pid is never adopted), the
    /// liveness lock where there is one but no verifiable pid, identity polling when the
    /// descriptor budget is spent, and heartbeat age alone for workers of other hosts.
    fn setup_liveness(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if let Some((_, tok)) = w.pidfd.take() {
            self.tokens.remove(&tok);
        }
        self.polled.remove(id);
        w.sample = None;
        w.exited = false;
        let process = w.process.clone();
        match process {
            Some(p) if !p.is_local() => {}
            Some(p) if p.start_time_ticks.is_some() => {
                if !self.daemon {
                    if p.check() == Identity::Alive {
                        self.sample(id);
                    } else {
                        self.process_gone(id, "process exited");
                    }
                    return;
                }
                if (self.tokens.len() as u64) < self.pidfd_budget {
                    match PidFd::open_verified(&p) {
                        Ok(Some(fd)) => {
                            self.register_pidfd(id, fd);
                            self.schedule_sample(id, 0);
                        }
                        Ok(None) => self.process_gone(id, "process exited"),
                        Err(e) => {
                            tracing::warn!("pidfd for {id}: {e}; polling its identity instead");
                            self.polled.insert(id.to_string());
                            self.schedule_sample(id, 0);
                        }
                    }
                } else {
                    self.polled.insert(id.to_string());
                    self.schedule_sample(id, 0);
                }
            }
            _ => {
                // No verifiable pid: the liveness lock is the signal, if the worker has one.
                let lock = self.home.alive_lock(id);
                if lock.exists() {
                    match crate::process::alive_lock_free(&lock) {
                        Ok(true) => {
                            self.process_gone(id, "process exited (liveness lock released)")
                        }
                        Ok(false) => {
                            self.polled.insert(id.to_string());
                        }
                        Err(e) => tracing::warn!("liveness lock of {id}: {e}"),
                    }
                }
            }
        }
    }

    fn register_pidfd(&mut self, id: &str, fd: PidFd) {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let tok = self.next_token;
        self.next_token += 1;
        let added = match &self.epoll {
            // Closing the pidfd (untrack) removes it from the set.
            Some(ep) => ep
                .add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, tok))
                .is_ok(),
            None => false,
        };
        if !added {
            self.polled.insert(id.to_string());
            return;
        }
        self.tokens.insert(tok, id.to_string());
        if let Some(w) = self.workers.get_mut(id) {
            w.pidfd = Some((fd, tok));
        }
    }

    /// Identity and liveness-lock checks for workers without a pidfd.
    fn poll_identities(&mut self) {
        let ids: Vec<String> = self.polled.iter().cloned().collect();
        for id in ids {
            let Some(w) = self.workers.get(&id) else {
                self.polled.remove(&id);
                continue;
            };
            let gone = match &w.process {
                Some(p) if p.start_time_ticks.is_some() && p.is_local() => {
                    (p.check() != Identity::Alive).then_some("process exited")
                }
                _ => match crate::process::alive_lock_free(&self.home.alive_lock(&id)) {
                    Ok(true) => Some("process exited (liveness lock released)"),
                    _ => None,
                },
            };
            if let Some(why) = gone {
                self.polled.remove(&id);
                self.process_gone(&id, why);
            }
        }
    }

    /// The worker's process is gone: `worker_failed` (exit status when it was our child),
    /// a stop when it was shutting down or had reported 100 % progress.
    fn process_gone(&mut self, id: &str, how: &str) {
        if self.stopping.contains(id) {
            return;
        }
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if let Some((_, tok)) = w.pidfd.take() {
            self.tokens.remove(&tok);
        }
        self.polled.remove(id);
        w.exited = true;
        let (mut status, mut finished) =
            (w.view.status, w.view.progress.is_some_and(|p| p >= 100.0));
        let pid = w.process.as_ref().map(|p| p.pid).unwrap_or(0);
        // The exit can arrive before inotify brings the spec change that explains it
        // (`stop-worker` writes shutting_down before its SIGTERM; a work loop completes its
        // worker before exiting): judge by the spec as it is now, not the cached view.
        match spec::load(&self.home, id) {
            Ok(l) if l.dir == StateDir::Active => {
                status = l.spec.status;
                finished = finished || l.spec.heartbeat.progress.is_some_and(|p| p >= 100.0);
            }
            Ok(_) | Err(Error::NotFound(_)) => {
                let _ = sys::reap(pid);
                self.refresh_id(id);
                return;
            }
            Err(_) => {}
        }
        let (code, signal) = sys::reap(pid).unwrap_or((None, None));
        let reason = match (code, signal) {
            (Some(c), _) => format!("{how} with code {c}"),
            (_, Some(s)) => format!("{how}: killed by signal {s}"),
            _ => how.to_string(),
        };
        if status == Status::ShuttingDown {
            let at = now_ms() + secs_ms(self.policy.grace_seconds + SHUTDOWN_SETTLE_SECONDS);
            if self.daemon {
                self.push(at, Timer::AfterShutdown { id: id.to_string() });
            }
            return;
        }
        let res = if finished {
            lifecycle::record_stopped(
                &self.home,
                id,
                &format!("{reason} after reporting completion"),
                &[StateDir::Active],
            )
        } else {
            lifecycle::fail_worker(&self.home, id, &reason, code, signal)
        };
        match res {
            Ok(spec) => {
                tracing::info!("{id}: {reason} → {}", spec.status);
                self.untrack(id);
                self.maintain_soon();
                if spec.status == Status::Failed {
                    self.consider_failure(&spec);
                }
            }
            Err(e) => {
                tracing::debug!("{id} moved on before its exit was recorded: {e}");
                self.refresh_id(id);
            }
        }
    }

    /// A shutting-down worker's process ended: stop-worker normally records the stop; if
    /// it has not (it died), the monitor does.
    fn settle_shutdown(&mut self, id: &str) {
        if self.stopping.contains(id) {
            return;
        }
        match lifecycle::record_stopped(
            &self.home,
            id,
            "process exited while shutting down",
            &[StateDir::Active],
        ) {
            Ok(_) => {
                tracing::info!("{id}: recorded the stop its stopper did not");
                self.untrack(id);
            }
            Err(e) => {
                tracing::debug!("{id}: stop already settled: {e}");
                self.refresh_id(id);
            }
        }
    }

    /// Applies whatever is due for a worker now, then schedules its next deadline.
    fn evaluate(&mut self, id: &str) {
        for _ in 0..4 {
            let now = time::now();
            let Some(w) = self.workers.get(id) else {
                return;
            };
            if w.exited || self.stopping.contains(id) {
                return;
            }
            let Some(action) = judge::due(&w.view, &self.policy, now) else {
                break;
            };
            if !self.apply(id, action, now) {
                break;
            }
        }
        let now = time::now();
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let Some(next) = judge::next_deadline(&w.view, &self.policy, now).map(ms) else {
            return;
        };
        if w.scheduled == Some(next) {
            return;
        }
        w.gen += 1;
        w.scheduled = Some(next);
        let gen = w.gen;
        self.push(
            next,
            Timer::Judge {
                id: id.to_string(),
                gen,
            },
        );
    }

    /// Reads an active spec again (an event for it may still be queued) and judges it
    /// afresh: a worker is only failed or declared a zombie on what its file says now.
    fn confirm(&mut self, id: &str, now: Timestamp) -> Option<Action> {
        let path = self.home.spec_path(StateDir::Active, id);
        let key = FileKey::at(&path);
        let fresh = match self.workers.get(id) {
            Some(w) if w.ino == key => return judge::due(&w.view, &self.policy, now),
            Some(_) => spec::read(&path).ok(),
            None => return None,
        };
        match fresh {
            Some(s) if s.worker_id == id => {
                let view = View::of(&s);
                let due = judge::due(&view, &self.policy, now);
                let mut process_changed = false;
                if let Some(w) = self.workers.get_mut(id) {
                    w.view = view;
                    w.ino = key;
                    if w.process != s.process {
                        w.process = s.process;
                        process_changed = true;
                    }
                }
                if process_changed {
                    self.setup_liveness(id);
                }
                due
            }
            _ => {
                self.refresh_id(id);
                None
            }
        }
    }

    /// Applies one action; true when the worker is still tracked and may need another.
    fn apply(&mut self, id: &str, action: Action, now: Timestamp) -> bool {
        let action = match action {
            Action::FailPending { .. } | Action::Zombify { .. } => match self.confirm(id, now) {
                Some(a) if std::mem::discriminant(&a) == std::mem::discriminant(&action) => a,
                _ => return self.workers.contains_key(id),
            },
            a => a,
        };
        match action {
            Action::FailPending { waited } => {
                let reason = format!(
                    "pending for {waited:.0} s: never confirmed alive (pending_timeout_seconds {})",
                    self.policy.pending_timeout_seconds
                );
                match lifecycle::fail_worker(&self.home, id, &reason, None, None) {
                    Ok(spec) => {
                        tracing::info!("{id}: {reason}");
                        self.untrack(id);
                        self.consider_failure(&spec);
                    }
                    Err(e) => {
                        tracing::debug!("{id}: {e}");
                        self.refresh_id(id);
                    }
                }
                false
            }
            Action::Zombify { age } => {
                let reason = format!(
                    "no heartbeat for {age:.1} s (zombie_seconds {})",
                    self.policy.zombie_seconds
                );
                let last = self
                    .workers
                    .get(id)
                    .and_then(|w| w.view.last_alive)
                    .map(|t| time::format(&t));
                let data = json!({
                    "age_seconds": age,
                    "last_seen": last,
                    "zombie_seconds": self.policy.zombie_seconds,
                    "detected_by": "heartbeat age",
                });
                match lifecycle::zombify_worker(&self.home, id, &reason, data) {
                    Ok(spec) => {
                        tracing::warn!("{id}: zombie: {reason}");
                        self.untrack(id);
                        self.maintain_soon();
                        self.consider_failure(&spec);
                    }
                    Err(e) => {
                        tracing::debug!("{id}: {e}");
                        self.refresh_id(id);
                    }
                }
                false
            }
            Action::StopTimeout { minutes } => {
                self.stop(
                    id,
                    format!("timeout: running longer than {minutes} minute(s)"),
                );
                false
            }
            Action::StopIdle { idle } => {
                self.stop(
                    id,
                    format!(
                        "idle for {idle:.0} s (idle_timeout_seconds {})",
                        self.policy.idle_timeout_seconds
                    ),
                );
                false
            }
            Action::Alert { level, .. } => self.raise_alert(id, level, now),
            Action::Health { .. } => {
                let policy = self.policy.clone();
                self.update_active(id, |s| {
                    let v = View::of(s);
                    let score = judge::health_score(&v, &policy, now);
                    let label = judge::health_label(score, v.alert);
                    if s.heartbeat.health_score == score
                        && s.heartbeat.health.as_deref() == Some(label)
                    {
                        return false;
                    }
                    s.heartbeat.health_score = score;
                    s.heartbeat.health = Some(label.to_string());
                    true
                })
                .is_some()
            }
        }
    }

    fn raise_alert(&mut self, id: &str, level: Alert, now: Timestamp) -> bool {
        let policy = self.policy.clone();
        let mut age = 0.0;
        let res = self.update_active_full(id, |s| {
            let v = View::of(s);
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
            let score = judge::health_score(&v, &policy, now);
            s.heartbeat.health_score = score;
            s.heartbeat.health = Some(judge::health_label(score, level).to_string());
            true
        });
        match res {
            Some(Update::Written(spec, _)) => {
                let (kind, threshold) = match level {
                    Alert::Critical => (EventType::HeartbeatCritical, policy.critical_seconds),
                    _ => (EventType::HeartbeatWarning, policy.warning_seconds),
                };
                let ev = Event::new(
                    kind,
                    format!("{id}: no heartbeat for {age:.1} s ({})", level.as_str()),
                )
                .worker(&spec)
                .with("age_seconds", round1(age))
                .with("last_seen", spec.last_alive().map(|t| time::format(&t)))
                .with("threshold_seconds", threshold)
                .with("health_score", spec.heartbeat.health_score);
                tracing::warn!("{}", ev.message);
                self.emit_alerting(ev, level == Alert::Critical);
                true
            }
            Some(Update::Unchanged(..)) => true,
            _ => false,
        }
    }

    /// Rewrites an active spec under its lock if `f` changes it; keeps the view current.
    fn update_active(&mut self, id: &str, f: impl FnOnce(&mut WorkerSpec) -> bool) -> Option<()> {
        match self.update_active_full(id, f) {
            Some(Update::Written(..)) | Some(Update::Unchanged(..)) => Some(()),
            _ => None,
        }
    }

    fn update_active_full(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut WorkerSpec) -> bool,
    ) -> Option<Update> {
        let res = (|| -> Result<Update> {
            let _g = spec::lock(&self.home, id)?;
            let Some((dir, path)) = spec::locate(&self.home, id) else {
                return Ok(Update::Moved);
            };
            if dir != StateDir::Active {
                return Ok(Update::Moved);
            }
            let mut s = spec::read(&path)?;
            if !f(&mut s) {
                return Ok(Update::Unchanged(Box::new(s), FileKey::at(&path)));
            }
            s.normalize(time::now());
            spec::save(&self.home, StateDir::Active, &s)?;
            Ok(Update::Written(Box::new(s), FileKey::at(&path)))
        })();
        match res {
            Ok(Update::Moved) => {
                self.refresh_id(id);
                Some(Update::Moved)
            }
            Ok(u) => {
                let (s, ino) = match &u {
                    Update::Written(s, ino) | Update::Unchanged(s, ino) => (s, *ino),
                    Update::Moved => return Some(u),
                };
                if let Some(w) = self.workers.get_mut(id) {
                    w.view = View::of(s);
                    w.ino = ino;
                    if w.process != s.process {
                        w.process = s.process.clone();
                    }
                }
                Some(u)
            }
            Err(e) => {
                tracing::warn!("cannot update {id}: {e}");
                None
            }
        }
    }

    /// A graceful stop (timeouts, idle, orphans) through `shutdown::stop_worker`: in a
    /// helper thread in the daemon (the grace period must not delay detection).
    fn stop(&mut self, id: &str, reason: String) {
        if !self.stopping.insert(id.to_string()) {
            return;
        }
        tracing::info!("stopping {id}: {reason}");
        let grace = Duration::from_secs_f64(self.policy.grace_seconds.max(0.0));
        if !self.daemon {
            let r = crate::shutdown::stop_worker(&self.home, id, grace, &reason);
            self.stopping.remove(id);
            match r {
                Ok(_) => self.untrack(id),
                Err(e) => tracing::warn!("cannot stop {id}: {e}"),
            }
            return;
        }
        let home = self.home.clone();
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        let owned = id.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("stop-{id}"))
            .spawn(move || {
                let result = match crate::shutdown::stop_worker(&home, &owned, grace, &reason) {
                    Ok(s) => format!("{} ({reason})", s.status),
                    Err(e) => format!("failed: {e}"),
                };
                if tx.send(Msg::StopDone { id: owned, result }).is_ok() {
                    if let Some(w) = wake {
                        let _ = w.write(1);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a stop thread for {id}: {e}");
            self.stopping.remove(id);
        }
    }

    // ---- resources ---------------------------------------------------------------------

    fn schedule_sample(&mut self, id: &str, delay_ms: i64) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.sample_gen += 1;
        let gen = w.sample_gen;
        self.push(
            now_ms() + delay_ms,
            Timer::Sample {
                id: id.to_string(),
                gen,
            },
        );
    }

    /// Samples CPU and RSS of a local worker, raises threshold violations, checks for an
    /// orphan, and writes the figures only when they moved noticeably.
    fn sample(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let Some(p) = w.process.clone().filter(|p| p.is_local()) else {
            return;
        };
        if w.exited {
            return;
        }
        let Some(cur) = sys::sample(p.pid) else {
            return;
        };
        let cpu = sys::cpu_percent(w.sample.as_ref(), &cur, p.pid).map(round1);
        w.sample = Some(cur);
        let rss = round1(cur.rss_mb);
        let mem_pct = self.mem_total_mb.map(|t| rss / t * 100.0);
        let mut violations = Vec::new();
        if let Some(c) = cpu {
            let over = c > self.policy.cpu_threshold_percent;
            if over && !w.over_cpu {
                violations.push(("cpu_percent", c, self.policy.cpu_threshold_percent));
            }
            w.over_cpu = over;
        }
        if let Some(m) = mem_pct {
            let over = m > self.policy.memory_threshold_percent;
            if over && !w.over_mem {
                violations.push((
                    "memory_percent",
                    round1(m),
                    self.policy.memory_threshold_percent,
                ));
            }
            w.over_mem = over;
        }
        let old_cpu = w.view.cpu_percent;
        let old_rss = w.view.rss_mb;
        let moved = match (old_cpu, cpu) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => (a - b).abs() >= 5.0,
            _ => false,
        } || match old_rss {
            None => true,
            Some(a) => (a - rss).abs() >= (a * 0.1).max(1.0),
        };
        if moved {
            let policy = self.policy.clone();
            let now = time::now();
            self.update_active(id, |s| {
                s.resources.cpu_percent = cpu.or(s.resources.cpu_percent);
                s.resources.rss_mb = Some(rss);
                let v = View::of(s);
                let score = judge::health_score(&v, &policy, now);
                s.heartbeat.health_score = score;
                s.heartbeat.health = Some(judge::health_label(score, v.alert).to_string());
                true
            });
        }
        for (metric, value, threshold) in violations {
            let Some(spec) = spec::locate(&self.home, id)
                .filter(|(d, _)| *d == StateDir::Active)
                .and_then(|(_, p)| spec::read(&p).ok())
            else {
                continue;
            };
            let ev = Event::new(
                EventType::ThresholdViolation,
                format!("{id}: {metric} {value} over the threshold {threshold}"),
            )
            .worker(&spec)
            .with("metric", metric)
            .with("value", value)
            .with("threshold", threshold)
            .with("pid", p.pid)
            .with("rss_mb", rss)
            .with("cpu_percent", cpu);
            tracing::warn!("{}", ev.message);
            self.emit_alerting(ev, true);
        }
        if self.policy.check_orphans {
            if let Some(parent) = p.parent_pid.filter(|pp| *pp > 1) {
                if crate::process::read_stat(parent).is_none() {
                    self.stop(id, format!("orphaned: parent process {parent} is gone"));
                    return;
                }
            }
        }
        if self.daemon {
            let every = secs_ms(self.settings.sample_interval);
            self.schedule_sample(id, every);
        }
        self.evaluate(id);
    }

    /// Emits an event and, for the ones that need a human, runs the alert command with it.
    fn emit_alerting(&self, ev: Event, alert: bool) {
        let line = ev.to_line().ok();
        events::emit(&self.home, ev);
        if alert && !self.policy.alert_command.is_empty() {
            if let Some(line) = line {
                sys::run_alert(&self.policy.alert_command, line, ALERT_TIMEOUT);
            }
        }
    }

    // ---- failures and restarts ---------------------------------------------------------

    fn max_retries(&self, worker_type: &str) -> u32 {
        self.types
            .types
            .get(worker_type)
            .and_then(|t| t.max_retries)
            .unwrap_or(self.policy.restart.max_retries)
    }

    fn save_restart_state(&self) {
        if let Err(e) = self.restart.save(&self.home) {
            tracing::error!("cannot save the restart state: {e}");
        }
    }

    fn history(&self, line: Value) {
        if let Err(e) = events::append_jsonl(
            &self.home,
            &self.home.restart_history_path(),
            "restart-history",
            &line,
        ) {
            tracing::error!("cannot append to the restart history: {e}");
        }
    }

    /// A failed or zombie worker was seen: count it for its type's breaker and decide about
    /// a restart (once per failure, across monitor restarts).
    fn consider_failure(&mut self, spec: &WorkerSpec) {
        let now = time::now();
        let local = spec.process.as_ref().is_none_or(|p| p.is_local());
        let max = self.max_retries(&spec.worker_type);
        let Some(fx) = self
            .restart
            .on_failure(spec, local, max, &self.policy.restart, now)
        else {
            return;
        };
        self.save_restart_state();
        let id = &spec.worker_id;
        if fx.tripped {
            let reset_at = now
                + chrono::Duration::milliseconds(secs_ms(
                    self.policy.restart.breaker_reset_seconds,
                ));
            let ev = Event::new(
                EventType::CircuitBreakerTripped,
                format!(
                    "circuit breaker for {} tripped after {} consecutive failures",
                    spec.worker_type, fx.consecutive_failures
                ),
            )
            .with("worker_type", spec.worker_type.clone())
            .with("consecutive_failures", fx.consecutive_failures)
            .with("reset_at", time::format(&reset_at))
            .with("last_failed_worker_id", id.clone());
            tracing::warn!("{}", ev.message);
            self.emit_alerting(ev, true);
        }
        match fx.decision {
            Decision::Scheduled(pr) => {
                let delay = (pr.due - now).num_milliseconds() as f64 / 1000.0;
                tracing::info!("{id}: restart attempt {} in {delay:.1} s", pr.attempt);
                events::emit(
                    &self.home,
                    Event::new(
                        EventType::WorkerRestartScheduled,
                        format!("{id}: restart attempt {} in {delay:.1} s", pr.attempt),
                    )
                    .worker(spec)
                    .with("attempt", pr.attempt)
                    .with("delay_seconds", delay)
                    .with("due", time::format(&pr.due))
                    .with("original_worker_id", pr.original_worker_id.clone()),
                );
            }
            Decision::Abandoned { attempt, reason } => {
                let original = spec
                    .restart
                    .original_worker_id
                    .clone()
                    .unwrap_or_else(|| id.clone());
                let lineage = restart::Lineage {
                    original: &original,
                    failed: id,
                    worker_type: &spec.worker_type,
                    attempt,
                };
                self.history(lineage.line(now, None, "abandoned", &reason));
                let ev = Event::new(
                    EventType::WorkerRestartAbandoned,
                    format!("{id}: not restarting: {reason}"),
                )
                .worker(spec)
                .with("attempt", attempt)
                .with("reason", reason.clone())
                .with("original_worker_id", original);
                tracing::warn!("{}", ev.message);
                self.emit_alerting(ev, true);
            }
            Decision::NotRestartable(why) => {
                tracing::debug!("{id} is not restarted: {why}");
            }
        }
    }

    /// Breaker resets and restarts that are due.
    fn restarts(&mut self, now: Timestamp) {
        let mut changed = self.restart.prune(now);
        for t in self.restart.reset_breakers(&self.policy.restart, now) {
            changed = true;
            events::emit(
                &self.home,
                Event::new(
                    EventType::CircuitBreakerReset,
                    format!("circuit breaker for {t} reset"),
                )
                .with("worker_type", t.clone()),
            );
            tracing::info!("circuit breaker for {t} reset");
        }
        if changed {
            self.save_restart_state();
        }
        for fid in self.restart.due(now) {
            self.restart_one(&fid, now);
        }
    }

    fn restart_one(&mut self, fid: &str, now: Timestamp) {
        let Some(pr) = self.restart.pending.get(fid).cloned() else {
            return;
        };
        let lineage = restart::Lineage {
            original: &pr.original_worker_id,
            failed: fid,
            worker_type: &pr.worker_type,
            attempt: pr.attempt,
        };
        let history = |m: &Self, new: Option<&str>, result: &str, reason: &str| {
            m.history(lineage.line(now, new, result, reason))
        };
        if let Gate::Wait { until, reason } = self.restart.gate(&pr, &self.policy.restart, now) {
            if pr.blocked.as_deref() != Some(reason.as_str()) {
                history(self, None, "blocked", &reason);
                tracing::info!("restart of {fid} waits: {reason}");
            }
            if let Some(p) = self.restart.pending.get_mut(fid) {
                p.blocked = Some(reason);
                p.due = until.max(now + chrono::Duration::milliseconds(100));
            }
            self.save_restart_state();
            return;
        }
        self.terminate_leftover(fid);
        let req = SpawnRequest {
            worker_type: pr.worker_type.clone(),
            task_id: pr.task_id.clone(),
            master: pr.master.clone(),
            priority: Some(pr.priority),
            repo: pr.repo.clone(),
            tokens: Some(pr.tokens),
            timeout_minutes: pr.timeout_minutes,
            session: pr.session_id.clone(),
            count: 1,
            id: None,
            command: Some(pr.command.clone()),
            dry_run: false,
            restart_of: Some((pr.original_worker_id.clone(), pr.attempt)),
        };
        match lifecycle::spawn(&self.home, &req) {
            Ok(specs) => {
                let new = specs
                    .first()
                    .map(|s| s.worker_id.clone())
                    .unwrap_or_default();
                self.restart.pending.remove(fid);
                self.restart.record_restart(&pr.worker_type, now);
                self.save_restart_state();
                history(self, Some(&new), "success", &format!("restart of {fid}"));
                let mut ev = Event::new(
                    EventType::WorkerRestarted,
                    format!("{fid} restarted as {new} (attempt {})", pr.attempt),
                )
                .with("attempt", pr.attempt)
                .with("failed_worker_id", fid)
                .with("original_worker_id", pr.original_worker_id.clone())
                .with("new_worker_id", new.clone());
                if let Some(s) = specs.first() {
                    ev = ev.worker(s);
                }
                tracing::info!("{}", ev.message);
                events::emit(&self.home, ev);
                // Watch the new worker at once rather than on its inotify event.
                self.refresh(StateDir::Active, &format!("{new}.json"), false);
            }
            Err(Error::Budget { need, available }) => {
                let reason =
                    format!("insufficient token budget: need {need}, available {available}");
                if pr.blocked.as_deref() != Some(reason.as_str()) {
                    history(self, None, "blocked", &reason);
                }
                let retry = self.policy.restart.backoff_seconds(pr.attempt).max(1.0);
                if let Some(p) = self.restart.pending.get_mut(fid) {
                    p.blocked = Some(reason);
                    p.due = now + chrono::Duration::milliseconds(secs_ms(retry));
                }
                self.save_restart_state();
            }
            Err(e) => {
                let reason = format!("cannot restart: {e}");
                history(self, None, "failed", &reason);
                let ev = Event::new(EventType::WorkerRestartFailed, format!("{fid}: {reason}"))
                    .with("attempt", pr.attempt)
                    .with("failed_worker_id", fid)
                    .with("original_worker_id", pr.original_worker_id.clone())
                    .with("error", e.to_string());
                tracing::warn!("{}", ev.message);
                events::emit(&self.home, ev);
                let transient = matches!(e, Error::Io { .. } | Error::Internal(_));
                if transient {
                    let retry = self.policy.restart.backoff_seconds(pr.attempt).max(1.0);
                    if let Some(p) = self.restart.pending.get_mut(fid) {
                        p.due = now + chrono::Duration::milliseconds(secs_ms(retry));
                    }
                } else {
                    // A configuration problem (command or type gone): retrying cannot help.
                    self.restart.pending.remove(fid);
                    self.restart
                        .abandoned
                        .insert(pr.original_worker_id.clone(), time::format(&now));
                    events::emit(
                        &self.home,
                        Event::new(
                            EventType::WorkerRestartAbandoned,
                            format!("{fid}: not restarting: {reason}"),
                        )
                        .with("attempt", pr.attempt)
                        .with("reason", reason.clone())
                        .with("original_worker_id", pr.original_worker_id.clone()),
                    );
                }
                self.save_restart_state();
            }
        }
    }

    /// A zombie restarted while its (hung) process still runs here would run twice: end the
    /// old process first, identity-checked, in the background.
    fn terminate_leftover(&self, fid: &str) {
        let Ok(loc) = spec::load(&self.home, fid) else {
            return;
        };
        let Some(p) = loc
            .spec
            .process
            .clone()
            .filter(|p| p.check() == Identity::Alive)
        else {
            return;
        };
        let grace = Duration::from_secs_f64(self.policy.grace_seconds.max(0.0));
        let home = self.home.clone();
        let spec = loc.spec.clone();
        let _ = std::thread::Builder::new()
            .name(format!("end-{fid}"))
            .spawn(move || {
                if let Ok((true, killed)) = crate::process::terminate(&p, grace) {
                    events::emit(
                        &home,
                        Event::new(
                            EventType::ZombieProcessTerminated,
                            format!("ended the leftover process {} of {}", p.pid, spec.worker_id),
                        )
                        .worker(&spec)
                        .with("pid", p.pid)
                        .with("killed", killed),
                    );
                }
            });
    }
}
