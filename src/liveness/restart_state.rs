//! Restart decisions (DESIGN.md §6 "Restarts"): per-type retry limits, exponential backoff,
//! a per-type circuit breaker and restart rate limits.
//!
//! Nothing here lives only in memory: pending restarts with their due times, breaker
//! states, recent restart times (for the rate limits) and the failures already decided are
//! kept in `metrics/restart-state.json`, written atomically on every change, so a monitor
//! that is restarted (or a `--once` run from cron) carries on exactly where the last one
//! stopped. The decisions are pure functions of that state, the failed spec and `now`.
//!
//! One restart per failure, across monitor crashes (S3): the new worker's id is chosen and
//! saved here (`new_worker_id`, fsynced by the atomic write) before anything is spawned, so
//! a monitor that dies at any point and starts again finds either no spec with that id
//! (spawn it) or one (it was spawned: do not spawn again).

use crate::error::{Error, Result};
use crate::home::Home;
use crate::policy::RestartPolicy;
use crate::spec::{Priority, Status, WorkerSpec};
use crate::store::{self, ReadError};
use crate::time::{self, serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Failures older than this when first seen (say, found in `zombie/` by a monitor started
/// the next morning) are not restarted: the work has long moved on.
pub const RECENT_FAILURE_SECONDS: i64 = 3600;

/// A restart waiting for its due time. Carries everything needed to spawn the new worker,
/// so it survives the failed spec being archived meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRestart {
    pub failed_worker_id: String,
    pub original_worker_id: String,
    /// The attempt this restart will be (1 for the first restart).
    pub attempt: u32,
    pub worker_type: String,
    #[serde(with = "serde_ts")]
    pub due: Timestamp,
    #[serde(with = "serde_ts")]
    pub scheduled_at: Timestamp,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub timeout_minutes: Option<u64>,
    pub command: Vec<String>,
    /// Why the restart is waiting beyond its backoff (breaker, rate limit, budget), so the
    /// history gets one `blocked` line per reason, not one per retry.
    #[serde(default)]
    pub blocked: Option<String>,
    /// The id the restarted worker gets, chosen and saved before the spawn (S3).
    #[serde(default)]
    pub new_worker_id: Option<String>,
}

/// One worker type's circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Breaker {
    pub consecutive_failures: u32,
    /// Set while the breaker is open (tripped).
    #[serde(default, with = "serde_ts::option")]
    pub open_since: Option<Timestamp>,
}

/// A restart made, for the per-minute rate limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecentRestart {
    #[serde(with = "serde_ts")]
    pub at: Timestamp,
    pub worker_type: String,
}

/// `metrics/restart-state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RestartState {
    #[serde(default)]
    pub pending: BTreeMap<String, PendingRestart>,
    #[serde(default)]
    pub breakers: BTreeMap<String, Breaker>,
    #[serde(default)]
    pub recent: Vec<RecentRestart>,
    /// Failed worker ids already counted and decided, with when (pruned after an hour).
    #[serde(default)]
    pub decided: BTreeMap<String, String>,
    /// Lineages (original worker ids) given up on, so a late failure does not revive them.
    #[serde(default)]
    pub abandoned: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What one newly seen failure led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Counted for the breaker only (not launched by corral, another host, restarts off…).
    NotRestartable(String),
    /// A restart is scheduled.
    Scheduled(Box<PendingRestart>),
    /// Retries exhausted (or the lineage was given up): `worker_restart_abandoned`.
    Abandoned { attempt: u32, reason: String },
}

/// The effect of a failure on the restart state.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureEffects {
    pub decision: Decision,
    /// The type's breaker tripped with this failure.
    pub tripped: bool,
    pub consecutive_failures: u32,
}

/// Whether a due restart may go ahead.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Go,
    Wait { until: Timestamp, reason: String },
}

fn plus_secs(t: Timestamp, secs: f64) -> Timestamp {
    time::add_secs(t, secs.max(0.0))
}

/// When a failed spec failed: its exit, else completion, else its last update.
pub fn failed_at(s: &WorkerSpec) -> Option<Timestamp> {
    s.exit
        .as_ref()
        .map(|e| e.at)
        .or(s.completed_at)
        .or(s.updated_at)
}

/// True when the worker was being stopped on purpose when it ended.
fn was_stopping(s: &WorkerSpec) -> bool {
    s.history.iter().any(|t| t.to == "shutting_down")
}

impl RestartState {
    /// Loads the state (missing: empty). A corrupt file is quarantined rather than
    /// blocking every restart forever.
    pub fn load(home: &Home) -> Result<RestartState> {
        let path = home.restart_state_path();
        match store::read_json(&path) {
            Ok(v) => match serde_json::from_value(v) {
                Ok(s) => Ok(s),
                Err(e) => {
                    crate::events::quarantine(home, &path, &format!("invalid restart state: {e}"))?;
                    Ok(RestartState::default())
                }
            },
            Err(ReadError::Missing) => Ok(RestartState::default()),
            Err(ReadError::Refused(why)) => {
                crate::events::quarantine(home, &path, &why)?;
                Ok(RestartState::default())
            }
            Err(ReadError::Io(e)) => Err(e),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, home: &Home) -> Result<()> {
        let v = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialise restart state: {e}")))?;
        store::atomic_write(home, &home.restart_state_path(), &store::to_pretty(&v)?)
    }

    /// True when this failure was decided already (by this or an earlier monitor).
    pub fn is_decided(&self, id: &str) -> bool {
        self.decided.contains_key(id) || self.pending.contains_key(id)
    }

    /// Counts a newly seen failure for its type's breaker and decides about a restart.
    /// `None` when it was decided before or is too old to matter. `local` says whether its
    /// process ran on this host and boot (a worker elsewhere may still be running: it is
    /// never restarted here).
    pub fn on_failure(
        &mut self,
        s: &WorkerSpec,
        local: bool,
        max_retries: u32,
        p: &RestartPolicy,
        now: Timestamp,
    ) -> Option<FailureEffects> {
        if self.is_decided(&s.worker_id) || was_stopping(s) {
            return None;
        }
        if !matches!(s.status, Status::Failed | Status::Zombie) {
            return None;
        }
        let at = failed_at(s)?;
        if (now - at).num_seconds() > RECENT_FAILURE_SECONDS {
            return None;
        }
        self.decided
            .insert(s.worker_id.clone(), crate::time::format(&now));
        let original = s
            .restart
            .original_worker_id
            .clone()
            .unwrap_or_else(|| s.worker_id.clone());
        // The launch plan when no process made it on record (its launcher died between
        // the launch and the write): the worker was still launched by corral.
        let command = s
            .process
            .as_ref()
            .map(|p| p.command.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| s.launch.as_ref().map(|l| l.command.clone()))
            .unwrap_or_default();
        let decision = if !p.enabled {
            Decision::NotRestartable("restarts are disabled by the policy".into())
        } else if command.is_empty() {
            Decision::NotRestartable("not launched by corral with a command".into())
        } else if !local {
            Decision::NotRestartable("ran on another host: it may still be running there".into())
        } else if self.abandoned.contains_key(&original) {
            Decision::NotRestartable("its restart lineage was abandoned".into())
        } else {
            let attempt = s.restart.attempt.saturating_add(1);
            if attempt > max_retries {
                self.abandoned
                    .insert(original.clone(), crate::time::format(&now));
                Decision::Abandoned {
                    attempt,
                    reason: format!("gave up after {max_retries} restart(s)"),
                }
            } else {
                Decision::Scheduled(Box::new(PendingRestart {
                    failed_worker_id: s.worker_id.clone(),
                    original_worker_id: original,
                    attempt,
                    worker_type: s.worker_type.clone(),
                    due: plus_secs(now, p.backoff_seconds(attempt)),
                    scheduled_at: now,
                    task_id: s.task_id.clone(),
                    master: s.master.clone(),
                    priority: s.priority,
                    repo: s.repo.clone(),
                    session_id: s.session_id.clone(),
                    tokens: s.token_budget.allocated,
                    timeout_minutes: s.resources.timeout_minutes,
                    command,
                    blocked: None,
                    new_worker_id: None,
                }))
            }
        };
        // The breaker guards restarts: only failures of workers that could have been
        // restarted count towards it.
        let mut tripped = false;
        let mut consecutive_failures = 0;
        if !matches!(decision, Decision::NotRestartable(_)) {
            let b = self.breakers.entry(s.worker_type.clone()).or_default();
            b.consecutive_failures = b.consecutive_failures.saturating_add(1);
            if b.open_since.is_none()
                && b.consecutive_failures >= p.breaker_consecutive_failures.max(1)
            {
                b.open_since = Some(now);
                tripped = true;
            }
            consecutive_failures = b.consecutive_failures;
        }
        if let Decision::Scheduled(pr) = &decision {
            self.pending
                .insert(pr.failed_worker_id.clone(), (**pr).clone());
        }
        Some(FailureEffects {
            decision,
            tripped,
            consecutive_failures,
        })
    }

    /// A worker of `worker_type` completed: its consecutive failures start again from 0.
    /// Returns whether anything changed.
    pub fn on_success(&mut self, worker_type: &str) -> bool {
        match self.breakers.get_mut(worker_type) {
            Some(b) if b.consecutive_failures > 0 && b.open_since.is_none() => {
                b.consecutive_failures = 0;
                true
            }
            _ => false,
        }
    }

    /// Closes breakers whose reset time has come; returns their types.
    pub fn reset_breakers(&mut self, p: &RestartPolicy, now: Timestamp) -> Vec<String> {
        let mut out = Vec::new();
        for (t, b) in self.breakers.iter_mut() {
            if let Some(since) = b.open_since {
                if plus_secs(since, p.breaker_reset_seconds) <= now {
                    b.open_since = None;
                    b.consecutive_failures = 0;
                    out.push(t.clone());
                }
            }
        }
        // Restarts the breaker held back were postponed to the reset time known then (a
        // policy edited since may have brought it forward): they are due now, in the
        // daemon and in `--once` alike (S6).
        for pr in self.pending.values_mut() {
            if out.contains(&pr.worker_type) && pr.blocked.is_some() && pr.due > now {
                pr.due = now;
                pr.blocked = None;
            }
        }
        out
    }

    /// Drops rate-limit entries older than a minute and decisions older than the window.
    pub fn prune(&mut self, now: Timestamp) -> bool {
        let before = (self.recent.len(), self.decided.len(), self.abandoned.len());
        let minute_ago = now - chrono::Duration::seconds(60);
        self.recent.retain(|r| r.at > minute_ago);
        let keep = |at: &String| {
            crate::time::parse(at)
                .map(|t| (now - t).num_seconds() <= 2 * RECENT_FAILURE_SECONDS)
                .unwrap_or(false)
        };
        self.decided.retain(|_, at| keep(at));
        self.abandoned.retain(|_, at| keep(at));
        before != (self.recent.len(), self.decided.len(), self.abandoned.len())
    }

    /// Whether a due restart may go now: not while its type's breaker is open, and not over
    /// the global or per-type rate (0 = no limit).
    pub fn gate(&self, pr: &PendingRestart, p: &RestartPolicy, now: Timestamp) -> Gate {
        if let Some(since) = self
            .breakers
            .get(&pr.worker_type)
            .and_then(|b| b.open_since)
        {
            return Gate::Wait {
                until: plus_secs(since, p.breaker_reset_seconds),
                reason: format!("circuit breaker open for {}", pr.worker_type),
            };
        }
        let minute_ago = now - chrono::Duration::seconds(60);
        let window: Vec<&RecentRestart> =
            self.recent.iter().filter(|r| r.at > minute_ago).collect();
        let wait = |list: Vec<&&RecentRestart>, limit: u32, what: &str| -> Option<Gate> {
            if limit == 0 || list.len() < limit as usize {
                return None;
            }
            let oldest = list.iter().map(|r| r.at).min()?;
            Some(Gate::Wait {
                until: plus_secs(oldest, 60.0),
                reason: format!("{what} restart rate limit ({limit}/min)"),
            })
        };
        if let Some(g) = wait(window.iter().collect(), p.rate_global_per_minute, "global") {
            return g;
        }
        if let Some(g) = wait(
            window
                .iter()
                .filter(|r| r.worker_type == pr.worker_type)
                .collect(),
            p.rate_per_type_per_minute,
            &pr.worker_type,
        ) {
            return g;
        }
        Gate::Go
    }

    /// Records a restart made now (for the rate limits).
    pub fn record_restart(&mut self, worker_type: &str, now: Timestamp) {
        self.recent.push(RecentRestart {
            at: now,
            worker_type: worker_type.to_string(),
        });
    }

    /// Failed ids of restarts due at `now`, earliest first.
    pub fn due(&self, now: Timestamp) -> Vec<String> {
        let mut v: Vec<&PendingRestart> = self.pending.values().filter(|p| p.due <= now).collect();
        v.sort_by_key(|p| p.due);
        v.into_iter().map(|p| p.failed_worker_id.clone()).collect()
    }

    /// The next time something is due: a pending restart or a breaker reset.
    pub fn next_wakeup(&self, p: &RestartPolicy) -> Option<Timestamp> {
        let pending = self.pending.values().map(|r| r.due);
        let resets = self
            .breakers
            .values()
            .filter_map(|b| b.open_since)
            .map(|s| plus_secs(s, p.breaker_reset_seconds));
        pending.chain(resets).min()
    }
}

/// Whose restart a line of `metrics/worker-restart-history.jsonl` is about.
#[derive(Debug, Clone, Copy)]
pub struct Lineage<'a> {
    pub original: &'a str,
    pub failed: &'a str,
    pub worker_type: &'a str,
    pub attempt: u32,
}

impl Lineage<'_> {
    /// One history line: `{timestamp, original_worker_id, new_worker_id, attempt, result,
    /// reason}` plus the failed worker and its type.
    pub fn line(&self, now: Timestamp, new_id: Option<&str>, result: &str, reason: &str) -> Value {
        serde_json::json!({
            "timestamp": crate::time::format(&now),
            "original_worker_id": self.original,
            "new_worker_id": new_id,
            "attempt": self.attempt,
            "result": result,
            "reason": reason,
            "failed_worker_id": self.failed,
            "worker_type": self.worker_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessInfo;
    use crate::time::parse;

    fn at(s: &str) -> Timestamp {
        parse(&format!("2026-11-22T10:{s}Z")).unwrap()
    }

    fn failed(id: &str, attempt: u32, original: Option<&str>) -> WorkerSpec {
        let mut s = WorkerSpec::new(id.into(), "test-worker".into(), at("00:00"));
        s.status = Status::Failed;
        s.task_id = Some("task-1".into());
        s.priority = Priority::High;
        s.token_budget.allocated = 500;
        s.restart.attempt = attempt;
        s.restart.original_worker_id = original.map(String::from);
        s.process = Some(ProcessInfo {
            pid: 42,
            command: vec!["/bin/false".into()],
            ..Default::default()
        });
        s.updated_at = Some(at("00:00"));
        s
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            base_seconds: 10.0,
            max_seconds: 25.0,
            breaker_consecutive_failures: 3,
            breaker_reset_seconds: 60.0,
            ..Default::default()
        }
    }

    #[test]
    fn backoff_grows_then_gives_up_and_the_breaker_trips() {
        let p = policy();
        let mut st = RestartState::default();
        let e = st
            .on_failure(&failed("w0", 0, None), true, 2, &p, at("00:00"))
            .unwrap();
        let Decision::Scheduled(pr) = e.decision else {
            panic!("{e:?}")
        };
        assert_eq!((pr.attempt, pr.due), (1, at("00:10")));
        assert_eq!(pr.original_worker_id, "w0");
        assert_eq!(pr.priority, Priority::High);
        assert!(!e.tripped);
        assert!(
            st.on_failure(&failed("w0", 0, None), true, 2, &p, at("00:01"))
                .is_none(),
            "decided once"
        );
        let e = st
            .on_failure(&failed("w1", 1, Some("w0")), true, 2, &p, at("00:20"))
            .unwrap();
        let Decision::Scheduled(pr) = e.decision else {
            panic!()
        };
        assert_eq!((pr.attempt, pr.due), (2, at("00:40")));
        let e = st
            .on_failure(&failed("w2", 2, Some("w0")), true, 2, &p, at("00:50"))
            .unwrap();
        assert!(matches!(e.decision, Decision::Abandoned { attempt: 3, .. }));
        assert!(e.tripped);
        assert_eq!(e.consecutive_failures, 3);
        assert_eq!(st.pending.len(), 2);
    }

    #[test]
    fn a_restart_the_breaker_held_is_due_when_the_breaker_resets() {
        let mut p = policy();
        let mut st = RestartState::default();
        let e = st
            .on_failure(&failed("w0", 0, None), true, 5, &p, at("00:00"))
            .unwrap();
        let Decision::Scheduled(pr) = e.decision else {
            panic!("{:?}", e.decision)
        };
        st.breakers.get_mut("test-worker").unwrap().open_since = Some(at("00:05"));
        // Postponed to the reset known then (60 s after it opened), as the fire path does.
        let held = st.pending.get_mut(&pr.failed_worker_id).unwrap();
        held.due = at("01:05");
        held.blocked = Some("circuit breaker open for test-worker".into());
        // The policy brings the reset forward: at the new reset the restart is due at once.
        p.breaker_reset_seconds = 2.0;
        assert_eq!(st.reset_breakers(&p, at("00:07")), vec!["test-worker"]);
        let held = &st.pending[&pr.failed_worker_id];
        assert_eq!((held.due, held.blocked.clone()), (at("00:07"), None));
        assert_eq!(st.due(at("00:07")), vec![pr.failed_worker_id.clone()]);
    }

    #[test]
    fn breaker_blocks_until_reset_and_rates_limit() {
        let mut p = policy();
        let mut st = RestartState::default();
        let pr = {
            let e = st
                .on_failure(&failed("w0", 0, None), true, 5, &p, at("00:00"))
                .unwrap();
            match e.decision {
                Decision::Scheduled(pr) => *pr,
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(st.gate(&pr, &p, at("00:10")), Gate::Go);
        st.breakers.get_mut("test-worker").unwrap().open_since = Some(at("00:05"));
        assert!(
            matches!(st.gate(&pr, &p, at("00:10")), Gate::Wait { until, .. } if until == at("01:05"))
        );
        assert!(st.reset_breakers(&p, at("01:00")).is_empty());
        assert_eq!(
            st.reset_breakers(&p, at("01:05")),
            vec!["test-worker".to_string()]
        );
        assert_eq!(st.gate(&pr, &p, at("01:10")), Gate::Go);
        p.rate_per_type_per_minute = 2;
        st.record_restart("test-worker", at("01:00"));
        st.record_restart("test-worker", at("01:05"));
        assert!(
            matches!(st.gate(&pr, &p, at("01:10")), Gate::Wait { until, .. } if until == at("02:00"))
        );
        p.rate_per_type_per_minute = 0;
        assert_eq!(st.gate(&pr, &p, at("01:10")), Gate::Go, "0 = no limit");
        assert!(st.prune(at("03:00")));
        assert!(st.recent.is_empty());
    }

    #[test]
    fn what_is_not_restarted() {
        let p = RestartPolicy {
            breaker_consecutive_failures: 10,
            ..policy()
        };
        let mut st = RestartState::default();
        let mut s = failed("a", 0, None);
        s.process = None;
        let e = st.on_failure(&s, true, 3, &p, at("00:00")).unwrap();
        assert!(matches!(e.decision, Decision::NotRestartable(_)));
        // Launched by corral, but its launcher died before recording the process: the
        // launch plan is what a restart reproduces (the chain used to end here silently).
        let mut s = failed("a2", 0, None);
        s.worker_type = "other-type".into();
        s.process = None;
        s.launch = Some(crate::spec::LaunchSpec {
            command: vec!["/bin/false".into()],
            ..Default::default()
        });
        let e = st.on_failure(&s, true, 3, &p, at("00:00")).unwrap();
        assert!(matches!(e.decision, Decision::Scheduled(_)), "{e:?}");
        let e = st
            .on_failure(&failed("b", 0, None), false, 3, &p, at("00:00"))
            .unwrap();
        assert!(
            matches!(e.decision, Decision::NotRestartable(_)),
            "other host"
        );
        assert_eq!(
            e.consecutive_failures, 0,
            "failures that could not be restarted do not count for the breaker"
        );
        assert!(!st.breakers.contains_key("test-worker"));
        let mut s = failed("c", 0, None);
        s.history.push(crate::spec::Transition::new(
            at("00:00"),
            Some("running"),
            "shutting_down",
            "stop",
        ));
        assert!(
            st.on_failure(&s, true, 3, &p, at("00:00")).is_none(),
            "stopped on purpose"
        );
        let e = st
            .on_failure(&failed("d", 0, None), true, 3, &p, at("59:59"))
            .unwrap();
        assert_eq!(e.consecutive_failures, 1, "a restartable failure counts");
        let mut old = failed("e", 0, None);
        old.updated_at = Some(at("00:00"));
        let later = at("00:00") + chrono::Duration::seconds(RECENT_FAILURE_SECONDS + 1);
        assert!(st.on_failure(&old, true, 3, &p, later).is_none(), "too old");
        assert!(st.on_success("test-worker"));
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let (_dir, home) = crate::home::test_home();
        let mut st = RestartState::default();
        st.on_failure(&failed("w0", 0, None), true, 3, &policy(), at("00:00"));
        st.save(&home).unwrap();
        assert_eq!(RestartState::load(&home).unwrap(), st);
        std::fs::write(home.restart_state_path(), "{").unwrap();
        assert_eq!(RestartState::load(&home).unwrap(), RestartState::default());
        assert!(
            !home.restart_state_path().exists(),
            "corrupt state is quarantined"
        );
    }
}
