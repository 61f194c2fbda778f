//! The liveness daemon behind `heartbeat-monitor` (DESIGN.md §6): it watches every worker
//! of a home and acts when one dies, goes silent, overstays, idles or uses too much, and
//! restarts failed workers. The `worker-monitor` dashboards are elsewhere (`view`).
//!
//! A newcomer's map, in the order an event travels:
//! - [`reactor`]: the one place the daemon sleeps (epoll over a signalfd, an eventfd,
//!   inotify and one pidfd per local worker);
//! - [`files`]: inotify on the state directories, batched; [`tracking`]: a file becomes a
//!   tracked worker (or a quarantined one); [`glance`]: a beat read without the full
//!   validation, once the spec's shape has passed it;
//! - [`schedule`]: the timer heap, one deadline per worker and per periodic job;
//! - [`verdicts`]: pure judgement, one list of deadlines that both `due` and the timer use;
//!   [`clock`]: noticing that the monitor itself was paused (S8);
//! - [`exits`]: a leader's exit, judged with its whole group (S1); [`ends`]: a worker's end
//!   recorded only once none of its processes lives; [`group`]: a worker's processes in
//!   `/proc`, the proof they are its own, stopping them;
//! - [`actions`]: state changes through `lifecycle`, never waiting for a lock (S4);
//! - [`containers`]: container workers, whose end and exit code the engine tells;
//! - [`resources`]: CPU and RSS over the process group; [`restarts`] and
//!   [`restart_state`]: restarts, once per failure across crashes (S3);
//! - [`upkeep`]: pools kept at size, archived workers purged, worker logs rotated, on the
//!   housekeeping thread beside queue maintenance;
//! - [`status`]: `metrics/monitor.json` for operators; [`sys`]: OS facts;
//! - [`monitor`]: the state that ties them together; [`daemon`]: the loop and `--once`.
//!
//! Files are the truth: every decision is made again on the spec as it is *now*, a spec is
//! rewritten only when a value changed, and a restarted monitor (or the next `--once`)
//! adopts running workers, pending restarts and half-done transitions from the files alone.

pub mod actions;
pub mod clock;
pub mod containers;
pub mod daemon;
pub mod ends;
pub mod exits;
pub mod files;
pub mod glance;
pub mod group;
pub mod monitor;
pub mod reactor;
pub mod resources;
pub mod restart_state;
pub mod restarts;
pub mod schedule;
pub mod status;
pub mod sys;
pub mod tracking;
pub mod upkeep;
pub mod verdicts;

use crate::error::{Error, Result};
use crate::home::Home;
use crate::policy::{self, HeartbeatPolicy};
use crate::store::{self, ReadError};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Monitor-only keys that may sit in the policy file (and env, and flags) beside the
/// documented ones; see [`Settings`].
pub const KEY_POLL_INTERVAL: &str = "poll_interval_seconds";
/// Seconds between CPU/RSS samples of a local worker (default: the heartbeat interval).
pub const KEY_SAMPLE_INTERVAL: &str = "sample_interval_seconds";
/// Seconds between queue maintenance passes (default 1).
pub const KEY_MAINTAIN_INTERVAL: &str = "maintain_interval_seconds";

/// Poll interval used on a network filesystem when none is configured.
pub const NETWORK_FS_POLL_SECONDS: f64 = crate::netfs::DEFAULT_POLL_SECONDS;

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Policy keys set by flags (`zombie_seconds` → 7), applied after the file and env.
    pub overrides: Vec<(String, Value)>,
    /// One pass and exit (cron), instead of the daemon.
    pub once: bool,
    /// Where the daemon writes its pid (removed on a clean exit).
    pub pidfile: Option<PathBuf>,
}

/// The monitor's own settings, read from the effective policy's extra keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Rescan the state directories this often (`None`: inotify only).
    pub poll_interval: Option<f64>,
    /// Sample CPU and RSS of local workers this often.
    pub sample_interval: f64,
    /// Run queue maintenance this often.
    pub maintain_interval: f64,
}

impl Settings {
    /// Reads the monitor keys of a policy; `network_fs` forces polling when no interval is
    /// configured.
    pub fn of(p: &HeartbeatPolicy, network_fs: bool) -> Settings {
        let num = |k: &str| p.extra.get(k).and_then(Value::as_f64).filter(|v| *v > 0.0);
        Settings {
            poll_interval: num(KEY_POLL_INTERVAL).or(network_fs.then_some(NETWORK_FS_POLL_SECONDS)),
            sample_interval: num(KEY_SAMPLE_INTERVAL)
                .unwrap_or(p.heartbeat_interval_seconds)
                .max(0.1),
            maintain_interval: num(KEY_MAINTAIN_INTERVAL).unwrap_or(1.0).max(0.05),
        }
    }
}

/// The effective policy: the file (missing: defaults), then `CORRAL_HEARTBEAT__…` env
/// overrides, then flags; validated as a whole.
pub fn effective_policy(home: &Home, overrides: &[(String, Value)]) -> Result<HeartbeatPolicy> {
    HeartbeatPolicy::from_value(effective_policy_doc(home, overrides)?)
}

/// The merged policy document before it is typed (for `--print-config`).
pub fn effective_policy_doc(home: &Home, overrides: &[(String, Value)]) -> Result<Value> {
    let path = home.policy_path();
    let mut doc = match store::read_json(&path) {
        Ok(v) => v,
        Err(ReadError::Missing) => Value::Object(Map::new()),
        Err(e) => return Err(e.into_error(&path)),
    };
    policy::apply_env(&mut doc, std::env::vars());
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", path.display())))?;
    for (k, v) in overrides {
        obj.insert(k.clone(), v.clone());
    }
    Ok(doc)
}

/// The effective policy as printed by `--print-config`: every key with its value in
/// force, the monitor's own keys included.
pub fn print_config(home: &Home, overrides: &[(String, Value)]) -> Result<Value> {
    let p = effective_policy(home, overrides)?;
    crate::events::env_rotation()?;
    let net = sys::network_fs(&home.coordination());
    let s = Settings::of(&p, net.is_some());
    let mut v = serde_json::to_value(&p).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            KEY_POLL_INTERVAL.into(),
            s.poll_interval.map(Value::from).unwrap_or(Value::Null),
        );
        o.insert(KEY_SAMPLE_INTERVAL.into(), s.sample_interval.into());
        o.insert(KEY_MAINTAIN_INTERVAL.into(), s.maintain_interval.into());
        o.insert(
            "filesystem".into(),
            net.map(|n| format!("{n} (network: polled)"))
                .unwrap_or_else(|| "local (inotify)".into())
                .into(),
        );
        // What writers use: the policy's, with CORRAL_EVENTS_* on top.
        let r = crate::events::Rotation::for_home(home);
        o.insert(
            "events".into(),
            serde_json::json!({"max_bytes": r.max_bytes, "keep": r.keep}),
        );
    }
    Ok(v)
}

/// Runs the monitor: one pass with `once`, else the daemon until SIGTERM/SIGINT. A second
/// monitor on the same home is refused (exit 5).
pub fn run(home: &Home, opts: &Options) -> Result<()> {
    crate::events::env_rotation()?;
    let lock_path = home.named_lock("heartbeat-monitor");
    let _singleton = store::try_lock(&lock_path)?.ok_or_else(|| {
        Error::Conflict(format!(
            "another heartbeat-monitor is already watching {} (it holds {})",
            home.root().display(),
            lock_path.display()
        ))
    })?;
    let policy = effective_policy(home, &opts.overrides)?;
    if status::predecessor_crashed(home) {
        recover_budget(home);
        // Its queue maintenance may have died between a requeue and the count update:
        // recount the pending tasks of every class (names only).
        for class in crate::queue::classes(home).unwrap_or_default() {
            if let Err(e) = crate::queue::counts::recount_pending(home, &class) {
                tracing::warn!("cannot recount class {class} after an unclean stop: {e}");
            }
        }
    }
    let mut m = monitor::Monitor::new(home.clone(), opts.overrides.clone(), policy, opts.once)?;
    // From here on, a crash is visible to the next monitor.
    m.write_status();
    if opts.once {
        let res = m.run_once();
        m.status.stopped_at = Some(crate::time::now());
        m.write_status();
        return res;
    }
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io(format!("cannot write pidfile {}", p.display()), e))?;
    }
    let res = m.run_daemon();
    m.status.stopped_at = Some(crate::time::now());
    m.write_status();
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    res
}

/// The previous monitor died without a clean exit, possibly inside one of its transitions
/// (a restart's spawn reserves the budget before it writes the spec; a move releases it
/// after): the reservation it may have left behind is recounted from the specs, under the
/// budget lock, so the books balance again (S6: a half-done transition is finished).
fn recover_budget(home: &Home) {
    match crate::budget::recalc(home, &crate::budget::RecalcOptions::default()) {
        Ok(d) if d.any() => {
            tracing::warn!(
                "the previous heartbeat-monitor did not stop cleanly; budget recounted from the specs: used {:+}, consumed {:+}",
                d.used_drift,
                d.consumed_drift
            );
            crate::events::emit(
                home,
                crate::doctor::budget_event(&d)
                    .with("reason", "heartbeat-monitor recovery after an unclean stop"),
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot recount the budget after an unclean stop: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_override_file_and_monitor_keys_default() {
        let (_dir, home) = crate::home::test_home();
        let over = vec![
            ("zombie_seconds".to_string(), json!(7.0)),
            (KEY_POLL_INTERVAL.to_string(), json!(0.5)),
        ];
        let p = effective_policy(&home, &over).unwrap();
        assert_eq!(p.zombie_seconds, 7.0);
        assert_eq!(p.warning_seconds, 60.0);
        let s = Settings::of(&p, false);
        assert_eq!(s.poll_interval, Some(0.5));
        assert_eq!(s.sample_interval, 30.0);
        let s = Settings::of(&effective_policy(&home, &[]).unwrap(), true);
        assert_eq!(s.poll_interval, Some(NETWORK_FS_POLL_SECONDS));
        let bad = vec![("zombie_seconds".to_string(), json!(-1))];
        assert!(effective_policy(&home, &bad).is_err());
    }
}
