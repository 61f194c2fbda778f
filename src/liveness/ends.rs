//! How a worker's end is recorded (S1): once none of its processes lives. When some still
//! run (a leader that exited under its running children, a hung worker declared a zombie,
//! a stop whose stopper died), the group is stopped first, in a helper thread, and the end
//! is recorded when that is done; graceful stops (timeouts, idle, orphans) go through
//! `shutdown::stop_worker`, also in a helper thread, so no grace period delays detection.

use super::actions::{self, Outcome};
use super::group::GroupStop;
use super::monitor::{now_ms, Monitor, Msg, Purpose, Settle, Timer};
use crate::time;

impl Monitor {
    /// Records a worker's end once none of its processes lives (S1): at once when they are
    /// gone, after a group stop when some still run.
    pub fn end_when_gone(&mut self, id: &str, settle: Settle, verdict: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.settling = Some(settle);
        let process = w.process.clone();
        let local = process.as_ref().is_none_or(|p| p.is_local());
        if local && super::group::alive(&self.home, id, process.as_ref()) {
            let why = match verdict {
                "leader_exited" => "its leader exited while its group still runs".to_string(),
                "stale_heartbeat" => "no heartbeat, but its processes still run".to_string(),
                "pending_timeout" => "never confirmed alive, but its processes run".to_string(),
                other => other.replace('_', " "),
            };
            let pgid = process.as_ref().map(|p| p.pgid.unwrap_or(p.pid));
            if let Ok(l) = crate::spec::load(&self.home, id) {
                let ev = actions::stopping_event(&l.spec, verdict, &why, pgid);
                tracing::warn!("{}", ev.message);
                crate::events::emit(&self.home, ev);
            }
            self.group_stop(id, process, Purpose::Settle);
            return;
        }
        self.settle(id);
    }

    /// Records the end decided for a worker whose processes are all gone.
    pub fn settle(&mut self, id: &str) {
        let Some(settle) = self.workers.get(id).and_then(|w| w.settling.clone()) else {
            return;
        };
        let out = match &settle {
            Settle::Fail {
                reason,
                code,
                signal,
            } => actions::fail(&self.home, id, reason, *code, *signal),
            Settle::Zombify { reason, data } => {
                actions::zombify(&self.home, id, reason, data.clone())
            }
            Settle::Stopped { reason } => actions::record_stopped(&self.home, id, reason),
        };
        match out {
            Outcome::Done(spec) => {
                tracing::info!("{id}: {} ({})", spec.status, describe(&settle));
                self.forget(id);
                if matches!(settle, Settle::Fail { .. } | Settle::Zombify { .. }) {
                    self.consider_failure(&spec);
                }
            }
            Outcome::Busy => self.retry(Timer::Settle(id.to_string()), id),
            Outcome::Moved => {
                if let Some(w) = self.workers.get_mut(id) {
                    w.settling = None;
                }
                self.refresh_id(id);
            }
            Outcome::Failed(e) => {
                tracing::warn!("{id}: cannot record its end: {e}");
                self.timers.set(
                    Timer::Settle(id.to_string()),
                    now_ms().saturating_add(1_000),
                );
            }
        }
    }

    /// Stops a worker's processes (S1) in a helper thread (inline in `--once`).
    pub fn group_stop(
        &mut self,
        id: &str,
        process: Option<crate::process::ProcessInfo>,
        purpose: Purpose,
    ) {
        if !self.group_stops.insert(id.to_string()) {
            return;
        }
        let grace = time::duration(self.policy.grace_seconds);
        if !self.daemon {
            let outcome = super::group::stop(&self.home, id, process.as_ref(), grace);
            self.group_stopped(id, purpose, outcome);
            return;
        }
        let home = self.home.clone();
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        let owned = id.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("group-{id}"))
            .spawn(move || {
                let outcome = super::group::stop(&home, &owned, process.as_ref(), grace);
                let msg = Msg::GroupStopped {
                    id: owned,
                    purpose,
                    outcome,
                };
                if tx.send(msg).is_ok() {
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a group stop for {id}: {e}");
            self.group_stops.remove(id);
            self.timers.set(
                Timer::Settle(id.to_string()),
                now_ms().saturating_add(1_000),
            );
        }
    }

    /// A group stop finished.
    pub fn group_stopped(&mut self, id: &str, purpose: Purpose, outcome: GroupStop) {
        self.group_stops.remove(id);
        tracing::info!(
            "{id}: group stop: {} signalled{}, {}",
            outcome.signalled,
            if outcome.killed {
                ", SIGKILL needed"
            } else {
                ""
            },
            if outcome.gone {
                "all gone"
            } else {
                "some still run"
            }
        );
        match purpose {
            Purpose::Restart => self.restarts.retry_soon(id, time::now()),
            Purpose::Settle if outcome.gone => {
                self.append_stop_note(id, outcome);
                self.settle(id);
            }
            // Unkillable for now (uninterruptible sleep, or a holder without proof): the
            // end is not recorded while anything of the worker may still run.
            Purpose::Settle => self.timers.set(
                Timer::Settle(id.to_string()),
                now_ms().saturating_add(5_000),
            ),
        }
        self.schedule_restarts();
    }

    fn append_stop_note(&mut self, id: &str, outcome: GroupStop) {
        let note = match (outcome.signalled, outcome.killed) {
            (0, false) => return,
            (n, false) => format!("; its group was stopped ({n} process(es), SIGTERM)"),
            (n, true) => format!("; its group was stopped ({n} process(es), SIGKILL after grace)"),
        };
        if let Some(Settle::Fail { reason, .. } | Settle::Zombify { reason, .. }) =
            self.workers.get_mut(id).and_then(|w| w.settling.as_mut())
        {
            reason.push_str(&note);
        }
    }

    /// A graceful stop (timeouts, idle, orphans) through `shutdown::stop_worker`: in a
    /// helper thread in the daemon (the grace period must not delay detection).
    pub fn stop(&mut self, id: &str, reason: String) {
        if !self.stopping.insert(id.to_string()) {
            return;
        }
        tracing::info!("stopping {id}: {reason}");
        let grace = time::duration(self.policy.grace_seconds);
        if !self.daemon {
            let r = crate::shutdown::stop_worker(&self.home, id, grace, &reason);
            self.stopping.remove(id);
            match r {
                Ok(_) => self.forget(id),
                Err(e) => tracing::warn!("cannot stop {id}: {e}"),
            }
            return;
        }
        let home = self.home.clone();
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        let owned = id.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("stop-{id}"))
            .spawn(move || {
                let result = match crate::shutdown::stop_worker(&home, &owned, grace, &reason) {
                    Ok(s) => format!("{} ({reason})", s.status),
                    Err(e) => format!("failed: {e}"),
                };
                if tx.send(Msg::StopDone { id: owned, result }).is_ok() {
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a stop thread for {id}: {e}");
            self.stopping.remove(id);
        }
    }
}

fn describe(s: &Settle) -> &str {
    match s {
        Settle::Fail { reason, .. }
        | Settle::Zombify { reason, .. }
        | Settle::Stopped { reason } => reason,
    }
}
