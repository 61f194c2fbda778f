//! The monitor's state changes, each through `lifecycle` (which owns every transition, its
//! budget effect and its event), behind one rule: the monitor never waits for a worker's
//! lock (S4). Each change first tries the lock; if someone holds it (a beat in flight, a
//! stopped `stop-worker`, or `flock -x .locks/workers/<id>.lock sleep 20`) the answer is
//! [`Outcome::Busy`] and the caller comes back to that worker after a retry delay, while
//! every other worker is still watched.
//!
//! The try is a probe: the lock is released again before `lifecycle` takes it, because a
//! second `flock` by this process on another descriptor would wait for our own hold. The
//! window between the two is microseconds; what decides is that a held lock is seen and
//! skipped, not waited on.

use crate::error::Error;
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::lifecycle::{self, Move};
use crate::spec::{self, Status, WorkerSpec};
use crate::store;
use crate::time::{self, Timestamp};
use serde_json::{json, Value};

/// Shortest and longest wait before a busy worker is tried again.
pub const RETRY_MIN_MS: i64 = 100;
pub const RETRY_MAX_MS: i64 = 1_000;

/// The result of one state change.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The worker's lock is held by someone else: try again later.
    Busy,
    /// The worker is not where the change expected it (moved on, or gone).
    Moved,
    /// Anything else (I/O, a spec that does not validate): logged by the caller.
    Failed(Error),
}

impl<T> Outcome<T> {
    fn of(r: crate::error::Result<T>) -> Outcome<T> {
        match r {
            Ok(v) => Outcome::Done(v),
            Err(Error::Conflict(_)) | Err(Error::NotFound(_)) => Outcome::Moved,
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// The delay before the `n`th retry of a busy worker (n from 0): doubling, capped.
pub fn retry_delay_ms(n: u32) -> i64 {
    RETRY_MIN_MS
        .saturating_mul(1i64 << n.min(20))
        .min(RETRY_MAX_MS)
}

/// True when nobody holds worker `id`'s lock at this moment.
pub fn probe(home: &Home, id: &str) -> bool {
    if crate::id::validate("worker", id).is_err() {
        return false;
    }
    matches!(store::try_lock(&home.worker_lock(id)), Ok(Some(_)))
}

fn guarded<T>(home: &Home, id: &str, f: impl FnOnce() -> crate::error::Result<T>) -> Outcome<T> {
    if !probe(home, id) {
        return Outcome::Busy;
    }
    Outcome::of(f())
}

/// `worker_failed`: to `zombie/` with `exit` filled.
pub fn fail(
    home: &Home,
    id: &str,
    reason: &str,
    code: Option<i32>,
    signal: Option<i32>,
) -> Outcome<WorkerSpec> {
    guarded(home, id, || {
        lifecycle::fail_worker(home, id, reason, code, signal)
    })
}

/// `zombie_detected`: to `zombie/`.
pub fn zombify(home: &Home, id: &str, reason: &str, data: Value) -> Outcome<WorkerSpec> {
    guarded(home, id, || {
        lifecycle::zombify_worker(home, id, reason, data)
    })
}

/// `worker_stopped`: to `completed/`, budget released.
pub fn record_stopped(home: &Home, id: &str, reason: &str) -> Outcome<WorkerSpec> {
    guarded(home, id, || {
        lifecycle::record_stopped(home, id, reason, &[StateDir::Active])
    })
}

/// Finishes a state move a crash left half-done (S6): a spec whose status belongs further
/// on (`failed` still in `active/`) is moved where its status says, with the budget effect
/// and the event the interrupted transition never wrote. `None` inside when there was
/// nothing to finish.
pub fn finish_move(home: &Home, id: &str, dir: StateDir) -> Outcome<Option<WorkerSpec>> {
    guarded(home, id, || {
        let loc = spec::load(home, id)?;
        let to = loc.spec.status.home_dir();
        if loc.dir != dir || loc.spec.status.fits(loc.dir) || rank(to) <= rank(loc.dir) {
            return Ok(None);
        }
        let reason = format!(
            "finishing a move to {}/ that a crash left half-done",
            to.name()
        );
        let (_, s, released) = lifecycle::move_worker(
            home,
            id,
            &Move {
                from: &[dir],
                to,
                status: None,
                reason: &reason,
            },
            |_| {},
        )?;
        let kind = match s.status {
            Status::Failed => EventType::WorkerFailed,
            Status::Zombie => EventType::ZombieDetected,
            _ => EventType::WorkerStopped,
        };
        let ev = Event::new(kind, format!("{id}: {reason}"))
            .worker(&s)
            .with("reason", reason.clone())
            .with("finished_by", "heartbeat-monitor");
        lifecycle::emit_move(home, vec![ev], &s, released);
        Ok(Some(s))
    })
}

/// Order of the state directories: a move only ever goes forward.
pub fn rank(d: StateDir) -> u8 {
    match d {
        StateDir::Active => 0,
        StateDir::Zombie => 1,
        StateDir::Completed => 2,
        StateDir::Archived => 3,
    }
}

/// A rewrite of an active spec.
#[derive(Debug)]
pub struct Updated {
    pub spec: WorkerSpec,
    /// False when `f` found nothing to change (nothing was written).
    pub written: bool,
}

/// Rewrites an active spec under its lock if `f` changes something (`f` returns true).
pub fn update(home: &Home, id: &str, f: impl FnOnce(&mut WorkerSpec) -> bool) -> Outcome<Updated> {
    guarded(home, id, || {
        let _g = spec::lock(home, id)?;
        let Some((StateDir::Active, path)) = spec::locate(home, id) else {
            return Err(Error::Conflict(format!("{id} is no longer active")));
        };
        let mut s = spec::read(&path)?;
        if !f(&mut s) {
            return Ok(Updated {
                spec: s,
                written: false,
            });
        }
        s.normalize(time::now());
        spec::save(home, StateDir::Active, &s)?;
        Ok(Updated {
            spec: s,
            written: true,
        })
    })
}

/// Marker in `heartbeat` that the clock-ahead event was written for this worker (S8: the
/// event is written once, the correction every time).
const CLOCK_NOTED: &str = "clock_ahead_noted";

/// A `last_seen` in the future is treated as now (S8): rewritten to `now`, with one
/// `heartbeat_warning` (data `kind: clock_ahead`) per worker saying so.
pub fn clamp_future(home: &Home, id: &str, now: Timestamp) -> Outcome<Updated> {
    let mut ahead = None;
    let mut first = false;
    let out = update(home, id, |s| {
        let Some(a) = super::verdicts::clock_ahead(s.heartbeat.last_seen, now) else {
            return false;
        };
        ahead = Some((a, s.heartbeat.last_seen));
        first = s.heartbeat.extra.get(CLOCK_NOTED) != Some(&Value::Bool(true));
        s.heartbeat.last_seen = Some(now);
        s.heartbeat
            .extra
            .insert(CLOCK_NOTED.into(), Value::Bool(true));
        true
    });
    if let (Outcome::Done(u), Some((a, claimed)), true) = (&out, ahead, first) {
        let ev = Event::new(
            EventType::HeartbeatWarning,
            format!("{id}: last_seen is {a:.0} s in the future; treated as now (check the clock of its host)"),
        )
        .worker(&u.spec)
        .with("kind", "clock_ahead")
        .with("claimed_last_seen", claimed.map(|t| time::format(&t)))
        .with("ahead_seconds", a);
        tracing::warn!("{}", ev.message);
        events::emit(home, ev);
    }
    out
}

/// The event that says the monitor is stopping what is left of a worker before it records
/// its end (S1): `worker_stopping` with the verdict in `data`.
pub fn stopping_event(spec: &WorkerSpec, verdict: &str, why: &str, pgid: Option<i32>) -> Event {
    Event::new(
        EventType::WorkerStopping,
        format!("{}: {why}; stopping its process group", spec.worker_id),
    )
    .worker(spec)
    .with("verdict", verdict)
    .with("reason", why)
    .with("pgid", pgid.map(Value::from).unwrap_or(Value::Null))
}

/// Data of a `zombie_detected` event for a stale heartbeat.
pub fn zombie_data(age: f64, last: Option<Timestamp>, zombie_seconds: f64) -> Value {
    json!({
        "age_seconds": age,
        "last_seen": last.map(|t| time::format(&t)),
        "zombie_seconds": zombie_seconds,
        "detected_by": "heartbeat age",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::SpawnRequest;

    /// `f` again while it finds the worker's lock busy: another test thread of this process
    /// that starts a child holds every open descriptor of the process, our lock files'
    /// included, between its fork and its exec (they are close-on-exec), so a lock just
    /// dropped can look held for a moment. The monitor retries a busy worker the same way.
    fn unbusy<T>(mut f: impl FnMut() -> Outcome<T>) -> Outcome<T> {
        for _ in 0..200 {
            match f() {
                Outcome::Busy => std::thread::sleep(std::time::Duration::from_millis(10)),
                other => return other,
            }
        }
        Outcome::Busy
    }

    fn spawn(home: &Home) -> String {
        let req = SpawnRequest {
            worker_type: "build-worker".into(),
            count: 1,
            ..Default::default()
        };
        lifecycle::spawn(home, &req).unwrap()[0].worker_id.clone()
    }

    #[test]
    fn a_held_lock_is_skipped_not_waited_on() {
        let (_dir, home) = crate::home::test_home();
        let id = spawn(&home);
        let held = store::lock(&home.worker_lock(&id)).unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(fail(&home, &id, "x", None, None), Outcome::Busy));
        assert!(matches!(update(&home, &id, |_| true), Outcome::Busy));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        drop(held);
        let Outcome::Done(s) = unbusy(|| fail(&home, &id, "x", Some(3), None)) else {
            panic!("not failed");
        };
        assert_eq!(s.status, Status::Failed);
        assert!(matches!(
            unbusy(|| fail(&home, &id, "x", None, None)),
            Outcome::Moved
        ));
        assert_eq!(retry_delay_ms(0), RETRY_MIN_MS);
        assert_eq!(retry_delay_ms(2), 400);
        assert_eq!(retry_delay_ms(40), RETRY_MAX_MS);
    }

    #[test]
    fn a_half_done_move_is_finished_with_its_budget_effect() {
        let (_dir, home) = crate::home::test_home();
        crate::budget::initialise(&home, 1000).unwrap();
        let req = SpawnRequest {
            worker_type: "build-worker".into(),
            count: 1,
            tokens: Some(100),
            ..Default::default()
        };
        let id = lifecycle::spawn(&home, &req).unwrap()[0].worker_id.clone();
        // A crash between rewrite and rename: completed, but still in active/.
        let mut s = spec::load(&home, &id).unwrap().spec;
        s.set_status(Status::Completed, "done", time::now());
        spec::save(&home, StateDir::Active, &s).unwrap();
        let Outcome::Done(Some(moved)) = unbusy(|| finish_move(&home, &id, StateDir::Active))
        else {
            panic!("not finished");
        };
        assert_eq!(moved.status, Status::Completed);
        assert_eq!(spec::locate(&home, &id).unwrap().0, StateDir::Completed);
        assert_eq!(crate::budget::read(&home).unwrap().used, 0, "released");
        assert!(matches!(
            unbusy(|| finish_move(&home, &id, StateDir::Active)),
            Outcome::Done(None)
        ));
    }

    #[test]
    fn a_future_last_seen_becomes_now_with_one_event() {
        let (_dir, home) = crate::home::test_home();
        let id = spawn(&home);
        let now = time::now();
        let future = |home: &Home| {
            let mut s = spec::load(home, &id).unwrap().spec;
            s.heartbeat.last_seen = Some(time::add_secs(now, 3600.0));
            spec::save(home, StateDir::Active, &s).unwrap();
        };
        future(&home);
        let Outcome::Done(u) = unbusy(|| clamp_future(&home, &id, now)) else {
            panic!()
        };
        assert!(u.written);
        assert_eq!(u.spec.heartbeat.last_seen, Some(now));
        future(&home);
        assert!(matches!(
            unbusy(|| clamp_future(&home, &id, now)),
            Outcome::Done(_)
        ));
        let text = std::fs::read_to_string(home.events_path()).unwrap();
        assert_eq!(text.matches("clock_ahead").count(), 1, "{text}");
        let Outcome::Done(u) = unbusy(|| clamp_future(&home, &id, now)) else {
            panic!()
        };
        assert!(!u.written, "nothing ahead any more");
    }
}
