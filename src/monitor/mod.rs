//! The liveness monitor behind `heartbeat-monitor` (DESIGN.md §6).
//!
//! Shape, and why:
//! - **Event driven.** inotify (the `notify` crate, raw events, no debouncer) tells which
//!   spec changed; one pidfd per local worker, in an epoll set, tells within milliseconds
//!   that a process exited; every time-based judgement (heartbeat age, pending, timeouts,
//!   health decay) is a deadline in a timer heap. In steady state nothing is rescanned, so
//!   10,000 quiet workers cost nothing but their beats. Where inotify is blind (network
//!   filesystems) the state directories are polled instead.
//! - **Files are the truth.** Every decision is made again under the worker lock from the
//!   spec as it is *now* (a beat may have landed since the deadline was computed), a spec is
//!   rewritten only when a value changed, and never written back into `active/` once it has
//!   moved on. Restart state lives in `metrics/restart-state.json`, so a restarted monitor
//!   adopts running workers and pending restarts from the files alone.
//! - **Pure judgement.** [`judge`] and [`restart`] decide from values and `now`; this module
//!   and [`daemon`] only gather facts and apply decisions through `lifecycle` and
//!   `shutdown`, which own every state change.

pub mod daemon;
pub mod judge;
pub mod restart;
pub mod sys;

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
pub const NETWORK_FS_POLL_SECONDS: f64 = 2.0;

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
    }
    Ok(v)
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, so that every thread started
/// afterwards (the log writer, inotify) inherits the mask and only the daemon's signalfd
/// receives them. Call it before anything spawns a thread. Children are unaffected: std
/// resets the mask before `exec`.
pub fn block_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| Error::io("cannot block signals", e.into()))?;
    Ok(mask)
}

/// Runs the monitor: one pass with `once`, else the daemon until SIGTERM/SIGINT. A second
/// monitor on the same home is refused (exit 5).
pub fn run(home: &Home, opts: &Options) -> Result<()> {
    let lock_path = home.named_lock("heartbeat-monitor");
    let _singleton = store::try_lock(&lock_path)?.ok_or_else(|| {
        Error::Conflict(format!(
            "another heartbeat-monitor is already watching {} (it holds {})",
            home.root().display(),
            lock_path.display()
        ))
    })?;
    let policy = effective_policy(home, &opts.overrides)?;
    let mut m = daemon::Monitor::new(home.clone(), opts.overrides.clone(), policy, opts.once)?;
    if opts.once {
        return m.run_once();
    }
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io(format!("cannot write pidfile {}", p.display()), e))?;
    }
    let res = m.run_daemon();
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    res
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
