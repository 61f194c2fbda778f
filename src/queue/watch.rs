//! The queue's own inotify watcher: what a claimer sleeps on, and how its index learns what
//! arrived and what left without listing anything again.
//!
//! It is raw inotify (through rustix) rather than the `notify` crate the daemons use, for
//! three reasons that all bear on the claim path: the mask leaves out `IN_OPEN`/`IN_ACCESS`,
//! so a claimer's own listings never wake it or its peers; events are read in the claimer's
//! own thread right before a claim, so the index is current with no thread hop or channel;
//! and a [`Waker`] (an eventfd) ends a wait from another thread (the `work` loop's signal
//! thread) in the same `poll`. On a network filesystem inotify sees only this host's
//! changes, so callers also pass a poll interval.

use crate::error::{Error, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One thing inotify reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    /// `name` appeared in the directory watched by `wd` (created or moved in).
    Added { wd: i32, name: String, dir: bool },
    /// `name` left it (deleted or moved out).
    Removed { wd: i32, name: String, dir: bool },
    /// The watched object itself changed (a file watch: rewritten, moved, deleted).
    Changed { wd: i32 },
    /// The watch ended (its directory was removed).
    Gone { wd: i32 },
    /// Events were lost: everything must be read again.
    Overflow,
}

/// Ends a [`Watcher::wait`] from any thread.
#[derive(Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    /// Wakes the waiter (idempotent until it has woken).
    pub fn wake(&self) {
        let _ = self.0.write(1);
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// What woke a wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Woken {
    /// inotify has events to read.
    pub fs: bool,
    /// The [`Waker`] was used.
    pub waker: bool,
}

/// An inotify instance plus a waker.
pub struct Watcher {
    fd: OwnedFd,
    wake: Arc<EventFd>,
    buf: Vec<MaybeUninit<u8>>,
}

const DIR_MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::DONT_FOLLOW);

const FILE_MASK: WatchFlags = WatchFlags::ATTRIB
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::DONT_FOLLOW);

impl Watcher {
    /// A new watcher with no watches.
    pub fn new() -> Result<Watcher> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| Error::io("cannot start an inotify watch", e.into()))?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::io("cannot create an eventfd", e.into()))?;
        Ok(Watcher {
            fd,
            wake: Arc::new(wake),
            buf: vec![MaybeUninit::uninit(); 64 * 1024],
        })
    }

    /// A waker for this watcher.
    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    fn add(&self, path: &Path, mask: WatchFlags) -> Result<Option<i32>> {
        match inotify::add_watch(&self.fd, path, mask) {
            Ok(wd) => Ok(Some(wd)),
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(Error::io(
                format!(
                    "cannot watch {} (raise fs.inotify.max_user_watches?)",
                    path.display()
                ),
                e.into(),
            )),
        }
    }

    /// Watches a directory for entries arriving and leaving; `None` when it does not exist.
    pub fn watch_dir(&self, path: &Path) -> Result<Option<i32>> {
        self.add(path, DIR_MASK)
    }

    /// Watches one file for being rewritten, moved or deleted.
    pub fn watch_file(&self, path: &Path) -> Result<Option<i32>> {
        self.add(path, FILE_MASK)
    }

    /// Drops a watch (a removed directory's watch ends by itself).
    pub fn unwatch(&self, wd: i32) {
        let _ = inotify::remove_watch(&self.fd, wd);
    }

    /// Reads every queued event without blocking.
    pub fn drain(&mut self, out: &mut Vec<FsEvent>) -> Result<()> {
        let mut r = inotify::Reader::new(&self.fd, &mut self.buf);
        loop {
            let ev = match r.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("cannot read inotify events", e.into())),
            };
            let m = ev.events();
            let wd = ev.wd();
            if m.contains(ReadFlags::QUEUE_OVERFLOW) {
                out.push(FsEvent::Overflow);
                continue;
            }
            let name = ev
                .file_name()
                .and_then(|n| n.to_str().ok())
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            let dir = m.contains(ReadFlags::ISDIR);
            match name {
                Some(name) if m.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) => {
                    out.push(FsEvent::Added { wd, name, dir })
                }
                Some(name) if m.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) => {
                    out.push(FsEvent::Removed { wd, name, dir })
                }
                Some(_) => {}
                None if m.intersects(ReadFlags::IGNORED | ReadFlags::UNMOUNT) => {
                    out.push(FsEvent::Gone { wd })
                }
                None => out.push(FsEvent::Changed { wd }),
            }
        }
    }

    /// Sleeps until inotify has events, the waker is used, or `deadline` passes.
    pub fn wait(&self, deadline: Option<Instant>) -> Result<Woken> {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_millis().min(i32::MAX as u128 - 1) as i32;
                // Round up, so a wait never returns a little before its deadline.
                let ms = if left.as_nanos() % 1_000_000 != 0 {
                    ms + 1
                } else {
                    ms
                };
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, timeout) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::io("poll(inotify)", e.into())),
            }
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let woken = Woken {
            fs: ready(&fds[0]),
            waker: ready(&fds[1]),
        };
        if woken.waker {
            let _ = self.wake.read();
        }
        Ok(woken)
    }

    /// True (and reset) when the waker was used since the last look.
    pub fn take_wake(&self) -> bool {
        matches!(self.wake.read(), Ok(n) if n > 0)
    }

    /// The descriptors a larger event loop (the `work` loop) polls: inotify, then the waker.
    pub fn fds(&self) -> (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>) {
        (self.fd.as_fd(), self.wake.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reports_arrivals_departures_and_wakes() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        let wd = w.watch_dir(d.path()).unwrap().unwrap();
        assert!(w.watch_dir(&d.path().join("nope")).unwrap().is_none());
        // Reading the directory is not an event.
        let _ = std::fs::read_dir(d.path()).unwrap().count();
        let woken = w
            .wait(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap();
        assert!(!woken.fs && !woken.waker);
        std::fs::write(d.path().join("a"), "").unwrap();
        std::fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(w.wait(None).unwrap().fs);
        let mut evs = Vec::new();
        w.drain(&mut evs).unwrap();
        assert!(
            evs.contains(&FsEvent::Added {
                wd,
                name: "a".into(),
                dir: false
            }),
            "{evs:?}"
        );
        assert!(evs.contains(&FsEvent::Removed {
            wd,
            name: "a".into(),
            dir: false
        }));
        assert!(evs.contains(&FsEvent::Added {
            wd,
            name: "b".into(),
            dir: false
        }));
        assert!(evs.contains(&FsEvent::Added {
            wd,
            name: "sub".into(),
            dir: true
        }));
        let waker = w.waker();
        std::thread::spawn(move || waker.wake());
        assert!(w.wait(None).unwrap().waker);
        assert!(!w.take_wake());
        std::fs::remove_dir(d.path().join("sub")).unwrap();
        let sub = w.watch_dir(d.path()).unwrap().unwrap();
        assert_eq!(sub, wd, "the same directory keeps its watch");
    }
}
