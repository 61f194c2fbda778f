//! A worker's leader process is gone (its pidfd fired, its identity no longer checks out,
//! or its liveness lock came free): what that means is decided by [`verdicts::on_exit`] on
//! the spec as it is *now* and on whether the rest of its group still holds the liveness
//! lock (S1). A leader that exits while its children work on is `leader_exited`: the group
//! is stopped first, and only then is the failure recorded, its task requeued or the worker
//! restarted. A stop in progress is left to its stopper until it is overdue (S6).

use super::monitor::{ms, now_ms, ExitNote, Monitor, Purpose, Settle, Timer};
use super::verdicts::{self, ExitFacts, ExitVerdict, View};
use crate::error::Error;
use crate::home::StateDir;
use crate::process::PidFd;
use crate::spec;
use crate::time;

impl Monitor {
    /// Watches a verified process's exit.
    pub fn register_pidfd(&mut self, id: &str, fd: PidFd) {
        let tok = match self.reactor.as_mut().map(|r| r.watch_pid(fd)) {
            Some(Ok(tok)) => tok,
            Some(Err(e)) => {
                tracing::warn!("cannot watch {id}'s process: {e}; polling its identity instead");
                self.polled.insert(id.to_string());
                return;
            }
            None => {
                self.polled.insert(id.to_string());
                return;
            }
        };
        self.tokens.insert(tok, id.to_string());
        if let Some(w) = self.workers.get_mut(id) {
            w.pidfd = Some(tok);
        }
    }

    /// Stops watching a pidfd.
    pub fn unwatch(&mut self, tok: u64) {
        if let Some(r) = self.reactor.as_mut() {
            r.unwatch_pid(tok);
        }
    }

    /// A pidfd fired.
    pub fn pidfd_fired(&mut self, tok: u64) {
        if let Some(id) = self.tokens.remove(&tok) {
            if let Some(w) = self.workers.get_mut(&id) {
                w.pidfd = None;
            }
            self.on_exit(&id, "process exited");
        }
    }

    /// The worker's leader is gone.
    pub fn on_exit(&mut self, id: &str, how: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.exited = true;
        if let Some(tok) = w.pidfd.take() {
            self.tokens.remove(&tok);
            self.unwatch(tok);
        }
        self.polled.remove(id);
        self.timers.cancel(&Timer::Judge(id.to_string()));
        self.reap();
        if self.container_exit(id, how) {
            return;
        }
        let (code, signal) = self.take_exit(id);
        let reason = match (code, signal) {
            (Some(c), _) => format!("{how} with code {c}"),
            (_, Some(s)) => format!("{how}: killed by signal {s}"),
            _ => how.to_string(),
        };
        if let Some(w) = self.workers.get_mut(id) {
            w.exit = Some(ExitNote {
                reason,
                code,
                signal,
            });
        }
        self.settle_exit(id);
    }

    /// Decides (again) what a leader's exit means, and acts on it.
    pub fn settle_exit(&mut self, id: &str) {
        if self.stopping.contains(id) || self.group_stops.contains(id) {
            return;
        }
        let Some(w) = self.workers.get(id) else {
            return;
        };
        if w.settling.is_some() {
            return;
        }
        let Some(ExitNote {
            reason,
            code,
            signal,
        }) = w.exit.clone()
        else {
            return;
        };
        // The exit can arrive before inotify brings the spec change that explains it
        // (`stop-worker` writes shutting_down before its SIGTERM; a work loop completes its
        // worker before exiting): judge by the spec as it is now, not the cached view.
        let view = match spec::load(&self.home, id) {
            Ok(l) if l.dir == StateDir::Active => View::of(&l.spec),
            Ok(_) | Err(Error::NotFound(_)) => {
                self.refresh_id(id);
                return;
            }
            Err(e) => {
                tracing::warn!("{id}: cannot read its spec after its exit: {e}");
                self.timers.set(
                    Timer::Settle(id.to_string()),
                    now_ms().saturating_add(1_000),
                );
                return;
            }
        };
        // A container the engine saw exit has no process left, whoever holds its lock.
        let group_alive = !self.container_ended(id)
            && super::group::has_lock(&self.home, id)
            && !super::group::lock_free(&self.home, id);
        let verifiable = w
            .process
            .as_ref()
            .is_some_and(|p| p.start_time_ticks.is_some());
        if group_alive && !verifiable {
            // Seen through the lock alone, and someone holds it again: not an exit (a
            // launch that took the lock late); keep watching.
            tracing::info!("{id}: its liveness lock is held again; still alive");
            if let Some(w) = self.workers.get_mut(id) {
                w.exited = false;
                w.exit = None;
            }
            self.polled.insert(id.to_string());
            self.evaluate(id);
            return;
        }
        let facts = ExitFacts {
            status: view.status,
            finished: view.finished(),
            group_alive,
            stopping_since: view.stopping_since,
        };
        let now = time::now();
        let (settle, verdict) = match verdicts::on_exit(&facts, &self.policy, now) {
            ExitVerdict::AwaitStopper { until } => {
                self.timers.set(Timer::Settle(id.to_string()), ms(until));
                return;
            }
            ExitVerdict::Failed => (
                Settle::Fail {
                    reason,
                    code,
                    signal,
                },
                "exited",
            ),
            ExitVerdict::Finished => (
                Settle::Stopped {
                    reason: format!("{reason} after reporting completion"),
                },
                "exited",
            ),
            ExitVerdict::LeaderExited { finished: true } => (
                Settle::Stopped {
                    reason: format!(
                        "leader {reason} after reporting completion, while its group still ran"
                    ),
                },
                "leader_exited",
            ),
            ExitVerdict::LeaderExited { finished: false } => (
                Settle::Fail {
                    reason: format!("leader {reason} while its group still ran"),
                    code,
                    signal,
                },
                "leader_exited",
            ),
            ExitVerdict::FinishStop => (
                Settle::Stopped {
                    reason: format!(
                        "{reason} while shutting down; stop finished by heartbeat-monitor"
                    ),
                },
                "stop_overdue",
            ),
        };
        self.end_when_gone(id, settle, verdict);
    }

    /// A `Settle` timer fired: a busy lock, an awaited stopper, or a group stop to retry.
    pub fn settle_timer(&mut self, id: &str) {
        if self.group_stops.contains(id) || self.stopping.contains(id) {
            return;
        }
        let Some(w) = self.workers.get(id) else {
            return;
        };
        if w.settling.is_none() {
            if w.exited {
                self.settle_exit(id);
            }
            return;
        }
        let process = w.process.clone();
        let local = process.as_ref().is_none_or(|p| p.is_local());
        if local && super::group::alive(&self.home, id, process.as_ref()) {
            self.group_stop(id, process, Purpose::Settle);
        } else {
            self.settle(id);
        }
    }
}
