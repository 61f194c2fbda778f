//! The event loop, and the single `--once` pass. The loop sleeps in the [`Reactor`] until
//! the earliest deadline of the timer heap, handles what woke it, and runs what is due;
//! everything else lives in the parts it calls.

use super::clock::Mark;
use super::files::Files;
use super::group::ProcTable;
use super::monitor::{now_ms, secs_ms, Monitor, Msg, Timer};
use super::reactor::{Reactor, Ready, DAEMON_SIGNALS};
use super::{actions, resources, status};
use crate::error::{Error, Result};
use crate::events::{Event, EventType};
use crate::home::StateDir;
use crate::time;
use std::sync::mpsc::{channel, Sender};

/// Periodic passes that read every spec (queue maintenance, Prometheus) may each use at
/// most 1/PACING of a core: 0.25 %, so both together stay under 0.5 % at any fleet size.
pub const PACING: i64 = 400;
/// A queue pass asked for because a worker left `active/` (its task should be requeued
/// soon) may come sooner: at most 1 % of a core while workers keep dying.
pub const PACING_SOON: i64 = 100;
/// How long `--once` waits for retries that come due right after its pass (busy locks).
const ONCE_RETRY_MS: i64 = 2_000;
/// Identity polls of workers without a pidfd.
const IDENTITY_POLL_MS: i64 = 1_000;

/// Milliseconds until the next run of a periodic pass that took `took_ms`: the configured
/// interval, stretched so the pass never uses more than 1/[`PACING`] of a core (queue
/// maintenance and Prometheus read every spec: 10,000 workers make them ~100 ms each).
pub fn paced(interval_s: f64, took_ms: i64) -> i64 {
    paced_by(interval_s, took_ms, PACING)
}

/// [`paced`] with another share of a core (1/`factor`).
pub fn paced_by(interval_s: f64, took_ms: i64, factor: i64) -> i64 {
    secs_ms(interval_s).max(took_ms.saturating_mul(factor))
}

/// When the next queue maintenance pass runs after one that took `took_ms`: at its paced
/// interval ([`paced`]), or sooner when a task the pass kept will need a decision by time
/// alone at `next_change_ms` (a lease that runs out), but never sooner than 1/[`PACING_SOON`]
/// of a core allows.
pub fn next_pass_at(now: i64, interval_s: f64, took_ms: i64, next_change_ms: Option<i64>) -> i64 {
    let paced_at = now.saturating_add(paced(interval_s, took_ms));
    match next_change_ms {
        Some(due) => {
            let soonest = now.saturating_add(paced_by(0.2, took_ms, PACING_SOON));
            paced_at.min(due.saturating_add(1).max(soonest))
        }
        None => paced_at,
    }
}

/// Work for the housekeeping thread: queue maintenance and Prometheus read every spec and
/// take task locks, so they never run on the loop's thread (S4).
enum Job {
    Maintain(Box<crate::policy::HeartbeatPolicy>),
    Prometheus,
}

impl Monitor {
    /// Runs until SIGTERM or SIGINT.
    pub fn run_daemon(&mut self) -> Result<()> {
        // Any CLI (or `flock .locks/events.lock sleep 60`) can hold the event lock: the loop
        // never waits for it (S4). Lines wait in memory and are written in order once free.
        crate::events::defer_when_busy(&self.home)?;
        let reactor = Reactor::new(&DAEMON_SIGNALS)?;
        let mut files = Files::watch(&self.home)?;
        reactor.add_files(files.fd())?;
        self.waker = Some(reactor.waker());
        self.reactor = Some(reactor);
        let jobs = self.start_housekeeper()?;
        // Watch first, then scan: nothing written in between is missed.
        self.scan_all(true)?;
        self.start_timers();
        tracing::info!(
            "ready: {} active worker(s), {} pidfd(s), {} polled, {} pending restart(s)",
            self.workers.len(),
            self.tokens.len(),
            self.polled.len(),
            self.restarts.state.pending.len()
        );
        while !self.shutdown {
            let asked = self
                .timers
                .next_at()
                .map_or(60_000, |t| t.saturating_sub(now_ms()));
            let before = Mark::now();
            let ready = match self.reactor.as_mut() {
                Some(r) => r.wait(asked)?,
                None => return Err(Error::Internal("no reactor".into())),
            };
            if let Some(lost) = self.pause.after_wait(asked, before, Mark::now()) {
                self.rearm(lost);
            }
            for r in ready {
                self.on_ready(r, &files);
            }
            self.drain_messages();
            self.run_timers(&mut files, &jobs);
        }
        if !self.stopping.is_empty() || !self.group_stops.is_empty() {
            tracing::info!(
                "leaving {} stop(s) to finish in the background",
                self.stopping.len() + self.group_stops.len()
            );
        }
        self.stop_deferring_events();
        tracing::info!("heartbeat-monitor stopped");
        Ok(())
    }

    /// Before exit: the event lines still waiting for the event lock get the bounded wait
    /// any CLI has (`CORRAL_LOCK_TIMEOUT`); what is still not written then is reported.
    fn stop_deferring_events(&mut self) {
        let timeout = crate::store::lock_timeout()
            .unwrap_or_else(|_| time::duration(crate::store::DEFAULT_LOCK_TIMEOUT_SECS));
        let left = crate::events::stop_deferring(&self.home, timeout);
        if left > 0 {
            tracing::error!(
                "{left} event line(s) were not written: {} stayed held by another process for {:.1} s more",
                self.home.events_lock().display(),
                timeout.as_secs_f64()
            );
        }
    }

    fn on_ready(&mut self, r: Ready, files: &Files) {
        match r {
            Ready::Signal(libc::SIGCHLD) => self.reap(),
            Ready::Signal(libc::SIGHUP) => {
                tracing::info!("SIGHUP: reloading the policy");
                self.reload_config();
            }
            Ready::Signal(sig) => {
                tracing::info!("signal {sig}: shutting down");
                self.shutdown = true;
            }
            Ready::Wake => {}
            Ready::Files => {
                let at = files.batch_at(now_ms());
                self.timers.set_earlier(Timer::FsBatch, at);
            }
            Ready::Exited(tok) => self.pidfd_fired(tok),
        }
    }

    fn start_timers(&mut self) {
        let now = now_ms();
        for t in [
            Timer::Housekeeping,
            Timer::Prometheus,
            Timer::Status,
            Timer::IdentityPoll,
            Timer::SampleRound,
        ] {
            self.timers.set(t, now);
        }
        if let Some(p) = self.settings.poll_interval {
            self.timers
                .set(Timer::DirPoll, now.saturating_add(secs_ms(p)));
        }
        self.next_summary_ms = now.saturating_add(secs_ms(self.policy.summary_interval_seconds));
        self.schedule_restarts();
    }

    fn run_timers(&mut self, files: &mut Files, jobs: &Sender<Job>) {
        let now = now_ms();
        for t in self.timers.pop_due(now) {
            match t {
                Timer::Judge(id) => self.evaluate(&id),
                Timer::Settle(id) => self.settle_timer(&id),
                Timer::Recheck(dir, name) => self.recheck(dir, &name),
                Timer::BadFile(path) => self.recheck_bad(&path),
                Timer::Restarts => self.run_restarts(),
                Timer::SampleRound => {
                    self.sample_round();
                    let every = secs_ms(self.settings.sample_interval);
                    self.timers
                        .set(Timer::SampleRound, now_ms().saturating_add(every));
                }
                Timer::IdentityPoll => {
                    self.poll_identities();
                    let every = self
                        .settings
                        .poll_interval
                        .map_or(IDENTITY_POLL_MS, |p| secs_ms(p).min(IDENTITY_POLL_MS));
                    self.timers
                        .set(Timer::IdentityPoll, now_ms().saturating_add(every));
                }
                Timer::DirPoll => {
                    if let Err(e) = self.scan_all(false) {
                        tracing::error!("poll rescan failed: {e}");
                    }
                    if let Some(p) = self.settings.poll_interval {
                        self.timers
                            .set(Timer::DirPoll, now_ms().saturating_add(secs_ms(p)));
                    }
                }
                Timer::Housekeeping => {
                    let _ = jobs.send(Job::Maintain(Box::new(self.policy.clone())));
                }
                Timer::Prometheus if self.policy.prometheus_interval_seconds > 0.0 => {
                    let _ = jobs.send(Job::Prometheus);
                }
                Timer::Prometheus => {}
                Timer::Status => {
                    self.write_status();
                    self.timers.set(
                        Timer::Status,
                        now_ms().saturating_add(status::WRITE_EVERY_MS),
                    );
                }
                Timer::FsBatch => self.file_batch(files),
            }
        }
    }

    /// Takes the gathered file events and lets inotify report again.
    /// While events keep coming, the next batch is simply read one window later (one wakeup
    /// per batch); after a quiet window the descriptor is re-armed to wake the loop again.
    fn file_batch(&mut self, files: &mut Files) {
        if let Err(e) = files.read() {
            tracing::warn!("inotify: {e}; rescanning");
            let _ = self.scan_all(false);
        }
        let now = now_ms();
        let batch = files.take(now);
        if batch.is_empty() {
            if let Some(r) = self.reactor.as_ref() {
                if let Err(e) = r.arm_files(files.fd()) {
                    tracing::error!("cannot re-arm inotify: {e}");
                }
            }
        } else {
            self.timers.set(Timer::FsBatch, files.batch_at(now));
        }
        if batch.config {
            self.reload_config();
        }
        if batch.rescan {
            tracing::warn!("inotify lost events; rescanning");
            if let Err(e) = self.scan_all(false) {
                tracing::error!("rescan failed: {e}");
            }
        }
        for (d, name) in batch.dirty {
            self.refresh(d, &name, false);
        }
    }

    /// Looks at a file again although its version did not change (a busy retry).
    fn recheck(&mut self, dir: StateDir, name: &str) {
        if let Some(w) = name
            .strip_suffix(".json")
            .and_then(|id| self.workers.get_mut(id))
        {
            w.key = Default::default();
        }
        self.refresh(dir, name, false);
    }

    fn drain_messages(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::StopDone { id, result } => {
                    self.stopping.remove(&id);
                    self.maintain_soon();
                    tracing::info!("graceful stop of {id}: {result}");
                    self.refresh_id(&id);
                    if self.workers.get(&id).is_some_and(|w| w.exited) {
                        self.settle_exit(&id);
                    }
                }
                Msg::GroupStopped {
                    id,
                    purpose,
                    outcome,
                } => self.group_stopped(&id, purpose, outcome),
                Msg::Housekeeping {
                    prometheus,
                    took_ms,
                    summary,
                    error,
                    next_change_ms,
                } => self.housekeeping_done(prometheus, took_ms, summary, error, next_change_ms),
                Msg::Launched(workers) => self.launched(workers),
                Msg::ContainerExit { id, how, answer } => {
                    self.container_answered(&id, &how, answer)
                }
            }
        }
    }

    fn start_housekeeper(&mut self) -> Result<Sender<Job>> {
        let (jobs, rx) = channel::<Job>();
        let home = self.home.clone();
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || {
                let mut upkeep = super::upkeep::Upkeep::default();
                let mut policy = None;
                while let Some(job) =
                    upkeep.next_job(&rx, &home, policy.as_ref(), &tx, waker.as_ref())
                {
                    let t = std::time::Instant::now();
                    let (prometheus, summary, error, next_change_ms) = match job {
                        Job::Maintain(p) => {
                            let res = crate::queue::maintain(&home, &p, time::now());
                            policy = Some(*p);
                            match res {
                                Ok(m) => (
                                    false,
                                    Some(m.summary),
                                    None,
                                    m.next_change.map(|t| t.timestamp_millis()),
                                ),
                                Err(e) => (false, None, Some(e.to_string()), None),
                            }
                        }
                        Job::Prometheus => {
                            let path = home.prom_path();
                            let err = crate::view::write_prometheus(&home, &path).err();
                            let err = err.map(|e| format!("{}: {e}", path.display()));
                            (true, None, err, None)
                        }
                    };
                    let msg = Msg::Housekeeping {
                        prometheus,
                        took_ms: t.elapsed().as_millis() as i64,
                        summary,
                        error,
                        next_change_ms,
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    if let Some(w) = &waker {
                        w.wake();
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the housekeeping thread: {e}")))?;
        Ok(jobs)
    }

    fn housekeeping_done(
        &mut self,
        prometheus: bool,
        took_ms: i64,
        summary: Option<String>,
        error: Option<String>,
        next_change_ms: Option<i64>,
    ) {
        let now = now_ms();
        if prometheus {
            if let Some(e) = error {
                tracing::warn!("cannot write Prometheus metrics: {e}");
            }
            let at = now.saturating_add(paced(self.policy.prometheus_interval_seconds, took_ms));
            self.timers.set(Timer::Prometheus, at);
            return;
        }
        self.maintain_cost_ms = took_ms;
        match error {
            Some(e) => {
                if self.last_maintain_error.as_deref() != Some(e.as_str()) {
                    tracing::error!("queue maintenance failed: {e}");
                }
                self.last_maintain_error = Some(e);
            }
            None => self.last_maintain_error = None,
        }
        let summarise = self.policy.summary_interval_seconds > 0.0 && now >= self.next_summary_ms;
        if let (true, Some(s)) = (summarise, summary.filter(|s| !s.is_empty())) {
            self.next_summary_ms =
                now.saturating_add(secs_ms(self.policy.summary_interval_seconds));
            tracing::info!("{s}");
        }
        let at = next_pass_at(
            now,
            self.settings.maintain_interval,
            took_ms,
            next_change_ms,
        );
        if self
            .timers
            .when(&Timer::Housekeeping)
            .is_none_or(|t| t > at)
        {
            self.timers.set(Timer::Housekeeping, at);
        }
    }

    /// Re-reads the policy and worker types (SIGHUP, or an edit of `config/`).
    pub fn reload_config(&mut self) {
        match super::effective_policy(&self.home, &self.overrides) {
            Ok(p) if p != self.policy => {
                tracing::info!("policy changed: re-judging every worker");
                self.settings = super::Settings::of(&p, self.network_fs.is_some());
                self.pause = super::clock::PauseDetector::new(p.warning_seconds);
                self.policy = p;
                let ids: Vec<String> = self.workers.keys().cloned().collect();
                for id in ids {
                    self.evaluate(&id);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("keeping the previous policy: {e}"),
        }
        match crate::policy::WorkerTypes::load(&self.home) {
            Ok(t) => self.types = t,
            Err(e) => tracing::warn!("keeping the previous worker types: {e}"),
        }
    }

    /// Writes `metrics/monitor.json`.
    pub fn write_status(&mut self) {
        self.sweep_held();
        self.status.last_pass_at = time::now();
        self.status.workers_watched = self.workers.len();
        self.status.poll_interval_seconds = self.settings.poll_interval;
        self.status.held_locks = self.held_report();
        self.status.events_backlog = self.events_backlog();
        if let Err(e) = status::write(&self.home, &self.status) {
            tracing::warn!("cannot write {}: {e}", status::path(&self.home).display());
        }
    }

    /// Event lines waiting for the event lock, warned about (at most once a minute) once
    /// they have waited as long as a CLI would.
    fn events_backlog(&mut self) -> Option<status::EventsBacklog> {
        let b = crate::events::backlog(&self.home)?;
        let lock = self.home.events_lock().display().to_string();
        let now = now_ms();
        if b.waiting_seconds * 1000.0 >= self.held_warn_ms as f64
            && self
                .backlog_warned_ms
                .is_none_or(|w| now.saturating_sub(w) >= super::monitor::HELD_REPEAT_MS)
        {
            self.backlog_warned_ms = Some(now);
            tracing::warn!(
                "{} event line(s) have waited {:.0} s for {lock}, held by another process: kept in memory and written in order once it is free",
                b.lines,
                b.waiting_seconds
            );
        }
        Some(status::EventsBacklog {
            lines: b.lines,
            bytes: b.bytes,
            waiting_seconds: super::resources::round1(b.waiting_seconds),
            dropped: b.dropped,
            lock,
        })
    }

    /// Samples CPU and RSS of every local worker's process group (one `/proc` scan for all),
    /// raises threshold violations, checks for orphans, and writes figures that moved.
    pub fn sample_round(&mut self) {
        let table = ProcTable::scan();
        let Some(at) = resources::uptime() else {
            return;
        };
        let tps = crate::process::ticks_per_second() as f64;
        let ids: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.exited && w.process.as_ref().is_some_and(|p| p.is_local()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.sample(&id, &table, at, tps);
        }
    }

    fn sample(&mut self, id: &str, table: &ProcTable, at: f64, tps: f64) {
        let (policy_cpu, policy_mem) = (
            self.policy.cpu_threshold_percent,
            self.policy.memory_threshold_percent,
        );
        let mem_total = self.mem_total_mb;
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let Some(p) = w.process.clone() else {
            return;
        };
        // A container's figures are its cgroup's, its memory against its own limit.
        let (cur, limit_mb) = match self.container_reading(id, &p, table, at) {
            Some((reading, limit)) => (reading, limit),
            None => (resources::read(table, p.pid, p.pgid, at), None),
        };
        let mem_total = limit_mb.or(mem_total);
        let Some(cur) = cur else {
            return;
        };
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let cpu = resources::cpu_percent(w.reading.as_ref(), &cur, tps).map(resources::round1);
        let rss = resources::round1(cur.rss_mb);
        w.reading = Some(cur);
        let mut violations = Vec::new();
        if let Some(c) = cpu {
            let (over, report) = resources::crossing(w.over_cpu, c, policy_cpu);
            w.over_cpu = over;
            if report {
                violations.push(("cpu_percent", c, policy_cpu));
            }
        }
        if let Some(m) = resources::mem_percent(rss, mem_total) {
            let (over, report) = resources::crossing(w.over_mem, m, policy_mem);
            w.over_mem = over;
            if report {
                violations.push(("memory_percent", resources::round1(m), policy_mem));
            }
        }
        if resources::moved(w.view.cpu_percent, cpu, w.view.rss_mb, rss) {
            let policy = self.policy.clone();
            let now = time::now();
            let out = actions::update(&self.home, id, |s| {
                s.resources.cpu_percent = cpu.or(s.resources.cpu_percent);
                s.resources.rss_mb = Some(rss);
                let v = super::verdicts::View::of(s);
                let score = super::verdicts::health_score(&v, &policy, now);
                s.heartbeat.health_score = score;
                s.heartbeat.health =
                    Some(super::verdicts::health_label(score, v.alert).to_string());
                true
            });
            // A busy lock skips this round's write; the next round tries again.
            if !matches!(out, actions::Outcome::Busy) {
                self.after_update(id, out);
            }
        }
        for (metric, value, threshold) in violations {
            let Ok(l) = crate::spec::load(&self.home, id) else {
                continue;
            };
            let ev = Event::new(
                EventType::ThresholdViolation,
                format!(
                    "{id}: {metric} {value} over the threshold {threshold} ({})",
                    if p.is_container() {
                        "whole container, memory against its limit"
                    } else {
                        "whole process group"
                    }
                ),
            )
            .worker(&l.spec)
            .with("metric", metric)
            .with("value", value)
            .with("threshold", threshold)
            .with("pid", p.pid)
            .with("rss_mb", rss)
            .with("cpu_percent", cpu);
            tracing::warn!("{}", ev.message);
            super::sys::emit_alerting(&self.home, &self.policy, ev, true);
        }
        if self.policy.check_orphans {
            if let Some(parent) = resources::orphaned(&p) {
                self.stop(id, format!("orphaned: parent process {parent} is gone"));
                return;
            }
        }
        self.evaluate(id);
    }

    /// One pass over the home (cron), reaching the daemon's verdicts (S6): judge every
    /// worker at `now`, settle dead ones (stopping leftover groups first), finish stops and
    /// moves a crash left half-done, fire due restarts, run queue maintenance, write
    /// Prometheus and the status file, and exit.
    pub fn run_once(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        // One bounded wait for the event lock at the end of the pass, not one per event.
        crate::events::defer_when_busy(&self.home)?;
        let res = self.once_pass();
        self.stop_deferring_events();
        tracing::info!(
            "one pass over {} active worker(s) in {:.0} ms",
            self.workers.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        res
    }

    fn once_pass(&mut self) -> Result<()> {
        self.scan_all(true)?;
        if !self.bad.is_empty() {
            // Give a writer that is half-way through a file one chance to finish it.
            std::thread::sleep(std::time::Duration::from_millis(
                super::tracking::BAD_FILE_SETTLE_MS as u64,
            ));
            let paths: Vec<_> = self.bad.keys().cloned().collect();
            for p in paths {
                self.recheck_bad(&p);
            }
        }
        self.sample_round();
        self.run_restarts();
        // Retries that come due right away (a busy lock, a restart after its leftovers).
        let until = now_ms().saturating_add(ONCE_RETRY_MS);
        while let Some(next) = self.timers.next_at().filter(|t| *t <= until) {
            let wait = next.saturating_sub(now_ms());
            if wait > 0 {
                std::thread::sleep(std::time::Duration::from_millis(wait as u64));
            }
            for t in self.timers.pop_due(now_ms()) {
                match t {
                    Timer::Judge(id) => self.evaluate(&id),
                    Timer::Settle(id) => self.settle_timer(&id),
                    Timer::Recheck(d, name) => self.recheck(d, &name),
                    Timer::Restarts => self.run_restarts(),
                    _ => {}
                }
            }
        }
        match crate::queue::maintain(&self.home, &self.policy, time::now()) {
            Ok(m) if !m.summary.is_empty() => tracing::info!("{}", m.summary),
            Ok(_) => {}
            Err(e) => tracing::error!("queue maintenance failed: {e}"),
        }
        super::upkeep::Upkeep::default().run(&self.home, &self.policy, now_ms(), true);
        if self.policy.prometheus_interval_seconds > 0.0 {
            if let Err(e) = crate::view::write_prometheus(&self.home, &self.home.prom_path()) {
                tracing::warn!("cannot write {}: {e}", self.home.prom_path().display());
            }
        }
        Ok(())
    }
}

impl Monitor {
    /// Workers a pool launched from the housekeeping thread: children of this process, so
    /// their exits are reaped and recorded here; they are watched at once.
    fn launched(&mut self, workers: Vec<(i32, String)>) {
        self.reap();
        for (pid, id) in workers {
            match self.unclaimed.remove(&pid) {
                // It died before this message came: its exit was reaped already.
                Some((_, code, signal)) => {
                    self.exits.insert(id.clone(), (code, signal));
                }
                // Still its child (running, or exited and not reaped yet): reaped by pid.
                // A child already reaped and claimed by its exit (`take_exit`) is not.
                None if still_child(pid) => {
                    self.children.insert(pid, id.clone());
                }
                None => {}
            }
            self.refresh(StateDir::Active, &format!("{id}.json"), false);
        }
    }
}

/// True while `pid` is a child of this process not yet reaped (`waitid` without reaping).
fn still_child(pid: i32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_running_out_brings_the_next_pass_forward_within_its_budget() {
        let now = 1_000_000;
        // 50 ms passes: paced to 20 s; a lease that lapses in 8 s is acted on then.
        assert_eq!(next_pass_at(now, 1.0, 50, None), now + 20_000);
        assert_eq!(next_pass_at(now, 1.0, 50, Some(now + 8_000)), now + 8_001);
        // Never sooner than 1 % of a core: 5 s after a 50 ms pass.
        assert_eq!(next_pass_at(now, 1.0, 50, Some(now + 10)), now + 5_000);
        // A lease further off than the paced pass changes nothing.
        assert_eq!(next_pass_at(now, 1.0, 50, Some(now + 60_000)), now + 20_000);
        // A cheap pass on a quiet home: the configured interval, or the lease if sooner.
        assert_eq!(next_pass_at(now, 1.0, 1, Some(now + 300)), now + 301);
    }

    #[test]
    fn periodic_passes_are_paced_by_their_cost() {
        assert_eq!(paced(1.0, 0), 1000);
        assert_eq!(paced_by(0.2, 100, PACING_SOON), 10_000);
        assert_eq!(
            paced(1.0, 50),
            20_000,
            "50 ms of work: at most 0.25 % of a core"
        );
        assert_eq!(paced(1e300, 0), i64::MAX, "saturates");
    }
}
