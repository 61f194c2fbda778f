//! Pure liveness judgement (DESIGN.md §6): given what a spec says and the time `now`, which
//! action is due and when the next one can be. No I/O and no clock here, so every threshold
//! is unit-tested without a sleep, and the daemon and `--once` share one definition.

use crate::policy::HeartbeatPolicy;
use crate::spec::{self, Status, WorkerSpec};
use crate::time::Timestamp;

/// How late a worker is, as recorded in `heartbeat.alert` (cleared by the next beat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alert {
    None,
    Warning,
    Critical,
}

impl Alert {
    /// The value stored in `heartbeat.alert`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::None => "none",
            Alert::Warning => "warning",
            Alert::Critical => "critical",
        }
    }

    /// Reads `heartbeat.alert` (absent or unknown: none).
    pub fn of(spec: &WorkerSpec) -> Alert {
        match spec.heartbeat.extra.get("alert").and_then(|v| v.as_str()) {
            Some("warning") => Alert::Warning,
            Some("critical") => Alert::Critical,
            _ => Alert::None,
        }
    }
}

/// What the judgement needs from a spec: small enough to keep for 10,000 workers.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub status: Status,
    pub created_at: Option<Timestamp>,
    /// Last beat, or creation before the first beat.
    pub last_alive: Option<Timestamp>,
    /// When the run-time limit starts counting: start, else creation.
    pub started_at: Option<Timestamp>,
    /// When the worker last became idle (from `history`).
    pub idle_since: Option<Timestamp>,
    pub alert: Alert,
    pub timeout_minutes: Option<u64>,
    pub health_score: u32,
    pub health: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_mb: Option<f64>,
    pub tokens_allocated: u64,
    pub tokens_used: u64,
    pub progress: Option<f64>,
}

impl View {
    /// The judged parts of a spec.
    pub fn of(s: &WorkerSpec) -> View {
        let idle_since = if s.status == Status::Idle {
            s.history
                .iter()
                .rev()
                .find(|t| t.to == "idle")
                .map(|t| t.at)
                .or(s.heartbeat.last_seen)
                .or(s.started_at)
        } else {
            None
        };
        View {
            status: s.status,
            created_at: s.created_at,
            last_alive: s.last_alive(),
            started_at: s.started_at.or(s.created_at),
            idle_since,
            alert: Alert::of(s),
            timeout_minutes: s.resources.timeout_minutes,
            health_score: s.heartbeat.health_score,
            health: s.heartbeat.health.clone(),
            cpu_percent: s.resources.cpu_percent,
            rss_mb: s.resources.rss_mb,
            tokens_allocated: s.token_budget.allocated,
            tokens_used: s.token_budget.used,
            progress: s.heartbeat.progress,
        }
    }

    /// Seconds since the worker was last known alive (0 when unknown).
    pub fn age(&self, now: Timestamp) -> f64 {
        self.last_alive.map(|t| secs_between(t, now)).unwrap_or(0.0)
    }
}

/// What is due for a worker now, most urgent first.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Never confirmed alive within `pending_timeout_seconds`: `worker_failed`.
    FailPending { waited: f64 },
    /// Heartbeat older than `zombie_seconds`: `zombie_detected`.
    Zombify { age: f64 },
    /// Running longer than `resources.timeout_minutes`: graceful stop.
    StopTimeout { minutes: u64 },
    /// Idle longer than `idle_timeout_seconds`: graceful stop.
    StopIdle { idle: f64 },
    /// Heartbeat late enough for a warning or critical alert.
    Alert { level: Alert, age: f64 },
    /// The health score or band changed.
    Health { score: u32, health: String },
}

fn secs_between(a: Timestamp, b: Timestamp) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

fn plus(t: Timestamp, secs: f64) -> Timestamp {
    t + chrono::Duration::milliseconds((secs * 1000.0).round() as i64)
}

/// Intervals missed: none while beats come every interval, one once two intervals passed.
pub fn missed_intervals(age: f64, interval: f64) -> u32 {
    if interval <= 0.0 || age <= 0.0 {
        return 0;
    }
    ((age / interval).floor() as u32).saturating_sub(1)
}

/// The health score of DESIGN.md §6: 100, −penalty per missed interval, CPU, RSS and token
/// penalties from the policy; 0–100.
pub fn health_score(v: &View, policy: &HeartbeatPolicy, now: Timestamp) -> u32 {
    let h = &policy.health;
    let mut score = 100.0;
    score -= h.missed_interval_penalty
        * f64::from(missed_intervals(
            v.age(now),
            policy.heartbeat_interval_seconds,
        ));
    if let Some(cpu) = v.cpu_percent {
        if cpu > h.cpu_high_percent {
            score -= h.cpu_high_penalty;
        } else if cpu > h.cpu_warn_percent {
            score -= h.cpu_warn_penalty;
        }
    }
    if let Some(rss) = v.rss_mb {
        if rss > h.rss_high_mb {
            score -= h.rss_high_penalty;
        } else if rss > h.rss_warn_mb {
            score -= h.rss_warn_penalty;
        }
    }
    if v.tokens_allocated > 0 {
        let left =
            v.tokens_allocated.saturating_sub(v.tokens_used) as f64 / v.tokens_allocated as f64;
        if left < h.tokens_low_fraction {
            score -= h.tokens_low_penalty;
        } else if left < h.tokens_warn_fraction {
            score -= h.tokens_warn_penalty;
        }
    }
    score.clamp(0.0, 100.0).round() as u32
}

/// The band written beside the score: `unresponsive` once critical.
pub fn health_label(score: u32, alert: Alert) -> &'static str {
    if alert == Alert::Critical {
        "unresponsive"
    } else {
        spec::health_band(score)
    }
}

/// The most urgent action due at `now`, if any. `skip_alerts` is for a first look at a
/// worker that is already past zombie age: the zombie action covers it.
pub fn due(v: &View, p: &HeartbeatPolicy, now: Timestamp) -> Option<Action> {
    let age = v.age(now);
    let stoppable = matches!(v.status, Status::Pending | Status::Running | Status::Idle);
    if v.status == Status::Pending {
        if let Some(c) = v.created_at {
            let waited = secs_between(c, now);
            if waited >= p.pending_timeout_seconds {
                return Some(Action::FailPending { waited });
            }
        }
    }
    if v.last_alive.is_some() && age >= p.zombie_seconds {
        return Some(Action::Zombify { age });
    }
    if stoppable {
        if let (Some(m), Some(start)) = (v.timeout_minutes.filter(|m| *m > 0), v.started_at) {
            if secs_between(start, now) >= (m * 60) as f64 {
                return Some(Action::StopTimeout { minutes: m });
            }
        }
        if v.status == Status::Idle && p.idle_timeout_seconds > 0.0 {
            if let Some(since) = v.idle_since {
                let idle = secs_between(since, now);
                if idle >= p.idle_timeout_seconds {
                    return Some(Action::StopIdle { idle });
                }
            }
        }
    }
    if v.last_alive.is_some() {
        let level = if age >= p.critical_seconds {
            Alert::Critical
        } else if age >= p.warning_seconds {
            Alert::Warning
        } else {
            Alert::None
        };
        if level > v.alert {
            return Some(Action::Alert { level, age });
        }
    }
    let score = health_score(v, p, now);
    let label = health_label(score, v.alert);
    if score != v.health_score || v.health.as_deref() != Some(label) {
        return Some(Action::Health {
            score,
            health: label.to_string(),
        });
    }
    None
}

/// The earliest time after `now` at which [`due`] can return something new for this view:
/// the deadline the timer heap keeps. `None` when nothing can become due without a change
/// to the file.
pub fn next_deadline(v: &View, p: &HeartbeatPolicy, now: Timestamp) -> Option<Timestamp> {
    let mut cands: Vec<Timestamp> = Vec::with_capacity(8);
    let stoppable = matches!(v.status, Status::Pending | Status::Running | Status::Idle);
    if v.status == Status::Pending {
        if let Some(c) = v.created_at {
            cands.push(plus(c, p.pending_timeout_seconds));
        }
    }
    if let Some(last) = v.last_alive {
        cands.push(plus(last, p.zombie_seconds));
        if v.alert < Alert::Warning {
            cands.push(plus(last, p.warning_seconds));
        }
        if v.alert < Alert::Critical {
            cands.push(plus(last, p.critical_seconds));
        }
        let interval = p.heartbeat_interval_seconds;
        if interval > 0.0 && p.health.missed_interval_penalty > 0.0 {
            let missed = missed_intervals(secs_between(last, now), interval);
            // The next boundary at which one more interval counts as missed; past the
            // zombie age the zombie deadline covers it.
            let next = plus(last, interval * f64::from(missed + 2));
            if next < plus(last, p.zombie_seconds) {
                cands.push(next);
            }
        }
    }
    if stoppable {
        if let (Some(m), Some(start)) = (v.timeout_minutes.filter(|m| *m > 0), v.started_at) {
            cands.push(plus(start, (m * 60) as f64));
        }
        if v.status == Status::Idle && p.idle_timeout_seconds > 0.0 {
            if let Some(since) = v.idle_since {
                cands.push(plus(since, p.idle_timeout_seconds));
            }
        }
    }
    cands.into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse;

    fn t(s: &str) -> Timestamp {
        parse(&format!("2026-11-22T10:{s}Z")).unwrap()
    }

    fn running(last: &str) -> View {
        View {
            status: Status::Running,
            created_at: Some(t("00:00")),
            last_alive: Some(t(last)),
            started_at: Some(t("00:00")),
            idle_since: None,
            alert: Alert::None,
            timeout_minutes: None,
            health_score: 100,
            health: Some("healthy".into()),
            cpu_percent: None,
            rss_mb: None,
            tokens_allocated: 0,
            tokens_used: 0,
            progress: None,
        }
    }

    #[test]
    fn a_fresh_worker_needs_nothing_until_warning_time() {
        let p = HeartbeatPolicy::default();
        let v = running("00:00");
        assert_eq!(due(&v, &p, t("00:30")), None);
        // Next: the first missed interval (60 s) coincides with the warning.
        assert_eq!(next_deadline(&v, &p, t("00:30")), Some(t("01:00")));
    }

    #[test]
    fn ages_escalate_warning_critical_zombie() {
        let p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        assert_eq!(
            due(&v, &p, t("01:00")),
            Some(Action::Alert {
                level: Alert::Warning,
                age: 60.0
            })
        );
        v.alert = Alert::Warning;
        // Warning recorded: the health score (one missed interval) is what is left to write.
        assert_eq!(
            due(&v, &p, t("01:00")),
            Some(Action::Health {
                score: 95,
                health: "healthy".into()
            })
        );
        v.health_score = 95;
        assert_eq!(due(&v, &p, t("01:10")), None);
        assert_eq!(next_deadline(&v, &p, t("01:10")), Some(t("01:30")));
        assert!(matches!(
            due(&v, &p, t("02:00")),
            Some(Action::Alert {
                level: Alert::Critical,
                ..
            })
        ));
        v.alert = Alert::Critical;
        assert_eq!(
            due(&v, &p, t("02:00")),
            Some(Action::Health {
                score: 85,
                health: "unresponsive".into()
            })
        );
        assert_eq!(
            due(&v, &p, t("05:00")),
            Some(Action::Zombify { age: 300.0 })
        );
    }

    #[test]
    fn pending_too_long_fails_first() {
        let p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        v.status = Status::Pending;
        assert_eq!(next_deadline(&v, &p, t("00:10")), Some(t("01:00")));
        assert_eq!(
            due(&v, &p, t("01:00")),
            Some(Action::FailPending { waited: 60.0 })
        );
    }

    #[test]
    fn timeouts_and_idle_stop() {
        let mut p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        v.timeout_minutes = Some(1);
        v.last_alive = Some(t("00:55"));
        assert_eq!(next_deadline(&v, &p, t("00:56")), Some(t("01:00")));
        assert_eq!(
            due(&v, &p, t("01:00")),
            Some(Action::StopTimeout { minutes: 1 })
        );
        let mut v = running("00:20");
        v.status = Status::Idle;
        v.idle_since = Some(t("00:10"));
        assert_eq!(due(&v, &p, t("00:40")), None, "0 means never");
        p.idle_timeout_seconds = 30.0;
        assert_eq!(next_deadline(&v, &p, t("00:20")), Some(t("00:40")));
        assert_eq!(
            due(&v, &p, t("00:40")),
            Some(Action::StopIdle { idle: 30.0 })
        );
        v.status = Status::ShuttingDown;
        assert_eq!(
            due(&v, &p, t("00:40")),
            None,
            "a stop in progress is left alone"
        );
    }

    #[test]
    fn health_penalties_follow_the_policy() {
        let p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        let now = t("00:10");
        assert_eq!(health_score(&v, &p, now), 100);
        v.cpu_percent = Some(85.0);
        assert_eq!(health_score(&v, &p, now), 70);
        v.cpu_percent = Some(65.0);
        v.rss_mb = Some(600.0);
        assert_eq!(health_score(&v, &p, now), 70);
        v.rss_mb = Some(2048.0);
        v.tokens_allocated = 1000;
        v.tokens_used = 950;
        assert_eq!(health_score(&v, &p, now), 15);
        v.tokens_used = 800;
        assert_eq!(health_score(&v, &p, now), 35);
        assert_eq!(health_score(&v, &p, t("50:00")), 0, "clamped at 0");
        assert_eq!(health_label(90, Alert::Critical), "unresponsive");
        assert_eq!(health_label(60, Alert::Warning), "degraded");
    }

    #[test]
    fn missed_interval_counting() {
        assert_eq!(missed_intervals(10.0, 30.0), 0);
        assert_eq!(missed_intervals(59.9, 30.0), 0);
        assert_eq!(missed_intervals(60.0, 30.0), 1);
        assert_eq!(missed_intervals(95.0, 30.0), 2);
        assert_eq!(missed_intervals(95.0, 0.0), 0);
    }

    #[test]
    fn an_unknown_age_is_never_a_zombie() {
        let p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        v.last_alive = None;
        v.created_at = None;
        assert_eq!(due(&v, &p, t("59:00")), None);
        assert_eq!(next_deadline(&v, &p, t("59:00")), None);
    }
}
