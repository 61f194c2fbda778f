//! Liveness judgement (DESIGN.md §6), pure: from what a spec says, what the monitor knows
//! about its processes, and the time `now`, which verdict is due and when the next one can
//! be. No I/O and no clock here, so every threshold is unit-tested without a sleep, and the
//! daemon and `--once` share one definition.
//!
//! [`deadlines`] is the one list of a worker's deadlines: [`due`] acts on the first one that
//! has passed, [`next_deadline`] gives the earliest one still ahead to the timer heap. All
//! time arithmetic saturates (`time::add_secs`), so no value in a file can overflow it (S5).

use crate::policy::HeartbeatPolicy;
use crate::spec::{self, Status, WorkerSpec};
use crate::time::{self, Timestamp};

/// A `last_seen` further ahead of our clock than this is a clock problem, not skew (S8).
pub const CLOCK_AHEAD_TOLERANCE_SECONDS: f64 = 5.0;
/// How long after its grace period a stop may still be in its stopper's hands; past that
/// the stopper is taken to be dead and the monitor finishes the stop (S6).
pub const STOPPER_MARGIN_SECONDS: f64 = 10.0;

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
        Alert::parse(spec.heartbeat.extra.get("alert").and_then(|v| v.as_str()))
    }

    /// Parses a stored alert level.
    pub fn parse(s: Option<&str>) -> Alert {
        match s {
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
    /// When the worker started shutting down (from `history`).
    pub stopping_since: Option<Timestamp>,
    pub alert: Alert,
    pub timeout_minutes: Option<u64>,
    pub health_score: u32,
    pub health: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_mb: Option<f64>,
    pub tokens_allocated: u64,
    pub tokens_used: u64,
    pub progress: Option<f64>,
    /// Set by the monitor after it was itself paused: heartbeat ages count from here, not
    /// from before the pause (S8). Not from the file.
    pub floor: Option<Timestamp>,
}

fn last_transition_to(s: &WorkerSpec, to: &str) -> Option<Timestamp> {
    s.history.iter().rev().find(|t| t.to == to).map(|t| t.at)
}

/// The parts of a spec a [`View`] is built from, borrowed from a full spec or from a
/// [`super::glance::Glance`], so both make the same view.
#[derive(Debug, Clone, Default)]
pub struct Parts<'a> {
    pub status: Option<Status>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// Last transitions to `idle` and to `shutting_down` in the history.
    pub idle_at: Option<Timestamp>,
    pub stopping_at: Option<Timestamp>,
    pub alert: Option<&'a str>,
    pub timeout_minutes: Option<u64>,
    pub health_score: u32,
    pub health: Option<&'a str>,
    pub cpu_percent: Option<f64>,
    pub rss_mb: Option<f64>,
    pub tokens_allocated: u64,
    pub tokens_used: u64,
    pub progress: Option<f64>,
}

impl View {
    /// The judged parts of a spec.
    pub fn of(s: &WorkerSpec) -> View {
        View::build(&Parts {
            status: Some(s.status),
            created_at: s.created_at,
            started_at: s.started_at,
            updated_at: s.updated_at,
            last_seen: s.heartbeat.last_seen,
            idle_at: last_transition_to(s, "idle"),
            stopping_at: last_transition_to(s, "shutting_down"),
            alert: s.heartbeat.extra.get("alert").and_then(|v| v.as_str()),
            timeout_minutes: s.resources.timeout_minutes,
            health_score: s.heartbeat.health_score,
            health: s.heartbeat.health.as_deref(),
            cpu_percent: s.resources.cpu_percent,
            rss_mb: s.resources.rss_mb,
            tokens_allocated: s.token_budget.allocated,
            tokens_used: s.token_budget.used,
            progress: s.heartbeat.progress,
        })
    }

    /// The one definition of a view.
    pub fn build(p: &Parts<'_>) -> View {
        let status = p.status.unwrap_or(Status::Pending);
        let idle_since = (status == Status::Idle)
            .then(|| p.idle_at.or(p.last_seen).or(p.started_at))
            .flatten();
        let stopping_since = (status == Status::ShuttingDown)
            .then(|| p.stopping_at.or(p.updated_at))
            .flatten();
        View {
            status,
            created_at: p.created_at,
            last_alive: p.last_seen.or(p.created_at),
            started_at: p.started_at.or(p.created_at),
            idle_since,
            stopping_since,
            alert: Alert::parse(p.alert),
            timeout_minutes: p.timeout_minutes,
            health_score: p.health_score,
            health: p.health.map(String::from),
            cpu_percent: p.cpu_percent,
            rss_mb: p.rss_mb,
            tokens_allocated: p.tokens_allocated,
            tokens_used: p.tokens_used,
            progress: p.progress,
            floor: None,
        }
    }

    /// Last known alive, raised to the floor set after a pause of the monitor.
    pub fn alive_at(&self) -> Option<Timestamp> {
        match (self.last_alive, self.floor) {
            (Some(l), Some(f)) => Some(l.max(f)),
            (l, _) => l,
        }
    }

    /// Seconds since the worker was last known alive (0 when unknown or in the future).
    pub fn age(&self, now: Timestamp) -> f64 {
        self.alive_at()
            .map(|t| time::secs_between(t, now).max(0.0))
            .unwrap_or(0.0)
    }

    /// True when the worker reported it finished its work (progress 100).
    pub fn finished(&self) -> bool {
        self.progress.is_some_and(|p| p >= 100.0)
    }

    fn stoppable(&self) -> bool {
        matches!(
            self.status,
            Status::Pending | Status::Running | Status::Idle
        )
    }
}

/// The kinds of deadline a worker can have, most urgent first (the order [`due`] checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    /// Pending longer than `pending_timeout_seconds`.
    PendingTimeout,
    /// No beat for `zombie_seconds`.
    Zombie,
    /// Shutting down past grace plus [`STOPPER_MARGIN_SECONDS`]: its stopper is gone.
    StopOverdue,
    /// Running longer than `resources.timeout_minutes`.
    RunTimeout,
    /// Idle longer than `idle_timeout_seconds`.
    IdleTimeout,
    /// No beat for `critical_seconds`.
    Critical,
    /// No beat for `warning_seconds`.
    Warning,
    /// One more heartbeat interval missed: the health score drops.
    MissedInterval,
}

/// Every deadline of a worker, passed or not, in urgency order.
pub fn deadlines(v: &View, p: &HeartbeatPolicy, now: Timestamp) -> Vec<(Deadline, Timestamp)> {
    let mut out = Vec::with_capacity(8);
    if v.status == Status::Pending {
        if let Some(c) = v.created_at {
            let from = v.floor.map_or(c, |f| c.max(f));
            out.push((
                Deadline::PendingTimeout,
                time::add_secs(from, p.pending_timeout_seconds),
            ));
        }
    }
    let alive = v.alive_at();
    if let Some(last) = alive {
        out.push((Deadline::Zombie, time::add_secs(last, p.zombie_seconds)));
    }
    if let Some(since) = v.stopping_since {
        out.push((
            Deadline::StopOverdue,
            time::add_secs(since, p.grace_seconds + STOPPER_MARGIN_SECONDS),
        ));
    }
    if v.stoppable() {
        if let (Some(m), Some(start)) = (v.timeout_minutes.filter(|m| *m > 0), v.started_at) {
            out.push((Deadline::RunTimeout, time::add_secs(start, m as f64 * 60.0)));
        }
        if v.status == Status::Idle && p.idle_timeout_seconds > 0.0 {
            if let Some(since) = v.idle_since {
                out.push((
                    Deadline::IdleTimeout,
                    time::add_secs(since, p.idle_timeout_seconds),
                ));
            }
        }
    }
    if let Some(last) = alive {
        if v.alert < Alert::Critical {
            out.push((Deadline::Critical, time::add_secs(last, p.critical_seconds)));
        }
        if v.alert < Alert::Warning {
            out.push((Deadline::Warning, time::add_secs(last, p.warning_seconds)));
        }
        let interval = p.heartbeat_interval_seconds;
        if interval > 0.0 && p.health.missed_interval_penalty > 0.0 {
            let missed = missed_intervals(time::secs_between(last, now), interval);
            // The next boundary at which one more interval counts as missed; past the
            // zombie age the zombie deadline covers it.
            let next = time::add_secs(last, interval * f64::from(missed.saturating_add(2)));
            if next < time::add_secs(last, p.zombie_seconds) {
                out.push((Deadline::MissedInterval, next));
            }
        }
    }
    out
}

/// What is due for a worker now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Never confirmed alive within `pending_timeout_seconds`: `worker_failed`.
    FailPending { waited: f64 },
    /// Heartbeat older than `zombie_seconds`: `zombie_detected`.
    Zombify { age: f64 },
    /// A stop whose stopper died mid-way: finish it (stop the group, record the stop).
    FinishStop { since: f64 },
    /// Running longer than `resources.timeout_minutes`: graceful stop.
    StopTimeout { minutes: u64 },
    /// Idle longer than `idle_timeout_seconds`: graceful stop.
    StopIdle { idle: f64 },
    /// Heartbeat late enough for a warning or critical alert.
    Alert { level: Alert, age: f64 },
    /// The health score or band changed.
    Health { score: u32, health: String },
}

/// The most urgent action due at `now`, if any.
pub fn due(v: &View, p: &HeartbeatPolicy, now: Timestamp) -> Option<Action> {
    let age = v.age(now);
    for (kind, at) in deadlines(v, p, now) {
        if at > now {
            continue;
        }
        return Some(match kind {
            Deadline::PendingTimeout => Action::FailPending {
                waited: v
                    .created_at
                    .map_or(0.0, |c| time::secs_between(c, now).max(0.0)),
            },
            Deadline::Zombie => Action::Zombify { age },
            Deadline::StopOverdue => Action::FinishStop {
                since: v.stopping_since.map_or(0.0, |s| time::secs_between(s, now)),
            },
            Deadline::RunTimeout => Action::StopTimeout {
                minutes: v.timeout_minutes.unwrap_or(0),
            },
            Deadline::IdleTimeout => Action::StopIdle {
                idle: v.idle_since.map_or(0.0, |s| time::secs_between(s, now)),
            },
            Deadline::Critical => Action::Alert {
                level: Alert::Critical,
                age,
            },
            Deadline::Warning => Action::Alert {
                level: Alert::Warning,
                age,
            },
            // Not an action of its own: the health comparison below covers it.
            Deadline::MissedInterval => continue,
        });
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

/// The earliest deadline after `now`: what the timer heap keeps for this worker. `None`
/// when nothing can become due without a change to the file.
pub fn next_deadline(v: &View, p: &HeartbeatPolicy, now: Timestamp) -> Option<Timestamp> {
    deadlines(v, p, now)
        .into_iter()
        .map(|(_, at)| at)
        .filter(|at| *at > now)
        .min()
}

/// Intervals missed: none while beats come every interval, one once two intervals passed.
pub fn missed_intervals(age: f64, interval: f64) -> u32 {
    if interval <= 0.0 || age.is_nan() || age <= 0.0 {
        return 0;
    }
    // `as` saturates: an absurd age is u32::MAX intervals, not a panic.
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
    if score.is_nan() {
        return 0;
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

/// Seconds a `last_seen` is ahead of `now`, when that is more than skew (S8): the monitor
/// then treats it as now instead of letting it make the worker immortal.
pub fn clock_ahead(last_seen: Option<Timestamp>, now: Timestamp) -> Option<f64> {
    let ahead = time::secs_between(now, last_seen?);
    (ahead > CLOCK_AHEAD_TOLERANCE_SECONDS).then_some(ahead)
}

/// What the monitor knows when a worker's leader process is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitFacts {
    pub status: Status,
    /// Progress 100 was reported before the exit.
    pub finished: bool,
    /// Other processes of the worker still hold its liveness lock.
    pub group_alive: bool,
    pub stopping_since: Option<Timestamp>,
}

/// What a process exit means (S1, S6).
#[derive(Debug, Clone, PartialEq)]
pub enum ExitVerdict {
    /// The leader is gone but its group still holds the liveness lock: stop the group
    /// first, and only then record the end (`finished` says which end).
    LeaderExited { finished: bool },
    /// Every process is gone: `worker_failed`.
    Failed,
    /// Every process is gone after reporting completion: a stop, not a failure.
    Finished,
    /// A stop is in its stopper's hands until `until`.
    AwaitStopper { until: Timestamp },
    /// A stop whose stopper is overdue: stop what is left of the group (if anything), then
    /// record the stop.
    FinishStop,
}

/// Decides what a leader's exit means.
pub fn on_exit(f: &ExitFacts, p: &HeartbeatPolicy, now: Timestamp) -> ExitVerdict {
    if f.status == Status::ShuttingDown {
        let since = f.stopping_since.unwrap_or(now);
        let until = time::add_secs(since, p.grace_seconds + STOPPER_MARGIN_SECONDS);
        return if now >= until {
            ExitVerdict::FinishStop
        } else {
            ExitVerdict::AwaitStopper { until }
        };
    }
    match (f.group_alive, f.finished) {
        (true, finished) => ExitVerdict::LeaderExited { finished },
        (false, true) => ExitVerdict::Finished,
        (false, false) => ExitVerdict::Failed,
    }
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
            stopping_since: None,
            alert: Alert::None,
            timeout_minutes: None,
            health_score: 100,
            health: Some("healthy".into()),
            cpu_percent: None,
            rss_mb: None,
            tokens_allocated: 0,
            tokens_used: 0,
            progress: None,
            floor: None,
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
    fn due_and_the_timer_read_one_list() {
        let p = HeartbeatPolicy::default();
        let v = running("00:00");
        let list = deadlines(&v, &p, t("00:30"));
        let kinds: Vec<Deadline> = list.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                Deadline::Zombie,
                Deadline::Critical,
                Deadline::Warning,
                Deadline::MissedInterval
            ]
        );
        // Whatever the list says is next is exactly when `due` starts answering.
        let next = next_deadline(&v, &p, t("00:30")).unwrap();
        assert_eq!(due(&v, &p, time::add_secs(next, -0.001)), None);
        assert!(due(&v, &p, next).is_some());
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
    }

    #[test]
    fn a_stop_is_left_to_its_stopper_until_overdue() {
        let p = HeartbeatPolicy::default(); // grace 5 s, margin 10 s
        let mut v = running("00:30");
        v.status = Status::ShuttingDown;
        v.stopping_since = Some(t("00:30"));
        v.timeout_minutes = Some(1);
        assert_eq!(due(&v, &p, t("00:40")), None, "in its stopper's hands");
        assert_eq!(next_deadline(&v, &p, t("00:40")), Some(t("00:45")));
        assert_eq!(
            due(&v, &p, t("00:45")),
            Some(Action::FinishStop { since: 15.0 })
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let mut p = HeartbeatPolicy {
            zombie_seconds: 1e13,
            warning_seconds: 1e300,
            critical_seconds: f64::INFINITY,
            heartbeat_interval_seconds: 1e-300,
            ..Default::default()
        };
        p.restart.base_seconds = 1e13;
        let mut v = running("00:00");
        v.timeout_minutes = Some(u64::MAX);
        v.status = Status::Pending;
        p.pending_timeout_seconds = 1e13;
        assert!(due(&v, &p, t("30:00")).is_some(), "health still judged");
        assert!(next_deadline(&v, &p, t("30:00")).is_some());
        assert_eq!(missed_intervals(f64::INFINITY, 30.0), u32::MAX - 1);
        assert_eq!(missed_intervals(f64::NAN, 30.0), 0);
    }

    #[test]
    fn a_pause_of_the_monitor_rearms_from_the_floor() {
        let p = HeartbeatPolicy::default();
        let mut v = running("00:00");
        assert!(matches!(
            due(&v, &p, t("06:00")),
            Some(Action::Zombify { .. })
        ));
        v.floor = Some(t("06:00"));
        assert_eq!(v.age(t("06:10")), 10.0);
        assert_eq!(due(&v, &p, t("06:10")), None);
        assert_eq!(next_deadline(&v, &p, t("06:10")), Some(t("07:00")));
        // A beat after the floor wins over it.
        v.last_alive = Some(t("06:30"));
        assert_eq!(v.age(t("06:40")), 10.0);
        // Pending workers are re-armed too.
        let mut pend = running("00:00");
        pend.status = Status::Pending;
        pend.floor = Some(t("06:00"));
        assert_eq!(
            deadlines(&pend, &p, t("06:00"))[0],
            (Deadline::PendingTimeout, t("07:00"))
        );
    }

    #[test]
    fn a_future_last_seen_is_a_clock_problem_not_immortality() {
        assert_eq!(clock_ahead(Some(t("00:03")), t("00:00")), None, "skew");
        assert_eq!(clock_ahead(Some(t("10:00")), t("00:00")), Some(600.0));
        assert_eq!(clock_ahead(None, t("00:00")), None);
        let v = running("10:00");
        assert_eq!(v.age(t("00:00")), 0.0, "never negative");
    }

    #[test]
    fn exits_are_judged_by_the_whole_group() {
        let p = HeartbeatPolicy::default();
        let f = |status, finished, group_alive, since: Option<&str>| ExitFacts {
            status,
            finished,
            group_alive,
            stopping_since: since.map(t),
        };
        let now = t("01:00");
        assert_eq!(
            on_exit(&f(Status::Running, false, true, None), &p, now),
            ExitVerdict::LeaderExited { finished: false }
        );
        assert_eq!(
            on_exit(&f(Status::Running, false, false, None), &p, now),
            ExitVerdict::Failed
        );
        assert_eq!(
            on_exit(&f(Status::Idle, true, false, None), &p, now),
            ExitVerdict::Finished
        );
        assert_eq!(
            on_exit(
                &f(Status::ShuttingDown, false, true, Some("00:50")),
                &p,
                now
            ),
            ExitVerdict::AwaitStopper { until: t("01:05") }
        );
        assert_eq!(
            on_exit(
                &f(Status::ShuttingDown, false, false, Some("00:40")),
                &p,
                now
            ),
            ExitVerdict::FinishStop
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
