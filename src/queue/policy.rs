//! The queue's settings, from the `queue` section of `config/heartbeat-policy.json` (and
//! `CORRAL_HEARTBEAT__QUEUE__…` in the environment, as for every policy key):
//!
//! ```json
//! "queue": {
//!   "retry": {"base_seconds": 0, "factor": 2, "max_seconds": 3600, "jitter": 0.2},
//!   "classes": {"llm": {"retry": {"base_seconds": 30}}},
//!   "purge": {"completed_after_seconds": 604800, "failed_after_seconds": 2592000},
//!   "recount_seconds": 3600,
//!   "claim_grace_seconds": 5
//! }
//! ```
//!
//! Read directly from the file (no schema compile: `fail` and `claim` are one-shot
//! commands); an unusable value is reported once at warn and its default used, so a typo in
//! the policy never stops tasks from failing or being claimed.

use crate::home::Home;
use crate::time;
use serde_json::Value;
use std::collections::BTreeMap;

/// Retry backoff: attempt `n` (1-based) waits `base·factor^(n−1)`, capped at `max`, minus
/// up to `jitter` of itself at random (so retries of many tasks spread out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base_seconds: f64,
    pub factor: f64,
    pub max_seconds: f64,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_seconds: 0.0,
            factor: 2.0,
            max_seconds: 3600.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry after attempt `attempt`, with `unit` ∈ [0, 1) drawn at random.
    pub fn delay(&self, attempt: u32, unit: f64) -> f64 {
        if self.base_seconds <= 0.0 {
            return 0.0;
        }
        let exp = attempt.saturating_sub(1).min(60) as i32;
        let d = (self.base_seconds * self.factor.powi(exp)).min(self.max_seconds);
        let d = if d.is_finite() { d } else { self.max_seconds };
        (d * (1.0 - self.jitter * unit.clamp(0.0, 1.0))).max(0.0)
    }

    fn from_value(v: &Value, base: Backoff) -> Backoff {
        let mut b = base;
        let num = |k: &str, lo: f64, hi: f64| {
            v.get(k).and_then(Value::as_f64).and_then(|x| {
                if x.is_finite() && (lo..=hi).contains(&x) {
                    Some(x)
                } else {
                    tracing::warn!("queue policy: retry.{k} = {x} is out of range ({lo}..{hi}); using the default");
                    None
                }
            })
        };
        if let Some(x) = num("base_seconds", 0.0, time::MAX_SECONDS) {
            b.base_seconds = x;
        }
        if let Some(x) = num("factor", 1.0, 100.0) {
            b.factor = x;
        }
        if let Some(x) = num("max_seconds", 0.0, time::MAX_SECONDS) {
            b.max_seconds = x;
        }
        if let Some(x) = num("jitter", 0.0, 1.0) {
            b.jitter = x;
        }
        b
    }
}

/// Retention of finished tasks (`purge`, and maintenance when set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retention {
    pub completed_after_seconds: Option<f64>,
    pub failed_after_seconds: Option<f64>,
    pub cancelled_after_seconds: Option<f64>,
}

impl Retention {
    /// True when any state has an age limit.
    pub fn any(&self) -> bool {
        self.completed_after_seconds.is_some()
            || self.failed_after_seconds.is_some()
            || self.cancelled_after_seconds.is_some()
    }
}

/// The queue's section of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    pub retry: Backoff,
    pub class_retry: BTreeMap<String, Backoff>,
    pub purge: Retention,
    /// Seconds between exact recounts of the counts in maintenance (0: never).
    pub recount_seconds: f64,
    /// A processing task without a claim record older than this is requeued.
    pub claim_grace_seconds: f64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            retry: Backoff::default(),
            class_retry: BTreeMap::new(),
            purge: Retention::default(),
            recount_seconds: 3600.0,
            claim_grace_seconds: 5.0,
        }
    }
}

impl QueuePolicy {
    /// The queue section of a policy document (already merged with the environment).
    pub fn from_doc(doc: &Value) -> QueuePolicy {
        let mut p = QueuePolicy::default();
        let Some(q) = doc.get("queue").filter(|q| q.is_object()) else {
            return p;
        };
        if let Some(r) = q.get("retry") {
            p.retry = Backoff::from_value(r, p.retry);
        }
        if let Some(Value::Object(cs)) = q.get("classes") {
            for (c, v) in cs {
                if let Some(r) = v.get("retry") {
                    p.class_retry
                        .insert(c.clone(), Backoff::from_value(r, p.retry));
                }
            }
        }
        let secs = |v: Option<&Value>, what: &str| -> Option<f64> {
            let x = v?.as_f64()?;
            match time::check_secs(what, x) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("queue policy: {e}; ignored");
                    None
                }
            }
        };
        if let Some(pu) = q.get("purge") {
            p.purge = Retention {
                completed_after_seconds: secs(
                    pu.get("completed_after_seconds"),
                    "purge.completed_after_seconds",
                ),
                failed_after_seconds: secs(
                    pu.get("failed_after_seconds"),
                    "purge.failed_after_seconds",
                ),
                cancelled_after_seconds: secs(
                    pu.get("cancelled_after_seconds"),
                    "purge.cancelled_after_seconds",
                ),
            };
        }
        if let Some(s) = secs(q.get("recount_seconds"), "recount_seconds") {
            p.recount_seconds = s;
        }
        if let Some(s) = secs(q.get("claim_grace_seconds"), "claim_grace_seconds") {
            p.claim_grace_seconds = s;
        }
        p
    }

    /// Reads the policy file and the environment (defaults when there is no file).
    pub fn load(home: &Home) -> QueuePolicy {
        QueuePolicy::from_doc(&policy_doc(home))
    }

    /// Seconds before the retry of a task of `class` that failed attempt `attempt`.
    pub fn retry_delay(&self, class: &str, attempt: u32) -> f64 {
        let b = self.class_retry.get(class).unwrap_or(&self.retry);
        let unit = (crate::id::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        b.delay(attempt, unit)
    }
}

/// The policy document as the monitor sees it (file, then `CORRAL_HEARTBEAT__…`), read
/// without compiling its schema.
pub fn policy_doc(home: &Home) -> Value {
    let mut doc =
        crate::store::read_json(&home.policy_path()).unwrap_or(Value::Object(Default::default()));
    crate::policy::apply_env(&mut doc, std::env::vars());
    doc
}

/// One number of the policy document, if it is a usable number of seconds.
pub fn policy_secs(doc: &Value, key: &str) -> Option<f64> {
    doc.get(key)
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= time::MAX_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_grows_caps_and_jitters_per_class() {
        let p = QueuePolicy::from_doc(&json!({"queue": {
            "retry": {"base_seconds": 10, "factor": 3, "max_seconds": 100, "jitter": 0.5},
            "classes": {"slow": {"retry": {"base_seconds": 60}}},
            "purge": {"completed_after_seconds": 60, "failed_after_seconds": "soon"},
            "claim_grace_seconds": 2
        }}));
        assert_eq!(p.retry.delay(1, 0.0), 10.0);
        assert_eq!(p.retry.delay(2, 0.0), 30.0);
        assert_eq!(p.retry.delay(9, 0.0), 100.0);
        assert_eq!(p.retry.delay(2, 0.999_999), 30.0 * (1.0 - 0.5 * 0.999_999));
        assert_eq!(p.class_retry["slow"].delay(1, 0.0), 60.0);
        assert_eq!(p.class_retry["slow"].factor, 3.0);
        for _ in 0..50 {
            let d = p.retry_delay("x", 2);
            assert!((15.0..=30.0).contains(&d), "{d}");
        }
        assert_eq!(p.purge.completed_after_seconds, Some(60.0));
        assert_eq!(p.purge.failed_after_seconds, None);
        assert_eq!(p.claim_grace_seconds, 2.0);
        // Defaults: no backoff, the retry is immediate as DESIGN §8 describes.
        assert_eq!(QueuePolicy::default().retry_delay("x", 1), 0.0);
        let bad = QueuePolicy::from_doc(&json!({"queue": {"retry": {"base_seconds": 1e300}}}));
        assert_eq!(bad.retry.base_seconds, 0.0);
    }
}
