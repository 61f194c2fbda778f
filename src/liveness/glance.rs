//! A beat, read cheaply. A heartbeat is a rename the monitor sees; it changes a few fields
//! (`last_seen`, `sequence`, maybe status or progress). Building the whole spec for it (a
//! `Value`, a JSON Schema validation, then the typed spec) cost most of the monitor's CPU at
//! 10,000 workers. A [`Glance`] reads only what the judgement uses, skipping everything
//! else, and records the spec's *shape*: its status, its process, and the names of its
//! top-level keys.
//!
//! The full read (schema validation included) still happens when a worker is first seen and
//! whenever its shape changes; a glance is trusted only for a new version of a spec whose
//! shape the monitor has validated before. The fields a glance reads are type-checked by
//! the parse itself; a value the schema would refuse in a field the monitor does not read is
//! caught at the next full read, and by every writer (they all validate).

use super::verdicts::{Parts, View};
use crate::process::ProcessInfo;
use crate::spec::Status;
use crate::time::{serde_ts, Timestamp};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The judged parts of one version of a spec, and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Glance {
    pub worker_id: String,
    pub status: Status,
    pub view: View,
    pub last_seen: Option<Timestamp>,
    pub process: Option<ProcessInfo>,
    /// Hash of the top-level key names, in order.
    pub keys: u64,
}

impl Glance {
    /// Parses a spec's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Glance, String> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let status = raw.status.ok_or("no status")?;
        let hb = &raw.heartbeat;
        let view = View::build(&Parts {
            status: Some(status),
            created_at: raw.created_at.0,
            started_at: raw.started_at.0,
            updated_at: raw.updated_at.0,
            last_seen: hb.last_seen.0,
            idle_at: raw.idle_at,
            stopping_at: raw.stopping_at,
            alert: hb.alert.as_deref(),
            timeout_minutes: raw.resources.timeout_minutes,
            health_score: hb.health_score.round().clamp(0.0, 100.0) as u32,
            health: hb.health.as_deref(),
            cpu_percent: raw.resources.cpu_percent,
            rss_mb: raw.resources.rss_mb,
            tokens_allocated: raw.token_budget.allocated,
            tokens_used: raw.token_budget.used,
            progress: hb.progress,
        });
        Ok(Glance {
            worker_id: raw.worker_id.ok_or("no worker_id")?,
            status,
            last_seen: hb.last_seen.0,
            view,
            process: raw.process,
            keys: raw.keys,
        })
    }

    /// True when `other` is the same shape: a glance of it can be trusted once this one
    /// was validated.
    pub fn same_shape(&self, other: &Glance) -> bool {
        self.keys == other.keys && self.status == other.status && self.process == other.process
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
struct OptTs(#[serde(with = "serde_ts::option")] Option<Timestamp>);

#[derive(Debug, Deserialize)]
struct Hb {
    #[serde(default)]
    last_seen: OptTs,
    #[serde(default = "full")]
    health_score: f64,
    #[serde(default)]
    health: Option<String>,
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    alert: Option<String>,
}

fn full() -> f64 {
    100.0
}

impl Default for Hb {
    fn default() -> Hb {
        Hb {
            last_seen: OptTs(None),
            health_score: 100.0,
            health: Some("healthy".into()),
            progress: None,
            alert: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Res {
    #[serde(default)]
    timeout_minutes: Option<u64>,
    #[serde(default)]
    cpu_percent: Option<f64>,
    #[serde(default)]
    rss_mb: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct Tokens {
    #[serde(default)]
    allocated: u64,
    #[serde(default)]
    used: u64,
}

#[derive(Debug, Deserialize)]
struct Step<'a> {
    #[serde(with = "serde_ts")]
    at: Timestamp,
    #[serde(borrow)]
    to: Cow<'a, str>,
}

#[derive(Default)]
struct Raw {
    worker_id: Option<String>,
    status: Option<Status>,
    heartbeat: Hb,
    resources: Res,
    token_budget: Tokens,
    process: Option<ProcessInfo>,
    created_at: OptTs,
    started_at: OptTs,
    updated_at: OptTs,
    idle_at: Option<Timestamp>,
    stopping_at: Option<Timestamp>,
    keys: u64,
}

/// FNV-1a, for the key-name hash (no dependency, stable across runs).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ 0xff
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_map(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a worker spec object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut r = Raw {
            keys: 0xcbf2_9ce4_8422_2325,
            ..Raw::default()
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            r.keys = fnv(r.keys, key.as_bytes());
            match key.as_ref() {
                "worker_id" => r.worker_id = Some(map.next_value()?),
                "status" => r.status = Some(map.next_value()?),
                "heartbeat" => r.heartbeat = map.next_value()?,
                "resources" => r.resources = map.next_value()?,
                "token_budget" => r.token_budget = map.next_value()?,
                "process" => r.process = map.next_value()?,
                "created_at" => r.created_at = map.next_value()?,
                "started_at" => r.started_at = map.next_value()?,
                "updated_at" => r.updated_at = map.next_value()?,
                "history" => {
                    let steps: Vec<Step<'de>> = map.next_value()?;
                    let last = |to: &str| steps.iter().rev().find(|s| s.to == to).map(|s| s.at);
                    r.idle_at = last("idle");
                    r.stopping_at = last("shutting_down");
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::WorkerSpec;
    use crate::time::{add_secs, now};
    use serde_json::json;

    fn full_spec() -> WorkerSpec {
        let t = now();
        let mut s = WorkerSpec::new("w1".into(), "build-worker".into(), add_secs(t, -100.0));
        s.set_status(Status::Running, "first heartbeat", add_secs(t, -90.0));
        s.set_status(Status::Idle, "heartbeat", add_secs(t, -50.0));
        s.heartbeat.last_seen = Some(add_secs(t, -10.0));
        s.heartbeat.health_score = 85;
        s.heartbeat.progress = Some(40.0);
        s.heartbeat.extra.insert("alert".into(), json!("warning"));
        s.resources.timeout_minutes = Some(45);
        s.resources.cpu_percent = Some(12.5);
        s.token_budget.allocated = 1000;
        s.token_budget.used = 300;
        s.started_at = Some(add_secs(t, -90.0));
        s.process = Some(ProcessInfo {
            pid: 42,
            command: vec!["sleep".into()],
            ..Default::default()
        });
        s.extra.insert("custom".into(), json!({"kept": [1, 2]}));
        s.normalize(t);
        s
    }

    #[test]
    fn a_glance_sees_what_the_full_read_sees() {
        let s = full_spec();
        let bytes = serde_json::to_vec_pretty(&s).unwrap();
        let g = Glance::parse(&bytes).unwrap();
        let reread: WorkerSpec = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(g.view, View::of(&reread));
        assert_eq!(g.worker_id, "w1");
        assert_eq!(g.status, Status::Idle);
        assert_eq!(g.process, s.process);
        assert!(g.view.idle_since.is_some());
    }

    #[test]
    fn the_shape_changes_with_status_process_or_keys_not_with_a_beat() {
        let mut s = full_spec();
        let g1 = Glance::parse(&serde_json::to_vec(&s).unwrap()).unwrap();
        s.heartbeat.last_seen = Some(now());
        s.heartbeat.sequence += 1;
        let g2 = Glance::parse(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert!(g1.same_shape(&g2), "a beat keeps the shape");
        assert_ne!(g1.last_seen, g2.last_seen);
        let mut s3 = s.clone();
        s3.extra.insert("new_field".into(), json!(1));
        let g3 = Glance::parse(&serde_json::to_vec(&s3).unwrap()).unwrap();
        assert!(!g2.same_shape(&g3), "a new key");
        let mut s4 = s.clone();
        s4.status = Status::Running;
        assert!(!g2.same_shape(&Glance::parse(&serde_json::to_vec(&s4).unwrap()).unwrap()));
        let mut s5 = s;
        s5.process.as_mut().unwrap().pid = 43;
        assert!(!g2.same_shape(&Glance::parse(&serde_json::to_vec(&s5).unwrap()).unwrap()));
    }

    #[test]
    fn wrong_types_in_the_fields_it_reads_are_refused() {
        for bad in [
            json!({"worker_id": "w", "status": "sleeping"}),
            json!({"worker_id": "w", "status": "running", "heartbeat": {"last_seen": 5}}),
            json!({"worker_id": "w", "status": "running", "resources": {"timeout_minutes": -1}}),
            json!({"worker_id": "w"}),
            json!([]),
        ] {
            assert!(
                Glance::parse(&serde_json::to_vec(&bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        assert!(Glance::parse(b"{ not json").is_err());
    }
}
