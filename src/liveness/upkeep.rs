//! The monitor's upkeep of the home beside liveness, run on the housekeeping thread between
//! its queue maintenance jobs (and once in `--once`): pools kept at their size ([`pool::reconcile`]),
//! archived workers purged after the policy's `purge_archived_after_seconds`
//! ([`retention::purge_archived`]), and worker logs rotated by size ([`logrotate`]).
//!
//! Each job keeps its own next-run time and is paced by its cost, as queue maintenance is
//! ([`super::daemon::paced`]): a pool pass reads every spec in `active/` and a rotation pass
//! stats every log directory, so 10,000 workers stretch their cadence instead of taking a
//! core. A pool pass with no pools costs one read of `worker-types.json`. Workers a pool
//! spawns are this process's children: their pids go back to the loop, which reaps them and
//! records how they exited.
//!
//! [`pool::reconcile`]: crate::pool::reconcile
//! [`retention::purge_archived`]: crate::retention::purge_archived
//! [`logrotate`]: crate::logrotate

use super::daemon::{paced, paced_by};
use super::monitor::Msg;
use super::reactor::Waker;
use crate::home::Home;
use crate::logrotate::{self, LogPolicy, Rotated};
use crate::policy::HeartbeatPolicy;
use crate::time;
use std::collections::HashSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};

/// Seconds between pool passes (stretched by their cost).
pub const POOL_INTERVAL_SECONDS: f64 = 1.0;
/// Longest wait between purge passes, however long the retention age.
pub const PURGE_MAX_INTERVAL_SECONDS: f64 = 600.0;
/// Seconds between log rotation passes (stretched by their cost).
pub const ROTATE_INTERVAL_SECONDS: f64 = 1.0;

/// Next-run times of the upkeep jobs (milliseconds since the epoch; 0: now).
#[derive(Debug, Default)]
pub struct Upkeep {
    next_pool_ms: i64,
    next_purge_ms: i64,
    next_rotate_ms: i64,
    /// Running workers whose log this filesystem cannot cut (see `logrotate::rotate_all`).
    deferred_logs: HashSet<String>,
}

/// What a pass did that the loop must know.
#[derive(Debug, Default)]
pub struct Done {
    /// Workers a pool launched: `(pid, worker id)`.
    pub launched: Vec<(i32, String)>,
}

/// How often the purge runs for a retention age: a tenth of it, between 1 s and 10 min.
pub fn purge_interval(after: f64) -> f64 {
    (after / 10.0).clamp(1.0, PURGE_MAX_INTERVAL_SECONDS)
}

impl Upkeep {
    /// When the next job is due (milliseconds since the epoch).
    pub fn next_due_ms(&self, policy: &HeartbeatPolicy) -> i64 {
        let purge = match crate::retention::policy_after(policy) {
            Some(_) => self.next_purge_ms,
            None => i64::MAX,
        };
        self.next_pool_ms.min(self.next_rotate_ms).min(purge)
    }

    /// Waits for the housekeeping thread's next job, running the upkeep whenever it comes
    /// due meanwhile, on its own cadence (queue maintenance is paced by its own cost, which
    /// must not hold back a pool's replacement). Launched workers go to the loop on `tx`.
    /// Before the first job brings a policy it only waits. `None` when the loop has gone.
    pub fn next_job<J>(
        &mut self,
        rx: &Receiver<J>,
        home: &Home,
        policy: Option<&HeartbeatPolicy>,
        tx: &Sender<Msg>,
        waker: Option<&Waker>,
    ) -> Option<J> {
        let Some(policy) = policy else {
            return rx.recv().ok();
        };
        loop {
            let now = super::monitor::now_ms();
            let due = self.next_due_ms(policy);
            if now >= due {
                let done = self.run(home, policy, now, false);
                if !done.launched.is_empty() {
                    tx.send(Msg::Launched(done.launched)).ok()?;
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                continue;
            }
            let wait = std::time::Duration::from_millis(due.saturating_sub(now) as u64);
            match rx.recv_timeout(wait) {
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Runs the jobs that are due at `now_ms` (all of them with `all`, for `--once`).
    pub fn run(&mut self, home: &Home, policy: &HeartbeatPolicy, now_ms: i64, all: bool) -> Done {
        let mut done = Done::default();
        if all || now_ms >= self.next_pool_ms {
            let t = std::time::Instant::now();
            done.launched = pools(home);
            // Paced by what the count cost (reading active/), not by the launches: those
            // are the work asked for, and the pool's own rate limit bounds them.
            let cost = if done.launched.is_empty() { took(t) } else { 0 };
            self.next_pool_ms = now_ms.saturating_add(paced_by(
                POOL_INTERVAL_SECONDS,
                cost,
                super::daemon::PACING_SOON,
            ));
        }
        match crate::retention::policy_after(policy) {
            Some(after) if all || now_ms >= self.next_purge_ms => {
                let t = std::time::Instant::now();
                purge(home, after);
                self.next_purge_ms = now_ms.saturating_add(paced(purge_interval(after), took(t)));
            }
            _ => {}
        }
        if all || now_ms >= self.next_rotate_ms {
            let t = std::time::Instant::now();
            let work_ms = self.rotate(home, &LogPolicy::of(policy));
            // Paced by the scan (a stat per log), not by the copies: those are proportional
            // to what the workers wrote, which must be rotated however long it takes.
            let cost = took(t).saturating_sub(work_ms);
            self.next_rotate_ms = now_ms.saturating_add(paced(ROTATE_INTERVAL_SECONDS, cost));
        }
        done
    }

    /// One rotation pass; returns the milliseconds spent rotating (not scanning).
    fn rotate(&mut self, home: &Home, p: &LogPolicy) -> i64 {
        match logrotate::rotate_all(home, p, &mut self.deferred_logs) {
            Ok(r) => {
                for (id, how) in &r.rotated {
                    match how {
                        Rotated::Collapsed(n) => {
                            tracing::debug!(
                                "{id}: {n} bytes of worker.log rotated into worker.log.1"
                            )
                        }
                        Rotated::Renamed(n) => {
                            tracing::debug!("{id}: worker.log ({n} bytes) rotated to worker.log.1")
                        }
                        _ => {}
                    }
                }
                r.work_ms
            }
            Err(e) => {
                tracing::warn!("worker log rotation failed: {e}");
                0
            }
        }
    }
}

fn took(t: std::time::Instant) -> i64 {
    t.elapsed().as_millis().min(i64::MAX as u128) as i64
}

/// One pool pass; returns the launched workers.
fn pools(home: &Home) -> Vec<(i32, String)> {
    let mut launched = Vec::new();
    match crate::pool::reconcile(home, time::now()) {
        Ok(reports) => {
            for r in reports {
                if !r.spawned.is_empty() {
                    tracing::info!(
                        "pool {}: {} of {} running, started {}",
                        r.worker_type,
                        r.running + r.restarting,
                        r.replicas,
                        r.spawned.join(", ")
                    );
                }
                if let Some(n) = &r.note {
                    tracing::warn!("pool {}: {n}", r.worker_type);
                }
                launched.extend(r.launched);
            }
        }
        Err(e) => tracing::warn!("pool pass failed: {e}"),
    }
    launched
}

/// One purge pass (`retention::purge_archived`).
fn purge(home: &Home, after: f64) {
    match crate::retention::purge_archived(home, after, time::now(), false) {
        Ok(r) if !r.purged.is_empty() => tracing::info!(
            "purged {} archived worker(s) older than {}s ({} log bytes)",
            r.purged.len(),
            after,
            r.bytes_freed
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("purge of archived workers failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_come_often_enough_and_never_too_often() {
        assert_eq!(purge_interval(2.0), 1.0);
        assert_eq!(purge_interval(60.0), 6.0);
        assert_eq!(purge_interval(30.0 * 86_400.0), PURGE_MAX_INTERVAL_SECONDS);
    }

    #[test]
    fn jobs_wait_for_their_time_unless_all_are_asked() {
        let (_d, home) = crate::home::test_home();
        let mut policy = HeartbeatPolicy::default();
        policy
            .extra
            .insert(crate::retention::POLICY_KEY.into(), 3600.into());
        let mut u = Upkeep::default();
        let now = 1_000_000;
        u.run(&home, &policy, now, false);
        assert!(u.next_pool_ms >= now + 1000);
        assert!(u.next_purge_ms >= now + 360_000);
        assert!(u.next_rotate_ms >= now + 1000);
        let (p, q) = (u.next_pool_ms, u.next_purge_ms);
        u.run(&home, &policy, now + 1, false);
        assert_eq!(
            (u.next_pool_ms, u.next_purge_ms),
            (p, q),
            "not due: not run"
        );
        // Run again one millisecond later, each job's next time moves (by a cost-paced
        // amount that differs from the first by a whole multiple of the pacing factor, never
        // by 1 ms, so "unchanged" cannot happen by chance under load).
        u.run(&home, &policy, now + 1, true);
        assert_ne!(u.next_pool_ms, p, "--once runs everything");
        assert_ne!(u.next_purge_ms, q, "--once runs everything");
    }
}
