//! Container workers in the monitor. A container worker is watched like a direct one, by a
//! pidfd on its recorded process, the container's init (its host pid): when the init exits
//! the kernel has already ended every process of the container's pid namespace, so nothing
//! of the worker runs on (S1). What differs:
//!
//! - **the end is the engine's to tell**: on the init's exit (or a free liveness lock before
//!   the init was recorded) the engine is asked, in a helper thread (inline in `--once`),
//!   for the container's state. An exited (or missing) container settles the worker with
//!   the engine's exit code and, when the kernel's OOM killer ended it, says so; a
//!   container that still runs (a Docker client that was killed while it started) is
//!   watched on, asking again every identity poll;
//! - **the liveness lock** is held by the `ENGINE run` client and Podman's conmon until the
//!   exit is recorded: a SIGKILL of the client leaves it held by conmon, so it never makes
//!   a running container "gone"; and it is not what decides a container worker's end once
//!   the engine said the container exited (the client may take a moment to follow). With
//!   the docker engine the client is the lock's only holder (the container runs under the
//!   engine's daemon, which inherits nothing from it), so the lock means "the client lives"
//!   and a SIGKILL of the client frees it while the container runs: a free lock is
//!   therefore never a container worker's end by itself. It goes through
//!   [`Monitor::container_exit`] like the init's exit, and the engine's answer decides
//!   (S1); a container still live is watched on, the engine asked again each poll;
//! - **resources** are read from the container's cgroup (every process in it, against its
//!   `memory_limit`), and a kill by the OOM killer there is reported when it happens.

use super::group::ProcTable;
use super::monitor::{ExitNote, Monitor, Msg};
use super::resources::Reading;
use crate::container::{cgroup, control, ContainerState, Found, Target};
use crate::events::{Event, EventType};
use crate::home::Home;
use crate::process::ProcessInfo;
use crate::spec::WorkerSpec;
use std::time::Duration;

/// How long the engine gets to record a container's exit after its init is gone.
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(10);

/// What the monitor keeps about a container worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerTrack {
    pub target: Target,
    /// The engine has said the container exited: its processes are all gone.
    pub exited: bool,
    /// OOM kills the cgroup had counted at the last sample.
    pub oom_kills: u64,
    /// The engine is being asked (a helper thread is out).
    pub asking: bool,
}

impl ContainerTrack {
    /// The tracker of a worker's container, when it runs in one.
    pub fn of(spec: &WorkerSpec) -> Option<ContainerTrack> {
        Some(ContainerTrack {
            target: Target::of_spec(spec)?,
            exited: false,
            oom_kills: 0,
            asking: false,
        })
    }
}

/// What the engine said about a container whose init is gone.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Exited (its final state) or gone (`None`: removed, or never created).
    Ended(Option<ContainerState>),
    /// Still live.
    Live,
    /// The engine could not be asked.
    Failed(String),
}

/// Asks the engine how worker `id`'s container is (blocking: up to [`EXIT_RECORD_WAIT`]
/// for a container whose init just exited to be recorded as exited). A live container
/// whose init still runs is live at once: the question came from a free liveness lock (a
/// docker client that is gone), not from the init's exit, and there is no exit to wait for.
pub fn ask(home: &Home, id: &str, t: &Target) -> Answer {
    let engine = t.engine();
    let init_runs = |pid: i32| {
        pid > 1 && crate::process::read_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
    };
    match control::find(&engine, home.root(), id, t) {
        Ok(Found::Missing) | Ok(Found::NotOurs(_)) => Answer::Ended(None),
        Ok(Found::Ours(st)) if !st.is_live() => Answer::Ended(Some(st)),
        Ok(Found::Ours(st)) if st.running && init_runs(st.pid) => Answer::Live,
        Ok(Found::Ours(st)) => match engine.wait_exit(&st.id, EXIT_RECORD_WAIT) {
            Ok(Some(done)) => Answer::Ended(Some(done)),
            Ok(None) => match engine.inspect(&st.id) {
                Ok(Some(s)) if s.is_live() => Answer::Live,
                Ok(s) => Answer::Ended(s),
                Err(e) => Answer::Failed(e.to_string()),
            },
            Err(e) => Answer::Failed(e.to_string()),
        },
        Err(e) => Answer::Failed(e.to_string()),
    }
}

impl Monitor {
    /// A container worker's watched process is gone: asks the engine (in a helper thread in
    /// the daemon) and returns true; false for a direct worker.
    pub fn container_exit(&mut self, id: &str, how: &str) -> bool {
        let Some(w) = self.workers.get_mut(id) else {
            return false;
        };
        let Some(c) = w.container.as_mut() else {
            return false;
        };
        if c.asking {
            return true;
        }
        c.asking = true;
        let target = c.target.clone();
        // Its exit status as a reaped child would be the client's, not the worker's.
        self.exits.remove(id);
        if !self.daemon {
            let answer = ask(&self.home, id, &target);
            self.container_answered(id, how, answer);
            return true;
        }
        let home = self.home.clone();
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        let (owned, how) = (id.to_string(), how.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || {
                let answer = ask(&home, &owned, &target);
                let msg = Msg::ContainerExit {
                    id: owned,
                    how,
                    answer,
                };
                if tx.send(msg).is_ok() {
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            });
        if let Err(e) = spawned {
            let answer = Answer::Failed(format!("cannot start a thread: {e}"));
            self.container_answered(id, "its process exited", answer);
        }
        true
    }

    /// The engine answered about a container whose watched process is gone.
    pub fn container_answered(&mut self, id: &str, how: &str, answer: Answer) {
        let home = self.home.clone();
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let Some(c) = w.container.as_mut() else {
            return;
        };
        c.asking = false;
        let note = match answer {
            Answer::Ended(st) => {
                c.exited = true;
                match st {
                    Some(st) if st.never_started() => ExitNote {
                        reason: format!(
                            "{how}; its container {} was created but never started",
                            c.target.name
                        ),
                        code: None,
                        signal: None,
                    },
                    Some(st) => {
                        let oom = c.oom_kills > 0 || crate::stop::container::oom_marked(&home, id);
                        let (code, reason) = control::exit_reason(&st, oom);
                        ExitNote {
                            reason,
                            code: Some(code),
                            signal: None,
                        }
                    }
                    None => ExitNote {
                        reason: format!(
                            "{how}; its container {} no longer exists (exit code unknown)",
                            c.target.name
                        ),
                        code: None,
                        signal: None,
                    },
                }
            }
            Answer::Live | Answer::Failed(_) => {
                if let Answer::Failed(e) = &answer {
                    tracing::warn!(
                        "{id}: cannot ask the engine about container {}: {e}; asking again",
                        c.target.name
                    );
                } else {
                    tracing::info!(
                        "{id}: {how}, but its container {} still runs; watching it through the engine",
                        c.target.name
                    );
                }
                w.exited = false;
                w.exit = None;
                self.polled.insert(id.to_string());
                self.evaluate(id);
                return;
            }
        };
        w.exit = Some(note);
        self.settle_exit(id);
    }

    /// True when the engine said the worker's container exited: nothing of it runs, whoever
    /// still holds its liveness lock (the client recording the exit).
    pub fn container_ended(&self, id: &str) -> bool {
        self.workers
            .get(id)
            .and_then(|w| w.container.as_ref())
            .is_some_and(|c| c.exited)
    }

    /// A reading of a container worker from its cgroup: CPU of every process in the
    /// container, its memory against its limit. Also reports an OOM kill inside it (the
    /// worker's child killed at the limit while the worker lives on). `None` for a direct
    /// worker, whose reading is its process group's.
    pub fn container_reading(
        &mut self,
        id: &str,
        p: &ProcessInfo,
        table: &ProcTable,
        at: f64,
    ) -> Option<(Option<Reading>, Option<f64>)> {
        p.container.as_ref()?;
        let tps = crate::process::ticks_per_second().max(1) as f64;
        let Some(u) = cgroup::sample(p.pid) else {
            return Some((None, None));
        };
        let started = table
            .procs
            .iter()
            .find(|q| q.pid == p.pid)
            .map_or(at, |q| q.stat.start_time_ticks as f64 / tps);
        let start = p.start_time_ticks.unwrap_or(0);
        let reading = Reading {
            at,
            ticks: [((p.pid, start), (u.cpu_seconds * tps) as u64)]
                .into_iter()
                .collect(),
            rss_mb: u.memory_mb(),
            started,
        };
        let limit_mb = u.memory_limit_bytes.map(|b| b as f64 / (1024.0 * 1024.0));
        let kills = u.oom_kills.unwrap_or(0);
        let before = self
            .workers
            .get_mut(id)
            .and_then(|w| w.container.as_mut())
            .map(|c| {
                let before = c.oom_kills;
                c.oom_kills = kills.max(before);
                before
            })
            .unwrap_or(0);
        if kills > before {
            self.report_oom(id, p, kills, limit_mb);
        }
        Some((Some(reading), limit_mb))
    }

    fn report_oom(&mut self, id: &str, p: &ProcessInfo, kills: u64, limit_mb: Option<f64>) {
        let Ok(l) = crate::spec::load(&self.home, id) else {
            return;
        };
        let ev = Event::new(
            EventType::ThresholdViolation,
            format!(
                "{id}: the kernel's OOM killer ended a process in its container ({kills} so far): its memory_limit was hit"
            ),
        )
        .worker(&l.spec)
        .with("metric", "oom_kills")
        .with("value", kills)
        .with("memory_limit_mb", limit_mb)
        .with("pid", p.pid)
        .with(
            "container",
            p.container.as_ref().map(|c| c.name.clone()),
        );
        tracing::warn!("{}", ev.message);
        super::sys::emit_alerting(&self.home, &self.policy, ev, true);
        let out = super::actions::update(&self.home, id, |s| {
            s.resources
                .extra
                .insert("oom_kills".into(), serde_json::Value::from(kills));
            true
        });
        if !matches!(out, super::actions::Outcome::Busy) {
            self.after_update(id, out);
        }
    }
}
