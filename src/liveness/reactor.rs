//! The one place the daemon sleeps: an epoll set over a signalfd (stop, reload and SIGCHLD),
//! an eventfd that helper threads poke, the inotify descriptor of [`super::files`] and one
//! pidfd per local worker. [`Reactor::wait`] returns what became ready; the event loop
//! decides what it means.
//!
//! Signals are blocked (in the calling thread, before any other thread starts) and read from
//! the signalfd, so a signal can never interrupt a state change half-way; children get a
//! clean mask from `process::command`. A pidfd is removed from the set as soon as it fires
//! (it stays readable forever after the exit).

use crate::error::{Error, Result};
use crate::process::PidFd;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// What the daemon handles itself: stop (TERM, INT), reload (HUP) and child exits (CHLD,
/// for reaping the workers it restarted).
pub const DAEMON_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGCHLD,
];

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const TOKEN_FILES: u64 = 3;
const FIRST_PID_TOKEN: u64 = 16;

/// Something became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// A signal arrived (its number).
    Signal(i32),
    /// A helper thread has news on the channel.
    Wake,
    /// inotify has events (the descriptor stays quiet until re-armed).
    Files,
    /// The process behind this pidfd token exited.
    Exited(u64),
}

/// Lets helper threads wake the event loop.
#[derive(Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    /// Wakes the loop (a failed write only means it is awake already).
    pub fn wake(&self) {
        let _ = self.0.write(1);
    }
}

/// The epoll set and what is in it.
pub struct Reactor {
    epoll: Epoll,
    sigfd: SignalFd,
    wake: Arc<EventFd>,
    pids: HashMap<u64, PidFd>,
    next_token: u64,
}

fn sys(what: &str, e: nix::errno::Errno) -> Error {
    Error::io(what.to_string(), e.into())
}

impl Reactor {
    /// Blocks `signals` in this thread and builds the set. Call before other threads start.
    pub fn new(signals: &[Signal]) -> Result<Reactor> {
        let mask = crate::process::signals::block(signals)?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| sys("signalfd", e))?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| sys("eventfd", e))?,
        );
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| sys("epoll", e))?;
        epoll
            .add(&sigfd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))
            .map_err(|e| sys("epoll_ctl", e))?;
        epoll
            .add(
                wake.as_ref(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
            )
            .map_err(|e| sys("epoll_ctl", e))?;
        Ok(Reactor {
            epoll,
            sigfd,
            wake,
            pids: HashMap::new(),
            next_token: FIRST_PID_TOKEN,
        })
    }

    /// A handle for helper threads.
    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    fn files_event() -> EpollEvent {
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, TOKEN_FILES)
    }

    /// Adds the inotify descriptor, one-shot: it reports once, then waits for [`Self::arm_files`].
    pub fn add_files(&self, fd: BorrowedFd<'_>) -> Result<()> {
        self.epoll
            .add(fd, Self::files_event())
            .map_err(|e| sys("epoll_ctl(inotify)", e))
    }

    /// Lets the inotify descriptor report again.
    pub fn arm_files(&self, fd: BorrowedFd<'_>) -> Result<()> {
        let mut ev = Self::files_event();
        self.epoll
            .modify(fd, &mut ev)
            .map_err(|e| sys("epoll_ctl(inotify)", e))
    }

    /// Watches a process exit; returns its token.
    pub fn watch_pid(&mut self, fd: PidFd) -> Result<u64> {
        let tok = self.next_token;
        self.epoll
            .add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, tok))
            .map_err(|e| sys("epoll_ctl(pidfd)", e))?;
        self.next_token += 1;
        self.pids.insert(tok, fd);
        Ok(tok)
    }

    /// Stops watching a process. Removed from the set explicitly: closing the pidfd is not
    /// enough while a child being forked holds a copy of it until its `exec`.
    pub fn unwatch_pid(&mut self, tok: u64) {
        if let Some(fd) = self.pids.remove(&tok) {
            let _ = self.epoll.delete(&fd);
        }
    }

    /// Pidfds held.
    pub fn watched(&self) -> usize {
        self.pids.len()
    }

    /// Sleeps until something is ready or `timeout_ms` passes.
    pub fn wait(&mut self, timeout_ms: i64) -> Result<Vec<Ready>> {
        let mut evs = [EpollEvent::empty(); 256];
        let ms = timeout_ms.clamp(0, 60_000) as u16;
        let n = match self.epoll.wait(&mut evs, EpollTimeout::from(ms)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(sys("epoll_wait", e)),
        };
        let mut out = Vec::with_capacity(n);
        for ev in &evs[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    while let Ok(Some(si)) = self.sigfd.read_signal() {
                        out.push(Ready::Signal(si.ssi_signo as i32));
                    }
                }
                TOKEN_WAKE => {
                    let _ = self.wake.read();
                    out.push(Ready::Wake);
                }
                TOKEN_FILES => out.push(Ready::Files),
                tok => {
                    // Unknown: a pidfd already removed (its copy in a forking child lived
                    // on for a moment); nothing to report.
                    if self.pids.contains_key(&tok) {
                        self.unwatch_pid(tok);
                        out.push(Ready::Exited(tok));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfds_signals_and_wakes_arrive() {
        // A thread of its own: the test runner's threads keep their signal mask.
        std::thread::spawn(|| {
            let mut r = Reactor::new(&[Signal::SIGUSR1]).unwrap();
            assert_eq!(r.wait(0).unwrap(), vec![]);
            r.waker().wake();
            assert_eq!(r.wait(1000).unwrap(), vec![Ready::Wake]);
            // raise() is thread-directed: it reaches this thread's signalfd and no other.
            nix::sys::signal::raise(Signal::SIGUSR1).unwrap();
            assert_eq!(r.wait(1000).unwrap(), vec![Ready::Signal(libc::SIGUSR1)]);
            let mut child = crate::process::command("sleep").arg("0.1").spawn().unwrap();
            let fd = PidFd::open(child.id() as i32).unwrap().unwrap();
            let tok = r.watch_pid(fd).unwrap();
            assert_eq!(r.watched(), 1);
            assert_eq!(r.wait(5000).unwrap(), vec![Ready::Exited(tok)]);
            assert_eq!(r.watched(), 0, "a fired pidfd leaves the set");
            child.wait().unwrap();
            assert_eq!(r.wait(50).unwrap(), vec![], "and does not fire again");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn inotify_reports_once_until_rearmed() {
        let (_dir, home) = crate::home::test_home();
        let mut files = super::super::files::Files::watch(&home).unwrap();
        std::thread::spawn(move || {
            let mut r = Reactor::new(&[]).unwrap();
            r.add_files(files.fd()).unwrap();
            let touch = |n: &str| std::fs::write(home.policy_path().with_file_name(n), b"x");
            touch("a").unwrap();
            assert_eq!(r.wait(1000).unwrap(), vec![Ready::Files]);
            touch("b").unwrap();
            assert_eq!(r.wait(50).unwrap(), vec![], "one-shot until re-armed");
            r.arm_files(files.fd()).unwrap();
            assert_eq!(r.wait(1000).unwrap(), vec![Ready::Files]);
            assert!(files.read().unwrap());
        })
        .join()
        .unwrap();
    }
}
