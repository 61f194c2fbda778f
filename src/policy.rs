//! Configuration read from the home: the heartbeat policy (liveness, health, restart and
//! resource thresholds) and per-type worker defaults. The effective policy is file, then
//! environment (`CORRAL_HEARTBEAT__ZOMBIE_SECONDS=5`, `CORRAL_HEARTBEAT__RESTART__MAX_RETRIES=1`:
//! a double underscore separates section and key), then flags; so tests and operators can
//! shorten thresholds without editing files. Every value has a maximum in the schema
//! (durations at most `time::MAX_SECONDS`), so a policy can never make a reader's arithmetic
//! overflow (DESIGN §6 S5): a value out of range is refused with the key named (exit 6).

use crate::error::{Error, Result};
use crate::home::Home;
use crate::schema::{self, Kind};
use crate::spec::Priority;
use crate::store;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Health-score weights (DESIGN.md §6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HealthPolicy {
    pub missed_interval_penalty: f64,
    pub cpu_high_percent: f64,
    pub cpu_high_penalty: f64,
    pub cpu_warn_percent: f64,
    pub cpu_warn_penalty: f64,
    pub rss_high_mb: f64,
    pub rss_high_penalty: f64,
    pub rss_warn_mb: f64,
    pub rss_warn_penalty: f64,
    pub tokens_low_fraction: f64,
    pub tokens_low_penalty: f64,
    pub tokens_warn_fraction: f64,
    pub tokens_warn_penalty: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            missed_interval_penalty: 5.0,
            cpu_high_percent: 80.0,
            cpu_high_penalty: 30.0,
            cpu_warn_percent: 60.0,
            cpu_warn_penalty: 15.0,
            rss_high_mb: 1024.0,
            rss_high_penalty: 30.0,
            rss_warn_mb: 512.0,
            rss_warn_penalty: 15.0,
            tokens_low_fraction: 0.10,
            tokens_low_penalty: 40.0,
            tokens_warn_fraction: 0.25,
            tokens_warn_penalty: 20.0,
        }
    }
}

/// Restart policy (DESIGN.md §6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RestartPolicy {
    pub enabled: bool,
    pub max_retries: u32,
    pub base_seconds: f64,
    pub max_seconds: f64,
    pub breaker_consecutive_failures: u32,
    pub breaker_reset_seconds: f64,
    pub rate_global_per_minute: u32,
    pub rate_per_type_per_minute: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            enabled: true,
            max_retries: 3,
            base_seconds: 30.0,
            max_seconds: 300.0,
            breaker_consecutive_failures: 3,
            breaker_reset_seconds: 1800.0,
            rate_global_per_minute: 10,
            rate_per_type_per_minute: 3,
        }
    }
}

impl RestartPolicy {
    /// Delay before attempt `n` (1-based): `base·2^(n−1)`, capped at `max_seconds`.
    pub fn backoff_seconds(&self, attempt: u32) -> f64 {
        let exp = attempt.saturating_sub(1).min(30);
        (self.base_seconds * f64::from(1u32 << exp)).min(self.max_seconds)
    }
}

/// Event log rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventsPolicy {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for EventsPolicy {
    fn default() -> Self {
        EventsPolicy {
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// The heartbeat policy: every key optional in the file, defaults as in DESIGN.md §6.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeartbeatPolicy {
    pub heartbeat_interval_seconds: f64,
    pub warning_seconds: f64,
    pub critical_seconds: f64,
    pub zombie_seconds: f64,
    pub pending_timeout_seconds: f64,
    pub idle_timeout_seconds: f64,
    pub grace_seconds: f64,
    pub check_orphans: bool,
    pub stuck_task_seconds: f64,
    pub starvation_seconds: f64,
    pub cpu_threshold_percent: f64,
    pub memory_threshold_percent: f64,
    pub alert_command: Vec<String>,
    pub summary_interval_seconds: f64,
    pub prometheus_interval_seconds: f64,
    pub health: HealthPolicy,
    pub restart: RestartPolicy,
    pub events: EventsPolicy,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        HeartbeatPolicy {
            heartbeat_interval_seconds: 30.0,
            warning_seconds: 60.0,
            critical_seconds: 120.0,
            zombie_seconds: 300.0,
            pending_timeout_seconds: 60.0,
            idle_timeout_seconds: 0.0,
            grace_seconds: 5.0,
            check_orphans: false,
            stuck_task_seconds: 300.0,
            starvation_seconds: 300.0,
            cpu_threshold_percent: 90.0,
            memory_threshold_percent: 90.0,
            alert_command: Vec::new(),
            summary_interval_seconds: 60.0,
            prometheus_interval_seconds: 15.0,
            health: HealthPolicy::default(),
            restart: RestartPolicy::default(),
            events: EventsPolicy::default(),
            extra: Map::new(),
        }
    }
}

/// The env prefix for policy overrides.
pub const ENV_PREFIX: &str = "CORRAL_HEARTBEAT__";

/// Applies `CORRAL_HEARTBEAT__A__B=v` overrides from `vars` to a policy document. Values
/// parse as JSON when they can (numbers, booleans, arrays), else as strings.
pub fn apply_env(doc: &mut Value, vars: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        let value = serde_json::from_str(&v).unwrap_or(Value::String(v));
        let mut cur = &mut *doc;
        for (i, key) in path.iter().enumerate() {
            if !cur.is_object() {
                *cur = Value::Object(Map::new());
            }
            let Some(obj) = cur.as_object_mut() else {
                break;
            };
            if i + 1 == path.len() {
                obj.insert(key.clone(), value.clone());
                break;
            }
            cur = obj
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
}

impl HeartbeatPolicy {
    /// Loads the policy file (missing file: defaults), applies the environment, validates.
    pub fn load(home: &Home) -> Result<HeartbeatPolicy> {
        let path = home.policy_path();
        let mut doc = match store::read_json(&path) {
            Ok(v) => v,
            Err(store::ReadError::Missing) => Value::Object(Map::new()),
            Err(e) => return Err(e.into_error(&path)),
        };
        apply_env(&mut doc, std::env::vars());
        HeartbeatPolicy::from_value(doc)
    }

    /// Validates and loads a policy document.
    pub fn from_value(doc: Value) -> Result<HeartbeatPolicy> {
        schema::validate(Kind::HeartbeatPolicy, &doc)?;
        let p: HeartbeatPolicy = serde_json::from_value(doc)
            .map_err(|e| Error::Invalid(format!("invalid heartbeat policy: {e}")))?;
        p.check_ranges()?;
        Ok(p)
    }

    /// The lower bounds the schema cannot say (DESIGN §6 S5): a liveness threshold of 0 (or
    /// 1e-300) declares every beating worker dead at once, and a monitor interval that small
    /// spins a core. Refused with the key and the accepted range named (exit 6).
    pub fn check_ranges(&self) -> Result<()> {
        let max = crate::time::MAX_SECONDS;
        let at_least = |key: &str, v: f64, min: f64| {
            if v >= min {
                return Ok(());
            }
            Err(Error::Invalid(format!(
                "invalid heartbeat policy: /{key}: {v} is out of range: at least {min} s (up to {max} s)"
            )))
        };
        let zero_or_at_least = |key: &str, v: f64, min: f64| {
            if v == 0.0 || v >= min {
                return Ok(());
            }
            Err(Error::Invalid(format!(
                "invalid heartbeat policy: /{key}: {v} is out of range: 0 (off) or at least {min} s (up to {max} s)"
            )))
        };
        at_least(
            "warning_seconds",
            self.warning_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        at_least(
            "critical_seconds",
            self.critical_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        at_least("zombie_seconds", self.zombie_seconds, MIN_THRESHOLD_SECONDS)?;
        at_least(
            "pending_timeout_seconds",
            self.pending_timeout_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        // A task processing for 0 s is not stuck: 0 would report every task at its claim.
        at_least(
            "stuck_task_seconds",
            self.stuck_task_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        zero_or_at_least(
            "starvation_seconds",
            self.starvation_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        zero_or_at_least(
            "heartbeat_interval_seconds",
            self.heartbeat_interval_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        zero_or_at_least(
            "idle_timeout_seconds",
            self.idle_timeout_seconds,
            MIN_THRESHOLD_SECONDS,
        )?;
        // The monitor's own keys (flags `--poll-interval`, `--sample-interval`); `null`
        // (as `--print-config` shows an unset poll interval) is the default.
        for (key, min) in [
            ("poll_interval_seconds", MIN_MONITOR_INTERVAL_SECONDS),
            ("sample_interval_seconds", MIN_MONITOR_INTERVAL_SECONDS),
            ("maintain_interval_seconds", MIN_MAINTAIN_INTERVAL_SECONDS),
        ] {
            match self.extra.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    let v = n.as_f64().unwrap_or(f64::NAN);
                    if !(min..=max).contains(&v) {
                        return Err(Error::Invalid(format!(
                            "invalid heartbeat policy: /{key}: {v} is out of range: {min} to {max} s"
                        )));
                    }
                }
                Some(other) => {
                    return Err(Error::Invalid(format!(
                        "invalid heartbeat policy: /{key}: {other} is not a number of seconds ({min} to {max})"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The shortest heartbeat threshold (`warning_seconds`, `critical_seconds`,
/// `zombie_seconds`, `pending_timeout_seconds`, `stuck_task_seconds`;
/// `heartbeat_interval_seconds`, `idle_timeout_seconds` and `starvation_seconds` unless
/// 0 = off).
pub const MIN_THRESHOLD_SECONDS: f64 = 0.1;
/// The shortest poll and sample intervals of the monitor.
pub const MIN_MONITOR_INTERVAL_SECONDS: f64 = 0.1;
/// The shortest queue maintenance interval of the monitor.
pub const MIN_MAINTAIN_INTERVAL_SECONDS: f64 = 0.05;

/// Defaults for one worker type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerType {
    #[serde(default)]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub timeout_minutes: Option<u64>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub description: Option<String>,
    /// Environment given to every worker of this type, at launch and at each restart.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A `KEY=VALUE` file read at each launch (never copied into a spec: it may hold secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    /// Working directory of launched workers (default: where `spawn-worker` ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Target pool size the monitor keeps running (supervisord's `numprocs`); none: no pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `direct` (default) or `container` (`docker` is the seed's alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<String>,
    /// Container image (container mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container engine: `podman` (default) or `docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Memory limit the engine enforces, e.g. `256m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// CPU limit the engine enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Extra `HOST:CONTAINER[:opts]` volumes (the home is always mounted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Container network (default `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Run an init as PID 1 in the container (default true), so SIGTERM works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Extra arguments passed to `ENGINE run` before the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_args: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `config/worker-types.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerTypes {
    pub types: BTreeMap<String, WorkerType>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl WorkerTypes {
    /// Loads and validates the file (missing: no types).
    pub fn load(home: &Home) -> Result<WorkerTypes> {
        let path = home.worker_types_path();
        let doc = match store::read_json(&path) {
            Ok(v) => v,
            Err(store::ReadError::Missing) => return Ok(WorkerTypes::default()),
            Err(e) => return Err(e.into_error(&path)),
        };
        schema::validate(Kind::WorkerTypes, &doc)?;
        serde_json::from_value(doc)
            .map_err(|e| Error::Invalid(format!("invalid worker types: {e}")))
    }

    /// The type's defaults; exit 6 naming the known types when it is not configured.
    pub fn get(&self, name: &str) -> Result<&WorkerType> {
        self.types.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.types.keys().map(String::as_str).collect();
            Error::Invalid(format!(
                "unknown worker type {name:?} (configured in config/worker-types.json: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_overrides_sections_and_keys() {
        let mut doc = json!({"zombie_seconds": 300, "restart": {"max_retries": 3}});
        apply_env(
            &mut doc,
            vec![
                ("CORRAL_HEARTBEAT__ZOMBIE_SECONDS".into(), "5".into()),
                ("CORRAL_HEARTBEAT__RESTART__MAX_RETRIES".into(), "1".into()),
                (
                    "CORRAL_HEARTBEAT__ALERT_COMMAND".into(),
                    "[\"/bin/true\"]".into(),
                ),
                ("UNRELATED".into(), "x".into()),
            ],
        );
        let p = HeartbeatPolicy::from_value(doc).unwrap();
        assert_eq!(p.zombie_seconds, 5.0);
        assert_eq!(p.restart.max_retries, 1);
        assert_eq!(p.alert_command, vec!["/bin/true".to_string()]);
        assert_eq!(p.warning_seconds, 60.0);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(HeartbeatPolicy::from_value(json!({"zombie_seconds": "soon"})).is_err());
        assert!(HeartbeatPolicy::from_value(json!({"cpu_threshold_percent": 150})).is_err());
    }

    #[test]
    fn values_no_reader_could_compute_with_are_refused_naming_the_key() {
        // 1e13 s overflowed `now + zombie_seconds` in the monitor (S5).
        for (doc, key) in [
            (json!({"zombie_seconds": 1e13}), "/zombie_seconds"),
            (json!({"grace_seconds": 1e300}), "/grace_seconds"),
            (
                json!({"restart": {"max_seconds": 1e13}}),
                "/restart/max_seconds",
            ),
            (
                json!({"restart": {"max_retries": 4_000_000_000u64}}),
                "/restart/max_retries",
            ),
            (json!({"events": {"keep": 1_000_000}}), "/events/keep"),
        ] {
            let err = HeartbeatPolicy::from_value(doc).unwrap_err();
            assert_eq!(err.exit_code(), 6);
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains("maximum"), "{msg}");
        }
        let mut doc = json!({});
        apply_env(
            &mut doc,
            vec![("CORRAL_HEARTBEAT__ZOMBIE_SECONDS".into(), "inf".into())],
        );
        assert!(HeartbeatPolicy::from_value(doc).is_err());
        let ok = json!({"zombie_seconds": crate::time::MAX_SECONDS});
        assert!(HeartbeatPolicy::from_value(ok).is_ok());
    }

    #[test]
    fn thresholds_that_would_kill_a_healthy_fleet_are_refused_naming_the_key() {
        for (doc, key) in [
            (json!({"zombie_seconds": 0}), "/zombie_seconds"),
            (json!({"warning_seconds": 1e-300}), "/warning_seconds"),
            (json!({"critical_seconds": 0.0}), "/critical_seconds"),
            (
                json!({"pending_timeout_seconds": 0.05}),
                "/pending_timeout_seconds",
            ),
            (
                json!({"heartbeat_interval_seconds": 1e-300}),
                "/heartbeat_interval_seconds",
            ),
            (
                json!({"idle_timeout_seconds": 0.001}),
                "/idle_timeout_seconds",
            ),
            (
                json!({"poll_interval_seconds": 0.0001}),
                "/poll_interval_seconds",
            ),
            (
                json!({"poll_interval_seconds": 0}),
                "/poll_interval_seconds",
            ),
            (
                json!({"poll_interval_seconds": -5}),
                "/poll_interval_seconds",
            ),
            (
                json!({"poll_interval_seconds": 1e13}),
                "/poll_interval_seconds",
            ),
            (
                json!({"poll_interval_seconds": "2s"}),
                "/poll_interval_seconds",
            ),
            (
                json!({"sample_interval_seconds": -5}),
                "/sample_interval_seconds",
            ),
            (
                json!({"maintain_interval_seconds": 0}),
                "/maintain_interval_seconds",
            ),
            (json!({"stuck_task_seconds": 0}), "/stuck_task_seconds"),
            (json!({"starvation_seconds": 0.01}), "/starvation_seconds"),
        ] {
            let err = HeartbeatPolicy::from_value(doc.clone()).unwrap_err();
            assert_eq!(err.exit_code(), 6, "{doc}");
            let msg = err.to_string();
            assert!(
                msg.contains(key) && (msg.contains("range") || msg.contains("number")),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        // The short thresholds tests and demos use, 0 = off, and an unset poll interval.
        for doc in [
            json!({"heartbeat_interval_seconds": 0.5, "warning_seconds": 1, "critical_seconds": 2,
                   "zombie_seconds": 3.5, "pending_timeout_seconds": 1}),
            json!({"zombie_seconds": 2, "warning_seconds": 100, "critical_seconds": 200}),
            json!({"idle_timeout_seconds": 0, "heartbeat_interval_seconds": 0}),
            json!({"poll_interval_seconds": null, "sample_interval_seconds": 0.2,
                   "maintain_interval_seconds": 0.05}),
            json!({"zombie_seconds": 0.1}),
            json!({"stuck_task_seconds": 0.1, "starvation_seconds": 0}),
        ] {
            HeartbeatPolicy::from_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"));
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RestartPolicy::default();
        assert_eq!(r.backoff_seconds(1), 30.0);
        assert_eq!(r.backoff_seconds(2), 60.0);
        assert_eq!(r.backoff_seconds(4), 240.0);
        assert_eq!(r.backoff_seconds(5), 300.0);
        assert_eq!(r.backoff_seconds(99), 300.0);
    }

    #[test]
    fn template_files_load() {
        let (_dir, home) = crate::home::test_home();
        let file: Value =
            serde_json::from_str(&std::fs::read_to_string(home.policy_path()).unwrap()).unwrap();
        let mut loaded = HeartbeatPolicy::from_value(file).unwrap();
        // Keys other modules read (retention, logrotate) ride in `extra`, at their defaults.
        let extra = std::mem::take(&mut loaded.extra);
        assert_eq!(loaded, HeartbeatPolicy::default());
        let mut keys: Vec<&str> = extra.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "keep_log_files",
                "max_log_bytes",
                "purge_archived_after_seconds"
            ]
        );
        let with_extra = HeartbeatPolicy {
            extra,
            ..HeartbeatPolicy::default()
        };
        assert_eq!(
            crate::logrotate::LogPolicy::of(&with_extra),
            crate::logrotate::LogPolicy::of(&HeartbeatPolicy::default())
        );
        assert_eq!(crate::retention::policy_after(&with_extra), None);
        let types = WorkerTypes::load(&home).unwrap();
        assert_eq!(
            types.get("implementation-worker").unwrap().tokens,
            Some(100_000)
        );
        assert!(types.get("nope").is_err());
    }
}
