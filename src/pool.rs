//! Pools: keep N workers of a type running, as supervisord's `numprocs` or a systemd
//! template unit do. A worker type with `replicas: N` in `config/worker-types.json` is a
//! pool; its workers carry the session `replicas-<type>`, which is how a pool tells its own
//! workers from one-off spawns of the same type.
//!
//! [`reconcile`] spawns the missing workers of every pool: a worker that exited (failed,
//! zombie, or completed with exit 0, like a queue worker leaving on `--idle-exit`) is
//! replaced. It is idempotent (it counts before it spawns, under `.locks/pool.lock`, so two
//! reconcilers never both fill the same gap), never blocks (it spawns but never waits or
//! stops anything), so the monitor calls it in its housekeeping (`liveness::upkeep`), and it
//! cannot spin a crash loop: a pool spawns at most `max(3, 2·N)` workers per minute
//! (remembered in `metrics/pool-state.json`), after which it waits and says so. The monitor's
//! restart policy leaves pool workers alone ([`is_pool_worker`]): the pool is their one
//! replacement. A restart scheduled for one anyway (by an older monitor) counts as present,
//! so the two never both replace the same worker. Lowering `replicas` is done by
//! [`scale_down`], which stops the newest extra workers and waits for them: a CLI job, not
//! the monitor's.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::lifecycle::{self, SpawnRequest};
use crate::policy::WorkerTypes;
use crate::spec::{self, Status, WorkerSpec};
use crate::store;
use crate::time::{self, Timestamp};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Window of the spawn rate limit.
pub const WINDOW_SECONDS: f64 = 60.0;

/// The session of a pool's workers.
pub fn session_for(worker_type: &str) -> String {
    format!("replicas-{worker_type}")
}

/// True when `s` was started by a pool: the pool replaces it when it ends, so the monitor's
/// restart policy leaves it alone (one replacement, not two).
pub fn is_pool_worker(s: &WorkerSpec) -> bool {
    s.session_id.as_deref() == Some(session_for(&s.worker_type).as_str())
}

/// Spawns allowed per window for a pool of `replicas`.
pub fn spawn_limit(replicas: u32) -> usize {
    (2 * replicas as usize).max(3)
}

/// What reconciling one pool did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolReport {
    pub worker_type: String,
    pub replicas: u32,
    /// Pool workers in `active/` (not shutting down) before spawning.
    pub running: u64,
    /// Scheduled monitor restarts of pool workers, counted as present.
    pub restarting: u64,
    /// Ids spawned now.
    pub spawned: Vec<String>,
    /// Workers beyond `replicas` (newest first); [`scale_down`] stops them.
    pub excess: Vec<String>,
    /// Why fewer than the missing number were spawned, if so.
    pub note: Option<String>,
    /// `(pid, worker id)` of the processes launched now: the monitor reaps them.
    #[serde(skip)]
    pub launched: Vec<(i32, String)>,
}

/// Reconciles every pool (see the module docs). Returns an empty list when another
/// reconcile holds the pool lock.
pub fn reconcile(home: &Home, now: Timestamp) -> Result<Vec<PoolReport>> {
    reconcile_only(home, None, now)
}

/// [`reconcile`] for one type, or all when `only` is `None`.
pub fn reconcile_only(home: &Home, only: Option<&str>, now: Timestamp) -> Result<Vec<PoolReport>> {
    let Some(_guard) = store::try_lock(&home.named_lock("pool"))? else {
        return Ok(Vec::new());
    };
    let types = WorkerTypes::load(home)?;
    let pools: Vec<(String, u32)> = types
        .types
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        // A type named explicitly whose pool was ended (`--unset replicas`) is a pool of 0,
        // so its leftover workers show as excess; the monitor's passes (no `only`) never
        // touch types without replicas.
        .filter_map(|(name, t)| match (t.replicas, only) {
            (Some(r), _) => Some((name.clone(), r)),
            (None, Some(_)) => Some((name.clone(), 0)),
            (None, None) => None,
        })
        .collect();
    if pools.is_empty() {
        return Ok(Vec::new());
    }
    let (active, _) = spec::scan(home, StateDir::Active)?;
    let restarting = scheduled_restarts(home);
    let mut state = PoolState::load(home);
    let mut reports = Vec::new();
    for (name, replicas) in pools {
        let session = session_for(&name);
        let mut members: Vec<&WorkerSpec> = active
            .iter()
            .filter(|s| {
                s.worker_type == name
                    && s.session_id.as_deref() == Some(session.as_str())
                    && s.status != Status::ShuttingDown
            })
            .collect();
        members.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let running = members.len() as u64;
        let pending_restarts = restarting.get(&session).copied().unwrap_or(0);
        let present = running + pending_restarts;
        let mut report = PoolReport {
            worker_type: name.clone(),
            replicas,
            running,
            restarting: pending_restarts,
            spawned: Vec::new(),
            excess: members
                .iter()
                .take(present.saturating_sub(u64::from(replicas)) as usize)
                .map(|s| s.worker_id.clone())
                .collect(),
            note: None,
            launched: Vec::new(),
        };
        let missing = u64::from(replicas).saturating_sub(present) as usize;
        if missing > 0 {
            let recent = state.recent(&name, now);
            let allowed = spawn_limit(replicas).saturating_sub(recent);
            let n = missing.min(allowed);
            if n < missing {
                report.note = Some(format!(
                    "{recent} worker(s) spawned in the last {WINDOW_SECONDS:.0}s (limit {}): waiting before replacing more (a crash loop?)",
                    spawn_limit(replicas)
                ));
            }
            if n > 0 {
                let req = SpawnRequest {
                    worker_type: name.clone(),
                    session: Some(session.clone()),
                    count: n as u32,
                    ..SpawnRequest::default()
                };
                let has_command = types
                    .types
                    .get(&name)
                    .and_then(|t| t.command.as_ref())
                    .is_some_and(|c| !c.is_empty());
                if !has_command {
                    report.note = Some(format!(
                        "type {name} has no command: a pool needs one (corral type set {name} -- CMD…)"
                    ));
                } else {
                    match lifecycle::spawn(home, &req) {
                        Ok(specs) => {
                            report.launched = specs
                                .iter()
                                .filter_map(|s| {
                                    Some((s.process.as_ref()?.pid, s.worker_id.clone()))
                                })
                                .collect();
                            report.spawned = specs.into_iter().map(|s| s.worker_id).collect();
                            state.record(&name, now, report.spawned.len());
                        }
                        Err(e) => report.note = Some(format!("cannot spawn: {e}")),
                    }
                }
            }
        }
        reports.push(report);
    }
    state.save(home)?;
    Ok(reports)
}

/// Pending monitor restarts per session, from `metrics/restart-state.json` (read leniently:
/// the monitor owns that file).
fn scheduled_restarts(home: &Home) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(v) = store::read_json(&home.restart_state_path()) {
        if let Some(m) = v.get("pending").and_then(Value::as_object) {
            for p in m.values() {
                if let Some(s) = p.get("session_id").and_then(Value::as_str) {
                    *out.entry(s.to_string()).or_default() += 1;
                }
            }
        }
    }
    out
}

/// Recent spawn times per pool, for the rate limit.
struct PoolState {
    doc: Map<String, Value>,
    changed: bool,
}

impl PoolState {
    fn path(home: &Home) -> std::path::PathBuf {
        home.metrics_dir().join("pool-state.json")
    }

    fn load(home: &Home) -> PoolState {
        let doc = store::read_json(&Self::path(home))
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        PoolState {
            doc,
            changed: false,
        }
    }

    fn times(&self, name: &str) -> Vec<Timestamp> {
        self.doc
            .get(name)
            .and_then(|p| p.get("recent_spawns"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|t| time::parse(t).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Spawns of `name` inside the window ending at `now`.
    fn recent(&mut self, name: &str, now: Timestamp) -> usize {
        self.times(name)
            .into_iter()
            .filter(|t| time::secs_between(*t, now) < WINDOW_SECONDS && *t <= now)
            .count()
    }

    fn record(&mut self, name: &str, now: Timestamp, n: usize) {
        let mut times: Vec<Timestamp> = self
            .times(name)
            .into_iter()
            .filter(|t| time::secs_between(*t, now) < WINDOW_SECONDS)
            .collect();
        times.extend(std::iter::repeat_n(now, n));
        self.doc.insert(
            name.to_string(),
            json!({ "recent_spawns": times.iter().map(time::format).collect::<Vec<_>>() }),
        );
        self.changed = true;
    }

    fn save(&self, home: &Home) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        store::atomic_write(
            home,
            &Self::path(home),
            &store::to_pretty(&Value::Object(self.doc.clone()))?,
        )
    }
}

/// Stops the excess workers of a pool (newest first), waiting up to `grace` for each, and
/// returns their ids. For the CLI: it blocks for the stop.
pub fn scale_down(
    home: &Home,
    report: &PoolReport,
    grace: std::time::Duration,
) -> Result<Vec<String>> {
    if report.excess.is_empty() {
        return Ok(Vec::new());
    }
    let sel = crate::shutdown::StopSelection {
        ids: report.excess.clone(),
        ..Default::default()
    };
    let reason = format!(
        "pool {} scaled down to {}",
        report.worker_type, report.replicas
    );
    let mut stopped = Vec::new();
    let mut first_err: Option<Error> = None;
    for r in crate::shutdown::stop_many(home, &sel, grace, &reason)? {
        match r.outcome {
            Ok(_) => stopped.push(r.worker_id),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if stopped.is_empty() => Err(e),
        _ => Ok(stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_sessions() {
        assert_eq!(spawn_limit(0), 3);
        assert_eq!(spawn_limit(1), 3);
        assert_eq!(spawn_limit(5), 10);
        assert_eq!(session_for("queue-worker"), "replicas-queue-worker");
        let mut s = WorkerSpec::new("w1".into(), "queue-worker".into(), time::now());
        assert!(!is_pool_worker(&s));
        s.session_id = Some(session_for("queue-worker"));
        assert!(is_pool_worker(&s));
    }

    #[test]
    fn the_window_forgets_old_spawns() {
        let (_d, home) = crate::home::test_home();
        let now = time::now();
        let mut st = PoolState::load(&home);
        st.record("t", time::add_secs(now, -(WINDOW_SECONDS + 1.0)), 4);
        st.record("t", now, 2);
        st.save(&home).unwrap();
        let mut st = PoolState::load(&home);
        assert_eq!(st.recent("t", now), 2);
        assert_eq!(st.recent("t", time::add_secs(now, WINDOW_SECONDS + 1.0)), 0);
        assert_eq!(st.recent("other", now), 0);
    }
}
