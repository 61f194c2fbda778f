//! From files to tracked workers: reading a state directory entry after an inotify event or
//! in a scan, adopting active workers (with a pidfd, a liveness-lock poll, or heartbeat age
//! alone), finishing half-done moves, correcting clocks that run ahead, and quarantining
//! files that do not parse. Nothing here waits for a lock (S4).

use super::actions::{self, Outcome};
use super::files::FileKey;
use super::glance::Glance;
use super::monitor::{now_ms, Monitor, Timer, Tracked};
use super::verdicts::{self, Action, View};
use crate::error::{Error, Result};
use crate::home::StateDir;
use crate::process::{Identity, PidFd};
use crate::spec::{self, Status, WorkerSpec};
use crate::store::ReadError;
use crate::time::{self, Timestamp};
use std::collections::HashSet;
use std::path::Path;

/// How long a file that does not parse is given to settle (a non-atomic writer may be
/// half-way through it) before it is quarantined.
pub const BAD_FILE_SETTLE_MS: i64 = 500;

impl Monitor {
    /// Reads every state directory: tracks active workers, validates the rest, and takes up
    /// failures not decided yet. `initial` is the first look (completions found then are old
    /// news for the breakers).
    pub fn scan_all(&mut self, initial: bool) -> Result<()> {
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
    pub fn refresh_id(&mut self, id: &str) {
        match spec::locate(&self.home, id) {
            Some((d, _)) => self.refresh(d, &format!("{id}.json"), false),
            None => self.untrack(id),
        }
    }

    /// Looks at one file of a state directory after an event (or in a scan).
    pub fn refresh(&mut self, dir: StateDir, name: &str, initial: bool) {
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
        let key = FileKey::of(&meta);
        if dir == StateDir::Active
            && meta.file_type().is_file()
            && self.workers.get(id).is_some_and(|w| w.key == key)
        {
            return;
        }
        let bytes = match crate::store::read_guarded(&path) {
            Ok(b) => b,
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
        let glance = (dir == StateDir::Active)
            .then(|| Glance::parse(&bytes).ok())
            .flatten()
            .filter(|g| g.worker_id == id);
        if dir == StateDir::Active {
            if let Some(g) = &glance {
                if self.workers.get(id).is_some_and(|w| w.trusts(g)) {
                    self.bad.remove(&path);
                    self.beat(id, g, key);
                    return;
                }
            }
        }
        let spec = match serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
            .and_then(|v| WorkerSpec::from_value(v).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(why) => {
                if dir == StateDir::Active {
                    self.untrack(id);
                }
                self.note_bad(&path, why);
                return;
            }
        };
        self.bad.remove(&path);
        if spec.worker_id != id {
            let why = format!("file name says {id}, spec says {}", spec.worker_id);
            self.note_bad(&path, why);
            return;
        }
        if !spec.status.fits(dir) {
            self.finish_move(dir, id);
            return;
        }
        match dir {
            StateDir::Active => {
                self.track(spec, key);
                if let (Some(w), Some(g)) = (self.workers.get_mut(id), glance) {
                    w.validated = Some((g.keys, g.status));
                }
            }
            StateDir::Zombie => {
                self.untrack(id);
                if !initial {
                    crate::queue::counts::owe_recount(&self.home);
                    self.maintain_soon();
                }
                self.consider_failure(&spec);
            }
            StateDir::Completed => {
                self.untrack(id);
                let success = spec.status == Status::Completed
                    && spec.exit.as_ref().and_then(|e| e.code) == Some(0);
                if !success && !initial {
                    // It may have died between a task's move and its count update.
                    crate::queue::counts::owe_recount(&self.home);
                    self.maintain_soon();
                }
                if success && !initial && self.restarts.state.on_success(&spec.worker_type) {
                    self.restarts.save();
                }
            }
            StateDir::Archived => {
                self.untrack(id);
                // An archived worker never comes back.
                if self
                    .restarts
                    .cancel(id, &format!("{id} was archived"), time::now())
                {
                    self.schedule_restarts();
                }
            }
        }
    }

    /// A spec whose status belongs further on than its directory: a crash interrupted its
    /// move; finish it (S6).
    fn finish_move(&mut self, dir: StateDir, id: &str) {
        if dir == StateDir::Active {
            self.untrack(id);
        }
        match actions::finish_move(&self.home, id, dir) {
            Outcome::Done(Some(s)) => {
                tracing::warn!(
                    "{id}: finished its move to {}/ (status {}), which a crash had left half-done",
                    s.status.home_dir().name(),
                    s.status
                );
                self.maintain_soon();
                if !self.daemon {
                    self.refresh_id(id);
                }
            }
            Outcome::Done(None) => {
                tracing::warn!(
                    "{id} has a status its directory {}/ cannot hold: left for `corral doctor --fix`",
                    dir.name()
                );
            }
            Outcome::Busy => {
                self.note_held(id);
                self.timers.set(
                    Timer::Recheck(dir, format!("{id}.json")),
                    now_ms().saturating_add(actions::RETRY_MAX_MS),
                )
            }
            Outcome::Moved => self.refresh_id(id),
            Outcome::Failed(e) => tracing::warn!("{id}: cannot finish its move: {e}"),
        }
    }

    /// Remembers a file that does not parse, to look at it again after its settle time.
    pub fn note_bad(&mut self, path: &Path, why: String) {
        if self.bad.insert(path.to_path_buf(), why).is_none() {
            self.timers.set(
                Timer::BadFile(path.to_path_buf()),
                now_ms().saturating_add(BAD_FILE_SETTLE_MS),
            );
        }
    }

    /// Quarantines a file that is still bad after its settle time. The worker lock is held
    /// (when the name is a valid id and the lock is free) so no writer is racing the move.
    pub fn recheck_bad(&mut self, path: &Path) {
        let Some(why) = self.bad.remove(path) else {
            return;
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let id = name.strip_suffix(".json").unwrap_or(name);
        let guard = if crate::id::validate("worker", id).is_ok() {
            match crate::store::try_lock(&self.home.worker_lock(id)) {
                Ok(Some(g)) => Some(g),
                // Someone is writing it: look again later.
                Ok(None) => {
                    self.note_bad(path, why);
                    return;
                }
                Err(_) => None,
            }
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
            drop(guard);
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

    /// Takes up (or updates) an active worker.
    pub fn track(&mut self, spec: WorkerSpec, key: FileKey) {
        let id = spec.worker_id.clone();
        let now = time::now();
        if verdicts::clock_ahead(spec.heartbeat.last_seen, now).is_some() {
            self.clamp_clock(&id, now);
        }
        let process_changed = match self.workers.get_mut(&id) {
            Some(w) => {
                let floor = w.view.floor;
                w.key = key;
                w.view = View::of(&spec);
                w.view.floor = floor;
                w.worker_type = spec.worker_type.clone();
                let changed = w.process != spec.process;
                if changed {
                    w.container = super::containers::ContainerTrack::of(&spec);
                }
                w.process = spec.process;
                changed
            }
            None => {
                self.workers.insert(id.clone(), Tracked::new(&spec, key));
                true
            }
        };
        if process_changed {
            self.setup_liveness(&id);
        }
        self.evaluate(&id);
    }

    /// A new version of a spec whose shape was validated before (a beat): only the view
    /// changes.
    fn beat(&mut self, id: &str, g: &Glance, key: FileKey) {
        let now = time::now();
        if verdicts::clock_ahead(g.last_seen, now).is_some() {
            self.clamp_clock(id, now);
        }
        if let Some(w) = self.workers.get_mut(id) {
            let floor = w.view.floor;
            w.view = g.view.clone();
            w.view.floor = floor;
            w.key = key;
        }
        self.evaluate(id);
    }

    /// S8: a `last_seen` in the future is rewritten to now (and said once).
    fn clamp_clock(&mut self, id: &str, now: Timestamp) {
        match actions::clamp_future(&self.home, id, now) {
            Outcome::Busy => {
                self.note_held(id);
                self.timers.set(
                    Timer::Recheck(StateDir::Active, format!("{id}.json")),
                    now_ms().saturating_add(actions::RETRY_MIN_MS),
                )
            }
            Outcome::Failed(e) => tracing::warn!("{id}: cannot correct its last_seen: {e}"),
            Outcome::Done(_) | Outcome::Moved => {}
        }
    }

    /// Forgets a worker.
    pub fn untrack(&mut self, id: &str) {
        if let Some(w) = self.workers.remove(id) {
            if let Some(tok) = w.pidfd {
                self.tokens.remove(&tok);
                self.unwatch(tok);
            }
        }
        self.polled.remove(id);
        self.lock_released(id);
        self.timers.cancel(&Timer::Judge(id.to_string()));
        self.timers.cancel(&Timer::Settle(id.to_string()));
    }

    /// Chooses how a worker's liveness is watched: a pidfd for a verifiable local process
    /// (opened first, then the identity checked, so a reused pid is never adopted), the
    /// liveness lock where there is one but no verifiable pid, identity polling when the
    /// descriptor budget is spent, and heartbeat age alone for workers of other hosts.
    pub fn setup_liveness(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let old = w.pidfd.take();
        w.reading = None;
        w.exited = false;
        w.exit = None;
        let process = w.process.clone();
        if let Some(tok) = old {
            self.tokens.remove(&tok);
            self.unwatch(tok);
        }
        self.polled.remove(id);
        match process {
            Some(p) if !p.is_local() => {}
            Some(p) if p.start_time_ticks.is_some() => {
                if !self.daemon {
                    if p.check() != Identity::Alive {
                        self.on_exit(id, "process exited");
                    }
                    return;
                }
                if (self.tokens.len() as u64) >= self.pidfd_budget {
                    self.polled.insert(id.to_string());
                    return;
                }
                match PidFd::open_verified(&p) {
                    Ok(Some(fd)) => self.register_pidfd(id, fd),
                    Ok(None) => self.on_exit(id, "process exited"),
                    Err(e) => {
                        tracing::warn!("pidfd for {id}: {e}; polling its identity instead");
                        self.polled.insert(id.to_string());
                    }
                }
            }
            _ => {
                // No verifiable pid: the liveness lock is the signal, if the worker has one.
                // The launch path takes it before the spec is visible (S1), so a free lock
                // is final even before the process is recorded.
                if super::group::has_lock(&self.home, id) {
                    if super::group::lock_free(&self.home, id) {
                        self.on_exit(id, "process exited (liveness lock released)");
                    } else {
                        self.polled.insert(id.to_string());
                    }
                }
            }
        }
    }

    /// Identity and liveness-lock checks for workers without a pidfd.
    pub fn poll_identities(&mut self) {
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
                _ => super::group::lock_free(&self.home, &id)
                    .then_some("process exited (liveness lock released)"),
            };
            if let Some(why) = gone {
                self.polled.remove(&id);
                self.on_exit(&id, why);
            }
        }
    }

    /// Reads an active spec again (an event for it may still be queued) and judges it
    /// afresh: a worker is only failed or declared a zombie on what its file says now.
    pub fn confirm(&mut self, id: &str, now: Timestamp) -> Option<Action> {
        let path = self.home.spec_path(StateDir::Active, id);
        let key = FileKey::at(&path);
        let fresh = match self.workers.get(id) {
            Some(w) if w.key == key => return verdicts::due(&w.view, &self.policy, now),
            Some(_) => spec::read(&path).ok(),
            None => return None,
        };
        match fresh {
            Some(s) if s.worker_id == id => {
                let mut process_changed = false;
                let due = match self.workers.get_mut(id) {
                    Some(w) => {
                        let floor = w.view.floor;
                        w.view = View::of(&s);
                        w.view.floor = floor;
                        w.key = key;
                        if w.process != s.process {
                            w.container = super::containers::ContainerTrack::of(&s);
                            w.process = s.process;
                            process_changed = true;
                        }
                        verdicts::due(&w.view, &self.policy, now)
                    }
                    None => None,
                };
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
}
