//! Restarts as the monitor makes them: decide on a new failure, fire what is due, and write
//! the events and `metrics/worker-restart-history.jsonl` lines that go with each step. The
//! decisions themselves (backoff, breaker, rate limits) are in [`super::restart_state`].
//!
//! Firing a restart, in this order, so a crash at any point restarts once (S3):
//! 1. the gate (policy, breaker, rate limits);
//! 2. if a new worker id was saved and a spec with it exists, the spawn happened before a
//!    crash: it is not repeated;
//! 3. the failed worker must still be in `zombie/`: one archived by `cleanup-zombies`,
//!    stopped on purpose or removed meanwhile is not brought back (the restart is cancelled
//!    with a history line);
//! 4. its processes must all be gone (S1): if any still run, the monitor stops them first;
//! 5. the new worker id is chosen and saved in the restart state (fsynced);
//! 6. `lifecycle::spawn(SpawnRequest::restart(..))`, then the state, then the history line.

use super::group;
use super::restart_state::{Decision, Gate, Lineage, PendingRestart, RestartState};
use super::sys;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle::{self, SpawnRequest};
use crate::policy::{HeartbeatPolicy, WorkerTypes};
use crate::spec::{self, Status, WorkerSpec};
use crate::time::{self, Timestamp};
use serde_json::Value;

/// What firing one due restart came to.
#[derive(Debug)]
pub enum Fired {
    /// A new worker was launched.
    Spawned(Box<WorkerSpec>),
    /// The new worker existed already (spawned just before a monitor crash).
    AlreadySpawned(String),
    /// Processes of the failed worker still run: stop them first, then retry.
    LeftoverAlive {
        process: Option<Box<crate::process::ProcessInfo>>,
    },
    /// Waiting: gate, budget, or a transient error; `due` was moved.
    Waiting,
    /// Not restarted: cancelled, failed for good, or nothing pending.
    Dropped,
}

/// Loads, holds and saves the restart state.
pub struct Restarts {
    home: Home,
    pub state: RestartState,
}

impl Restarts {
    /// Loads `metrics/restart-state.json`.
    pub fn load(home: &Home) -> Result<Restarts> {
        Ok(Restarts {
            home: home.clone(),
            state: RestartState::load(home)?,
        })
    }

    /// Saves the state (atomically, fsynced); false when it could not be saved.
    pub fn save(&self) -> bool {
        match self.state.save(&self.home) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("cannot save the restart state: {e}");
                false
            }
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
    pub fn on_failure(
        &mut self,
        spec: &WorkerSpec,
        policy: &HeartbeatPolicy,
        types: &WorkerTypes,
        now: Timestamp,
    ) {
        let local = spec.process.as_ref().is_none_or(|p| p.is_local());
        let max = types
            .types
            .get(&spec.worker_type)
            .and_then(|t| t.max_retries)
            .unwrap_or(policy.restart.max_retries);
        let Some(fx) = self
            .state
            .on_failure(spec, local, max, &policy.restart, now)
        else {
            return;
        };
        self.save();
        let id = &spec.worker_id;
        if fx.tripped {
            let reset_at = time::add_secs(now, policy.restart.breaker_reset_seconds);
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
            sys::emit_alerting(&self.home, policy, ev, true);
        }
        match fx.decision {
            Decision::Scheduled(pr) => {
                let delay = time::secs_between(now, pr.due);
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
                let lineage = Lineage {
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
                sys::emit_alerting(&self.home, policy, ev, true);
            }
            Decision::NotRestartable(why) => {
                tracing::debug!("{id} is not restarted: {why}");
            }
        }
    }

    /// Breaker resets and pruning that are due; ids of restarts due now, earliest first.
    pub fn due(&mut self, policy: &HeartbeatPolicy, now: Timestamp) -> Vec<String> {
        let mut changed = self.state.prune(now);
        for t in self.state.reset_breakers(&policy.restart, now) {
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
            self.save();
        }
        self.state.due(now)
    }

    /// When anything is due next (a pending restart or a breaker reset).
    pub fn next_wakeup(&self, policy: &HeartbeatPolicy) -> Option<Timestamp> {
        self.state.next_wakeup(&policy.restart)
    }

    /// Cancels the pending restart of `fid` (its worker was archived or stopped), with a
    /// history line and a `worker_restart_abandoned` event. True when one was pending.
    pub fn cancel(&mut self, fid: &str, why: &str, now: Timestamp) -> bool {
        let Some(pr) = self.state.pending.remove(fid) else {
            return false;
        };
        self.save();
        let reason = format!("cancelled: {why}");
        let lineage = lineage(&pr, fid);
        self.history(lineage.line(now, None, "abandoned", &reason));
        tracing::info!("restart of {fid} {reason}");
        events::emit(
            &self.home,
            Event::new(
                EventType::WorkerRestartAbandoned,
                format!("{fid}: not restarting: {reason}"),
            )
            .with("attempt", pr.attempt)
            .with("failed_worker_id", fid)
            .with("reason", reason.clone())
            .with("original_worker_id", pr.original_worker_id.clone()),
        );
        true
    }

    /// Moves a pending restart's due time (blocked, waiting for leftovers, retry).
    fn postpone(&mut self, fid: &str, until: Timestamp, blocked: Option<String>) {
        if let Some(p) = self.state.pending.get_mut(fid) {
            p.due = until;
            if blocked.is_some() {
                p.blocked = blocked;
            }
        }
        self.save();
    }

    /// Fires the due restart of failed worker `fid` (see the module doc for the order).
    pub fn fire(&mut self, fid: &str, policy: &HeartbeatPolicy, now: Timestamp) -> Fired {
        let Some(pr) = self.state.pending.get(fid).cloned() else {
            return Fired::Dropped;
        };
        if !policy.restart.enabled {
            self.cancel(fid, "restarts are disabled by the policy", now);
            return Fired::Dropped;
        }
        let lineage = lineage(&pr, fid);
        if let Gate::Wait { until, reason } = self.state.gate(&pr, &policy.restart, now) {
            if pr.blocked.as_deref() != Some(reason.as_str()) {
                self.history(lineage.line(now, None, "blocked", &reason));
                tracing::info!("restart of {fid} waits: {reason}");
            }
            self.postpone(fid, until.max(time::add_secs(now, 0.1)), Some(reason));
            return Fired::Waiting;
        }
        // Spawned before a crash (its id was saved first): done, whatever became of the
        // failed worker since.
        if let Some(id) = pr.new_worker_id.as_deref() {
            if spec::locate(&self.home, id).is_some() {
                self.done(fid, &pr, id, now, "spawned before a monitor restart");
                return Fired::AlreadySpawned(id.to_string());
            }
        }
        let failed = match spec::load(&self.home, fid) {
            Ok(l)
                if l.dir == StateDir::Zombie
                    && matches!(l.spec.status, Status::Failed | Status::Zombie) =>
            {
                l.spec
            }
            Ok(l) => {
                let why = format!("{fid} is {} in {}/ now", l.spec.status, l.dir.name());
                self.cancel(fid, &why, now);
                return Fired::Dropped;
            }
            Err(Error::NotFound(_)) => {
                self.cancel(fid, &format!("{fid} no longer exists"), now);
                return Fired::Dropped;
            }
            Err(e) => {
                tracing::warn!("restart of {fid}: cannot read its spec: {e}");
                self.postpone(fid, time::add_secs(now, 1.0), None);
                return Fired::Waiting;
            }
        };
        if group::alive(&self.home, fid, failed.process.as_ref()) {
            return Fired::LeftoverAlive {
                process: failed.process.clone().map(Box::new),
            };
        }
        let new_id = match pr.new_worker_id.clone() {
            Some(id) => id,
            None => {
                let id = fresh_id(&self.home, &pr.worker_type, now);
                if let Some(p) = self.state.pending.get_mut(fid) {
                    p.new_worker_id = Some(id.clone());
                }
                // S3: the id is on disk before anything is spawned, or nothing is spawned.
                if !self.save() {
                    if let Some(p) = self.state.pending.get_mut(fid) {
                        p.new_worker_id = None;
                    }
                    self.postpone(fid, time::add_secs(now, 1.0), None);
                    return Fired::Waiting;
                }
                id
            }
        };
        if spec::locate(&self.home, &new_id).is_some() {
            self.done(fid, &pr, &new_id, now, "spawned before a monitor restart");
            return Fired::AlreadySpawned(new_id);
        }
        let req = SpawnRequest::restart(&failed, &new_id, &pr.original_worker_id, pr.attempt);
        match lifecycle::spawn(&self.home, &req) {
            Ok(specs) => {
                let Some(s) = specs.into_iter().next() else {
                    return Fired::Dropped;
                };
                self.done(fid, &pr, &new_id, now, &format!("restart of {fid}"));
                let ev = Event::new(
                    EventType::WorkerRestarted,
                    format!("{fid} restarted as {new_id} (attempt {})", pr.attempt),
                )
                .worker(&s)
                .with("attempt", pr.attempt)
                .with("failed_worker_id", fid)
                .with("original_worker_id", pr.original_worker_id.clone())
                .with("new_worker_id", new_id.clone());
                tracing::info!("{}", ev.message);
                events::emit(&self.home, ev);
                Fired::Spawned(Box::new(s))
            }
            Err(Error::Conflict(_)) if spec::locate(&self.home, &new_id).is_some() => {
                self.done(fid, &pr, &new_id, now, "spawned before a monitor restart");
                Fired::AlreadySpawned(new_id)
            }
            Err(Error::Budget { need, available }) => {
                let reason =
                    format!("insufficient token budget: need {need}, available {available}");
                if pr.blocked.as_deref() != Some(reason.as_str()) {
                    self.history(lineage.line(now, None, "blocked", &reason));
                }
                let retry = policy.restart.backoff_seconds(pr.attempt).max(1.0);
                self.postpone(fid, time::add_secs(now, retry), Some(reason));
                Fired::Waiting
            }
            Err(e) => self.failed(fid, &pr, e, policy, now),
        }
    }

    /// A restart made: pending entry gone, rate recorded, state saved, then the history
    /// line (after the state: a crash in between loses a line, never repeats a spawn).
    fn done(&mut self, fid: &str, pr: &PendingRestart, new_id: &str, now: Timestamp, why: &str) {
        self.state.pending.remove(fid);
        self.state.record_restart(&pr.worker_type, now);
        self.save();
        self.history(lineage(pr, fid).line(now, Some(new_id), "success", why));
    }

    fn failed(
        &mut self,
        fid: &str,
        pr: &PendingRestart,
        e: Error,
        policy: &HeartbeatPolicy,
        now: Timestamp,
    ) -> Fired {
        let reason = format!("cannot restart: {e}");
        self.history(lineage(pr, fid).line(now, None, "failed", &reason));
        let ev = Event::new(EventType::WorkerRestartFailed, format!("{fid}: {reason}"))
            .with("attempt", pr.attempt)
            .with("failed_worker_id", fid)
            .with("original_worker_id", pr.original_worker_id.clone())
            .with("error", e.to_string());
        tracing::warn!("{}", ev.message);
        events::emit(&self.home, ev);
        if matches!(e, Error::Io { .. } | Error::Internal(_)) {
            let retry = policy.restart.backoff_seconds(pr.attempt).max(1.0);
            self.postpone(fid, time::add_secs(now, retry), None);
            return Fired::Waiting;
        }
        // A configuration problem (command or type gone): retrying cannot help.
        self.state.pending.remove(fid);
        self.state
            .abandoned
            .insert(pr.original_worker_id.clone(), time::format(&now));
        self.save();
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
        Fired::Dropped
    }

    /// Retries a restart shortly (after its leftovers were stopped).
    pub fn retry_soon(&mut self, fid: &str, now: Timestamp) {
        if self.state.pending.contains_key(fid) {
            self.postpone(fid, time::add_secs(now, 0.05), None);
        }
    }
}

fn lineage<'a>(pr: &'a PendingRestart, fid: &'a str) -> Lineage<'a> {
    Lineage {
        original: &pr.original_worker_id,
        failed: fid,
        worker_type: &pr.worker_type,
        attempt: pr.attempt,
    }
}

/// A worker id not used in any state directory.
fn fresh_id(home: &Home, worker_type: &str, now: Timestamp) -> String {
    loop {
        let id = crate::id::new_worker_id(worker_type, now);
        if spec::locate(home, &id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessInfo;

    fn failed_spec(home: &Home, id: &str) -> WorkerSpec {
        let mut s = WorkerSpec::new(id.into(), "build-worker".into(), time::now());
        s.status = Status::Failed;
        s.process = Some(ProcessInfo {
            pid: i32::MAX - 1,
            host: crate::process::host_name(),
            command: vec!["/bin/true".into()],
            ..Default::default()
        });
        s.exit = Some(crate::spec::ExitInfo::observed(
            "x",
            Some(1),
            None,
            time::now(),
        ));
        spec::save(home, StateDir::Zombie, &s).unwrap();
        s
    }

    /// A home where worker `id` failed and its restart is scheduled (no backoff).
    fn scheduled(id: &str) -> (tempfile::TempDir, Home, Restarts, Timestamp) {
        let (dir, home) = crate::home::test_home();
        let types = WorkerTypes::load(&home).unwrap();
        let s = failed_spec(&home, id);
        let mut r = Restarts::load(&home).unwrap();
        let now = time::now();
        r.on_failure(&s, &quick(), &types, now);
        (dir, home, r, now)
    }

    fn quick() -> HeartbeatPolicy {
        let mut p = HeartbeatPolicy::default();
        p.restart.base_seconds = 0.0;
        p
    }

    #[test]
    fn the_new_id_is_saved_first_and_a_found_spec_is_not_spawned_again() {
        let (_dir, home, mut r, now) = scheduled("w-old");
        assert_eq!(r.due(&quick(), now), vec!["w-old".to_string()]);
        // Choose and save the id as fire() does, then "crash" after spawning it.
        let id = fresh_id(&home, "build-worker", now);
        r.state.pending.get_mut("w-old").unwrap().new_worker_id = Some(id.clone());
        r.save();
        let mut twin = WorkerSpec::new(id.clone(), "build-worker".into(), now);
        twin.restart.attempt = 1;
        spec::save(&home, StateDir::Active, &twin).unwrap();
        // The next monitor loads the state and fires: nothing new is spawned.
        let mut r2 = Restarts::load(&home).unwrap();
        assert_eq!(
            r2.state.pending["w-old"].new_worker_id.as_deref(),
            Some(id.as_str())
        );
        let fired = r2.fire("w-old", &quick(), now);
        assert!(
            matches!(&fired, Fired::AlreadySpawned(x) if *x == id),
            "{fired:?}"
        );
        assert!(r2.state.pending.is_empty());
        let (active, _) = spec::scan(&home, StateDir::Active).unwrap();
        assert_eq!(active.len(), 1, "no second worker");
    }

    #[test]
    fn an_archived_worker_is_not_brought_back() {
        let (_dir, home, mut r, now) = scheduled("w-arch");
        crate::store::move_file(
            &home.spec_path(StateDir::Zombie, "w-arch"),
            &home.spec_path(StateDir::Archived, "w-arch"),
        )
        .unwrap();
        assert!(matches!(r.fire("w-arch", &quick(), now), Fired::Dropped));
        assert!(r.state.pending.is_empty());
        let hist = std::fs::read_to_string(home.restart_history_path()).unwrap();
        assert!(hist.contains("cancelled"), "{hist}");
        assert!(spec::scan(&home, StateDir::Active).unwrap().0.is_empty());
    }

    #[test]
    fn a_due_restart_spawns_with_the_saved_id() {
        let (_dir, home, mut r, now) = scheduled("w-f");
        let Fired::Spawned(new) = r.fire("w-f", &quick(), now) else {
            panic!("not spawned")
        };
        assert_eq!(new.restart.attempt, 1);
        assert_eq!(new.restart.original_worker_id.as_deref(), Some("w-f"));
        let hist = std::fs::read_to_string(home.restart_history_path()).unwrap();
        assert!(hist.contains(&new.worker_id), "{hist}");
        assert!(r.state.pending.is_empty());
    }
}
