//! Running one task's command: spawned in its own group with the task on stdin, watched
//! with one `poll` (exit, output, the task file, a stop, the timeout, the next beat) until
//! it ends or must be stopped.

use super::{marker, Liveness, Outcome, StopReason, Work};
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::home::TaskState;
use crate::queue::task::{Task, MAX_RESULT_BYTES};
use crate::queue::watch::Watcher;
use crate::queue::{layout, moves, task_event, transitions};
use crate::store::ReadError;
use crate::time;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

impl<L: Liveness> Work<'_, L> {
    pub(super) fn run_task(&mut self, task: &Task) -> Result<Outcome> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::process::Stdio;
        // A task run before (its claim lapsed, it was requeued) may still have processes
        // of that run on this host: they go before it runs again.
        if task.attempts > 1 {
            if let Some((reason, why)) = self.fence(task) {
                marker(&format!(
                    "--- corral task {} start {}",
                    task.task_id,
                    time::format(&time::now())
                ));
                if reason == StopReason::Lost {
                    self.lost_task(task, &why);
                }
                return Ok(Outcome {
                    code: None,
                    signal: None,
                    stdout: Vec::new(),
                    stdout_bytes: 0,
                    truncated: false,
                    stopped: Some(reason),
                    took: 0.0,
                });
            }
        }
        let argv = &self.opts.command;
        let mut cmd = crate::process::command(&argv[0]);
        cmd.args(&argv[1..])
            .env("CORRAL_TASK_ID", &task.task_id)
            .env("CORRAL_TASK_CLASS", &task.class)
            .env("CORRAL_WORKER_ID", &self.opts.worker)
            .env("CORRAL_HOME", self.home.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // The command dies with the loop (SIGKILL), so a loop that is killed cannot leave
        // it running while its task is requeued and run again elsewhere.
        let loop_pid = nix::unistd::getpid().as_raw();
        // SAFETY: die_with_loop only makes async-signal-safe calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || die_with_loop(loop_pid));
        }
        marker(&format!(
            "--- corral task {} start {}",
            task.task_id,
            time::format(&time::now())
        ));
        let input =
            serde_json::to_vec(&task.to_value()?).map_err(|e| Error::Internal(e.to_string()))?;
        let t0 = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Not runnable (it was when the loop started): the task is not at fault and
                // goes back for another worker; this loop ends, since every task would fail
                // the same way, each attempt in a millisecond.
                tracing::error!("cannot run {}: {e}", argv[0]);
                let why = format!("cannot run {}: {e}", argv[0]);
                self.unrunnable = Some(match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        Error::Invalid(format!("{why} (task {} requeued)", task.task_id))
                    }
                    _ => Error::io(format!("{why} (task {} requeued)", task.task_id), e),
                });
                return Ok(Outcome {
                    code: Some(127),
                    signal: None,
                    stdout_bytes: why.len() as u64,
                    stdout: why.into_bytes(),
                    truncated: false,
                    stopped: Some(StopReason::Unrunnable),
                    took: 0.0,
                });
            }
        };
        self.sum.spawn_seconds += t0.elapsed().as_secs_f64();
        let pid = child.id() as i32;
        // Until the command is waited for, leaving this function kills its group (an error
        // return here must not leave it running unwatched).
        let mut guard = GroupGuard(pid);
        let pidfd = crate::process::PidFd::open(pid)?;
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        for fd in [
            stdin.as_ref().map(|s| s.as_fd()),
            stdout.as_ref().map(|s| s.as_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd)?;
        }
        // The task file is watched for a cancellation (it is rewritten when one is asked).
        let processing = layout::state_path(self.home, TaskState::Processing, &task.task_id);
        // One watcher for the loop's life (taken out while the task runs).
        let mut tw = match self.task_watch.take() {
            Some(w) => w,
            None => Watcher::new()?,
        };
        let mut evs = Vec::new();
        tw.drain(&mut evs)?;
        let mut task_wd = tw.watch_file(&processing)?;
        let timeout = task
            .timeout_seconds
            .or(self.opts.task_timeout)
            .map(|s| t0 + time::duration(s));
        let poll_every = self.opts.poll_interval.map(time::duration);
        let mut written = 0usize;
        let mut out = Vec::new();
        let mut out_bytes = 0u64;
        let mut truncated = false;
        let mut stopped: Option<StopReason> = None;
        let mut kill_at: Option<Instant> = None;
        let mut next_beat = Instant::now() + self.interval;
        let mut next_poll = poll_every.map(|p| Instant::now() + p);
        let mut exited = pidfd.is_none();
        let (_, wake_fd) = self
            .claimer
            .watcher()
            .map(Watcher::fds)
            .ok_or_else(|| Error::Internal("the work loop's claimer has no watch".into()))?;
        let wake_fd = wake_fd
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", e))?;
        let mut buf = vec![0u8; 64 * 1024];
        // Why the task stopped being ours, when it just did.
        let mut lost: Option<String> = None;
        loop {
            if self.stopper.stopped() && stopped.is_none() {
                stopped = Some(StopReason::Shutdown);
                tracing::info!("stopping the command of {} (shutdown)", task.task_id);
                signal_group(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
            }
            if exited && stdout.is_none() {
                break;
            }
            let now = Instant::now();
            let mut until = next_beat;
            for d in [timeout.filter(|_| stopped.is_none()), kill_at, next_poll]
                .into_iter()
                .flatten()
            {
                until = until.min(d);
            }
            if exited {
                // Only stdout left to drain: do not wait on a grandchild that holds it.
                until = now;
            }
            let ms = until.saturating_duration_since(now).as_millis().min(60_000) as i32;
            let mut fds: Vec<PollFd> = Vec::with_capacity(6);
            let mut idx = [usize::MAX; 5];
            if let Some(s) = &stdout {
                idx[0] = fds.len();
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &stdin {
                idx[1] = fds.len();
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if let (Some(p), false) = (&pidfd, exited) {
                idx[2] = fds.len();
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            idx[3] = fds.len();
            fds.push(PollFd::new(tw.fds().0, PollFlags::POLLIN));
            idx[4] = fds.len();
            fds.push(PollFd::new(wake_fd.as_fd(), PollFlags::POLLIN));
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::io("poll(work)", e.into())),
            }
            let ready =
                |i: usize| i != usize::MAX && fds[i].revents().is_some_and(|r| !r.is_empty());
            let (r_out, r_in, r_exit, r_task, r_wake) = (
                ready(idx[0]),
                ready(idx[1]),
                ready(idx[2]),
                ready(idx[3]),
                ready(idx[4]),
            );
            drop(fds);
            if r_wake {
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(&wake_fd, &mut b);
                // Stop requests are seen through the flag at the top of the loop; the
                // claimer's own waits re-check the flag, so nothing is lost by draining.
            }
            if r_out {
                if let Some(s) = stdout.as_mut() {
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                stdout = None;
                                break;
                            }
                            Ok(n) => {
                                // Past the cap stdout is still read (the command never
                                // blocks on a full pipe) and counted, not kept.
                                out_bytes += n as u64;
                                let room = (MAX_RESULT_BYTES * 4).saturating_sub(out.len());
                                if n > room {
                                    truncated = true;
                                }
                                out.extend_from_slice(&buf[..n.min(room)]);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(_) => {
                                stdout = None;
                                break;
                            }
                        }
                    }
                }
            } else if exited {
                // Nothing more right now and the command is gone.
                stdout = None;
            }
            if r_in {
                if let Some(s) = stdin.as_mut() {
                    match s.write(&input[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // A command that does not read its stdin is fine (EPIPE).
                        Err(_) => written = input.len(),
                    }
                }
            }
            if written >= input.len() {
                stdin = None;
            }
            if r_exit {
                exited = true;
            }
            // The task file is also read at each beat: a watch lost to a move (or a claimant
            // with no lease to renew) cannot hide that the task is no longer ours.
            if r_task
                || next_poll.is_some_and(|p| Instant::now() >= p)
                || Instant::now() >= next_beat
            {
                evs.clear();
                let _ = tw.drain(&mut evs);
                if let Some(p) = poll_every {
                    next_poll = Some(Instant::now() + p);
                }
                match transitions::read_checked(self.home, &processing, &task.task_id) {
                    Ok(t) => {
                        if t.cancel_requested_at.is_some() && stopped.is_none() {
                            tracing::info!("task {} cancelled: stopping its command", task.task_id);
                            stopped = Some(StopReason::Cancel);
                            signal_group(pid, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
                        }
                        if t.claimed_by.as_deref() != Some(self.opts.worker.as_str()) {
                            lost = Some(format!(
                                "claimed by {}",
                                t.claimed_by.as_deref().unwrap_or("nobody")
                            ));
                        }
                    }
                    Err(ReadError::Missing) => {
                        lost = match moves::locate(self.home, &task.task_id) {
                            // Back in place already (a move in two steps): look again.
                            Ok(Some((TaskState::Processing, p))) if p == processing => None,
                            Ok(Some((st, _))) => Some(format!("it is {} now", st.name())),
                            _ => Some("it left processing/".to_string()),
                        };
                    }
                    Err(ReadError::Refused(why)) => {
                        lost = Some(format!("its file was set aside: {why}"));
                    }
                    Err(ReadError::Io(e)) => {
                        tracing::warn!("cannot read task {} while it runs: {e}", task.task_id)
                    }
                }
                // The file was replaced: watch the new one.
                if let Some(wd) = task_wd.take() {
                    tw.unwatch(wd);
                }
                task_wd = tw.watch_file(&processing).ok().flatten();
            }
            let now = Instant::now();
            if stopped.is_none() && timeout.is_some_and(|t| now >= t) {
                let secs = task
                    .timeout_seconds
                    .or(self.opts.task_timeout)
                    .unwrap_or(0.0);
                tracing::warn!(
                    "task {} timed out after {secs}s: stopping its command",
                    task.task_id
                );
                moves::emit(
                    self.home,
                    task_event(
                        EventType::TaskTimedOut,
                        task,
                        format!("{} timed out after {secs}s", task.task_id),
                    )
                    .with("timeout_seconds", secs),
                );
                stopped = Some(StopReason::Timeout);
                signal_group(pid, Signal::SIGTERM);
                kill_at = Some(now + time::duration(self.opts.kill_grace));
            }
            if kill_at.is_some_and(|k| now >= k) && !exited {
                tracing::warn!("the command of {} ignored SIGTERM: SIGKILL", task.task_id);
                signal_group(pid, Signal::SIGKILL);
                kill_at = None;
            }
            if now >= next_beat {
                if let Err(why) = self.keepalive_busy(task) {
                    lost = Some(why);
                }
                next_beat = Instant::now() + self.interval;
            }
            if let Some(why) = lost.take() {
                if stopped != Some(StopReason::Lost) {
                    self.lost_task(task, &why);
                    if stopped.is_none() {
                        signal_group(pid, Signal::SIGTERM);
                        kill_at = Some(Instant::now() + time::duration(self.opts.kill_grace));
                    }
                    stopped = Some(StopReason::Lost);
                }
            }
        }
        drop(stdin);
        if let Some(wd) = task_wd {
            tw.unwatch(wd);
        }
        self.task_watch = Some(tw);
        let status = child
            .wait()
            .map_err(|e| Error::io("cannot wait for the command", e))?;
        guard.0 = 0;
        // Anything left in the group (a stopped command's children) goes too.
        if stopped.is_some() {
            signal_group(pid, Signal::SIGKILL);
        }
        let took = t0.elapsed().as_secs_f64();
        self.sum.run_seconds += took;
        Ok(Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout: out,
            stdout_bytes: out_bytes,
            truncated,
            stopped,
            took,
        })
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::io("fcntl", e.into()))?;
    let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(fl)).map_err(|e| Error::io("fcntl", e.into()))?;
    Ok(())
}

/// In the command's child, before exec: SIGKILL when the loop's thread that started it
/// ends (`PR_SET_PDEATHSIG`; the loop runs and waits for each command on one thread, so
/// that is the loop ending, however it ends). If the loop is already gone (it died between
/// fork and here) the command never starts.
fn die_with_loop(loop_pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls on this process only.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != loop_pid {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Kills a command's process group when dropped, unless disarmed (pgid set to 0) once the
/// command was waited for.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// Signals the command's process group (it leads its own, started with `process_group(0)`).
fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return;
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}
